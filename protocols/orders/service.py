"""The order service's decisions, without I/O: what the active backend knows per order and
what it does next (see ``nodes.orders.backend`` for the node that carries them out).

Rules:

* One :class:`OrderRecord` per order the service is working on: where its reports go (the
  client's routing id), when it last went to the executor or made progress there, the cancel
  request in flight and the replace waiting for the executor's decision. A record goes when its
  order is terminal, when it is neither open nor waiting on a request (swept each re-drive
  round), and all of them when the node steps down: memory follows the open orders, not every
  order ever seen.
* Open orders and each account's exposure are an :class:`OpenOrders`; new orders being stored
  are *reserved* in a second :class:`OpenOrders` (the same running sum), so concurrent orders
  of one account cannot pass the exposure check on the same headroom.
* A request is *in service* from its arrival to its answer; a client's retry of it (same key,
  same content) joins it and gets the same answer (:meth:`OrderService.join`).
* A replace is decided by the executor: the service keeps it pending (one per order) until the
  executor's replace entry is applied, the executor refuses it, it times out or the node steps
  down. Decided outcomes are kept for the last :data:`RECENT_REPLACES` replaces, so a client's
  retry gets the same answer, not a second decision.
* Admission: two bounds, each refusing a request at once with ``BUSY`` and a retry-after
  hint, 1..1,000 ms. *Count*: at most ``max_in_service`` requests are in service (new orders
  waiting for the store included; the memory bound); the hint is the time the backlog takes at
  the recent service rate (:func:`retry_after_ms`). *Time*: no request is admitted while the
  wait it would see is over ``max_queue_ms``, estimated from the age of the oldest new order
  in service and the backlog at the measured service time (:meth:`OrderService.waited`: why
  that estimate); the hint is that wait, or longer while many refused clients wait to resend
  (:func:`retry_after_wait_ms`). Cancels have a reserve above both (:data:`CANCEL_RESERVE`,
  :data:`CANCEL_WAIT_RESERVE`): under overload a client can still take risk off. A retry of
  a request in service joins it (checked first), never refused.
* Re-drives: open orders at the executor that made no progress for ``redrive_s`` (oldest
  first, at most :data:`REDRIVE_BATCH` a round) and cancels unanswered as long; an order whose
  executor log arrives with a gap is re-sent at most every :data:`GAP_RETRY_S`.

Times: ``now`` is a monotonic clock in seconds, ``now_ns`` the wall clock in nanoseconds, both
from the caller.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    EXEC_ACCEPT,
    EXEC_ROUTE,
    CancelOrder,
    CancelRequest,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderReject,
    OrderRequest,
    RejectReason,
    ReplaceOrder,
    ReplaceRefused,
    ReplaceRequest,
    idempotency,
)
from protocols.orders.record import OpenOrders, Order, amend_text, check_amend
from protocols.orders.risk import Limits, validate, validate_replace

REDRIVE_BATCH = 500  # unconfirmed orders re-sent per re-drive round
GAP_RETRY_S = 0.05  # an order whose log entries arrive with a gap is re-driven at most this often
RECENT_REPLACES = 1_000  # replace outcomes kept to answer a client's retry the same way
MAX_IN_SERVICE = 2_000  # requests in service at once by default ([orders] max_in_service)
# The longest wait (OrderService.waited) at which a request is still admitted, by default
# ([orders] max_queue_ms). A safety net, not a latency target: in the Redis drill (500
# orders/s on two saturated cores) waits over 10 ms are ordinary, and a 10 ms budget refused
# 9,000-12,000 of 26,000 requests, the back-off of each refused one putting the order
# round-trip p99 at 2.5-6.5 s (100 ms: 770 refusals, p99 0.7 s; no time bound: 0, p99
# 0.19 s). A deployment with CPU to spare that wants the 20 ms overload bound sets about 10
# (half the round trip: the wait runs from arrival to the store's answer, overshoots the
# budget by about a tenth at p99, test_overload_model; the executor leg takes the rest).
MAX_QUEUE_MS = 1000.0
CANCEL_RESERVE = 0.1  # cancels are refused only past the count bound plus this fraction of it
# ... and only past the wait budget plus this fraction of it. A whole budget more: under
# overload the time bound holds the wait *at* the budget, so the estimate hovers around it (a
# slow batch, a burst) and a cancel must not be refused for that; only when the backend itself
# is held up (the store away, a stall), which shows as a wait well over the budget.
CANCEL_WAIT_RESERVE = 1.0
RETRY_AFTER_MIN_MS = 1
RETRY_AFTER_MAX_MS = 1_000
RATE_WINDOW_S = 1.0  # the service rate is measured over about this long

Key = tuple[str, str]  # (account, client order id)
Reply = OrderAck | OrderReject
Decision = Order | ReplaceRefused  # the executor's answer to a replace: the record, or a refusal


@dataclass(eq=False, slots=True)
class PendingReplace:
    """A replace waiting for the executor's decision. ``waiters`` are called once with it."""

    order_id: str
    client_order_id: str
    request: ReplaceRequest  # what goes to the executor
    waiters: list[Callable[[Decision], None]] = field(default_factory=list)
    decided: Decision | None = None

    def _settle(self, outcome: Decision) -> None:
        if self.decided is None:
            self.decided = outcome
            for waiter in self.waiters:
                waiter(outcome)


