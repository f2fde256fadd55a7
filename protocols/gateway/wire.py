"""The gateway's WebSocket protocol v1 (docs/GATEWAY.md, section 3): client frames in, server
frames out, as JSON text (sans-I/O).

Rules:

* One JSON object per text frame; ``op`` names the kind. :func:`decode_client` turns a client's
  frame into a frozen message or raises :class:`~protocols.errors.BadRequest` with the code the
  ``error`` frame carries: ``too_big`` (fatal), ``bad_json``, ``bad_request``,
  ``unknown_stream``. Field checks are strict (types, ranges) because a browser is a hostile
  peer: what it sends is never trusted to be well formed.
* Stream names (:func:`parse_stream`): ``ticks:{SYMBOL}``, ``bars:{SYMBOL}:{RES}`` (a
  TradingView resolution name), ``orders``, ``status``. The symbol must be one the gateway
  serves.
* Server frames are built by the ``*_frame`` functions; stream items by ``*_item`` as JSON
  fragments, so one item is encoded once and joined into every client's ``batch``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from protocols.errors import BadRequest
from protocols.history.bars import RESOLUTIONS, Bar, format_resolution
from protocols.history.schema import NS_PER_S

__all__ = [
    "PROTOCOL_VERSION",
    "Cancel",
    "ClientMessage",
    "Hello",
    "Ping",
    "Place",
    "Position",
    "Replace",
    "StreamKind",
    "StreamName",
    "Subscribe",
    "Unsubscribe",
    "bar_item",
    "batch_frame",
    "decode_client",
    "dumps",
    "frame",
    "parse_stream",
    "tick_item",
]

PROTOCOL_VERSION = 1
MAX_ID = 2**53 - 1  # a client's request id: any integer JavaScript holds exactly
MAX_STREAMS_IN_HELLO = 256


def dumps(obj: object) -> str:
    """Compact JSON; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


class StreamKind(Enum):
    TICKS = "ticks"
    BARS = "bars"
    ORDERS = "orders"
    STATUS = "status"

    @property
    def latest_value(self) -> bool:
        """True for the streams a client gets the newest value of, never a backlog."""
        return self in (StreamKind.TICKS, StreamKind.STATUS)


@dataclass(frozen=True, slots=True)
class StreamName:
    kind: StreamKind
    symbol: str = ""
    res_s: int = 0

    @property
    def name(self) -> str:
        if self.kind is StreamKind.TICKS:
            return f"ticks:{self.symbol}"
        if self.kind is StreamKind.BARS:
            return f"bars:{self.symbol}:{format_resolution(self.res_s)}"
        return str(self.kind.value)


def parse_stream(name: object, symbols: Collection[str]) -> StreamName:
    """The stream ``name`` names; ``BadRequest('unknown_stream')`` unless the gateway serves it."""
    if not isinstance(name, str) or not name or len(name) > 128:
        raise BadRequest("bad_request", f"stream must be a non-empty string, got {name!r:.80}")
    kind, _, rest = name.partition(":")
    if kind in ("orders", "status") and not rest:
        return StreamName(StreamKind(kind))
    if kind == "ticks" and rest:
        _known(rest, symbols, name)
        return StreamName(StreamKind.TICKS, rest)
    if kind == "bars" and rest:
        symbol, _, res = rest.rpartition(":")
        _known(symbol, symbols, name)
        if res.upper() not in RESOLUTIONS:
            raise BadRequest("unknown_stream", f"{name!r}: unknown resolution {res!r}; use one "
                                               f"of {', '.join(RESOLUTIONS)}")
        return StreamName(StreamKind.BARS, symbol, RESOLUTIONS[res.upper()])
    raise BadRequest("unknown_stream", f"{name!r:.80} is not a stream: use ticks:SYMBOL, "
                                       "bars:SYMBOL:RES, orders or status")


def _known(symbol: str, symbols: Collection[str], name: str) -> None:
    if symbol not in symbols:
        raise BadRequest("unknown_stream", f"{name!r:.80}: unknown symbol {symbol!r:.40}")


# --- client messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client stands in one stream: the last item it applied."""

    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class Hello:
    token: str
    streams: Mapping[str, Position]
    client: str = ""


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: int
    stream: str
    since: Position | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: int
    stream: str


@dataclass(frozen=True, slots=True)
class Place:
    id: int
    order: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Cancel:
    id: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Replace:
    id: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Ping:
    t: float


ClientMessage = Hello | Subscribe | Unsubscribe | Place | Cancel | Replace | Ping


