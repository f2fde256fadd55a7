"""Rate limits of the chart gateway (docs/GATEWAY.md, 7), sans-I/O: a token bucket.

Rules: the bucket holds at most ``burst`` tokens and starts full; it gains ``rate`` tokens a
second; a request of ``cost`` tokens is allowed when the bucket holds them, and then takes
them; a refused request takes nothing. Time comes in as ``now`` (seconds, any monotonic
origin). A ``now`` earlier than one seen before credits nothing, and the bucket counts on from
the latest ``now`` it saw: the tokens never leave ``[0, burst]``, and a clock that jitters back
and forth never earns the same interval twice (one stepped back for good refills again once
it passes the latest time seen: a limit errs on the side of refusing).
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]

# Tokens short of a cost that still allow it: the float rounding of tokens + elapsed * rate.
_SLACK = 1e-9


class TokenBucket:
    """``rate`` tokens a second, up to ``burst``: :meth:`allow` takes ``cost`` tokens if the
    bucket holds them; :meth:`retry_after` says how long until it will."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be finite and > 0, got {rate!r}")
        if not (math.isfinite(burst) and burst > 0):
            raise ValueError(f"burst must be finite and > 0, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def _refill(self, now: float) -> float:
        if self._last is None or now > self._last:
            if self._last is not None:
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        return self._tokens

    @staticmethod
    def _check(cost: float) -> None:
        if not (math.isfinite(cost) and cost > 0):
            raise ValueError(f"cost must be finite and > 0, got {cost!r}")

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at ``now`` and return True, or return False and take none."""
        self._check(cost)
        if self._refill(now) + _SLACK < cost:
            return False
        self._tokens = max(0.0, self._tokens - cost)
        return True

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds from ``now`` until ``cost`` tokens are there (0: now; ``inf``: never, the
        cost is above the burst)."""
        self._check(cost)
        if cost > self.burst + _SLACK:
            return math.inf
        tokens = self._refill(now)
        if tokens + _SLACK >= cost:
            return 0.0
        assert self._last is not None  # _refill set it
        # Counted from the latest time seen (a now behind it earns nothing until then), and
        # a few units in the last place more: now + retry_after rounds to a time at which
        # the tokens are there.
        return ((cost - tokens) / self.rate + max(0.0, self._last - now)
                + 4 * math.ulp(max(abs(now), abs(self._last), 1.0)))

    def tokens(self, now: float) -> float:
        """The tokens held at ``now``."""
        return self._refill(now)
