"""Orders: messages, the order lifecycle and pre-trade validation (sans-I/O).

Rules:

* An order is identified by the client as ``(account, client_order_id)``; that pair is the
  idempotency key. The same key with the same content is a *duplicate* (answer with the order's
  current state); with different content it is a *conflict* (``DUPLICATE_DIFFERENT``). A cancel
  and a replace carry their own client order id (FIX style) and name the order they act on by
  ``target_client_order_id``.
* The backend gives every accepted order an ``order_id``; the executor is idempotent by it, and
  every report it sends carries a unique ``exec_id``.
* The lifecycle is the table :data:`TRANSITIONS` (``state -> event -> next state``)::

      NEW --ACCEPT--> ACCEPTED --ROUTE--> ROUTED --PARTIAL_FILL--> PARTIALLY_FILLED --FILL--> FILLED
      NEW --REJECT--> REJECTED            ROUTED --FILL--> FILLED
                                          ROUTED --REJECT--> REJECTED   (the executor refused)
      ACCEPTED / ROUTED / PARTIALLY_FILLED --CANCEL--> CANCELLED, --EXPIRE--> EXPIRED,
                                           --REPLACE--> (same state, new quantity or price)

  FILLED, REJECTED, CANCELLED and EXPIRED are terminal: they take no event. An event the table
  does not list raises :class:`OrderStateError` naming state and event; nothing changes silently.
* Every state change after NEW is an :class:`ExecutionReport`; :meth:`Order.apply` checks it
  against the table and the quantities (filled never decreases, never exceeds the quantity, a
  FILL fills it exactly). A replace is a report too (``quantity`` > 0: the new working terms).
* The executor owns a working order: it decides fills, cancels and replaces by appending
  reports to a per-order log (positions ``seq`` 1, 2, ...). The backend's record remembers the
  last position it applied (``exec_seq``) and applies the log strictly in order
  (:meth:`Order.position`): a replayed entry is skipped, a gap is repaired by asking the executor
  to replay, so a backend that took over converges on exactly the executor's history.
* The backend asks the executor to decide with a :class:`CancelRequest` or a
  :class:`ReplaceRequest` (not reports: they have no log position); the executor answers with
  the log's entry, or refuses a replace with a :class:`ReplaceRefused` naming the order.
  Working-state names: :attr:`OrderState.replaceable` (a cancel or replace may act),
  :attr:`OrderState.at_executor` (the executor works it), :attr:`OrderState.unrouted`.
* Quantities are floats (lots); two quantities within :data:`QTY_REL_TOL` of each other are
  equal, so ``0.1 + 0.2`` lots fill a 0.3-lot order.
* Fencing: every backend write carries the epoch of the active backend (epochs start at 1; see
  ``protocols.orders.binary_star``). A write with an epoch below the record's raises
  :class:`Fenced`.
* Times are integers of nanoseconds since the Unix epoch (``*_ns``), from the caller's clock.

Wire encoding lives in ``protocols.orders.codec``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Literal

from protocols.errors import Fenced, InvalidOrder, LocalProtocolError, OrderStateError
from protocols.ticks.messages import check_stream

MAX_EPOCH = 2**63 - 1
QTY_REL_TOL = 1e-9  # relative tolerance when comparing quantities, prices and notionals
_QTY_ABS_TOL = 1e-12


class Side(IntEnum):
    """Order side; the values are FIX tag 54's."""

    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    """Order type; the values are FIX tag 40's."""

    MARKET = 1
    LIMIT = 2


class OrderState(IntEnum):
    NEW = 1
    ACCEPTED = 2
    ROUTED = 3
    PARTIALLY_FILLED = 4
    FILLED = 5
    REJECTED = 6
    CANCELLED = 7
    EXPIRED = 8

    @property
    def terminal(self) -> bool:
        """True if the order is done: no event can change it any more."""
        return not TRANSITIONS[self]

    @property
    def replaceable(self) -> bool:
        """True if the order is working: a cancel or a replace may still act on it
        (ACCEPTED, ROUTED, PARTIALLY_FILLED)."""
        return self in _REPLACEABLE

    @property
    def at_executor(self) -> bool:
        """True if the executor works the order: routed and not done (ROUTED,
        PARTIALLY_FILLED). The backend re-drives these; the executor takes only these."""
        return self in _AT_EXECUTOR

    @property
    def unrouted(self) -> bool:
        """True if the order was never sent to the executor (NEW, ACCEPTED): the executor has
        nothing to decide about it."""
        return self in _UNROUTED


