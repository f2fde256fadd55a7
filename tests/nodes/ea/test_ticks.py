"""TickReader's own logic (nodes.ea.ticks): cursors, and ticks no feed would take.

A narrow unit test: the terminal here is a list of ticks in the test (the reader's calls into
it are two); the real terminal process is in test_ea_node.py.
"""

from __future__ import annotations

import math

from nodes.ea.ticks import TickReader, bad_tick
from protocols.ea.mt5 import Tick


class Ticks:
    def __init__(self) -> None:
        self.ticks: dict[str, list[Tick]] = {"EURUSD": []}

    def symbols(self) -> tuple[str, ...]:
        return tuple(self.ticks)

    def copy_ticks_from(self, symbol: str, from_msc: int, count: int) -> list[Tick]:
        return [t for t in self.ticks[symbol] if t.time_msc >= from_msc][:count]


def test_bad_ticks_are_counted_by_reason_and_not_pushed() -> None:
    term = Ticks()
    reader = TickReader(term, ("EURUSD", "NOSUCH"), backfill_ms=0, name="t")  # type: ignore
    reader.start(1_000)
    term.ticks["EURUSD"] += [Tick(1_001, 1.1, 1.2), Tick(1_002, 0.0, 1.2),
                             Tick(1_003, 1.3, 1.2), Tick(1_004, math.nan, 1.2),
                             Tick(1_005, 1.1, 1.2, -1.0), Tick(1_006, 1.1, 1.3)]
    out = reader.read()
    assert [t["time_msc"] for t in out] == [1_001, 1_006]
    assert reader.bad == {"unknown symbol": 1, "zero quote": 1, "crossed quote": 1,
                          "not a number": 1, "negative last or volume": 1}
    assert reader.unknown == {"NOSUCH"}


def test_the_cursor_millisecond_is_read_again_without_duplicates() -> None:
    term = Ticks()
    reader = TickReader(term, ("EURUSD",), backfill_ms=500, name="t")  # type: ignore
    term.ticks["EURUSD"] += [Tick(400, 1.0, 1.1), Tick(600, 1.0, 1.1)]
    reader.start(1_000)  # backfill: from 500 on
    assert [t["time_msc"] for t in reader.read()] == [600]
    term.ticks["EURUSD"] += [Tick(600, 1.0, 1.2), Tick(601, 1.0, 1.1)]  # same ms, new price
    assert [(t["time_msc"], t["ask"]) for t in reader.read()] == [(600, 1.2), (601, 1.1)]
    assert reader.read() == []


def test_bad_tick_reasons() -> None:
    assert bad_tick(Tick(1, 1.0, 1.0)) is None  # a locked quote is a quote
    assert bad_tick(Tick(1, -1.0, 1.0)) == "zero quote"


def test_a_saved_cursor_shortens_the_backfill_but_never_lengthens_it() -> None:
    term = Ticks()
    term.ticks["EURUSD"] += [Tick(t, 1.0, 1.1 + t / 1e6) for t in range(0, 10_000, 100)]
    reader = TickReader(term, ("EURUSD",), backfill_ms=3_000, name="t")  # type: ignore
    reader.start(10_000, {"EURUSD": 9_000})
    assert reader.read()[0]["time_msc"] == 8_500  # the saved cursor less the margin
    reader.start(10_000, {"EURUSD": 1_000, "OTHER": 5})
    assert reader.read()[0]["time_msc"] == 7_000  # the backfill cap wins over an old cursor
    assert reader.cursors() == {"EURUSD": 9_900}
