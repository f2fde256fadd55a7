"""Order messages: the requests of clients, the backend's answers, execution reports and the
requests between the backend and the executor (sans-I/O).

Rules:

* An order is identified by the client as ``(account, client_order_id)``; that pair is the
  idempotency key (:func:`idempotency`). The same key with the same content is a *duplicate*
  (answer with the order's current state); with different content it is a *conflict*
  (``DUPLICATE_DIFFERENT``). A cancel and a replace carry their own client order id (FIX
  style) and name the order they act on by ``target_client_order_id``.
* The backend gives every accepted order an ``order_id``; the executor is idempotent by it, and
  every report it sends carries a unique ``exec_id``.
* Every state change after NEW is an :class:`ExecutionReport` (the lifecycle is
  ``protocols.orders.lifecycle``); a replace is a report too (``quantity`` > 0: the new working
  terms).
* The backend asks the executor to decide with a :class:`CancelRequest` or a
  :class:`ReplaceRequest` (not reports: they have no log position); the executor answers with
  the log's entry, or refuses a replace with a :class:`ReplaceRefused` naming the order.
* Every message validates on construction (``protocols.orders.fields``) and raises
  :class:`~protocols.errors.InvalidOrder` naming the field.

Wire encoding lives in ``protocols.orders.codec``; the backend's record of an order in
``protocols.orders.record``; pre-trade checks in ``protocols.orders.risk``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from protocols.errors import InvalidOrder, LocalProtocolError
from protocols.orders.fields import (
    above,
    check_count,
    check_enum,
    check_epoch,
    check_id,
    check_ns,
    not_negative,
    number,
    positive,
)
from protocols.orders.lifecycle import (
    FILL_EVENTS,
    REPORT_EVENTS,
    OrderEvent,
    OrderState,
    check_progress,
)


class Side(IntEnum):
    """Order side; the values are FIX tag 54's."""

    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    """Order type; the values are FIX tag 40's."""

    MARKET = 1
    LIMIT = 2


class RejectReason(IntEnum):
    """Why a request was refused. ``retryable`` ones may succeed if sent again unchanged."""

    UNKNOWN_SYMBOL = 1
    BAD_SIDE = 2
    BAD_QUANTITY = 3
    QUANTITY_LIMIT = 4
    BAD_PRICE = 5
    PRICE_BAND = 6  # outside the band around the last mid, or no market data to price against
    EXPOSURE_LIMIT = 7
    DUPLICATE_DIFFERENT = 8  # the client order id was already used for a different order
    NOT_ACTIVE = 9  # this backend is passive: try the other one
    STORE_UNAVAILABLE = 10  # the order could not be checkpointed: try again
    FENCED = 11  # this backend lost the epoch to a newer active: try the other one
    UNKNOWN_ORDER = 12  # cancel or replace of an order this account never sent
    NOT_CANCELLABLE = 13  # the target is terminal (or not yet accepted)
    MALFORMED = 14
    EXECUTOR_UNAVAILABLE = 15  # a replace got no answer from the executor in time: resend it
    BUSY = 16  # the active backend is at its admission bound: resend after ``retry_after_ms``
    # An executor report's reasons (ExecutionReport.reason, REJECTED or CANCELLED):
    NO_EXECUTOR = 17  # no EA instance took the order within [orders] ea_hold_ms: send anew
    VENUE_REJECTED = 18  # the terminal (MT5) refused it; the executor's log says the retcode

    @property
    def retryable(self) -> bool:
        """True if the request was not recorded and may be sent again with the same id."""
        return self in _RETRYABLE


_RETRYABLE = frozenset({RejectReason.NOT_ACTIVE, RejectReason.STORE_UNAVAILABLE,
                        RejectReason.FENCED, RejectReason.EXECUTOR_UNAVAILABLE,
                        RejectReason.BUSY, RejectReason.NO_EXECUTOR})

MAX_RETRY_AFTER_MS = 60_000  # a back-off hint beyond a minute is a bug, not a hint


def check_price(order_type: OrderType, price: object) -> None:
    if order_type is OrderType.MARKET:
        if price is not None:
            raise InvalidOrder("price", f"must be None for a MARKET order, got {price!r}")
    elif price is None:
        raise InvalidOrder("price", "must be a number > 0 for a LIMIT order, got None")
    else:
        positive("price", price)


