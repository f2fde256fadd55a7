"""Bars: the bucketing rule, resolution names, the tick price, merge, and the cascade against
bars computed directly from the ticks (tables and a hypothesis property)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.history.bars import (
    RES_SECONDS,
    Bar,
    BarBuilder,
    bars_from_columns,
    bars_to_columns,
    bucket_start,
    format_resolution,
    parse_resolution,
    tick_price,
)
from protocols.history.schema import NS_PER_S

Tick = tuple[int, int, float, float, float, float]  # seq, ts_ns, bid, ask, last, volume


def ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()) * NS_PER_S


@pytest.mark.parametrize(("ts", "res_s", "start"), [
    ("2026-12-01T14:37:21.250", 1, "2026-12-01T14:37:21"),
    ("2026-12-01T14:37:21.250", 60, "2026-12-01T14:37:00"),
    ("2026-12-01T14:37:21", 300, "2026-12-01T14:35:00"),
    ("2026-12-01T14:37:21", 900, "2026-12-01T14:30:00"),
    ("2026-12-01T14:37:21", 3600, "2026-12-01T14:00:00"),
    ("2026-12-01T14:37:21", 86_400, "2026-12-01T00:00:00"),
    ("2024-02-29T23:59:59.999", 86_400, "2024-02-29T00:00:00"),
    ("2026-12-01T00:00:00", 86_400, "2026-12-01T00:00:00"),
    ("1970-01-01T00:00:00", 900, "1970-01-01T00:00:00"),
])
def test_bucket_start_is_utc_and_epoch_aligned(ts: str, res_s: int, start: str) -> None:
    frac = round(float("0." + ts.split(".")[1]) * NS_PER_S) if "." in ts else 0
    assert bucket_start(ns(ts.split(".")[0]) + frac, res_s) == ns(start)


def test_bucket_start_refuses_other_resolutions() -> None:
    with pytest.raises(ValueError, match="1, 60, 300, 900, 3600, 86400"):
        bucket_start(0, 120)


@pytest.mark.parametrize(("name", "res_s"), [
    ("1S", 1), ("1s", 1), ("1", 60), ("5", 300), ("15", 900), ("60", 3600), ("1D", 86_400),
    ("1d", 86_400)])
def test_resolution_names_round_trip(name: str, res_s: int) -> None:
    assert parse_resolution(name) == res_s
    assert parse_resolution(format_resolution(res_s)) == res_s


@pytest.mark.parametrize("name", ["2", "1H", "", "D", "240"])
def test_unknown_resolution_names_the_allowed_ones(name: str) -> None:
    with pytest.raises(ValueError, match=r"1S, 1, 5, 15, 60, 1D"):
        parse_resolution(name)


@pytest.mark.parametrize(("bid", "ask", "last", "price"), [
    (1.1, 1.3, 0.0, 1.2), (1.1, 1.3, 1.25, 1.25), (100.0, 101.0, -1.0, 100.5)])
def test_tick_price_is_last_if_traded_else_mid(bid: float, ask: float, last: float,
                                               price: float) -> None:
    assert tick_price(bid, ask, last) == pytest.approx(price)


def test_merge_folds_finer_bars_and_refuses_a_foreign_one() -> None:
    m = ns("2026-12-01T14:37:00")
    a = Bar("EUR", 1, m, 1.0, 2.0, 0.5, 1.5, 3.0, 2, 10, 11)
    b = Bar("EUR", 1, m + 5 * NS_PER_S, 1.6, 1.7, 0.4, 1.1, 1.0, 3, 12, 14)
    assert a.at(60).merge(b) == Bar("EUR", 60, m, 1.0, 2.0, 0.4, 1.1, 4.0, 5, 10, 14)
    with pytest.raises(ValueError):  # outside the minute
        a.at(60).merge(Bar("EUR", 1, m + 60 * NS_PER_S, 1, 1, 1, 1, 0, 1, 12, 12))
    with pytest.raises(ValueError):  # ticks not after
        a.at(60).merge(Bar("EUR", 1, m + NS_PER_S, 1, 1, 1, 1, 0, 1, 11, 11))
    with pytest.raises(ValueError):  # a coarser bar does not fold into a finer one
        a.merge(a.at(60))
    with pytest.raises(ValueError):
        a.at(60).merge(Bar("XAU", 1, m + NS_PER_S, 1, 1, 1, 1, 0, 1, 12, 12))


T0 = ns("2026-12-01T23:59:58")
M = ns("2026-12-01T14:37:10")
S = NS_PER_S


@pytest.mark.parametrize(("ticks", "closed", "late"), [
    # two ticks in one second: nothing closes
    ([(1, T0, 1, 1, 0, 1), (2, T0 + S // 2, 3, 3, 0, 1)], [], 0),
    # the next second closes the 1 s bar only
    ([(1, T0, 1, 1, 0, 1), (2, T0 + S, 3, 3, 0, 1)], [(1, T0, 1, 1, 1, 1, 1, 1, 1, 1)], 0),
    # a tick in the next day closes 1 s, 1, 5, 15, 60 and 1D bars at once (T0 + 1 s is the
    # last second of the day; a gap of a minute makes no empty bars)
    ([(1, T0 + S, 2, 2, 0, 5), (2, T0 + 62 * S, 4, 4, 0, 1)],
     [(1, T0 + S, 2, 2, 2, 2, 5, 1, 1, 1), (60, ns("2026-12-01T23:59:00"), 2, 2, 2, 2, 5, 1, 1, 1),
      (300, ns("2026-12-01T23:55:00"), 2, 2, 2, 2, 5, 1, 1, 1),
      (900, ns("2026-12-01T23:45:00"), 2, 2, 2, 2, 5, 1, 1, 1),
      (3600, ns("2026-12-01T23:00:00"), 2, 2, 2, 2, 5, 1, 1, 1),
      (86_400, ns("2026-12-01T00:00:00"), 2, 2, 2, 2, 5, 1, 1, 1)], 0),
    # a late tick (earlier second) goes into the forming bar, never reopens the closed one
    ([(1, M, 1, 1, 0, 1), (2, M + S, 5, 5, 0, 1), (3, M + S // 2, 0.5, 0.5, 0, 1),
      (4, M + 2 * S, 7, 7, 0, 1)],
     [(1, M, 1, 1, 1, 1, 1, 1, 1, 1), (1, M + S, 5, 5, 0.5, 0.5, 2, 2, 2, 3)], 1),
    # a replayed sequence number is skipped
    ([(1, M, 1, 1, 0, 1), (1, M + S, 9, 9, 0, 1), (2, M + S, 2, 2, 0, 1),
      (3, M + 2 * S, 3, 3, 0, 1)],
     [(1, M, 1, 1, 1, 1, 1, 1, 1, 1), (1, M + S, 2, 2, 2, 2, 1, 1, 2, 2)], 0),
])
def test_cascade_table(ticks: list[Tick], closed: list[tuple[float, ...]], late: int) -> None:
    builder = BarBuilder("EUR")
    out: list[Bar] = []
    for t in ticks:
        out.extend(builder.on_tick(*t))
    want = [Bar("EUR", int(r), int(s), o, h, lo, c, v, int(n), int(f), int(la))
            for r, s, o, h, lo, c, v, n, f, la in closed]
    assert out == want
    assert builder.late == late


def test_forming_is_complete_so_far_at_every_resolution() -> None:
    builder = BarBuilder("EUR")
    m = ns("2026-12-01T14:37:00")
    for seq, (ts, price) in enumerate([(m, 1.0), (m + 2 * S, 3.0), (m + 61 * S, 2.0),
                                       (m + 61 * S + 1, 0.5)], start=1):
        builder.on_tick(seq, ts, 0, 0, price, 1.0)
    assert builder.forming(1) == Bar("EUR", 1, m + 61 * S, 2.0, 2.0, 0.5, 0.5, 2.0, 2, 3, 4)
    assert builder.forming(60) == Bar("EUR", 60, m + 60 * S, 2.0, 2.0, 0.5, 0.5, 2.0, 2, 3, 4)
    assert builder.forming(300) == Bar("EUR", 300, ns("2026-12-01T14:35:00"), 1.0, 3.0, 0.5,
                                       0.5, 4.0, 4, 1, 4)
    assert builder.forming(86_400) == Bar("EUR", 86_400, ns("2026-12-01T00:00:00"), 1.0, 3.0,
                                          0.5, 0.5, 4.0, 4, 1, 4)
    assert BarBuilder("EUR").forming(60) is None
    with pytest.raises(ValueError):
        builder.forming(7)


def test_columns_round_trip() -> None:
    bars = [Bar("EUR", 60, T0, 1.0, 2.0, 0.5, 1.5, 3.0, 2, 10, 11),
            Bar("XAU", 1, T0, 9.0, 9.0, 9.0, 9.0, 0.0, 1, 4, 4)]
    cols = bars_to_columns(bars)
    assert len(cols) == 2 and cols.column("res_s") == [60, 1]
    assert bars_from_columns(cols) == bars


# --- the property: the cascade equals bars computed directly from the ticks -------------

def direct_bars(ticks: list[Tick], res_s: int) -> list[Bar]:
    """Bars grouped straight from the ticks, with the documented late rule (a tick's 1 s
    bucket is the running maximum), by a path that shares nothing with the cascade."""
    groups: dict[int, list[tuple[int, float, float]]] = {}
    high_water = 0
    for seq, ts, bid, ask, last, vol in ticks:
        second = ts - ts % S
        high_water = max(high_water, second)
        start = high_water - high_water % (res_s * S)
        price = last if last > 0 else (bid + ask) / 2
        groups.setdefault(start, []).append((seq, price, vol))
    return [Bar("EUR", res_s, start, g[0][1], max(p for _, p, _ in g), min(p for _, p, _ in g),
                g[-1][1], sum(v for _, _, v in g), len(g), g[0][0], g[-1][0])
            for start, g in sorted(groups.items())]


prices = st.floats(min_value=0.5, max_value=2.0, allow_nan=False).map(lambda p: round(p, 4))
steps = st.sampled_from([0, 1, S // 3, S, 7 * S, 59 * S, 299 * S, 3600 * S, 86_400 * S, -S,
                         -70 * S])
tick_lists = st.lists(st.tuples(steps, prices, prices, st.sampled_from([0.0, 1.5]),
                                st.sampled_from([0.0, 1.0, 2.5])), min_size=1, max_size=60)


def make_ticks(draws: list[tuple[int, float, float, float, float]]) -> list[Tick]:
    ts = T0 - 3 * 86_400 * S
    out: list[Tick] = []
    for seq, (step, bid, spread, last, vol) in enumerate(draws, start=1):
        ts = max(0, ts + step)
        out.append((seq, ts, bid, bid + spread, last, vol))
    return out


def closed_and_forming(builder: BarBuilder, closed: list[Bar], res_s: int) -> list[Bar]:
    forming = builder.forming(res_s)
    return [b for b in closed if b.res_s == res_s] + ([forming] if forming else [])


@given(tick_lists)
def test_cascade_equals_direct_bars(draws: list[tuple[int, float, float, float, float]]) -> None:
    ticks = make_ticks(draws)
    builder = BarBuilder("EUR")
    closed: list[Bar] = []
    for t in ticks:
        closed.extend(builder.on_tick(*t))
    for res_s in RES_SECONDS:
        got = closed_and_forming(builder, closed, res_s)
        want = direct_bars(ticks, res_s)
        assert [(b.start_ns, b.open, b.close, b.ticks, b.first_seq, b.last_seq) for b in got] \
            == [(b.start_ns, b.open, b.close, b.ticks, b.first_seq, b.last_seq) for b in want]
        assert [b.high for b in got] == [b.high for b in want]
        assert [b.low for b in got] == [b.low for b in want]
        assert [b.volume for b in got] == pytest.approx([b.volume for b in want])


@given(tick_lists, st.integers(min_value=0, max_value=60))
def test_resume_continues_as_if_never_stopped(
        draws: list[tuple[int, float, float, float, float]], cut: int) -> None:
    """A builder resumed from the closed bars (and fed the ticks above its last closed 1 s
    bar, as a restarted historian reads them from the store) ends where one run ends."""
    ticks = make_ticks(draws)
    cut = min(cut, len(ticks))
    whole = BarBuilder("EUR")
    first = BarBuilder("EUR")
    all_closed: list[Bar] = []
    stored: list[Bar] = []
    for i, t in enumerate(ticks):
        all_closed.extend(whole.on_tick(*t))
        if i < cut:
            stored.extend(first.on_tick(*t))
    resumed = BarBuilder.resume("EUR", stored)
    again = list(stored)
    for t in ticks:  # the whole tick history: those at or below last_seq are replays
        again.extend(resumed.on_tick(*t))
    assert again == all_closed
    for res_s in RES_SECONDS:
        assert resumed.forming(res_s) == whole.forming(res_s)


@given(tick_lists, st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=10),
       st.integers(min_value=0, max_value=5))
def test_runs_make_the_same_bars_as_ticks_one_by_one(
        draws: list[tuple[int, float, float, float, float]], sizes: list[int],
        replay: int) -> None:
    """on_run (the historian's path: a run of ticks as columns) equals on_tick tick by tick:
    closed bars, every forming bar, late and replayed counts, whatever the cut into runs."""
    ticks = make_ticks(draws)
    one = BarBuilder("EUR")
    by_tick = [b for t in ticks for b in one.on_tick(*t)]
    runs = BarBuilder("EUR")
    by_run: list[Bar] = []
    i = k = 0
    while i < len(ticks):
        lo = max(0, i - replay) if k % 3 == 2 else i  # now and then overlapping: replays
        hi = min(len(ticks), i + sizes[k % len(sizes)])
        seqs, ts, bids, asks, lasts, vols = zip(*ticks[lo:hi], strict=True)
        by_run.extend(runs.on_run(seqs[0], ts, bids, asks, lasts, vols))
        i, k = hi, k + 1
    assert by_run == by_tick
    assert (runs.late, runs.last_seq) == (one.late, one.last_seq)
    for res_s in RES_SECONDS:
        assert runs.forming(res_s) == one.forming(res_s)
