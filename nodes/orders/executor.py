"""The executor node: the EA's trade side, simulated against the last tick of the tick store.

Rules (the "Execute" flow of docs/ORDERS.md):

* One DEALER per backend endpoint (``ROUTING_ID`` = the node's name), connected to that
  backend's "executor" ROUTER; a report goes back on the socket the order's latest message came
  from (the active backend). A restarted executor reconnects under the same routing id, so the
  backend's ROUTER needs ``ROUTER_HANDOVER``.
* The executor owns a working order: every decision about it (a fill, a reject, a cancel, a
  replace) is an :class:`~protocols.orders.messages.ExecutionReport` appended to the order's
  execution log in the order store (``OrderStore.append_execution``) at the next position ``seq``,
  with the deterministic ``exec_id`` ``{order_id}:{seq}``. The append is a compare-and-set on the
  log's length: a decision is final once appended, and one that lost (another decider got there
  first: a restarted executor, a racing cancel) gets the entries it missed instead and decides
  again from there. Fills and final decisions are recorded as executed in the same step. So an
  order is executed at most once per position however often it arrives, and a restarted executor
  continues from the log.
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

from bus.aio import KeyedLocks
from bus.config import MeshConfig
from bus.logutil import RateLimitedLog
from bus.sockets import EXECUTOR, open_socket
from bus.store.orders import OrderStore, RedisOrderStore
from bus.store.ticks import QuoteCache, RedisTickStore, TickStore
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from protocols.errors import InvalidOrder, OrderStateError, RemoteProtocolError, StoreError
from protocols.orders.codec import decode_order, encode_order
from protocols.orders.execution import answer, decide, exec_id, over_capacity, reject_entry
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
        self._working: dict[str, _Order] = {}
        self._done: OrderedDict[str, _Order] = OrderedDict()  # finished, for replays
        # An order's steps must not interleave: the readers of both sockets and the resting
        # poller may act on the same order (a view folded twice, a request decided against a
        # stale view).
        self._locks = KeyedLocks()
        # Rides through a failover of the tick store like the backend does: the venue keeps
        # the last price it saw. Without it every order that arrived during an RTS switch was
        # left unanswered (about 2,000 a Redis drill run) and came back as a re-drive.
        self._quote_cache = QuoteCache(ticks, QUOTE_TTL_S, stale_s=cfg.redis.deadline_ms / 1000)
        self._working_changed = asyncio.Event()
        self._bad = RateLimitedLog(log, f"executor {name}: malformed message")
        self._store_log = RateLimitedLog(log, f"executor {name}: store error")
        self._ignored = RateLimitedLog(log, f"executor {name}: message not taken")

    # --- handling ----------------------------------------------------------------------------

    async def handle(self, frames: list[bytes], socket: int) -> None:
        """Handle one message from the backend behind ``self.socks[socket]``."""
        try:
            msg = decode_order(frames)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            self._bad.warning("%s", exc.reason)
            return
        if isinstance(msg, Order):
            self.stats.orders += 1
        elif not isinstance(msg, (CancelRequest, ReplaceRequest)):
            self.stats.malformed += 1
            self._bad.warning("%s is not an order, a cancel or a replace request",
                              type(msg).__name__)
            return
        try:
            check_id("exec_id", exec_id(msg.order_id, 2**32 - 1))  # the longest it may need
            async with self._locks.hold(msg.order_id):
                if isinstance(msg, Order):
                    await self._on_order(msg, socket)
                else:
                    await self._on_request(msg, socket)
        except StoreError as exc:
            self.stats.store_errors += 1
            self._store_log.warning("order %s left unanswered: %s", msg.order_id, exc)
        except InvalidOrder as exc:  # e.g. an order id too long to derive an exec id from
            self.stats.malformed += 1
            self._bad.warning("order %s: %s", msg.order_id, exc)

    async def _on_order(self, order: Order, socket: int) -> None:
        known = self._working.get(order.order_id) or self._done.get(order.order_id)
        if known is not None:  # a re-drive: answer what the backend has not applied yet
            known.socket = socket
            await self._replay(known, order.exec_seq)
            return
        if not order.state.at_executor:
            self.stats.ignored += 1
            self._ignored.warning("order %s is %s", order.order_id, order.state.name)
            return
        view = _Order(order, socket, first=order.exec_seq + 1)
        if order.exec_seq > 0:  # the backend has applied entries: the log is ahead of us
            await self._read_log(view)
        # A first-seen order is decided without reading its log first: the append tells if
        # anyone decided before (one Redis round trip saved on the common path).
        await self._work(view, new=True)

    async def _on_request(self, request: ExecutorRequest, socket: int) -> None:
        view = await self._view(request.order_id, socket)
        if view is None:
            self.stats.unknown += 1
            self._ignored.warning("request for order %s, which the store does not know",
                                  request.order_id)
            if isinstance(request, ReplaceRequest):
                await self._send(socket, ReplaceRefused(request.order_id,
                                                        RejectReason.UNKNOWN_ORDER,
                                                        "no such order"))
            return
        while True:
            entry = answer(view.order, request, time.time_ns())
            if isinstance(entry, ExecutionReport):
                if await self._append(view, entry):
                    break
                continue  # another decision got there first: decide again from it
            if isinstance(entry, ReplaceRefused):
                self.stats.amends_refused += 1
                await self._send(socket, entry)
                if not view.order.terminal:
                    return
            elif view.entries:  # a cancel of a finished order: its outcome, again
                await self._send(socket, view.entries[-1])
                self.stats.replays += 1
            break
        self._settle(view)

    async def _view(self, order_id: str, socket: int) -> _Order | None:
        """The executor's view of an order it was asked about: from memory, else the backend's
        record in the store with the log folded in (None: the store does not know it)."""
        view = self._working.get(order_id) or self._done.get(order_id)
        if view is None:
            record = await self.store.get(order_id)
            if record is None or record.state.unrouted:
                return None  # never routed: nothing for the executor to decide
            view = _Order(record, socket, first=record.exec_seq + 1)
            await self._read_log(view)
        view.socket = socket
        return view

    async def _work(self, view: _Order, *, new: bool = False) -> None:
        """Take the next decision for a working order if the market allows one; else let it
        rest (a ``new`` one only while fewer than ``max_resting`` do)."""
        order = view.order
        if not order.terminal:
            quote = await self._quote(order.order.symbol)
            entry = decide(order, quote, time.time_ns(), fill_lots=self.fill_lots)
            if entry is None and not view.checked:
                await self._read_log(view)  # about to rest: was it decided before?
            if (entry is None and new and not view.order.terminal
                    and over_capacity(view.order, len(self._working), self.max_resting)):
                log.warning("executor %s: %d orders rest already: order %s rejected",
                            self.name, len(self._working), order.order_id)
                entry = reject_entry(view.order, time.time_ns())
            if entry is not None:
                await self._append(view, entry)
        self._settle(view)

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

    async def _append(self, view: _Order, entry: ExecutionReport) -> bool:
        """Make ``entry`` the next step of the order's log. False if another decision got
        there first: the view then has the entries it missed (and the backend has them)."""
        missed = await self.store.append_execution(entry)
        view.checked = True
        if missed:
            self.stats.conflicts += 1
            await self._take(view, missed)
            return False
        await self._take(view, [entry])
        if entry.is_replace:
            self.stats.replaces += 1
        elif entry.is_fill:
            self.stats.fills += 1
        elif entry.state is OrderState.REJECTED:
            self.stats.rejects += 1
        elif entry.state is OrderState.CANCELLED:
            self.stats.cancels += 1
        return True

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
            await self.socks[socket].send_multipart(encode_order(msg), flags=zmq.NOBLOCK)
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
        """Take the next decision for every working order the latest ticks allow."""
        if not self._working:
            return
        quotes = await self._quotes(sorted({v.order.order.symbol
                                            for v in self._working.values()}))
        for order_id in list(self._working):
            async with self._locks.hold(order_id):
                view = self._working.get(order_id)
                if view is None:  # finished meanwhile
                    continue
                entry = decide(view.order, quotes.get(view.order.order.symbol),
                               time.time_ns(), fill_lots=self.fill_lots)
                if entry is not None:
                    await self._append(view, entry)
                self._settle(view)

    # --- tasks -------------------------------------------------------------------------------

    async def _reader(self, socket: int) -> None:
        sock = self.socks[socket]
        while True:
            frames = await sock.recv_multipart()
            await self.handle(frames, socket)

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
