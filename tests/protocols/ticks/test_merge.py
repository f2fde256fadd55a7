"""SourceMerge: first copy wins across producers (protocols.ticks.merge)."""

from __future__ import annotations

import pytest

from protocols.ticks.merge import SourceMerge

A = (1.1, 1.2, 0.0, 1.0)
B = (1.1, 1.3, 0.0, 1.0)


@pytest.mark.parametrize("ticks, admitted, duplicates, late", [
    # (symbol, time, key) in arrival order -> which are admitted
    ([("EURUSD", 1, A)], [True], 0, 0),
    ([("EURUSD", 1, A), ("EURUSD", 1, A)], [True, False], 1, 0),  # the standby's copy
    ([("EURUSD", 1, A), ("EURUSD", 1, B)], [True, True], 0, 0),  # two ticks in one ms
    ([("EURUSD", 1, A), ("EURUSD", 2, A), ("EURUSD", 1, A)], [True, True, False], 0, 1),
    ([("EURUSD", 2, A), ("EURUSD", 1, B)], [True, False], 0, 1),  # behind the stream
    ([("EURUSD", 1, A), ("GBPUSD", 1, A)], [True, True], 0, 0),  # per symbol
    ([("EURUSD", 1, A), ("EURUSD", 2, A), ("EURUSD", 2, A), ("EURUSD", 3, B)],
     [True, True, False, True], 1, 0),
])
def test_admit(ticks: list[tuple[str, int, tuple[float, float, float, float]]],
               admitted: list[bool], duplicates: int, late: int) -> None:
    merge = SourceMerge()
    assert [merge.admit(*t) for t in ticks] == admitted
    assert (merge.duplicates, merge.late) == (duplicates, late)


def test_two_producers_interleaved_publish_each_tick_once() -> None:
    merge = SourceMerge()
    stream = [("EURUSD", t, (1.0 + t / 1e4, 1.0001 + t / 1e4, 0.0, 1.0)) for t in range(100)]
    lagging = stream[:50] + stream[40:]  # the second producer restarted and backfilled
    out = []
    for i in range(100):
        for tick in (stream[i], lagging[i] if i < len(lagging) else None):
            if tick is not None and merge.admit(*tick):
                out.append(tick)
    assert out == stream


def test_the_set_of_one_instant_is_bounded() -> None:
    merge = SourceMerge(max_same=2)
    keys = [(1.0, 1.0 + i, 0.0, 0.0) for i in range(5)]
    assert all(merge.admit("X", 1, k) for k in keys)  # distinct ticks are never dropped
    assert len(merge._newest["X"].seen) == 2
