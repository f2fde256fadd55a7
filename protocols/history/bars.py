"""OHLCV bars: the one bucketing rule, the price of a tick, and the bar cascade (sans-I/O).

Rules:

- **Buckets are UTC and epoch-aligned.** A bar of resolution ``R`` seconds starts at the
  largest multiple of ``R`` seconds since 1970-01-01T00:00Z at or before the tick's time
  (:func:`bucket_start`), so a day bar starts at 00:00 UTC and an hour bar on the hour. FX
  trades 24 hours a day, five days a week with no session to cut, and TradingView's daily bars
  are stamped 00:00 UTC; a bucket that no tick falls in makes **no bar** (a weekend is absent,
  not a flat bar). A session calendar (an exchange's open, a 17:00 New York FX day) would plug
  in here and only here: :func:`bucket_start` is the single place a bar's start is decided, and
  every builder, store query and the gateway call it.
- **Resolutions** are 1 s, 1, 5, 15 and 60 minutes and 1 day (:data:`RES_SECONDS`), named as
  TradingView names them (:data:`RESOLUTIONS`). Each divides the next, so a bar of one folds
  whole into exactly one bar of the next (:meth:`Bar.merge`).
- **The price of a tick** is its last trade price when it has one (``last > 0``), else the mid
  of bid and ask (:func:`tick_price`); the volume is the tick's volume (0 for quote-only FX).
- **The cascade** (:class:`BarBuilder`): ticks make 1 s bars; a closed 1 s bar folds into the
  forming 1 minute bar, a closed minute into the forming 5 minute bar, and so on. A bar closes
  when the first tick of a later bucket arrives (never by a clock: this module has none).
- **Late ticks**: ticks arrive in sequence order, and a tick whose time lies before the forming
  1 s bucket (a feed's clock stepped back, a backfilled tick) goes into the forming bar and is
  counted (``late``); a closed bar is never reopened. Equivalently a tick's bucket is the
  running maximum of its own bucket and every earlier tick's.
- **Replays**: a tick at or below the builder's last sequence number (a restart's backfill that
  overlaps what the bars already hold) is skipped and counted (``replayed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from protocols.history.schema import NS_PER_S, Columns, Table

__all__ = [
    "RESOLUTIONS",
    "RES_SECONDS",
    "Bar",
    "BarBuilder",
    "bars_from_columns",
    "bars_to_columns",
    "bucket_start",
    "format_resolution",
    "parse_resolution",
    "tick_price",
]

# Finest first; each divides the next (the cascade relies on it).
RES_SECONDS: tuple[int, ...] = (1, 60, 300, 900, 3600, 86_400)
RESOLUTIONS: Mapping[str, int] = {"1S": 1, "1": 60, "5": 300, "15": 900, "60": 3600, "1D": 86_400}
_NAMES = {s: n for n, s in RESOLUTIONS.items()}
_ALLOWED = ", ".join(RESOLUTIONS)


def parse_resolution(name: str) -> int:
    """Seconds of a TradingView resolution name ("1S", "1", "5", "15", "60", "1D")."""
    try:
        return RESOLUTIONS[name.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown resolution {name!r}: use one of {_ALLOWED}") from None


def format_resolution(res_s: int) -> str:
    """The TradingView name of a resolution in seconds."""
    try:
        return _NAMES[res_s]
    except KeyError:
        raise ValueError(f"unknown resolution {res_s} s: use one of "
                         f"{', '.join(map(str, RES_SECONDS))} seconds") from None


def bucket_start(ts_ns: int, res_s: int) -> int:
    """The start (epoch ns, UTC) of the bar of resolution ``res_s`` that time ``ts_ns`` is in."""
    if res_s not in _NAMES:
        format_resolution(res_s)  # raises, naming the allowed ones
    step = res_s * NS_PER_S
    return ts_ns - ts_ns % step


def tick_price(bid: float, ask: float, last: float) -> float:
    """The price a tick contributes to a bar: ``last`` if it traded (> 0), else the mid."""
    return last if last > 0 else (bid + ask) / 2


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar of ``stream`` at ``res_s`` seconds starting at ``start_ns`` (epoch ns).

    ``ticks`` counts the ticks in it; ``first_seq``/``last_seq`` are the sequence numbers of
    its first and last tick (the bars table's watermark position is ``last_seq``).
    """

    stream: str
    res_s: int
    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    ticks: int
    first_seq: int
    last_seq: int

    def at(self, res_s: int) -> Bar:
        """This bar as the first part of the coarser bar of ``res_s`` that holds it."""
        if res_s % self.res_s:
            raise ValueError(f"a {self.res_s} s bar does not fold into {res_s} s bars")
        return Bar(self.stream, res_s, bucket_start(self.start_ns, res_s), self.open,
                   self.high, self.low, self.close, self.volume, self.ticks, self.first_seq,
                   self.last_seq)

    def merge(self, later: Bar) -> Bar:
        """This bar extended by ``later``: a bar of this resolution or a finer one, of the
        same stream, inside this bar's bucket, whose ticks all came after this bar's."""
        if later.stream != self.stream or self.res_s % later.res_s \
                or bucket_start(later.start_ns, self.res_s) != self.start_ns \
                or later.first_seq <= self.last_seq:
            raise ValueError(f"cannot merge {later} into {self}")
        return Bar(self.stream, self.res_s, self.start_ns, self.open,
                   max(self.high, later.high), min(self.low, later.low), later.close,
                   self.volume + later.volume, self.ticks + later.ticks, self.first_seq,
                   later.last_seq)


