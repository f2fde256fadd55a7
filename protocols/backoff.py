"""Retry back-off as a pure policy (after redis-py's ``backoff.py``): no clock, no randomness.

The caller passes the failure count and a uniform random number, so tests are exact.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off ``base * 2**failures`` capped at ``cap``, with a jitter share.

    ``jitter`` 0.5 means the delay is drawn from [50 %, 100 %] of the exponential value, which
    spreads the retries of many clients that failed at the same moment.
    """

    base_s: float = 0.01
    cap_s: float = 1.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("need 0 < base_s <= cap_s")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")

    def compute(self, failures: int, rand: float) -> float:
        """Delay before the next attempt after ``failures`` consecutive failures (>= 0)."""
        raw: float = min(self.cap_s, self.base_s * 2.0 ** min(failures, 62))
        return raw * (1 - self.jitter * rand)