def _distinct(client_order_id: str, target: str) -> None:
    if client_order_id == target:
        raise InvalidOrder("client_order_id", "must differ from target_client_order_id "
                                              "(a cancel or replace has its own id)")


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A client's order. ``price`` is None for MARKET and the limit for LIMIT; ``sent_ns`` is the
    client's clock when it (first) sent the order and is not part of the idempotency check."""

    account: str
    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: float
    price: float | None
    sent_ns: int

    def __post_init__(self) -> None:
        check_id("account", self.account)
        check_id("client_order_id", self.client_order_id)
        check_id("symbol", self.symbol)
        check_enum("side", self.side, Side)
        check_enum("type", self.type, OrderType)
        positive("quantity", self.quantity)
        check_price(self.type, self.price)
        check_ns("sent_ns", self.sent_ns)


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Cancel the order ``target_client_order_id`` of ``account``."""

    account: str
    client_order_id: str
    target_client_order_id: str

    def __post_init__(self) -> None:
        check_id("account", self.account)
        check_id("client_order_id", self.client_order_id)
        check_id("target_client_order_id", self.target_client_order_id)
        _distinct(self.client_order_id, self.target_client_order_id)


@dataclass(frozen=True, slots=True)
class ReplaceOrder:
    """Change the quantity and price of a working order. ``price`` follows the order's type
    (None for MARKET); ``quantity`` is the new total, filled part included."""

    account: str
    client_order_id: str
    target_client_order_id: str
    quantity: float
    price: float | None

    def __post_init__(self) -> None:
        check_id("account", self.account)
        check_id("client_order_id", self.client_order_id)
        check_id("target_client_order_id", self.target_client_order_id)
        _distinct(self.client_order_id, self.target_client_order_id)
        positive("quantity", self.quantity)
        if self.price is not None:
            positive("price", self.price)


OrderRequest = NewOrder | CancelOrder | ReplaceOrder


# --- replies and reports ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderAck:
    """The backend took the request ``client_order_id``: the order ``order_id`` is in ``state``
    (for a duplicate, whatever state it has reached; for a cancel or replace, the target's)."""

    client_order_id: str
    order_id: str
    state: OrderState
    epoch: int

    def __post_init__(self) -> None:
        check_id("client_order_id", self.client_order_id)
        check_id("order_id", self.order_id)
        check_enum("state", self.state, OrderState)
        if self.state is OrderState.NEW:
            raise InvalidOrder("state", "NEW is never acknowledged (the backend decides first)")
        check_epoch("epoch", self.epoch)


@dataclass(frozen=True, slots=True)
class OrderReject:
    """The request ``client_order_id`` was refused. ``client_order_id`` is "" when it could not
    be read from a malformed request. ``retry_after_ms`` is a back-off hint (0: none): a BUSY
    backend asks the client to resend the same request to it after that long."""

    client_order_id: str
    reason: RejectReason
    message: str
    retry_after_ms: int = 0

    def __post_init__(self) -> None:
        if self.client_order_id != "":
            check_id("client_order_id", self.client_order_id)
        check_enum("reason", self.reason, RejectReason)
        if not isinstance(self.message, str):
            raise InvalidOrder("message", f"must be a string, got {type(self.message).__name__}")
        if type(self.retry_after_ms) is not int or not 0 <= self.retry_after_ms \
                <= MAX_RETRY_AFTER_MS:
            raise InvalidOrder("retry_after_ms", f"must be an integer in [0, "
                                                 f"{MAX_RETRY_AFTER_MS}], got "
                                                 f"{self.retry_after_ms!r}")

    @property
    def retryable(self) -> bool:
        return self.reason.retryable


OrderReply = OrderAck | OrderReject

# The active backend tells each client with requests in service "still working on them" this
# often: well inside the client's shortest request timeout (50 ms), so a held request is not
# re-sent even once. A client keeps waiting PENDING_HOLD_S after the last notice instead of
# sending again.
PENDING_INTERVAL_S = 0.025
PENDING_HOLD_S = 0.5  # twenty notices: a few late ones are not a death
# A notice speaks for the requests in service this long or more (the backend counts only
# those, a client holds only those it sent that long ago): a request answered in a few
# milliseconds never holds its client back from failing over.
PENDING_AFTER_S = 0.02


@dataclass(frozen=True, slots=True)
class OrderPending:
    """Not an answer: the active backend has ``in_service`` requests of this client in service
    (held while the store is failed over, or queued behind a burst), and their answers follow.

    Why: without it a client's request timeout is its only clue, and a slow backend looks like
    a dead one. Each client then re-sent every held order every timeout, to the passive
    backend (NOT_ACTIVE) and back, and the Redis drill saw 100,000+ retries for 16,000 orders,
    a saturated machine and backends failing over. A notice is per client, not per order, and
    repeated every :data:`PENDING_INTERVAL_S` while any request is in service: a backend that
    dies stops sending, and its clients fail over :data:`PENDING_HOLD_S` later at the most."""

    in_service: int

    def __post_init__(self) -> None:
        if not isinstance(self.in_service, int) or isinstance(self.in_service, bool) \
                or self.in_service < 0:
            raise InvalidOrder("in_service", f"must be an integer >= 0, got "
                               f"{self.in_service!r}")


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    """One state change of one order: from the executor (fills, its own rejects, cancels,
    expiries and replaces) or from the backend (accept, route), published for frontends.

    ``filled_quantity`` and ``avg_price`` are cumulative; ``last_quantity`` and ``last_price``
    describe this fill (both 0 for a report that is not a fill). ``exec_id`` is unique per
    report. ``transact_ns`` is when it happened by the producer's clock (0: unknown).

    ``reason`` (0: none) says why a REJECTED or CANCELLED entry of the executor's was taken
    when the executor knows (:class:`RejectReason`: NO_EXECUTOR, VENUE_REJECTED).

    ``seq`` is the report's position in the executor's log of the order (1, 2, ...): the
    executor decides an order's fate by appending to that log, and the backend applies the
    entries in order (see :meth:`Order.position`). 0 for reports the backend makes itself
    (accept, route: exec ids :data:`EXEC_ACCEPT`, :data:`EXEC_ROUTE`).

    A report with ``quantity`` > 0 is a *replace* (FIX ExecType "Replaced"): the order's working
    terms become ``quantity`` (the new total, filled part included) and ``price`` (None for a
    MARKET order); its state does not change. ``quantity`` is 0 and ``price`` None otherwise.
    """

    order_id: str
    client_order_id: str
    account: str
    symbol: str
    side: Side
    state: OrderState
    filled_quantity: float
    last_quantity: float
    last_price: float
    avg_price: float
    epoch: int
    exec_id: str
    transact_ns: int = 0
    seq: int = 0
    quantity: float = 0.0
    price: float | None = None
    reason: int = 0

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        check_id("client_order_id", self.client_order_id)
        if self.reason and self.reason not in RejectReason.__members__.values():
            raise InvalidOrder("reason", f"must be 0 or a RejectReason, got {self.reason!r}")
        check_id("account", self.account)
        check_id("symbol", self.symbol)
        check_enum("side", self.side, Side)
        check_enum("state", self.state, OrderState)
        if self.state is OrderState.NEW:
            raise InvalidOrder("state", "NEW is never reported")
        check_progress(self.state, self.filled_quantity, self.avg_price)
        not_negative("quantity", self.quantity)
        if self.is_replace:
            if not self.state.replaceable:
                raise InvalidOrder("quantity", f"a replace (quantity > 0) in state "
                                               f"{self.state.name}: only a working order is "
                                               "replaced")
            if self.price is not None:
                positive("price", self.price)
        elif self.price is not None:
            raise InvalidOrder("price", "must be None unless the report is a replace")
        if self.is_fill:
            positive("last_quantity", self.last_quantity)
            positive("last_price", self.last_price)
            if above(self.last_quantity, self.filled_quantity):
                raise InvalidOrder("last_quantity", f"{self.last_quantity!r} above "
                                                    f"filled_quantity {self.filled_quantity!r}")
        else:
            for field in ("last_quantity", "last_price"):
                if number(field, getattr(self, field)) != 0:
                    raise InvalidOrder(field, f"must be 0 in a {self.event.name} report")
        check_epoch("epoch", self.epoch)
        check_id("exec_id", self.exec_id)
        check_ns("transact_ns", self.transact_ns)
        check_count("seq", self.seq)

    @property
    def is_replace(self) -> bool:
        return self.quantity > 0

    @property
    def event(self) -> OrderEvent:
        """The lifecycle event this report stands for."""
        return OrderEvent.REPLACE if self.is_replace else REPORT_EVENTS[self.state]

    @property
    def is_fill(self) -> bool:
        return self.event in FILL_EVENTS


EXEC_ACCEPT = "accept"  # the exec id of the backend's ACCEPTED report
EXEC_ROUTE = "route"  # the exec id of the backend's ROUTED report


# --- between the backend and the executor ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """The backend asks the executor to cancel the order ``order_id``. The executor decides
    against the order's execution log (a fill may have won); its answer is the log's entry.
    ``sent_ns`` is the backend's clock when it asked (0: unknown)."""

    order_id: str
    epoch: int
    sent_ns: int = 0

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        check_epoch("epoch", self.epoch)
        check_ns("sent_ns", self.sent_ns)


@dataclass(frozen=True, slots=True)
class ReplaceRequest:
    """The backend asks the executor to give the order ``order_id`` the working terms
    ``quantity`` (the new total, filled part included) and ``price`` (None for a MARKET
    order), for the client's replace ``client_order_id``. The executor answers with the
    log's replace entry (carrying ``client_order_id``) or a :class:`ReplaceRefused`."""

    order_id: str
    client_order_id: str
    quantity: float
    price: float | None
    epoch: int
    sent_ns: int = 0

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        check_id("client_order_id", self.client_order_id)
        positive("quantity", self.quantity)
        if self.price is not None:
            positive("price", self.price)
        check_epoch("epoch", self.epoch)
        check_ns("sent_ns", self.sent_ns)


@dataclass(frozen=True, slots=True)
class ReplaceRefused:
    """The executor refuses the replace of ``order_id``: the order cannot take the terms any
    more (terminal, or filled up to the new quantity meanwhile; ``reason`` says which)."""

    order_id: str
    reason: RejectReason
    message: str

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        check_enum("reason", self.reason, RejectReason)
        if not isinstance(self.message, str):
            raise InvalidOrder("message", f"must be a string, got {type(self.message).__name__}")


class EntryRefusal(IntEnum):
    """Why the active backend did not decide a proposed log entry (see :class:`EntryRefused`)."""

    NOT_ACTIVE = 1  # this node does not decide: not the active one (ask the other)
    UNKNOWN_ORDER = 2  # no record of the order
    GAP = 3  # the log ends before the position: ``at`` is its last one
    INVALID = 4  # the entry does not apply to the order (its lifecycle or quantities)
    STORE = 5  # the pair could not make it durable now (decide again later)


@dataclass(frozen=True, slots=True)
class EntryRefused:
    """The active backend's answer to an executor's proposed entry at ``seq`` of ``order_id``'s
    log that it did not decide (an entry it decided, or that held the position already, is
    answered with that entry itself). ``at``: the last position of the log it holds (0: none or
    unknown)."""

    order_id: str
    seq: int
    reason: EntryRefusal
    at: int = 0

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        check_enum("reason", self.reason, EntryRefusal)
        for name in ("seq", "at"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOrder(name, f"must be an int >= 0, got {value!r}")


ExecutorRequest = CancelRequest | ReplaceRequest


def idempotency(existing: OrderRequest | None, incoming: OrderRequest
                ) -> Literal["new", "duplicate", "conflict"]:
    """Classify ``incoming`` against the request ``existing`` stored under the same
    ``(account, client_order_id)``: "new" (none stored), "duplicate" (same content: answer with
    the current state) or "conflict" (different content: refuse with DUPLICATE_DIFFERENT).

    A NewOrder's ``sent_ns`` is ignored: a client may re-stamp a retry.
    """
    if existing is None:
        return "new"
    if (existing.account, existing.client_order_id) != (incoming.account,
                                                         incoming.client_order_id):
        raise LocalProtocolError(f"idempotency check across keys: {existing.account!r}/"
                                 f"{existing.client_order_id!r} vs {incoming.account!r}/"
                                 f"{incoming.client_order_id!r}")
    return "duplicate" if _content(existing) == _content(incoming) else "conflict"


def _content(request: OrderRequest) -> OrderRequest:
    if isinstance(request, NewOrder):
        return dataclasses.replace(request, sent_ns=0)
    return request


_FIELD_REJECTS = {
    "side": RejectReason.BAD_SIDE,
    "quantity": RejectReason.BAD_QUANTITY,
    "price": RejectReason.BAD_PRICE,
    "symbol": RejectReason.UNKNOWN_SYMBOL,
}


def reject_reason_for(error: InvalidOrder) -> RejectReason:
    """The reject reason for a request that failed validation on ``error.field``."""
    return _FIELD_REJECTS.get(error.field, RejectReason.MALFORMED)


__all__ = [
    "EXEC_ACCEPT",
    "EXEC_ROUTE",
    "MAX_RETRY_AFTER_MS",
    "PENDING_AFTER_S",
    "PENDING_HOLD_S",
    "PENDING_INTERVAL_S",
    "CancelOrder",
    "CancelRequest",
    "EntryRefusal",
    "EntryRefused",
    "ExecutionReport",
    "ExecutorRequest",
    "NewOrder",
    "OrderAck",
    "OrderPending",
    "OrderReject",
    "OrderReply",
    "OrderRequest",
    "OrderType",
    "RejectReason",
    "ReplaceOrder",
    "ReplaceRefused",
    "ReplaceRequest",
    "Side",
    "check_price",
    "idempotency",
    "reject_reason_for",
]
