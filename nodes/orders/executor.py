"""The executor node: the EA's trade side, simulated against the last tick of the tick store,
or (bridge mode) forwarded to the EA instances and logged from their terminals' facts.

Rules (the "Execute" flow of docs/ORDERS.md):

* One DEALER per backend endpoint (``ROUTING_ID`` = the node's name), connected to that
  backend's "executor" ROUTER; a report goes back on the socket the order's latest message came
  from (the active backend). A restarted executor reconnects under the same routing id, so the
  backend's ROUTER needs ``ROUTER_HANDOVER``.
* The executor owns a working order: every decision about it (a fill, a reject, a cancel, a
  replace) is an :class:`~protocols.orders.messages.ExecutionReport` at the next position
  ``seq`` of the order's execution log, with the deterministic ``exec_id`` ``{order_id}:{seq}``,
  *proposed* to the active backend, which decides it: the log's compare-and-set is the pair's
  (``protocols.orders.record.judge_entry``), and a decision is final once the pair holds it
  with the order's record (replicated like an acknowledgement, Redis written behind), so fills
  go on through a Redis switch. The backend answers with the entry itself (decided), with the
  entry that holds the position already (the proposal lost to another decider: a restarted
  executor, a racing cancel; it is folded in and the order decided again from there), or with
  an ``EntryRefused`` (not decided: a NOT_ACTIVE one, or no answer at all, sends the order's
  next proposal to the other backend). So an order is executed at most once per position
  however often it arrives, and a restarted executor continues from the pair's record of it.
  The executor writes nothing to Redis; it reads there the orders it does not know and their
  logs.
* Batches: one reader per backend socket passes the backend's answers at once to the round
  waiting for them and queues orders and requests (bounded) for the socket's worker, which
  takes every one queued (at most ``BATCH``), decides each (``protocols.orders.execution.Batch``:
  two decisions for one order are consecutive positions) and proposes the decisions in rounds
  (:meth:`ExecutorNode._record`: every order's first decision at once, its next one once that is
  decided). It never waits to fill a batch: idle, a batch is one message. A request whose entry
  lost, or whose answer depends on the batch's entries, is decided again in a next pass of the
  same batch. One batch decides at a time (the workers of both sockets and the resting poller,
  which batches each round the same way); a batch waiting for its turn grows meanwhile. A
  round without its answers within ``DECISION_TIMEOUT_S``, or refused, leaves those orders
  undecided: a working one is decided again at the next poll, a new one at its re-drive.
* A re-driven ``Order`` whose ``exec_seq`` lags what the executor holds (both backends died with
  decided entries unwritten) is answered with every entry after it, proposed again.
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
  proposes and folds in what the pair decided.
* Working orders live in memory; the pair's record and log are the truth. After a restart an
  order comes back when a backend re-drives it (or sends a request for it: the record is then
  read from the store).
* A frame that does not decode, or a message the executor does not take, is counted as
  malformed and logged rate-limited; a request for an order the store does not know is counted
  as unknown. The node keeps serving either way.
* **Bridge mode** (``[orders] execution = "ea"``, docs/PROTOCOL.md section 18): the terminals
  of the EA instances decide, not the quotes. A new or re-driven order goes to the
  :class:`~bus.ea.desk.EaDesk` (sent to its account's synced lease holder, or held), and no
  poller simulates fills. A cancel goes to the terminal as CANCEL (the CANCELLED entry then has
  no venue reason); a replace that changes only the price as MODIFY; one that changes the
  quantity is refused BAD_QUANTITY (MT5 cannot change a pending order's volume). An order no
  terminal has (held, every EXECUTE refused) is cancelled or replaced here. The terminals'
  FACTS become entries through ``protocols.ea.reconcile``, proposed in the same rounds under
  the same lock as every decision (the pair's compare-and-set stays the only place one becomes
  final); an order not in memory is read from the store, and facts for one the store does not
  know are counted. A held order that no EXECUTE reached by ``[orders] ea_hold_ms`` is REJECTED
  NO_EXECUTOR. Simulated mode is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from bus.config import MeshConfig
from bus.ea.desk import EaDesk, Expired, UnknownSymbol
from bus.logutil import RateLimitedLog
from bus.sockets import EXECUTOR, Sender, open_socket, recv_batch
from bus.store.orders import OrderStore, RedisOrderStore
from bus.store.ticks import QuoteCache, RedisTickStore, TickStore
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from protocols.ea.messages import Facts, OrderFacts
from protocols.ea.reconcile import entries_from_facts, overfill
from protocols.errors import InvalidOrder, OrderStateError, RemoteProtocolError, StoreError
from protocols.orders.codec import decode_order, encode_order
from protocols.orders.execution import LATER, Batch, Later, end_entry, exec_id, over_capacity
from protocols.orders.fields import above, check_id, same
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelRequest,
    EntryRefusal,
    EntryRefused,
    ExecutionReport,
    ExecutorRequest,
    RejectReason,
    ReplaceRefused,
    ReplaceRequest,
)
from protocols.orders.record import Order, amend_reason, amend_text
from protocols.orders.risk import Quote, usable_quote

log = logging.getLogger(__name__)

QUOTE_TTL_S = 0.005  # fills price at the last tick: re-read it at most every 5 ms
RECENT_ORDERS = 10_000  # finished orders whose log is kept in memory for replays
MAX_RESTING = 10_000
BATCH = 256  # messages served per wake-up of a reader; log entries proposed at once
MAX_INBOX = 8 * BATCH  # orders and requests queued per backend while a batch decides
# The active backend answers a proposed entry once the pair holds it: within a peer timeout
# (60 ms) when the passive node confirms, a Redis round trip when it writes alone. Past this
# the round gives up (the backend died, or writes alone through a Redis switch): its entries
# are decided again later, and an answer that comes late is dropped (the next proposal at the
# position gets it again). Short, because one round decides at a time.
DECISION_TIMEOUT_S = 0.25


# --- the node --------------------------------------------------------------------------------


@dataclass(slots=True)
class ExecutorStats:
    orders: int = 0  # Order messages received (re-drives included)
    fills: int = 0  # fill entries the pair decided as this process proposed (slices included)
    rejects: int = 0
    cancels: int = 0  # cancel requests that won the race against the fills
    replaces: int = 0
    amends_refused: int = 0  # replace requests the order could no longer take
    replays: int = 0  # entries sent again to a backend that lagged
    rounds: int = 0  # rounds of proposals sent (each awaited as one)
    proposed: int = 0  # entries proposed
    conflicts: int = 0  # proposals that lost to an entry decided elsewhere first
    refused: int = 0  # proposals the backend did not decide (not active, store away, ...)
    unanswered: int = 0  # proposals with no answer within DECISION_TIMEOUT_S
    late_answers: int = 0  # answers nobody waited for (to replays, or after a round gave up)
    dropped: int = 0  # orders and requests dropped for a full inbox (their backend re-drives)
    resting: int = 0  # working orders waiting for liquidity or a marketable price (a gauge)
    malformed: int = 0
    ignored: int = 0  # orders in a state the executor does not work (e.g. ACCEPTED)
    unknown: int = 0  # requests for an order the store does not know
    store_errors: int = 0  # an order left unanswered: its backend re-drives it
    unsent: int = 0  # a message the socket would not take (backend gone): it re-drives
    # Bridge mode ([orders] execution = "ea"; docs/PROTOCOL.md section 18):
    ea_sent: int = 0  # EXECUTE sent to an EA instance (again after a takeover included)
    ea_facts: int = 0  # order facts from the terminals taken
    ea_held: int = 0  # orders waiting for a synced EA instance (a gauge)
    ea_no_executor: int = 0  # orders rejected NO_EXECUTOR: no instance took them in time
    ea_unknown: int = 0  # facts for orders the store does not know (nothing appended)
    ea_overfill: int = 0  # facts with deals beyond what the order's log can take
    ea_bad_facts: int = 0  # facts that make no valid entry (a deal without a price...)
    venue_rejects: dict[str, int] = field(default_factory=dict)  # terminal refusals by retcode


@dataclass(slots=True)
class _Order:
    """The executor's view of one order: the backend's record with the log folded in."""

    order: Order
    socket: int  # where its reports go: the socket its latest message came from
    entries: list[ExecutionReport] = field(default_factory=list)  # the log from `first` on
    first: int = 1  # position of entries[0]


@dataclass(slots=True, eq=False)
class _Round:
    """The backend's answers one round of proposed entries waits for, by (order id,
    position); ``done`` once every one has come (None: the entry was not sent)."""

    keys: set[tuple[str, int]]
    answers: dict[tuple[str, int], ExecutionReport | EntryRefused | None] = field(
        default_factory=dict)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def left(self) -> int:
        return len(self.keys) - len(self.answers)

    def answer(self, key: tuple[str, int], msg: ExecutionReport | EntryRefused | None) -> None:
        if key in self.keys and key not in self.answers:
            self.answers[key] = msg
            if not self.left and not self.done.done():
                self.done.set_result(None)


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
        self._rounds: dict[tuple[str, int], _Round] = {}  # proposals waiting for an answer
        # Proposals whose round gave up: a backend may have decided one and died (bounded).
        self._unconfirmed: OrderedDict[tuple[str, int], ExecutionReport] = OrderedDict()
        self._inboxes: list[deque[Order | ExecutorRequest]] = [deque() for _ in backends]
        self._inbox_ready = [asyncio.Event() for _ in backends]
        self._refused = RateLimitedLog(log, f"executor {name}: entry not decided")
        self._unsent = RateLimitedLog(log, f"executor {name}: not sent")
        self._bad = RateLimitedLog(log, f"executor {name}: malformed message")
        self._store_log = RateLimitedLog(log, f"executor {name}: store error")
        self._ignored = RateLimitedLog(log, f"executor {name}: message not taken")
        self._ea_log = RateLimitedLog(log, f"executor {name}: EA facts")
        # Bridge mode: the EA instances execute; the executor logs what their terminals did.
        self.desk: EaDesk | None = None
        self._last_socket = 0  # the backend that sent last: where a store-read view proposes
        self._epochs: dict[str, int] = {}  # lease epochs, when the store is not Redis
        if cfg.orders.execution == "ea":
            self.desk = EaDesk(cfg.orders, self.ctx, epochs=self._next_epoch,
                               max_orders=max_resting)

    # --- handling ----------------------------------------------------------------------------

    async def handle(self, batch: Sequence[list[bytes]], socket: int) -> None:
        """Serve one batch of messages from the backend behind ``self.socks[socket]``."""
        await self.serve(self._sort(batch), socket)

    def _sort(self, batch: Sequence[list[bytes]]) -> list[Order | ExecutorRequest]:
        """The orders and requests of ``batch`` to decide; an answer to a proposed entry goes
        to the round waiting for it at once, a malformed message is counted and dropped."""
        work: list[Order | ExecutorRequest] = []
        for msg in map(self._decode, batch):
            if isinstance(msg, (ExecutionReport, EntryRefused)):
                self._answered(msg)
            elif msg is not None:
                work.append(msg)
        return work

    async def serve(self, msgs: Sequence[Order | ExecutorRequest], socket: int) -> None:
        """Decide the orders and requests of one batch and propose the decisions to their
        backends at once (:meth:`_record`)."""
        self._last_socket = socket
        work = await self._resolve(msgs, socket)
        try:
            await self._work(work)
        except StoreError as exc:
            orders = {w.view.order.order_id for w in work if not w.done}
            self.stats.store_errors += len(orders)
            self._store_log.warning("%d order(s) left unanswered (%s): %s", len(orders),
                                    ", ".join(sorted(orders)[:3]), exc)

    def _decode(self, frames: list[bytes]
                ) -> Order | ExecutorRequest | ExecutionReport | EntryRefused | None:
        """The message of ``frames`` if the executor takes it (else counted as malformed):
        an order or a request to decide, or an answer to a proposed entry."""
        try:
            msg = decode_order(frames)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            self._bad.warning("%s", exc.reason)
            return None
        if isinstance(msg, (ExecutionReport, EntryRefused)):
            return msg
        if isinstance(msg, Order):
            self.stats.orders += 1
        elif not isinstance(msg, (CancelRequest, ReplaceRequest)):
            self.stats.malformed += 1
            self._bad.warning("%s is not an order, a request or an answer", type(msg).__name__)
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
                    if self.desk is not None and not view.order.terminal:
                        self.desk.submit(view.order)  # idempotent at the EA: it converges
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
            return await self._load(msg.order_id, socket)
        await self._read_log(view)
        return view

    async def _load(self, order_id: str, socket: int) -> _Order | None:
        """The backend's record of the order from the store with its log folded in (None:
        the store does not know it, or it was never routed)."""
        record = await self.store.get(order_id)
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
        quotes = {} if self.desk is not None else {
            symbol: await self._quote(symbol) for symbol in symbols}
        # No log read for a new order about to rest: the record the active backend routed is
        # at the log's last position (the pair decides the log), and a decision taken since
        # by another decider comes back as the answer to the next proposal.
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
                    if self.desk is not None:  # the terminal decides, not the quotes
                        if view.order.order_id not in self.desk and self.desk.full:
                            log.warning("executor %s: %d orders at the EA already: order %s "
                                        "rejected", self.name, len(self.desk),
                                        view.order.order_id)
                            steps.append((w, batch.reject(view.order)))
                        else:
                            self.desk.submit(view.order)
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
                got: ExecutionReport | ReplaceRefused | Later | None
                if self.desk is not None and not batch.order(view.order).terminal:
                    ea = self._ea_answer(batch, view.order, w.request)
                    if ea is None:
                        continue  # sent to the terminal: its facts answer it
                    got = ea
                else:
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
            # A request whose entry lost is decided again against the entry that won; one
            # left undecided (refused, unanswered) waits for its backend's re-send.
            again += [w for (w, _), won in zip(steps, appended, strict=True)
                      if won is False and w.request is not None]
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
        self._take(view, await self.store.executions(view.order.order_id, view.order.exec_seq))

    async def _record(self, steps: Sequence[tuple[_Order, ExecutionReport]]
                      ) -> list[bool | None]:
        """Propose each entry to its order's backend, which decides it (the active node: the
        log's compare-and-set, ``judge_entry``) and answers once the pair holds it. In rounds
        of at most ``BATCH`` entries, one entry per order a round: a later one was decided from
        the earlier one's state, so it is proposed only once that one is decided. Per step:
        True decided as proposed; False lost (the view has the entry decided there instead);
        None undecided (refused, or no answer in time: decided again later). An order's steps
        after one that was not decided as proposed share its outcome, untried."""
        outcome: dict[int, bool | None] = {}
        stopped: dict[str, bool | None] = {}
        left = list(range(len(steps)))
        while left:
            chosen: list[int] = []
            wait: list[int] = []
            orders: set[str] = set()
            for i in left:
                oid = steps[i][1].order_id
                if oid in stopped:
                    outcome[i] = stopped[oid]
                elif oid in orders or len(chosen) >= BATCH:
                    wait.append(i)
                else:
                    orders.add(oid)
                    chosen.append(i)
            answers = await self._propose([steps[i] for i in chosen])
            for i, answer in zip(chosen, answers, strict=True):
                view, entry = steps[i]
                outcome[i] = self._decided(view, entry, answer)
                if not outcome[i]:
                    stopped[entry.order_id] = outcome[i]
            left = wait
        return [outcome[i] for i in range(len(steps))]

    async def _propose(self, steps: Sequence[tuple[_Order, ExecutionReport]]
                       ) -> list[ExecutionReport | EntryRefused | None]:
        """Send each entry to its view's backend and wait for the answers (None: the entry
        could not be sent, or no answer came within ``DECISION_TIMEOUT_S``)."""
        if not steps:
            return []
        self.stats.rounds += 1
        self.stats.proposed += len(steps)
        pending = _Round({(e.order_id, e.seq) for _, e in steps})
        for key in pending.keys:
            self._rounds[key] = pending
        try:
            for view, entry in steps:
                if not await self._send(view.socket, entry):
                    pending.answer((entry.order_id, entry.seq), None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DECISION_TIMEOUT_S):
                    await pending.done
        finally:
            for key in pending.keys:
                self._rounds.pop(key, None)
        self.stats.unanswered += pending.left  # (a timeout cancelled `done`)
        for _, entry in steps:
            key = (entry.order_id, entry.seq)
            if key not in pending.answers:  # it may have been decided: know it when told
                self._unconfirmed[key] = entry
                if len(self._unconfirmed) > RECENT_ORDERS:
                    self._unconfirmed.popitem(last=False)
        return [pending.answers.get((e.order_id, e.seq)) for _, e in steps]

    def _decided(self, view: _Order, entry: ExecutionReport,
                 answer: ExecutionReport | EntryRefused | None) -> bool | None:
        """Fold the backend's answer to ``entry`` into ``view``: True decided as proposed,
        False another entry holds its position (now in the view), None undecided."""
        if isinstance(answer, EntryRefused):
            self.stats.refused += 1
            if answer.reason is EntryRefusal.NOT_ACTIVE:
                self._other_backend(view)
            self._refused.warning("order %s: entry %d not decided: %s (log at %d)",
                                  entry.order_id, entry.seq, answer.reason.name, answer.at)
            return None
        if answer is None:
            # No answer (or not even sent): the backend may be dead. The new active node
            # re-drives only orders still open in its records; one the dead node filled
            # before answering is finished there, and asking the dead node again forever
            # would leave it working here for good.
            self._other_backend(view)
            return None
        self._take(view, [answer])
        # The entry there may be this executor's own earlier proposal, decided by a backend
        # that died before answering: counted as its decision, not as another's.
        earlier = self._unconfirmed.pop((entry.order_id, entry.seq), None)
        if answer != entry and answer != earlier:
            self.stats.conflicts += 1
            return False
        self._count(answer)
        return answer == entry

    def _count(self, entry: ExecutionReport) -> None:
        if entry.is_replace:
            self.stats.replaces += 1
        elif entry.is_fill:
            self.stats.fills += 1
        elif entry.state is OrderState.REJECTED:
            self.stats.rejects += 1
        elif entry.state is OrderState.CANCELLED:
            self.stats.cancels += 1

    def _other_backend(self, view: _Order) -> None:
        """Ask the other backend next time: the pair may have switched, and the re-drive of
        the new active node would come only later (or, for an order it has finished, never).
        A wrong guess costs one NOT_ACTIVE."""
        if len(self.socks) > 1:
            view.socket = (view.socket + 1) % len(self.socks)

    def _answered(self, msg: ExecutionReport | EntryRefused) -> None:
        """A backend's answer to a proposed entry (one nobody waits for any more is dropped:
        its entry is decided again, and the answer found then)."""
        pending = self._rounds.get((msg.order_id, msg.seq))
        if pending is None:
            self.stats.late_answers += 1
        else:
            pending.answer((msg.order_id, msg.seq), msg)

    def _take(self, view: _Order, entries: Sequence[ExecutionReport]) -> None:
        """Fold log entries (decided by the pair: its answers, or the log as read) into the
        view."""
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

    async def _replay(self, view: _Order, after: int) -> None:
        """Send the entries after position ``after`` (what a re-driving backend lacks)."""
        if after + 1 < view.first:  # older than what memory holds: read them
            entries = await self.store.executions(view.order.order_id, after)
        else:
            entries = view.entries[after + 1 - view.first:]
        for entry in entries:
            self.stats.replays += 1
            await self._send(view.socket, entry)

    async def _send(self, socket: int, msg: ExecutionReport | ReplaceRefused) -> bool:
        try:
            self.outs[socket].send(encode_order(msg))
            return True
        except zmq.Again:
            self.stats.unsent += 1
            self._unsent.warning("%s not sent to %s (not connected)", type(msg).__name__,
                                 self.backends[socket])
            return False

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

    # --- bridge mode ---------------------------------------------------------------------------

    def _ea_answer(self, batch: Batch, order: Order, request: ExecutorRequest
                   ) -> ExecutionReport | ReplaceRefused | Later | None:
        """A request for a working order in bridge mode: None when it went to the terminal
        (its facts answer it), else what ``Batch.answer`` gives: the entry for an order no
        terminal has (the executor decides it itself), or a refusal."""
        assert self.desk is not None
        current = batch.order(order)
        if order.order_id not in self.desk:  # e.g. read from the store after a restart
            self.desk.submit(current)
        if isinstance(request, CancelRequest):
            return None if self.desk.cancel(order.order_id) else batch.answer(order, request)
        reason = amend_reason(current, request.quantity, request.price)
        if reason is not None:
            return ReplaceRefused(order.order_id, reason, amend_text(reason))
        if not same(request.quantity, current.quantity):
            return ReplaceRefused(order.order_id, RejectReason.BAD_QUANTITY,
                                  "MT5 cannot change a pending order's volume: cancel it and "
                                  "place a new order")
        if request.price is None or same(request.price, current.price or 0.0):
            return batch.answer(order, request)  # nothing changes at the terminal
        return None if self.desk.modify(request) else batch.answer(order, request)

    async def _next_epoch(self, key: str) -> int:
        """The next lease epoch of ``key``, durable before it is granted (``INCR
        {prefix}:ea:epoch:{key}``): a restarted executor never grants one twice."""
        store = self.store
        if isinstance(store, RedisOrderStore):
            return int(await store.redis.incr(f"{store.prefix}:ea:epoch:{key}"))
        self._epochs[key] = self._epochs.get(key, 0) + 1  # a test's store: this process only
        return self._epochs[key]

    async def _ea_events(self) -> None:
        """Task: the desk's facts and hand-backs, a batch at a time, decided under the same
        lock and proposed through the same rounds as every other decision."""
        assert self.desk is not None
        events = self.desk.events
        while True:
            batch = [await events.get()]
            while not events.empty() and len(batch) < BATCH:
                batch.append(events.get_nowait())
            async with self._deciding:
                try:
                    await self._ea_serve(batch)
                except StoreError as exc:
                    self.stats.store_errors += 1
                    self._store_log.warning("EA facts not logged (asked again): %s", exc)
                    for event in batch:
                        for oid in _event_orders(event):
                            self.desk.ask_again(oid)

    async def _ea_serve(self, events: Sequence[Facts | Expired | UnknownSymbol]) -> None:
        """Turn facts into log entries (``protocols.ea.reconcile``) and hand-backs into
        rejects, and propose them (:meth:`_record`)."""
        assert self.desk is not None
        facts: dict[str, OrderFacts] = {}
        finals: dict[str, RejectReason] = {}
        for event in events:
            if isinstance(event, Facts):
                self.stats.ea_facts += len(event.orders)
                for f in event.orders:
                    was = facts.get(f.order_id)  # the whole picture: the fullest one wins
                    if was is None or not above(was.filled, f.filled):
                        facts[f.order_id] = f
            elif isinstance(event, Expired):
                finals.update(dict.fromkeys(event.order_ids, RejectReason.NO_EXECUTOR))
            else:
                finals[event.order_id] = RejectReason.VENUE_REJECTED
        views = await self._views([*facts, *finals])
        now_ns = time.time_ns()
        steps: list[tuple[_Order, ExecutionReport]] = []
        for oid, f in facts.items():
            view = views.get(oid)
            if view is None:
                self.stats.ea_unknown += 1
                self.desk.stats.unknown += 1
                self._ea_log.warning("facts for order %s, which the store does not know", oid)
                continue
            if overfill(view.order, f):
                self.stats.ea_overfill += 1
                self._ea_log.warning("order %s: the terminal dealt %.8g lots, the log takes "
                                     "%.8g", oid, f.filled, view.order.quantity)
            cancel_asked, replace = self.desk.asked(oid)
            try:
                entries, refused = entries_from_facts(view.order, f, now_ns,
                                                      cancel_asked=cancel_asked,
                                                      replace=replace)
            except (InvalidOrder, OrderStateError) as exc:  # e.g. a deal at price 0
                self.stats.ea_bad_facts += 1
                self._ea_log.warning("order %s: facts the log cannot take: %s", oid, exc)
                continue
            if refused is not None:
                self.desk.replace_done(oid)
                self.stats.amends_refused += 1
                await self._send(view.socket, refused)
            if any(e.reason == RejectReason.VENUE_REJECTED for e in entries):
                code = str(f.retcode)
                self.stats.venue_rejects[code] = self.stats.venue_rejects.get(code, 0) + 1
            steps += [(view, e) for e in entries]
        for oid, reason in finals.items():
            view = views.get(oid)
            if view is None or view.order.terminal or oid in facts:
                continue
            if reason is RejectReason.NO_EXECUTOR:
                self.stats.ea_no_executor += 1
            steps.append((view, end_entry(view.order, now_ns, reason)))
        outcomes = await self._record(steps)
        for (_, entry), decided in zip(steps, outcomes, strict=True):
            if not decided and entry.order_id in facts:
                self.desk.ask_again(entry.order_id)  # its facts again, against the log then
            elif decided and entry.is_replace:
                self.desk.replace_done(entry.order_id)
        for view in views.values():
            self._settle(view)
            if view.order.terminal:
                self.desk.forget(view.order.order_id)

    async def _views(self, order_ids: Sequence[str]) -> dict[str, _Order]:
        """The views of ``order_ids``: from memory, else read from the store (all at once;
        an order the store does not know is left out)."""
        views = {oid: v for oid in order_ids if (v := self._known(oid)) is not None}
        missing = [oid for oid in order_ids if oid not in views]
        loaded = await asyncio.gather(*(self._load(oid, self._last_socket) for oid in missing))
        views.update({oid: v for oid, v in zip(missing, loaded, strict=True) if v is not None})
        return views

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
        """Read one backend's messages: an answer to a proposed entry goes to the round
        waiting for it at once (a round decides while holding the lock the worker needs);
        orders and requests queue for the socket's worker, bounded."""
        sock, inbox, ready = self.socks[socket], self._inboxes[socket], self._inbox_ready[socket]
        while True:
            for msg in self._sort(await recv_batch(sock, BATCH)):
                if len(inbox) >= MAX_INBOX:
                    self.stats.dropped += 1
                    self._ignored.warning("order %s dropped: %d messages wait already",
                                          msg.order_id, len(inbox))
                else:
                    inbox.append(msg)
            if inbox:
                ready.set()

    async def _worker(self, socket: int) -> None:
        """Decide what one backend sent, a batch at a time: everything queued by the time the
        lock is free (at most ``BATCH``), also what queued while another batch decided."""
        inbox, ready = self._inboxes[socket], self._inbox_ready[socket]
        while True:
            await ready.wait()
            async with self._deciding:
                msgs = [inbox.popleft() for _ in range(min(BATCH, len(inbox)))]
                if not inbox:
                    ready.clear()
                await self.serve(msgs, socket)

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
        tasks += [asyncio.create_task(self._worker(i), name=f"worker {endpoint}")
                  for i, endpoint in enumerate(self.backends)]
        if self.desk is None:
            tasks.append(asyncio.create_task(self._poller(), name="working"))
        else:  # the terminals fill; nothing here simulates
            log.info("executor %s: bridge mode, EA instances connect to %s", self.name,
                     self.desk.endpoint)
            tasks += [asyncio.create_task(self.desk.reader(), name="ea reader"),
                      asyncio.create_task(self.desk.timer(), name="ea leases"),
                      asyncio.create_task(self._ea_events(), name="ea facts")]
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.collect),
                                             name="stats"))
        try:
            return await supervise_tasks(f"executor {self.name}", stop, tasks)
        finally:
            for sock in self.socks:
                sock.close(linger=0)
            if self.desk is not None:
                self.desk.close()
            for owned in self._owned:
                await owned.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
            self.ctx.term()

    def collect(self) -> dict[str, Any]:
        if self.desk is None:
            return {"node": "executor", "name": self.name, **asdict(self.stats)}
        ea = self.desk.collect()
        self.stats.ea_sent, self.stats.ea_held = ea["sent"], ea["held"]
        return {"node": "executor", "name": self.name, **asdict(self.stats), "ea": ea}


def _event_orders(event: Facts | Expired | UnknownSymbol) -> list[str]:
    if isinstance(event, Facts):
        return [f.order_id for f in event.orders]
    return list(event.order_ids) if isinstance(event, Expired) else [event.order_id]


__all__ = ["ExecutorNode", "ExecutorStats"]
