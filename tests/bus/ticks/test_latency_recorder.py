"""The subscriber's latency histogram uses the one percentile rule (protocols.stats)."""

from __future__ import annotations

from bus.ticks.subscriber import LatencyRecorder
from protocols.stats import percentile


def _row(feed_time_ns: int) -> tuple[float, float, float, float, int, int]:
    return (1.0, 1.0, 0.0, 1.0, 0, feed_time_ns)


def test_percentiles_are_nearest_rank_over_the_recent_window() -> None:
    rec = LatencyRecorder(size=100)
    now = 1_000_000_000
    # Latencies 1..150 us; the window keeps the last 100 (51..150).
    rec.add_rows(tuple(_row(now - us * 1000) for us in range(1, 151)), now)
    window = list(range(51, 151))
    assert rec.percentiles(50, 99, 100) == [float(percentile(window, q) or 0)
                                            for q in (0.5, 0.99, 1.0)]
    assert rec.percentiles(50, 99) == [100.0, 149.0]


def test_an_empty_recorder_reports_zeros() -> None:
    assert LatencyRecorder(size=4).percentiles(50, 99) == [0.0, 0.0]
