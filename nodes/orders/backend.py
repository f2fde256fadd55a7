"""One node of the binary-star order backend pair (see docs/ORDERS.md).

Sockets: ROUTER "clients" (order clients), PUB "peer" + SUB to the other node's "peer"
(heartbeats), PUB "updates" (execution reports for frontends, topic = account + NUL), ROUTER
"executor" (the EA's trade side), and the pair's replication link (ROUTER "replica" + a DEALER
to the other node's). The pair's state machine is ``protocols.orders.binary_star``. Every
order write goes through the pair store (``bus.orders.pair_store``): acknowledged once the
passive node holds it, written behind to the fenced Redis store (``bus.store.orders``), or
without a passive node written there first; a node that lost the active role can never
write (the passive refuses its stale epoch, Redis fences it) and steps down when told so.

The decisions (what is known per order, exposure reservations, joined retries, replace
outcomes, re-drive selection) are ``protocols.orders.service.OrderService``'s; this node keeps
the sockets, the timers and the store, and carries the decisions out.

Requests: new orders (idempotency, validation, accept, route), cancels and replaces. Each
wake-up drains every request already queued (bounded); the new orders among them are checked
one by one and stored as one batch (the placer); past ``[orders] max_in_service`` requests
in service, or a wait over ``max_queue_ms``, or a write-behind backlog at
``max_write_behind``, one more is refused at once, BUSY with a retry-after hint
(``OrderService.busy``). The executor's proposed log entries are decided in batches too.

The executor owns a working order and proposes its fills, cancels and replaces for the
order's execution log; the active node decides each position once (``judge_entry``: the
log's compare-and-set), stores the decided entries with their records (replicated, so final
once the pair holds them) and answers every proposal. A cancel is acknowledged once requested (the
outcome is a report); a replace is acknowledged only once the executor has decided it (or
refused with the executor's reason).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from bus.aio import KeyedLocks, cancel_and_wait, watchdog_from_env
from bus.config import MeshConfig
from bus.logutil import RateLimitedLog
from bus.orders.beacon import HeartbeatThread
from bus.orders.pair_store import PairStore
from bus.orders.rebuild import HistoryOrders, rebuild_from_history
from bus.sched import StartupNice
from bus.sockets import (
    BACKEND_CLIENTS,
    BACKEND_EXECUTOR,
    BACKEND_UPDATES,
    PEER_SUB,
    Sender,
    open_socket,
    recv_batch,
)
from bus.store.orders import OrderStore, RedisOrderStore, WriteOutcome
from bus.store.ticks import QuoteCache, RedisTickStore
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from protocols.errors import (
    Fenced,
    InvalidOrder,
    RemoteProtocolError,
    StoreError,
)
from protocols.orders.binary_star import (
    AcquireEpoch,
    BecameActive,
    BinaryStar,
    Effect,
    PairConfig,
    Role,
    State,
    SteppedDown,
)
from protocols.orders.codec import (
    client_order_id_of,
    decode_order,
    decode_order_request,
    encode_order,
    reject_reason_of,
)
from protocols.orders.fields import check_id
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    PENDING_AFTER_S,
    PENDING_INTERVAL_S,
    CancelOrder,
    EntryRefusal,
    EntryRefused,
    ExecutionReport,
    ExecutorRequest,
    NewOrder,
    OrderAck,
    OrderPending,
    OrderReject,
    OrderRequest,
    RejectReason,
    ReplaceOrder,
    ReplaceRefused,
)
from protocols.orders.pair import PeerHeartbeat, decode_heartbeat, encode_heartbeat
from protocols.orders.record import TAKEN, OpenOrders, Order, judge_entry
from protocols.orders.risk import Limits
from protocols.orders.service import (
    RETRY_AFTER_MAX_MS,
    AwaitReplace,
    Decision,
    OrderService,
    PendingReplace,
    SendCancel,
    SendReplace,
    route_accepted,
)

log = logging.getLogger(__name__)

# Requests read from the clients socket per wake-up, and new orders stored per script call:
# a wake-up takes everything already queued up to this, never waits to fill a batch.
DRAIN_BATCH = 256
PLACE_BATCH = 256
QUOTE_TTL_S = 0.05  # the last tick is read from Redis at most this often per symbol
YIELD_EVERY = 50  # re-drive and reload give the event loop back this often

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BackendEndpoints:
    clients: str
    peer_pub: str
    peer_sub: str  # the other node's peer_pub
    updates: str
    executor: str
    replica: str = ""  # the pair's replication link: this node binds it ("": no replication)
    peer_replica: str = ""  # ... and connects to the other node's


REBUILD_TRIES = 5  # history asked at start whether the order store lost anything
REBUILD_RETRY_S = 0.5


@dataclass(slots=True)
class BackendStats:
    requests: int = 0
    acks: int = 0
    rejects: int = 0
    not_active: int = 0
    duplicates: int = 0
    routed: int = 0
    reports: int = 0
    fenced: int = 0
    malformed: int = 0
    takeovers: int = 0
    rebuilt_records: int = 0  # order records restored from history at start (a wiped store)
    rebuilt_entries: int = 0
    redriven: int = 0
    replaced: int = 0
    joined: int = 0  # client retries answered with the in-flight request's reply
    busy: int = 0  # requests refused BUSY at the admission bound
    place_batches: int = 0  # store round trips for new orders (each one script call + WAIT)
    gaps: int = 0  # entries proposed beyond the log's end: the order was re-driven
    entries_taken: int = 0  # entries proposed at a position decided already (answered with it)
    entries_refused: int = 0  # entries not decided (not active, store away, unknown, invalid)


class BackendNode:
    def __init__(self, cfg: MeshConfig, role: Role, endpoints: BackendEndpoints, *,
                 limits: Limits, pair: PairConfig | None = None,
                 store: OrderStore | None = None, stats_path: Path | None = None,
                 executor_id: str = "executor", redrive_s: float = 1.0,
                 amend_timeout_s: float = 0.5, stall_budget_s: float = 0.25,
                 startup: StartupNice | None = None,
                 history: HistoryOrders | None = None) -> None:
        self.role = role
        self.history = history  # where a wiped order store is rebuilt from
        self.startup = startup
        self.amend_timeout_s = amend_timeout_s
        self.executor_id = executor_id.encode()
        self.redrive_s = redrive_s
        self.endpoints = endpoints
        self.limits = limits
        self.star = BinaryStar(role, pair or PairConfig(), started=time.monotonic())
        ctx = self.ctx = zmq.asyncio.Context()
        backing = store or RedisOrderStore.from_config(cfg)
        self._redis = backing if isinstance(backing, RedisOrderStore) else None
        self.pair_store: PairStore | None = None
        if cfg.orders.replicate and endpoints.replica and isinstance(backing, RedisOrderStore):
            self.pair_store = PairStore(
                backing, ctx, self, bind=endpoints.replica, peer=endpoints.peer_replica,
                ack_timeout_s=self.star.config.peer_timeout_s,
                window_s=cfg.orders.idempotency_window_s,
                max_backlog=cfg.orders.max_write_behind, on_fenced=self._store_fenced)
        self.store: OrderStore = self.pair_store or backing
        self.ticks = RedisTickStore.from_config(cfg)
        self.stats = BackendStats()
        self.stats_path = stats_path
        # Order ids must never repeat, even if an epoch increment is lost with a Redis master
        # that died before replicating it: a per-process tag keeps two holders of one epoch
        # number apart.
        self.service = OrderService(limits, tag=secrets.token_hex(2), redrive_s=redrive_s,
                                    max_in_service=cfg.orders.max_in_service,
                                    max_queue_ms=cfg.orders.max_queue_ms)
        self._bad = RateLimitedLog(log, f"backend {role.value}: malformed frame")
        # New orders go to one placer that stores them in batches (:meth:`_placer`), even
        # for one account: the store's write is the idempotency check, and exposure is
        # reserved in memory before it (``OrderService.reserve``). Serialising them per
        # account capped one account at one store round trip (with its WAIT) per order,
        # about 400 orders/s on this machine under load. Cancels and replaces, which read an
        # order and decide on it, stay serialised per account (a lock exists only while held
        # or waited for). Reports are applied in batches by one reader, in log order.
        self._account_locks = KeyedLocks()
        # New orders admitted and waiting for the placer: bounded by the admission bound
        # (each is in service), so never more than max_in_service.
        self._placing: deque[tuple[bytes, NewOrder, int]] = deque()
        self._place_wanted = asyncio.Event()
        self._requests: set[asyncio.Task[None]] = set()
        self._quotes = QuoteCache(self.ticks, QUOTE_TTL_S, stale_s=cfg.redis.deadline_ms / 1000)
        self._reload_pending = False  # a takeover could not read the open orders yet
        # Orders whose last write of decided entries failed: the store may have them anyway
        # (bounded by the open orders: each is proposed again, and then read and dropped).
        self._unsure: set[str] = set()
        # When this node last asked for the epoch, and how long its peer had been silent then
        # (the takeover's log line splits the takeover with them).
        self._vote = (0.0, 0.0)
        self._ignored = RateLimitedLog(log, f"backend {role.value}: report ignored")
        self.clients = open_socket(ctx, BACKEND_CLIENTS, bind=endpoints.clients)
        self.executor = open_socket(ctx, BACKEND_EXECUTOR, bind=endpoints.executor)
        self.updates = open_socket(ctx, BACKEND_UPDATES, bind=endpoints.updates)
        # Replies, routes and reports go out without the asyncio layer (no Future per message).
        # Neither the clients ROUTER nor the updates PUB refuses a send (a client gone, a full
        # queue: dropped, the client retries); the executor's is mandatory (EHOSTUNREACH).
        self.to_clients = Sender(self.clients)
        self.to_executor = Sender(self.executor)
        self.to_updates = Sender(self.updates)
        # Heartbeats from a thread: on time while the loop is busy, withheld once it is stuck
        # for stall_budget_s (bus.orders.beacon: why).
        self.peer_pub = HeartbeatThread(ctx, endpoints.peer_pub,
                                        interval_s=self.star.config.heartbeat_s,
                                        stall_budget_s=stall_budget_s, name=role.value)
        self.peer_sub = open_socket(ctx, PEER_SUB, connect=(endpoints.peer_sub,),
                                    subscribe=[b""])

    @property
    def orders(self) -> OpenOrders:
        """The open orders, while active."""
        return self.service.open

    # -- the pair --------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Hand the heartbeat thread the current state four times a heartbeat: a state change
        goes out with the next beat, and the stamps prove the loop is running."""
        while True:
            state, epoch = self.star.heartbeat()
            self.peer_pub.update(encode_heartbeat(PeerHeartbeat(state, epoch)), time.monotonic())
            await asyncio.sleep(self.star.config.heartbeat_s / 4)

    async def _peer(self) -> None:
        while True:
            frames = await self.peer_sub.recv_multipart()
            try:
                beat = decode_heartbeat(frames)
                effects = self.star.on_peer(beat.state, beat.epoch, time.monotonic())
            except RemoteProtocolError as exc:
                self.stats.malformed += 1
                self._bad.warning("peer heartbeat: %s", exc.reason)
                continue
            if self.star.state is State.PASSIVE:
                self._started()
            await self._effects(effects)

    # -- what the pair store asks (PairView) ------------------------------------------------

    def pair_state(self) -> tuple[bool, int]:
        return self.star.state is State.PASSIVE, self.star.epoch

    def peer_ready(self) -> bool:
        return self.star.peer_passive(time.monotonic())

    def _started(self) -> None:
        """Start-up is over (passive: the active's batches come; or taking over): back to the
        normal priority, if the node started at a lower one (``bus.sched.start_niced``)."""
        if self.startup is not None and self.startup.lowered:
            self.startup.restore()

    async def _store_fenced(self, current: int) -> None:
        # Not counted in stats.fenced: the write waiting for it is, as a FENCED answer.
        await self._effects(self.star.on_fenced(current, time.monotonic()))

    def _peer_waiting(self) -> bool:
        """Whether a peer heartbeat is waiting to be read (ZMQ_EVENTS, no I/O)."""
        events = self.peer_sub.get(zmq.EVENTS)
        return isinstance(events, int) and bool(events & zmq.POLLIN)

    async def _pending_notices(self) -> None:
        """Every PENDING_INTERVAL_S, tell each client with requests in service for
        PENDING_AFTER_S or more that their answers follow (``OrderPending``), so a held or
        queued request is not sent again. Requests answered in time get no notice: a client
        whose backend dies then fails over on its own timeout, not after a hold."""
        while True:
            await asyncio.sleep(PENDING_INTERVAL_S)
            if not self.star.serving or not self.service.in_service():
                continue
            waiting = self.service.pending_notices(time.monotonic(), PENDING_AFTER_S)
            for who, count in waiting.items():
                self.to_clients.send([who, *encode_order(OrderPending(count))])

    async def _effects(self, effects: list[Effect]) -> None:
        for e in effects:
            match e:
                case AcquireEpoch(expected):
                    self._started()
                    now = time.monotonic()
                    star = self.star
                    heard = (star.started if star.peer_state is None  # never: since start
                             else star.peer_expiry - star.config.peer_timeout_s)
                    self._vote = (now, now - heard)
                    try:
                        won, epoch = await self.store.acquire_epoch(expected)
                    except StoreError as exc:
                        log.warning("backend %s: cannot acquire the epoch: %s",
                                    self.role.value, exc)
                        won, epoch = False, expected
                    await self._effects(self.star.on_epoch_result(won, epoch, time.monotonic()))
                case BecameActive(epoch):
                    await self._take_over(epoch)
                case SteppedDown(reason):
                    log.warning("backend %s: stepped down (%s)", self.role.value, reason.name)
                    if self.pair_store is not None:
                        self.pair_store.deactivate()
                    self.service.step_down(
                        f"backend {self.role.value} stepped down ({reason.name})")

    async def _take_over(self, epoch: int) -> None:
        """Active from now on: reload open orders, re-drive the ones routed but unconfirmed."""
        self.stats.takeovers += 1
        try:
            await self._reload(epoch)
        except Fenced as exc:  # a newer active exists already: step aside
            await self._effects(self.star.on_fenced(exc.current, time.monotonic()))
        except StoreError as exc:
            # Serving goes on (new orders are refused while the store is away); the re-drive
            # loop retries the reload, so no open order is forgotten.
            log.warning("backend %s: cannot reload open orders yet: %s", self.role.value, exc)
            self._reload_pending = True

    async def _reload(self, epoch: int) -> None:
        began = time.monotonic()
        # The first batch of new orders needs the last tick of its symbols: read them while
        # the store work below runs, not after it (a cold read, on a connection the passive
        # node never used, took 2-46 ms in the backend drill).
        self._spawn(self._warm_quotes())
        held_s = 0.0
        if self.pair_store is not None and self.pair_store.replicator is None:
            # What this node holds of the old active goes to Redis first (where newer), so
            # the open orders read next are the pair's, not only what Redis had.
            held = await self.pair_store.activate(epoch)
            held_s = time.monotonic() - began
            if held:
                self._spawn(self._report_again(held))
        self.service.reload(await self.store.open_orders())
        self._reload_pending = False
        voted, silent_s = self._vote
        log.info("backend %s: active at epoch %d with %d open orders (peer silent %.1f ms at "
                 "the vote; epoch %.1f, held records %.1f, open orders %.1f ms)",
                 self.role.value, epoch, len(self.orders), silent_s * 1000,
                 (began - voted) * 1000, held_s * 1000,
                 (time.monotonic() - began - held_s) * 1000)
        for order in self.orders.values():
            if order.state is OrderState.ACCEPTED:
                # Stored by an older version between its two writes: route it now.
                order = route_accepted(order, epoch=epoch, now_ns=time.time_ns())
                await self.store.write(order, epoch)
                self.orders.put(order)
        await self._redrive_once(force=True)

    async def _warm_quotes(self) -> None:
        """Read the last tick of every symbol into the quote cache (store trouble is left to
        the orders that need one)."""
        for symbol in sorted(self.limits.symbols):
            try:
                await self._quotes.get(symbol)
            except StoreError:
                return

    async def handover(self) -> None:
        """Operator command: give the active role to the peer (``kill -USR2`` on the node)."""
        log.warning("backend %s: handing the active role over to the peer", self.role.value)
        await self._effects(self.star.on_handover(time.monotonic()))

    # -- clients ---------------------------------------------------------------------------

    async def _clients(self) -> None:
        """Read requests: each wake-up takes every request already queued (up to
        DRAIN_BATCH, without waiting for more) and admits them in turn; the new orders among
        them reach the placer together, as one batch."""
        while True:
            for msg in await recv_batch(self.clients, DRAIN_BATCH):
                await self._admit(msg[0], msg[1:])

    async def _admit(self, identity: bytes, frames: list[bytes]) -> None:
        """One request: refused at once (not active, malformed, BUSY), joined to the same
        request in service, queued for the placer (a new order) or served by a task of its
        own (a cancel or a replace). A refusal creates no task and decodes no more than the
        join needs."""
        self.stats.requests += 1
        now = time.monotonic()
        # A heartbeat already waiting to be read means the peer is alive and we are late.
        pending = not self.star.serving and self._peer_waiting()
        _serving, effects = self.star.on_request(now, peer_pending=pending)
        if effects:
            await self._effects(effects)
            # A takeover took a while: the request is not as old as that (admission's age).
            now = time.monotonic()
        if not self.star.serving:  # a passive node never says BUSY
            self.stats.not_active += 1
            await self._reply(identity, OrderReject(
                client_order_id_of(frames), RejectReason.NOT_ACTIVE,
                f"backend {self.role.value} is {self.star.state.value}"))
            return
        try:
            req = decode_order_request(frames)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            self._bad.warning("%s", exc.reason)
            await self._reply(identity, OrderReject(client_order_id_of(frames),
                                                    reject_reason_of(exc), exc.reason))
            return
        if self.service.join(req, identity):
            # A client's retry of a request still being served (e.g. held while the store
            # fails over): it gets that request's answer, not a task of its own queueing on
            # the account's lock; never BUSY.
            self.stats.joined += 1
            return
        busy = self.service.busy(req, now)
        if busy is not None:
            self.stats.busy += 1
            await self._reply(identity, busy)
            return
        if isinstance(req, NewOrder) and self.pair_store is not None and self.pair_store.full():
            # Redis is behind by the write-behind bound: orders wait outside, not in memory.
            self.stats.busy += 1
            await self._reply(identity, OrderReject(
                req.client_order_id, RejectReason.BUSY,
                f"{self.pair_store.backlog()} records not yet in Redis",
                retry_after_ms=RETRY_AFTER_MAX_MS))
            return
        self.service.begin(req, identity, now)
        if isinstance(req, NewOrder):
            self._placing.append((identity, req, self.star.epoch))
            self._place_wanted.set()
            return
        self._spawn(self._serve(identity, req, self.star.epoch))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._requests.add(task)
        task.add_done_callback(self._served)

    async def _report_again(self, records: list[Order]) -> None:
        """Send again the last log entry of each record the old active wrote last: it may
        have died between storing an entry and relaying it (a terminal order is re-driven by
        nobody, so its client would never hear of its end). Clients drop an exec id they
        have had."""
        for record in records:
            if record.exec_seq == 0:
                continue
            try:
                entries = await self.store.executions(record.order_id, record.exec_seq - 1)
            except StoreError as exc:
                log.warning("backend %s: last report of %s not sent again: %s",
                            self.role.value, record.order_id, exc)
                continue
            if entries:
                await self._relay(entries[0], self.service.route_of(record))

    def _served(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("backend %s: request failed", self.role.value, exc_info=task.exception())

    async def _serve(self, identity: bytes, req: CancelOrder | ReplaceOrder, epoch: int
                     ) -> None:
        """Serve one cancel or replace taken while active at ``epoch``, and answer it (and
        the retries that joined it)."""
        reply: OrderAck | OrderReject | PendingReplace
        try:
            async with self._account_locks.hold(req.account):
                if self._still_active(epoch):
                    reply = await self._handle(identity, req)
                else:  # it stepped down while the request waited: the epoch is not its own
                    reply = self._no_longer_active(req)
            if isinstance(reply, PendingReplace):  # waited for outside the lock: not to hold
                # up the account's other cancels and replaces meanwhile
                assert isinstance(req, ReplaceOrder)
                reply = await self._replace_outcome(reply, req)
        finally:
            identities = self.service.finish(req, identity, time.monotonic())
        for who in identities:
            await self._reply(who, reply)

    def _still_active(self, epoch: int) -> bool:
        """Whether a request taken at ``epoch`` may be served now (not stepped down since)."""
        return self.star.serving and self.star.epoch == epoch

    def _no_longer_active(self, req: OrderRequest) -> OrderReject:
        return OrderReject(req.client_order_id, RejectReason.NOT_ACTIVE,
                           f"backend {self.role.value} is no longer active")

    async def _reply(self, identity: bytes, reply: OrderAck | OrderReject) -> None:
        if isinstance(reply, OrderAck):
            self.stats.acks += 1
        else:
            self.stats.rejects += 1
        self.to_clients.send([identity, *encode_order(reply)])

    async def _handle(self, identity: bytes, req: CancelOrder | ReplaceOrder
                      ) -> OrderAck | OrderReject | PendingReplace:
        if isinstance(req, CancelOrder):
            return await self._guarded(req.client_order_id, self._cancel(req))
        return await self._guarded(req.client_order_id, self._replace(identity, req))

    # -- new orders, in batches ------------------------------------------------------------

    async def _placer(self) -> None:
        """Store new orders in batches: each round takes every order queued (up to
        PLACE_BATCH) and stores them in one round trip; the next batch forms meanwhile. No
        timer: an order that finds the placer idle is a batch of one."""
        while True:
            while not self._placing:
                self._place_wanted.clear()
                await self._place_wanted.wait()
            # One batch is one epoch: the one its orders were taken at.
            epoch = self._placing[0][2]
            batch: list[tuple[bytes, NewOrder, int]] = []
            while self._placing and len(batch) < PLACE_BATCH and self._placing[0][2] == epoch:
                batch.append(self._placing.popleft())
            try:
                await self._place_batch(batch, epoch)
            except Exception:  # the next batch is still served; its clients retry
                log.exception("backend %s: a batch of %d new orders failed", self.role.value,
                              len(batch))

    async def _place_batch(self, batch: list[tuple[bytes, NewOrder, int]], epoch: int
                           ) -> None:
        """Decide, store and answer a batch of new orders taken at ``epoch``, each answered
        on its own (and the retries that joined it)."""
        replies: list[OrderAck | OrderReject] = []
        try:
            replies = await self._placed(batch, epoch)
        finally:
            # Each leaves the service, answered or not (a failed batch: the client retries).
            now = time.monotonic()
            answers = [self.service.finish(req, identity, now) for identity, req, _ in batch]
        for who, reply in zip(answers, replies, strict=True):
            for identity in who:
                await self._reply(identity, reply)

    async def _placed(self, batch: list[tuple[bytes, NewOrder, int]], epoch: int
                      ) -> list[OrderAck | OrderReject]:
        """The answers to a batch of new orders taken at ``epoch``: per order the checks and
        the exposure reservation (``OrderService.reserve``, in arrival order, so the batch's
        orders of one account cannot share headroom), then one fenced write of every order
        that passed (``OrderStore.write_batch``), then the routes to the executor.

        The write is under ``epoch``, never one learnt since (that would write past
        fencing): if the node stepped down meanwhile, the store decides (it still holds
        ``epoch``, or refuses: FENCED); if it is active again at a newer epoch, they are
        NOT_ACTIVE (a FENCED write would depose the active node it is now)."""
        quotes = {symbol: await self._guarded("", self._quote(symbol))
                  for symbol in {req.symbol for _, req, _ in batch}}
        replies: list[OrderAck | OrderReject | None] = [None] * len(batch)
        valid: list[tuple[int, Order]] = []  # (position in the batch, the order to store)
        refused: list[tuple[int, RejectReason]] = []
        now_ns = time.time_ns()
        stale = self.star.serving and self.star.epoch != epoch
        # From the checks to the write nothing awaits: no order of the account can pass the
        # exposure check on the same headroom.
        for i, (identity, req, _) in enumerate(batch):
            quote = quotes[req.symbol]
            if stale:
                replies[i] = self._no_longer_active(req)
            elif isinstance(quote, OrderReject):  # the tick store is away
                replies[i] = replace(quote, client_order_id=req.client_order_id)
            else:
                checked = self.service.reserve(req, quote, epoch=epoch, now_ns=now_ns,
                                               client_id=_client_id(identity))
                if isinstance(checked, Order):
                    valid.append((i, checked))
                else:
                    refused.append((i, checked))
        lookups: list[int] = [i for i, _ in refused]  # retries of stored orders, maybe
        if valid:
            try:
                # One fenced write, before the acks: stored as ROUTED, so a takeover
                # re-drives an order even if this node dies before the executor has it (the
                # executor dedupes). The write is also the idempotency check: it refuses,
                # writing nothing, a client order id that already names an order (no read
                # before it on the common path).
                self.stats.place_batches += 1
                outcomes = await self._guarded(
                    "", self.store.write_batch([order for _, order in valid], epoch))
            finally:
                for _, order in valid:
                    self.service.release(order.order_id)
            for (i, order), outcome in zip(valid, self._per_order(outcomes, len(valid)),
                                           strict=True):
                identity, req, _ = batch[i]
                if isinstance(outcome, OrderReject):
                    replies[i] = replace(outcome, client_order_id=req.client_order_id)
                elif outcome is WriteOutcome.WRITTEN:
                    if self._still_active(epoch):  # else the next active routes it (reload)
                        self.service.placed(order, identity)
                        await self._route(order)
                    replies[i] = OrderAck(req.client_order_id, order.order_id, order.state,
                                          epoch)
                elif outcome is WriteOutcome.CLIENT_ID_TAKEN:
                    lookups.append(i)  # a retry of a stored order, or a reused client id
                else:  # pragma: no cover - order ids are unique per process and epoch
                    replies[i] = OrderReject(
                        req.client_order_id, RejectReason.STORE_UNAVAILABLE,
                        f"order id {order.order_id} already names another client order's "
                        "record: not overwritten")
        # The rare paths pay the idempotency read, all of them at once: a retry of an order
        # stored earlier answers with its state, even if the market has moved since.
        reasons = dict(refused)
        found = await asyncio.gather(*(self._guarded(batch[i][1].client_order_id,
                                                     self._existing(batch[i], reasons.get(i)))
                                       for i in lookups))
        for i, reply in zip(lookups, found, strict=True):
            replies[i] = reply
        assert all(r is not None for r in replies)
        return [r for r in replies if r is not None]

    @staticmethod
    def _per_order(outcomes: list[WriteOutcome] | OrderReject, count: int
                   ) -> list[WriteOutcome] | list[OrderReject]:
        """The batch write's outcome of each order (a reject for the whole batch: each)."""
        return [outcomes] * count if isinstance(outcomes, OrderReject) else outcomes

    async def _existing(self, item: tuple[bytes, NewOrder, int], reason: RejectReason | None
                        ) -> OrderAck | OrderReject:
        """The answer to a new order refused by its checks (``reason``) or by the store (its
        client order id names an order): the stored order's state if it is a retry of it."""
        identity, req, _ = item
        existing = await self.store.by_client_id(req.account, req.client_order_id)
        if existing is not None:
            return self._duplicate(existing, req, identity)
        if reason is None:  # pragma: no cover - the id key is never deleted
            return OrderReject(req.client_order_id, RejectReason.DUPLICATE_DIFFERENT,
                               "client order id already names another order")
        return OrderReject(req.client_order_id, reason, f"{reason.name.lower()}")

    async def _quote(self, symbol: str) -> tuple[float, float] | None:
        """The last tick's (bid, ask) for the price band: cached for QUOTE_TTL_S, and while the
        tick store is failed over the last one read, or a wait for the store, up to the store
        deadline: orders are held, not refused, meanwhile."""
        if symbol not in self.limits.symbols:
            return None
        return await self._quotes.get(symbol)

    async def _guarded(self, client_order_id: str, work: Coroutine[Any, Any, T]
                       ) -> T | OrderReject:
        """Run a request's store work; turn store trouble into the right reject."""
        try:
            return await work
        except Fenced as exc:
            self.stats.fenced += 1
            await self._effects(self.star.on_fenced(exc.current, time.monotonic()))
            return OrderReject(client_order_id, RejectReason.FENCED, str(exc))
        except StoreError as exc:
            return OrderReject(client_order_id, RejectReason.STORE_UNAVAILABLE, str(exc))

    async def _cancel(self, req: CancelOrder) -> OrderAck | OrderReject:
        """Ask the executor to cancel: its decision log settles a race with a fill.

        The ack means "cancel requested"; the outcome (CANCELLED, or the fill that won) comes
        as an execution report.
        """
        epoch = self.star.epoch
        target = await self.store.by_client_id(req.account, req.target_client_order_id)
        match self.service.cancel(req, target, epoch=epoch, now_ns=time.time_ns()):
            case SendCancel(request, ack):
                await self._send_executor(request, request.order_id)
                return ack
            case reply:
                return reply

    async def _replace(self, identity: bytes, req: ReplaceOrder
                       ) -> OrderAck | OrderReject | PendingReplace:
        """Check a replace and ask the executor to decide it; the answer waits for that
        decision (:meth:`_replace_outcome`): the executor owns the working order, and a fill
        may have changed what a replace can still do since the record was written."""
        done = self.service.replaced(req)
        if done is not None:  # a retry of a replace decided already
            return done
        stored = await self.store.by_client_id(req.account, req.target_client_order_id)
        target = self.service.replace_target(req, stored)
        if isinstance(target, OrderReject):
            return target
        quote = await self._quote(target.order.symbol)
        match self.service.replace(req, target, quote, epoch=self.star.epoch,
                                   now_ns=time.time_ns(), identity=identity):
            case SendReplace(pending):
                if not await self._send_executor(pending.request, pending.order_id):
                    self.service.abandon(pending)
                    return OrderReject(req.client_order_id, RejectReason.EXECUTOR_UNAVAILABLE,
                                       "the executor is not connected")
                return pending
            case AwaitReplace(pending):  # the client's retry while the executor decides
                return pending
            case OrderReject() as refusal:
                return refusal

    async def _replace_outcome(self, pending: PendingReplace, req: ReplaceOrder
                               ) -> OrderAck | OrderReject:
        """The answer to a replace: acknowledged once the executor's replace entry is applied
        and stored, refused with the executor's reason, or EXECUTOR_UNAVAILABLE (retryable:
        resending the same replace is harmless) if no decision came in time."""
        done: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()

        def decided(outcome: Decision) -> None:
            if not done.done():
                done.set_result(outcome)

        if pending.decided is not None:
            decided(pending.decided)
        else:
            pending.waiters.append(decided)
        await asyncio.wait({done}, timeout=self.amend_timeout_s)
        if not done.done():
            self.service.abandon(pending)
        return self.service.replace_answer(req, done.result() if done.done() else None,
                                           self.amend_timeout_s)

    def _duplicate(self, existing: Order, req: NewOrder, identity: bytes
                   ) -> OrderAck | OrderReject:
        reply = self.service.duplicate(existing, req, identity, self.star.epoch)
        if isinstance(reply, OrderAck):
            self.stats.duplicates += 1
        return reply

    # -- executor --------------------------------------------------------------------------

    async def _route(self, order: Order) -> None:
        if await self._send_executor(order, order.order_id):
            self.stats.routed += 1

    async def _send_executor(self, msg: Order | ExecutorRequest, order_id: str) -> bool:
        try:
            self.to_executor.send([self.executor_id, *encode_order(msg)])
            self.service.sent(order_id, time.monotonic())
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: not connected; EAGAIN: its queue is full
            log.warning("backend %s: executor %s unreachable (%s); %s waits for re-drive",
                        self.role.value, self.executor_id.decode(), exc.strerror, order_id)
            return False

    async def _redrive(self) -> None:
        """Send again orders routed a while ago and still unconfirmed (executor restarted)."""
        while True:
            await asyncio.sleep(self.redrive_s)
            if not self.star.serving:
                continue
            try:
                if self._reload_pending:
                    await self._reload(self.star.epoch)
                await self._redrive_once()
            except Fenced as exc:
                await self._effects(self.star.on_fenced(exc.current, time.monotonic()))
            except StoreError as exc:
                log.warning("backend %s: re-drive postponed: %s", self.role.value, exc)

    async def _redrive_once(self, force: bool = False) -> None:
        """Re-send unconfirmed orders and cancels, oldest first, at most REDRIVE_BATCH a round
        and each at most once per ``redrive_s``: a backlog must not become a resend storm."""
        due, cancels = self.service.redrive(time.monotonic(), force=force)
        for n, order in enumerate(due, start=1):
            await self._route(order)
            self.stats.redriven += 1
            if n % YIELD_EVERY == 0:
                # A non-blocking send never yields: let heartbeats and clients in, or the
                # peer sees a silent node after a large re-drive and takes over.
                await asyncio.sleep(0)
        for request in cancels:
            await self._send_executor(request, request.order_id)

    async def _executor_reports(self) -> None:
        """Read the executor's messages: each wake-up takes every one already queued (up to
        DRAIN_BATCH) and decides the log entries among them as one batch
        (:meth:`_decide_entries`); the next batch forms while one is being made durable."""
        while True:
            proposals: list[ExecutionReport] = []
            for _identity, *frames in await recv_batch(self.executor, DRAIN_BATCH):
                try:
                    report = decode_order(frames)
                except RemoteProtocolError as exc:
                    self.stats.malformed += 1
                    self._bad.warning("executor: %s", exc.reason)
                    continue
                if isinstance(report, ReplaceRefused):
                    if self.star.serving:
                        self.service.refused(report)
                elif isinstance(report, ExecutionReport):
                    proposals.append(report)
                else:
                    self.stats.malformed += 1
                    self._bad.warning("executor sent a %s", type(report).__name__)
            if not proposals:
                continue
            if not self.star.serving:
                await self._refuse_entries(proposals, EntryRefusal.NOT_ACTIVE)
                continue
            try:
                await self._decide_entries(proposals)
            except Fenced as exc:  # a newer epoch decides: this node steps down
                self.stats.fenced += 1
                await self._effects(self.star.on_fenced(exc.current, time.monotonic()))
                await self._refuse_entries(proposals, EntryRefusal.NOT_ACTIVE)
            except StoreError as exc:  # nothing decided: the executor proposes again
                log.warning("backend %s: %d entries not decided: %s", self.role.value,
                            len(proposals), exc)
                await self._refuse_entries(proposals, EntryRefusal.STORE)

    def _latest(self, order_id: str) -> Order | None:
        """The newest record of an order this node holds in memory: its term's write-behind
        backlog (newer than the open orders while a write is pending or failed), else the
        open orders."""
        held = self.pair_store.held(order_id) if self.pair_store is not None else None
        return held or self.orders.get(order_id)

    async def _decide_entries(self, proposals: list[ExecutionReport]) -> None:
        """Decide a batch of the executor's proposed log entries, in arrival order, each by
        ``judge_entry`` against its order's record as the batch's earlier entries leave it;
        store every changed record with the entries it applied in one write (one replicated
        batch: a decision is final once the pair holds it), then answer the executor (each
        decided entry itself; for a position decided already the entry there; else why not)
        and relay each decided entry to its client and to the updates feed."""
        epoch = self.star.epoch
        now_ns = time.time_ns()
        changed: dict[str, Order] = {}  # order id -> its record after this batch's entries
        decided: list[ExecutionReport] = []
        taken: list[ExecutionReport] = []
        refused: list[EntryRefused] = []
        for entry in proposals:
            oid = entry.order_id
            if oid in self._unsure and oid not in changed:
                order: Order | None = await self._resync(oid)
            else:
                order = changed.get(oid) or self._latest(oid) or await self.store.get(oid)
            verdict = judge_entry(order, entry, epoch=epoch, now_ns=now_ns)
            if isinstance(verdict, Order):
                changed[oid] = verdict
                decided.append(entry)
            elif verdict == TAKEN:
                assert order is not None
                self.service.settled(order)
                taken.append(entry)
            else:
                refused.append(EntryRefused(oid, entry.seq, verdict.reason,
                                            order.exec_seq if order is not None else 0))
                if verdict.reason is EntryRefusal.GAP and order is not None:
                    await self._gap(order)
                else:
                    self._ignored.warning("%s", verdict.why)
        if decided:
            try:
                await self.store.write_batch(list(changed.values()), epoch, decided)
            except Fenced:
                raise
            except StoreError:
                # Redis may have run the write and lost its reply: read these orders from it
                # before judging them again (the pair store holds them: it answers the same).
                self._unsure.update(changed)
                raise
        now = time.monotonic()
        for entry in decided:
            self.stats.reports += 1
            if entry.is_replace:
                self.stats.replaced += 1
            await self._answer_executor(entry)
            await self._relay(entry, self.service.applied(entry, changed[entry.order_id], now))
        for entry in taken:  # durable: the write above (or, with none, an earlier one) was
            await self._answer_executor(await self._entry_at(entry))
        await self._refuse(refused)

    async def _resync(self, oid: str) -> Order | None:
        """The record of an order whose last write failed, as the store has it; entries the
        store has beyond what memory knows (that write ran after all) are applied and relayed
        now, as if it had succeeded."""
        stored = await self.store.get(oid)
        known = self._latest(oid)
        self._unsure.discard(oid)
        if stored is not None and known is not None and stored.exec_seq > known.exec_seq:
            now = time.monotonic()
            for entry in await self.store.executions(oid, known.exec_seq):
                await self._relay(entry, self.service.applied(entry, stored, now))
        return stored

    async def _gap(self, order: Order) -> None:
        """An entry past the log's end: the executor holds entries the pair lost (both nodes
        died with them unwritten); routing the order again makes it propose them again."""
        self.stats.gaps += 1
        if self.service.gap_retry(order.order_id, time.monotonic()):
            await self._route(order)

    async def _entry_at(self, entry: ExecutionReport) -> ExecutionReport | EntryRefused:
        """The entry that holds ``entry``'s position of its order's log."""
        self.stats.entries_taken += 1
        try:
            found = await self.store.executions(entry.order_id, entry.seq - 1)
        except StoreError as exc:
            self._ignored.warning("entry %s not read: %s", entry.exec_id, exc)
            found = []
        if found and found[0].seq == entry.seq:
            return found[0]
        return EntryRefused(entry.order_id, entry.seq, EntryRefusal.STORE, entry.seq - 1)

    async def _refuse_entries(self, proposals: list[ExecutionReport],
                              reason: EntryRefusal) -> None:
        await self._refuse(EntryRefused(e.order_id, e.seq, reason) for e in proposals)

    async def _refuse(self, refusals: Iterable[EntryRefused]) -> None:
        for refusal in refusals:
            self.stats.entries_refused += 1
            await self._answer_executor(refusal)

    async def _answer_executor(self, msg: ExecutionReport | EntryRefused) -> None:
        """An answer to a proposed entry; an executor gone meanwhile proposes it again."""
        try:
            self.to_executor.send([self.executor_id, *encode_order(msg)])
        except zmq.ZMQError as exc:
            self._ignored.warning("answer to the executor not sent: %s", exc.strerror)

    async def _relay(self, report: ExecutionReport, identity: bytes) -> None:
        """A decided log entry to its client (``identity``; b"": unknown) and on "updates"."""
        frames = encode_order(report)
        if identity:
            self.to_clients.send([identity, *frames])
        self.to_updates.send([report.account.encode() + b"\x00", *frames])

    # -- lifecycle -------------------------------------------------------------------------

    async def _rebuild(self) -> None:
        """Before serving: restore from history what a wiped order store lost (a no-op when
        it lost nothing). History that does not answer cannot say whether the store is
        behind: the node serves, and says so."""
        if self.history is None or self._redis is None:
            return
        try:
            # A store that numbered writes lost at most its last ones: one try. An empty one
            # (new, or wiped) is worth waiting a little for history to answer.
            tries = 1 if await self._redis.history_position() else REBUILD_TRIES
        except StoreError:
            tries = REBUILD_TRIES
        for attempt in range(1, tries + 1):
            try:
                report = await rebuild_from_history(self._redis, self.history)
            except StoreError as exc:
                log.warning("backend %s: rebuild check from history failed (try %d of %d): %s",
                            self.role.value, attempt, tries, exc)
                await asyncio.sleep(REBUILD_RETRY_S)
                continue
            self.stats.rebuilt_records += report.records
            self.stats.rebuilt_entries += report.entries
            return
        log.error("backend %s: history did not answer: serving without the check that the "
                  "order store lost nothing", self.role.value)

    async def run(self, stop: asyncio.Event) -> int:
        await self._rebuild()
        try:
            # Start from the store's epoch: a node that assumed 0 would lose its first
            # compare-and-swap for nothing and then hold off before it could serve.
            self.star.epoch = await self.store.current_epoch()
        except StoreError as exc:
            log.warning("backend %s: store epoch unknown at start (%s)", self.role.value, exc)
        try:
            # A connection to the tick store now, not at the first order after a takeover.
            await self.ticks.ping()
        except StoreError as exc:
            log.warning("backend %s: tick store not reached at start (%s)", self.role.value, exc)
        tasks = [asyncio.create_task(self._redrive(), name="redrive"),
                 asyncio.create_task(self._heartbeats(), name="heartbeats"),
                 asyncio.create_task(self._pending_notices(), name="pending notices"),
                 asyncio.create_task(self._peer(), name="peer"),
                 asyncio.create_task(self._clients(), name="clients"),
                 asyncio.create_task(self._placer(), name="placer"),
                 asyncio.create_task(self._executor_reports(), name="executor")]
        if self.pair_store is not None:
            ps = self.pair_store
            tasks += [asyncio.create_task(ps.serve_replica(), name="replica"),
                      asyncio.create_task(ps.acks(), name="replica acks"),
                      asyncio.create_task(ps.flusher(), name="write-behind"),
                      asyncio.create_task(ps.catch_up(), name="client index")]
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.collect),
                                             name="stats"))
        # Where the loop stalls, and for how long (TICKMESH_LOOP_WATCHDOG_MS).
        watchdog = watchdog_from_env(f"backend {self.role.value}")
        if watchdog is not None:
            tasks.append(asyncio.create_task(watchdog.run(), name="watchdog"))
        log.info("backend %s serving clients on %s", self.role.value, self.endpoints.clients)
        try:
            return await supervise_tasks(f"backend {self.role.value}", stop, tasks)
        finally:
            await cancel_and_wait([*self._requests],
                                  what=f"backend {self.role.value}")
            for sock in (self.clients, self.executor, self.peer_pub, self.updates,
                         self.peer_sub):
                sock.close(linger=0)
            await self.store.close()
            await self.ticks.close()
            self.ctx.term()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())

    def collect(self) -> dict[str, Any]:
        return {"node": "backend", "role": self.role.value, "state": self.star.state.value,
                "epoch": self.star.epoch, "open_orders": len(self.orders),
                "records": len(self.service),
                "heartbeats_sent": self.peer_pub.sent,
                "heartbeats_withheld": self.peer_pub.withheld, **asdict(self.stats),
                **({} if self.pair_store is None else {
                    "write_behind": self.pair_store.backlog(),
                    "pair_store": asdict(self.pair_store.stats)})}