def decode_client(text: str | bytes, max_bytes: int) -> ClientMessage:
    """One client frame as a message; raises :class:`BadRequest` naming what is wrong."""
    if len(text) > max_bytes:
        raise BadRequest("too_big", f"frame of {len(text)} bytes exceeds {max_bytes}", True)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[...]]]] nested deep
        raise BadRequest("bad_json", f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise BadRequest("bad_request", "a frame must be a JSON object")
    op = obj.get("op")
    match op:
        case "hello":
            return _hello(obj)
        case "subscribe":
            raw = obj.get("from")
            return Subscribe(_id(obj), _str(obj, "stream"),
                             None if raw is None else _position("from", raw))
        case "unsubscribe":
            return Unsubscribe(_id(obj), _str(obj, "stream"))
        case "place":
            return Place(_id(obj), _object(obj, "order"))
        case "cancel":
            return Cancel(_id(obj), obj)
        case "replace":
            return Replace(_id(obj), obj)
        case "ping":
            return Ping(_number(obj, "t"))
    raise BadRequest("bad_request", f"unknown op {op!r:.40}: use hello, subscribe, unsubscribe, "
                                    "place, cancel, replace or ping")


def _hello(obj: Mapping[str, Any]) -> Hello:
    if obj.get("v") != PROTOCOL_VERSION:
        raise BadRequest("bad_hello", f"protocol version {obj.get('v')!r:.20} is not "
                                      f"supported: this gateway speaks v{PROTOCOL_VERSION}", True)
    token = obj.get("token")
    if not isinstance(token, str) or not token or len(token) > 256:
        raise BadRequest("auth", "hello needs the session token from /api/login", True)
    raw = obj.get("streams", {})
    if not isinstance(raw, dict) or len(raw) > MAX_STREAMS_IN_HELLO:
        raise BadRequest("bad_hello", "streams must be an object {stream: [epoch, seq]} of at "
                                      f"most {MAX_STREAMS_IN_HELLO} streams", True)
    streams = {k: _position(f"streams.{k:.40}", v) for k, v in raw.items()}
    client = obj.get("client", "")
    return Hello(token, streams, client[:80] if isinstance(client, str) else "")


def _position(what: str, raw: object) -> Position:
    if (isinstance(raw, list) and len(raw) == 2
            and all(type(v) is int and 0 <= v <= MAX_ID for v in raw)):
        return Position(raw[0], raw[1])
    raise BadRequest("bad_request", f"{what} must be [epoch, seq], two integers >= 0")


def _id(obj: Mapping[str, Any]) -> int:
    value = obj.get("id")
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise BadRequest("bad_request", f"{obj.get('op')} needs an integer id >= 0")
    return value


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest("bad_request", f"{obj.get('op')} needs {key} (a string)")
    return value


def _object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise BadRequest("bad_request", f"{obj.get('op')} needs {key} (an object)")
    return value


def _number(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise BadRequest("bad_request", f"{obj.get('op')} needs {key} (a number)")
    return float(value)


# --- server frames and stream items ----------------------------------------------------------


def frame(op: str, **fields: Any) -> str:
    """A server frame ``{"op": op, **fields}`` as text."""
    return dumps({"op": op, **fields})


def batch_frame(t_ms: int, fragments: list[str]) -> str:
    """A ``batch`` of already-encoded items (see :func:`tick_item`, :func:`bar_item`)."""
    return f'{{"op":"batch","t":{t_ms},"items":[{",".join(fragments)}]}}'


def tick_item(stream: str, epoch: int, seq: int, bid: float, ask: float, last: float,
              volume: float, source_ns: int, feed_ns: int, folded: int) -> str:
    return dumps({"stream": stream, "epoch": epoch, "seq": seq, "kind": "tick", "bid": bid,
                  "ask": ask, "last": last, "volume": volume, "ts": source_ns // 1_000_000,
                  "ft": feed_ns // 1000, "n": folded})


def bar_json(bar: Bar, closed: bool) -> dict[str, Any]:
    """A bar as the page and the datafeed take it: ``time`` in epoch seconds."""
    return {"time": bar.start_ns // NS_PER_S, "open": bar.open, "high": bar.high,
            "low": bar.low, "close": bar.close, "volume": bar.volume, "closed": closed}


def bar_item(stream: str, epoch: int, bar: Bar, closed: bool) -> str:
    return dumps({"stream": stream, "epoch": epoch, "seq": bar.last_seq, "kind": "bar",
                  **bar_json(bar, closed)})


def item(stream: str, epoch: int, seq: int, kind: str, body: Mapping[str, Any]) -> str:
    """Any other stream item (orders, status, snapshots): ``body``'s fields beside the header."""
    return dumps({"stream": stream, "epoch": epoch, "seq": seq, "kind": kind, **body})
