"""bus.logutil.RateLimitedLog: the first line at once, then one line per interval with a count."""

from __future__ import annotations

import logging

import pytest

from bus.logutil import RateLimitedLog
from tests.support import FakeClock


def test_one_line_per_interval_says_how_many_it_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.logutil"), "bad frame", interval_s=5.0,
                             clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.logutil"):
        for n in range(3):
            limited.warning("from %s", f"peer-{n}")
        clock.advance(4.99)
        limited.warning("from %s", "peer-3")
        clock.advance(0.01)
        limited.warning("from %s", "peer-4")
        limited.warning("from %s", "peer-5")
    assert caplog.messages == ["bad frame: from peer-0",
                               "bad frame: from peer-4 (+3 more since last report)"]
    assert limited.total == 6
