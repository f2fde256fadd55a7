"""The terminal's facts about an order, turned into the entries its execution log lacks
(sans-I/O; docs/PROTOCOL.md section 18.3).

Rules:

* Facts are the terminal's *whole* picture of one order, never a delta, so the entries follow
  from what the log holds (``order``: the backend's record with the log folded in), and facts
  repeated, reordered or older than the log add nothing.
* Deals are taken in ticket order. Those whose running total is within the log's
  ``filled_quantity`` are in the log already; each later one is one fill entry at its volume
  (the part of it beyond the log's total, should a deal straddle it) and price. The total never
  exceeds the order's quantity: a deal beyond it is a terminal-side over-fill, never logged
  (:func:`overfill` says how much, for the caller to count).
* Then a final status the log lacks: REJECTED reason VENUE_REJECTED for an order without
  fills, CANCELLED for a working one (reason VENUE_REJECTED unless the executor asked for the
  cancel). A terminal REJECTED after deals cannot be logged as a reject (the lifecycle has no
  reject after a fill): the rest is dead at the terminal, so it is CANCELLED, VENUE_REJECTED.
* A pending replace (the executor sent MODIFY for it) whose price the terminal now has is the
  replace entry, carrying the replace request's client order id, ahead of the fills (a fill
  after it is at the new terms; one before it does not change with them). MODIFY_REFUSED is a
  :class:`ReplaceRefused` (BAD_PRICE, with the retcode). A pending replace of an order the
  facts finish is refused NOT_CANCELLABLE: nothing else will answer it.
* Entries take consecutive positions from ``order.exec_seq + 1`` with the exec ids of
  ``protocols.orders.execution.exec_id``; each applies to the record the previous one leaves.
"""

from __future__ import annotations

from protocols.ea.messages import FactStatus, OrderFacts
from protocols.orders.execution import exec_id, status_entry
from protocols.orders.fields import above, same
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import ExecutionReport, RejectReason, ReplaceRefused, ReplaceRequest
from protocols.orders.record import Order, amend_reason


def entries_from_facts(order: Order, facts: OrderFacts, now_ns: int, *, cancel_asked: bool,
                       replace: ReplaceRequest | None
                       ) -> tuple[list[ExecutionReport], ReplaceRefused | None]:
    """The log entries that bring ``order``'s log up to ``facts``, and the refusal of the
    pending ``replace`` the facts decide (None: no answer to it yet, or none pending)."""
    if facts.order_id != order.order_id:
        raise ValueError(f"facts of {facts.order_id!r} for order {order.order_id!r}")
    entries: list[ExecutionReport] = []
    current = order

    def add(entry: ExecutionReport) -> None:
        nonlocal current
        entries.append(entry)
        current = current.apply(entry, epoch=current.epoch, now_ns=now_ns)

    def seq() -> int:
        return current.exec_seq + 1

    replaced = False
    if (replace is not None and facts.price > 0 and replace.price is not None
            and same(facts.price, replace.price)
            and not same(facts.price, current.price or 0.0)
            and amend_reason(current, replace.quantity, replace.price) is None):
        n = seq()
        add(current.replace_report(replace.quantity, replace.price,
                                   exec_id=exec_id(order.order_id, n), epoch=current.epoch,
                                   transact_ns=now_ns,
                                   client_order_id=replace.client_order_id, seq=n))
        replaced = True

    total = 0.0
    for deal in sorted(facts.deals, key=lambda d: d.ticket):
        total += deal.volume
        if not above(total, current.filled_quantity):
            continue  # in the log already
        leaves = current.quantity - current.filled_quantity
        if current.terminal or not above(leaves, 0.0):
            break  # an over-fill at the terminal: overfill() counts it
        n = seq()
        add(current.fill_report(total - current.filled_quantity, deal.price, seq=n,
                                exec_id=exec_id(order.order_id, n), transact_ns=now_ns))

    if not current.terminal:
        final = _final_status(current, facts.status, cancel_asked)
        if final is not None:
            state, reason = final
            add(status_entry(current, state, now_ns, reason))

    refused: ReplaceRefused | None = None
    if replace is not None and not replaced:
        if current.terminal:
            refused = ReplaceRefused(order.order_id, RejectReason.NOT_CANCELLABLE,
                                     f"the order is {current.state.name} at the terminal")
        elif facts.status is FactStatus.MODIFY_REFUSED:
            refused = ReplaceRefused(order.order_id, RejectReason.BAD_PRICE,
                                     f"the terminal refused the new price (retcode "
                                     f"{facts.retcode})")
    return entries, refused


def _final_status(order: Order, status: FactStatus, cancel_asked: bool
                  ) -> tuple[OrderState, int] | None:
    """The final entry the working ``order``'s log lacks for the terminal's ``status``."""
    if status is FactStatus.REJECTED:
        if order.state is OrderState.ROUTED:
            return OrderState.REJECTED, RejectReason.VENUE_REJECTED
        return OrderState.CANCELLED, RejectReason.VENUE_REJECTED  # deals first: see the rules
    if status is FactStatus.CANCELLED:
        return OrderState.CANCELLED, 0 if cancel_asked else RejectReason.VENUE_REJECTED
    return None  # WORKING, MODIFY_REFUSED: still working; FILLED: the deals said it all


def overfill(order: Order, facts: OrderFacts) -> float:
    """How many lots the terminal's deals hold beyond what ``order``'s log can take (0: none):
    more than the order's quantity, or deals of an order the log has finished without them."""
    dealt = facts.filled
    limit = order.filled_quantity if order.terminal else order.quantity
    return dealt - limit if above(dealt, limit) else 0.0


__all__ = ["entries_from_facts", "overfill"]