class OrderEvent(Enum):
    """The inputs of the lifecycle; the transition table is drawn over them."""

    ACCEPT = "accept"
    REJECT = "reject"
    ROUTE = "route"
    PARTIAL_FILL = "partial_fill"
    FILL = "fill"
    CANCEL = "cancel"
    EXPIRE = "expire"
    REPLACE = "replace"


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


    @property
    def retryable(self) -> bool:
        """True if the request was not recorded and may be sent again with the same id."""
        return self in _RETRYABLE


_RETRYABLE = frozenset({RejectReason.NOT_ACTIVE, RejectReason.STORE_UNAVAILABLE,
                        RejectReason.FENCED, RejectReason.EXECUTOR_UNAVAILABLE})

S = OrderState
E = OrderEvent
_WORKING = {E.CANCEL: S.CANCELLED, E.EXPIRE: S.EXPIRED}
# state -> event -> next state. An event not listed for a state is illegal there.
TRANSITIONS: dict[OrderState, dict[OrderEvent, OrderState]] = {
    S.NEW: {E.ACCEPT: S.ACCEPTED, E.REJECT: S.REJECTED},
    S.ACCEPTED: {E.ROUTE: S.ROUTED, E.REPLACE: S.ACCEPTED, **_WORKING},
    S.ROUTED: {E.PARTIAL_FILL: S.PARTIALLY_FILLED, E.FILL: S.FILLED, E.REJECT: S.REJECTED,
               E.REPLACE: S.ROUTED, **_WORKING},
    S.PARTIALLY_FILLED: {E.PARTIAL_FILL: S.PARTIALLY_FILLED, E.FILL: S.FILLED,
                         E.REPLACE: S.PARTIALLY_FILLED, **_WORKING},
    S.FILLED: {},
    S.REJECTED: {},
    S.CANCELLED: {},
    S.EXPIRED: {},
}

# The event an execution report in a given state stands for (NEW is never reported).
REPORT_EVENTS: dict[OrderState, OrderEvent] = {
    S.ACCEPTED: E.ACCEPT, S.ROUTED: E.ROUTE, S.PARTIALLY_FILLED: E.PARTIAL_FILL,
    S.FILLED: E.FILL, S.REJECTED: E.REJECT, S.CANCELLED: E.CANCEL, S.EXPIRED: E.EXPIRE,
}
_FILL_STATES = frozenset({S.PARTIALLY_FILLED, S.FILLED})
_FILL_EVENTS = frozenset({E.PARTIAL_FILL, E.FILL})
_REPLACEABLE = frozenset(s for s, events in TRANSITIONS.items() if E.REPLACE in events)
_AT_EXECUTOR = frozenset({S.ROUTED, S.PARTIALLY_FILLED})
_UNROUTED = frozenset({S.NEW, S.ACCEPTED})
_UNFILLED_STATES = frozenset({S.NEW, S.ACCEPTED, S.ROUTED, S.REJECTED})


