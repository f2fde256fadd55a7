"""TagIndex: what the terminal holds of each tickmesh order (protocols.ea.index)."""

from __future__ import annotations

import pytest

from protocols.ea.index import TagIndex
from protocols.ea.messages import Deal, FactStatus
from protocols.ea.mt5 import (
    DealEntry,
    DealType,
    OrderSendResult,
    OrderStateMt5,
    OrderType,
    Retcode,
    TradeDeal,
    TradeOrder,
    comment_of,
    magic_of,
)


def order(oid: str, ticket: int, state: OrderStateMt5 = OrderStateMt5.PLACED, *,
          price: float = 1.1, magic: int | None = None) -> TradeOrder:
    return TradeOrder(ticket, 1_000, OrderType.BUY_LIMIT, state,
                      magic_of(oid) if magic is None else magic, 2.0, 2.0, price, "EURUSD",
                      comment_of(oid))


def deal(oid: str, ticket: int, order_ticket: int, volume: float = 1.0,
         kind: DealType = DealType.BUY) -> TradeDeal:
    return TradeDeal(ticket, order_ticket, 2_000, kind, DealEntry.IN, magic_of(oid), volume,
                     1.1, "EURUSD", comment_of(oid))


def test_reconciled_orders_and_deals_give_facts() -> None:
    idx = TagIndex()
    assert idx.on_order(order("O1", 10), active=True) == "O1"
    assert idx.on_order(order("O2", 11, OrderStateMt5.FILLED), active=False) == "O2"
    assert idx.on_deal(deal("O2", 100, 11, 2.0)) == "O2"
    assert idx.on_deal(deal("O2", 100, 11, 2.0)) is None  # known already
    assert idx.facts("O1").status is FactStatus.WORKING
    assert idx.facts("O2").deals == (Deal(100, 2.0, 1.1, 2_000),)
    assert idx.facts("O2").status is FactStatus.FILLED
    assert idx.deals == 1  # the second read of the same deal is not counted again
    assert idx.seen("O1") and idx.seen("O2") and not idx.seen("O3")


@pytest.mark.parametrize("state, status", [
    (OrderStateMt5.FILLED, FactStatus.FILLED), (OrderStateMt5.CANCELED, FactStatus.CANCELLED),
    (OrderStateMt5.EXPIRED, FactStatus.CANCELLED), (OrderStateMt5.REJECTED, FactStatus.REJECTED),
    (OrderStateMt5.PARTIAL, FactStatus.CANCELLED),
])
def test_finished_states(state: OrderStateMt5, status: FactStatus) -> None:
    idx = TagIndex()
    idx.on_order(order("O1", 10, state), active=False)
    assert idx.facts("O1").status is status


def test_foreign_orders_and_deals_are_counted_and_left_alone() -> None:
    idx = TagIndex()
    assert idx.on_order(order("O1", 10, magic=42), active=True) is None  # a manual trade
    assert idx.on_deal(TradeDeal(5, 99, 1, DealType.BUY, DealEntry.IN, 7, 1.0, 1.0, "EURUSD",
                                 "hand")) is None
    assert idx.on_deal(TradeDeal(6, 0, 1, DealType.BALANCE, DealEntry.IN, 0, 0.0, 0.0, "",
                                 "")) is None  # not a trade
    assert (idx.foreign, idx.orders) == (2, {})


def test_a_deal_without_its_terminal_order_is_counted_unknown() -> None:
    idx = TagIndex()
    assert idx.on_deal(deal("O9", 7, 70)) == "O9"
    assert idx.unknown_deals == 1 and idx.facts("O9").deals[0].ticket == 7


@pytest.mark.parametrize("result, final, status", [
    (OrderSendResult(Retcode.DONE, deal=5, order=9, volume=2.0, price=1.2), False,
     FactStatus.FILLED),
    (OrderSendResult(Retcode.DONE_PARTIAL, deal=5, order=9, volume=1.0, price=1.2), False,
     FactStatus.WORKING),
    (OrderSendResult(Retcode.PLACED, order=9), False, FactStatus.WORKING),
    (OrderSendResult(Retcode.REJECT, order=9), True, FactStatus.REJECTED),
    (OrderSendResult(10999), True, FactStatus.REJECTED),  # a retcode nobody knows
])
def test_sent(result: OrderSendResult, final: bool, status: FactStatus) -> None:
    idx = TagIndex()
    idx.sending("O1", magic_of("O1"))
    assert idx.seen("O1") and idx.in_doubt() == ["O1"]  # counts as seen while in the call
    idx.sent("O1", result, time_msc=3, final_reject=final)
    facts = idx.facts("O1")
    assert facts.status is status and facts.retcode == result.retcode
    assert facts.filled == result.volume if result.deal else facts.deals == ()


def test_a_transient_refusal_leaves_the_order_unsent() -> None:
    idx = TagIndex()
    idx.sending("O1", magic_of("O1"))
    idx.sent("O1", OrderSendResult(Retcode.REQUOTE), time_msc=3, final_reject=False)
    assert not idx.seen("O1")


def test_in_doubt_settles_only_without_a_trace() -> None:
    idx = TagIndex()
    idx.sending("O1", magic_of("O1"))
    idx.sending("O2", magic_of("O2"))
    idx.on_order(order("O2", 12, OrderStateMt5.FILLED), active=False)  # it was taken
    idx.settle("O1")
    idx.settle("O2")
    assert not idx.seen("O1") and idx.seen("O2")


def test_two_terminal_orders_of_one_id_are_reported() -> None:
    idx = TagIndex()
    idx.on_order(order("O1", 10, OrderStateMt5.FILLED), active=False)
    idx.on_order(order("O1", 11, OrderStateMt5.FILLED), active=False)
    assert idx.twice == {"O1"} and idx.facts("O1").ticket == 10


def test_a_long_id_is_found_by_its_magic() -> None:
    oid = "O" + "7" * 40
    idx = TagIndex()
    idx.sending(oid, magic_of(oid))
    idx.sent(oid, OrderSendResult(Retcode.PLACED, order=3), time_msc=1, final_reject=False)
    fresh = TagIndex()
    assert fresh.on_order(order(oid, 3), active=True) is None  # the comment lost its tail
    fresh.magics[magic_of(oid)] = oid
    assert fresh.on_order(order(oid, 3), active=True) == oid


def test_coverage() -> None:
    idx = TagIndex()
    assert not idx.covers(5_000)
    idx.covered(4_000)
    assert idx.covers(5_000) and idx.covers(4_000) and not idx.covers(3_999)
    assert not idx.covers(0)  # unknown routing time: read everything first
    idx.covered(1_000)
    assert idx.covers(1_000)
