"""Encode and decode order-path messages to ZeroMQ frames (sans-I/O).

Every order message is two frames, the envelope of ``protocols.wire``::

    [magic "TM" | version u8 | kind u8, msgpack map]

with its own kinds (:class:`OrderKind`, 32..63, never a ``protocols.ticks.messages.Kind``).
The map's keys are the dataclass field names; enums travel as their integer values, a missing
price as nil, and an :class:`Order` record carries its :class:`NewOrder` as a nested map under
``"order"``. An :class:`OrderReject` also carries ``"retryable"`` (derived from the reason) for
peers that do not know the reason table. Unknown keys are ignored (compatible additions).

Decoding is strict: anything malformed raises :class:`RemoteProtocolError` naming the reason;
:func:`reject_reason_of` turns that error into the :class:`RejectReason` to answer with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

from protocols.errors import InvalidOrder, LocalProtocolError, RemoteProtocolError
from protocols.orders.fields import check_id
from protocols.orders.lifecycle import OrderState
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
    OrderReply,
    OrderRequest,
    OrderType,
    RejectReason,
    ReplaceOrder,
    ReplaceRefused,
    ReplaceRequest,
    Side,
    reject_reason_for,
)
from protocols.orders.record import Order, OrderMessage
from protocols.wire import HEADER_SIZE, decode_envelope
from protocols.wire import pack_body as _pack
from protocols.wire import pack_header as _header


class OrderKind(IntEnum):
    """Order message kinds; the byte at offset 3 of the header frame."""

    NEW_ORDER = 32
    CANCEL_ORDER = 33
    REPLACE_ORDER = 34
    ORDER_ACK = 40
    ORDER_REJECT = 41
    ORDER_PENDING = 42  # not an answer: requests in service, answers follow
    EXECUTION_REPORT = 48
    CANCEL_REQUEST = 49  # backend -> executor: decide a cancel
    REPLACE_REQUEST = 50  # backend -> executor: decide a replace
    REPLACE_REFUSED = 51  # executor -> backend: the replace cannot be made
    ENTRY_REFUSED = 52  # backend -> executor: a proposed log entry was not decided
    ORDER = 56  # the backend's record: checkpoints, and the order as routed to the executor


_REQUESTS = frozenset({OrderKind.NEW_ORDER, OrderKind.CANCEL_ORDER, OrderKind.REPLACE_ORDER})
_REPLIES = frozenset({OrderKind.ORDER_ACK, OrderKind.ORDER_REJECT})


def _new_order_map(m: NewOrder) -> dict[str, Any]:
    return {"account": m.account, "client_order_id": m.client_order_id, "symbol": m.symbol,
            "side": int(m.side), "type": int(m.type), "quantity": m.quantity, "price": m.price,
            "sent_ns": m.sent_ns}


def encode_order(msg: OrderMessage) -> list[bytes]:
    """Encode an order message as ZeroMQ frames ``[header, body]``."""
    match msg:
        case NewOrder():
            return [_header(OrderKind.NEW_ORDER), _pack(_new_order_map(msg))]
        case CancelOrder(account, cid, target):
            return [_header(OrderKind.CANCEL_ORDER), _pack(
                {"account": account, "client_order_id": cid, "target_client_order_id": target})]
        case ReplaceOrder(account, cid, target, quantity, price):
            return [_header(OrderKind.REPLACE_ORDER), _pack(
                {"account": account, "client_order_id": cid, "target_client_order_id": target,
                 "quantity": quantity, "price": price})]
        case OrderAck(cid, order_id, state, epoch):
            return [_header(OrderKind.ORDER_ACK), _pack(
                {"client_order_id": cid, "order_id": order_id, "state": int(state),
                 "epoch": epoch})]
        case OrderReject(cid, reason, message, retry_after_ms):
            body = {"client_order_id": cid, "reason": int(reason), "message": message,
                    "retryable": reason.retryable}
            if retry_after_ms:  # absent means 0: peers that predate the hint read it as such
                body["retry_after_ms"] = retry_after_ms
            return [_header(OrderKind.ORDER_REJECT), _pack(body)]
        case OrderPending(in_service):
            return [_header(OrderKind.ORDER_PENDING), _pack({"in_service": in_service})]
        case ExecutionReport():
            return [_header(OrderKind.EXECUTION_REPORT), _pack(
                {"order_id": msg.order_id, "client_order_id": msg.client_order_id,
                 "account": msg.account, "symbol": msg.symbol, "side": int(msg.side),
                 "state": int(msg.state), "filled_quantity": msg.filled_quantity,
                 "last_quantity": msg.last_quantity, "last_price": msg.last_price,
                 "avg_price": msg.avg_price, "epoch": msg.epoch, "exec_id": msg.exec_id,
                 "transact_ns": msg.transact_ns, "seq": msg.seq, "quantity": msg.quantity,
                 "price": msg.price, **({"reason": msg.reason} if msg.reason else {})})]
        case CancelRequest(order_id, epoch, sent_ns):
            return [_header(OrderKind.CANCEL_REQUEST), _pack(
                {"order_id": order_id, "epoch": epoch, "sent_ns": sent_ns})]
        case ReplaceRequest(order_id, cid, quantity, price, epoch, sent_ns):
            return [_header(OrderKind.REPLACE_REQUEST), _pack(
                {"order_id": order_id, "client_order_id": cid, "quantity": quantity,
                 "price": price, "epoch": epoch, "sent_ns": sent_ns})]
        case ReplaceRefused(order_id, reason, message):
            return [_header(OrderKind.REPLACE_REFUSED), _pack(
                {"order_id": order_id, "reason": int(reason), "message": message})]
        case EntryRefused(order_id, seq, reason, at):
            return [_header(OrderKind.ENTRY_REFUSED), _pack(
                {"order_id": order_id, "seq": seq, "reason": int(reason), "at": at})]
        case Order():
            return [_header(OrderKind.ORDER), _pack(
                {"order_id": msg.order_id, "order": _new_order_map(msg.order),
                 "state": int(msg.state), "filled_quantity": msg.filled_quantity,
                 "avg_price": msg.avg_price, "epoch": msg.epoch, "updated_ns": msg.updated_ns,
                 "quantity": msg.quantity, "price": msg.price, "exec_seq": msg.exec_seq,
                 "client_id": msg.client_id})]
    raise LocalProtocolError(f"not an order message: {msg!r:.80}")


# --- decoding --------------------------------------------------------------------------------

_E = TypeVar("_E", bound=IntEnum)


def _enum(d: dict[str, Any], field: str, kind: type[_E]) -> _E:
    value = d[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidOrder(field, f"must be an integer code, got {type(value).__name__}")
    try:
        return kind(value)
    except ValueError:
        raise InvalidOrder(field, f"unknown {kind.__name__} code {value}") from None


_REQUIRED = object()


def _num(d: dict[str, Any], field: str, default: Any = _REQUIRED) -> Any:
    """A number as a float (msgpack may carry a whole number as an integer); anything else is
    passed on for the dataclass to reject. A field added after version 1 of a message has a
    ``default`` for peers that do not send it yet."""
    value = d[field] if default is _REQUIRED else d.get(field, default)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # msgpack integers have at most 64 bits: no overflow
    return value


def _map(d: dict[str, Any], field: str) -> dict[str, Any]:
    value = d[field]
    if not isinstance(value, dict):
        raise InvalidOrder(field, f"must be a map, got {type(value).__name__}")
    return value


def _new_order(d: dict[str, Any]) -> NewOrder:
    return NewOrder(d["account"], d["client_order_id"], d["symbol"], _enum(d, "side", Side),
                    _enum(d, "type", OrderType), _num(d, "quantity"), _num(d, "price"),
                    d["sent_ns"])


def _reject(d: dict[str, Any]) -> OrderReject:
    reason = _enum(d, "reason", RejectReason)
    if d["retryable"] is not reason.retryable:
        raise InvalidOrder("retryable", f"must be {reason.retryable} for {reason.name}, "
                                        f"got {d['retryable']!r}")
    return OrderReject(d["client_order_id"], reason, d["message"], d.get("retry_after_ms", 0))


def _decode(kind: OrderKind, d: dict[str, Any]) -> OrderMessage:
    match kind:
        case OrderKind.NEW_ORDER:
            return _new_order(d)
        case OrderKind.CANCEL_ORDER:
            return CancelOrder(d["account"], d["client_order_id"], d["target_client_order_id"])
        case OrderKind.REPLACE_ORDER:
            return ReplaceOrder(d["account"], d["client_order_id"], d["target_client_order_id"],
                                _num(d, "quantity"), _num(d, "price"))
        case OrderKind.ORDER_ACK:
            return OrderAck(d["client_order_id"], d["order_id"], _enum(d, "state", OrderState),
                            d["epoch"])
        case OrderKind.ORDER_REJECT:
            return _reject(d)
        case OrderKind.ORDER_PENDING:
            return OrderPending(d["in_service"])
        case OrderKind.EXECUTION_REPORT:
            return ExecutionReport(
                d["order_id"], d["client_order_id"], d["account"], d["symbol"],
                _enum(d, "side", Side), _enum(d, "state", OrderState),
                _num(d, "filled_quantity"), _num(d, "last_quantity"), _num(d, "last_price"),
                _num(d, "avg_price"), d["epoch"], d["exec_id"], d["transact_ns"],
                d.get("seq", 0), _num(d, "quantity", 0.0), _num(d, "price", None),
                d.get("reason", 0))
        case OrderKind.CANCEL_REQUEST:
            return CancelRequest(d["order_id"], d["epoch"], d["sent_ns"])
        case OrderKind.REPLACE_REQUEST:
            return ReplaceRequest(d["order_id"], d["client_order_id"], _num(d, "quantity"),
                                  _num(d, "price"), d["epoch"], d["sent_ns"])
        case OrderKind.REPLACE_REFUSED:
            return ReplaceRefused(d["order_id"], _enum(d, "reason", RejectReason),
                                  d["message"])
        case OrderKind.ENTRY_REFUSED:
            return EntryRefused(d["order_id"], d["seq"], _enum(d, "reason", EntryRefusal),
                                d["at"])
        case OrderKind.ORDER:
            return Order(d["order_id"], _new_order(_map(d, "order")),
                         _enum(d, "state", OrderState), _num(d, "filled_quantity"),
                         _num(d, "avg_price"), d["epoch"], d["updated_ns"],
                         _num(d, "quantity"), _num(d, "price"), d.get("exec_seq", 0),
                         d.get("client_id", ""))
    raise AssertionError(f"no decoder for {kind.name}")  # pragma: no cover


def _decode_body(frames: list[bytes] | tuple[bytes, ...]) -> tuple[OrderKind, dict[str, Any]]:
    return decode_envelope(frames, OrderKind, "order", kind_label="order ")


def _decode_as(frames: list[bytes] | tuple[bytes, ...], kinds: frozenset[OrderKind] | None,
               what: str) -> OrderMessage:
    kind, d = _decode_body(frames)
    if kinds is not None and kind not in kinds:
        raise RemoteProtocolError(f"{kind.name} is not an order {what}")
    try:
        return _decode(kind, d)
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad {kind.name}: {type(exc).__name__} {exc}") from exc


def decode_order(frames: list[bytes] | tuple[bytes, ...]) -> OrderMessage:
    """Decode the frames of any order message (after the ROUTER identity, if any)."""
    return _decode_as(frames, None, "message")


def decode_order_request(frames: list[bytes] | tuple[bytes, ...]) -> OrderRequest:
    """Decode a client's request: a new order, a cancel or a replace."""
    msg = _decode_as(frames, _REQUESTS, "request")
    if not isinstance(msg, (NewOrder, CancelOrder, ReplaceOrder)):  # pragma: no cover
        raise AssertionError(f"{type(msg).__name__} decoded as a request")
    return msg