def next_state(state: OrderState, event: OrderEvent) -> OrderState:
    """The state after ``event``; raises :class:`OrderStateError` if the table forbids it."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise OrderStateError(state, event) from None


# --- field checks ----------------------------------------------------------------------------


def check_id(field: str, value: object) -> str:
    """Return ``value`` if it is a valid account, id or symbol: the rules of a stream name
    (non-empty, at most 64 bytes of UTF-8, no control characters); else raise
    :class:`InvalidOrder` naming ``field``."""
    try:
        return check_stream(value)
    except ValueError as exc:  # check_stream words its message for a "symbol"
        raise InvalidOrder(field, str(exc).removeprefix("symbol ")) from None


def _number(field: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidOrder(field, f"must be a number, got {type(value).__name__}")
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf
    if not math.isfinite(as_float):
        raise InvalidOrder(field, f"must be finite, got {value!r}")
    return as_float


def _positive(field: str, value: object) -> None:
    if _number(field, value) <= 0:
        raise InvalidOrder(field, f"must be > 0, got {value!r}")


def _not_negative(field: str, value: object) -> None:
    if _number(field, value) < 0:
        raise InvalidOrder(field, f"must be >= 0, got {value!r}")


def _check_price(order_type: OrderType, price: object) -> None:
    if order_type is OrderType.MARKET:
        if price is not None:
            raise InvalidOrder("price", f"must be None for a MARKET order, got {price!r}")
    elif price is None:
        raise InvalidOrder("price", "must be a number > 0 for a LIMIT order, got None")
    else:
        _positive("price", price)


def _check_enum(field: str, value: object, kind: type[Enum]) -> None:
    if not isinstance(value, kind):
        raise InvalidOrder(field, f"must be a {kind.__name__}, got {value!r}")


def _check_ns(field: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**64 - 1:
        raise InvalidOrder(field, f"must be an integer of nanoseconds >= 0, got {value!r}")


def _check_count(field: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**32 - 1:
        raise InvalidOrder(field, f"must be an integer in [0, {2**32 - 1}], got {value!r}")


def _check_epoch(field: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_EPOCH:
        raise InvalidOrder(field, f"must be an integer in [1, {MAX_EPOCH}], got {value!r}")


def _distinct(client_order_id: str, target: str) -> None:
    if client_order_id == target:
        raise InvalidOrder("client_order_id", "must differ from target_client_order_id "
                                              "(a cancel or replace has its own id)")


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=QTY_REL_TOL, abs_tol=_QTY_ABS_TOL)


def _above(a: float, b: float) -> bool:
    """``a > b`` beyond rounding noise."""
    return a > b and not _same(a, b)


def _mean_after(filled: float, avg: float, quantity: float, price: float) -> float:
    """The average fill price after ``quantity`` more at ``price``.

    A convex step, not ``(avg*filled + price*quantity) / (filled + quantity)``: that form loses
    all precision for tiny quantities (hypothesis found 5e-324 lots at 1.5 averaging to 2.0);
    this one stays between the old mean and the fill price."""
    return avg + (price - avg) * (quantity / (filled + quantity))


def _check_progress(state: OrderState, filled: float, avg_price: float) -> None:
    """Fill invariants that hold for an order record and a report alike."""
    _not_negative("filled_quantity", filled)
    _not_negative("avg_price", avg_price)
    if (filled > 0) != (avg_price > 0):
        raise InvalidOrder("avg_price", f"{avg_price!r} with filled_quantity {filled!r}: "
                                        "both are 0 or both are > 0")
    if state in _UNFILLED_STATES and filled != 0:
        raise InvalidOrder("filled_quantity", f"must be 0 in state {state.name}, got {filled!r}")
    if state in _FILL_STATES and filled <= 0:
        raise InvalidOrder("filled_quantity", f"must be > 0 in state {state.name}")


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
        _check_enum("side", self.side, Side)
        _check_enum("type", self.type, OrderType)
        _positive("quantity", self.quantity)
        _check_price(self.type, self.price)
        _check_ns("sent_ns", self.sent_ns)


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
        _positive("quantity", self.quantity)
        if self.price is not None:
            _positive("price", self.price)


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
        _check_enum("state", self.state, OrderState)
        if self.state is OrderState.NEW:
            raise InvalidOrder("state", "NEW is never acknowledged (the backend decides first)")
        _check_epoch("epoch", self.epoch)


@dataclass(frozen=True, slots=True)
class OrderReject:
    """The request ``client_order_id`` was refused. ``client_order_id`` is "" when it could not
    be read from a malformed request."""

    client_order_id: str
    reason: RejectReason
    message: str

    def __post_init__(self) -> None:
        if self.client_order_id != "":
            check_id("client_order_id", self.client_order_id)
        _check_enum("reason", self.reason, RejectReason)
        if not isinstance(self.message, str):
            raise InvalidOrder("message", f"must be a string, got {type(self.message).__name__}")

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

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        check_id("client_order_id", self.client_order_id)
        check_id("account", self.account)
        check_id("symbol", self.symbol)
        _check_enum("side", self.side, Side)
        _check_enum("state", self.state, OrderState)
        if self.state is OrderState.NEW:
            raise InvalidOrder("state", "NEW is never reported")
        _check_progress(self.state, self.filled_quantity, self.avg_price)
        _not_negative("quantity", self.quantity)
        if self.is_replace:
            if not self.state.replaceable:
                raise InvalidOrder("quantity", f"a replace (quantity > 0) in state "
                                               f"{self.state.name}: only a working order is "
                                               "replaced")
            if self.price is not None:
                _positive("price", self.price)
        elif self.price is not None:
            raise InvalidOrder("price", "must be None unless the report is a replace")
        if self.is_fill:
            _positive("last_quantity", self.last_quantity)
            _positive("last_price", self.last_price)
            if _above(self.last_quantity, self.filled_quantity):
                raise InvalidOrder("last_quantity", f"{self.last_quantity!r} above "
                                                    f"filled_quantity {self.filled_quantity!r}")
        else:
            for field in ("last_quantity", "last_price"):
                if _number(field, getattr(self, field)) != 0:
                    raise InvalidOrder(field, f"must be 0 in a {self.event.name} report")
        _check_epoch("epoch", self.epoch)
        check_id("exec_id", self.exec_id)
        _check_ns("transact_ns", self.transact_ns)
        _check_count("seq", self.seq)

    @property
    def is_replace(self) -> bool:
        return self.quantity > 0

    @property
    def event(self) -> OrderEvent:
        """The lifecycle event this report stands for."""
        return OrderEvent.REPLACE if self.is_replace else REPORT_EVENTS[self.state]

    @property
    def is_fill(self) -> bool:
        return self.event in _FILL_EVENTS


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
        _check_epoch("epoch", self.epoch)
        _check_ns("sent_ns", self.sent_ns)


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
        _positive("quantity", self.quantity)
        if self.price is not None:
            _positive("price", self.price)
        _check_epoch("epoch", self.epoch)
        _check_ns("sent_ns", self.sent_ns)


@dataclass(frozen=True, slots=True)
class ReplaceRefused:
    """The executor refuses the replace of ``order_id``: the order cannot take the terms any
    more (terminal, or filled up to the new quantity meanwhile; ``reason`` says which)."""

    order_id: str
    reason: RejectReason
    message: str

    def __post_init__(self) -> None:
        check_id("order_id", self.order_id)
        _check_enum("reason", self.reason, RejectReason)
        if not isinstance(self.message, str):
            raise InvalidOrder("message", f"must be a string, got {type(self.message).__name__}")


ExecutorRequest = CancelRequest | ReplaceRequest


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
        _check_enum("state", self.state, OrderState)
        _check_progress(self.state, self.filled_quantity, self.avg_price)
        _check_epoch("epoch", self.epoch)
        _check_ns("updated_ns", self.updated_ns)
        _positive("quantity", self.quantity)
        _check_price(self.order.type, self.price)
        _check_count("exec_seq", self.exec_seq)
        if self.client_id != "":
            check_id("client_id", self.client_id)
        if _above(self.filled_quantity, self.quantity):
            raise InvalidOrder("filled_quantity", f"{self.filled_quantity!r} above quantity "
                                                  f"{self.quantity!r}")
        complete = _same(self.filled_quantity, self.quantity)
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
        if _above(self.filled_quantity, report.filled_quantity):
            raise OrderStateError(self.state, event, f"filled quantity would decrease from "
                                  f"{self.filled_quantity!r} to {report.filled_quantity!r}")
        if event is OrderEvent.REPLACE:
            reason = amend_reason(self, report.quantity, report.price)
            if reason is not None:
                raise OrderStateError(self.state, event, f"{reason.name}: {_AMEND_TEXT[reason]}")
            return dataclasses.replace(self, quantity=report.quantity, price=report.price,
                                       epoch=epoch, updated_ns=now_ns, exec_seq=exec_seq)
        if _above(report.filled_quantity, self.quantity):
            raise OrderStateError(self.state, event, f"filled quantity "
                                  f"{report.filled_quantity!r} exceeds quantity {self.quantity!r}")
        filled, avg = self.filled_quantity, self.avg_price
        if report.is_fill:
            filled, avg = self._fill(event, report)
        elif not _same(report.filled_quantity, filled):
            raise OrderStateError(self.state, event, f"filled quantity changes from {filled!r} "
                                  f"to {report.filled_quantity!r} without a fill")
        return dataclasses.replace(self, state=state, filled_quantity=filled, avg_price=avg,
                                   epoch=epoch, updated_ns=now_ns, exec_seq=exec_seq)

    def _fill(self, event: OrderEvent, report: ExecutionReport) -> tuple[float, float]:
        """The filled quantity and average price after the fill ``report``."""
        filled, avg = self.filled_quantity, self.avg_price
        if not _same(report.filled_quantity, filled + report.last_quantity):
            raise OrderStateError(self.state, event, f"filled quantity "
                                  f"{report.filled_quantity!r} is not {filled!r} + last "
                                  f"{report.last_quantity!r}")
        complete = _same(report.filled_quantity, self.quantity)
        if event is OrderEvent.FILL and not complete:
            raise OrderStateError(self.state, event, f"a FILL must fill {self.quantity!r}, "
                                  f"filled {report.filled_quantity!r}")
        if event is OrderEvent.PARTIAL_FILL and complete:
            raise OrderStateError(self.state, event, "this fill completes the order: it "
                                  "must be a FILL")
        avg = _mean_after(filled, avg, report.last_quantity, report.last_price)
        return (self.quantity if complete else report.filled_quantity), avg

    def fill_report(self, quantity: float, price: float, *, seq: int, exec_id: str,
                    transact_ns: int = 0) -> ExecutionReport:
        """The executor's report filling ``quantity`` more of this working order at ``price``
        (capped at what is left): FILLED if that completes it, else PARTIALLY_FILLED."""
        leaves = self.quantity - self.filled_quantity
        quantity = min(quantity, leaves)
        complete = _same(quantity, leaves)
        filled = self.quantity if complete else self.filled_quantity + quantity
        avg = _mean_after(self.filled_quantity, self.avg_price, quantity, price)
        o = self.order
        return ExecutionReport(self.order_id, o.client_order_id, o.account, o.symbol, o.side,
                               OrderState.FILLED if complete else OrderState.PARTIALLY_FILLED,
                               filled, quantity, price, avg, self.epoch, exec_id, transact_ns,
                               seq)

    def status_report(self, state: OrderState, *, exec_id: str, epoch: int,
                      transact_ns: int = 0, client_order_id: str | None = None,
                      seq: int = 0) -> ExecutionReport:
        """A report (not a fill) moving this order to ``state``: ACCEPTED, ROUTED, REJECTED,
        CANCELLED or EXPIRED. ``client_order_id`` defaults to the order's own."""
        o = self.order
        return ExecutionReport(self.order_id, client_order_id or o.client_order_id, o.account,
                               o.symbol, o.side, state, self.filled_quantity, 0.0, 0.0,
                               self.avg_price, epoch, exec_id, transact_ns, seq)

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
        _check_epoch("epoch", epoch)
        _check_ns("now_ns", now_ns)
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


