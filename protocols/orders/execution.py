"""The executor's decisions, without I/O (the node that carries them out is
``nodes.orders.executor``).

Rules:

* The executor owns a working order and decides its fate by proposing entries for the order's
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
* Batches (:class:`Batch`): the executor decides every message of a wake-up (and the resting
  poller every working order of a round) before it proposes them to the active backend, which
  decides each position of the log once (``protocols.orders.record.judge_entry``). Each
  decision is taken against the order as the batch's earlier decisions leave it, so two for
  one order are consecutive positions of its log (the later one is proposed once the earlier
  is decided, and not at all if that one lost). An answer that is not an entry (a refusal, a
  finished order's final entry again) to a request for an order the batch has decided already
  waits for the next batch (:data:`LATER`): it depends on whether those entries are decided.
"""

from __future__ import annotations

from typing import Final, Literal

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


def status_entry(order: Order, state: OrderState, now_ns: int, reason: int = 0
                 ) -> ExecutionReport:
    """The log entry at ``order``'s next position moving it to ``state`` (a RejectReason
    ``reason`` when the executor knows why, 0: none)."""
    seq = order.exec_seq + 1
    return order.status_report(state, exec_id=exec_id(order.order_id, seq), epoch=order.epoch,
                               transact_ns=now_ns, seq=seq, reason=reason)


def reject_entry(order: Order, now_ns: int, reason: int = 0) -> ExecutionReport:
    """The log entry refusing the routed ``order`` (no fill yet: REJECTED needs ROUTED)."""
    return status_entry(order, OrderState.REJECTED, now_ns, reason)


def cancel_entry(order: Order, now_ns: int, reason: int = 0) -> ExecutionReport:
    """The log entry cancelling the working ``order``."""
    return status_entry(order, OrderState.CANCELLED, now_ns, reason)


def end_entry(order: Order, now_ns: int, reason: int) -> ExecutionReport:
    """The log entry ending the working ``order`` for ``reason``: REJECTED while nothing is
    filled (the lifecycle has no reject after a fill), CANCELLED after."""
    state = OrderState.REJECTED if order.state is OrderState.ROUTED else OrderState.CANCELLED
    return status_entry(order, state, now_ns, reason)


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


Later = Literal["later"]
LATER: Final[Later] = "later"


class Batch:
    """The decisions of one batch, in the order they are taken (:attr:`entries`: what to
    append, in one store call)."""

    def __init__(self, now_ns: int, *, fill_lots: float = 0.0) -> None:
        self.now_ns = now_ns
        self.fill_lots = fill_lots
        self.entries: list[ExecutionReport] = []
        self._after: dict[str, Order] = {}  # order id -> the order with its entries applied

    def order(self, order: Order) -> Order:
        """``order`` as this batch's decisions leave it."""
        return self._after.get(order.order_id, order)

    def decided(self, order_id: str) -> bool:
        """Whether this batch holds an entry for the order."""
        return order_id in self._after

    def decide(self, order: Order, quote: Quote | None) -> ExecutionReport | None:
        """:func:`decide` for ``order`` as the batch leaves it; the entry joins the batch."""
        current = self.order(order)
        entry = decide(current, quote, self.now_ns, fill_lots=self.fill_lots)
        return None if entry is None else self._add(current, entry)

    def reject(self, order: Order) -> ExecutionReport:
        """:func:`reject_entry` for ``order`` as the batch leaves it; it joins the batch."""
        current = self.order(order)
        return self._add(current, reject_entry(current, self.now_ns))

    def answer(self, order: Order, request: ExecutorRequest
               ) -> ExecutionReport | ReplaceRefused | Later | None:
        """:func:`answer` for ``order`` as the batch leaves it (an entry joins the batch), or
        :data:`LATER` when that answer is not an entry and the batch decided the order."""
        current = self.order(order)
        got = answer(current, request, self.now_ns)
        if isinstance(got, ExecutionReport):
            return self._add(current, got)
        return LATER if self.decided(order.order_id) else got

    def _add(self, order: Order, entry: ExecutionReport) -> ExecutionReport:
        self._after[order.order_id] = order.apply(entry, epoch=order.epoch, now_ns=self.now_ns)
        self.entries.append(entry)
        return entry


__all__ = [
    "LATER",
    "Batch",
    "Later",
    "answer",
    "cancel_entry",
    "decide",
    "end_entry",
    "exec_id",
    "marketable",
    "over_capacity",
    "reject_entry",
    "replace_entry",
    "status_entry",
]
