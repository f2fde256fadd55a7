"""Encode and decode tickmesh messages to ZeroMQ frames and UDP datagrams (sans-I/O).

Feed messages (ticks, heartbeats, end of session) share one binary header, MoldUDP64-style::

    magic "TM" | version u8 | kind u8 | session u64 | first_seq u64 | count u16 | len u8 | stream

all big-endian, followed by a msgpack body (an array of ``count`` tick rows; empty for
heartbeats). On ZeroMQ the message is three frames ``[topic, header, body]`` where the topic is
the stream name plus a NUL byte, so a SUB socket can filter by exact symbol (``b"EURUSD\\0"``) or
by prefix (``b"EUR"``). On UDP one datagram is ``header + body``.

Recovery messages are two frames ``[magic "TM" | version | kind, msgpack map]``: the shared
envelope of ``protocols.wire``, which also opens the feed header.

Decoding is strict: anything malformed raises :class:`RemoteProtocolError` naming the reason.
docs/PROTOCOL.md is the normative description.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.ticks.messages import (
    MAX_BATCH,
    MAX_STREAM_BYTES,
    EndOfSession,
    ErrorCode,
    ErrorReply,
    FeedMessage,
    GapFillReply,
    GapFillRequest,
    Heartbeat,
    Kind,
    RecoveryReply,
    RecoveryRequest,
    Row,
    SeqRange,
    SnapshotEntry,
    SnapshotReply,
    SnapshotRequest,
    TickBatch,
    check_row,
)
from protocols.wire import MAGIC, PREFIX, PROTOCOL_VERSION, check_prefix, decode_envelope
from protocols.wire import pack_body as _pack
from protocols.wire import pack_header as _short

# The envelope's prefix (magic, version, kind), then session, first_seq, count, stream length.
_FEED_HEADER = struct.Struct(PREFIX.format + "QQHB")
FEED_HEADER_MIN = _FEED_HEADER.size  # 23 bytes, then the stream name
_FEED_KINDS = frozenset({Kind.TICKS, Kind.HEARTBEAT, Kind.END_OF_SESSION})
# A datagram that fits a 1500-byte Ethernet MTU after IPv4 (20) and UDP (8) headers.
DEFAULT_DATAGRAM_BYTES = 1472


@dataclass(frozen=True, slots=True)
class FeedHeader:
    """A decoded feed header: enough to drop a duplicate without decoding the body."""

    kind: Kind
    session: int
    first_seq: int
    count: int
    stream: str
    body_offset: int


def topic(stream: str) -> bytes:
    """The ZeroMQ topic frame of a stream: its UTF-8 name followed by NUL."""
    return stream.encode() + b"\x00"


def encode_header(kind: Kind, stream: str, session: int, first_seq: int, count: int) -> bytes:
    raw = stream.encode()
    if not 0 < len(raw) <= MAX_STREAM_BYTES:
        raise LocalProtocolError(f"stream name of {len(raw)} bytes")
    try:
        return _FEED_HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, session, first_seq, count,
                                 len(raw)) + raw
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode header: {exc}") from exc


def encode_rows(rows: tuple[Row, ...] | list[Row]) -> bytes:
    return msgpack.packb(rows, use_bin_type=True)  # type: ignore[no-any-return]


def encode_feed(msg: FeedMessage) -> tuple[bytes, bytes, bytes]:
    """Encode a feed message as ZeroMQ frames ``(topic, header, body)``."""
    match msg:
        case TickBatch(stream, session, first_seq, rows):
            return (topic(stream), encode_header(Kind.TICKS, stream, session, first_seq,
                                                 len(rows)), encode_rows(rows))
        case Heartbeat(stream, session, next_seq):
            return topic(stream), encode_header(Kind.HEARTBEAT, stream, session, next_seq, 0), b""
        case EndOfSession(stream, session, next_seq):
            return (topic(stream),
                    encode_header(Kind.END_OF_SESSION, stream, session, next_seq, 0), b"")
    raise LocalProtocolError(f"not a feed message: {msg!r:.80}")


def encode_datagrams(msg: FeedMessage, max_bytes: int = DEFAULT_DATAGRAM_BYTES) -> list[bytes]:
    """Encode a feed message as one or more UDP datagrams of at most ``max_bytes`` each.

    A batch too large for one datagram is split into consecutive sub-batches, each with its own
    first sequence and count, so every datagram stands alone.
    """
    if not isinstance(msg, TickBatch):
        _topic, header, body = encode_feed(msg)
        return [header + body]
    return tick_datagrams(msg.stream, msg.session, msg.first_seq, msg.rows, max_bytes)


def tick_datagrams(stream: str, session: int, first_seq: int,
                    rows: tuple[Row, ...] | list[Row], max_bytes: int) -> list[bytes]:
    """Split rows into as few datagrams as fit, sized from the encoded length."""
    header = encode_header(Kind.TICKS, stream, session, first_seq, len(rows))
    body = encode_rows(rows)
    if len(header) + len(body) <= max_bytes:
        return [header + body]
    if len(rows) == 1:
        raise LocalProtocolError(f"one tick needs {len(header) + len(body)} bytes, "
                                 f"more than the datagram limit {max_bytes}")
    # Rows encode to nearly the same size: cut into pieces that should fit, and split again
    # only a piece that does not (rare), instead of halving level by level.
    per_row = max(1.0, (len(body) - 3) / len(rows))
    fit = max(1, min(len(rows) - 1, int((max_bytes - len(header) - 3) / per_row)))
    out: list[bytes] = []
    for i in range(0, len(rows), fit):
        out += tick_datagrams(stream, session, first_seq + i, rows[i:i + fit], max_bytes)
    return out


def decode_header(buf: bytes | memoryview) -> FeedHeader:
    """Decode the header of a feed message (ZeroMQ header frame or UDP datagram)."""
    if len(buf) < FEED_HEADER_MIN:
        raise RemoteProtocolError(f"feed header of {len(buf)} bytes, need >= {FEED_HEADER_MIN}")
    magic, version, kind, session, first_seq, count, n = _FEED_HEADER.unpack_from(buf)
    check_prefix(magic, version)
    if kind not in _FEED_KINDS:
        raise RemoteProtocolError(f"kind {kind} is not a feed message")
    if not 0 < n <= MAX_STREAM_BYTES or len(buf) < FEED_HEADER_MIN + n:
        raise RemoteProtocolError(f"bad stream length {n}")
    try:
        stream = bytes(buf[FEED_HEADER_MIN:FEED_HEADER_MIN + n]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("stream name is not UTF-8") from exc
    if kind == Kind.TICKS:
        if not 1 <= count <= MAX_BATCH:
            raise RemoteProtocolError(f"tick batch with count {count}")
        if first_seq < 1:
            raise RemoteProtocolError("tick batch with first_seq 0")
    elif count != 0:
        raise RemoteProtocolError(f"{Kind(kind).name} with count {count}")
    return FeedHeader(Kind(kind), session, first_seq, count, stream, FEED_HEADER_MIN + n)


def decode_rows(body: bytes | memoryview, count: int) -> tuple[Row, ...]:
    """Decode and validate the msgpack body of a tick batch holding ``count`` rows."""
    try:
        rows = msgpack.unpackb(body, use_list=False, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise RemoteProtocolError(f"tick body is not msgpack: {exc}") from exc
    if not isinstance(rows, tuple) or len(rows) != count:
        raise RemoteProtocolError(f"tick body is not an array of {count} rows")
    try:
        return tuple(check_row(r) for r in rows)
    except ValueError as exc:
        raise RemoteProtocolError(f"bad tick row: {exc}") from exc


def _message(h: FeedHeader, body: bytes | memoryview) -> FeedMessage:
    try:
        if h.kind == Kind.TICKS:
            return TickBatch(h.stream, h.session, h.first_seq, decode_rows(body, h.count))
        if len(body):
            raise RemoteProtocolError(f"{h.kind.name} with a body of {len(body)} bytes")
        if h.kind == Kind.HEARTBEAT:
            return Heartbeat(h.stream, h.session, h.first_seq)
        return EndOfSession(h.stream, h.session, h.first_seq)
    except ValueError as exc:
        if isinstance(exc, RemoteProtocolError):
            raise
        raise RemoteProtocolError(str(exc)) from exc


def decode_feed(frames: list[bytes] | tuple[bytes, ...]) -> FeedMessage:
    """Decode ZeroMQ frames ``[topic, header, body]`` into a feed message."""
    if len(frames) != 3:
        raise RemoteProtocolError(f"feed message of {len(frames)} frames, need 3")
    tp, header, body = frames
    h = decode_header(header)
    if len(header) != h.body_offset:
        raise RemoteProtocolError("trailing bytes after the feed header")
    if bytes(tp) != topic(h.stream):
        raise RemoteProtocolError(f"topic {bytes(tp)!r:.80} does not match stream {h.stream!r}")
    return _message(h, body)


def decode_datagram(data: bytes | memoryview) -> FeedMessage:
    """Decode one UDP datagram into a feed message."""
    h = decode_header(data)
    return _message(h, memoryview(data)[h.body_offset:])


# --- recovery request/reply ------------------------------------------------------------------


def encode_recovery(msg: RecoveryRequest | RecoveryReply) -> list[bytes]:
    """Encode a recovery request or reply as ZeroMQ frames ``[header, body]``."""
    match msg:
        case SnapshotRequest(rid, prefixes):
            return [_short(Kind.SNAPSHOT_REQUEST), _pack({"id": rid, "prefixes": list(prefixes)})]
        case GapFillRequest(rid, stream, lo, hi):
            return [_short(Kind.GAP_FILL_REQUEST),
                    _pack({"id": rid, "stream": stream, "from": lo, "to": hi})]
        case SnapshotReply(rid, entries):
            return [_short(Kind.SNAPSHOT_REPLY), _pack(
                {"id": rid, "entries": [[e.stream, e.session, e.seq, e.row] for e in entries]})]
        case GapFillReply(rid, stream, lo, settled, batches, void, unknown):
            body = {"id": rid, "stream": stream, "from": lo, "settled_to": settled,
                    "batches": [[b.session, b.first_seq, b.rows] for b in batches],
                    "void": [[r.first, r.last] for r in void]}
            if unknown:  # a later key: sent only when there is one (docs/PROTOCOL.md 8)
                body["unknown"] = [[r.first, r.last] for r in unknown]
            return [_short(Kind.GAP_FILL_REPLY), _pack(body)]
        case ErrorReply(rid, code, message):
            return [_short(Kind.ERROR_REPLY),
                    _pack({"id": rid, "code": int(code), "message": message})]
    raise LocalProtocolError(f"not a recovery message: {msg!r:.80}")


def _decode_body(frames: list[bytes] | tuple[bytes, ...]) -> tuple[Kind, dict[str, Any]]:
    return decode_envelope(frames, Kind, "recovery")


def request_id_of(frames: list[bytes] | tuple[bytes, ...]) -> int:
    """The id of a (possibly malformed) request, for its error reply: read from the second
    frame whenever that is a msgpack map with a valid ``id``, whatever else is wrong with the
    request (header, kind, other keys); 0 only when no id can be read."""
    if len(frames) < 2:
        return 0
    try:
        data = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types on bad input
        return 0
    rid = data.get("id") if isinstance(data, dict) else None
    if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63:
        return rid
    return 0


def decode_request(frames: list[bytes] | tuple[bytes, ...]) -> RecoveryRequest:
    """Decode the frames of a recovery request (after the ROUTER identity)."""
    kind, d = _decode_body(frames)
    try:
        if kind == Kind.SNAPSHOT_REQUEST:
            if not isinstance(d["prefixes"], list):
                raise TypeError("prefixes must be an array of strings")
            return SnapshotRequest(d["id"], tuple(d["prefixes"]))
        if kind == Kind.GAP_FILL_REQUEST:
            return GapFillRequest(d["id"], d["stream"], d["from"], d["to"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad {kind.name}: {type(exc).__name__} {exc}") from exc
    raise RemoteProtocolError(f"{kind.name} is not a request")


def decode_reply(frames: list[bytes] | tuple[bytes, ...]) -> RecoveryReply:
    """Decode the frames of a recovery reply."""
    kind, d = _decode_body(frames)
    try:
        if kind == Kind.SNAPSHOT_REPLY:
            return SnapshotReply(d["id"], tuple(
                SnapshotEntry(s, ses, seq, check_row(row)) for s, ses, seq, row in d["entries"]))
        if kind == Kind.GAP_FILL_REPLY:
            stream = d["stream"]
            return GapFillReply(
                d["id"], stream, d["from"], d["settled_to"],
                tuple(TickBatch(stream, ses, first, tuple(check_row(r) for r in rows))
                      for ses, first, rows in d["batches"]),
                tuple(SeqRange(a, b) for a, b in d["void"]),
                tuple(SeqRange(a, b) for a, b in d.get("unknown", ())))
        if kind == Kind.ERROR_REPLY:
            return ErrorReply(d["id"], ErrorCode(d["code"]), str(d["message"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad {kind.name}: {type(exc).__name__} {exc}") from exc
    raise RemoteProtocolError(f"{kind.name} is not a reply")
