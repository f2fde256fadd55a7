"""The executor's decisions, from tables: fill prices, marketable limits, the bound on resting
orders, and the answers to cancel and replace requests against the order's log."""

from __future__ import annotations

import pytest

from protocols.orders.execution import (
    LATER,
    Batch,
    answer,
    cancel_entry,
    decide,
    exec_id,
    marketable,
    over_capacity,
    reject_entry,
)
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelRequest,
    ExecutionReport,
    NewOrder,
    OrderType,
    RejectReason,
    ReplaceRefused,
    ReplaceRequest,
    Side,
)
from protocols.orders.record import Order
from protocols.orders.risk import usable_quote

BID, ASK = 1.1000, 1.1002


def routed(order_id: str, side: Side = Side.BUY, type_: OrderType = OrderType.MARKET,
           price: float | None = None, quantity: float = 2.0,
           symbol: str = "EURUSD") -> Order:
    """An order as the backend routes it: NEW -> ACCEPTED -> ROUTED through Order.apply."""
    new = NewOrder("acc", f"c-{order_id}", symbol, side, type_, quantity, price, sent_ns=1)
    order = Order.from_new(order_id, new, epoch=1, now_ns=1)
    for n, state in enumerate((OrderState.ACCEPTED, OrderState.ROUTED), start=2):
        report = order.status_report(state, exec_id=f"{order_id}:b{n}", epoch=1)
        order = order.apply(report, epoch=1, now_ns=n)
    return order


def assert_applies(order: Order, report: ExecutionReport, state: OrderState) -> Order:
    """The backend can apply the report to its record."""
    after = order.apply(report, epoch=1, now_ns=10)
    assert after.state is state
    return after


@pytest.mark.parametrize(("side", "type_", "price", "quote", "expect"), [
    (Side.BUY, OrderType.MARKET, None, (BID, ASK), ASK),
    (Side.SELL, OrderType.MARKET, None, (BID, ASK), BID),
    (Side.BUY, OrderType.MARKET, None, None, "reject"),
    (Side.BUY, OrderType.LIMIT, ASK, (BID, ASK), ASK),
    (Side.BUY, OrderType.LIMIT, 1.1001, (BID, ASK), None),
    (Side.SELL, OrderType.LIMIT, BID, (BID, ASK), BID),
    (Side.SELL, OrderType.LIMIT, 1.1001, (BID, ASK), None),
    (Side.SELL, OrderType.LIMIT, 1.1001, None, None),
])
def test_decide_table(side: Side, type_: OrderType, price: float | None,
                      quote: tuple[float, float] | None, expect: float | str | None) -> None:
    order = routed("o1", side, type_, price)
    report = decide(order, quote, 5)
    if expect is None:
        assert report is None
    elif expect == "reject":
        assert report is not None and report.state is OrderState.REJECTED
        assert (report.exec_id, report.seq) == ("o1:1", 1)
        assert_applies(order, report, OrderState.REJECTED)
    else:
        assert report is not None and report.state is OrderState.FILLED
        assert (report.last_price, report.last_quantity, report.exec_id) == (expect, 2.0, "o1:1")
        assert assert_applies(order, report, OrderState.FILLED).avg_price == expect


def test_usable_quote() -> None:
    assert usable_quote(1.0, 1.1) == (1.0, 1.1)
    for bid, ask in ((0.0, 1.0), (1.2, 1.1), (float("nan"), 1.0), (1.0, float("inf"))):
        assert usable_quote(bid, ask) is None

@pytest.mark.parametrize(("side", "limit", "quote", "trades"), [
    (Side.BUY, ASK, (BID, ASK), True),
    (Side.BUY, ASK + 0.0001, (BID, ASK), True),
    (Side.BUY, ASK - 0.0001, (BID, ASK), False),
    (Side.SELL, BID, (BID, ASK), True),
    (Side.SELL, BID - 0.0001, (BID, ASK), True),
    (Side.SELL, BID + 0.0001, (BID, ASK), False),
])
def test_marketable(side: Side, limit: float, quote: tuple[float, float], trades: bool) -> None:
    assert marketable(side, limit, quote) is trades


def test_fills_are_sliced_and_each_entry_is_the_next_position() -> None:
    order = routed("s1", quantity=2.5)
    first = decide(order, (BID, ASK), 5, fill_lots=1.0)
    assert first is not None and (first.last_quantity, first.seq, first.exec_id) == (
        1.0, 1, exec_id("s1", 1))
    order = assert_applies(order, first, OrderState.PARTIALLY_FILLED)
    assert decide(order, None, 6) is None  # partly filled, no quote: it waits
    second = decide(order, (BID, ASK), 7, fill_lots=1.0)
    assert second is not None and second.seq == 2
    order = assert_applies(order, second, OrderState.PARTIALLY_FILLED)
    last = decide(order, (BID, ASK), 8, fill_lots=1.0)
    assert last is not None and last.last_quantity == pytest.approx(0.5)
    assert_applies(order, last, OrderState.FILLED)


@pytest.mark.parametrize(("resting", "bound", "refused"), [(9, 10, False), (10, 10, True),
                                                            (11, 10, True)])
def test_over_capacity(resting: int, bound: int, refused: bool) -> None:
    order = routed("c1", type_=OrderType.LIMIT, price=BID - 0.01)
    assert over_capacity(order, resting, bound) is refused
    assert_applies(order, reject_entry(order, 5), OrderState.REJECTED)


