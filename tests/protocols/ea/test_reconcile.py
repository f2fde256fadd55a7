"""Facts -> log entries (protocols.ea.reconcile), from tables: every status, deals in the
log already, over-fills, a pending replace, and facts repeated or reordered (idempotence)."""

from __future__ import annotations

import itertools

import pytest

from protocols.ea.messages import Deal, FactStatus, OrderFacts
from protocols.ea.reconcile import entries_from_facts, overfill
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import OrderType, RejectReason, ReplaceRequest
from protocols.orders.record import Order
from tests.protocols.orders.test_execution import routed

NOW = 1_000
W, F, C, R, MR = (FactStatus.WORKING, FactStatus.FILLED, FactStatus.CANCELLED,
                  FactStatus.REJECTED, FactStatus.MODIFY_REFUSED)
S = OrderState


def limit(quantity: float = 2.0, price: float = 1.1) -> Order:
    return routed("o1", type_=OrderType.LIMIT, price=price, quantity=quantity)


def facts(status: FactStatus, *deals: tuple[float, float], price: float = 1.1,
          retcode: int = 0) -> OrderFacts:
    return OrderFacts("o1", status, 7, price, retcode,
                      tuple(Deal(10 + i, v, p, i) for i, (v, p) in enumerate(deals)))


def fold(order: Order, got: list) -> Order:  # type: ignore[type-arg]
    for entry in got:
        order = order.apply(entry, epoch=order.epoch, now_ns=NOW)
    return order


def replace_req(price: float, quantity: float = 2.0) -> ReplaceRequest:
    return ReplaceRequest("o1", "r-1", quantity, price, epoch=1)


# (facts, cancel_asked, want: [(state, last_quantity, last_price, reason)])
CASES = [
    ("working, no deals", facts(W), False, []),
    ("one deal fills it", facts(F, (2.0, 1.1)), False, [(S.FILLED, 2.0, 1.1, 0)]),
    ("two deals", facts(F, (0.5, 1.1), (1.5, 1.09)), False,
     [(S.PARTIALLY_FILLED, 0.5, 1.1, 0), (S.FILLED, 1.5, 1.09, 0)]),
    ("a partial fill, still working", facts(W, (0.5, 1.1)), False,
     [(S.PARTIALLY_FILLED, 0.5, 1.1, 0)]),
    ("rejected", facts(R, retcode=10006), False,
     [(S.REJECTED, 0.0, 0.0, RejectReason.VENUE_REJECTED)]),
    ("cancelled, asked", facts(C), True, [(S.CANCELLED, 0.0, 0.0, 0)]),
    ("cancelled, not asked", facts(C), False,
     [(S.CANCELLED, 0.0, 0.0, RejectReason.VENUE_REJECTED)]),
    ("a partial fill then a cancel", facts(C, (0.5, 1.1)), True,
     [(S.PARTIALLY_FILLED, 0.5, 1.1, 0), (S.CANCELLED, 0.0, 0.0, 0)]),
    ("rejected after a deal: cancelled", facts(R, (0.5, 1.1)), False,
     [(S.PARTIALLY_FILLED, 0.5, 1.1, 0), (S.CANCELLED, 0.0, 0.0, RejectReason.VENUE_REJECTED)]),
    ("an over-fill is capped", facts(F, (1.5, 1.1), (1.5, 1.1)), False,
     [(S.PARTIALLY_FILLED, 1.5, 1.1, 0), (S.FILLED, 0.5, 1.1, 0)]),
    ("modify refused: no entry", facts(MR, retcode=10015), False, []),
]


@pytest.mark.parametrize(("name", "f", "asked", "want"), CASES, ids=[c[0] for c in CASES])
def test_entries_from_facts(name: str, f: OrderFacts, asked: bool, want: list) -> None:  # type: ignore[type-arg]
    order = limit()
    got, refused = entries_from_facts(order, f, NOW, cancel_asked=asked, replace=None)
    assert refused is None
    assert [(e.state, e.last_quantity, e.last_price, e.reason) for e in got] == want
    assert [e.seq for e in got] == list(range(1, len(got) + 1))
    assert [e.exec_id for e in got] == [f"o1:{e.seq}" for e in got]
    after = fold(order, got)  # every entry applies, in order
    # The same facts again add nothing (the log holds them now).
    assert entries_from_facts(after, f, NOW, cancel_asked=asked, replace=None) == ([], None)


def test_deals_in_the_log_already_add_nothing_and_later_ones_continue_it() -> None:
    order = fold(limit(), entries_from_facts(limit(), facts(W, (0.5, 1.1)), NOW,
                                             cancel_asked=False, replace=None)[0])
    assert order.exec_seq == 1 and order.filled_quantity == 0.5
    got, _ = entries_from_facts(order, facts(W, (0.5, 1.1), (0.7, 1.08)), NOW,
                                cancel_asked=False, replace=None)
    assert [(e.seq, e.last_quantity, e.last_price, e.filled_quantity) for e in got] == [
        (2, 0.7, 1.08, 1.2)]


