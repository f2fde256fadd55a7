"""The backend's record of an order, and the open orders with their exposure (sans-I/O).

Rules:

* :meth:`Order.apply` checks every execution report against the lifecycle table
  (``protocols.orders.lifecycle``) and the quantities: filled never decreases, never exceeds
  the quantity, a FILL fills it exactly.
* The executor owns a working order: it decides fills, cancels and replaces by appending
  reports to a per-order log (positions ``seq`` 1, 2, ...). The record remembers the last
  position it applied (``exec_seq``) and applies the log strictly in order
  (:meth:`Order.position`): a replayed entry is skipped, a gap is repaired by asking the executor
  to replay, so a backend that took over converges on exactly the executor's history.
* Fencing: every backend write carries the epoch of the active backend (epochs start at 1; see
  ``protocols.orders.binary_star``). A write with an epoch below the record's raises
  :class:`~protocols.errors.Fenced`.
* :func:`check_amend` and :func:`amend_reason` say whether a cancel or a replace can act on a
  record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from protocols.errors import Fenced, InvalidOrder, OrderStateError
from protocols.orders.fields import (
    above,
    check_count,
    check_enum,
    check_epoch,
    check_id,
    check_ns,
    mean_after,
    positive,
    same,
)
from protocols.orders.lifecycle import (
    TRANSITIONS,
    OrderEvent,
    OrderState,
    check_progress,
    next_state,
)
from protocols.orders.messages import (
    CancelOrder,
    CancelRequest,
    EntryRefusal,
    EntryRefused,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderPending,
    OrderReject,
    OrderType,
    RejectReason,
    ReplaceOrder,
    ReplaceRefused,
    ReplaceRequest,
    check_price,
)

# --- the backend's record --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    """What the backend keeps per order (and checkpoints in the store).

    ``order`` is the :class:`NewOrder` as first received: the idempotency record, never changed.
    ``quantity`` and ``price`` are the working terms (the last replace's, else the order's).
    ``epoch`` and ``updated_ns`` are those of the last write. ``exec_seq`` is the position of
    the last entry of the executor's log applied (0: none yet). ``client_id`` is the session
    (ZeroMQ routing id) the order came from, so that a backend that takes over sends its reports
    to the same client ("": unknown).
    """

    order_id: str
    order: NewOrder
    state: OrderState
    filled_quantity: float
    avg_price: float
    epoch: int
    updated_ns: int
    quantity: float
    price: float | None
    exec_seq: int = 0
    client_id: str = ""

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        if not isinstance(self.order, NewOrder):
            raise InvalidOrder("order", f"must be a NewOrder, got {type(self.order).__name__}")
        check_enum("state", self.state, OrderState)
        check_progress(self.state, self.filled_quantity, self.avg_price)
        check_epoch("epoch", self.epoch)
        check_ns("updated_ns", self.updated_ns)
        positive("quantity", self.quantity)
        check_price(self.order.type, self.price)
        check_count("exec_seq", self.exec_seq)
        if self.client_id != "":
            check_id("client_id", self.client_id)
        if above(self.filled_quantity, self.quantity):
            raise InvalidOrder("filled_quantity", f"{self.filled_quantity!r} above quantity "
                                                  f"{self.quantity!r}")
        complete = same(self.filled_quantity, self.quantity)
        if complete != (self.state is OrderState.FILLED):
            raise InvalidOrder("filled_quantity", f"{self.filled_quantity!r} of "
                                                  f"{self.quantity!r} in state {self.state.name}")

    @classmethod
    def from_new(cls, order_id: str, order: NewOrder, *, epoch: int, now_ns: int,
                 client_id: str = "") -> Order:
        """The record of a freshly received order, in state NEW."""
        return cls(order_id, order, OrderState.NEW, 0.0, 0.0, epoch, now_ns, order.quantity,
                   order.price, client_id=client_id)

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def leaves_quantity(self) -> float:
        """What is still to be filled: 0 once the order is terminal."""
        return 0.0 if self.terminal else max(0.0, self.quantity - self.filled_quantity)

    def position(self, report: ExecutionReport) -> Literal["next", "applied", "gap"]:
        """Where an executor report stands against this record: the ``next`` one to apply,
        one ``applied`` already (a replay: ignore it), or beyond a ``gap`` (reports in between
        were lost: ask the executor to replay them). Reports with ``seq`` 0 are always next."""
        if report.seq == 0 or report.seq == self.exec_seq + 1:
            return "next"
        return "applied" if report.seq <= self.exec_seq else "gap"

    def apply(self, report: ExecutionReport, *, epoch: int, now_ns: int) -> Order:
        """The record after ``report``, written under ``epoch`` at ``now_ns``.

        Raises :class:`OrderStateError` if the report is not the next one of the executor's
        log (see :meth:`position`), its event is not allowed by the table, or its quantities
        are inconsistent; and :class:`Fenced` if ``epoch`` is older than the record's. The
        record's ``avg_price`` is computed from the fills, not copied from the report.
        """
        event = report.event
        for field in ("order_id", "account", "symbol", "side"):
            mine = self.order_id if field == "order_id" else getattr(self.order, field)
            if getattr(report, field) != mine:
                raise OrderStateError(self.state, event, f"report {field} "
                                      f"{getattr(report, field)!r} is not this order's {mine!r}")
        where = self.position(report)
        if where != "next":
            raise OrderStateError(self.state, event, f"report {report.seq} of the executor's "
                                  f"log is {where} (the record is at {self.exec_seq})")
        state = next_state(self.state, event)
        self._check_write(epoch, now_ns)
        exec_seq = report.seq or self.exec_seq
        if above(self.filled_quantity, report.filled_quantity):
            raise OrderStateError(self.state, event, f"filled quantity would decrease from "
                                  f"{self.filled_quantity!r} to {report.filled_quantity!r}")
        if event is OrderEvent.REPLACE:
            reason = amend_reason(self, report.quantity, report.price)
            if reason is not None:
                raise OrderStateError(self.state, event, f"{reason.name}: {_AMEND_TEXT[reason]}")
            return dataclasses.replace(self, quantity=report.quantity, price=report.price,
                                       epoch=epoch, updated_ns=now_ns, exec_seq=exec_seq)
        if above(report.filled_quantity, self.quantity):
            raise OrderStateError(self.state, event, f"filled quantity "
                                  f"{report.filled_quantity!r} exceeds quantity {self.quantity!r}")
        filled, avg = self.filled_quantity, self.avg_price
        if report.is_fill:
            filled, avg = self._fill(event, report)
        elif not same(report.filled_quantity, filled):
            raise OrderStateError(self.state, event, f"filled quantity changes from {filled!r} "
                                  f"to {report.filled_quantity!r} without a fill")
        return dataclasses.replace(self, state=state, filled_quantity=filled, avg_price=avg,
                                   epoch=epoch, updated_ns=now_ns, exec_seq=exec_seq)

    def _fill(self, event: OrderEvent, report: ExecutionReport) -> tuple[float, float]:
        """The filled quantity and average price after the fill ``report``."""
        filled, avg = self.filled_quantity, self.avg_price
        if not same(report.filled_quantity, filled + report.last_quantity):
            raise OrderStateError(self.state, event, f"filled quantity "
                                  f"{report.filled_quantity!r} is not {filled!r} + last "
                                  f"{report.last_quantity!r}")
        complete = same(report.filled_quantity, self.quantity)
        if event is OrderEvent.FILL and not complete:
            raise OrderStateError(self.state, event, f"a FILL must fill {self.quantity!r}, "
                                  f"filled {report.filled_quantity!r}")
        if event is OrderEvent.PARTIAL_FILL and complete:
            raise OrderStateError(self.state, event, "this fill completes the order: it "
                                  "must be a FILL")
        avg = mean_after(filled, avg, report.last_quantity, report.last_price)
        return (self.quantity if complete else report.filled_quantity), avg

    def fill_report(self, quantity: float, price: float, *, seq: int, exec_id: str,
                    transact_ns: int = 0) -> ExecutionReport:
        """The executor's report filling ``quantity`` more of this working order at ``price``
        (capped at what is left): FILLED if that completes it, else PARTIALLY_FILLED."""
        leaves = self.quantity - self.filled_quantity
        quantity = min(quantity, leaves)
        complete = same(quantity, leaves)
        filled = self.quantity if complete else self.filled_quantity + quantity
        avg = mean_after(self.filled_quantity, self.avg_price, quantity, price)
        o = self.order
        return ExecutionReport(self.order_id, o.client_order_id, o.account, o.symbol, o.side,
                               OrderState.FILLED if complete else OrderState.PARTIALLY_FILLED,
                               filled, quantity, price, avg, self.epoch, exec_id, transact_ns,
                               seq)

    def status_report(self, state: OrderState, *, exec_id: str, epoch: int,
                      transact_ns: int = 0, client_order_id: str | None = None,
                      seq: int = 0, reason: int = 0) -> ExecutionReport:
        """A report (not a fill) moving this order to ``state``: ACCEPTED, ROUTED, REJECTED,
        CANCELLED or EXPIRED. ``client_order_id`` defaults to the order's own; ``reason`` is
        a RejectReason the executor knows (0: none)."""
        o = self.order
        return ExecutionReport(self.order_id, client_order_id or o.client_order_id, o.account,
                               o.symbol, o.side, state, self.filled_quantity, 0.0, 0.0,
                               self.avg_price, epoch, exec_id, transact_ns, seq,
                               reason=reason)

    def replace_report(self, quantity: float, price: float | None, *, exec_id: str, epoch: int,
                       transact_ns: int = 0, client_order_id: str | None = None,
                       seq: int = 0) -> ExecutionReport:
        """A replace of this order's working terms (the executor's decision, at its log
        position ``seq``)."""
        o = self.order
        return ExecutionReport(self.order_id, client_order_id or o.client_order_id, o.account,
                               o.symbol, o.side, self.state, self.filled_quantity, 0.0, 0.0,
                               self.avg_price, epoch, exec_id, transact_ns, seq, quantity, price)

    def _check_write(self, epoch: int, now_ns: int) -> None:
        check_epoch("epoch", epoch)
        check_ns("now_ns", now_ns)
        if epoch < self.epoch:
            raise Fenced(epoch, self.epoch)


class OpenOrders:
    """The active backend's open orders by id, with each account's exposure kept up to date.

    Exposure (see :class:`Limits`) was a scan of every open order per new order: quadratic
    once thousands are open (a backlog after a store failover), and the largest cost of the
    backend's CPU in the Redis failover drill. Here it is a running sum per account, updated
    as orders are put and removed; an account's sum restarts from exactly 0 when its last open
    order goes, so rounding never accumulates across bursts.
    """

    def __init__(self, orders: Iterable[Order] = ()) -> None:
        self._orders: dict[str, Order] = {}
        self._exposure: dict[str, float] = {}
        self._count: dict[str, int] = {}
        for order in orders:
            self.put(order)

    @staticmethod
    def notional(order: Order) -> float:
        """What the order adds to its account's exposure (MARKET orders count 0: they fill at
        once or are rejected)."""
        return order.leaves_quantity * (order.price or 0.0)

    def put(self, order: Order) -> None:
        self.remove(order.order_id)
        account = order.order.account
        self._orders[order.order_id] = order
        self._exposure[account] = self._exposure.get(account, 0.0) + self.notional(order)
        self._count[account] = self._count.get(account, 0) + 1

    def remove(self, order_id: str) -> Order | None:
        order = self._orders.pop(order_id, None)
        if order is not None:
            account = order.order.account
            self._count[account] -= 1
            if self._count[account] == 0:
                del self._count[account], self._exposure[account]
            else:
                self._exposure[account] -= self.notional(order)
        return order

    def clear(self) -> None:
        self._orders.clear()
        self._exposure.clear()
        self._count.clear()

    def get(self, order_id: str) -> Order | None:
        return self._orders.get(order_id)

    def exposure(self, account: str, excluding: str = "") -> float:
        """The account's exposure, without the order ``excluding`` (a replace's target)."""
        total = self._exposure.get(account, 0.0)
        other = self._orders.get(excluding)
        if other is not None and other.order.account == account:
            total -= self.notional(other)
        return max(0.0, total)

    def values(self) -> list[Order]:
        return list(self._orders.values())

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def __len__(self) -> int:
        return len(self._orders)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why :func:`judge_entry` does not decide an entry, with the detail for the log."""

    reason: EntryRefusal
    why: str


