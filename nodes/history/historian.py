"""The historian: records every tick, order version and execution-log entry into history.

Inputs:

- **Ticks** through the subscriber library (the TCP path, gap repair by the recovery
  service). Each stream is recorded in sequence order from its watermark on (a stream new to
  history from its first sequence, 1): a tick above the next
  expected sequence (the historian restarted, or the subscriber gave a range up) first fills
  the gap from the feed's Redis stream (``P:ticks:{stream}``) within its retention; what Redis
  no longer holds is a **counted hole**, never silently skipped (a range a killed feed only
  reserved is counted apart, as unknown). A tick at or below the watermark is a duplicate and
  is dropped.
- **Orders** from the order store's history stream (``P:history``, PROTOCOL.md section 11):
  one entry per record write with the log entries it appended, numbered 1, 2, ... so the
  historian resumes exactly after its watermark, and a trimmed range is a counted hole.

Rows are buffered per table and written by one flusher in batches of ``batch_rows`` rows or
``batch_ms``, whichever comes first, through :class:`bus.history.writer.HistoryWriter` (both
servers of a ClickHouse pair with a spool, or one DuckDB file). The idempotency keys are
(stream, sequence) for ticks and (order id, log position) for executions; the watermarks in
the store (``max(seq)`` per stream, ``max(src)`` of orders) make a retry, a replay or a restart
write each row once. The buffers are bounded: a historian that cannot write stops reading, and
the subscriber's own bounded queue drops and repairs, so memory never grows without limit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import zmq.asyncio

from bus.aio import cancel_and_wait, wait_event
from bus.config import MeshConfig
from bus.history.bars import resumed_builder
from bus.history.query import HistoryQueryServer
from bus.history.readers import clickhouse_servers
from bus.history.writer import HistoryWriter
from bus.logutil import RateLimitedLog
from bus.store.orders import HistoryEntry, RedisOrderStore
from bus.store.ticks import RedisTickStore
from bus.ticks.subscriber import Subscriber, SubscriberOptions
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from protocols.errors import RemoteProtocolError, StoreError, StoreUnavailable
from protocols.history.bars import Bar, BarBuilder, bars_to_columns
from protocols.history.records import append_write
from protocols.history.schema import Columns, Table
from protocols.stats import percentiles
from protocols.ticks.messages import Row

__all__ = ["Historian", "HistorianStats"]

log = logging.getLogger(__name__)

FILL_CHUNK = 50_000  # ticks asked of Redis per backfill read
FILL_SETTLE_S = 2.0  # how long a recent gap may wait for the feed's checkpoint to reach Redis
ORDER_PAGE = 2_000  # history stream entries read per round trip
ORDER_BLOCK_MS = 100
MAX_PENDING_FACTOR = 4  # buffered rows beyond batch_rows x this: stop reading until written
LAG_SAMPLES = 4_096
RESET_CHECK_ROUNDS = 10  # idle history reads (of ORDER_BLOCK_MS) between reset checks
STOP_FLUSH_S = 5.0
READ_RETRY_S = 0.2  # pause before reading Redis again after it did not answer

T = TypeVar("T")


@dataclass(slots=True)
class HistorianStats:
    ticks: int = 0  # tick rows buffered for writing
    bars: int = 0
    orders: int = 0  # order versions
    executions: int = 0
    written: int = 0  # rows the writer accepted
    batches: int = 0
    backfilled: int = 0  # ticks read back from Redis into a gap
    tick_holes: int = 0  # ticks neither live nor in Redis (counted, reported)
    tick_unknown: int = 0  # sequences a killed feed session reserved: maybe never ticks
    order_holes: int = 0  # history stream entries trimmed before they were read
    duplicates: int = 0  # ticks at or below the watermark, dropped
    write_errors: int = 0  # writes that failed and were retried
    read_errors: int = 0  # Redis reads (order history, backfill) that failed and were retried
    bad_entries: int = 0  # history entries that did not decode (counted, skipped)
    order_stream_behind: int = 0  # checks that found the order store's stream reset


class Historian:
    """One historian: a subscriber, the order history stream, and a writer."""

    def __init__(self, cfg: MeshConfig, writer: HistoryWriter, *,
                 options: SubscriberOptions | None = None, stats_path: Path | None = None,
                 ticks: RedisTickStore | None = None,
                 orders: RedisOrderStore | None = None) -> None:
        h = cfg.history
        self.writer = writer
        self.batch_rows = h.batch_rows
        self.batch_s = h.batch_ms / 1000
        # The TCP path only: UDP is the charts' fast path, and its port belongs to another
        # subscriber (the feed sends each copy to listed targets); gaps are repaired from the
        # recovery service either way. Never conflation: history wants every tick, so a
        # historian too slow for its queue drops and repairs. No snapshot: a last value is not
        # a new tick.
        self.sub = Subscriber(options or SubscriberOptions.from_config(
            cfg, udp_bind="", multicast_group="", snapshot=False, slow_mode="drop"))
        self.tick_store = ticks or RedisTickStore.from_config(cfg)
        self.order_store = orders or RedisOrderStore.from_config(cfg)
        self.stats_path = stats_path
        self.query_bind = h.query_bind
        self.query: HistoryQueryServer | None = None  # serving while run() runs
        self.stats = HistorianStats()
        self._next: dict[str, int] = {}  # stream -> the next sequence to record
        self._bars: dict[str, BarBuilder] = {}
        self._quotes: dict[str, tuple[float, float]] = {}
        self._order_pos = 0
        self._buf = {t: Columns(t) for t in Table}
        self._buffered = 0
        self._full = asyncio.Event()  # a batch is due now
        self._drained = asyncio.Event()  # the buffers have room again
        self._drained.set()
        self._lags: list[float] = []  # seconds from a tick's feed time to its write
        self._oldest_feed_ns = 0  # the oldest feed time among buffered ticks
        self.ready = asyncio.Event()  # set once it resumed and subscribed
        self._behind_log = RateLimitedLog(log, "historian: order stream behind")
        self._inflight: asyncio.Task[None] | None = None  # the write on its way

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.writer.open()
        marks = await self.writer.resume_marks(Table.TICKS)
        self._next = {stream: seq + 1 for stream, seq in marks.items()}
        for stream, seq in marks.items():
            self._bars[stream] = await resumed_builder(self.writer.reader(), stream, upto=seq)
        log.info("historian resumes %d tick streams", len(marks))
        order_marks = [(await self.writer.resume_marks(t)).get("", 0)
                       for t in (Table.ORDERS, Table.EXECUTIONS)]
        # Orders and executions of one entry are written in one write(); the lower mark is
        # where both are complete (the writer skips what a table holds already).
        self._order_pos = min(order_marks)
        await self.sub.start()
        self.ready.set()

    # -- ticks -----------------------------------------------------------------------------

    async def _consume_ticks(self) -> None:
        while True:
            ticks = await self.sub.get_many(10_000)
            for tick in ticks:
                if tick.snapshot:
                    continue  # a last value the store holds already, not a new tick
                await self.ingest(tick.symbol, tick.session, tick.seq,
                                  ((tick.bid, tick.ask, tick.last, tick.volume,
                                    tick.source_time_ns, tick.feed_time_ns),))
            await self._room()

    async def ingest(self, stream: str, session: int, first_seq: int,
                     rows: Sequence[Row]) -> None:
        """Record consecutive ticks of ``stream`` from ``first_seq`` on: the subscriber's, or
        a replay's (the benchmark feeds this directly). Ticks at or below the stream's
        watermark are dropped as duplicates; a gap before them is backfilled first."""
        expected = self._next.get(stream)
        if expected is None:
            # A stream history has never seen is recorded from its first tick (sequences
            # start at 1): what Redis still holds is backfilled, what it trimmed before this
            # history began is a counted hole.
            log.info("historian: new stream %s (first live tick %d)", stream, first_seq)
            expected = 1
        skip = expected - first_seq
        if skip > 0:
            self.stats.duplicates += min(skip, len(rows))
            rows = rows[skip:]
            first_seq = expected
            if not rows:
                return
        if first_seq > expected:
            await self._backfill(stream, expected, first_seq - 1)
        self._add_rows(stream, first_seq, session, rows)
        self._next[stream] = first_seq + len(rows)

    async def replay(self, runs: Iterable[tuple[str, int, int, Sequence[Row]]]) -> None:
        """Record ``runs`` of (stream, session, first_seq, rows) as fast as the writer takes
        them, through the node's own flusher and back-pressure, and write what is left: a
        replay from a file, or the benchmark. The writer must be open; the subscriber is not
        used (:meth:`run` is the live node)."""
        flusher = asyncio.create_task(self._flusher(), name="flusher")
        try:
            for stream, session, first_seq, rows in runs:
                await self.ingest(stream, session, first_seq, rows)
                await self._room()
                # The subscriber's get_many yields to the loop between deliveries; so does a
                # replay, or the flusher would only run once the buffers are full.
                await asyncio.sleep(0)
        finally:
            await cancel_and_wait([flusher], what="the historian's flusher")
        await self.flush()

    def _add_rows(self, stream: str, first_seq: int, session: int,
                  rows: Sequence[Row]) -> None:
        """Buffer consecutive ticks of ``stream`` and the bars they close.

        A run at a time, columnwise: ``zip(*rows)`` splits it at C speed and each column list
        is extended once, where a row at a time cost most of the historian's CPU per tick."""
        n = len(rows)
        if not n:
            return
        bids, asks, lasts, volumes, ts, feeds = zip(*rows, strict=True)
        d = self._buf[Table.TICKS].data
        d["stream"].extend([stream] * n)
        d["seq"].extend(range(first_seq, first_seq + n))
        d["session"].extend([session] * n)
        d["ts_ns"].extend(ts)
        d["feed_ns"].extend(feeds)
        d["bid"].extend(bids)
        d["ask"].extend(asks)
        d["last"].extend(lasts)
        d["volume"].extend(volumes)
        self._quotes[stream] = (bids[-1], asks[-1])
        if not self._oldest_feed_ns:
            self._oldest_feed_ns = feeds[0]
        builder = self._bars.get(stream)
        if builder is None:
            builder = self._bars[stream] = BarBuilder(stream)
        closed = builder.on_run(first_seq, ts, bids, asks, lasts, volumes)
        if closed:
            self._buf[Table.BARS].extend(bars_to_columns(closed))
            self.stats.bars += len(closed)
            self._buffered += len(closed)
        self.stats.ticks += n
        self._buffered += n
        if self._buffered >= self.batch_rows:
            self._full.set()

    async def _backfill(self, stream: str, lo: int, hi: int) -> None:
        """Record ``lo..hi`` of ``stream`` from Redis; count what it cannot give as holes."""
        deadline = time.monotonic() + FILL_SETTLE_S
        while lo <= hi:
            res = await self._read(f"the backfill of {stream}", functools.partial(
                self.tick_store.fill, stream, lo, hi, FILL_CHUNK))
            got = 0
            for batch in res.batches:
                skip = max(0, lo - batch.first_seq)
                rows = batch.rows[skip:]
                self._add_rows(stream, batch.first_seq + skip, batch.session, rows)
                got += len(rows)
            for r in res.unknown:
                # Reserved by a feed session that was killed: it may never have carried
                # ticks (PROTOCOL.md section 11), so it is counted apart from holes.
                self.stats.tick_unknown += r.last - r.first + 1
            settled = res.settled_to
            if settled < lo:
                # Not checkpointed yet (the feed writes behind by milliseconds): wait a
                # little; a range that never settles (a dead feed) is a hole.
                if time.monotonic() < deadline and res.known_stream:
                    await asyncio.sleep(0.02)
                    continue
                settled = hi
            covered = got + sum(r.last - r.first + 1 for r in res.unknown)
            missing = settled - lo + 1 - covered
            if missing > 0:
                log.warning("historian: %s seq %d..%d: %d ticks no longer in Redis (a hole)",
                            stream, lo, settled, missing)
                self.stats.tick_holes += missing
            self.stats.backfilled += got
            lo = settled + 1
            await self._room()

    # -- orders ----------------------------------------------------------------------------

    async def _consume_orders(self) -> None:
        idle = 0
        while True:
            entries = await self._read("the order history", lambda: self.order_store.history(
                self._order_pos, ORDER_PAGE, block_ms=ORDER_BLOCK_MS))
            if not entries:
                idle += 1
                if idle % RESET_CHECK_ROUNDS == 0:
                    await self._check_reset()
                continue
            idle = 0
            first = entries[0].position
            if first > self._order_pos + 1:
                missing = first - self._order_pos - 1
                log.warning("historian: order history %d..%d was trimmed before it was read "
                            "(%d entries, a hole)", self._order_pos + 1, first - 1, missing)
                self.stats.order_holes += missing
            for entry in entries:
                self._add_entry(entry)
                self._order_pos = entry.position
            await self._room()

    async def _read(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again after a pause for as long as Redis does not answer (a failover,
        or this process off the CPU past the socket timeout): both reads are positional (the
        stream's position, the gap's sequence), so reading again loses and doubles nothing,
        where ending the task would stop the historian."""
        while True:
            try:
                return await call()
            except StoreUnavailable as exc:
                self.stats.read_errors += 1
                log.warning("historian: %s: Redis did not answer, reading again: %s", what, exc)
                await asyncio.sleep(READ_RETRY_S)

    async def _check_reset(self) -> None:
        """An order store whose history stream numbers below what history holds was wiped
        under running backends (a restarted backend rebuilds it and restores the position).
        Its new writes would sit below the watermark: say so, loudly and counted."""
        position = await self._read("the history position",
                                    self.order_store.history_position)
        if position < self._order_pos:
            self.stats.order_stream_behind += 1
            self._behind_log.warning(
                "historian: the order store's history stream is at %d, history at %d: the "
                "store was wiped under running backends; restart them so the active one "
                "rebuilds from history (until then its writes are not recorded)", position,
                self._order_pos)

    def _add_entry(self, entry: HistoryEntry) -> None:
        try:
            rows = append_write(self._buf[Table.ORDERS], self._buf[Table.EXECUTIONS],
                                entry.position, entry.record, entry.entries, self._quote)
        except RemoteProtocolError as exc:
            log.error("historian: history entry %d does not decode: %s", entry.position, exc)
            self.stats.bad_entries += 1
            return
        self.stats.orders += 1
        self.stats.executions += rows - 1
        self._buffered += rows
        if self._buffered >= self.batch_rows:
            self._full.set()

    def _quote(self, symbol: str) -> tuple[float, float]:
        return self._quotes.get(symbol, (0.0, 0.0))

    # -- writing ---------------------------------------------------------------------------

    async def _room(self) -> None:
        """Wait while the buffers are full (the flusher is behind: a store is slow or down)."""
        if self._buffered >= self.batch_rows * MAX_PENDING_FACTOR:
            self._drained.clear()
            self._full.set()
            await self._drained.wait()

    async def _flusher(self) -> None:
        while True:
            await wait_event(self._full, self.batch_s)
            self._full.clear()
            await self.flush()
            await self.writer.maintain()

    async def flush(self) -> None:
        """Write what is buffered; on failure keep it and try again (it is not lost).

        The write runs as a task of its own, shielded: a stop that cancels the flusher while
        a batch is on its way lets that write finish (the store may have applied it, and the
        writer must learn its marks), and :meth:`run` awaits it before the final flush."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
        if not self._buffered:
            return
        batches = [self._buf[t] for t in Table]
        oldest = self._oldest_feed_ns
        self._buf = {t: Columns(t) for t in Table}
        rows, self._buffered, self._oldest_feed_ns = self._buffered, 0, 0
        self._inflight = asyncio.create_task(self._write(batches, rows, oldest), name="write")
        await asyncio.shield(self._inflight)

    async def _write(self, batches: list[Columns], rows: int, oldest_feed_ns: int) -> None:
        while True:
            try:
                await self.writer.write(batches)
                break
            except StoreError as exc:
                self.stats.write_errors += 1
                log.warning("historian: write of %d rows failed, retrying: %s", rows, exc)
                await asyncio.sleep(0.2)
        self.stats.written += rows
        self.stats.batches += 1
        if oldest_feed_ns:
            self._lag(time.time_ns() - oldest_feed_ns)
        self._inflight = None
        self._drained.set()

    def _lag(self, ns: int) -> None:
        if len(self._lags) >= LAG_SAMPLES:
            del self._lags[: LAG_SAMPLES // 2]
        self._lags.append(ns / 1e9)

    # -- queries ---------------------------------------------------------------------------

    def forming(self, stream: str, res_s: int) -> Bar | None:
        """The bar of ``stream`` at ``res_s`` in progress (None: no tick of it yet)."""
        builder = self._bars.get(stream)
        return None if builder is None else builder.forming(res_s)

    # -- the node --------------------------------------------------------------------------

    def collect(self) -> dict[str, Any]:
        got = percentiles(self._lags, (0.5, 0.99))
        lags: list[float | None] = list(got) if got else [None, None]
        return {
            "node": "historian",
            **asdict(self.stats),
            "streams": len(self._next),
            "order_position": self._order_pos,
            "lag_ms_p50": _ms(lags[0]),
            "lag_ms_p99": _ms(lags[1]),
            "writer": self.writer.stats(),
            "query": None if self.query is None else self.query.collect(),
            "subscriber": {k: v for k, v in self.sub.stats().items()
                           if k in ("lost", "unknown", "filled", "dropped")},
        }

    async def run(self, stop: asyncio.Event) -> int:
        await self.start()
        try:
            if self.query_bind:
                # Readers of the store ask here: a DuckDB file is open in this process only.
                self.query = HistoryQueryServer(self.writer.reader, self.forming,
                                                self.query_bind, zmq.asyncio.Context.instance())
                log.info("historian answers history queries on %s", self.query.endpoint)
            tasks = [asyncio.create_task(self._consume_ticks(), name="ticks"),
                     asyncio.create_task(self._consume_orders(), name="orders"),
                     asyncio.create_task(self._flusher(), name="flusher")]
            if self.query is not None:
                tasks.append(asyncio.create_task(self.query.serve(), name="query"))
            if self.stats_path is not None:
                tasks.append(asyncio.create_task(
                    stats_writer(self.stats_path, 0.5, self.collect), name="stats"))
            code = await supervise_tasks("historian", stop, tasks)
            try:
                # An orderly stop writes what it holds; a store that is down by then leaves
                # it to the next start's backfill (the watermarks say where).
                async with asyncio.timeout(STOP_FLUSH_S):
                    await self.flush()
            except TimeoutError:
                log.warning("historian: the final write did not finish within %.0f s",
                            STOP_FLUSH_S)
        finally:
            if self.query is not None:
                await self.query.close()
            await self.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
        return code

    async def close(self) -> None:
        await self.sub.close()
        await self.writer.close()
        await self.tick_store.close()
        await self.order_store.close()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def open_writer(cfg: MeshConfig, root: Path | None = None) -> HistoryWriter:
    """The writer of a mesh's ``[history]``: one DuckDB file, or the ClickHouse servers with
    their spool."""
    from bus.store.history_duck import DuckDBHistoryStore

    h = cfg.history
    base = root or Path.cwd()
    if h.store == "duckdb":
        return HistoryWriter([DuckDBHistoryStore(str(base / h.duckdb_path))])
    servers = clickhouse_servers(h)
    spool = DuckDBHistoryStore(str(base / h.spool_path)) if len(servers) > 1 else None
    return HistoryWriter(servers, spool)