def decode_order_reply(frames: list[bytes] | tuple[bytes, ...]) -> OrderReply:
    """Decode the backend's answer to a request: an ack or a reject."""
    msg = _decode_as(frames, _REPLIES, "reply")
    if not isinstance(msg, (OrderAck, OrderReject)):  # pragma: no cover
        raise AssertionError(f"{type(msg).__name__} decoded as a reply")
    return msg


def to_blob(msg: OrderMessage) -> bytes:
    """One message as one byte string (its two frames joined): how the store keeps a record
    or a log entry, and how the pair's replication carries records."""
    header, body = encode_order(msg)
    return header + body


def from_blob(blob: bytes) -> OrderMessage:
    """The message of :func:`to_blob`; :class:`RemoteProtocolError` if malformed."""
    return decode_order([blob[:HEADER_SIZE], blob[HEADER_SIZE:]])


def is_execution(entry: ExecutionReport) -> bool:
    """True for the log entries recorded as executed: fills and final decisions."""
    return entry.is_fill or entry.state.terminal


@dataclass(frozen=True, slots=True)
class EncodedEntry:
    """An entry of an order's execution log as the pair and the store carry it: its position,
    the entry encoded once (:func:`to_blob`), and its exec id when it is an execution (a fill
    or a final decision: the store's executed set has it), else ""."""

    seq: int
    blob: bytes
    executed: str = ""

    @classmethod
    def of(cls, entry: ExecutionReport) -> EncodedEntry:
        return cls(entry.seq, to_blob(entry), entry.exec_id if is_execution(entry) else "")

    def decode(self) -> ExecutionReport:
        """The entry; :class:`RemoteProtocolError` if the blob is not one at this position."""
        msg = from_blob(self.blob)
        if not isinstance(msg, ExecutionReport) or msg.seq != self.seq:
            raise RemoteProtocolError(f"an encoded log entry at {self.seq} holds "
                                      f"{type(msg).__name__} {getattr(msg, 'seq', '')}")
        return msg


