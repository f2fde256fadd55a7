"""The executor's side of the EA trade socket (docs/PROTOCOL.md section 18): a ROUTER the EA
instances connect to, the lease table on a timer, and the orders on their way to a terminal.

Rules:

* :class:`EaDesk` binds a ROUTER at ``[orders] ea_bind`` (``ROUTER_HANDOVER``: a restarted
  instance takes its routing id, its ``[[ea]] name``, over). It answers every PING with a
  LEASE from :class:`~protocols.ea.lease.Leases`, ticks the table every heartbeat, and makes
  each claimed epoch durable (the caller's ``epochs``: ``INCR P:ea:epoch:{key}``) before it
  grants it, so a restarted executor never reuses one.
* An order (:meth:`EaDesk.submit`) goes to the synced holder of its account's key as EXECUTE,
  with any cancel or modify the executor asked for after it; an order whose key has no synced
  holder is *held*. Held orders go out at the next tick that finds a synced holder (at once at
  its SYNCED), and every order sent under an older epoch goes again to the new holder after
  its SYNCED (EXECUTE is idempotent at the EA: a terminal that has the order answers with its
  facts). A REFUSED NOT_ACTIVE, SYNCING or TERMINAL_DOWN puts the order back on hold; it goes
  again at the key's next SYNCED or a periodic scan, backing off 20 ms, 40, ... up to 1 s.
* A refusal answers one EXECUTE, never an earlier one. An order that may be at a terminal
  (an EXECUTE not refused, facts for it, a TERMINAL_DOWN, a fill) is never expired: only the
  terminal's facts may finish it. One that no EXECUTE reached and with no fill is handed back
  as expired ``[orders] ea_hold_ms`` after the executor first saw it: the executor rejects it
  NO_EXECUTOR.
* FACTS go to the executor through :attr:`EaDesk.events` (bounded). When it is full the facts
  are dropped, counted, and their orders asked again (EXECUTE) at the next tick: facts are the
  terminal's whole picture, so asking again loses nothing.
* Orders are bounded by ``max_orders`` (the executor refuses beyond it, never drops); a
  malformed message is counted, logged rate-limited and dropped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import zmq
import zmq.asyncio

from bus.config import OrdersSection
from bus.logutil import RateLimitedLog
from bus.sockets import EA_DESK, Sender, drain_queued, open_socket, recv_batch
from protocols.ea.lease import Claim, Leases
from protocols.ea.messages import (
    Bye,
    Cancel,
    EaMessage,
    Execute,
    Facts,
    Hello,
    Lease,
    Modify,
    Ping,
    Refused,
    RefusedWhy,
    Synced,
    decode_ea,
    encode_ea,
)
from protocols.errors import RemoteProtocolError
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import OrderType, ReplaceRequest, Side
from protocols.orders.record import Order

log = logging.getLogger(__name__)

BATCH = 256  # messages read per wake-up
MAX_EVENTS = 4096  # facts and refusals waiting for the executor
SCAN_TICKS = 5  # held orders are looked at every this many heartbeats (and after a failed send)
BACKOFF_S = 0.02  # an order refused (or not sendable) n times in a row waits 20 ms * 2^(n-1)
MAX_BACKOFF_S = 1.0
_AGAIN = frozenset({RefusedWhy.NOT_ACTIVE, RefusedWhy.SYNCING, RefusedWhy.TERMINAL_DOWN})


@dataclass(frozen=True, slots=True)
class Expired:
    """Orders held ``ea_hold_ms`` that no EXECUTE reached: reject them NO_EXECUTOR."""

    order_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnknownSymbol:
    """The holder's terminal does not quote the order's symbol: reject it VENUE_REJECTED."""

    order_id: str


DeskEvent = Facts | Expired | UnknownSymbol


@dataclass(slots=True)
class DeskStats:
    instances: int = 0  # instances the lease table knows (a gauge)
    holders: dict[str, str] = field(default_factory=dict)  # key -> instance
    epochs: dict[str, int] = field(default_factory=dict)  # key -> its epoch
    takeovers: int = 0
    held: int = 0  # orders waiting for a synced holder (a gauge)
    orders: int = 0  # orders the desk tracks (a gauge)
    sent: int = 0  # EXECUTE sent (again after a takeover, a refusal, a re-drive included)
    cancels: int = 0  # CANCEL sent
    modifies: int = 0  # MODIFY sent
    facts: int = 0  # order facts received
    synced: int = 0  # SYNCED taken (for the key's current holder and epoch)
    refused: dict[str, int] = field(default_factory=dict)  # REFUSED by why
    expired: int = 0  # orders handed back for NO_EXECUTOR
    unknown: int = 0  # facts for orders the store does not know (the executor counts)
    dropped: int = 0  # facts dropped for a full event queue (asked again)
    unsent: int = 0  # sends the socket refused (the instance not connected): held again
    grant_errors: int = 0  # epochs not made durable (the store away): granted later
    malformed: int = 0


@dataclass(slots=True, eq=False)
class _Job:
    """One order on its way to a terminal."""

    execute: Execute  # key and epoch filled in at each send
    account: str
    seen: float  # when the executor first saw the order (the hold deadline counts from it)
    filled: bool  # it has fills: it is at a terminal, never expired
    key: str = ""  # the key it went out under ("": never sent; it follows its account)
    epoch: int = 0  # the epoch of its last EXECUTE (0: to be sent)
    # EXECUTEs sent and not refused. A refusal answers one EXECUTE, never an earlier one:
    # an order one EXECUTE got to the terminal stays counted however often later ones are
    # refused (a lapsed lease, a reconciling instance), so it is never rejected NO_EXECUTOR.
    unanswered: int = 0
    reached: bool = False  # facts came for it, or a refusal said the terminal may have it
    cancel: bool = False  # the executor asked for a cancel
    replace: ReplaceRequest | None = None  # the replace a MODIFY was sent for
    again: bool = False  # send EXECUTE even under the same epoch (its facts were lost)
    refusals: int = 0  # refused (or unsent) in a row: the next try backs off
    not_before: float = 0.0  # the periodic scan sends it again from then on

    @property
    def at_terminal(self) -> bool:
        """Whether a terminal may have the order (then it is never expired nor cancelled
        here: only the terminal's facts decide it)."""
        return self.filled or self.reached or self.unanswered > 0


class EaDesk:
    """The executor's EA socket and lease table; run :meth:`reader` and :meth:`timer` as
    tasks, :meth:`close` after them."""

    def __init__(self, cfg: OrdersSection, ctx: zmq.asyncio.Context, *,
                 epochs: Callable[[str], Awaitable[int]], max_orders: int,
                 bind: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.leases = Leases(cfg.ea_lease_ms, cfg.ea_guard_ms)
        self.sock = open_socket(ctx, EA_DESK, bind=bind or cfg.ea_bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.out = Sender(self.sock)
        self.max_orders = max_orders
        self.events: asyncio.Queue[DeskEvent] = asyncio.Queue(MAX_EVENTS)
        self.stats = DeskStats()
        self._epochs = epochs
        self._clock = clock
        self._hold_s = cfg.ea_hold_ms / 1000
        self._jobs: dict[str, _Job] = {}
        self._held: dict[str, None] = {}  # order ids to send (insertion order: oldest first)
        self._claims: dict[str, Claim] = {}  # claims whose epoch is not durable yet
        # Held orders are looked at every tick only after a refusal, a failed send or lost
        # facts; else every SCAN_TICKS ticks (the hold deadline's resolution): thousands held
        # while no instance is connected cost no CPU per heartbeat.
        self._retry = False
        self._next_scan = 0.0
        self._bad = RateLimitedLog(log, "ea desk: malformed message")
        self._unsent = RateLimitedLog(log, "ea desk: not sent")
        self._grant_log = RateLimitedLog(log, "ea desk: epoch not made durable")

    # --- the executor's calls ----------------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self._jobs) >= self.max_orders

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._jobs

    def submit(self, order: Order) -> None:
        """Make sure ``order`` reaches a terminal: sent now if its key has a synced holder,
        else held. Again for an order the desk has (a re-drive): its EXECUTE goes again."""
        job = self._jobs.get(order.order_id)
        if job is None:
            o = order.order
            price = order.price if o.type is OrderType.LIMIT and order.price else 0.0
            # The client's send time bounds when the order can first have reached a terminal
            # (the EA reads its history back to it, less a second: PROTOCOL.md 18.4).
            routed_ms = min(o.sent_ns, order.updated_ns) // 1_000_000
            job = _Job(Execute("", 0, order.order_id, o.symbol, o.side is Side.BUY,
                               order.quantity, price, routed_ms), o.account, self._clock(),
                       filled=order.state is not OrderState.ROUTED)
            self._jobs[order.order_id] = job
        job.again = True
        self._dispatch(order.order_id, job)

    def cancel(self, order_id: str) -> bool:
        """Ask the terminal to cancel the order: True if it may be at a terminal (CANCEL sent,
        or sent after its EXECUTE); False if no EXECUTE reached one (the desk forgets the
        order: the executor cancels it itself)."""
        job = self._jobs.get(order_id)
        if job is None:
            return False
        if not job.at_terminal:
            self.forget(order_id)
            return False
        job.cancel = True
        if job.epoch:
            self._send_to_holder(job, Cancel(job.key, job.epoch, order_id))
            self.stats.cancels += 1
        return True

    def modify(self, request: ReplaceRequest) -> bool:
        """Ask the terminal for the replace's new price: True if the order may be at a
        terminal (MODIFY sent now or after its EXECUTE; the facts answer it); False if no
        EXECUTE reached one (the order goes out at the new price: the executor logs the
        replace itself)."""
        job = self._jobs.get(request.order_id)
        if job is None or request.price is None:
            return False
        if not job.at_terminal:
            job.execute = replace(job.execute, price=request.price)
            return False
        job.replace = request
        if job.epoch:
            self._send_to_holder(job, Modify(job.key, job.epoch, request.order_id,
                                             request.price))
            self.stats.modifies += 1
        return True

    def asked(self, order_id: str) -> tuple[bool, ReplaceRequest | None]:
        """Whether a cancel was asked for the order, and the replace pending for it."""
        job = self._jobs.get(order_id)
        return (False, None) if job is None else (job.cancel, job.replace)

    def replace_done(self, order_id: str) -> None:
        job = self._jobs.get(order_id)
        if job is not None:
            job.replace = None

    def ask_again(self, order_id: str) -> None:
        """Send the order's EXECUTE again at the next tick (its facts are wanted again)."""
        job = self._jobs.get(order_id)
        if job is not None:
            job.again = True
            self._hold(order_id, retry=True)

    def forget(self, order_id: str) -> None:
        """The order is finished (or handed back): nothing more goes to a terminal for it."""
        self._jobs.pop(order_id, None)
        self._held.pop(order_id, None)

    # --- sending -----------------------------------------------------------------------------

    def _dispatch(self, order_id: str, job: _Job) -> None:
        """Send the order to its key's synced holder, or hold it."""
        key = job.key or self.leases.key_for(job.account)
        holder = None if key is None else self.leases.holder(key)
        if key is None or holder is None or not holder.synced:
            self._hold(order_id, retry=False)  # its key's SYNCED sends it
            return
        if holder.epoch == job.epoch and not job.again:
            self._held.pop(order_id, None)
            return
        msg = replace(job.execute, key=key, epoch=holder.epoch)
        if not self._send(holder.instance, msg):
            self._back_off(job)
            self._hold(order_id, retry=True)
            return
        self.stats.sent += 1
        job.key, job.epoch, job.again = key, holder.epoch, False
        job.unanswered += 1
        self._held.pop(order_id, None)
        if job.cancel:
            self._send(holder.instance, Cancel(key, holder.epoch, order_id))
            self.stats.cancels += 1
        elif job.replace is not None and job.replace.price is not None:
            self._send(holder.instance, Modify(key, holder.epoch, order_id, job.replace.price))
            self.stats.modifies += 1

    def _back_off(self, job: _Job) -> None:
        """The order's next try waits 20 ms, 40, ... up to a second: a holder that refuses
        (its lease lapsed, a busy loop) or is not connected gets no storm of resends."""
        job.refusals += 1
        job.not_before = self._clock() + min(MAX_BACKOFF_S,
                                             BACKOFF_S * 2 ** min(job.refusals - 1, 10))

    def _hold(self, order_id: str, *, retry: bool) -> None:
        """Hold the order; ``retry``: try it again at the next tick (else at its key's SYNCED
        or the next periodic scan)."""
        self._held[order_id] = None
        self._retry = self._retry or retry

    def _send_to_holder(self, job: _Job, msg: Cancel | Modify) -> None:
        holder = self.leases.holder(job.key)
        if holder is not None and holder.synced and holder.epoch == job.epoch:
            self._send(holder.instance, msg)
        else:  # the holder changed: the order goes again to the next one, with this after it
            job.epoch = 0
            self._hold(msg.order_id, retry=True)

    def _send(self, instance: str, msg: EaMessage) -> bool:
        try:
            self.out.send([instance.encode(), *encode_ea(msg)])
            return True
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, zmq.EAGAIN):
                raise
            self.stats.unsent += 1
            self._unsent.warning("%s to %s: %s", type(msg).__name__, instance, exc)
            return False

    # --- receiving ---------------------------------------------------------------------------

    def handle(self, frames: list[bytes]) -> None:
        """One message from an instance (its routing id first)."""
        ident, body = frames[0], frames[1:]
        try:
            msg = decode_ea(body)
        except RemoteProtocolError as exc:
            self._malformed("%s from %r", exc.reason, ident)
            return
        now = self._clock()
        match msg:
            case Hello():
                log.info("ea desk: %s (incarnation %s, pid %d) serves %s", msg.instance,
                         msg.incarnation, msg.pid, ", ".join(msg.keys))
                self.leases.hello(msg.instance, msg.incarnation, msg.keys, now)
            case Ping():
                grants = self.leases.ping(msg.instance, msg.incarnation, now)
                self._send(ident.decode(errors="replace"),
                           Lease(msg.n, self.cfg.ea_lease_ms, grants))
            case Synced():
                if self.leases.synced(msg.instance, msg.key, msg.epoch):
                    self.stats.synced += 1
                    log.info("ea desk: %s synced %s under epoch %d (%d orders, %d foreign)",
                             msg.instance, msg.key, msg.epoch, msg.orders, msg.foreign)
                    self._resend(msg.key)
            case Facts():
                self._facts(msg)
            case Refused():
                self._refused(msg)
            case Bye():
                log.info("ea desk: %s (incarnation %s) said BYE", msg.instance,
                         msg.incarnation)
                self.leases.bye(msg.instance, msg.incarnation, now)
            case _:
                self._malformed("%s is not for the executor", type(msg).__name__)

    def _facts(self, msg: Facts) -> None:
        self.stats.facts += len(msg.orders)
        for f in msg.orders:
            job = self._jobs.get(f.order_id)
            if job is not None:
                job.again = False
                job.reached = True
                job.refusals = 0
        try:
            self.events.put_nowait(msg)
        except asyncio.QueueFull:
            self.stats.dropped += len(msg.orders)
            for f in msg.orders:
                self.ask_again(f.order_id)

    def _refused(self, msg: Refused) -> None:
        why = msg.why.name
        self.stats.refused[why] = self.stats.refused.get(why, 0) + 1
        job = self._jobs.get(msg.order_id)
        if job is None:
            return
        job.unanswered = max(0, job.unanswered - 1)  # that EXECUTE made nothing
        if msg.why is RefusedWhy.TERMINAL_DOWN:
            job.reached = True  # a send without an answer: the terminal may have it
        if msg.why in _AGAIN:
            if job.epoch == msg.epoch:
                job.epoch = 0
            self._back_off(job)
            # Not at the next tick: an instance that refuses (its lease lapsed, it reconciles)
            # refuses the next one too, and thousands of held orders sent every heartbeat were
            # a storm that starved both loops of their pings (the drill saw leases flap). The
            # key's SYNCED, or the periodic scan, sends it again.
            self._hold(msg.order_id, retry=False)
        elif msg.why is RefusedWhy.UNKNOWN_SYMBOL and not job.at_terminal:
            self.forget(msg.order_id)
            try:
                self.events.put_nowait(UnknownSymbol(msg.order_id))
            except asyncio.QueueFull:  # held again: the next holder refuses it again
                self._jobs[msg.order_id] = job
                self._hold(msg.order_id, retry=True)

    def _resend(self, key: str) -> None:
        """The key's holder synced: every order of the key goes to it (those sent under an
        older epoch again)."""
        for order_id, job in list(self._jobs.items()):
            if (job.key or self.leases.key_for(job.account)) == key:
                job.refusals, job.not_before = 0, 0.0  # a new holder: no back-off
                self._dispatch(order_id, job)

    def _malformed(self, fmt: str, *args: object) -> None:
        self.stats.malformed += 1
        self._bad.warning(fmt, *args)

    # --- the timer ---------------------------------------------------------------------------

    async def tick(self) -> None:
        """Expire leases, grant claimed keys (their epochs made durable first), send what a
        synced holder can take, and hand back held orders past their deadline."""
        # What waits in the socket first: after a stall of this loop the pings that came
        # meanwhile are there, and a holder that pinged must not lose its key for our stall.
        queued: list[list[bytes]] = []
        await drain_queued(self.sock, queued, 4 * BATCH)
        self._take(queued)
        now = self._clock()
        for claim in self.leases.tick(now):
            self._claims[claim.key] = claim
        for key, claim in list(self._claims.items()):
            try:
                epoch = await self._epochs(key)
            except Exception as exc:  # the store away: the claim waits for the next tick
                self.stats.grant_errors += 1
                self._grant_log.warning("%s for %s: %s", key, claim.instance, exc)
                continue
            del self._claims[key]
            granted = self.leases.grant(claim, epoch, self._clock())
            if granted:
                log.info("ea desk: %s holds %s under epoch %d", claim.instance, key, granted)
        if self._retry or now >= self._next_scan:
            self._retry = False
            self._next_scan = now + SCAN_TICKS * self.cfg.ea_heartbeat_ms / 1000
            self._scan(now)
        self._gauges()

    def _scan(self, now: float) -> None:
        """Send the held orders a synced holder can take; hand back those past the hold
        deadline that no EXECUTE reached."""
        expired: list[str] = []
        deadline = now - self._hold_s
        for order_id in list(self._held):
            job = self._jobs.get(order_id)
            if job is None:
                del self._held[order_id]
            elif not job.at_terminal and job.seen <= deadline:
                expired.append(order_id)
            elif job.not_before <= now:
                self._dispatch(order_id, job)
        if expired:
            try:
                self.events.put_nowait(Expired(tuple(expired)))
            except asyncio.QueueFull:
                expired = []  # handed back at a later tick
            for order_id in expired:
                self.forget(order_id)
            self.stats.expired += len(expired)

    def _gauges(self) -> None:
        s = self.stats
        s.instances = self.leases.instances
        s.holders = self.leases.holders()
        s.epochs = self.leases.epochs()
        s.takeovers = self.leases.takeovers
        s.held = len(self._held)
        s.orders = len(self._jobs)

    # --- tasks -------------------------------------------------------------------------------

    async def reader(self) -> None:
        """Task: every message from the instances."""
        while True:
            self._take(await recv_batch(self.sock, BATCH))

    def _take(self, batch: list[list[bytes]]) -> None:
        for frames in batch:
            if len(frames) < 2:
                self._malformed("a message of %d frames", len(frames))
            else:
                self.handle(frames)

    async def timer(self) -> None:
        """Task: :meth:`tick` every heartbeat."""
        interval = self.cfg.ea_heartbeat_ms / 1000
        while True:
            await self.tick()
            await asyncio.sleep(interval)

    def close(self) -> None:
        self.sock.close(linger=0)

    def collect(self) -> dict[str, Any]:
        self._gauges()
        return asdict(self.stats)


__all__ = ["DeskEvent", "DeskStats", "EaDesk", "Expired", "UnknownSymbol"]
