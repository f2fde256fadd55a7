"""The order service's decisions, driven directly: joining retries, exposure reservations,
cancels, replaces and their remembered outcomes, re-drive selection, gap retries, and that
every record and lock-free map is bounded (records go with their orders)."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

import pytest

from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelOrder,
    CancelRequest,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderReject,
    OrderType,
    RejectReason,
    ReplaceOrder,
    ReplaceRefused,
    ReplaceRequest,
    Side,
)
from protocols.orders.record import Order
from protocols.orders.risk import Limits
from protocols.orders.service import (
    CANCEL_RESERVE,
    CANCEL_WAIT_RESERVE,
    GAP_RETRY_S,
    RECENT_REPLACES,
    REDRIVE_BATCH,
    RETRY_AFTER_MAX_MS,
    RETRY_AFTER_MIN_MS,
    AwaitReplace,
    OrderService,
    PendingReplace,
    SendCancel,
    SendReplace,
    ServiceRate,
    ServiceTime,
    retry_after_ms,
    retry_after_wait_ms,
    route_accepted,
)

LIMITS = Limits(frozenset({"EURUSD"}), max_quantity=100.0, price_band=0.05,
                max_exposure_per_account=1_000.0)
QUOTE = (1.0999, 1.1001)
NOW_NS = 1_732_450_000_000_000_000


def new(coid: str = "c1", **changes: Any) -> NewOrder:
    base: dict[str, Any] = dict(account="acc", client_order_id=coid, symbol="EURUSD",
                                side=Side.BUY, type=OrderType.LIMIT, quantity=1.0, price=1.1,
                                sent_ns=NOW_NS)
    base.update(changes)
    return NewOrder(**base)


def service() -> OrderService:
    return OrderService(LIMITS, tag="t", redrive_s=1.0)


def placed(svc: OrderService, coid: str = "c1", identity: bytes = b"cl", **changes: Any
           ) -> Order:
    order = svc.reserve(new(coid, **changes), QUOTE, epoch=1, now_ns=NOW_NS, client_id="cl")
    assert isinstance(order, Order)
    svc.placed(order, identity)
    svc.release(order.order_id)
    return order


def fill(order: Order, quantity: float, seq: int) -> ExecutionReport:
    return order.fill_report(quantity, 1.1, seq=seq, exec_id=f"{order.order_id}:{seq}")


# -- requests in service ----------------------------------------------------------------------

JOIN_CASES = [
    # (first request, retry, joins)
    (new(), new(), True),
    (new(), new(sent_ns=NOW_NS + 5), True),  # a re-stamped retry is the same order
    (new(), new(quantity=2.0), False),  # a conflict is served (and refused) on its own
    (new(), new("c2"), False),
    (CancelOrder("acc", "x1", "c1"), CancelOrder("acc", "x1", "c1"), True),
]


@pytest.mark.parametrize(("first", "retry", "joins"), JOIN_CASES)
def test_a_retry_joins_the_request_in_service(first: Any, retry: Any, joins: bool) -> None:
    svc = service()
    assert not svc.join(first, b"a")
    svc.begin(first, b"a", 0.0)
    assert svc.join(retry, b"b") is joins
    assert svc.finish(first, b"a", 1.0) == ({b"a", b"b"} if joins else {b"a"})
    assert svc.in_service() == 0


def test_pending_notices_count_only_requests_in_service_long_enough() -> None:
    svc = service()
    svc.begin(new("c1"), b"a", 0.0)
    svc.begin(new("c2"), b"a", 0.015)
    svc.begin(new("c3"), b"b", 0.0)
    assert svc.join(new("c3"), b"a")
    assert svc.pending_notices(0.02, 0.02) == {b"a": 2, b"b": 1}
    assert svc.pending_notices(0.035, 0.02) == {b"a": 3, b"b": 1}



# -- admission ----------------------------------------------------------------------------------

RETRY_AFTER_CASES = [
    # (backlog, service rate per second, hint in ms)
    (2_000, 4_000.0, 500),  # the time the backlog takes at the recent rate
    (2_000, 20_000.0, 100),
    (10, 100_000.0, 1),  # never 0 (0 means "no hint")
    (1, 3_000.0, 1),  # rounded up
    (2_000, 1_000.0, 1_000),  # capped: no client is told to stay away for long
    (2_000, 100.0, 1_000),
    (2_000, 0.0, 1_000),  # nothing served lately (the store is held up): the longest
]


@pytest.mark.parametrize(("backlog", "rate", "hint"), RETRY_AFTER_CASES)
def test_retry_after_is_the_backlog_at_the_recent_rate_bounded(backlog: int, rate: float,
                                                                hint: int) -> None:
    assert retry_after_ms(backlog, rate) == hint
    assert RETRY_AFTER_MIN_MS <= hint <= RETRY_AFTER_MAX_MS


RATE_CASES = [
    # (answers as (now, count), asked at, per second)
    ([], 10.0, 0.0),
    ([(10.0, 100)], 10.5, 100.0),  # the current window (1 s) so far
    ([(10.0, 100), (11.2, 50)], 11.2, 50.0 + 100.0 * 0.8),  # the previous one, weighted
    ([(10.0, 100), (11.2, 50)], 11.99, 50.0 + 100.0 * 0.01),
    ([(10.0, 100), (11.2, 50)], 12.5, 50.0 * 0.5),  # the windows move on
    ([(10.0, 100)], 12.0, 0.0),  # two windows without an answer: nothing left
    ([(10.0, 100)], 50.0, 0.0),
]


@pytest.mark.parametrize(("answers", "at", "rate"), RATE_CASES)
def test_the_service_rate_counts_the_last_window(answers: list[tuple[float, int]], at: float,
                                                 rate: float) -> None:
    meter = ServiceRate(window_s=1.0)
    for now, count in answers:
        meter.served(now, count)
    assert meter.per_second(at) == pytest.approx(rate)


NOW = 10.0
BUDGET_MS = 10.0  # the services below: max_queue_ms


def loaded(bound: int = 4, *, news: int = 0, age_ms: float = 0.0, others: int = 0,
           per_order_ms: float = 0.0, rate: float = 0.0) -> OrderService:
    """A service of count bound ``bound`` and time budget BUDGET_MS with, in service at NOW,
    ``news`` new orders, the oldest of them ``age_ms`` old, and ``others`` replaces held for
    a second (waiting for the executor); having measured ``per_order_ms`` of service per new
    order (0: no measure yet) and answered ``rate`` a second."""
    svc = OrderService(LIMITS, tag="t", max_in_service=bound, max_queue_ms=BUDGET_MS)
    if rate:
        svc.rate.served(NOW - 0.5, int(rate))
    if per_order_ms:  # two answers back to back, a first batch and then a second one
        svc.service_time.answered(NOW - 0.2, still_waiting=True)
        svc.service_time.answered(NOW - 0.2 + per_order_ms / 1000, still_waiting=False)
    for i in range(others):
        svc.begin(ReplaceOrder("acc", f"r{i}", "h0", 2.0, 1.1), b"a", NOW - 1.0)
    for i in range(news):
        svc.begin(new(f"h{i}"), b"a", NOW - age_ms / 1000 if i == 0 else NOW)
    return svc


CANCEL = CancelOrder("acc", "x", "h0")
REPLACE = ReplaceOrder("acc", "r", "h0", 2.0, 1.1)
CANCEL_COUNT_BOUND = 4 + math.ceil(4 * CANCEL_RESERVE)
CANCEL_BUDGET_MS = BUDGET_MS * (1 + CANCEL_WAIT_RESERVE)

ADMISSION_CASES = [
    # (what is in service, request, refused by: None (admitted), "count" or "time")
    (dict(), new("n"), None),  # a cold start: nothing in service, no rate, no service time
    (dict(news=3, age_ms=5.0), new("n"), None),  # under both bounds
    (dict(news=3, age_ms=5.0), REPLACE, None),
    (dict(news=3, age_ms=5.0), CANCEL, None),
    # the count bound (the memory bound)
    (dict(news=4), new("n"), "count"),
    (dict(news=4), REPLACE, "count"),
    (dict(news=2, others=2), new("n"), "count"),  # every request in service counts
    (dict(news=4), CANCEL, None),  # cancels have a reserve above the bound
    (dict(news=CANCEL_COUNT_BOUND, bound=4), CANCEL, "count"),
    # the time bound, from the age of the oldest new order
    (dict(news=1, age_ms=BUDGET_MS), new("n"), None),  # at the budget: still admitted
    (dict(news=1, age_ms=BUDGET_MS + 1), new("n"), "time"),
    (dict(news=1, age_ms=BUDGET_MS + 1), REPLACE, "time"),
    (dict(news=1, age_ms=BUDGET_MS + 1), CANCEL, None),  # the cancel's reserve
    (dict(news=1, age_ms=CANCEL_BUDGET_MS), CANCEL, None),
    (dict(news=1, age_ms=CANCEL_BUDGET_MS + 1), CANCEL, "time"),
    (dict(news=1, age_ms=60_000.0), new("n"), "time"),  # the store held: the age decides
    # the time bound, from the backlog at the measured service time
    (dict(news=3, per_order_ms=3.0), new("n"), None),  # 9 ms
    (dict(news=3, per_order_ms=4.0), new("n"), "time"),  # 12 ms, though none waited yet
    (dict(news=3, per_order_ms=4.0), CANCEL, None),
    (dict(news=3, per_order_ms=7.0), CANCEL, "time"),  # 21 ms
    # no service time, no rate (a cold start, a takeover): the count bound and the age alone,
    # never "everything" for want of a rate
    (dict(news=3, bound=100), new("n"), None),
    (dict(news=3, bound=100, rate=1.0), new("n"), None),  # a tiny rate is no reason either
    # only new orders make the wait: replaces held by the executor for a second are no queue
    (dict(others=2), new("n"), None),
]


@pytest.mark.parametrize(("load", "req", "refused"), ADMISSION_CASES)
def test_admission(load: dict[str, Any], req: Any, refused: str | None) -> None:
    svc = loaded(**load)
    before = svc.in_service()
    reply = svc.busy(req, NOW)
    assert svc.in_service() == before  # asking admits nothing: the node begin()s it
    if refused is None:
        assert reply is None
        return
    assert isinstance(reply, OrderReject) and reply.reason is RejectReason.BUSY
    assert reply.retryable and reply.client_order_id == req.client_order_id
    assert RETRY_AFTER_MIN_MS <= reply.retry_after_ms <= RETRY_AFTER_MAX_MS
    assert ("requests in service" if refused == "count" else "waiting") in reply.message


def test_the_count_hint_follows_the_service_rate() -> None:
    assert loaded(news=4).busy(new("n"), NOW) == OrderReject(
        "n", RejectReason.BUSY, "4 requests in service, retry in 1000 ms",
        retry_after_ms=RETRY_AFTER_MAX_MS)  # nothing served yet: the longest
    reply = loaded(news=4, rate=2_000.0).busy(new("n"), NOW)  # 4 at 2,000 a second: 2 ms
    assert reply is not None and reply.retry_after_ms == 2


RETRY_AFTER_WAIT_CASES = [
    # (the wait, clients refused and waiting to resend, service rate per second, hint in ms)
    (0.012, 0.0, 0.0, 12),  # no rate (cold start, store held): the wait itself
    (0.0101, 0.0, 1_000.0, 11),  # rounded up
    (0.0, 0.0, 0.0, 1),  # never 0 (0 means "no hint")
    (5.0, 0.0, 0.0, 1_000),  # capped
    (0.012, 5.0, 1_000.0, 12),  # few waiting to resend: the wait
    (0.012, 50.0, 1_000.0, 50),  # many: the time they take to be admitted (Little's law)
    (0.012, 5_000.0, 1_000.0, 1_000),
    (0.012, 50.0, 0.0, 12),  # no rate to go by: the wait
]


@pytest.mark.parametrize(("wait", "resending", "rate", "hint"), RETRY_AFTER_WAIT_CASES)
def test_the_time_hint_is_the_wait_or_the_resends_ahead(wait: float, resending: float,
                                                        rate: float, hint: int) -> None:
    assert retry_after_wait_ms(wait, resending, rate) == hint


def test_the_time_hint_grows_with_the_clients_refused_and_waiting_to_resend() -> None:
    """Each BUSY of the time bound adds its hint to the clients waiting out a BUSY: once
    more of them wait than the service admits in the wait (12 ms at 1,000/s: 12), the hint
    is the time they take to be admitted, so resends come at about the service rate."""
    svc = loaded(news=1, age_ms=11.5, rate=1_000.0)
    hints = [r.retry_after_ms for i in range(3_000)
             if (r := svc.busy(new(f"n{i}"), NOW)) is not None]
    assert len(hints) == 3_000
    assert hints[0] == hints[999] == 12  # the wait: fewer than 12 wait to resend
    assert hints == sorted(hints) and hints[-1] > 4 * hints[0]


def test_a_retry_of_a_request_in_service_joins_it_even_over_both_bounds() -> None:
    """The node asks join first: a retry is never BUSY, and does not add to the load."""
    svc = loaded(news=4, age_ms=1_000.0)
    assert svc.busy(new("n"), NOW) is not None
    assert svc.join(new("h0"), b"b") and svc.join(new("h1"), b"b")
    assert svc.in_service() == 4


def test_the_wait_is_the_oldest_new_order_still_in_service() -> None:
    svc = service()
    first, second, third = new("c1"), new("c2"), new("c3")
    svc.begin(first, b"a", 1.000)
    svc.begin(CancelOrder("acc", "x", "c1"), b"a", 0.5)  # not a new order: not the queue
    svc.begin(second, b"a", 1.004)
    svc.begin(third, b"a", 1.006)
    assert svc.waited(1.010) == pytest.approx(0.010)
    svc.finish(second, b"a", 1.011)  # answered out of order: the oldest is still first
    assert svc.waited(1.012) == pytest.approx(0.012)
    svc.finish(first, b"a", 1.013)
    assert svc.waited(1.013) == pytest.approx(0.007)
    svc.finish(third, b"a", 1.014)
    assert svc.waited(1.015) == 0.0


def test_new_orders_answered_out_of_order_are_not_kept() -> None:
    """The arrival queue stays within twice what is in service even when the oldest never
    leaves (every later one answered before it)."""
    svc = service()
    svc.begin(new("stuck"), b"a", 0.0)
    for i in range(1_000):
        req = new(f"c{i}")
        svc.begin(req, b"a", float(i))
        svc.finish(req, b"a", float(i))
        assert len(svc._arrivals) <= 2 * svc.in_service()
    assert svc.waited(2_000.0) == 2_000.0


SERVICE_TIME_CASES = [
    # (answers as (now, new orders still waiting after it), asked at, seconds per order)
    ([], 1.0, 0.0),  # nothing measured: unknown
    ([(1.0, False)], 1.0, 0.0),  # a batch of one at light load: no gap measured
    ([(1.0, False), (1.5, False)], 1.5, 0.0),  # the gap between them was idle
    ([(1.0, True), (1.004, True), (1.004, True), (1.004, False)], 1.004, 0.004 / 3),
    ([(1.0, True), (1.004, True), (1.012, False)], 1.012, 0.006),
    ([(1.0, True), (3.0, False)], 3.0, 0.010),  # a held batch counts the cap, not 2 s
    ([(1.0, True), (1.004, False)], 4.0, 0.0),  # two windows later: unknown again
]


@pytest.mark.parametrize(("answers", "at", "per_order"), SERVICE_TIME_CASES)
def test_the_service_time_counts_only_back_to_back_answers(
        answers: list[tuple[float, bool]], at: float, per_order: float) -> None:
    meter = ServiceTime(cap_s=0.010, window_s=1.0)
    for now, waiting in answers:
        meter.answered(now, still_waiting=waiting)
    assert meter.per_order(at) == pytest.approx(per_order)


def test_finish_measures_the_service_time_of_new_orders() -> None:
    svc = service()
    batch = [new(f"c{i}") for i in range(4)]
    for req in batch:
        svc.begin(req, b"a", 1.0)
    svc.finish(batch[0], b"a", 1.002)  # a first batch of one; three still wait
    for req in batch[1:]:
        svc.finish(req, b"a", 1.008)  # then the next batch, of three, took 6 ms
    assert svc.service_time.per_order(1.008) == pytest.approx(0.002)


def test_overload_model() -> None:
    """The admission bounds against a model of the backend: one CPU that serves new orders
    in FIFO batches (a batch takes a store round trip plus a cost per order) and spends 5 %
    of an order's cost on each BUSY, and Poisson clients that resend a refused order after
    its hint (x 1 to 1.5) until their 5 s deadline. Past capacity the admitted orders' wait
    stays near the budget, resends stay within a few per admitted order (no storm) and the
    backend keeps serving; at half of it hardly anything is refused (a burst of the random
    arrivals now and then). At 4 x the hint's 1 s cap lets the clients refused pile up and
    resend faster than they can be served, and their BUSY replies cost the wait some: still
    bounded, where the count bound alone queues for over a second."""
    capacity = 1_600.0
    under = _model(0.5 * capacity, capacity)
    assert under.refusals_per_s <= 0.01 * 0.5 * capacity and under.wait_p99_ms < BUDGET_MS
    for factor in (1.5, 2.0):
        over = _model(factor * capacity, capacity)
        assert over.wait_p99_ms <= 1.25 * BUDGET_MS, (factor, over)
        assert over.served_per_s >= 0.75 * capacity, (factor, over)
        assert over.refusals_per_s <= 3 * capacity, (factor, over)
    assert _model(4.0 * capacity, capacity).wait_p99_ms <= 4 * BUDGET_MS
    assert _model(2.0 * capacity, capacity, budget_ms=1e9).wait_p99_ms > 1_000


@dataclass
class Model:
    refusals: int
    refusals_per_s: float
    served_per_s: float
    wait_p99_ms: float


def _model(rate: float, capacity: float, *, budget_ms: float = BUDGET_MS,
           seconds: float = 2.0, store_s: float = 0.0005, busy_cost: float = 0.05) -> Model:
    """``rate`` new orders a second for ``seconds`` against a backend of ``capacity`` (orders
    a second of CPU besides the store round trip ``store_s`` per batch); a BUSY costs
    ``busy_cost`` of an order. Virtual time: no clock, no sleep."""
    rnd = random.Random(7)
    svc = OrderService(LIMITS, tag="t", max_queue_ms=budget_ms)
    per_order = 1 / capacity
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    t = 0.0
    while (t := t + rnd.expovariate(rate)) < seconds:
        heapq.heappush(events, (t, next(seq), "arrive", (new(f"c{next(seq)}"), t)))
    queue: list[tuple[NewOrder, float]] = []
    waits: list[float] = []
    refusals, debt, placing, served = 0, 0.0, False, 0
    while events:
        now, _, kind, what = heapq.heappop(events)
        if kind == "arrive":
            req, first_sent = what
            reply = svc.busy(req, now)
            if reply is not None:
                refusals += 1
                debt += busy_cost * per_order
                again = now + reply.retry_after_ms / 1000 * (1 + 0.5 * rnd.random())
                if again < first_sent + 5.0:
                    heapq.heappush(events, (again, next(seq), "arrive", what))
                continue
            svc.begin(req, b"c", now)
            queue.append((req, now))
            if not placing:
                placing = True
                heapq.heappush(events, (now, next(seq), "place", None))
        elif kind == "place":
            batch, queue = queue[:256], queue[256:]
            took, debt = store_s + per_order * len(batch) + debt, 0.0
            heapq.heappush(events, (now + took, next(seq), "done", batch))
        else:
            for req, admitted in what:
                svc.finish(req, b"c", now)
                waits.append(now - admitted)
                served += 1 if now <= seconds else 0
            if queue:
                heapq.heappush(events, (now, next(seq), "place", None))
            else:
                placing = False
    waits.sort()
    return Model(refusals, refusals / seconds, served / seconds,
                 1000 * waits[int(0.99 * len(waits))])


# -- new orders and exposure ------------------------------------------------------------------

RESERVE_CASES = [
    # (order, reserved before, result)
    (new(), 0, OrderState.ROUTED),
    (new(symbol="GBPUSD"), 0, RejectReason.UNKNOWN_SYMBOL),
    (new(quantity=900.0), 0, RejectReason.QUANTITY_LIMIT),
    (new(quantity=90.0), 10, RejectReason.EXPOSURE_LIMIT),  # 10 x 99 reserved already
    (new(quantity=90.0), 9, OrderState.ROUTED),
    (new(type=OrderType.MARKET, price=None), 0, OrderState.ROUTED),
]


@pytest.mark.parametrize(("req", "before", "result"), RESERVE_CASES)
def test_reserve(req: NewOrder, before: int, result: Any) -> None:
    svc = service()
    for i in range(before):
        assert isinstance(svc.reserve(new(f"r{i}", quantity=90.0), QUOTE, epoch=1,
                                      now_ns=NOW_NS, client_id=""), Order)
    got = svc.reserve(req, QUOTE, epoch=1, now_ns=NOW_NS, client_id="cl")
    if isinstance(result, RejectReason):
        assert got is result
    else:
        assert isinstance(got, Order) and got.state is result and got.client_id == "cl"


def test_reservations_are_one_running_sum_released_to_exactly_zero() -> None:
    svc = service()
    orders = [svc.reserve(new(f"c{i}", quantity=0.1, price=1.1 + i * 1e-5), QUOTE, epoch=1,
                          now_ns=NOW_NS, client_id="") for i in range(7)]
    assert svc.reserved() == 7
    assert svc.exposure("acc") == pytest.approx(sum(0.1 * (1.1 + i * 1e-5) for i in range(7)))
    for order in orders:
        assert isinstance(order, Order)
        svc.release(order.order_id)
    assert svc.reserved() == 0 and svc.exposure("acc") == 0.0


def test_order_ids_are_unique_and_tagged() -> None:
    svc = service()
    ids = {placed(svc, f"c{i}").order_id for i in range(5)}
    assert len(ids) == 5 and all(i.startswith("O1.t.") for i in ids)


DUPLICATE_CASES = [
    # (stored state, retry, reply)
    (OrderState.ROUTED, new(), (OrderAck, OrderState.ROUTED)),
    (OrderState.FILLED, new(), (OrderAck, OrderState.FILLED)),
    (OrderState.ROUTED, new(quantity=3.0), (OrderReject, RejectReason.DUPLICATE_DIFFERENT)),
]


@pytest.mark.parametrize(("state", "retry", "reply"), DUPLICATE_CASES)
def test_duplicate(state: OrderState, retry: NewOrder, reply: tuple[type, Any]) -> None:
    svc = service()
    stored = route_accepted(Order.from_new("O1.t.1", new(), epoch=1, now_ns=NOW_NS),
                            epoch=1, now_ns=NOW_NS)
    if state is OrderState.FILLED:
        stored = stored.apply(fill(stored, 1.0, 1), epoch=1, now_ns=NOW_NS)
    got = svc.duplicate(stored, retry, b"new-session", 1)
    assert isinstance(got, reply[0])
    assert (got.state if isinstance(got, OrderAck) else got.reason) is reply[1]
    adopted = isinstance(got, OrderAck) and not stored.terminal
    assert (stored.order_id in svc.open) is adopted  # a lost write's order is adopted
    assert (svc.record(stored.order_id) is not None) is adopted  # none kept for a done one
    if adopted:
        assert svc.route_of(stored) == b"new-session"


# -- cancels ----------------------------------------------------------------------------------

def test_cancel_table() -> None:
    svc = service()
    order = placed(svc)
    req = CancelOrder("acc", "x1", "c1")
    sent = svc.cancel(req, order, epoch=1, now_ns=NOW_NS)
    assert isinstance(sent, SendCancel)
    assert sent.request == CancelRequest(order.order_id, 1, NOW_NS)
    record = svc.record(order.order_id)
    assert record is not None and record.cancel == sent.request
    other = svc.cancel(CancelOrder("other", "x1", "c1"), order, epoch=1, now_ns=NOW_NS)
    assert isinstance(other, OrderReject) and other.reason is RejectReason.UNKNOWN_ORDER
    none = svc.cancel(req, None, epoch=1, now_ns=NOW_NS)
    assert isinstance(none, OrderReject) and none.reason is RejectReason.UNKNOWN_ORDER
    cancelled = order.apply(order.status_report(OrderState.CANCELLED, exec_id="e", epoch=1,
                                                seq=1), epoch=1, now_ns=NOW_NS)
    again = svc.cancel(req, cancelled, epoch=1, now_ns=NOW_NS)
    assert isinstance(again, OrderAck) and again.state is OrderState.CANCELLED
    filled = order.apply(fill(order, 1.0, 1), epoch=1, now_ns=NOW_NS)
    late = svc.cancel(req, filled, epoch=1, now_ns=NOW_NS)
    assert isinstance(late, OrderReject) and late.reason is RejectReason.NOT_CANCELLABLE


# -- replaces ---------------------------------------------------------------------------------

def test_replace_is_sent_once_and_a_retry_waits_for_the_same_decision() -> None:
    svc = service()
    order = placed(svc)
    req = ReplaceOrder("acc", "r1", "c1", 2.0, 1.1)
    first = svc.replace(req, order, QUOTE, epoch=1, now_ns=NOW_NS, identity=b"cl")
    assert isinstance(first, SendReplace)
    assert first.pending.request == ReplaceRequest(order.order_id, "r1", 2.0, 1.1, 1, NOW_NS)
    retry = svc.replace(req, order, QUOTE, epoch=1, now_ns=NOW_NS, identity=b"cl")
    assert isinstance(retry, AwaitReplace) and retry.pending is first.pending
    other = svc.replace(ReplaceOrder("acc", "r2", "c1", 3.0, 1.1), order, QUOTE, epoch=1,
                        now_ns=NOW_NS, identity=b"cl")
    assert isinstance(other, OrderReject) and other.reason is RejectReason.NOT_CANCELLABLE


REPLACE_REFUSALS = [
    (ReplaceOrder("acc", "r1", "zz", 2.0, 1.1), None, RejectReason.UNKNOWN_ORDER),
    (ReplaceOrder("other", "r1", "c1", 2.0, 1.1), "order", RejectReason.UNKNOWN_ORDER),
    (ReplaceOrder("acc", "r1", "c1", 2.0, None), "order", RejectReason.BAD_PRICE),
    (ReplaceOrder("acc", "r1", "c1", 2.0, 1.3), "order", RejectReason.PRICE_BAND),
    (ReplaceOrder("acc", "r1", "c1", 950.0, 1.1), "order", RejectReason.QUANTITY_LIMIT),
    (ReplaceOrder("acc", "r1", "c1", 95.0, 1.1), "order", RejectReason.EXPOSURE_LIMIT),
]


@pytest.mark.parametrize(("req", "target", "reason"), REPLACE_REFUSALS)
def test_replace_refusals(req: ReplaceOrder, target: str | None, reason: RejectReason) -> None:
    svc = service()
    order = placed(svc)
    for i in range(10):  # 990 of the 1,000 exposure used by other orders
        placed(svc, f"o{i}", quantity=90.0)
    got = svc.replace(req, order if target else None, QUOTE, epoch=1, now_ns=NOW_NS,
                      identity=b"cl")
    assert isinstance(got, OrderReject) and got.reason is reason


def pending_of(svc: OrderService, order: Order, coid: str = "r1") -> PendingReplace:
    got = svc.replace(ReplaceOrder("acc", coid, order.order.client_order_id, 2.0, 1.1), order,
                      QUOTE, epoch=1, now_ns=NOW_NS, identity=b"cl")
    assert isinstance(got, SendReplace)
    return got.pending


def test_replace_outcomes_reach_the_waiters_and_final_ones_are_remembered() -> None:
    svc = service()
    order = placed(svc)
    pending = pending_of(svc, order)
    seen: list[Any] = []
    pending.waiters.append(seen.append)
    entry = order.replace_report(2.0, 1.1, exec_id="e1", epoch=1, client_order_id="r1", seq=1)
    updated = order.apply(entry, epoch=1, now_ns=NOW_NS)
    assert svc.applied(entry, updated, 5.0) == b"cl"
    assert seen == [updated] and pending.decided == updated
    req = ReplaceOrder("acc", "r1", "c1", 2.0, 1.1)
    reply = svc.replace_answer(req, updated, 0.5)
    assert isinstance(reply, OrderAck) and reply.order_id == order.order_id
    assert svc.replaced(req) == reply


REPLACE_ANSWERS = [
    # (executor's outcome, reply reason, remembered)
    (None, RejectReason.EXECUTOR_UNAVAILABLE, False),
    (ReplaceRefused("O1.t.1", RejectReason.NOT_CANCELLABLE, "filled"),
     RejectReason.NOT_CANCELLABLE, True),
    (ReplaceRefused("O1.t.1", RejectReason.FENCED, "stepped down"), RejectReason.FENCED,
     False),
]


@pytest.mark.parametrize(("outcome", "reason", "remembered"), REPLACE_ANSWERS)
def test_replace_answers(outcome: ReplaceRefused | None, reason: RejectReason,
                         remembered: bool) -> None:
    svc = service()
    req = ReplaceOrder("acc", "r1", "c1", 2.0, 1.1)
    reply = svc.replace_answer(req, outcome, 0.5)
    assert isinstance(reply, OrderReject) and reply.reason is reason
    assert reply.client_order_id == "r1"  # the client's id, not the order id it carried
    assert (svc.replaced(req) is not None) is remembered


def test_replace_outcomes_kept_are_capped() -> None:
    svc = service()
    refusal = ReplaceRefused("O1.t.1", RejectReason.NOT_CANCELLABLE, "no")
    for i in range(RECENT_REPLACES + 10):
        svc.replace_answer(ReplaceOrder("acc", f"r{i}", "c1", 2.0, 1.1), refusal, 0.5)
    assert svc.replaced(ReplaceOrder("acc", "r0", "c1", 2.0, 1.1)) is None
    assert svc.replaced(ReplaceOrder("acc", f"r{RECENT_REPLACES + 9}", "c1", 2.0, 1.1))
    assert len(svc._replaced) == RECENT_REPLACES


def test_refusal_abandon_and_step_down_settle_pending_replaces() -> None:
    svc = service()
    a, b, c = placed(svc, "a"), placed(svc, "b"), placed(svc, "c")
    refusal = ReplaceRefused(a.order_id, RejectReason.NOT_CANCELLABLE, "filled")
    pa, pb, pc = pending_of(svc, a, "ra"), pending_of(svc, b, "rb"), pending_of(svc, c, "rc")
    svc.refused(refusal)
    assert pa.decided == refusal
    svc.abandon(pb)
    record = svc.record(b.order_id)
    assert pb.decided is None and record is not None and record.replace is None
    svc.step_down("stepped down")
    assert isinstance(pc.decided, ReplaceRefused) and pc.decided.reason is RejectReason.FENCED
    assert len(svc) == 0 and len(svc.open) == 0


# -- reports, re-drives and bounds ------------------------------------------------------------

def test_records_go_with_terminal_orders() -> None:
    svc = service()
    order = placed(svc)
    svc.sent(order.order_id, 1.0)
    sent = svc.cancel(CancelOrder("acc", "x1", "c1"), order, epoch=1, now_ns=NOW_NS)
    assert isinstance(sent, SendCancel)
    entry = order.status_report(OrderState.CANCELLED, exec_id="e", epoch=1, seq=1)
    done = order.apply(entry, epoch=1, now_ns=NOW_NS)
    assert svc.applied(entry, done, 2.0) == b"cl"  # the report still reaches the client
    assert svc.record(order.order_id) is None and order.order_id not in svc.open
    assert len(svc) == 0


def test_a_replayed_final_entry_drops_the_record_of_a_terminal_order() -> None:
    svc = service()
    order = placed(svc)
    entry = fill(order, 1.0, 1)
    filled = order.apply(entry, epoch=1, now_ns=NOW_NS)
    svc.open.remove(order.order_id)
    svc.sent(order.order_id, 1.0)
    svc.settled(filled)
    assert len(svc) == 0


def test_progress_resets_the_redrive_clock() -> None:
    svc = service()
    order = placed(svc)
    svc.sent(order.order_id, 0.0)
    entry = fill(order, 0.5, 1)
    svc.applied(entry, order.apply(entry, epoch=1, now_ns=NOW_NS), 0.9)
    assert svc.redrive(1.5) == ([], [])
    assert [o.order_id for o in svc.redrive(2.0)[0]] == [order.order_id]


def test_redrive_selection() -> None:
    svc = service()
    old = placed(svc, "old")
    young = placed(svc, "young")
    svc.sent(old.order_id, 0.0)
    svc.sent(young.order_id, 0.8)
    sent = svc.cancel(CancelOrder("acc", "x1", "old"), old, epoch=1, now_ns=NOW_NS)
    assert isinstance(sent, SendCancel)
    assert svc.redrive(0.5) == ([], [])
    orders, cancels = svc.redrive(1.0)
    assert [o.order_id for o in orders] == [old.order_id] and cancels == [sent.request]
    forced, _ = svc.redrive(0.5, force=True)
    assert {o.order_id for o in forced} == {old.order_id, young.order_id}


def test_redrive_is_oldest_first_and_batched() -> None:
    svc = service()
    orders = [route_accepted(Order.from_new(f"O1.t.{i}", new(f"c{i}", quantity=0.001),
                                            epoch=1, now_ns=NOW_NS - i), epoch=1,
                             now_ns=NOW_NS - i) for i in range(REDRIVE_BATCH + 5)]
    svc.reload(orders)
    due, _ = svc.redrive(10.0)
    assert len(due) == REDRIVE_BATCH
    assert due[0].order_id == orders[-1].order_id  # the oldest
    assert [o.updated_ns for o in due] == sorted(o.updated_ns for o in due)


def test_records_of_orders_no_longer_open_are_swept() -> None:
    svc = service()
    order = placed(svc)
    svc.sent("O9.x.1", 0.0)  # e.g. a gap retry of an order read from the store
    svc.reload([])
    svc.sent("O9.x.2", 0.0)
    svc.redrive(5.0)
    assert len(svc) == 0 and svc.record(order.order_id) is None


GAP_CASES = [
    # (last sent, now, retry)
    (None, 0.0, True),
    (1.0, 1.0 + GAP_RETRY_S / 2, False),
    (1.0, 1.0 + GAP_RETRY_S, True),
]


@pytest.mark.parametrize(("sent", "now", "retry"), GAP_CASES)
def test_gap_retry(sent: float | None, now: float, retry: bool) -> None:
    svc = service()
    if sent is not None:
        svc.sent("O1.t.1", sent)
    assert svc.gap_retry("O1.t.1", now) is retry


def test_route_accepted_moves_new_and_accepted_orders_to_routed() -> None:
    fresh = Order.from_new("O1.t.1", new(), epoch=1, now_ns=NOW_NS)
    routed = route_accepted(fresh, epoch=2, now_ns=NOW_NS + 1)
    assert routed.state is OrderState.ROUTED and routed.epoch == 2
    accepted = fresh.apply(fresh.status_report(OrderState.ACCEPTED, exec_id="accept", epoch=1),
                           epoch=1, now_ns=NOW_NS)
    assert route_accepted(accepted, epoch=1, now_ns=NOW_NS).state is OrderState.ROUTED


# -- what PROTOCOL.md §14 says of acks, refusals and exposure -----------------------------------

def test_a_cancel_ack_names_the_cancel_the_order_and_the_state_before_it() -> None:
    svc = service()
    order = placed(svc)
    partial = order.apply(fill(order, 0.25, 1), epoch=1, now_ns=NOW_NS)
    sent = svc.cancel(CancelOrder("acc", "x1", "c1"), partial, epoch=4, now_ns=NOW_NS)
    assert isinstance(sent, SendCancel)
    assert sent.ack == OrderAck("x1", order.order_id, OrderState.PARTIALLY_FILLED, 4)


def test_a_replace_ack_names_the_replace_and_the_record_as_stored_after_it() -> None:
    svc = service()
    order = placed(svc)
    entry = order.replace_report(2.0, 1.1, exec_id="e1", epoch=1, client_order_id="r1", seq=1)
    stored = order.apply(entry, epoch=3, now_ns=NOW_NS)
    reply = svc.replace_answer(ReplaceOrder("acc", "r1", "c1", 2.0, 1.1), stored, 0.5)
    assert reply == OrderAck("r1", order.order_id, OrderState.ROUTED, 3)


@pytest.mark.parametrize("state", [OrderState.CANCELLED, OrderState.FILLED])
def test_replacing_a_done_order_is_not_cancellable(state: OrderState) -> None:
    svc = service()
    order = placed(svc)
    report = (fill(order, 1.0, 1) if state is OrderState.FILLED
              else order.status_report(state, exec_id="e1", epoch=1, seq=1))
    done = order.apply(report, epoch=1, now_ns=NOW_NS)
    svc.applied(report, done, 1.0)
    got = svc.replace(ReplaceOrder("acc", "r1", "c1", 2.0, 1.1), done, QUOTE, epoch=1,
                      now_ns=NOW_NS, identity=b"cl")
    assert isinstance(got, OrderReject) and got.reason is RejectReason.NOT_CANCELLABLE


def test_exposure_is_what_open_orders_leave_to_fill_at_their_price_sides_adding_up() -> None:
    svc = service()
    buy = placed(svc, "b", quantity=2.0, price=1.1)
    svc.open.put(buy.apply(fill(buy, 0.5, 1), epoch=1, now_ns=NOW_NS))  # leaves 1.5
    placed(svc, "s", side=Side.SELL, quantity=1.0, price=1.1001)  # a sell adds, too
    placed(svc, "m", type=OrderType.MARKET, price=None, quantity=5.0)  # 0 once open
    assert svc.exposure("acc") == pytest.approx(1.5 * 1.1 + 1.0 * 1.1001)
    reserved = svc.reserve(new("r", quantity=3.0, price=1.1), QUOTE, epoch=1, now_ns=NOW_NS,
                           client_id="")
    assert isinstance(reserved, Order)  # being stored: counted as well
    assert svc.exposure("acc") == pytest.approx(1.5 * 1.1 + 1.0 * 1.1001 + 3.0 * 1.1)


def test_a_market_order_is_valued_at_the_mid_when_checked() -> None:
    svc = OrderService(Limits(frozenset({"EURUSD"}), max_quantity=100.0, price_band=0.05,
                              max_exposure_per_account=11.5), tag="t")
    wide = (1.0, 1.2)  # mid 1.1: 10 lots are 11.0 at the mid, 12.0 at the ask
    ok = svc.reserve(new("m1", type=OrderType.MARKET, price=None, quantity=10.0), wide,
                     epoch=1, now_ns=NOW_NS, client_id="")
    assert isinstance(ok, Order)
    assert svc.exposure("acc") == 0.0  # open (reserved) MARKET orders count 0
    over = svc.reserve(new("m2", type=OrderType.MARKET, price=None, quantity=10.5), wide,
                       epoch=1, now_ns=NOW_NS, client_id="")
    assert over is RejectReason.EXPOSURE_LIMIT  # 11.55 at the mid


def test_a_replace_acts_on_the_order_as_this_backend_has_seen_it_since_the_store() -> None:
    svc = service()
    order = placed(svc)
    entry = fill(order, 0.5, 1)
    svc.applied(entry, order.apply(entry, epoch=1, now_ns=NOW_NS), 1.0)
    seen = svc.replace_target(ReplaceOrder("acc", "r1", "c1", 1.5, 1.1), order)
    assert isinstance(seen, Order) and seen.filled_quantity == 0.5
    req = ReplaceOrder("acc", "r2", "c1", 0.4, 1.1)  # fine for the stored view: 0 filled
    for got in (svc.replace_target(req, order),
                svc.replace(req, order, QUOTE, epoch=1, now_ns=NOW_NS, identity=b"cl")):
        assert isinstance(got, OrderReject) and got.reason is RejectReason.BAD_QUANTITY