@dataclass(frozen=True, slots=True)
class EncodedOrder:
    """An order record as the store and the pair's replication carry it: its keys in the
    clear and the record encoded once (:func:`to_blob`). Whoever only keeps or forwards it
    (the passive node, the write-behind) never decodes it; :meth:`decode` does, once.
    ``entries``: the executor's log entries this version of the record applied (consecutive
    positions up to its ``exec_seq``), written to the store's log with it, atomically."""

    order_id: str
    account: str
    client_order_id: str
    terminal: bool
    blob: bytes
    entries: tuple[EncodedEntry, ...] = ()
    # The record itself where this process encoded it (not compared, not on the wire).
    cached: Order | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, order: Order, entries: tuple[EncodedEntry, ...] = ()) -> EncodedOrder:
        o = order.order
        return cls(order.order_id, o.account, o.client_order_id, order.terminal,
                   to_blob(order), entries, order)

    @property
    def key(self) -> tuple[str, str]:
        return self.account, self.client_order_id

    def decode(self) -> Order:
        """The record; :class:`RemoteProtocolError` if the blob is not an ``Order`` of these
        keys."""
        if self.cached is not None:
            return self.cached
        msg = from_blob(self.blob)
        if not isinstance(msg, Order):
            raise RemoteProtocolError(f"an encoded order holds a {type(msg).__name__}")
        if (msg.order_id, msg.order.account, msg.order.client_order_id) != (
                self.order_id, self.account, self.client_order_id):
            raise RemoteProtocolError(f"the record of {self.order_id} names other keys")
        return msg


def client_order_id_of(frames: list[bytes] | tuple[bytes, ...]) -> str:
    """Best-effort client order id of a (possibly malformed) request, for the reject; else ""."""
    try:
        _kind, data = _decode_body(frames)
        return check_id("client_order_id", data.get("client_order_id"))
    except (RemoteProtocolError, InvalidOrder):
        return ""


def reject_reason_of(error: RemoteProtocolError) -> RejectReason:
    """The reason to refuse a request that failed to decode with ``error``: BAD_SIDE,
    BAD_QUANTITY, BAD_PRICE or UNKNOWN_SYMBOL when that field was at fault, else MALFORMED."""
    cause = error.__cause__
    if isinstance(cause, InvalidOrder):
        return reject_reason_for(cause)
    return RejectReason.MALFORMED


__all__ = [
    "EncodedEntry",
    "EncodedOrder",
    "OrderKind",
    "client_order_id_of",
    "decode_order",
    "decode_order_reply",
    "decode_order_request",
    "encode_order",
    "from_blob",
    "is_execution",
    "reject_reason_of",
    "to_blob",
]
