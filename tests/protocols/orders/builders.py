"""Builders of order messages and records, shared by the order tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, settings

from protocols.orders.lifecycle import (
    OrderEvent,
    OrderState,
)
from protocols.orders.messages import (
    CancelOrder,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderType,
    ReplaceOrder,
    Side,
)
from protocols.orders.record import Order

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
S = OrderState
E = OrderEvent


def new(**changes: Any) -> NewOrder:
    base: dict[str, Any] = dict(account="ACC-1", client_order_id="c-1", symbol="EURUSD",
                                side=Side.BUY, type=OrderType.LIMIT, quantity=1.0, price=1.1,
                                sent_ns=1_732_450_000_000_000_000)
    return NewOrder(**{**base, **changes})


def market(**changes: Any) -> NewOrder:
    return new(**{"type": OrderType.MARKET, "price": None, **changes})


def order(state: OrderState = S.ROUTED, filled: float = 0.0, avg: float = 0.0,
          quantity: float = 1.0, epoch: int = 3, src: NewOrder | None = None) -> Order:
    src = src or new(quantity=quantity)
    return Order("o-1", src, state, filled, avg, epoch, 100, quantity, src.price)


def report(state: OrderState, filled: float = 0.0, last_q: float = 0.0, last_p: float = 0.0,
           avg: float = 0.0, **changes: Any) -> ExecutionReport:
    base: dict[str, Any] = dict(order_id="o-1", client_order_id="c-1", account="ACC-1",
                                symbol="EURUSD", side=Side.BUY, state=state,
                                filled_quantity=filled, last_quantity=last_q, last_price=last_p,
                                avg_price=avg, epoch=3, exec_id="x-1")
    return ExecutionReport(**{**base, **changes})


def fill(filled: float, last_q: float, price: float = 1.1, done: bool = False,
         **changes: Any) -> ExecutionReport:
    state = S.FILLED if done else S.PARTIALLY_FILLED
    return report(state, filled, last_q, price, price, **changes)


TERMINAL = {S.FILLED, S.REJECTED, S.CANCELLED, S.EXPIRED}


def cancel(**changes: Any) -> CancelOrder:
    return CancelOrder(**{"account": "ACC-1", "client_order_id": "c-9",
                          "target_client_order_id": "c-1", **changes})


def amend(quantity: float = 2.0, price: float | None = 1.2, **changes: Any) -> ReplaceOrder:
    return ReplaceOrder(**{"account": "ACC-1", "client_order_id": "c-9",
                           "target_client_order_id": "c-1", "quantity": quantity,
                           "price": price, **changes})


MARKET_ROUTED = order(S.ROUTED, src=market())


def ack(**changes: Any) -> OrderAck:
    return OrderAck(**{"client_order_id": "c-1", "order_id": "o-1", "state": S.ACCEPTED,
                       "epoch": 1, **changes})


def rec(**changes: Any) -> Order:
    base = order(S.PARTIALLY_FILLED, 0.5, 1.0)
    return dataclasses.replace(base, **changes)
