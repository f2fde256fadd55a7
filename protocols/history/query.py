"""The history query protocol: readers ask the historian for history (sans-I/O).

A DuckDB file can be open in one process only, and the historian holds it; it also holds each
stream's forming bars in memory. So readers (the ``tickmesh history`` CLI, the backend's
rebuild, the chart gateway) send it requests over ZeroMQ (DEALER to its ROUTER) and it answers
from its store and its bar builders. docs/PROTOCOL.md section 17 is the normative text.

Rules:

- Every message is the two-frame envelope of ``protocols.wire`` with its own kinds
  (:class:`QueryKind`, 80..95)::

      [magic "TM" | version u8 | kind u8, msgpack map]

- A request carries ``id`` (1 .. 2^63 - 1, chosen by the client); every reply to it echoes
  the id. ``0`` is never a request id: it marks an error reply to a request whose id could not
  be read (:func:`query_id_of`), which the server drops instead of answering.
- A query for rows is answered by one or more COLUMNS replies, ``part`` 0, 1, ... in order,
  the last with ``final`` true: each reply's frame stays within the reader's frame limit
  (:func:`encode_columns` splits by size), and the rows of all parts, concatenated, are the
  store's answer in the store's order. A whole answer holds at most :data:`MAX_REPLY_ROWS`
  rows: a TICKS ``limit`` and a BARS ``countback`` are capped at it, and a range with more
  rows is refused with ``TOO_LARGE`` (page by time: a narrower range).
- READ_ABOVE (what a writer copies to a store that returns: the rows above given watermarks)
  names at most :data:`MAX_MARKS` groups; it is answered with COLUMNS like the others.
- While a request is in service the historian sends PENDING every so often (a store read
  can take longer than a reader's timeout): a reader counts it as a sign of progress.
- FORMING is answered with FORMING_BAR (the bar in progress, or nil when the stream has no
  tick at that resolution yet), WATERMARKS with MARKS, PING with PONG.
- Anything may be answered with ERROR (:class:`QueryError`).
- Decoding is strict: anything malformed raises :class:`RemoteProtocolError` naming the
  reason; unknown keys are ignored (compatible additions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.history.bars import Bar, format_resolution
from protocols.history.schema import TABLES, Columns, Table
from protocols.ticks.codec import request_id_of
from protocols.ticks.messages import check_stream
from protocols.wire import decode_envelope, encode_envelope, pack_body, pack_header

__all__ = [
    "MAX_ID",
    "MAX_MARKS",
    "MAX_REPLY_ROWS",
    "MAX_TIME_NS",
    "BarsQuery",
    "ColumnsReply",
    "ErrorReply",
    "ExecutionsQuery",
    "FormingBarReply",
    "FormingQuery",
    "MarksReply",
    "OrdersQuery",
    "Pending",
    "PingQuery",
    "Pong",
    "Query",
    "QueryError",
    "QueryKind",
    "QueryReply",
    "ReadAboveQuery",
    "TicksQuery",
    "WatermarksQuery",
    "decode_query",
    "decode_query_reply",
    "encode_columns",
    "encode_query",
    "query_id_of",
]

MAX_ID = 2**63 - 1
MAX_TIME_NS = 2**64 - 1  # the stores' times are UInt64 epoch nanoseconds
# The most rows one answer holds, over all its parts: what a reader may have to hold at once.
MAX_REPLY_ROWS = 1_000_000
# The most watermark groups a READ_ABOVE names: 10,000 of 64-byte names and 9-byte marks are
# about 740 KB, inside the historian's 1 MiB request frame.
MAX_MARKS = 10_000


class QueryKind(IntEnum):
    """History query kinds; the byte at offset 3 of the header frame."""

    TICKS = 80
    BARS = 81
    FORMING = 82
    ORDERS = 83
    EXECUTIONS = 84
    WATERMARKS = 85
    PING = 86
    READ_ABOVE = 87
    COLUMNS = 88
    FORMING_BAR = 89
    MARKS = 90
    PONG = 91
    PENDING = 92  # not an answer: the request is in service, its answer follows
    ERROR = 95


class QueryError(IntEnum):
    """Why a request was refused (ERROR's ``code``)."""

    BAD_REQUEST = 1  # malformed, or values out of range: do not retry unchanged
    STORE_UNAVAILABLE = 2  # the historian's store cannot be reached now: retry, maybe elsewhere
    TOO_LARGE = 3  # the answer would exceed MAX_REPLY_ROWS: ask for a narrower range
    BUSY = 4  # the historian serves its limit of requests: retry after a moment, or elsewhere
    INTERNAL = 5  # the historian failed unexpectedly (a bug there): report it


# --- validation ------------------------------------------------------------------------------

def _int(field: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{field} must be in {lo}..{hi}, got {value}")


def _range(start_ns: int, end_ns: int) -> None:
    _int("start_ns", start_ns, 0, MAX_TIME_NS)
    _int("end_ns", end_ns, 0, MAX_TIME_NS)
    if end_ns < start_ns:
        raise ValueError(f"end_ns {end_ns} is before start_ns {start_ns}")


def _res(res_s: int) -> None:
    _int("res_s", res_s, 1, 86_400)
    format_resolution(res_s)  # raises naming the resolutions there are


def _check_table(table: object) -> None:
    if not isinstance(table, Table):
        raise ValueError(f"table must be a Table, got {table!r}")


def _check_marks(marks: Sequence[tuple[str, int]]) -> None:
    if len(marks) > MAX_MARKS:
        raise ValueError(f"at most {MAX_MARKS} watermark groups, got {len(marks)}")
    for group, pos in marks:
        if not isinstance(group, str):
            raise ValueError(f"a watermark group must be a string, got {group!r}")
        _int(f"mark of {group!r}", pos, 0, MAX_TIME_NS)


def _table(value: object) -> Table:
    if isinstance(value, Table):
        return value
    try:
        return Table(value)
    except ValueError:
        raise ValueError(f"unknown table {value!r}: use one of "
                         f"{', '.join(t.value for t in Table)}") from None


# --- requests --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Message:
    """A request or an answer to one: ``request_id`` names the request."""

    request_id: int

    def __post_init__(self) -> None:
        _int("id", self.request_id, 1, MAX_ID)


@dataclass(frozen=True, slots=True)
class TicksQuery(_Message):
    """Ticks of ``stream`` with ``start_ns <= ts_ns < end_ns``, the first ``limit``."""

    stream: str
    start_ns: int
    end_ns: int
    limit: int

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        check_stream(self.stream)
        _range(self.start_ns, self.end_ns)
        _int("limit", self.limit, 1, MAX_REPLY_ROWS)


@dataclass(frozen=True, slots=True)
class BarsQuery(_Message):
    """Closed bars of ``stream`` at ``res_s`` in the range, or the ``countback`` before
    ``end_ns`` (``HistoryStore.bars``)."""

    stream: str
    res_s: int
    start_ns: int
    end_ns: int
    countback: int = 0

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        check_stream(self.stream)
        _res(self.res_s)
        _range(self.start_ns, self.end_ns)
        _int("countback", self.countback, 0, MAX_REPLY_ROWS)


@dataclass(frozen=True, slots=True)
class FormingQuery(_Message):
    """The bar of ``stream`` at ``res_s`` in progress now (from the historian's memory)."""

    stream: str
    res_s: int

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        check_stream(self.stream)
        _res(self.res_s)


@dataclass(frozen=True, slots=True)
class _AccountRange(_Message):
    account: str | None
    start_ns: int
    end_ns: int

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        if self.account is not None:
            check_stream(self.account)  # an account follows the stream-name rules
        _range(self.start_ns, self.end_ns)


@dataclass(frozen=True, slots=True)
class OrdersQuery(_AccountRange):
    """Every stored version of orders (of ``account``, or all: None) updated in the range."""


@dataclass(frozen=True, slots=True)
class ExecutionsQuery(_AccountRange):
    """Execution-log entries (of ``account``, or all: None) transacted in the range."""


@dataclass(frozen=True, slots=True)
class WatermarksQuery(_Message):
    """``max(position)`` per watermark group of ``table``."""

    table: Table

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        _check_table(self.table)


@dataclass(frozen=True, slots=True)
class ReadAboveQuery(_Message):
    """Up to ``limit`` rows of ``table`` above ``marks`` (group -> position; a group absent:
    all of it), in (group, position) order (``HistoryStore.read_above``)."""

    table: Table
    marks: tuple[tuple[str, int], ...]  # sorted by group
    limit: int

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        _check_table(self.table)
        _check_marks(self.marks)
        _int("limit", self.limit, 1, MAX_REPLY_ROWS)

    @classmethod
    def of(cls, request_id: int, table: Table, marks: Mapping[str, int],
           limit: int) -> ReadAboveQuery:
        return cls(request_id, table, tuple(sorted(marks.items())), limit)


@dataclass(frozen=True, slots=True)
class PingQuery(_Message):
    """Does the historian's store answer now?"""


Query = (TicksQuery | BarsQuery | FormingQuery | OrdersQuery | ExecutionsQuery
         | WatermarksQuery | ReadAboveQuery | PingQuery)


# --- replies ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ColumnsReply(_Message):
    """One part of an answer in rows: ``columns`` one tuple per column of ``table`` in schema
    order (:data:`protocols.history.schema.TABLES`), all of one length."""

    table: Table
    part: int
    final: bool
    columns: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        _check_table(self.table)
        _int("part", self.part, 0, MAX_REPLY_ROWS)
        if not isinstance(self.final, bool):
            raise ValueError(f"final must be a bool, got {self.final!r}")
        names = TABLES[self.table].names
        if len(self.columns) != len(names):
            raise ValueError(f"{self.table.value} has {len(names)} columns, "
                             f"got {len(self.columns)}")
        lengths = {len(c) for c in self.columns}
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths {sorted(lengths)}")
        if lengths.pop() > MAX_REPLY_ROWS:
            raise ValueError(f"a part holds at most {MAX_REPLY_ROWS} rows")

    @classmethod
    def of(cls, request_id: int, cols: Columns, part: int = 0,
           final: bool = True) -> ColumnsReply:
        return cls(request_id, cols.table, part, final,
                   tuple(tuple(cols.data[n]) for n in cols.spec.names))

    def __len__(self) -> int:
        return len(self.columns[0])

    def rows(self) -> Columns:
        """The part's rows as a batch."""
        # Columns copies each column into a list itself: hand the tuples over as they are.
        by_name = dict(zip(TABLES[self.table].names, self.columns, strict=True))
        return Columns(self.table, cast(Mapping[str, list[Any]], by_name))


@dataclass(frozen=True, slots=True)
class FormingBarReply(_Message):
    bar: Bar | None

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        if self.bar is not None and not isinstance(self.bar, Bar):
            raise ValueError(f"bar must be a Bar or None, got {self.bar!r:.80}")


@dataclass(frozen=True, slots=True)
class MarksReply(_Message):
    table: Table
    marks: tuple[tuple[str, int], ...]  # (group, position), sorted by group

    def __post_init__(self) -> None:
        _Message.__post_init__(self)
        _check_table(self.table)
        _check_marks(self.marks)

    @classmethod
    def of(cls, request_id: int, table: Table, marks: Mapping[str, int]) -> MarksReply:
        return cls(request_id, table, tuple(sorted(marks.items())))


@dataclass(frozen=True, slots=True)
class Pong(_Message):
    """The store answers."""


@dataclass(frozen=True, slots=True)
class Pending(_Message):
    """The request is in service; its answer follows."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal; ``request_id`` 0 when the request's id could not be read."""

    request_id: int
    code: QueryError
    message: str

    def __post_init__(self) -> None:
        _int("id", self.request_id, 0, MAX_ID)
        if not isinstance(self.code, QueryError):
            raise ValueError(f"unknown error code {self.code!r}")
        if not isinstance(self.message, str):
            raise ValueError("message must be a string")


QueryReply = ColumnsReply | FormingBarReply | MarksReply | Pong | Pending | ErrorReply

_REQUEST_KINDS = frozenset({QueryKind.TICKS, QueryKind.BARS, QueryKind.FORMING,
                            QueryKind.ORDERS, QueryKind.EXECUTIONS, QueryKind.WATERMARKS,
                            QueryKind.READ_ABOVE, QueryKind.PING})


# --- encoding --------------------------------------------------------------------------------

def _bar_list(bar: Bar) -> list[Any]:
    return [bar.stream, bar.res_s, bar.start_ns, bar.open, bar.high, bar.low, bar.close,
            bar.volume, bar.ticks, bar.first_seq, bar.last_seq]


def _body(msg: Query | QueryReply) -> tuple[QueryKind, dict[str, Any]]:
    match msg:
        case TicksQuery(rid, stream, start, end, limit):
            return QueryKind.TICKS, {"id": rid, "stream": stream, "start": start, "end": end,
                                     "limit": limit}
        case BarsQuery(rid, stream, res, start, end, countback):
            return QueryKind.BARS, {"id": rid, "stream": stream, "res": res, "start": start,
                                    "end": end, "countback": countback}
        case FormingQuery(rid, stream, res):
            return QueryKind.FORMING, {"id": rid, "stream": stream, "res": res}
        case OrdersQuery(rid, account, start, end):
            return QueryKind.ORDERS, {"id": rid, "account": account, "start": start,
                                      "end": end}
        case ExecutionsQuery(rid, account, start, end):
            return QueryKind.EXECUTIONS, {"id": rid, "account": account, "start": start,
                                          "end": end}
        case WatermarksQuery(rid, table):
            return QueryKind.WATERMARKS, {"id": rid, "table": table.value}
        case ReadAboveQuery(rid, table, marks, limit):
            return QueryKind.READ_ABOVE, {"id": rid, "table": table.value, "marks": dict(marks),
                                          "limit": limit}
        case PingQuery(rid):
            return QueryKind.PING, {"id": rid}
        case ColumnsReply(rid, table, part, final, columns):
            return QueryKind.COLUMNS, {"id": rid, "table": table.value, "part": part,
                                       "final": final, "columns": columns}
        case FormingBarReply(rid, bar):
            return QueryKind.FORMING_BAR, {"id": rid,
                                           "bar": None if bar is None else _bar_list(bar)}
        case MarksReply(rid, table, marks):
            return QueryKind.MARKS, {"id": rid, "table": table.value, "marks": dict(marks)}
        case Pong(rid):
            return QueryKind.PONG, {"id": rid}
        case Pending(rid):
            return QueryKind.PENDING, {"id": rid}
        case ErrorReply(rid, code, message):
            return QueryKind.ERROR, {"id": rid, "code": int(code), "message": message}
    raise LocalProtocolError(f"not a history query message: {msg!r:.80}")


def encode_query(msg: Query | QueryReply) -> list[bytes]:
    """Encode a request or a reply as ZeroMQ frames ``[header, body]``."""
    kind, body = _body(msg)
    return encode_envelope(kind, body)


def encode_columns(request_id: int, cols: Columns, max_frame: int) -> list[list[bytes]]:
    """The COLUMNS replies that carry ``cols`` whole, each body frame at most ``max_frame``
    bytes (more parts where the rows are wider), in order; one reply for no rows."""
    if len(cols) > MAX_REPLY_ROWS:
        raise LocalProtocolError(f"an answer of {len(cols)} rows exceeds {MAX_REPLY_ROWS}")

    def body(piece: Columns, part: int, final: bool) -> bytes:
        return pack_body(_body(ColumnsReply.of(request_id, piece, part, final))[1])

    todo = [cols]
    done: list[bytes] = []
    while todo:
        piece = todo.pop(0)
        encoded = body(piece, len(done), not todo)
        if len(encoded) <= max_frame:
            done.append(encoded)
            continue
        if len(piece) <= 1:
            raise LocalProtocolError(f"one {cols.table.value} row of {len(encoded)} bytes "
                                     f"exceeds the frame limit {max_frame}")
        # Parts sized from this piece's bytes per row, with a margin for uneven rows.
        n = min(len(piece), math.ceil(len(encoded) / max_frame * 1.25))
        step = math.ceil(len(piece) / n)
        todo[:0] = [piece.slice(i, i + step) for i in range(0, len(piece), step)]
    # A piece popped with nothing left to do is the last one: encoded with final true.
    header = pack_header(QueryKind.COLUMNS)
    return [[header, encoded] for encoded in done]


# --- decoding --------------------------------------------------------------------------------

def _get(d: dict[str, Any], key: str) -> Any:
    try:
        return d[key]
    except KeyError:
        raise ValueError(f"missing key {key!r}") from None


def _bar(value: object) -> Bar | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 11:
        raise ValueError("bar must be nil or an array of 11 values")
    stream, res_s, start, o, h, lo, c, v, ticks, first, last = value
    check_stream(stream)
    _res(res_s)
    for name, n in (("start_ns", start), ("ticks", ticks), ("first_seq", first),
                    ("last_seq", last)):
        _int(f"bar {name}", n, 0, MAX_TIME_NS)
    for name, p in (("open", o), ("high", h), ("low", lo), ("close", c), ("volume", v)):
        if not isinstance(p, (int, float)) or isinstance(p, bool):
            raise ValueError(f"bar {name} must be a number")
    return Bar(stream, res_s, start, float(o), float(h), float(lo), float(c), float(v), ticks,
               first, last)


def _columns(value: object) -> tuple[tuple[Any, ...], ...]:
    if not isinstance(value, list) or not all(isinstance(c, list) for c in value):
        raise ValueError("columns must be an array of arrays")
    return tuple(tuple(c) for c in value)


def _marks(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise ValueError("marks must be a map")
    return tuple(sorted(value.items()))


def _decode(kind: QueryKind, d: dict[str, Any]) -> Query | QueryReply:
    rid = _get(d, "id")
    match kind:
        case QueryKind.TICKS:
            return TicksQuery(rid, _get(d, "stream"), _get(d, "start"), _get(d, "end"),
                              _get(d, "limit"))
        case QueryKind.BARS:
            return BarsQuery(rid, _get(d, "stream"), _get(d, "res"), _get(d, "start"),
                             _get(d, "end"), _get(d, "countback"))
        case QueryKind.FORMING:
            return FormingQuery(rid, _get(d, "stream"), _get(d, "res"))
        case QueryKind.ORDERS:
            return OrdersQuery(rid, _get(d, "account"), _get(d, "start"), _get(d, "end"))
        case QueryKind.EXECUTIONS:
            return ExecutionsQuery(rid, _get(d, "account"), _get(d, "start"), _get(d, "end"))
        case QueryKind.WATERMARKS:
            return WatermarksQuery(rid, _table(_get(d, "table")))
        case QueryKind.READ_ABOVE:
            return ReadAboveQuery(rid, _table(_get(d, "table")), _marks(_get(d, "marks")),
                                  _get(d, "limit"))
        case QueryKind.PING:
            return PingQuery(rid)
        case QueryKind.COLUMNS:
            return ColumnsReply(rid, _table(_get(d, "table")), _get(d, "part"),
                                _get(d, "final"), _columns(_get(d, "columns")))
        case QueryKind.FORMING_BAR:
            return FormingBarReply(rid, _bar(_get(d, "bar")))
        case QueryKind.MARKS:
            return MarksReply(rid, _table(_get(d, "table")), _marks(_get(d, "marks")))
        case QueryKind.PONG:
            return Pong(rid)
        case QueryKind.PENDING:
            return Pending(rid)
        case QueryKind.ERROR:
            code = _get(d, "code")
            _int("code", code, 0, 255)
            try:
                err = QueryError(code)
            except ValueError:
                raise ValueError(f"unknown error code {code}") from None
            return ErrorReply(rid, err, _get(d, "message"))
    raise AssertionError(f"no decoder for {kind.name}")  # pragma: no cover


_REPLY_TYPES = (ColumnsReply, FormingBarReply, MarksReply, Pong, Pending, ErrorReply)


def _decode_as(frames: Sequence[bytes], requests: bool) -> Query | QueryReply:
    kind, d = decode_envelope(tuple(frames), QueryKind, "history query",
                              kind_label="history query ")
    if (kind in _REQUEST_KINDS) is not requests:
        raise RemoteProtocolError(f"{kind.name} is not a history query "
                                  f"{'request' if requests else 'reply'}")
    try:
        return _decode(kind, d)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad {kind.name}: {exc}") from exc


def decode_query(frames: Sequence[bytes]) -> Query:
    """Decode a request (the frames after the ROUTER's identity)."""
    msg = _decode_as(frames, True)
    assert not isinstance(msg, _REPLY_TYPES)
    return msg


def decode_query_reply(frames: Sequence[bytes]) -> QueryReply:
    """Decode a reply (as a DEALER receives it)."""
    msg = _decode_as(frames, False)
    assert isinstance(msg, _REPLY_TYPES)
    return msg


def query_id_of(frames: Sequence[bytes]) -> int:
    """The id of a (possibly malformed) request, for its error reply; 0 when none can be read
    (the rule of the recovery protocol, ``protocols.ticks.codec.request_id_of``)."""
    return request_id_of(tuple(frames))