def _client_id(identity: bytes) -> str:
    """The routing id of a client as an order record keeps it ("" if it cannot: ZeroMQ's
    generated ids are binary; the order client's are text)."""
    try:
        return check_id("client_id", identity.decode())
    except (UnicodeDecodeError, InvalidOrder):
        return ""


def backend_from_config(cfg: MeshConfig, role: Role, stats_path: Path | None = None, *,
                        startup: StartupNice | None = None) -> BackendNode:
    """The backend node of ``role`` as the mesh file's [orders] section describes it."""
    o = cfg.orders
    i = 0 if role is Role.PRIMARY else 1
    ends = BackendEndpoints(clients=o.clients[i], peer_pub=o.peers[i], peer_sub=o.peers[1 - i],
                            updates=o.updates[i], executor=o.executor[i],
                            replica=o.replicas[i], peer_replica=o.replicas[1 - i])
    symbols = o.symbols or tuple(s for f in cfg.feeds for s in f.symbols)
    limits = Limits(frozenset(symbols), o.max_quantity, o.price_band, o.max_exposure)
    pair = PairConfig(heartbeat_s=o.heartbeat_ms / 1000, peer_timeout_s=o.peer_timeout_ms / 1000,
                      cold_start_s=o.cold_start_ms / 1000)
    return BackendNode(cfg, role, ends, limits=limits, pair=pair, stats_path=stats_path,
                       executor_id=o.executor_id, amend_timeout_s=o.amend_timeout_ms / 1000,
                       stall_budget_s=o.stall_budget_ms / 1000, startup=startup)


__all__ = ["BackendEndpoints", "BackendNode", "backend_from_config"]
