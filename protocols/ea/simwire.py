"""The simulated terminal's request/reply codec, without I/O (docs/PROTOCOL.md section 19).

``bus.ea.simclient.SimTerminal`` (a DEALER) asks the terminal process ``nodes.ea.simterm`` (a
ROUTER) one question per :class:`~bus.ea.terminal.Terminal` method. Rules:

* Every message is the two-frame envelope of ``protocols.wire`` with a kind of
  :class:`SimKind` (120-139): one request kind per Terminal method, REPLY and ERROR.
* Every message carries ``id``, an int in ``1 .. 2^63 - 1`` chosen by the client (a new one
  per call), and the answer carries it back; an ERROR whose request's id could not be read
  carries 0.
* A REPLY names the kind it answers (``of``), so its ``result`` decodes to the record types
  of that call. Records (``protocols.ea.mt5``) travel as msgpack arrays of their fields in
  declaration order, enums as ints; every field is checked.
* An ERROR carries a ``message``: the terminal could not serve the request (the client raises
  ``TerminalError``). A trade request the terminal refuses is not an error: ``order_send``'s
  result holds the retcode.

Malformed input raises :class:`RemoteProtocolError` naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, TypeVar

from protocols.ea.mt5 import (
    Action,
    DealEntry,
    DealType,
    Filling,
    OrderSendResult,
    OrderStateMt5,
    OrderType,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)
from protocols.errors import RemoteProtocolError
from protocols.wire import decode_envelope, encode_envelope

MAX_ID = 2**63 - 1
MAX_TICKS = 100_000  # copy_ticks_from's largest count: a reply of 4.6 MB at 46 bytes a tick


class SimKind(IntEnum):
    INITIALIZE = 120
    SHUTDOWN = 121
    SYMBOLS = 122
    SYMBOL_INFO_TICK = 123
    COPY_TICKS_FROM = 124
    ORDER_SEND = 125
    ORDERS_GET = 126
    POSITIONS_GET = 127
    HISTORY_ORDERS_GET = 128
    HISTORY_DEALS_GET = 129
    REPLY = 138
    ERROR = 139


# --- messages ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Initialize:
    id: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    id: int


@dataclass(frozen=True, slots=True)
class Symbols:
    id: int


@dataclass(frozen=True, slots=True)
class SymbolInfoTick:
    id: int
    symbol: str


@dataclass(frozen=True, slots=True)
class CopyTicksFrom:
    id: int
    symbol: str
    from_msc: int
    count: int  # 0 .. MAX_TICKS


@dataclass(frozen=True, slots=True)
class OrderSend:
    id: int
    request: TradeRequest


@dataclass(frozen=True, slots=True)
class OrdersGet:
    id: int


@dataclass(frozen=True, slots=True)
class PositionsGet:
    id: int


@dataclass(frozen=True, slots=True)
class HistoryOrdersGet:
    id: int
    from_msc: int
    to_msc: int


@dataclass(frozen=True, slots=True)
class HistoryDealsGet:
    id: int
    from_msc: int
    to_msc: int


Result = (None | tuple[str, ...] | Tick | tuple[Tick, ...] | OrderSendResult
          | tuple[TradeOrder, ...] | tuple[TradePosition, ...] | tuple[TradeDeal, ...])


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to request ``id`` of kind ``of``: ``result`` has that call's type (a
    sequence of records as a tuple; None for INITIALIZE, SHUTDOWN and a symbol without a
    tick)."""

    id: int
    of: SimKind
    result: Result


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The terminal could not serve request ``id`` (0: its id was unreadable)."""

    id: int
    message: str


SimRequest = (Initialize | Shutdown | Symbols | SymbolInfoTick | CopyTicksFrom | OrderSend
              | OrdersGet | PositionsGet | HistoryOrdersGet | HistoryDealsGet)
SimMessage = SimRequest | Reply | ErrorReply

REQUEST_KINDS: dict[type[Any], SimKind] = {
    Initialize: SimKind.INITIALIZE, Shutdown: SimKind.SHUTDOWN, Symbols: SimKind.SYMBOLS,
    SymbolInfoTick: SimKind.SYMBOL_INFO_TICK, CopyTicksFrom: SimKind.COPY_TICKS_FROM,
    OrderSend: SimKind.ORDER_SEND, OrdersGet: SimKind.ORDERS_GET,
    PositionsGet: SimKind.POSITIONS_GET, HistoryOrdersGet: SimKind.HISTORY_ORDERS_GET,
    HistoryDealsGet: SimKind.HISTORY_DEALS_GET,
}
_REQUEST_OF = {kind: cls for cls, kind in REQUEST_KINDS.items()}


# --- records as arrays -----------------------------------------------------------------------

R = TypeVar("R")


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 2**64 - 1:
        raise RemoteProtocolError(f"terminal message: {what} must be an integer >= 0")
    return v


def _num(v: Any, what: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise RemoteProtocolError(f"terminal message: {what} must be a finite number")
    return float(v)


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise RemoteProtocolError(f"terminal message: {what} must be a string")
    return v


def _enum_check(enum: type[IntEnum]) -> Callable[[Any, str], Any]:
    def check(v: Any, what: str) -> Any:
        try:
            return enum(_int(v, what))
        except ValueError:
            raise RemoteProtocolError(f"terminal message: unknown {what} {v}") from None
    return check


# A record field's checker by its annotation (the dataclasses' annotations are strings).
_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "int": _int, "float": _num, "str": _str,
    **{e.__name__: _enum_check(e) for e in (Action, OrderType, Filling, OrderStateMt5,
                                              DealType, DealEntry)},
}


def pack_record(record: Any) -> list[Any]:
    """A ``protocols.ea.mt5`` record as the array of its fields (enums as ints)."""
    return [int(v) if isinstance(v, IntEnum) else v
            for v in (getattr(record, f.name) for f in fields(record))]


def unpack_record(cls: type[R], raw: Any) -> R:
    """The ``cls`` record of an array made by :func:`pack_record`; every field checked."""
    spec = fields(cls)  # type: ignore[arg-type]
    if not isinstance(raw, list) or len(raw) != len(spec):
        raise RemoteProtocolError(f"terminal message: a {cls.__name__} must be an array of "
                                  f"{len(spec)} fields")
    values = [_CHECKS[str(f.type)](v, f"{cls.__name__}.{f.name}")
              for f, v in zip(spec, raw, strict=True)]
    try:
        return cls(*values)
    except (TypeError, ValueError) as exc:  # a record's own validation
        raise RemoteProtocolError(f"terminal message: bad {cls.__name__}: {exc}") from None


def _records(cls: type[R], raw: Any, what: str) -> tuple[R, ...]:
    if not isinstance(raw, list):
        raise RemoteProtocolError(f"terminal message: {what} must be an array")
    return tuple(unpack_record(cls, r) for r in raw)


# The record type of each reply's result that is a sequence of records.
_SEQUENCE_OF: dict[SimKind, type[Any]] = {
    SimKind.COPY_TICKS_FROM: Tick, SimKind.ORDERS_GET: TradeOrder,
    SimKind.POSITIONS_GET: TradePosition, SimKind.HISTORY_ORDERS_GET: TradeOrder,
    SimKind.HISTORY_DEALS_GET: TradeDeal,
}


def _pack_result(of: SimKind, result: Result) -> Any:
    if of in (SimKind.INITIALIZE, SimKind.SHUTDOWN):
        return None
    if of is SimKind.SYMBOLS:
        return list(result)  # type: ignore[arg-type]
    if of in (SimKind.SYMBOL_INFO_TICK, SimKind.ORDER_SEND):
        return None if result is None else pack_record(result)
    return [pack_record(r) for r in result]  # type: ignore[union-attr]


def _unpack_result(of: SimKind, raw: Any) -> Result:
    match of:
        case SimKind.INITIALIZE | SimKind.SHUTDOWN:
            if raw is not None:
                raise RemoteProtocolError(f"terminal message: {of.name} result must be nil")
            return None
        case SimKind.SYMBOLS:
            if not isinstance(raw, list):
                raise RemoteProtocolError("terminal message: SYMBOLS result must be an array")
            return tuple(_str(s, "symbol") for s in raw)
        case SimKind.SYMBOL_INFO_TICK:
            return None if raw is None else unpack_record(Tick, raw)
        case SimKind.ORDER_SEND:
            return unpack_record(OrderSendResult, raw)
        case SimKind.REPLY | SimKind.ERROR:
            raise RemoteProtocolError(f"terminal message: a REPLY cannot answer {of.name}")
    return _records(_SEQUENCE_OF[of], raw, f"{of.name} result")


# --- codec -----------------------------------------------------------------------------------

def encode_sim(msg: SimMessage) -> list[bytes]:
    """The two frames of ``msg``."""
    body: dict[str, Any] = {"id": msg.id}
    match msg:
        case Reply():
            kind = SimKind.REPLY
            body |= {"of": int(msg.of), "result": _pack_result(msg.of, msg.result)}
        case ErrorReply():
            kind = SimKind.ERROR
            body["message"] = msg.message
        case SymbolInfoTick():
            kind, body["symbol"] = SimKind.SYMBOL_INFO_TICK, msg.symbol
        case CopyTicksFrom():
            kind = SimKind.COPY_TICKS_FROM
            body |= {"symbol": msg.symbol, "from_msc": msg.from_msc, "count": msg.count}
        case OrderSend():
            kind, body["request"] = SimKind.ORDER_SEND, pack_record(msg.request)
        case HistoryOrdersGet() | HistoryDealsGet():
            kind = REQUEST_KINDS[type(msg)]
            body |= {"from_msc": msg.from_msc, "to_msc": msg.to_msc}
        case _:
            kind = REQUEST_KINDS[type(msg)]
    return encode_envelope(kind, body)


def _id(d: dict[str, Any], *, zero: bool = False) -> int:
    v = d.get("id")
    if (not isinstance(v, int) or isinstance(v, bool)
            or not (0 if zero else 1) <= v <= MAX_ID):
        raise RemoteProtocolError("terminal message: id must be an integer in 1 .. 2^63 - 1")
    return v


def decode_sim(frames: list[bytes] | tuple[bytes, ...]) -> SimMessage:
    """The message of ``frames``; :class:`RemoteProtocolError` naming what is wrong."""
    kind, d = decode_envelope(frames, SimKind, "terminal", "terminal ")
    match kind:
        case SimKind.REPLY:
            try:
                of = SimKind(_int(d.get("of"), "of"))
            except ValueError:
                raise RemoteProtocolError(f"terminal message: unknown of {d.get('of')}") \
                    from None
            return Reply(_id(d), of, _unpack_result(of, d.get("result")))
        case SimKind.ERROR:
            return ErrorReply(_id(d, zero=True), _str(d.get("message"), "message"))
        case SimKind.SYMBOL_INFO_TICK:
            return SymbolInfoTick(_id(d), _str(d.get("symbol"), "symbol"))
        case SimKind.COPY_TICKS_FROM:
            count = _int(d.get("count"), "count")
            if count > MAX_TICKS:
                raise RemoteProtocolError(f"terminal message: count {count} above {MAX_TICKS}")
            return CopyTicksFrom(_id(d), _str(d.get("symbol"), "symbol"),
                                 _int(d.get("from_msc"), "from_msc"), count)
        case SimKind.ORDER_SEND:
            return OrderSend(_id(d), unpack_record(TradeRequest, d.get("request")))
        case SimKind.HISTORY_ORDERS_GET | SimKind.HISTORY_DEALS_GET:
            lo, hi = _int(d.get("from_msc"), "from_msc"), _int(d.get("to_msc"), "to_msc")
            cls = HistoryOrdersGet if kind is SimKind.HISTORY_ORDERS_GET else HistoryDealsGet
            return cls(_id(d), lo, hi)
    return _REQUEST_OF[kind](_id(d))  # type: ignore[no-any-return]


def request_id_of(frames: list[bytes] | tuple[bytes, ...]) -> int:
    """The id of a request that failed to decode, when it can be read (0 otherwise), so its
    ERROR reaches the caller waiting for it."""
    try:
        _, d = decode_envelope(frames, SimKind, "terminal")
        return _id(d)
    except RemoteProtocolError:
        return 0


__all__ = [
    "MAX_ID",
    "MAX_TICKS",
    "REQUEST_KINDS",
    "CopyTicksFrom",
    "ErrorReply",
    "HistoryDealsGet",
    "HistoryOrdersGet",
    "Initialize",
    "OrderSend",
    "OrdersGet",
    "PositionsGet",
    "Reply",
    "Result",
    "Shutdown",
    "SimKind",
    "SimMessage",
    "SimRequest",
    "SymbolInfoTick",
    "Symbols",
    "decode_sim",
    "encode_sim",
    "pack_record",
    "request_id_of",
    "unpack_record",
]
