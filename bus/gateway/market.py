"""The gateway's market data: ticks from the bus, live bars, and the trails clients read.

One :class:`MarketData` per gateway. It subscribes to every symbol through the subscriber
library (TCP only: the UDP port belongs to the monitor, and a chart does not need the fast
path's last millisecond) and keeps per symbol the latest tick (:class:`LatestValue`) and a
:class:`~protocols.history.bars.BarBuilder` whose bars feed one :class:`BarTrail` per resolution.

**The seam with history.** Bars must be the history's bars: a gateway started (or restarted)
mid-bar rebuilds each forming bar from the store. It takes the first live tick ``F`` of a
symbol, resumes the builder from the history up to what the history holds (``H``, its tick
watermark), reads the ticks ``H + 1 .. F - 1`` that the history has not written yet from the
feed's checkpoints in Redis (the tick store the recovery service serves gap fills from), and
then applies the live ticks it buffered meanwhile (bounded by :data:`SEAM_BUFFER`). Nothing
waits for the historian to catch up. Ticks neither store has leave a counted ``seam_gap``. A
symbol is *ready* once this is done; its bars streams are served from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bus.aio import cancel_and_wait
from bus.history.bars import resumed_builder
from bus.store.history_reader import HistoryReader
from bus.store.ticks import TickStore
from bus.ticks.subscriber import Subscriber, SubscriberOptions
from protocols.errors import StoreError
from protocols.gateway.streams import BarTrail, LatestValue
from protocols.gateway.wire import StreamKind, StreamName, bar_item, tick_item
from protocols.history.bars import RES_SECONDS, Bar, BarBuilder, bars_from_columns
from protocols.history.schema import END_OF_TIME, NS_PER_S, Table
from protocols.ticks.messages import Tick

__all__ = ["MarketData", "MarketStats"]

log = logging.getLogger(__name__)

SEAM_WAIT_S = 3.0  # how long a starting gateway asks a history that does not answer yet
SEAM_POLL_S = 0.05
SEAM_FILL_MAX = 200_000  # ticks read from the tick store to join the history to the live ticks
SEAM_FILL_CHUNK = 50_000
SEAM_BUFFER = 200_000  # live ticks of one symbol held while its bars are rebuilt


@dataclass(slots=True)
class MarketStats:
    ticks: int = 0
    bars_closed: int = 0
    seam_gap: int = 0  # ticks between the history and the first live tick that neither had
    seam_dropped: int = 0  # live ticks dropped while a symbol's bars were rebuilt (buffer full)
    history_errors: int = 0
    ready: int = 0
    tick_rate: float = 0.0  # ticks/s over the last second
    _window: deque[tuple[float, int]] = field(default_factory=deque)


@dataclass(slots=True)
class _Symbol:
    builder: BarBuilder | None = None  # None until ready
    pending: deque[Tick] = field(default_factory=deque)
    resuming: asyncio.Task[None] | None = None
    dirty: bool = False
    flushed_ticks: int = 0
    ticks: int = 0


class MarketData:
    """Ticks and bars of ``symbols`` for the gateway's clients."""

    def __init__(self, options: SubscriberOptions, symbols: Sequence[str],
                 reader: HistoryReader | None, epoch: int, *, retention_count: int,
                 retention_s: float, tick_store: TickStore | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.symbols = tuple(symbols)
        self.epoch = epoch
        self.stats = MarketStats()
        self._options = options
        self._reader = reader
        self._tick_store = tick_store
        self._clock = clock
        self._count = retention_count
        self._keep_ns = int(retention_s * NS_PER_S)
        self._sub: Subscriber | None = None
        self._task: asyncio.Task[None] | None = None
        self._state = {s: _Symbol() for s in self.symbols}
        self.ticks = {s: LatestValue() for s in self.symbols}
        self.trails: dict[tuple[str, int], BarTrail] = {}
        for s in self.symbols:
            for res in RES_SECONDS:
                name = StreamName(StreamKind.BARS, s, res).name
                self.trails[s, res] = BarTrail(partial(bar_item, name, epoch), retention_count,
                                               self._keep_ns)
        self._ready = {s: asyncio.Event() for s in self.symbols}
        self._marks: asyncio.Future[dict[str, int]] | None = None
        self._marks_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._sub = Subscriber(self._options)
        await self._sub.start()
        self._task = asyncio.create_task(self._run(), name="gateway-market")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *(st.resuming for st in self._state.values()))
                 if t is not None]
        await cancel_and_wait(tasks, what="gateway market data")
        if self._sub is not None:
            await self._sub.close()

    def ready(self, symbol: str) -> bool:
        return self._ready[symbol].is_set()

    async def wait_ready(self, symbol: str) -> None:
        await self._ready[symbol].wait()

    def subscriber_stats(self) -> dict[str, Any]:
        return self._sub.stats() if self._sub is not None else {}

    def forming(self, symbol: str, res_s: int) -> Bar | None:
        """The bar in progress (None before the symbol is ready or before its first tick)."""
        b = self._state[symbol].builder
        return None if b is None else b.forming(res_s)

    # -- ticks in --------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._sub is not None
        while True:
            ticks = await self._sub.get_many()
            self.on_ticks(ticks)

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        """Ticks from the bus, in sequence order per symbol."""
        now = self._clock()
        by_symbol: dict[str, list[Tick]] = {}
        for t in ticks:
            if t.symbol in self._state and not t.snapshot:
                by_symbol.setdefault(t.symbol, []).append(t)
        for symbol, mine in by_symbol.items():
            st = self._state[symbol]
            st.ticks += len(mine)
            self._latest(mine[-1])  # a chart needs the newest: one per symbol and batch
            if st.builder is None:
                for t in mine:
                    self._hold(t, st)
            else:
                self._apply(mine, st, now)
        self.stats.ticks += len(ticks)

    def _latest(self, t: Tick) -> None:
        name = f"ticks:{t.symbol}"
        st = self._state[t.symbol]

        def make() -> str:
            folded, st.flushed_ticks = st.ticks - st.flushed_ticks, st.ticks
            return tick_item(name, self.epoch, t.seq, t.bid, t.ask, t.last, t.volume,
                             t.source_time_ns, t.feed_time_ns, folded)

        self.ticks[t.symbol].set(t.seq, make)

    def _apply(self, ticks: Sequence[Tick], st: _Symbol, now_ns: int) -> None:
        """Ticks of one symbol, in sequence order, into its builder a consecutive run at a
        time (``BarBuilder.on_run``, the historian's path: the ticks that only update the
        forming second are folded at C speed, where one call a tick cost most of the CPU)."""
        builder = st.builder
        assert builder is not None
        start = 0
        for k in range(1, len(ticks) + 1):
            if k < len(ticks) and ticks[k].seq == ticks[k - 1].seq + 1:
                continue
            run = ticks[start:k]
            closed = builder.on_run(run[0].seq, [t.source_time_ns for t in run],
                                    [t.bid for t in run], [t.ask for t in run],
                                    [t.last for t in run], [t.volume for t in run])
            for bar in closed:
                self.trails[bar.stream, bar.res_s].on_closed(bar, now_ns)
            self.stats.bars_closed += len(closed)
            start = k
        st.dirty = True

    def _hold(self, t: Tick, st: _Symbol) -> None:
        if len(st.pending) >= SEAM_BUFFER:
            st.pending.popleft()
            self.stats.seam_dropped += 1
        st.pending.append(t)
        if st.resuming is None:
            st.resuming = asyncio.create_task(self._resume(t.symbol, t.seq),
                                              name=f"gateway-resume-{t.symbol}")

    def refresh(self) -> None:
        """Before a flush: the forming bars of the symbols that ticked since the last one."""
        for symbol, st in self._state.items():
            if st.dirty and st.builder is not None:
                st.dirty = False
                for res in RES_SECONDS:
                    self.trails[symbol, res].set_forming(st.builder.forming(res))

    def tick_rate(self, now_s: float) -> float:
        w = self.stats._window
        w.append((now_s, self.stats.ticks))
        while len(w) > 2 and w[0][0] < now_s - 1.0:
            w.popleft()
        dt = w[-1][0] - w[0][0]
        self.stats.tick_rate = (w[-1][1] - w[0][1]) / dt if dt > 0 else 0.0
        return self.stats.tick_rate

    # -- the seam with history -------------------------------------------------------------

    async def _resume(self, symbol: str, first_live: int) -> None:
        st = self._state[symbol]
        builder = BarBuilder(symbol)
        closed: dict[int, list[Bar]] = {}
        if self._reader is not None:
            try:
                held = min(await self._history_holds(symbol), first_live - 1)
                builder = await resumed_builder(self._reader, symbol, upto=held)
                closed = await self._seed_bars(symbol, builder)
            except StoreError as exc:  # the history is away: live bars only, counted
                self.stats.history_errors += 1
                log.warning("gateway: %s bars start from live ticks only: %s", symbol, exc)
        from_history = max(builder.last_seq, 0)  # a new builder's last_seq is -1
        between = await self._checkpointed(symbol, from_history + 1, first_live - 1)
        now = self._clock()
        for res in RES_SECONDS:
            bars = closed.get(res, [])
            floor = bars[0].first_seq - 1 if len(bars) >= self._seed_count(res) else 0
            if not bars and from_history == 0:
                floor = (between[0].seq if between else first_live) - 1  # nothing before
            self.trails[symbol, res].seed(bars, floor, now)
        st.builder = builder
        self._apply(between, st, now)
        gap = first_live - builder.last_seq - 1 if builder.last_seq > 0 else 0
        self.stats.seam_gap += max(0, gap)
        self._apply(list(st.pending), st, now)
        st.pending.clear()
        st.dirty = True
        self.refresh()
        self.stats.ready += 1
        self._ready[symbol].set()
        log.info("gateway: %s ready at seq %d: history to %d, %d ticks from the tick store, "
                 "seam gap %d", symbol, builder.last_seq, from_history, len(between), gap)

    async def _history_holds(self, symbol: str) -> int:
        """How far the history holds ``symbol``'s ticks. A history that does not answer yet
        (a historian starting beside this gateway) is asked again for :data:`SEAM_WAIT_S`."""
        deadline = time.monotonic() + SEAM_WAIT_S
        while True:
            try:
                return (await self._tick_marks()).get(symbol, 0)
            except StoreError:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(SEAM_POLL_S)

    async def _checkpointed(self, symbol: str, lo: int, hi: int) -> list[Tick]:
        """Ticks ``lo..hi`` from the feed's checkpoints in Redis (the tick store): what the
        history has not written yet (it trails the live stream by a batch or so). At most
        :data:`SEAM_FILL_MAX`, the newest; what the store lacks is left to ``seam_gap``."""
        if self._tick_store is None or hi < lo:
            return []
        lo = max(lo, hi - SEAM_FILL_MAX + 1)
        out: list[Tick] = []
        try:
            while lo <= hi:
                got = await self._tick_store.fill(symbol, lo, hi, SEAM_FILL_CHUNK)
                for b in got.batches:
                    out.extend(Tick.from_row(symbol, b.first_seq + i, b.session, row)
                               for i, row in enumerate(b.rows))
                if got.settled_to < lo:
                    break
                lo = got.settled_to + 1
        except StoreError as exc:
            self.stats.history_errors += 1
            log.warning("gateway: %s ticks %d..%d not read from the tick store: %s", symbol,
                        lo, hi, exc)
        return out

    async def _tick_marks(self) -> dict[str, int]:
        """The history's tick watermarks, one query shared by every symbol waiting at once
        (the historian answers them on the loop it writes with: ask it little)."""
        stale = time.monotonic() - self._marks_at >= SEAM_POLL_S
        if self._marks is None or (self._marks.done() and stale):
            assert self._reader is not None
            self._marks_at = time.monotonic()
            self._marks = asyncio.ensure_future(self._reader.watermarks(Table.TICKS))
        return await asyncio.shield(self._marks)

    async def _seed_bars(self, symbol: str, builder: BarBuilder) -> dict[int, list[Bar]]:
        """The closed bars of every resolution the trails start with (those the builder has
        not folded into a forming bar: the store's bars up to its resume point)."""
        assert self._reader is not None
        out: dict[int, list[Bar]] = {}
        for res in RES_SECONDS:
            forming = builder.forming(res)
            end = forming.start_ns if forming is not None else END_OF_TIME
            cols = await self._reader.bars(symbol, res, 0, end, countback=self._seed_count(res))
            out[res] = [b for b in bars_from_columns(cols) if b.last_seq <= builder.last_seq]
        return out

    def _seed_count(self, res_s: int) -> int:
        """Closed bars a trail starts with: those the retention window can ask for (a client
        away for ``retention_s`` missed at most that many, plus the two at its edges)."""
        return min(self._count, int(self._keep_ns // (res_s * NS_PER_S)) + 2)
