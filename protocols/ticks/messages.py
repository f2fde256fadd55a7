"""Messages of the tickmesh wire protocol, as frozen, self-validating dataclasses.

A *stream* is one symbol's sequence of ticks, owned by exactly one feed. Every tick of a stream
carries a sequence number, one higher than the previous tick's, and the *session* of the feed
process that published it (a feed restarted from the store keeps counting, under a new session).
Ticks travel in batches: ``TickBatch(stream, session, first_seq, rows)`` holds consecutive ticks
``first_seq .. first_seq + len(rows) - 1``. The same batch is sent on both paths (ZeroMQ and UDP),
so a receiver can discard the second copy by its header alone.

The wire layout of every message is specified in docs/PROTOCOL.md; the codec lives in
``protocols.ticks.codec``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import IntEnum

from protocols.wire import PROTOCOL_VERSION

_new = object.__new__
_set = object.__setattr__  # frozen dataclasses are filled this way by their own __init__

MAX_STREAM_BYTES = 64
MAX_BATCH = 0xFFFE  # u16 count; 0xFFFF is reserved (MoldUDP64's end-of-session marker)
MAX_SEQ = 2**63 - 1  # fits i64 as well as u64, so non-C peers and Redis ids stay simple

# One tick row on the wire: [bid, ask, last, volume, source_time_ns, feed_time_ns].
Row = tuple[float, float, float, float, int, int]
ROW_FIELDS = 6


# NUL ends a ZeroMQ topic; control characters make filters and logs ambiguous. (One regex
# search: every account, id and symbol of every order message is checked with it.)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def check_stream(stream: object) -> str:
    """Return ``stream`` if it is a valid stream (= symbol) name, else raise ``ValueError``."""
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"symbol must be a non-empty string, got {stream!r}")
    raw = stream.encode("utf-8", "strict")
    if len(raw) > MAX_STREAM_BYTES:
        raise ValueError(f"symbol {stream!r} is longer than {MAX_STREAM_BYTES} bytes")
    if _CONTROL.search(raw) is not None:
        raise ValueError(f"symbol {stream!r} contains a control character")
    return stream


def check_price(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a valid price or volume (section 7)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer beyond the float range (JSON has no size limit)
        finite = False
    if not finite or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r:.40}")


def check_time(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a time in ns that fits a u64 (section 7)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**64 - 1:
        raise ValueError(f"{name} must be an integer of nanoseconds in 0..2**64-1, "
                         f"got {value!r:.40}")


def check_row(row: object) -> Row:
    """Validate one tick row and return it as a tuple (extra trailing fields are ignored)."""
    if not isinstance(row, (list, tuple)) or len(row) < ROW_FIELDS:
        raise ValueError(f"a tick row needs {ROW_FIELDS} fields, got {row!r:.80}")
    bid, ask, last, volume, src, feed = row[:ROW_FIELDS]
    check_price("bid", bid)
    check_price("ask", ask)
    check_price("last", last)
    check_price("volume", volume)
    check_time("source_time_ns", src)
    check_time("feed_time_ns", feed)
    if bid > ask and ask > 0:
        raise ValueError(f"crossed quote: bid {bid} > ask {ask}")
    return (float(bid), float(ask), float(last), float(volume), src, feed)


@dataclass(frozen=True, slots=True)
class Tick:
    """One price update of one symbol, as delivered to subscribers.

    ``seq`` and ``session`` are 0 for a tick that has not been sequenced by a feed yet.
    ``snapshot`` is True for the last-value tick a late joiner receives before live data.
    """

    symbol: str
    bid: float
    ask: float
    last: float
    volume: float
    source_time_ns: int
    feed_time_ns: int = 0
    seq: int = 0
    session: int = 0
    snapshot: bool = False

    def __post_init__(self) -> None:
        check_stream(self.symbol)
        check_row(self.row())
        _check_seq("seq", self.seq)
        _check_session(self.session)

    def row(self) -> Row:
        """The wire row of this tick (the symbol and sequence travel in the batch header)."""
        return (self.bid, self.ask, self.last, self.volume, self.source_time_ns,
                self.feed_time_ns)

    @classmethod
    def from_row(cls, symbol: str, seq: int, session: int, row: Row,
                 snapshot: bool = False) -> Tick:
        """Build a tick from a row that was already validated (by the codec or a message).

        The subscriber calls this for every tick it delivers; validating the row a second
        time cost more than half of the subscriber's CPU, so this path trusts its input.
        Construct ``Tick(...)`` directly to validate.
        """
        t = _new(cls)
        _set(t, "symbol", symbol)
        _set(t, "bid", row[0])
        _set(t, "ask", row[1])
        _set(t, "last", row[2])
        _set(t, "volume", row[3])
        _set(t, "source_time_ns", row[4])
        _set(t, "feed_time_ns", row[5])
        _set(t, "seq", seq)
        _set(t, "session", session)
        _set(t, "snapshot", snapshot)
        return t


class Kind(IntEnum):
    """Message kinds; the byte at offset 3 of every header."""

    TICKS = 1
    HEARTBEAT = 2
    END_OF_SESSION = 3
    SNAPSHOT_REQUEST = 16
    SNAPSHOT_REPLY = 17
    GAP_FILL_REQUEST = 18
    GAP_FILL_REPLY = 19
    ERROR_REPLY = 20


def _check_seq(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQ:
        raise ValueError(f"{name} must be an integer in [0, {MAX_SEQ}], got {value!r}")


def _check_session(session: int) -> None:
    if (not isinstance(session, int) or isinstance(session, bool)
            or not 0 <= session <= 2**64 - 1):
        raise ValueError(f"session must be a u64, got {session!r}")


@dataclass(frozen=True, slots=True)
class TickBatch:
    """Consecutive ticks ``first_seq ..`` of one stream, from one feed session."""

    stream: str
    session: int
    first_seq: int
    rows: tuple[Row, ...]

    def __post_init__(self) -> None:
        check_stream(self.stream)
        _check_session(self.session)
        _check_seq("first_seq", self.first_seq)
        if not 1 <= len(self.rows) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} ticks, got {len(self.rows)}")
        if self.first_seq < 1 or self.last_seq > MAX_SEQ:
            raise ValueError(f"sequence range {self.first_seq}..{self.last_seq} out of range")

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.rows) - 1

    def ticks(self) -> list[Tick]:
        return [Tick.from_row(self.stream, self.first_seq + i, self.session, r)
                for i, r in enumerate(self.rows)]


@dataclass(frozen=True, slots=True)
class _StreamMark:
    """A stream position without ticks: ``next_seq`` is the sequence the next tick will carry."""

    stream: str
    session: int
    next_seq: int

    def __post_init__(self) -> None:
        check_stream(self.stream)
        _check_session(self.session)
        _check_seq("next_seq", self.next_seq)


@dataclass(frozen=True, slots=True)
class Heartbeat(_StreamMark):
    """Sent for an idle stream. A receiver whose own next sequence is lower has lost the tail."""


@dataclass(frozen=True, slots=True)
class EndOfSession(_StreamMark):
    """The feed stops this stream in an orderly way (same meaning of ``next_seq``)."""


FeedMessage = TickBatch | Heartbeat | EndOfSession


def _check_request_id(request_id: int) -> None:
    if (not isinstance(request_id, int) or isinstance(request_id, bool)
            or not 0 <= request_id < 2**63):
        raise ValueError(f"request id must be an integer in [0, 2**63), got {request_id!r}")


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Ask for the last value of every stream whose name starts with one of ``prefixes``.

    An empty prefix matches every stream.
    """

    request_id: int
    prefixes: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        if not self.prefixes or len(self.prefixes) > 1024:
            raise ValueError("a snapshot request names 1..1024 prefixes")
        for p in self.prefixes:
            if not isinstance(p, str) or len(p.encode()) > MAX_STREAM_BYTES:
                raise ValueError(f"bad prefix {p!r}")


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """The last checkpointed tick of one stream."""

    stream: str
    session: int
    seq: int
    row: Row

    def __post_init__(self) -> None:
        check_stream(self.stream)
        _check_session(self.session)
        _check_seq("seq", self.seq)
        check_row(self.row)

    def tick(self) -> Tick:
        return Tick.from_row(self.stream, self.seq, self.session, self.row, snapshot=True)


