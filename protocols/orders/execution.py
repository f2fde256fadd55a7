"""The executor's decisions, without I/O (the node that carries them out is
``nodes.orders.executor``).

Rules:

* The executor owns a working order and decides its fate by appending entries to the order's
  execution log at the next position ``seq`` = ``order.exec_seq + 1``, each with the exec id
  :func:`exec_id` ``{order_id}:{seq}``; ``order`` here is the backend's record with the log
  folded in.
* Fills: a MARKET order fills at the ask (BUY) or the bid (SELL) of the last usable quote
  (:func:`~protocols.orders.messages.usable_quote`), at most ``fill_lots`` lots per fill (0: all
  that is left). Without a quote a MARKET order is REJECTED if nothing is filled yet (REJECTED
  needs ROUTED), else it waits. A LIMIT order fills at its limit price when marketable
  (:func:`marketable`: BUY limit >= ask, SELL limit <= bid) and rests otherwise.
* A new order that would rest while ``max_resting`` orders rest already is REJECTED, never
  dropped (:func:`over_capacity`).
* Requests (:func:`answer`): a cancel of a working order is the next entry (CANCELLED); a
  replace is the next entry with the new terms, or a :class:`ReplaceRefused` if the order
  cannot take them any more (it may have filled since the backend checked). For a terminal
  order a replace is refused and a cancel is answered with the order's final entry again.
"""

from __future__ import annotations

from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelRequest,
    ExecutionReport,
    ExecutorRequest,
    OrderType,
    RejectReason,
    ReplaceRefused,
    ReplaceRequest,
    Side,
)
from protocols.orders.record import Order, amend_reason, amend_text
from protocols.orders.risk import Quote


def exec_id(order_id: str, seq: int) -> str:
    """The exec id of the entry at position ``seq`` of an order's log."""
    return f"{order_id}:{seq}"


def marketable(side: Side, limit: float, quote: Quote) -> bool:
    """Whether a LIMIT order of ``side`` at ``limit`` trades against ``quote``."""
    return limit >= quote[1] if side is Side.BUY else limit <= quote[0]


def decide(order: Order, quote: Quote | None, now_ns: int, *, fill_lots: float = 0.0
           ) -> ExecutionReport | None:
    """The next log entry for the working ``order`` given the last ``quote``: a fill of at
    most ``fill_lots`` lots (0: everything left), a reject, or None (wait: a LIMIT order that
    is not marketable, or a MARKET order with no quote after a first fill: the lifecycle has
    no reject after a fill)."""
    buy = order.order.side is Side.BUY
    if order.order.type is OrderType.MARKET:
        if quote is None:
            return reject_entry(order, now_ns) if order.state is OrderState.ROUTED else None
        price = quote[1] if buy else quote[0]
    else:
        if quote is None or order.price is None or not marketable(order.order.side,
                                                                   order.price, quote):
            return None
        price = order.price
    lots = order.quantity - order.filled_quantity
    if fill_lots > 0:
        lots = min(lots, fill_lots)
    seq = order.exec_seq + 1
    return order.fill_report(lots, price, seq=seq, exec_id=exec_id(order.order_id, seq),
                             transact_ns=now_ns)


def over_capacity(order: Order, resting: int, max_resting: int) -> bool:
    """Whether the new ``order``, about to rest, must be refused: ``resting`` orders rest
    already and the bound is ``max_resting``."""
    return order.state is OrderState.ROUTED and resting >= max_resting


def reject_entry(order: Order, now_ns: int) -> ExecutionReport:
    """The log entry refusing the routed ``order`` (no fill yet: REJECTED needs ROUTED)."""
    seq = order.exec_seq + 1
    return order.status_report(OrderState.REJECTED, exec_id=exec_id(order.order_id, seq),
                               epoch=order.epoch, transact_ns=now_ns, seq=seq)


def cancel_entry(order: Order, now_ns: int) -> ExecutionReport:
    """The log entry cancelling the working ``order``."""
    seq = order.exec_seq + 1
    return order.status_report(OrderState.CANCELLED, exec_id=exec_id(order.order_id, seq),
                               epoch=order.epoch, transact_ns=now_ns, seq=seq)


def replace_entry(order: Order, request: ReplaceRequest, now_ns: int
                  ) -> ExecutionReport | ReplaceRefused:
    """The log entry giving ``order`` the terms of ``request``, or why it cannot take them
    any more (the backend checked them against an older view of the order)."""
    reason = amend_reason(order, request.quantity, request.price)
    if reason is not None:
        return ReplaceRefused(order.order_id, reason, amend_text(reason))
    seq = order.exec_seq + 1
    return order.replace_report(request.quantity, request.price,
                                exec_id=exec_id(order.order_id, seq), epoch=order.epoch,
                                transact_ns=now_ns, client_order_id=request.client_order_id,
                                seq=seq)


def answer(order: Order, request: ExecutorRequest, now_ns: int
           ) -> ExecutionReport | ReplaceRefused | None:
    """The executor's answer to ``request`` for ``order`` as its log has it: the entry to
    append, a refusal, or None (a cancel of a terminal order: its final entry is the answer,
    sent again)."""
    if order.terminal:
        if isinstance(request, CancelRequest):
            return None
        return ReplaceRefused(order.order_id, RejectReason.NOT_CANCELLABLE,
                              f"the order is {order.state.name}")
    if isinstance(request, CancelRequest):
        return cancel_entry(order, now_ns)
    return replace_entry(order, request, now_ns)


__all__ = [
    "answer",
    "cancel_entry",
    "decide",
    "exec_id",
    "marketable",
    "over_capacity",
    "reject_entry",
    "replace_entry",
]