@dataclass(frozen=True, slots=True)
class SendCancel:
    """Effect: send ``request`` to the executor, then answer the client ``ack``."""

    request: CancelRequest
    ack: OrderAck


@dataclass(frozen=True, slots=True)
class SendReplace:
    """Effect: send ``pending.request`` to the executor, then wait for its decision."""

    pending: PendingReplace


@dataclass(frozen=True, slots=True)
class AwaitReplace:
    """Effect: a retry of a replace sent already: wait for the same decision."""

    pending: PendingReplace


@dataclass(slots=True)
class OrderRecord:
    """What the service knows of one order besides its :class:`Order` (kept in ``open``)."""

    route: bytes = b""  # the client's routing id ("": use the order's client_id)
    sent: float = 0.0  # when it last went to the executor or made progress there
    cancel: CancelRequest | None = None  # the cancel request in flight
    replace: PendingReplace | None = None


@dataclass(slots=True)
class InService:
    """A request being served, who asked for it (retries included), since when."""

    request: OrderRequest
    identities: set[bytes]
    since: float


def retry_after_ms(backlog: int, rate_per_s: float) -> int:
    """The back-off hint of a BUSY: how long ``backlog`` requests take at ``rate_per_s``
    (the recent service rate), within RETRY_AFTER_MIN_MS..RETRY_AFTER_MAX_MS; the longest
    when nothing was served lately (the store is held up: there is no rate to go by)."""
    if rate_per_s <= 0:
        return RETRY_AFTER_MAX_MS
    wait_ms = math.ceil(backlog * 1000 / rate_per_s)
    return max(RETRY_AFTER_MIN_MS, min(RETRY_AFTER_MAX_MS, wait_ms))


def retry_after_wait_ms(wait_s: float, resending: float, rate_per_s: float) -> int:
    """The back-off hint of a BUSY for time in queue: the longer of the wait a request
    admitted now would see (``wait_s``) and the time the clients refused lately and waiting to
    resend (``resending`` of them) take to be admitted at ``rate_per_s`` (the recent service
    rate; 0: that term is left out), within RETRY_AFTER_MIN_MS..RETRY_AFTER_MAX_MS.

    The wait alone is about the budget under overload, and every client refused comes back
    that soon: in a model of the backend past its capacity (test_overload_model), clients
    resending every 10-15 ms spent the backend's CPU on BUSY replies until it served almost
    nothing else. The second term is Little's law: clients waiting
    out a BUSY number the refusals per second times their hint, and room opens at the service
    rate; so resends settle at about one per admitted request, whatever the overload. No
    rate at all (a cold start, the store held) leaves the wait, which grows with a hold:
    clients back off by about doubling."""
    wait_ms = wait_s * 1000
    if rate_per_s > 0:
        wait_ms = max(wait_ms, resending * 1000 / rate_per_s)
    return max(RETRY_AFTER_MIN_MS, min(RETRY_AFTER_MAX_MS, math.ceil(wait_ms)))