TAKEN: Final = "taken"


def judge_entry(order: Order | None, entry: ExecutionReport, *, epoch: int, now_ns: int
                ) -> Order | Literal["taken"] | Refusal:
    """The active backend's decision on an entry the executor proposes for ``order``'s log:
    the compare-and-set that makes each position of the log decided exactly once, whoever
    proposes (an executor and its restarted self, a fill racing a cancel), held by the pair.

    * the next position, and the entry applies: the record after it (decided, once the pair
      holds that record with the entry);
    * a position decided already: :data:`TAKEN` (answer with the entry there: either the
      proposal lost, or it is the same entry sent again);
    * else a :class:`Refusal`: no record (``UNKNOWN_ORDER``), a position past the log's end
      (``GAP``), or an entry the record cannot take (``INVALID``: no position, another order's
      fields, a transition or quantities the lifecycle refuses).

    Raises :class:`Fenced` if ``epoch`` is older than the record's."""
    if order is None:
        return Refusal(EntryRefusal.UNKNOWN_ORDER, f"no record of order {entry.order_id}")
    if entry.seq < 1:
        return Refusal(EntryRefusal.INVALID, f"entry {entry.exec_id} has no log position")
    where = order.position(entry)
    if where == "applied":
        return TAKEN
    if where == "gap":
        return Refusal(EntryRefusal.GAP, f"order {order.order_id}: entry {entry.seq} after "
                                         f"the log's end at {order.exec_seq}")
    try:
        return order.apply(entry, epoch=epoch, now_ns=now_ns)
    except OrderStateError as exc:
        return Refusal(EntryRefusal.INVALID, str(exc))


