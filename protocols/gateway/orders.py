"""The gateway's order desk, sans-I/O: order requests from JSON, order writes to JSON, and the
orders snapshot as of one history position (docs/GATEWAY.md, sections 4-6).

Rules:

* A request body is a JSON object (``place.order``, or a ``cancel``/``replace`` frame). A
  malformed one raises :class:`~protocols.errors.BadRequest` (code ``bad_request``) naming the
  field, in the order messages' own words (:class:`~protocols.errors.InvalidOrder`); an
  account the session does not own raises :class:`~protocols.errors.NotYourAccount` before
  anything else of the body is looked at. JSON names differ from the messages' in one place:
  ``target`` is ``target_client_order_id``.
* The ``orders`` stream has one item per history stream entry (one changed record write):
  :class:`Write` is that entry decoded, its item :func:`order_json` (the record after the
  write and the *fills* among the log entries it appended: each fill is in exactly one
  entry, so a client that adds the fills of the items it applies counts each once).
* A failed request becomes an ``order_reject`` body (:func:`reject_for`): the backend's
  reason name, ``NOT_YOUR_ACCOUNT``, ``INVALID``, ``TIMEOUT`` (no final answer: send it again
  with the same client order id), ``BUSY`` (this gateway's order client is at its bound).
* A snapshot is the orders state *as of* history position ``seq`` (:class:`SnapshotBuilder`):
  every order at its last version with position <= ``seq``, the fills of positions <= ``seq``,
  and positions computed from those fills in stream order (position, then log position) by
  the history report's average-cost rules (``protocols.history.report.SymbolReport``), so
  applying the items above ``seq`` in order gives what a client that saw every item has.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocols.errors import (
    BadRequest,
    InvalidOrder,
    NotYourAccount,
    OrderClientClosed,
    OrderRejected,
    OrderTimeout,
    TooManyInFlight,
)
from protocols.history.records import decode_write
from protocols.history.report import SymbolReport
from protocols.orders.messages import (
    CancelOrder,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderType,
    RejectReason,
    ReplaceOrder,
    Side,
)
from protocols.orders.record import Order

__all__ = [
    "BUSY",
    "INVALID",
    "NOT_YOUR_ACCOUNT",
    "TIMEOUT",
    "OpenOrders",
    "OrdersSnapshot",
    "RecentWrites",
    "SnapshotBuilder",
    "Write",
    "ack_json",
    "decode_entry",
    "fill_json",
    "order_fields",
    "order_json",
    "parse_cancel",
    "parse_place",
    "parse_replace",
    "positions_json",
    "reject_for",
    "reject_json",
]

INVALID = "INVALID"
TIMEOUT = "TIMEOUT"
NOT_YOUR_ACCOUNT = NotYourAccount.code
BUSY = RejectReason.BUSY.name

_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_TYPES = {"market": OrderType.MARKET, "limit": OrderType.LIMIT}
_SIDE_NAMES = {v: k for k, v in _SIDES.items()}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}
# The messages' field names as the JSON spells them.
_JSON_NAMES = {"target_client_order_id": "target"}
_NS_PER_MS = 1_000_000
T = TypeVar("T")

# --- requests ------------------------------------------------------------------------------


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _body(obj: object, what: str) -> Mapping[str, object]:
    if not isinstance(obj, dict):
        raise BadRequest("bad_request", f"{what} must be a JSON object, got {_kind(obj)}")
    return obj


def _string(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadRequest("bad_request", f"{name} must be a string, got {_kind(value)}")
    return value


def _choice(body: Mapping[str, object], name: str, choices: Mapping[str, Any]) -> Any:
    value = body.get(name)
    if not isinstance(value, str) or value not in choices:
        raise BadRequest("bad_request", f"{name} must be one of {sorted(choices)}, got "
                                        f"{value!r}")
    return choices[value]


def _owned(body: Mapping[str, object], accounts: Collection[str]) -> str:
    account = _string(body, "account")
    if account not in accounts:
        raise NotYourAccount(account)
    return account


def _invalid(exc: InvalidOrder) -> BadRequest:
    name = _JSON_NAMES.get(exc.field, exc.field)
    return BadRequest("bad_request", f"{name} {exc.problem}")


def parse_place(obj: object, accounts: Collection[str], now_ns: int) -> NewOrder:
    """The :class:`NewOrder` of a ``place`` frame's ``order`` object, sent at ``now_ns``.
    Raises :class:`NotYourAccount` for an account not in ``accounts`` and
    :class:`BadRequest` naming the field for anything else wrong."""
    body = _body(obj, "order")
    account = _owned(body, accounts)
    try:
        return NewOrder(account, _string(body, "client_order_id"), _string(body, "symbol"),
                        _choice(body, "side", _SIDES), _choice(body, "type", _TYPES),
                        body.get("quantity"),  # type: ignore[arg-type]  # checked by NewOrder
                        body.get("price"),  # type: ignore[arg-type]
                        now_ns)
    except InvalidOrder as exc:
        raise _invalid(exc) from None


def parse_cancel(obj: object, accounts: Collection[str]) -> CancelOrder:
    """The :class:`CancelOrder` of a ``cancel`` frame (``account``, ``client_order_id``,
    ``target``); raises as :func:`parse_place`."""
    body = _body(obj, "cancel")
    account = _owned(body, accounts)
    try:
        return CancelOrder(account, _string(body, "client_order_id"), _string(body, "target"))
    except InvalidOrder as exc:
        raise _invalid(exc) from None


def parse_replace(obj: object, accounts: Collection[str]) -> ReplaceOrder:
    """The :class:`ReplaceOrder` of a ``replace`` frame (``account``, ``client_order_id``,
    ``target``, ``quantity``: the new total, ``price``: null for a market order); raises as
    :func:`parse_place`."""
    body = _body(obj, "replace")
    account = _owned(body, accounts)
    try:
        return ReplaceOrder(account, _string(body, "client_order_id"), _string(body, "target"),
                            body.get("quantity"),  # type: ignore[arg-type]
                            body.get("price"))  # type: ignore[arg-type]
    except InvalidOrder as exc:
        raise _invalid(exc) from None


def client_order_id_of(obj: object) -> str:
    """The ``client_order_id`` of a request body as far as it can be read ("": none), for the
    reject of a body that did not parse."""
    value = obj.get("client_order_id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else ""


# --- answers ---------------------------------------------------------------------------------


def ack_json(ack: OrderAck) -> dict[str, Any]:
    """The body of an ``order_ack`` (the gateway adds the request's ``id``)."""
    return {"client_order_id": ack.client_order_id, "order_id": ack.order_id,
            "state": ack.state.name}


def reject_json(reason: str, message: str, retryable: bool) -> dict[str, Any]:
    """The reason part of an ``order_reject``."""
    return {"reason": reason, "message": message, "retryable": retryable}


def reject_for(exc: Exception) -> dict[str, Any] | None:
    """The ``order_reject`` reason part for a request that failed with ``exc``; None for an
    exception that is no answer to the client (a bug: let it propagate)."""
    match exc:
        case NotYourAccount():
            return reject_json(NOT_YOUR_ACCOUNT, str(exc), False)
        case BadRequest() | InvalidOrder():
            return reject_json(INVALID, str(exc), False)
        case OrderRejected():
            return reject_json(exc.reason.name, exc.reject.message, exc.reason.retryable)
        case OrderTimeout():
            return reject_json(TIMEOUT, "no backend answered in time: send it again with the "
                                        "same client_order_id", True)
        case OrderClientClosed():
            return reject_json(TIMEOUT, "the gateway is shutting down: send it again with the "
                                        "same client_order_id", True)
        case TooManyInFlight():
            return reject_json(BUSY, f"this gateway has {exc.in_flight} orders in flight: "
                                     "send it again shortly", True)
    return None


# --- order writes ----------------------------------------------------------------------------


def order_fields(order: Order) -> dict[str, Any]:
    """An order record as the protocol's ``order`` object."""
    o = order.order
    return {"account": o.account, "client_order_id": o.client_order_id,
            "order_id": order.order_id, "symbol": o.symbol, "side": _SIDE_NAMES[o.side],
            "type": _TYPE_NAMES[o.type], "quantity": order.quantity, "price": order.price,
            "state": order.state.name, "filled_quantity": order.filled_quantity,
            "avg_price": order.avg_price, "updated_ms": order.updated_ns // _NS_PER_MS}


def fill_json(report: ExecutionReport) -> dict[str, Any]:
    """A fill (an execution report that is one) as the protocol's ``fill`` object."""
    return {"exec_id": report.exec_id, "order_id": report.order_id,
            "client_order_id": report.client_order_id, "account": report.account,
            "symbol": report.symbol, "side": _SIDE_NAMES[report.side],
            "quantity": report.last_quantity, "price": report.last_price,
            "time_ms": report.transact_ns // _NS_PER_MS}


def order_json(order: Order, fills: Sequence[ExecutionReport]) -> dict[str, Any]:
    """An ``orders`` stream item's body: ``order`` (the record after the write) and ``fills``
    (those of ``fills`` that are fills: a write's other log entries are in the record)."""
    return {"order": order_fields(order), "fills": [fill_json(f) for f in fills if f.is_fill]}


@dataclass(frozen=True, slots=True)
class Write:
    """One history stream entry decoded: the record after the write at ``position`` and the
    log entries the write appended."""

    position: int
    order: Order
    entries: tuple[ExecutionReport, ...] = ()

    @property
    def account(self) -> str:
        return self.order.order.account

    @property
    def fills(self) -> tuple[ExecutionReport, ...]:
        return tuple(e for e in self.entries if e.is_fill)

    def item(self) -> dict[str, Any]:
        return order_json(self.order, self.entries)


def decode_entry(position: int, record: bytes, entries: Sequence[bytes]) -> Write:
    """A history stream entry as a :class:`Write` (the historian's decoding); raises
    :class:`~protocols.errors.RemoteProtocolError` when a blob is not what the stream holds."""
    order, reports = decode_write(position, record, entries)
    return Write(position, order, reports)


class RecentWrites:
    """The last ``limit`` writes of the stream with their items, and the range of positions
    they cover, ``(start, end]``: every decodable entry in it is here (an undecodable one is
    just absent). A hole (entries trimmed before they were read) or a stream that went back
    restarts the range (:meth:`restart`), so what is here is never a range with gaps."""

    def __init__(self, limit: int, position: int = 0) -> None:
        self.limit = limit
        self._writes: deque[tuple[Write, dict[str, Any]]] = deque()
        self.start = self.end = position

    def restart(self, position: int) -> None:
        """Hold nothing, from ``position`` on."""
        self._writes.clear()
        self.start = self.end = position

    def passed(self, position: int) -> None:
        """The stream is read up to ``position`` (the entry there added next, if any)."""
        if position > self.end + 1:
            self.restart(position - 1)
        self.end = max(self.end, position)

    def add(self, write: Write, item: dict[str, Any]) -> None:
        """The write at the next position (after :meth:`passed` for it)."""
        self._writes.append((write, item))
        while len(self._writes) > self.limit:
            self.start = self._writes.popleft()[0].position

    def covers(self, after: int) -> bool:
        """True if every write above ``after`` up to :attr:`end` is here."""
        return self.start <= after <= self.end

    def since(self, after: int, accounts: Collection[str]) -> list[tuple[Write, dict[str, Any]]]:
        """The writes of ``accounts`` above ``after``, oldest first (see :meth:`covers`)."""
        out = []
        for w, item in reversed(self._writes):  # a resume asks for the last few, mostly
            if w.position <= after:
                break
            if w.account in accounts:
                out.append((w, item))
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self._writes)


class OpenOrders:
    """The working orders per account, kept as of a stream position: loaded from the store's
    records, then every write applied in stream order (a terminal one removes its order)."""

    def __init__(self) -> None:
        self._by_account: dict[str, dict[str, Order]] = {}

    def load(self, orders: Iterable[Order]) -> None:
        self._by_account.clear()
        for order in orders:
            self.apply(order)

    def apply(self, order: Order) -> None:
        account = order.order.account
        mine = self._by_account.setdefault(account, {})
        if order.terminal:
            mine.pop(order.order_id, None)
            if not mine:
                del self._by_account[account]
        else:
            mine[order.order_id] = order

    def of(self, accounts: Iterable[str]) -> list[Order]:
        return [o for a in accounts for o in self._by_account.get(a, {}).values()]

    def __len__(self) -> int:
        return sum(map(len, self._by_account.values()))


# --- positions and the snapshot --------------------------------------------------------------


def positions_json(fills: Iterable[ExecutionReport]) -> list[dict[str, Any]]:
    """Net positions per (account, symbol) from ``fills`` taken in the order given (stream
    order), by average cost: ``quantity`` signed (long > 0), ``avg_price`` of the open
    position, ``realized_pnl``. Sorted by account, then symbol."""
    books: dict[tuple[str, str], SymbolReport] = {}
    for f in fills:
        key = (f.account, f.symbol)
        book = books.get(key)
        if book is None:
            book = books[key] = SymbolReport(*key)
        book.add_fill(f.side, f.last_quantity, f.last_price)
    return [{"account": b.account, "symbol": b.symbol, "quantity": b.position,
             "avg_price": b.avg_price, "realized_pnl": b.realized_pnl}
            for _, b in sorted(books.items())]


@dataclass(frozen=True, slots=True)
class OrdersSnapshot:
    """The ``orders`` stream's state as of history position ``seq``: ``orders`` (the open
    ones and the most recent terminal ones, oldest update first), ``fills`` (the most recent,
    in stream order) and ``positions``, as protocol JSON. ``complete`` is False when some
    fills at or below ``seq`` were not to be had (history trimmed and not recorded): the
    positions then start flat at the oldest fill held."""

    seq: int
    orders: tuple[dict[str, Any], ...]
    fills: tuple[dict[str, Any], ...]
    positions: tuple[dict[str, Any], ...]
    complete: bool = True

    def item(self) -> dict[str, Any]:
        """The body of the stream's ``snapshot`` item."""
        return {"orders": list(self.orders), "fills": list(self.fills),
                "positions": list(self.positions), "complete": self.complete}


@dataclass(slots=True)
class _Version:
    position: int  # -1: read from the store now, position unknown (see add_current)
    order: Order


@dataclass(slots=True)
class SnapshotBuilder:
    """Collects order versions and fills of ``accounts`` from any source, each at its history
    position, and builds the snapshot as of a position (the rules of the module).

    Sources may overlap (the history store and the Redis stream both hold a range): an order
    keeps its version of the highest position, a fill (order id, log position) counts once.
    The Redis record of an open order read *now* comes without a position
    (:meth:`add_current`): it stands unless a version above ``since`` is known, which holds
    when every write between reading ``since`` and the snapshot's position was added."""

    accounts: frozenset[str]
    recent: int = 200
    complete: bool = True
    _orders: dict[str, _Version] = field(default_factory=dict)
    _fills: dict[tuple[str, int], tuple[int, ExecutionReport]] = field(default_factory=dict)
    _current: dict[str, tuple[int, Order]] = field(default_factory=dict)

    def add_version(self, position: int, order: Order) -> None:
        """The record as written at ``position``."""
        if order.order.account not in self.accounts:
            return
        known = self._orders.get(order.order_id)
        if known is None or position > known.position:
            self._orders[order.order_id] = _Version(position, order)

    def add_fill(self, position: int, report: ExecutionReport) -> None:
        """A log entry appended at ``position`` (one that is not a fill is ignored)."""
        if report.account in self.accounts and report.is_fill:
            self._fills.setdefault((report.order_id, report.seq), (position, report))

    def add_write(self, write: Write) -> None:
        self.add_version(write.position, write.order)
        for e in write.entries:
            self.add_fill(write.position, e)

    def add_current(self, order: Order, since: int) -> None:
        """An open order's record read from the store after position ``since`` was."""
        if order.order.account in self.accounts:
            self._current[order.order_id] = (since, order)

    def build(self, seq: int) -> OrdersSnapshot:
        """The snapshot as of ``seq``: every version and fill added must be at or below it."""
        versions = dict(self._orders)
        for oid, (since, order) in self._current.items():
            known = versions.get(oid)
            if known is None or known.position <= since:
                versions[oid] = _Version(-1, order)
        live = [v.order for v in versions.values() if not v.order.terminal]
        done = _last(sorted((v for v in versions.values() if v.order.terminal),
                            key=lambda v: (v.order.updated_ns, v.position)), self.recent)
        orders = sorted([*live, *(v.order for v in done)],
                        key=lambda o: (o.updated_ns, o.order_id))
        fills = [r for _, r in sorted(self._fills.values(),
                                      key=lambda pr: (pr[0], pr[1].seq))]
        return OrdersSnapshot(seq, tuple(map(order_fields, orders)),
                              tuple(map(fill_json, _last(fills, self.recent))),
                              tuple(positions_json(fills)), self.complete)


def _last(items: list[T], n: int) -> list[T]:
    """The last ``n`` of ``items`` (none for 0, where ``items[-0:]`` would be all)."""
    return items[max(0, len(items) - n):] if n > 0 else []
