"""Logging helpers: a rate-limited logger for errors that a peer can repeat at line rate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Logs the first occurrence, then at most one line per ``interval_s`` with a count.

    A malformed frame from a broken peer may arrive 100,000 times a second; logging each would
    cost more than handling it. ``clock`` (in seconds) is for tests.
    """

    def __init__(self, logger: logging.Logger, what: str, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._clock = clock
        self._what = what
        self._interval = interval_s
        self._next = 0.0
        self._suppressed = 0
        self.total = 0

    def warning(self, fmt: str, *args: object) -> None:
        self.total += 1
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return
        more = f" (+{self._suppressed} more since last report)" if self._suppressed else ""
        self._logger.warning("%s: " + fmt + "%s", self._what, *args, more)
        self._suppressed = 0
        self._next = now + self._interval