class ServiceRate:
    """Requests answered per second lately: counts in two windows of ``window_s`` (the
    current one and the one before it, weighted by how much of it is still inside the last
    ``window_s``), so the rate follows a change within a window in O(1) memory. The count may
    be any amount (:class:`ServiceTime` sums seconds with it)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._start = 0.0  # when the current window began
        self._current = 0.0
        self._previous = 0.0

    def _advance(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed >= 2 * self.window_s:
            self._start, self._current, self._previous = now, 0.0, 0.0
        elif elapsed >= self.window_s:
            self._start += self.window_s
            self._current, self._previous = 0.0, self._current

    def served(self, now: float, count: float = 1) -> None:
        self._advance(now)
        self._current += count

    def per_second(self, now: float) -> float:
        self._advance(now)
        inside = 1.0 - (now - self._start) / self.window_s  # of the previous window
        return (self._current + self._previous * inside) / self.window_s


class ServiceTime:
    """Seconds of service per new order lately, measured only while the service is saturated:
    each answer counts the time since the answer before it *when new orders waited all along
    in between* (an idle gap is no service time), over the same windows as
    :class:`ServiceRate`; 0.0 when there was no such answer lately (unknown).

    Why not the :class:`ServiceRate`: answers per second are the demand, not the capacity,
    whenever the backend is not saturated; the gaps between back-to-back answers are the
    capacity. A batch answered at once counts its whole time once, at its first
    answer, so the mean is the batch's time over its orders. One gap counts at most
    ``cap_s``: a batch held far longer (the store away) says nothing about the cost of an
    order, and left whole it would make every order look that slow until the windows pass,
    throttling admission after the store is back (the age of the oldest order covers a hold).
    """

    def __init__(self, cap_s: float, window_s: float = RATE_WINDOW_S) -> None:
        self.cap_s = cap_s
        self._seconds = ServiceRate(window_s)
        self._answers = ServiceRate(window_s)
        self._last: float | None = None  # the last answer, while new orders still waited

    def answered(self, now: float, still_waiting: bool) -> None:
        """A new order was answered at ``now``; ``still_waiting``: others still wait."""
        if self._last is not None:
            self._seconds.served(now, min(now - self._last, self.cap_s))
            self._answers.served(now)
        self._last = now if still_waiting else None

    def per_order(self, now: float) -> float:
        answers = self._answers.per_second(now)
        return self._seconds.per_second(now) / answers if answers > 0 else 0.0


def route_accepted(order: Order, *, epoch: int, now_ns: int) -> Order:
    """An ACCEPTED order (a NEW one is accepted first) moved on to ROUTED by the backend's
    own reports, as it is stored before it goes to the executor."""
    if order.state is OrderState.NEW:
        order = order.apply(order.status_report(OrderState.ACCEPTED, exec_id=EXEC_ACCEPT,
                                                epoch=epoch), epoch=epoch, now_ns=now_ns)
    return order.apply(order.status_report(OrderState.ROUTED, exec_id=EXEC_ROUTE, epoch=epoch),
                       epoch=epoch, now_ns=now_ns)


class OrderService:
    """The active backend's order state and decisions (sans-I/O)."""

    def __init__(self, limits: Limits, *, tag: str, redrive_s: float = 1.0,
                 max_in_service: int = MAX_IN_SERVICE,
                 max_queue_ms: float = MAX_QUEUE_MS) -> None:
        self.limits = limits
        self.redrive_s = redrive_s
        self.max_in_service = max_in_service
        self.max_queue_s = max_queue_ms / 1000
        self.rate = ServiceRate()
        self.service_time = ServiceTime(cap_s=self.max_queue_s)
        # The retry-after seconds handed out per second by the time bound: how many refused
        # clients are waiting to resend (Little's law; retry_after_wait_ms).
        self._resending = ServiceRate()
        self.open = OpenOrders()
        self._tag = tag
        self._ids = itertools.count(1)
        self._records: dict[str, OrderRecord] = {}
        self._reserved = OpenOrders()  # new orders being stored, by their order id
        self._in_service: dict[Key, InService] = {}
        # The new orders among them in arrival order (the placer's FIFO), answered ones
        # dropped from the head: the head is the oldest still waiting (:meth:`waited`).
        self._arrivals: deque[InService] = deque()
        self._new_in_service = 0
        self._replaced: OrderedDict[Key, Reply] = OrderedDict()

    # -- records ---------------------------------------------------------------------------

    def record(self, order_id: str) -> OrderRecord | None:
        return self._records.get(order_id)

    def _record(self, order_id: str) -> OrderRecord:
        record = self._records.get(order_id)
        if record is None:
            record = self._records[order_id] = OrderRecord()
        return record

    def __len__(self) -> int:
        """How many records are kept (open orders and orders with a request in flight)."""
        return len(self._records)

    def route_of(self, order: Order) -> bytes:
        """Where ``order``'s reports go: the client's latest routing id, else its client_id."""
        record = self._records.get(order.order_id)
        return record.route if record is not None and record.route else order.client_id.encode()

    def sent(self, order_id: str, now: float) -> None:
        """``order_id`` (or a request for it) went to the executor at ``now``."""
        self._record(order_id).sent = now

    def reload(self, orders: list[Order]) -> None:
        """Active from now on with these open orders (records of others are dropped)."""
        self.open = OpenOrders(orders)
        self._records = {i: r for i, r in self._records.items() if i in self.open}

    def step_down(self, message: str) -> None:
        """Passive from now on: forget the open orders and every record; pending replaces are
        refused with FENCED."""
        self.open.clear()
        records, self._records = self._records, {}
        for record in records.values():
            if record.replace is not None:
                record.replace._settle(ReplaceRefused(record.replace.order_id,
                                                      RejectReason.FENCED, message))

    # -- requests in service ---------------------------------------------------------------

    def join(self, req: OrderRequest, identity: bytes) -> bool:
        """True if ``req`` is a retry of a request in service: ``identity`` gets its answer.
        Thousands of retries of a held request must not become thousands of tasks."""
        joined = self._in_service.get((req.account, req.client_order_id))
        if joined is None or idempotency(joined.request, req) != "duplicate":
            return False
        joined.identities.add(identity)
        return True

    def begin(self, req: OrderRequest, identity: bytes, now: float) -> None:
        """``req`` from ``identity`` is in service from ``now``."""
        key = (req.account, req.client_order_id)
        if key in self._in_service:  # a conflicting request: served (and refused) on its own
            return
        held = self._in_service[key] = InService(req, {identity}, now)
        if isinstance(req, NewOrder):
            self._arrivals.append(held)
            self._new_in_service += 1

    def finish(self, req: OrderRequest, identity: bytes, now: float) -> set[bytes]:
        """``req`` is answered at ``now`` (it counts in the service rate): who to send the
        answer to."""
        self.rate.served(now)
        key = (req.account, req.client_order_id)
        joined = self._in_service.get(key)
        if joined is None or joined.request is not req:
            return {identity}
        del self._in_service[key]
        if isinstance(req, NewOrder):
            self._new_in_service -= 1
            self.service_time.answered(now, still_waiting=self._new_in_service > 0)
            self._oldest()
        return joined.identities

    def in_service(self) -> int:
        return len(self._in_service)

    def _waiting(self, held: InService) -> bool:
        request = held.request
        return self._in_service.get((request.account, request.client_order_id)) is held

    def _oldest(self) -> InService | None:
        """The oldest new order in service (None: none); answered ones leave the head of
        ``_arrivals`` here, and the rest once they are more than half of it (orders answered
        out of arrival order), so it stays within twice what is in service."""
        arrivals = self._arrivals
        while arrivals and not self._waiting(arrivals[0]):
            arrivals.popleft()
        if len(arrivals) > 2 * len(self._in_service):
            arrivals = self._arrivals = deque(h for h in arrivals if self._waiting(h))
        return arrivals[0] if arrivals else None

    def waited(self, now: float) -> float:
        """The wait a request admitted at ``now`` would see (0.0: nothing waits): the longer
        of how long the oldest new order in service has waited, and the new orders in service
        times the recent :class:`ServiceTime` per order (when one is known).

        Why these two. The age of the oldest is the wait itself, measured (CoDel's time in
        queue), with no model and no rate: new orders wait in one FIFO, the placer's queue
        and then the store, so the oldest is the head of the queue a newcomer joins. At a
        cold start or right after a takeover an empty queue has waited 0 and nothing is
        refused; while the store is held nothing is answered, the age grows and the bound
        refuses. But the age lags: it says nothing of what was admitted behind the head, and
        a flood admitted while the head was young (clients refused a moment ago all coming
        back at once) made the next batch take many times the budget in a model of the
        backend (test_overload_model). The backlog at the measured service time sees that
        flood as it is admitted. It is not backlog / :class:`ServiceRate`: answers per
        second are the demand at light load, so a burst after a quiet second (50 orders after
        20/s) would read as 2.5 s of wait; and with nothing answered lately (cold start,
        store held) there is no rate at all. Without a service time yet, the age and the
        count bound decide alone. Only new orders count: a replace's time in service includes
        the executor's decision (up to the amend timeout), a cancel's the account's lock;
        that is no queue."""
        oldest = self._oldest()
        if oldest is None:
            return 0.0
        backlog_s = self._new_in_service * self.service_time.per_order(now)
        return max(now - oldest.since, backlog_s)

    def busy(self, req: OrderRequest, now: float) -> OrderReject | None:
        """BUSY if ``req`` (not a retry that joins one in service: ask :meth:`join` first)
        finds the service full (the count bound) or its queue too slow (the time bound:
        :meth:`waited` over ``max_queue_ms``), else None (admitted: :meth:`begin` it).
        Cancels are refused only past both bounds plus their reserves."""
        load = len(self._in_service)
        bound, budget = self.max_in_service, self.max_queue_s
        if isinstance(req, CancelOrder):
            bound += math.ceil(bound * CANCEL_RESERVE)
            budget *= 1 + CANCEL_WAIT_RESERVE
        if load >= bound:
            hint = retry_after_ms(load, self.rate.per_second(now))
            why = f"{load} requests in service"
        else:
            waited = self.waited(now)
            if waited <= budget:
                return None
            hint = retry_after_wait_ms(waited, self._resending.per_second(now),
                                       self.rate.per_second(now))
            self._resending.served(now, hint / 1000)
            why = f"new orders waiting {waited * 1000:.1f} ms"
        return OrderReject(req.client_order_id, RejectReason.BUSY, f"{why}, retry in {hint} ms",
                           retry_after_ms=hint)

    def pending_notices(self, now: float, after_s: float) -> dict[bytes, int]:
        """Per client, how many of its requests have been in service ``after_s`` or more."""
        older = now - after_s
        waiting: Counter[bytes] = Counter()
        for held in self._in_service.values():
            if held.since <= older:
                waiting.update(held.identities)
        return dict(waiting)

    # -- new orders ------------------------------------------------------------------------

    def exposure(self, account: str, excluding: str = "") -> float:
        """The account's exposure: what its open orders still have to fill at their price
        (a MARKET order counts 0: it fills at once or is rejected), and the orders being
        stored."""
        return self.open.exposure(account, excluding) + self._reserved.exposure(account)

    def reserved(self) -> int:
        """How many new orders are reserved (being stored)."""
        return len(self._reserved)

    def reserve(self, req: NewOrder, quote: tuple[float, float] | None, *, epoch: int,
                now_ns: int, client_id: str) -> Order | RejectReason:
        """Check a new order; if it passes, the ROUTED record to store, counted in its
        account's exposure until :meth:`placed` or :meth:`release` (briefly twice after
        :meth:`placed`: the safe side)."""
        reason = validate(req, limits=self.limits, last_bid_ask=quote,
                          exposure=self.exposure(req.account))
        if reason is not None:
            return reason
        order = Order.from_new(f"O{epoch}.{self._tag}.{next(self._ids)}", req, epoch=epoch,
                               now_ns=now_ns, client_id=client_id)
        order = route_accepted(order, epoch=epoch, now_ns=now_ns)
        self._reserved.put(order)
        return order

    def release(self, order_id: str) -> None:
        """The reservation of a new order ends (stored and placed, or failed)."""
        self._reserved.remove(order_id)

    def placed(self, order: Order, identity: bytes) -> None:
        """``order`` is stored: open, its reports go to ``identity``."""
        self._record(order.order_id).route = identity
        self.open.put(order)

    def duplicate(self, existing: Order, req: NewOrder, identity: bytes, epoch: int) -> Reply:
        """The answer to a new order whose key names the stored ``existing``."""
        if idempotency(existing.order, req) == "conflict":
            return OrderReject(req.client_order_id, RejectReason.DUPLICATE_DIFFERENT,
                               f"client order id already names order {existing.order_id}")
        if not existing.terminal:
            self._record(existing.order_id).route = identity  # reports go where it is now
            if existing.order_id not in self.open and existing.state is OrderState.ROUTED:
                # Stored by a write whose answer was lost (the store failed over, or the
                # request gave up at the deadline after the write): adopt it, the re-drive
                # routes it.
                self.open.put(existing)
        state = existing.state if existing.state is not OrderState.NEW else OrderState.ACCEPTED
        return OrderAck(req.client_order_id, existing.order_id, state, epoch)

    # -- cancels ---------------------------------------------------------------------------

    def cancel(self, req: CancelOrder, target: Order | None, *, epoch: int, now_ns: int
               ) -> Reply | SendCancel:
        """The answer to a cancel of ``target`` (as the store has it), or the request to send
        to the executor and the ack that follows it: "cancel requested", with the cancel's own
        client order id, the target's order id and the target's state *before* the cancel
        (the outcome, CANCELLED or the fill that won, comes as a report). Cancelling an order
        cancelled already is acknowledged again (state CANCELLED): a retried cancel is
        harmless."""
        if target is not None and target.state is OrderState.CANCELLED:
            return OrderAck(req.client_order_id, target.order_id, target.state, epoch)
        reason = check_amend(target, req)
        if reason is not None or target is None:
            why = reason or RejectReason.UNKNOWN_ORDER
            return OrderReject(req.client_order_id, why, why.name.lower())
        request = CancelRequest(target.order_id, epoch, now_ns)
        self._record(target.order_id).cancel = request
        return SendCancel(request, OrderAck(req.client_order_id, target.order_id, target.state,
                                            epoch))

    # -- replaces --------------------------------------------------------------------------

    def replaced(self, req: ReplaceOrder) -> Reply | None:
        """The answer given already to this replace (a client's retry), if any."""
        return self._replaced.get((req.account, req.client_order_id))

    def replace_target(self, req: ReplaceOrder, target: Order | None) -> Order | OrderReject:
        """The order a replace acts on (``target`` as the store has it, or as this backend
        has seen it since), or why the replace cannot act on it. The market is consulted
        only after this passes."""
        if target is not None:
            target = self.open.get(target.order_id) or target
        reason = check_amend(target, req)
        if reason is not None or target is None:
            why = reason or RejectReason.UNKNOWN_ORDER
            return OrderReject(req.client_order_id, why, amend_text(why))
        return target

    def replace(self, req: ReplaceOrder, target: Order | None,
                quote: tuple[float, float] | None, *, epoch: int, now_ns: int,
                identity: bytes) -> OrderReject | SendReplace | AwaitReplace:
        """Check a replace of ``target`` (see :meth:`replace_target`) and its new terms
        against ``quote``; if it passes, send it to the executor as a new pending replace, or
        (a retry of one pending already) wait for that one."""
        checked = self.replace_target(req, target)
        if isinstance(checked, OrderReject):
            return checked
        target = checked
        reason = validate_replace(target, req, limits=self.limits, last_bid_ask=quote,
                                  exposure=self.exposure(req.account, target.order_id))
        if reason is not None:
            return OrderReject(req.client_order_id, reason, reason.name.lower())
        record = self._record(target.order_id)
        pending = record.replace
        if pending is not None:
            if pending.client_order_id == req.client_order_id:
                return AwaitReplace(pending)  # the client's retry while the executor decides
            return OrderReject(req.client_order_id, RejectReason.NOT_CANCELLABLE,
                               "another replace of this order is being decided")
        request = ReplaceRequest(target.order_id, req.client_order_id, req.quantity, req.price,
                                 epoch, now_ns)
        record.replace = PendingReplace(target.order_id, req.client_order_id, request)
        record.route = identity
        return SendReplace(record.replace)

    def abandon(self, pending: PendingReplace) -> None:
        """``pending`` gets no decision (not sent, or none in time): forget it."""
        record = self._records.get(pending.order_id)
        if record is not None and record.replace is pending:
            record.replace = None

    def refused(self, refusal: ReplaceRefused) -> None:
        """The executor refused the replace pending for ``refusal.order_id``."""
        self._settle(refusal.order_id, refusal)

    def _settle(self, order_id: str, outcome: Decision) -> None:
        record = self._records.get(order_id)
        if record is not None and record.replace is not None:
            pending, record.replace = record.replace, None
            pending._settle(outcome)

    def replace_answer(self, req: ReplaceOrder, outcome: Decision | None,
                       timeout_s: float) -> Reply:
        """The answer to ``req`` after the executor's ``outcome`` (None: none came in
        ``timeout_s``: EXECUTOR_UNAVAILABLE, retryable): an ack with the replace's own client
        order id, the order id, and the state and epoch of the record as stored with the
        replace applied (the state a replace leaves unchanged); or a reject with the
        executor's reason. Final answers are remembered."""
        if outcome is None:
            return OrderReject(req.client_order_id, RejectReason.EXECUTOR_UNAVAILABLE,
                               f"no decision from the executor in {timeout_s:g} s")
        reply: Reply
        if isinstance(outcome, ReplaceRefused):
            reply = OrderReject(req.client_order_id, outcome.reason, outcome.message)
        else:
            reply = OrderAck(req.client_order_id, outcome.order_id, outcome.state,
                             outcome.epoch)
        if not (isinstance(reply, OrderReject) and reply.retryable):
            self._replaced[(req.account, req.client_order_id)] = reply
            if len(self._replaced) > RECENT_REPLACES:
                self._replaced.popitem(last=False)
        return reply

    # -- executor reports ------------------------------------------------------------------

    def gap_retry(self, order_id: str, now: float) -> bool:
        """A report of ``order_id`` arrived beyond a gap: whether to re-send the order now."""
        record = self._records.get(order_id)
        return record is None or now - record.sent >= GAP_RETRY_S

    def settled(self, order: Order) -> None:
        """A report of ``order`` was a replay of what its record has: if it is terminal, its
        record goes (e.g. a cancel answered with the order's final entry)."""
        if order.terminal and order.order_id not in self.open:
            self._records.pop(order.order_id, None)

    def applied(self, report: ExecutionReport, updated: Order, now: float) -> bytes:
        """``report`` is applied and stored as ``updated``: where to send the report."""
        if report.is_replace:
            self._settle(updated.order_id, updated)
        route = self.route_of(updated)
        if updated.terminal:
            self.open.remove(updated.order_id)
            record = self._records.get(updated.order_id)
            if record is not None and record.replace is None:  # else: the executor refuses it
                del self._records[updated.order_id]
            elif record is not None:
                record.cancel = None
        else:
            self.open.put(updated)
            # Progress is confirmation: an order the executor is filling slice by slice is
            # not re-driven. Re-drives are for orders the executor lost; re-sending working
            # ones made it replay them (10,000-20,000 replays a Redis drill run).
            self._record(updated.order_id).sent = now
        return route

    # -- re-drives -------------------------------------------------------------------------

    def redrive(self, now: float, *, force: bool = False
                ) -> tuple[list[Order], list[CancelRequest]]:
        """The open orders to send to the executor again (oldest first, at most
        REDRIVE_BATCH, each at most once per ``redrive_s``) and the cancels to send again.
        Records of orders no longer open and waiting on nothing go."""
        for order_id in [i for i, r in self._records.items()
                         if i not in self.open and r.cancel is None and r.replace is None]:
            del self._records[order_id]
        due = [o for o in self.open.values()
               if o.state.at_executor and (force or now - self._last_sent(o.order_id)
                                           >= self.redrive_s)]
        due.sort(key=lambda o: o.updated_ns)
        cancels = [r.cancel for r in itertools.islice(
            (r for r in self._records.values() if r.cancel is not None), REDRIVE_BATCH)
            if now - r.sent >= self.redrive_s]
        return due[:REDRIVE_BATCH], [c for c in cancels if c is not None]

    def _last_sent(self, order_id: str) -> float:
        record = self._records.get(order_id)
        return 0.0 if record is None else record.sent


__all__ = [
    "CANCEL_RESERVE",
    "CANCEL_WAIT_RESERVE",
    "GAP_RETRY_S",
    "MAX_IN_SERVICE",
    "MAX_QUEUE_MS",
    "RECENT_REPLACES",
    "REDRIVE_BATCH",
    "RETRY_AFTER_MAX_MS",
    "RETRY_AFTER_MIN_MS",
    "AwaitReplace",
    "InService",
    "OrderRecord",
    "OrderService",
    "PendingReplace",
    "SendCancel",
    "SendReplace",
    "ServiceRate",
    "ServiceTime",
    "retry_after_ms",
    "retry_after_wait_ms",
    "route_accepted",
]
