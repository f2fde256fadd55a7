"""Trails and cursors: every item above a cursor, once, in order; None below the floor."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.gateway.streams import BarTrail, LatestValue
from protocols.gateway.wire import bar_item
from protocols.history.bars import Bar, BarBuilder

S = 10**9


def _bar(start: int, first: int, last: int, close: float = 1.0) -> Bar:
    return Bar("X", 1, start * S, 1.0, 1.0, 1.0, close, 0.0, last - first + 1, first, last)


def _trail(count: int = 100, keep_s: int = 60) -> BarTrail:
    return BarTrail(lambda b, closed: bar_item("bars:X:1S", 1, b, closed), count, keep_s * S)


def _seqs(items: list[str] | None) -> list[int] | None:
    return None if items is None else [json.loads(i)["seq"] for i in items]


def test_a_cursor_gets_every_bar_above_it_and_the_forming_one_last() -> None:
    t = _trail()
    for k in range(3):
        t.on_closed(_bar(k, 10 * k + 1, 10 * k + 10), 0)
    t.set_forming(_bar(3, 31, 33))
    assert _seqs(t.since(0)) == [10, 20, 30, 33]
    assert _seqs(t.since(20)) == [30, 33]
    assert _seqs(t.since(25)) == [30, 33]  # a client that saw bar 2 half-formed
    assert _seqs(t.since(33)) == []
    assert t.head == 33


def test_an_unchanged_forming_bar_is_encoded_once() -> None:
    calls = []
    t = BarTrail(lambda b, c: calls.append(b) or "{}", 10, 60 * S)
    t.set_forming(_bar(0, 1, 5))
    t.since(0)
    t.since(0)
    t.set_forming(_bar(0, 1, 5))
    t.since(0)
    assert len(calls) == 1
    t.set_forming(_bar(0, 1, 6))
    t.since(0)
    assert len(calls) == 2


def test_eviction_by_count_and_age_raises_the_floor() -> None:
    t = _trail(count=2, keep_s=5)
    t.on_closed(_bar(0, 1, 10), 0)
    t.on_closed(_bar(1, 11, 20), 0)
    t.on_closed(_bar(2, 21, 30), 0)  # count: bar 0 goes
    assert t.floor == 10
    assert t.since(9) is None
    assert _seqs(t.since(10)) == [20, 30]
    t.on_closed(_bar(3, 31, 40), 6 * S)  # age: bars closed at 0 are older than 5 s
    assert t.floor == 30
    assert _seqs(t.since(30)) == [40]


def test_a_seeded_trail_serves_from_its_floor() -> None:
    t = _trail()
    t.seed([_bar(5, 50, 59), _bar(6, 60, 69)], 49, 0)
    assert t.since(48) is None
    assert _seqs(t.since(49)) == [59, 69]
    assert t.head == 69
    assert [json.loads(i)["closed"] for i in t.snapshot(10)] == [True, True]


def test_snapshot_is_the_last_closed_bars_and_the_forming_one() -> None:
    t = _trail()
    for k in range(5):
        t.on_closed(_bar(k, 10 * k + 1, 10 * k + 10), 0)
    t.set_forming(_bar(5, 51, 52))
    assert _seqs(t.snapshot(2)) == [40, 50, 52]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=1, max_size=300),
       st.data())
def test_following_a_builder_by_cursor_rebuilds_its_bars(steps: list[tuple[int, int]],
                                                         data: st.DataObject) -> None:
    """A client reading the trail at arbitrary moments (a slow one, or one resuming) ends with
    exactly the builder's bars: none missing, none twice, never an older bar after a newer."""
    b = BarBuilder("X")
    t = _trail(count=10_000, keep_s=10**6)
    ts = 10 * S
    held: dict[int, dict[str, object]] = {}
    cursor = 0
    for seq, (jump, reads) in enumerate(steps, 1):
        ts += jump * S // 2
        for bar in b.on_tick(seq, ts, 1.0 + seq / 1000, 1.0 + seq / 1000, 0.0, 1.0):
            if bar.res_s == 1:
                t.on_closed(bar, 0)
        t.set_forming(b.forming(1))
        if data.draw(st.integers(0, 30)) <= reads:
            items = t.since(cursor)
            assert items is not None
            last_time = -1
            for it in map(json.loads, items):
                assert it["seq"] > cursor
                assert it["time"] >= last_time
                last_time = it["time"]
                assert not held or it["time"] >= max(held)  # never older than the newest held
                held[it["time"]] = it
            cursor = t.head
    for it in map(json.loads, t.since(cursor) or []):
        held[it["time"]] = it
    closed = [json.loads(i) for i in t.snapshot(10_000)]
    assert [h["close"] for _, h in sorted(held.items())] == [c["close"] for c in closed]


def test_latest_value_sends_only_news_and_encodes_lazily() -> None:
    made = []
    v = LatestValue()
    assert v.since(0) is None
    v.set(5, lambda: made.append(5) or "five")
    v.set(4, lambda: "older")  # an older value never replaces a newer one
    assert made == []
    assert v.since(0) == "five" and v.since(3) == "five"
    assert v.since(5) is None
    assert made == [5]