OrderMessage = (NewOrder | CancelOrder | ReplaceOrder | OrderAck | OrderReject
                | OrderPending | ExecutionReport | Order | CancelRequest | ReplaceRequest
                | ReplaceRefused | EntryRefused)

_AMEND_TEXT = {
    RejectReason.UNKNOWN_ORDER: "no such order for this account",
    RejectReason.NOT_CANCELLABLE: "the order cannot change in its state",
    RejectReason.BAD_QUANTITY: "the new quantity must be above the filled quantity",
    RejectReason.BAD_PRICE: "the price does not fit the order type",
}


def check_amend(target: Order | None, request: CancelOrder | ReplaceOrder
                ) -> RejectReason | None:
    """Why the cancel or replace ``request`` cannot act on ``target`` (None: it can).

    ``target`` is the order found under ``(request.account, request.target_client_order_id)``,
    or None. A target of another account is reported as unknown (ids are not disclosed). A
    terminal target, or one not accepted yet, is NOT_CANCELLABLE. Market limits for a replace's
    new terms are :func:`validate_replace`'s business.
    """
    if target is None or target.order.account != request.account:
        return RejectReason.UNKNOWN_ORDER
    if isinstance(request, CancelOrder):
        cancellable = OrderEvent.CANCEL in TRANSITIONS[target.state]
        return None if cancellable else RejectReason.NOT_CANCELLABLE
    return amend_reason(target, request.quantity, request.price)


def amend_reason(target: Order, quantity: float, price: float | None) -> RejectReason | None:
    """Why ``target`` cannot take the working terms ``quantity`` and ``price`` (None: it can).

    The executor asks this again when it decides, against fills the backend has not seen yet."""
    if not target.state.replaceable:
        return RejectReason.NOT_CANCELLABLE
    if not above(quantity, target.filled_quantity):
        return RejectReason.BAD_QUANTITY
    if (price is None) != (target.order.type is OrderType.MARKET):
        return RejectReason.BAD_PRICE
    return None


def amend_text(reason: RejectReason) -> str:
    """The words for a reason :func:`check_amend` gives."""
    return _AMEND_TEXT.get(reason, reason.name.lower())


__all__ = [
    "TAKEN",
    "OpenOrders",
    "Order",
    "OrderMessage",
    "Refusal",
    "amend_reason",
    "amend_text",
    "check_amend",
    "judge_entry",
]