OrderMessage = (NewOrder | CancelOrder | ReplaceOrder | OrderAck | OrderReject
                | OrderPending | ExecutionReport | Order | CancelRequest | ReplaceRequest
                | ReplaceRefused)

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
        return None if E.CANCEL in TRANSITIONS[target.state] else RejectReason.NOT_CANCELLABLE
    return amend_reason(target, request.quantity, request.price)


def amend_reason(target: Order, quantity: float, price: float | None) -> RejectReason | None:
    """Why ``target`` cannot take the working terms ``quantity`` and ``price`` (None: it can).

    The executor asks this again when it decides, against fills the backend has not seen yet."""
    if not target.state.replaceable:
        return RejectReason.NOT_CANCELLABLE
    if not _above(quantity, target.filled_quantity):
        return RejectReason.BAD_QUANTITY
    if (price is None) != (target.order.type is OrderType.MARKET):
        return RejectReason.BAD_PRICE
    return None


def amend_text(reason: RejectReason) -> str:
    """The words for a reason :func:`check_amend` gives."""
    return _AMEND_TEXT.get(reason, reason.name.lower())


# --- pre-trade checks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Pre-trade limits.

    ``price_band`` is a fraction: 0.05 means a LIMIT price must lie within 5 % of the mid of
    the last tick (inclusive). ``max_exposure_per_account`` bounds an account's exposure: the
    sum over its open orders (and the new orders being stored, this one included) of what is
    left to fill times the limit price, ``leaves_quantity x price`` in the units of the limit
    (lots x price, no contract size). Buys and sells add up (a sell does not offset a buy);
    filled quantities (positions) are not counted. A MARKET order is valued at the mid while it
    is checked and counts 0 once open (it fills at once or is rejected).
    """

    symbols: frozenset[str]
    max_quantity: float
    price_band: float
    max_exposure_per_account: float

    def __post_init__(self) -> None:
        if not isinstance(self.symbols, frozenset):
            raise ValueError("symbols must be a frozenset")
        for s in self.symbols:
            check_stream(s)
        for name in ("max_quantity", "price_band", "max_exposure_per_account"):
            _not_negative(name, getattr(self, name))
        if self.max_quantity <= 0:
            raise ValueError("max_quantity must be > 0")


Quote = tuple[float, float]  # (bid, ask) of a usable two-sided tick


def usable_quote(bid: float, ask: float) -> Quote | None:
    """``(bid, ask)`` if both are finite prices with ``0 < bid <= ask``, else None: the one
    rule for a quote that prices orders, in the backend's checks and the executor's fills."""
    if math.isfinite(bid) and math.isfinite(ask) and 0 < bid <= ask:
        return bid, ask
    return None


def _mid(last_bid_ask: tuple[float, float] | None) -> float | None:
    """The mid of a usable two-sided quote, else None."""
    quote = None if last_bid_ask is None else usable_quote(*last_bid_ask)
    return None if quote is None else (quote[0] + quote[1]) / 2


def validate(order: NewOrder, *, limits: Limits, last_bid_ask: tuple[float, float] | None,
             exposure: float) -> RejectReason | None:
    """Pre-trade checks of a well-formed order; None if it may be accepted.

    ``last_bid_ask`` is the last tick's quote of the order's symbol, or None if there is none
    (pass None for a quote too old to trust too). Without a usable two-sided quote every order
    is refused with PRICE_BAND: a LIMIT price has no band to sit in and a MARKET order has
    nothing to be priced at. ``exposure`` is the account's current exposure (see
    :class:`Limits`); a MARKET order's notional is valued at the mid.

    Checks run in this order: symbol, quantity limit, market data and band, exposure.
    """
    if order.symbol not in limits.symbols:
        return RejectReason.UNKNOWN_SYMBOL
    return _check_terms(order.quantity, order.quantity, order.price, limits=limits,
                        last_bid_ask=last_bid_ask, exposure=exposure)


def validate_replace(target: Order, request: ReplaceOrder, *, limits: Limits,
                     last_bid_ask: tuple[float, float] | None, exposure: float
                     ) -> RejectReason | None:
    """Pre-trade checks of a replace's new terms, after :func:`check_amend` passed.

    The same checks as :func:`validate` on the new total quantity and price; ``exposure`` is
    the account's exposure *without* ``target``, and the replaced order adds what it would
    still have to fill (the new quantity minus its filled part)."""
    leaves = request.quantity - target.filled_quantity
    return _check_terms(request.quantity, leaves, request.price, limits=limits,
                        last_bid_ask=last_bid_ask, exposure=exposure)


def _check_terms(quantity: float, leaves: float, limit_price: float | None, *, limits: Limits,
                 last_bid_ask: tuple[float, float] | None, exposure: float
                 ) -> RejectReason | None:
    if not math.isfinite(exposure) or exposure < 0:
        raise ValueError(f"exposure must be finite and >= 0, got {exposure!r}")
    if _above(quantity, limits.max_quantity):
        return RejectReason.QUANTITY_LIMIT
    mid = _mid(last_bid_ask)
    if mid is None:
        return RejectReason.PRICE_BAND
    price = mid if limit_price is None else limit_price
    if _above(abs(price - mid), limits.price_band * mid):
        return RejectReason.PRICE_BAND
    if _above(exposure + leaves * price, limits.max_exposure_per_account):
        return RejectReason.EXPOSURE_LIMIT
    return None


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
    "MAX_EPOCH",
    "QTY_REL_TOL",
    "REPORT_EVENTS",
    "TRANSITIONS",
    "CancelOrder",
    "CancelRequest",
    "ExecutionReport",
    "ExecutorRequest",
    "Limits",
    "NewOrder",
    "OpenOrders",
    "Order",
    "OrderAck",
    "OrderEvent",
    "OrderMessage",
    "OrderReject",
    "OrderReply",
    "OrderRequest",
    "OrderState",
    "OrderType",
    "Quote",
    "RejectReason",
    "ReplaceOrder",
    "ReplaceRefused",
    "ReplaceRequest",
    "Side",
    "amend_reason",
    "amend_text",
    "check_amend",
    "check_id",
    "idempotency",
    "next_state",
    "reject_reason_for",
    "usable_quote",
    "validate",
    "validate_replace",
]
