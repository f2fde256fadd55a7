"""The history query codec: round trips of every message, the COLUMNS split by frame size,
construction checks, a table of malformed input with its reasons, the id of a bad request,
and a property (junk never raises anything but RemoteProtocolError).
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.history.bars import Bar
from protocols.history.query import (
    MAX_MARKS,
    MAX_REPLY_ROWS,
    BarsQuery,
    ColumnsReply,
    ErrorReply,
    ExecutionsQuery,
    FormingBarReply,
    FormingQuery,
    MarksReply,
    OrdersQuery,
    Pending,
    PingQuery,
    Pong,
    QueryError,
    QueryKind,
    ReadAboveQuery,
    TicksQuery,
    WatermarksQuery,
    decode_query,
    decode_query_reply,
    encode_columns,
    encode_query,
    query_id_of,
)
from protocols.history.schema import Table
from protocols.wire import pack_body, pack_header
from tests.history_support import T0, batch, rows_of, tick_batch

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
END = 2**63 - 1
BAR = Bar("EUR", 60, T0, 1.1, 1.3, 1.0, 1.2, 5.0, 7, 11, 17)
ORDERS = batch(Table.ORDERS, {"order_id": "o1", "updated_ns": T0, "src": 1, "account": "a",
                              "blob": b"\x00\xff"},
               {"order_id": "o2", "updated_ns": T0 + 1, "src": 2, "account": "a"})

REQUESTS = [
    TicksQuery(1, "EUR", T0, END, 500),
    TicksQuery(2**63 - 1, "x" * 64, 0, 0, MAX_REPLY_ROWS),
    BarsQuery(3, "EUR", 60, T0, END),
    BarsQuery(4, "XAU", 86_400, 0, END, countback=300),
    FormingQuery(5, "EUR", 1),
    OrdersQuery(6, None, T0, END),
    OrdersQuery(7, "acc-1", T0, END),
    ExecutionsQuery(8, "acc-1", 0, 2**64 - 1),
    WatermarksQuery(9, Table.BARS),
    PingQuery(10),
    ReadAboveQuery.of(11, Table.TICKS, {"EUR": 5, "XAU": 0}, 1000),
    ReadAboveQuery.of(12, Table.ORDERS, {}, MAX_REPLY_ROWS),
]
REPLIES = [
    ColumnsReply.of(1, tick_batch("EUR", range(1, 4))),
    ColumnsReply.of(2, ORDERS, part=3, final=False),
    ColumnsReply.of(3, batch(Table.EXECUTIONS)),
    FormingBarReply(4, BAR),
    FormingBarReply(5, None),
    MarksReply.of(6, Table.ORDERS, {"": 42}),
    MarksReply.of(7, Table.TICKS, {"XAU": 3, "EUR": 9}),
    Pong(8),
    Pending(11),
    ErrorReply(9, QueryError.BUSY, "16 requests in service"),
    ErrorReply(0, QueryError.BAD_REQUEST, "no id"),
]


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda m: type(m).__name__)
def test_requests_round_trip(msg: Any) -> None:
    frames = encode_query(msg)
    assert frames[0][:2] == b"TM" and frames[0][2] == 1
    assert decode_query(frames) == msg


@pytest.mark.parametrize("msg", REPLIES, ids=lambda m: type(m).__name__)
def test_replies_round_trip(msg: Any) -> None:
    assert decode_query_reply(encode_query(msg)) == msg


def test_columns_carry_every_type_back_as_the_store_gave_it() -> None:
    reply = decode_query_reply(encode_query(ColumnsReply.of(1, ORDERS)))
    assert isinstance(reply, ColumnsReply)
    assert rows_of(reply.rows()) == rows_of(ORDERS)
    assert reply.rows().column("blob")[0] == b"\x00\xff"  # bytes stay bytes, not str


def test_the_example_of_protocol_md_section_17() -> None:
    assert encode_query(PingQuery(1)) == [bytes.fromhex("544d0156"), b"\x81\xa2id\x01"]
    assert encode_query(Pong(1)) == [bytes.fromhex("544d015b"), b"\x81\xa2id\x01"]


def test_kinds_are_their_own_family() -> None:
    assert all(80 <= k <= 95 for k in QueryKind)
    assert encode_query(PingQuery(1))[0] == pack_header(QueryKind.PING)


@pytest.mark.parametrize("rows, max_frame, split", [
    (0, 1024, False), (10, 10_000, False), (3_000, 16 * 1024, True), (3_000, 1024, True),
])
def test_columns_split_into_parts_within_the_frame_limit(rows: int, max_frame: int,
                                                         split: bool) -> None:
    cols = tick_batch("EUR", range(1, rows + 1))
    messages = encode_columns(7, cols, max_frame)
    # about 60 bytes a tick row: 3,000 rows are ~180 KB, 12 parts of 16 KiB at least
    assert (len(messages) > 1) is split
    if split:
        assert len(messages) >= len(pack_body({"c": list(cols.rows())})) // max_frame
    decoded = [decode_query_reply(m) for m in messages]
    assert all(len(m[1]) <= max_frame for m in messages)
    assert [d.part for d in decoded if isinstance(d, ColumnsReply)] == list(range(len(messages)))
    assert [d.final for d in decoded if isinstance(d, ColumnsReply)] == \
        [False] * (len(messages) - 1) + [True]
    joined = []
    for d in decoded:
        assert isinstance(d, ColumnsReply) and d.request_id == 7
        joined.extend(rows_of(d.rows()))
    assert joined == rows_of(cols)


def test_a_row_wider_than_the_frame_limit_is_our_error() -> None:
    wide = batch(Table.ORDERS, {"order_id": "o", "blob": b"x" * 5000})
    with pytest.raises(LocalProtocolError, match="exceeds the frame limit"):
        encode_columns(1, wide, 4096)


@pytest.mark.parametrize("make, problem", [
    (lambda: TicksQuery(0, "EUR", 0, 1, 1), "id must be in 1"),
    (lambda: TicksQuery(2**63, "EUR", 0, 1, 1), "id must be in 1"),
    (lambda: TicksQuery(1, "", 0, 1, 1), "non-empty"),
    (lambda: TicksQuery(1, "x" * 65, 0, 1, 1), "longer than 64"),
    (lambda: TicksQuery(1, "EUR", 5, 4, 1), "before start_ns"),
    (lambda: TicksQuery(1, "EUR", -1, 4, 1), "start_ns must be in"),
    (lambda: TicksQuery(1, "EUR", 0, 4, 0), "limit must be in 1"),
    (lambda: TicksQuery(1, "EUR", 0, 4, MAX_REPLY_ROWS + 1), "limit must be in 1"),
    (lambda: TicksQuery(1, "EUR", 0.5, 4, 1), "start_ns must be an integer"),  # type: ignore[arg-type]
    (lambda: BarsQuery(1, "EUR", 61, 0, 1), "unknown resolution"),
    (lambda: BarsQuery(1, "EUR", 60, 0, 1, countback=-1), "countback must be in"),
    (lambda: FormingQuery(1, "EUR", 0), "res_s must be in"),
    (lambda: OrdersQuery(1, "", 0, 1), "non-empty"),
    (lambda: WatermarksQuery(1, "ticks"), "must be a Table"),  # type: ignore[arg-type]
    (lambda: ColumnsReply(1, Table.TICKS, 0, True, ((),)), "has 9 columns"),
    (lambda: ColumnsReply(1, Table.BARS, 0, True, ((1,),) + ((),) * 10), "different lengths"),
    (lambda: ColumnsReply(1, Table.BARS, 0, 1, ((),) * 11), "final must be a bool"),  # type: ignore[arg-type]
    (lambda: MarksReply(1, Table.TICKS, (("EUR", -1),)), "mark of 'EUR'"),
    (lambda: ReadAboveQuery.of(1, Table.TICKS, {f"s{i}": 1 for i in range(MAX_MARKS + 1)}, 1),
     "at most 10000 watermark groups"),
    (lambda: ReadAboveQuery.of(1, Table.TICKS, {}, 0), "limit must be in 1"),
    (lambda: ErrorReply(1, 3, "x"), "unknown error code"),  # type: ignore[arg-type]
])
def test_construction_checks(make: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make()


def _frames(kind: int, body: Any) -> list[bytes]:
    return [pack_header(kind), msgpack.packb(body, use_bin_type=True)]


TICKS_BODY = {"id": 5, "stream": "EUR", "start": 0, "end": 10, "limit": 3}
BAD_REQUESTS: list[tuple[str, list[bytes], str, int]] = [
    ("one frame", [pack_header(QueryKind.PING)], "of 1 frames, need 2", 0),
    ("three frames", [*encode_query(PingQuery(4)), b""], "of 3 frames, need 2", 4),
    ("bad magic", [b"XX\x01\x56", pack_body({"id": 4})], "bad magic", 4),
    ("version 2", [b"TM\x02\x56", pack_body({"id": 4})], "unsupported protocol version 2", 4),
    ("a reply's kind", [b"TM\x01\x5f", pack_body({"id": 4})],
     "ERROR is not a history query request", 4),
    ("kind 93", [b"TM\x01\x5d", pack_body({"id": 4})], "unknown history query kind 93", 4),
    ("not msgpack", [pack_header(QueryKind.PING), b"\xc1"], "not msgpack", 0),
    ("not a map", _frames(QueryKind.PING, [1]), "not a map", 0),
    ("no id", _frames(QueryKind.PING, {}), "missing key 'id'", 0),
    ("id 0", _frames(QueryKind.PING, {"id": 0}), "id must be in 1", 0),
    ("id a string", _frames(QueryKind.PING, {"id": "7"}), "id must be an integer", 0),
    ("limit nil", _frames(QueryKind.TICKS, {**TICKS_BODY, "limit": None}),
     "limit must be an integer", 5),
    ("no stream", _frames(QueryKind.TICKS, {k: v for k, v in TICKS_BODY.items()
                                            if k != "stream"}), "missing key 'stream'", 5),
    ("stream of bytes", _frames(QueryKind.TICKS, {**TICKS_BODY, "stream": b"EUR"}),
     "non-empty string", 5),
    ("end before start", _frames(QueryKind.TICKS, {**TICKS_BODY, "start": 11}),
     "before start_ns", 5),
    ("too many rows", _frames(QueryKind.TICKS, {**TICKS_BODY, "limit": 10**7}),
     "limit must be in", 5),
    ("unknown table", _frames(QueryKind.WATERMARKS, {"id": 6, "table": "quotes"}),
     "unknown table 'quotes'", 6),
    ("a mark not a number", _frames(QueryKind.READ_ABOVE, {
        "id": 7, "table": "ticks", "marks": {"EUR": "1"}, "limit": 5}), "mark of 'EUR' must be", 7),
    ("bad resolution", _frames(QueryKind.FORMING, {"id": 6, "stream": "E", "res": 7}),
     "unknown resolution", 6),
    ("a pong", encode_query(Pong(3)), "PONG is not a history query request", 3),
]


@pytest.mark.parametrize("frames, reason, rid", [pytest.param(f, r, i, id=n)
                                                 for n, f, r, i in BAD_REQUESTS])
def test_bad_requests_name_their_reason_and_keep_their_id(frames: list[bytes], reason: str,
                                                          rid: int) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_query(frames)
    assert query_id_of(frames) == rid


BAD_REPLIES: list[tuple[str, list[bytes], str]] = [
    ("a request kind", encode_query(PingQuery(3)), "PING is not a history query reply"),
    ("columns not arrays", _frames(QueryKind.COLUMNS, {"id": 1, "table": "bars", "part": 0,
                                                       "final": True, "columns": [1] * 11}),
     "array of arrays"),
    ("columns short", _frames(QueryKind.COLUMNS, {"id": 1, "table": "bars", "part": 0,
                                                  "final": True, "columns": [[]]}),
     "bars has 11 columns"),
    ("bar too short", _frames(QueryKind.FORMING_BAR, {"id": 1, "bar": [1, 2]}),
     "array of 11 values"),
    ("bar price a string", _frames(QueryKind.FORMING_BAR, {"id": 1, "bar": [
        "EUR", 60, 0, "1", 1, 1, 1, 0, 1, 1, 1]}), "bar open must be a number"),
    ("marks a list", _frames(QueryKind.MARKS, {"id": 1, "table": "ticks", "marks": []}),
     "marks must be a map"),
    ("unknown code", _frames(QueryKind.ERROR, {"id": 1, "code": 9, "message": ""}),
     "unknown error code 9"),
    ("message not str", _frames(QueryKind.ERROR, {"id": 1, "code": 1, "message": 2}),
     "message must be a string"),
]


@pytest.mark.parametrize("frames, reason", [pytest.param(f, r, id=n)
                                            for n, f, r in BAD_REPLIES])
def test_bad_replies_name_their_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_query_reply(frames)


def test_unknown_keys_are_ignored() -> None:
    frames = _frames(QueryKind.TICKS, {**TICKS_BODY, "newer": [1, 2]})
    assert decode_query(frames) == TicksQuery(5, "EUR", 0, 10, 3)


def test_encoding_something_else_is_our_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_query("PING")  # type: ignore[arg-type]


@FAST
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=3),
       st.sampled_from([*REQUESTS, *REPLIES]), st.integers(0, 40), st.binary(max_size=4))
def test_junk_raises_only_remote_protocol_errors(junk: list[bytes], msg: Any, cut: int,
                                                 noise: bytes) -> None:
    valid = encode_query(msg)
    mangled = [valid[0], valid[1][:cut] + noise]
    for frames in (junk, mangled):
        for decode in (decode_query, decode_query_reply):
            with contextlib.suppress(RemoteProtocolError):
                decode(frames)
        query_id_of(frames)  # never raises