def _fields(bar: Bar) -> list[Any]:
    """A bar as the builder's mutable form: [start_ns, open, high, low, close, volume,
    ticks, first_seq, last_seq]."""
    return [bar.start_ns, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.ticks,
            bar.first_seq, bar.last_seq]


def _extend(bar: Bar | None, piece: Bar, res_s: int) -> Bar:
    return piece.at(res_s) if bar is None else bar.merge(piece)


class BarBuilder:
    """The bars of one stream at every resolution, from its ticks in sequence order.

    :meth:`on_tick` returns the bars a tick closes (finest first); :meth:`forming` the bar in
    progress at a resolution, complete up to the last tick (what a chart's last bar shows).
    """

    __slots__ = ("_acc", "_floor_ns", "_second", "last_seq", "late", "replayed", "stream")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        # The forming 1 s bar, mutable: [start_ns, open, high, low, close, volume, ticks,
        # first_seq, last_seq]. Most ticks only update it, and a frozen Bar per tick would
        # cost most of on_tick's time (a frozen dataclass sets each field through
        # object.__setattr__).
        self._second: list[Any] | None = None
        # res -> the closed bars of the next finer res that the forming bar of res holds so
        # far (its forming part is the finer res's; 1 s: unused, see _second), mutable like
        # _second: a closed 1 s bar folds into the minute's on nearly every new second.
        self._acc: dict[int, list[Any] | None] = dict.fromkeys(RES_SECONDS)
        self._floor_ns = 0  # no tick goes into a 1 s bucket before this (closed bars stay)
        self.last_seq = -1
        self.late = 0
        self.replayed = 0

    @classmethod
    def resume(cls, stream: str, closed: Iterable[Bar]) -> BarBuilder:
        """A builder that continues from the closed bars a store holds.

        The forming bar of each resolution ``R`` above 1 s is rebuilt as the merge of the
        stored closed bars of the next finer resolution that came after ``R``'s last closed
        bar (``last_seq`` above it) and lie in the latest ``R`` bucket; the 1 s forming bar is
        rebuilt by feeding the stored ticks above :attr:`last_seq` to :meth:`on_tick` (lower
        ones are skipped as replays). ``closed`` needs, per resolution, at least its last
        closed bar and the finer closed bars after it; more is harmless, and a bar given
        twice counts once (the copy with the highest ``last_seq``, as stores read it).
        """
        builder = cls(stream)
        unique: dict[tuple[int, int], Bar] = {}
        for bar in closed:
            if bar.stream != stream:
                raise ValueError(f"bar of {bar.stream!r} given to resume {stream!r}")
            seen = unique.get((bar.res_s, bar.start_ns))
            if seen is None or bar.last_seq > seen.last_seq:  # as the store reads a repeat
                unique[bar.res_s, bar.start_ns] = bar
        by_res: dict[int, list[Bar]] = {r: [] for r in RES_SECONDS}
        for bar in sorted(unique.values(), key=lambda b: b.last_seq):
            by_res[bar.res_s].append(bar)
        finest = by_res[RES_SECONDS[0]]
        if finest:
            builder.last_seq = finest[-1].last_seq
            builder._floor_ns = finest[-1].start_ns + RES_SECONDS[0] * NS_PER_S
        for finer, res in pairwise(RES_SECONDS):
            done = by_res[res][-1].last_seq if by_res[res] else -1
            pieces = [b for b in by_res[finer] if b.last_seq > done]
            if not pieces:
                continue
            bucket = bucket_start(pieces[-1].start_ns, res)
            acc: Bar | None = None
            for piece in pieces:
                if bucket_start(piece.start_ns, res) == bucket:
                    acc = _extend(acc, piece, res)
            builder._acc[res] = None if acc is None else _fields(acc)
        return builder

    def on_tick(self, seq: int, ts_ns: int, bid: float, ask: float, last: float,
                volume: float) -> list[Bar]:
        """Add one tick; the bars it closes, finest first (none for most ticks)."""
        if seq <= self.last_seq:
            self.replayed += 1
            return []
        self.last_seq = seq
        price = tick_price(bid, ask, last)
        fine = RES_SECONDS[0]
        start = bucket_start(ts_ns, fine)
        if start < self._floor_ns:
            self.late += 1
            start = self._floor_ns
        self._floor_ns = start
        second = self._second
        if second is not None and second[0] == start:
            if price > second[2]:
                second[2] = price
            if price < second[3]:
                second[3] = price
            second[4] = price
            second[5] += volume
            second[6] += 1
            second[8] = seq
            return []
        closed: list[Bar] = []
        # A new 1 s bucket: the forming 1 s bar closes and folds into the forming minute; a
        # forming bar whose bucket the new tick is outside of closes and folds on up in turn.
        piece = second
        if piece is not None:
            closed.append(Bar(self.stream, fine, *piece))
        for res in RES_SECONDS[1:]:
            acc = self._acc[res]
            if piece is not None:
                if acc is None:
                    acc = [bucket_start(piece[0], res), *piece[1:]]
                else:  # Bar.merge, in place
                    if piece[2] > acc[2]:
                        acc[2] = piece[2]
                    if piece[3] < acc[3]:
                        acc[3] = piece[3]
                    acc[4] = piece[4]
                    acc[5] += piece[5]
                    acc[6] += piece[6]
                    acc[8] = piece[8]
            piece = None
            if acc is not None and acc[0] != bucket_start(start, res):
                closed.append(Bar(self.stream, res, *acc))
                piece, acc = acc, None
            self._acc[res] = acc
        self._second = [start, price, price, price, price, volume, 1, seq, seq]
        return closed

    def on_run(self, first_seq: int, ts: Sequence[int], bids: Sequence[float],
               asks: Sequence[float], lasts: Sequence[float],
               volumes: Sequence[float]) -> list[Bar]:
        """Add consecutive ticks ``first_seq``, ``first_seq + 1``, ... (columns of a run):
        the same bars as :meth:`on_tick` tick by tick, with the ticks that only update the
        forming 1 s bar folded a slice at a time (``max``/``min`` at C speed)."""
        n = len(ts)
        if first_seq <= self.last_seq:
            closed: list[Bar] = []
            for i in range(n):
                closed += self.on_tick(first_seq + i, ts[i], bids[i], asks[i], lasts[i],
                                       volumes[i])
            return closed
        prices = [last if last > 0 else (bid + ask) / 2
                  for bid, ask, last in zip(bids, asks, lasts, strict=True)]
        width = RES_SECONDS[0] * NS_PER_S
        closed = []
        i = 0
        while i < n:
            # The piece's first tick may close bars and open the forming one (and applies
            # the late rule); the ticks after it that stay in its bucket only update it.
            closed += self.on_tick(first_seq + i, ts[i], bids[i], asks[i], lasts[i],
                                   volumes[i])
            floor = self._floor_ns
            end = floor + width
            j = i + 1
            while j < n:
                t = ts[j]
                if t >= end:
                    break
                if t < floor:
                    self.late += 1  # before its bucket: into the forming bar, as on_tick does
                j += 1
            if j > i + 1:
                self._fold(prices, volumes, i + 1, j, first_seq)
            i = j
        return closed

    def _fold(self, prices: Sequence[float], volumes: Sequence[float], lo: int, hi: int,
              first_seq: int) -> None:
        """Ticks ``lo:hi`` of a run into the forming 1 s bar (all in its bucket)."""
        second = self._second
        assert second is not None
        piece = prices[lo:hi]
        high, low = max(piece), min(piece)
        if high > second[2]:
            second[2] = high
        if low < second[3]:
            second[3] = low
        second[4] = piece[-1]
        for v in volumes[lo:hi]:  # one by one: the same float sum as tick by tick
            second[5] += v
        second[6] += hi - lo
        self.last_seq = second[8] = first_seq + hi - 1

    def _second_bar(self) -> Bar | None:
        s = self._second
        return None if s is None else Bar(self.stream, RES_SECONDS[0], *s)

    def forming(self, res_s: int) -> Bar | None:
        """The bar in progress at ``res_s``: every tick since its bucket began (None: none)."""
        if res_s not in self._acc:
            format_resolution(res_s)
        bar = self._second_bar()
        for res in RES_SECONDS:
            fields = self._acc[res]
            if res > RES_SECONDS[0]:
                acc = None if fields is None else Bar(self.stream, res, *fields)
                bar = acc if bar is None else _extend(acc, bar, res)
            if res == res_s:
                return bar
        raise AssertionError("unreachable")


def bars_to_columns(bars: Iterable[Bar]) -> Columns:
    """Rows of the bars table (:data:`Table.BARS`), in the order given."""
    out = Columns(Table.BARS)
    out.extend_rows([(b.stream, b.res_s, b.start_ns, b.open, b.high, b.low, b.close, b.volume,
                      b.ticks, b.first_seq, b.last_seq) for b in bars])
    return out


def bars_from_columns(rows: Columns) -> list[Bar]:
    """The bars of rows read from the bars table."""
    if rows.table is not Table.BARS:
        raise ValueError(f"not bars: {rows.table.value}")
    return [Bar(*row) for row in rows.rows()]

