"""The executor node: the EA's trade side, simulated against the last tick of the tick store.

Rules (the "Execute" flow of docs/ORDERS.md):

* One DEALER per backend endpoint (``ROUTING_ID`` = the node's name), connected to that
  backend's "executor" ROUTER; a report goes back on the socket the order's latest message came
  from (the active backend). A restarted executor reconnects under the same routing id, so the
  backend's ROUTER needs ``ROUTER_HANDOVER``.
* The executor owns a working order: every decision about it (a fill, a reject, a cancel, a
  replace) is an :class:`~protocols.orders.messages.ExecutionReport` appended to the order's
  execution log in the order store (``OrderStore.append_executions``) at the next position ``seq``,
  with the deterministic ``exec_id`` ``{order_id}:{seq}``. The append is a compare-and-set on the
  log's length: a decision is final once appended, and one that lost (another decider got there
  first: a restarted executor, a racing cancel) gets the entries it missed instead and decides
  again from there. Fills and final decisions are recorded as executed in the same step. So an
  order is executed at most once per position however often it arrives, and a restarted executor
  continues from the log.
* Batches: a reader that wakes up takes every message already queued on its socket (at most
  ``BATCH``), decides each (``protocols.orders.execution.Batch``: two decisions for one order
  are consecutive positions) and records all the decisions in one store round trip (one
  script, one ``WAIT``), then sends each appended entry. It never waits to fill a batch: idle,
  a batch is one message. A request whose entry lost, or whose answer depends on the batch's
  entries, is decided again in a next round of the same batch. One batch decides at a time
  (the readers of both sockets and the resting poller, which batches each round the same
  way); a batch waiting for its turn grows meanwhile. A store error leaves the batch's orders
  unanswered (their backend re-drives them).
* Each entry is sent to the backend; the backend applies the log in order and re-drives an
  order whose record lags (after a takeover, or a lost message): the re-driven ``Order`` carries
  the position the backend is at (``exec_seq``), and the executor answers with every entry
  after it.
* Fills: a MARKET order fills at the last ask (BUY) or bid (SELL) of the symbol's last tick, at
  most ``fill_lots`` lots per fill (0: all of it); the rest fills in later slices, one per
  ``poll_s``, at the quote of the moment (simulated liquidity). A MARKET order with no usable
  two-sided quote and no fill yet is REJECTED; once partly filled it waits for a quote. A LIMIT
  order fills at its limit price when marketable (BUY limit >= ask, SELL limit <= bid) and rests
  otherwise, re-checked every ``poll_s``. Working orders are bounded (``max_resting``): a new
  one beyond the bound is REJECTED, never dropped.
* A ``CancelRequest`` and a ``ReplaceRequest`` from the backend are decided the same way,
  against the order as the log has it: a cancel of a terminal order is answered with its final
  entry; a replace the order cannot take any more (terminal, or filled up to the new quantity
  meanwhile) is refused with a ``ReplaceRefused`` naming the order id.
* The decisions themselves (fill price, marketable limits, answers to requests, the bound on
  resting orders) are ``protocols.orders.execution``'s; this node reads quotes and the log,
  appends and sends.
* Working orders live in memory; the log is the truth. After a restart an order comes back when
  a backend re-drives it (or sends a request for it: the record is then read from the store).
* A frame that does not decode, or a message the executor does not take, is counted as
  malformed and logged rate-limited; a request for an order the store does not know is counted
  as unknown. The node keeps serving either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from bus.config import MeshConfig
from bus.logutil import RateLimitedLog
from bus.sockets import EXECUTOR, Sender, drain_queued, open_socket
from bus.store.orders import OrderStore, RedisOrderStore
from bus.store.ticks import QuoteCache, RedisTickStore, TickStore
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from protocols.errors import InvalidOrder, OrderStateError, RemoteProtocolError, StoreError
from protocols.orders.codec import decode_order, encode_order
from protocols.orders.execution import LATER, Batch, decide, exec_id, over_capacity
from protocols.orders.fields import check_id
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelRequest,
    ExecutionReport,
    ExecutorRequest,
    RejectReason,
    ReplaceRefused,
    ReplaceRequest,
)
from protocols.orders.record import Order
from protocols.orders.risk import Quote, usable_quote

log = logging.getLogger(__name__)

QUOTE_TTL_S = 0.005  # fills price at the last tick: re-read it at most every 5 ms
RECENT_ORDERS = 10_000  # finished orders whose log is kept in memory for replays
MAX_RESTING = 10_000
BATCH = 256  # messages served per wake-up of a reader; log entries per store round trip


# --- the node --------------------------------------------------------------------------------


@dataclass(slots=True)
class ExecutorStats:
    orders: int = 0  # Order messages received (re-drives included)
    fills: int = 0  # fill entries this process appended (partial fills included)
    rejects: int = 0
    cancels: int = 0  # cancel requests that won the race against the fills
    replaces: int = 0
    amends_refused: int = 0  # replace requests the order could no longer take
    replays: int = 0  # entries sent again to a backend that lagged
    conflicts: int = 0  # appends that lost to an entry decided elsewhere first
    resting: int = 0  # working orders waiting for liquidity or a marketable price (a gauge)
    malformed: int = 0
    ignored: int = 0  # orders in a state the executor does not work (e.g. ACCEPTED)
    unknown: int = 0  # requests for an order the store does not know
    store_errors: int = 0  # an order left unanswered: its backend re-drives it
    unsent: int = 0  # a message the socket would not take (backend gone): it re-drives


@dataclass(slots=True)
class _Order:
    """The executor's view of one order: the backend's record with the log folded in."""

    order: Order
    socket: int  # where its reports go: the socket its latest message came from
    entries: list[ExecutionReport] = field(default_factory=list)  # the log from `first` on
    first: int = 1  # position of entries[0]
    checked: bool = False  # the log was read (or appended to) since this view was made


@dataclass(slots=True, eq=False)
class _Work:
    """One message of a batch with its order's view: a request, or (``request`` None) an
    order to work (``new``: first seen)."""

    view: _Order
    request: ExecutorRequest | None = None
    new: bool = False
    settle: bool = True  # filed as working or done once decided (not after a refusal of a
    # working order the executor does not work yet: it waits for its re-drive)
    done: bool = False


class ExecutorNode:
    """The simulated executor; connects to every backend's "executor" ROUTER endpoint."""

    def __init__(self, cfg: MeshConfig, *, name: str = "executor", backends: tuple[str, ...],
                 store: OrderStore | None = None, ticks: TickStore | None = None,
                 stats_path: Path | None = None, poll_s: float = 0.05,
                 max_resting: int = MAX_RESTING, fill_lots: float | None = None) -> None:
        if not backends:
            raise ValueError("an executor needs at least one backend endpoint")
        self.name = name
        self._owned: list[OrderStore | TickStore] = []
        if store is None:
            store = RedisOrderStore.from_config(cfg)
            self._owned.append(store)
        if ticks is None:
            ticks = RedisTickStore.from_config(cfg)
            self._owned.append(ticks)
        self.store: OrderStore = store
        self.ticks: TickStore = ticks
        self.poll_s = poll_s
        self.max_resting = max_resting
        self.fill_lots = cfg.orders.fill_lots if fill_lots is None else fill_lots
        self.stats_path = stats_path
        self.stats = ExecutorStats()
        self.backends = backends
        self.ctx = zmq.asyncio.Context()
        self.socks: list[zmq.asyncio.Socket] = []
        for endpoint in backends:
            sock = open_socket(self.ctx, EXECUTOR, connect=(endpoint,), routing_id=name.encode())
            self.socks.append(sock)
        # Reports go out without the asyncio layer (no Future per message).
        self.outs = [Sender(sock) for sock in self.socks]
        self._working: dict[str, _Order] = {}
        self._done: OrderedDict[str, _Order] = OrderedDict()  # finished, for replays
        # One batch decides at a time: the readers of both sockets and the resting poller may
        # act on the same order (a view folded twice, a request decided against a stale
        # view). A batch waiting for its turn only grows meanwhile.
        self._deciding = asyncio.Lock()
        # Rides through a failover of the tick store like the backend does: the venue keeps
        # the last price it saw. Without it every order that arrived during an RTS switch was
        # left unanswered (about 2,000 a Redis drill run) and came back as a re-drive.
        self._quote_cache = QuoteCache(ticks, QUOTE_TTL_S, stale_s=cfg.redis.deadline_ms / 1000)
        self._working_changed = asyncio.Event()
        self._bad = RateLimitedLog(log, f"executor {name}: malformed message")
        self._store_log = RateLimitedLog(log, f"executor {name}: store error")
        self._ignored = RateLimitedLog(log, f"executor {name}: message not taken")

    # --- handling ----------------------------------------------------------------------------

    async def handle(self, batch: Sequence[list[bytes]], socket: int) -> None:
        """Serve one batch of messages from the backend behind ``self.socks[socket]``: decide
        each, record the decisions in one store round trip, send what was recorded."""
        msgs = [msg for msg in map(self._decode, batch) if msg is not None]
        work = await self._resolve(msgs, socket)
        try:
            await self._work(work)
        except StoreError as exc:
            orders = {w.view.order.order_id for w in work if not w.done}
            self.stats.store_errors += len(orders)
            self._store_log.warning("%d order(s) left unanswered (%s): %s", len(orders),
                                    ", ".join(sorted(orders)[:3]), exc)

    def _decode(self, frames: list[bytes]) -> Order | ExecutorRequest | None:
        """The message of ``frames`` if the executor takes it (else counted as malformed)."""
        try:
            msg = decode_order(frames)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            self._bad.warning("%s", exc.reason)
            return None
        if isinstance(msg, Order):
            self.stats.orders += 1
        elif not isinstance(msg, (CancelRequest, ReplaceRequest)):
            self.stats.malformed += 1
            self._bad.warning("%s is not an order, a cancel or a replace request",
                              type(msg).__name__)
            return None
        try:
            check_id("exec_id", exec_id(msg.order_id, 2**32 - 1))  # the longest it may need
        except InvalidOrder as exc:
            self.stats.malformed += 1
            self._bad.warning("order %s: %s", msg.order_id, exc)
            return None
        return msg

    async def _resolve(self, msgs: Sequence[Order | ExecutorRequest], socket: int
                       ) -> list[_Work]:
        """The work of a batch: each message with its order's view. A re-drive of a known
        order is answered here (a replay); orders not in memory are read from the store, all
        at once; an order whose read fails is left unanswered (its backend re-drives it)."""
        to_read: dict[str, Order | ExecutorRequest] = {}
        for msg in msgs:
            if (msg.order_id not in to_read and self._known(msg.order_id) is None
                    and (not isinstance(msg, Order) or msg.state.at_executor)):
                to_read[msg.order_id] = msg
        views, failed = await self._read_views(list(to_read.values()), socket)
        work: list[_Work] = []
        new: set[str] = set()
        for msg in msgs:
            oid = msg.order_id
            if oid in failed:
                continue
            known = self._known(oid)
            view = known or views.get(oid)
            if isinstance(msg, Order):
                if view is not None and oid in new:  # twice in one batch: decided once
                    view.socket = socket
                elif view is not None and known is None and to_read.get(oid) is msg:
                    new.add(oid)  # first seen
                    work.append(_Work(view, new=True))
                elif view is not None and (known is not None or msg.state.at_executor):
                    view.socket = socket  # a re-drive: answer what the backend lacks
                    try:
                        await self._replay(view, msg.exec_seq)
                    except StoreError as exc:
                        self._unanswered(oid, exc)
                else:
                    self.stats.ignored += 1
                    self._ignored.warning("order %s is %s", oid, msg.state.name)
            elif view is None:
                self.stats.unknown += 1
                self._ignored.warning("request for order %s, which the store does not know",
                                      oid)
                if isinstance(msg, ReplaceRequest):
                    await self._send(socket, ReplaceRefused(oid, RejectReason.UNKNOWN_ORDER,
                                                            "no such order"))
            else:
                view.socket = socket
                work.append(_Work(view, msg))
        return work

    async def _read_views(self, msgs: Sequence[Order | ExecutorRequest], socket: int
                          ) -> tuple[dict[str, _Order], set[str]]:
        """Views of orders not in memory, by order id, and the ids whose store read failed.
        A first-seen order is decided without reading its log first: the append tells if
        anyone decided before (one Redis round trip saved on the common path)."""
        views: dict[str, _Order] = {}
        reads: list[Order | ExecutorRequest] = []
        for msg in msgs:
            if isinstance(msg, Order):
                views[msg.order_id] = _Order(msg, socket, first=msg.exec_seq + 1)
                if msg.exec_seq > 0:  # the backend has applied entries: the log is ahead
                    reads.append(msg)
            else:
                reads.append(msg)
        got = await asyncio.gather(*(self._read_view(msg, views.get(msg.order_id), socket)
                                     for msg in reads), return_exceptions=True)
        failed: set[str] = set()
        for msg, view in zip(reads, got, strict=True):
            if isinstance(view, StoreError):
                failed.add(msg.order_id)
                self._unanswered(msg.order_id, view)
            elif isinstance(view, BaseException):
                raise view
            elif view is None:
                views.pop(msg.order_id, None)
            else:
                views[msg.order_id] = view
        return views, failed

    async def _read_view(self, msg: Order | ExecutorRequest, view: _Order | None,
                         socket: int) -> _Order | None:
        """``view`` with its log read, or for a request the backend's record from the store
        with the log folded in (None: the store does not know the order, or it was never
        routed: nothing for the executor to decide)."""
        if view is None:
            record = await self.store.get(msg.order_id)
            if record is None or record.state.unrouted:
                return None
            view = _Order(record, socket, first=record.exec_seq + 1)
        await self._read_log(view)
        return view

    def _known(self, order_id: str) -> _Order | None:
        return self._working.get(order_id) or self._done.get(order_id)

    def _unanswered(self, order_id: str, exc: StoreError) -> None:
        self.stats.store_errors += 1
        self._store_log.warning("order %s left unanswered: %s", order_id, exc)

    async def _work(self, work: Sequence[_Work]) -> None:
        """Decide and record the work of a batch, in rounds: a request whose entry lost to
        another decider (or whose answer waits for the batch's entries) is decided again in
        the next round, against the log as it is then. A working order the market does not
        allow a decision rests (a new one only while fewer than ``max_resting`` do)."""
        symbols = sorted({w.view.order.order.symbol for w in work if w.request is None})
        quotes = {symbol: await self._quote(symbol) for symbol in symbols}
        # A new order about to rest: was it decided before? (Read before it rests, or is
        # refused for the bound; decide() here only asks whether it would rest.)
        unchecked = [w.view for w in work if w.new and not w.view.checked
                     and decide(w.view.order, quotes[w.view.order.order.symbol], 0) is None]
        if unchecked:
            await asyncio.gather(*(self._read_log(view) for view in unchecked))
        pending = list(work)
        while pending:
            batch = Batch(time.time_ns(), fill_lots=self.fill_lots)
            steps: list[tuple[_Work, ExecutionReport]] = []
            again: list[_Work] = []
            resting = len(self._working)
            for w in pending:
                view = w.view
                if w.request is None:
                    if view.order.terminal:
                        continue
                    entry = batch.decide(view.order, quotes[view.order.order.symbol])
                    if (entry is None and w.new and over_capacity(view.order, resting,
                                                                  self.max_resting)):
                        log.warning("executor %s: %d orders rest already: order %s rejected",
                                    self.name, resting, view.order.order_id)
                        entry = batch.reject(view.order)
                    if w.new and view.order.order_id not in self._working and not \
                            batch.order(view.order).terminal:
                        resting += 1
                    if entry is not None:
                        steps.append((w, entry))
                    continue
                got = batch.answer(view.order, w.request)
                if isinstance(got, ExecutionReport):
                    steps.append((w, got))
                elif got == LATER:
                    again.append(w)
                elif isinstance(got, ReplaceRefused):
                    self.stats.amends_refused += 1
                    await self._send(view.socket, got)
                    w.settle = view.order.terminal
                elif view.entries:  # a cancel of a finished order: its outcome, again
                    await self._send(view.socket, view.entries[-1])
                    self.stats.replays += 1
            appended = await self._record([(w.view, entry) for w, entry in steps])
            again += [w for (w, _), won in zip(steps, appended, strict=True)
                      if not won and w.request is not None]
            later = set(again)
            for w in pending:
                if w not in later:
                    w.done = True
                    if w.settle:
                        self._settle(w.view)
            pending = again

    def _settle(self, view: _Order) -> None:
        """File the view: working (the poller goes on with it) or done (kept for replays)."""
        order_id = view.order.order_id
        if view.order.terminal:
            self._working.pop(order_id, None)
            self._done[order_id] = view
            self._done.move_to_end(order_id)
            if len(self._done) > RECENT_ORDERS:
                self._done.popitem(last=False)
        elif order_id not in self._working:
            self._working[order_id] = view
            self._working_changed.set()
        self.stats.resting = len(self._working)

    async def _read_log(self, view: _Order) -> None:
        await self._take(view, await self.store.executions(view.order.order_id,
                                                           view.order.exec_seq))
        view.checked = True

    async def _record(self, steps: Sequence[tuple[_Order, ExecutionReport]]) -> list[bool]:
        """Make each entry the next step of its order's log, up to ``BATCH`` entries per store
        round trip, and send each appended one to its order's backend. Per step False if
        another decision got there first: the view then has the entries it missed (and the
        backend has them), and the order's later steps are not tried."""
        appended: list[bool] = []
        lost: set[str] = set()
        for start in range(0, len(steps), BATCH):
            chunk = steps[start:start + BATCH]
            tried = [entry for _, entry in chunk if entry.order_id not in lost]
            results = await self.store.append_executions(tried) if tried else []
            outcome = {id(entry): missed for entry, missed in zip(tried, results, strict=True)}
            for view, entry in chunk:
                view.checked = True
                missed = outcome.get(id(entry))  # None: not tried, its order lost before
                appended.append(missed == [])
                if not appended[-1]:
                    if entry.order_id not in lost:
                        lost.add(entry.order_id)
                        self.stats.conflicts += 1
                    await self._take(view, missed or [])
                    continue
                await self._take(view, [entry])
                if entry.is_replace:
                    self.stats.replaces += 1
                elif entry.is_fill:
                    self.stats.fills += 1
                elif entry.state is OrderState.REJECTED:
                    self.stats.rejects += 1
                elif entry.state is OrderState.CANCELLED:
                    self.stats.cancels += 1
        return appended

    async def _take(self, view: _Order, entries: Sequence[ExecutionReport]) -> None:
        """Fold log entries into the view and send each to the order's backend."""
        for entry in entries:
            where = view.order.position(entry)
            if where == "applied":
                continue
            if where == "gap":  # pragma: no cover - the log is read from the view's position
                raise StoreError(f"order {entry.order_id}: log entry {entry.seq} after "
                                 f"{view.order.exec_seq}")
            try:
                view.order = view.order.apply(entry, epoch=view.order.epoch,
                                              now_ns=time.time_ns())
            except OrderStateError as exc:
                raise StoreError(f"order {entry.order_id}: log entry {entry.seq} does not "
                                 f"apply: {exc}") from exc
            view.entries.append(entry)
            await self._send(view.socket, entry)

    async def _replay(self, view: _Order, after: int) -> None:
        """Send the entries after position ``after`` (what a re-driving backend lacks)."""
        if after + 1 < view.first:  # older than what memory holds: read them
            entries = await self.store.executions(view.order.order_id, after)
        else:
            entries = view.entries[after + 1 - view.first:]
        for entry in entries:
            self.stats.replays += 1
            await self._send(view.socket, entry)

    async def _send(self, socket: int, msg: ExecutionReport | ReplaceRefused) -> None:
        try:
            self.outs[socket].send(encode_order(msg))
        except zmq.Again:
            self.stats.unsent += 1
            log.warning("executor %s: %s not sent to %s (not connected)", self.name,
                        type(msg).__name__, self.backends[socket])

    async def _quote(self, symbol: str) -> Quote | None:
        """The symbol's last usable quote; one HGET, cached for QUOTE_TTL_S."""
        quote = await self._quote_cache.get(symbol)
        return None if quote is None else usable_quote(*quote)

    async def _quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        wanted = set(symbols)
        out: dict[str, Quote] = {}
        for entry in await self.ticks.snapshot(sorted(wanted)):
            if entry.stream in wanted:
                quote = usable_quote(entry.row[0], entry.row[1])
                if quote is not None:
                    out[entry.stream] = quote
        return out

    async def check_resting(self) -> None:
        """Take the next decision for every working order the latest ticks allow, all
        recorded in one store round trip (per ``BATCH`` orders)."""
        if not self._working:
            return
        quotes = await self._quotes(sorted({v.order.order.symbol
                                            for v in self._working.values()}))
        async with self._deciding:
            batch = Batch(time.time_ns(), fill_lots=self.fill_lots)
            steps: list[tuple[_Order, ExecutionReport]] = []
            for view in list(self._working.values()):
                entry = batch.decide(view.order, quotes.get(view.order.order.symbol))
                if entry is not None:
                    steps.append((view, entry))
            await self._record(steps)
            for view, _ in steps:
                self._settle(view)

    # --- tasks -------------------------------------------------------------------------------

    async def _reader(self, socket: int) -> None:
        sock = self.socks[socket]
        while True:
            batch = [await sock.recv_multipart()]
            async with self._deciding:
                # Everything queued by now is this batch, also what queued while another
                # batch was deciding: one wake-up and one store round trip for all of it.
                await drain_queued(sock, batch, BATCH)
                await self.handle(batch, socket)

    async def _poller(self) -> None:
        while True:
            if not self._working:
                self._working_changed.clear()
                await self._working_changed.wait()
            # Sleep first: an order that just started working was decided a moment ago, and
            # the next slice of a large order comes one poll later (the simulated liquidity).
            await asyncio.sleep(self.poll_s)
            try:
                await self.check_resting()
            except StoreError as exc:
                self.stats.store_errors += 1
                self._store_log.warning("working orders not checked: %s", exc)

    async def run(self, stop: asyncio.Event) -> int:
        log.info("executor %s connecting to %s", self.name, ", ".join(self.backends))
        tasks = [asyncio.create_task(self._reader(i), name=f"reader {endpoint}")
                 for i, endpoint in enumerate(self.backends)]
        tasks.append(asyncio.create_task(self._poller(), name="working"))
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.collect),
                                             name="stats"))
        try:
            return await supervise_tasks(f"executor {self.name}", stop, tasks)
        finally:
            for sock in self.socks:
                sock.close(linger=0)
            for owned in self._owned:
                await owned.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
            self.ctx.term()

    def collect(self) -> dict[str, Any]:
        return {"node": "executor", "name": self.name, **asdict(self.stats)}


__all__ = ["ExecutorNode", "ExecutorStats"]