@dataclass(frozen=True, slots=True)
class SnapshotReply:
    request_id: int
    entries: tuple[SnapshotEntry, ...]

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class GapFillRequest:
    """Ask for ticks ``from_seq .. to_seq`` (inclusive) of ``stream``."""

    request_id: int
    stream: str
    from_seq: int
    to_seq: int

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        check_stream(self.stream)
        _check_seq("from_seq", self.from_seq)
        _check_seq("to_seq", self.to_seq)
        if not 1 <= self.from_seq <= self.to_seq:
            raise ValueError(f"empty or inverted range {self.from_seq}..{self.to_seq}")


@dataclass(frozen=True, slots=True)
class SeqRange:
    """An inclusive range of sequence numbers."""

    first: int
    last: int

    def __post_init__(self) -> None:
        _check_seq("first", self.first)
        _check_seq("last", self.last)
        if self.first > self.last:
            raise ValueError(f"inverted range {self.first}..{self.last}")


@dataclass(frozen=True, slots=True)
class GapFillReply:
    """The answer to a :class:`GapFillRequest`.

    ``settled_to`` is the highest sequence the service can speak for: every sequence in
    ``from_seq .. settled_to`` is either in ``batches``, inside a ``void`` range (proven never to
    have carried a tick), inside an ``unknown`` range (reserved by a feed that died before its
    checkpoints caught up: it may have published ticks there, of which no copy is stored), or
    lost for good (trimmed from the capped stream). Sequences above ``settled_to`` were not
    checkpointed yet; ask again later. ``settled_to`` is ``from_seq - 1`` when nothing is
    settled yet.
    """

    request_id: int
    stream: str
    from_seq: int
    settled_to: int
    batches: tuple[TickBatch, ...] = ()
    void: tuple[SeqRange, ...] = ()
    unknown: tuple[SeqRange, ...] = ()

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        check_stream(self.stream)
        _check_seq("from_seq", self.from_seq)
        _check_seq("settled_to", self.settled_to)
        if self.settled_to < self.from_seq - 1:
            raise ValueError(f"settled_to {self.settled_to} below from_seq {self.from_seq} - 1")
        for b in self.batches:
            if b.stream != self.stream:
                raise ValueError(f"batch of stream {b.stream!r} in a reply for {self.stream!r}")


class ErrorCode(IntEnum):
    BAD_REQUEST = 1
    STORE_UNAVAILABLE = 2
    INTERNAL = 3


@dataclass(frozen=True, slots=True)
class ErrorReply:
    request_id: int
    code: ErrorCode
    message: str

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        if not isinstance(self.code, ErrorCode):
            raise ValueError(f"unknown error code {self.code!r}")


RecoveryRequest = SnapshotRequest | GapFillRequest
RecoveryReply = SnapshotReply | GapFillReply | ErrorReply

__all__ = [
    "MAX_BATCH",
    "MAX_SEQ",
    "MAX_STREAM_BYTES",
    "PROTOCOL_VERSION",
    "ROW_FIELDS",
    "EndOfSession",
    "ErrorCode",
    "ErrorReply",
    "FeedMessage",
    "GapFillReply",
    "GapFillRequest",
    "Heartbeat",
    "Kind",
    "RecoveryReply",
    "RecoveryRequest",
    "Row",
    "SeqRange",
    "SnapshotEntry",
    "SnapshotReply",
    "SnapshotRequest",
    "Tick",
    "TickBatch",
    "check_price",
    "check_row",
    "check_stream",
    "check_time",
]
