"""Retry timing as pure policy: back-off (after redis-py's ``backoff.py``), the resend delay
after a busy server's retry-after hint (:class:`RetryAfter`) and an adaptive request timeout
(RFC 6298's retransmission timer). No clock, no randomness: the caller passes the failure
count, the hint, the random number and the measured round trips, so tests are exact.
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


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """When to resend a request that a busy server refused with a retry-after hint.

    The hint is the server's own pacing, so the delay is never shorter than it: it is drawn
    from [1, 1 + ``spread``] x the hint, so that clients refused at the same moment do not come
    back in lockstep, and never below ``floor_s``. A hint of 0 ("busy", no estimate) gives
    ``no_hint_s``, the caller's own (jittered, exponential) back-off.
    """

    spread: float = 0.5
    floor_s: float = 0.001

    def __post_init__(self) -> None:
        if not 0 <= self.spread <= 1:
            raise ValueError("spread must be in [0, 1]")
        if not self.floor_s > 0:
            raise ValueError("floor_s must be > 0")

    def compute(self, retry_after_ms: int, rand: float, no_hint_s: float) -> float:
        """Delay before resending, for a hint of ``retry_after_ms`` (>= 0)."""
        if retry_after_ms <= 0:
            return max(self.floor_s, no_hint_s)
        return max(self.floor_s, retry_after_ms / 1000 * (1 + self.spread * rand))


@dataclass(slots=True)
class RequestTimer:
    """How long to wait for an answer before trying again: RFC 6298's retransmission timeout.

    ``timeout()`` is ``srtt + 4 * rttvar`` from the answers measured so far, kept between
    ``floor_s`` and ``ceiling_s`` (the floor alone until the first sample). Every timeout
    doubles it (up to the ceiling) until a new sample arrives; a sample counts only from a
    request answered on its first attempt (Karn's rule: a retried request's answer cannot be
    matched to one attempt).

    Why: a fixed short timeout turns a slow server into a retry storm that keeps it slow (every
    request re-sent every few tens of milliseconds); this one backs off with the server's own
    latency, and stays at the floor while the server is fast, so a dead server is still left
    after ``floor_s``.
    """

    floor_s: float
    ceiling_s: float
    srtt: float | None = None
    rttvar: float = 0.0
    backed_off: float = 0.0  # the doubled timeout after timeouts; 0: none pending

    def __post_init__(self) -> None:
        if not 0 < self.floor_s <= self.ceiling_s:
            raise ValueError("need 0 < floor_s <= ceiling_s")

    def timeout(self) -> float:
        if self.backed_off:
            return self.backed_off
        if self.srtt is None:
            return self.floor_s
        return min(self.ceiling_s, max(self.floor_s, self.srtt + 4 * self.rttvar))

    def observe(self, rtt_s: float) -> None:
        """An answer came ``rtt_s`` after the (only) attempt was sent."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt_s, rtt_s / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt_s)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt_s
        self.backed_off = 0.0

    def timed_out(self) -> None:
        """An attempt got no answer in time: wait twice as long next time."""
        self.backed_off = min(self.ceiling_s, 2 * self.timeout())