def test_facts_older_than_the_log_add_nothing() -> None:
    order = fold(limit(), entries_from_facts(limit(), facts(W, (0.5, 1.1), (0.5, 1.1)), NOW,
                                             cancel_asked=False, replace=None)[0])
    for older in (facts(W), facts(W, (0.5, 1.1))):
        assert entries_from_facts(order, older, NOW, cancel_asked=False,
                                  replace=None) == ([], None)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_any_order_of_arrival_ends_in_the_same_log(perm: tuple[int, ...]) -> None:
    """Facts of one order's life arriving in any order, each folded when it comes: the log
    ends FILLED with each deal once."""
    life = [facts(W, (0.5, 1.1)), facts(W, (0.5, 1.1), (1.0, 1.09)),
            facts(F, (0.5, 1.1), (1.0, 1.09), (0.5, 1.08))]
    order = limit()
    for i in (*perm, *perm):  # and each one twice
        got, _ = entries_from_facts(order, life[i], NOW, cancel_asked=False, replace=None)
        order = fold(order, got)
    assert order.state is S.FILLED and order.filled_quantity == 2.0
    assert order.avg_price == pytest.approx((0.5 * 1.1 + 1.0 * 1.09 + 0.5 * 1.08) / 2)


def test_deals_are_taken_in_ticket_order() -> None:
    f = OrderFacts("o1", F, 7, 1.1, 0, (Deal(12, 1.5, 1.09, 2), Deal(11, 0.5, 1.1, 1)))
    got, _ = entries_from_facts(limit(), f, NOW, cancel_asked=False, replace=None)
    assert [(e.last_quantity, e.last_price) for e in got] == [(0.5, 1.1), (1.5, 1.09)]


def test_a_market_order_filled_and_rejected() -> None:
    market = routed("o1")
    got, _ = entries_from_facts(market, OrderFacts("o1", F, 7, 0.0, 10009,
                                                   (Deal(1, 2.0, 1.1002, 0),)), NOW,
                                cancel_asked=False, replace=None)
    assert [(e.state, e.last_price) for e in got] == [(S.FILLED, 1.1002)]
    got, _ = entries_from_facts(market, OrderFacts("o1", R, 0, 0.0, 10019), NOW,
                                cancel_asked=False, replace=None)
    assert [(e.state, e.reason) for e in got] == [(S.REJECTED, RejectReason.VENUE_REJECTED)]


def test_a_price_change_for_a_pending_replace_is_the_replace_entry() -> None:
    got, refused = entries_from_facts(limit(), facts(W, price=1.05), NOW, cancel_asked=False,
                                      replace=replace_req(1.05))
    assert refused is None
    [entry] = got
    assert entry.is_replace and entry.price == 1.05 and entry.quantity == 2.0
    assert entry.client_order_id == "r-1" and entry.seq == 1
    after = fold(limit(), got)
    assert after.price == 1.05
    # Again: the log has the price now.
    assert entries_from_facts(after, facts(W, price=1.05), NOW, cancel_asked=False,
                              replace=replace_req(1.05)) == ([], None)


def test_a_replace_then_the_fill_at_the_new_price() -> None:
    got, _ = entries_from_facts(limit(), facts(F, (2.0, 1.05), price=1.05), NOW,
                                cancel_asked=False, replace=replace_req(1.05))
    assert [(e.is_replace, e.state) for e in got] == [(True, S.ROUTED), (False, S.FILLED)]
    assert fold(limit(), got).state is S.FILLED


@pytest.mark.parametrize(("f", "reason"), [
    (facts(MR, retcode=10015), RejectReason.BAD_PRICE),
    (facts(C), RejectReason.NOT_CANCELLABLE),  # the order finished before the modify
    (facts(F, (2.0, 1.1)), RejectReason.NOT_CANCELLABLE),
])
def test_a_pending_replace_refused(f: OrderFacts, reason: RejectReason) -> None:
    got, refused = entries_from_facts(limit(), f, NOW, cancel_asked=False,
                                      replace=replace_req(1.05))
    assert refused is not None and refused.reason is reason and refused.order_id == "o1"
    fold(limit(), got)


def test_a_stale_price_is_no_replace() -> None:
    """Facts from before the MODIFY (the old price) answer nothing about the replace."""
    assert entries_from_facts(limit(), facts(W, price=1.1), NOW, cancel_asked=False,
                              replace=replace_req(1.05)) == ([], None)


@pytest.mark.parametrize(("order", "f", "excess"), [
    (limit(), facts(F, (2.0, 1.1)), 0.0),
    (limit(), facts(F, (1.5, 1.1), (1.5, 1.1)), 1.0),
    (limit(), facts(W, (0.5, 1.1)), 0.0),
])
def test_overfill(order: Order, f: OrderFacts, excess: float) -> None:
    assert overfill(order, f) == pytest.approx(excess)


def test_deals_of_an_order_the_log_finished_without_them_are_an_overfill() -> None:
    rejected = fold(limit(), entries_from_facts(limit(), facts(R), NOW, cancel_asked=False,
                                                replace=None)[0])
    assert rejected.state is S.REJECTED
    late = facts(F, (2.0, 1.1))
    assert entries_from_facts(rejected, late, NOW, cancel_asked=False, replace=None) == ([], None)
    assert overfill(rejected, late) == 2.0


def test_facts_of_another_order_are_a_bug() -> None:
    with pytest.raises(ValueError):
        entries_from_facts(limit(), OrderFacts("o2", W), NOW, cancel_asked=False, replace=None)