def filled(order: Order) -> Order:
    entry = decide(order, (BID, ASK), 5)
    assert entry is not None
    return order.apply(entry, epoch=1, now_ns=5)


def partly(order: Order, lots: float) -> Order:
    entry = decide(order, (BID, ASK), 5, fill_lots=lots)
    assert entry is not None
    return order.apply(entry, epoch=1, now_ns=5)


# (order, request, answer): an entry of that state (with the new quantity for a replace),
# a refusal with that reason, or None (a cancel of a done order: its final entry again).
ANSWERS = [
    (routed("a1"), CancelRequest("a1", 1), OrderState.CANCELLED),
    (partly(routed("a2"), 0.5), CancelRequest("a2", 1), OrderState.CANCELLED),
    (filled(routed("a3")), CancelRequest("a3", 1), None),
    (routed("a4"), ReplaceRequest("a4", "r", 3.0, None, 1), ("replace", 3.0)),
    (partly(routed("a5"), 1.5), ReplaceRequest("a5", "r", 1.0, None, 1),
     RejectReason.BAD_QUANTITY),
    (routed("a6"), ReplaceRequest("a6", "r", 3.0, 1.1, 1), RejectReason.BAD_PRICE),
    (filled(routed("a7")), ReplaceRequest("a7", "r", 3.0, None, 1),
     RejectReason.NOT_CANCELLABLE),
]


@pytest.mark.parametrize(("order", "request_", "expect"), ANSWERS)
def test_answers_to_requests(order: Order, request_: CancelRequest | ReplaceRequest,
                             expect: object) -> None:
    got = answer(order, request_, 9)
    if expect is None:
        assert got is None
    elif isinstance(expect, RejectReason):
        assert isinstance(got, ReplaceRefused)
        assert (got.order_id, got.reason) == (order.order_id, expect)
    elif isinstance(expect, tuple):
        assert isinstance(got, ExecutionReport) and got.is_replace
        assert (got.quantity, got.client_order_id, got.seq) == (expect[1], "r",
                                                                order.exec_seq + 1)
        assert order.apply(got, epoch=1, now_ns=10).quantity == expect[1]
    else:
        assert isinstance(got, ExecutionReport) and got.state is expect
        assert got.client_order_id == order.order.client_order_id  # the order's own id
        assert got == cancel_entry(order, 9)
        assert_applies(order, got, OrderState.CANCELLED)


# --- batches ----------------------------------------------------------------------------------


def test_a_batch_decides_each_order_against_its_earlier_decisions() -> None:
    """Two decisions for one order in one batch are consecutive positions of its log, each
    taken against the order as the one before leaves it; another order's are its own."""
    a, b = routed("a"), routed("b", Side.SELL)
    batch = Batch(5, fill_lots=0.5)
    steps = [batch.decide(a, (BID, ASK)),
             batch.answer(a, ReplaceRequest("a", "r", 3.0, None, 1)),
             batch.decide(b, (BID, ASK)),
             batch.decide(a, (BID, ASK)),
             batch.answer(a, CancelRequest("a", 1))]
    assert all(isinstance(e, ExecutionReport) for e in steps)
    assert batch.entries == steps
    assert [(e.order_id, e.seq) for e in batch.entries] == [
        ("a", 1), ("a", 2), ("b", 1), ("a", 3), ("a", 4)]
    for entry in batch.entries:
        if entry.order_id == "a":
            a = a.apply(entry, epoch=1, now_ns=6)
    assert (a.state, a.quantity, a.filled_quantity) == (OrderState.CANCELLED, 3.0, 1.0)
    assert batch.order(a).state is OrderState.CANCELLED
    assert batch.order(b).filled_quantity == 0.5 and batch.decided("b")
    assert not batch.decided("c") and batch.order(routed("c")) == routed("c")


@pytest.mark.parametrize(("decided_first", "request_", "expect"), [
    # The batch filled the order: an answer that is not an entry waits for the next batch
    # (it depends on whether that fill is appended).
    (True, CancelRequest("m", 1), LATER),
    (True, ReplaceRequest("m", "r", 3.0, None, 1), LATER),
    # Nothing decided in the batch: the answer as ever.
    (False, CancelRequest("m", 1), OrderState.CANCELLED),
    (False, ReplaceRequest("m", "r", 1.0, 1.1, 1), RejectReason.BAD_PRICE),
])
def test_a_batch_answers_a_request_or_leaves_it_for_the_next(
        decided_first: bool, request_: CancelRequest | ReplaceRequest, expect: object) -> None:
    order = routed("m")
    batch = Batch(5)
    if decided_first:
        assert batch.decide(order, (BID, ASK)) is not None  # the whole order: FILLED
    got = batch.answer(order, request_)
    if isinstance(expect, OrderState):
        assert isinstance(got, ExecutionReport) and (got.state, got.seq) == (expect, 1)
    elif isinstance(expect, RejectReason):
        assert isinstance(got, ReplaceRefused) and got.reason is expect
    else:
        assert got == expect
    assert len(batch.entries) == int(decided_first) + isinstance(got, ExecutionReport)


def test_a_batch_rejects_against_its_own_view() -> None:
    order = routed("k", type_=OrderType.LIMIT, price=BID - 0.01)
    batch = Batch(5)
    assert batch.decide(order, (BID, ASK)) is None  # rests
    entry = batch.reject(order)
    assert (entry.seq, entry.state) == (1, OrderState.REJECTED)
    assert batch.entries == [entry] and batch.order(order).terminal
