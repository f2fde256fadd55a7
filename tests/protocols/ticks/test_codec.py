"""The wire codec: round trips on both paths, the header layout, a table of malformed input,
and properties (valid batches survive both paths; junk never raises anything but
RemoteProtocolError).
"""

from __future__ import annotations

import contextlib
import math
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.ticks.codec import (
    DEFAULT_DATAGRAM_BYTES,
    FEED_HEADER_MIN,
    MAGIC,
    decode_datagram,
    decode_feed,
    decode_header,
    decode_reply,
    decode_request,
    encode_datagrams,
    encode_feed,
    encode_header,
    encode_recovery,
    request_id_of,
    topic,
)
from protocols.ticks.messages import (
    MAX_BATCH,
    MAX_SEQ,
    MAX_STREAM_BYTES,
    PROTOCOL_VERSION,
    EndOfSession,
    ErrorCode,
    ErrorReply,
    GapFillReply,
    GapFillRequest,
    Heartbeat,
    Kind,
    Row,
    SeqRange,
    SnapshotEntry,
    SnapshotReply,
    SnapshotRequest,
    TickBatch,
)

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

ROW: Row = (1.0841, 1.0842, 0.0, 1.0, 1_732_450_000_123_000_000, 1_732_450_000_124_000_000)


def row(i: int) -> Row:
    return (1.0 + i / 1e4, 1.0001 + i / 1e4, 0.0, float(i % 7), 10**18 + i, 10**18 + i + 5)


def batch(n: int, first: int = 1, stream: str = "EURUSD", session: int = 42) -> TickBatch:
    return TickBatch(stream, session, first, tuple(row(i) for i in range(n)))


def header(kind: int = Kind.TICKS, session: int = 7, first_seq: int = 1, count: int = 1,
           stream: bytes = b"EURUSD", n: int | None = None, magic: bytes = MAGIC,
           version: int = PROTOCOL_VERSION) -> bytes:
    """A feed header built field by field, independently of the codec's encoder."""
    return (magic + bytes([version, kind]) + session.to_bytes(8, "big")
            + first_seq.to_bytes(8, "big") + count.to_bytes(2, "big")
            + bytes([len(stream) if n is None else n]) + stream)


def body(*rows: Any) -> bytes:
    raw: bytes = msgpack.packb(list(rows), use_bin_type=True)
    return raw


def short(kind: int, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION) -> bytes:
    return magic + bytes([version, kind])


# --- header layout -------------------------------------------------------------------------


def test_header_layout_is_big_endian_and_23_bytes_plus_stream() -> None:
    raw = encode_header(Kind.TICKS, "EURUSD", 0x0102030405060708, 0x1112131415161718, 0x2122)
    assert FEED_HEADER_MIN == 23
    assert raw == (b"TM\x01\x01" + bytes.fromhex("0102030405060708")
                   + bytes.fromhex("1112131415161718") + b"\x21\x22" + b"\x06" + b"EURUSD")
    assert raw == header(Kind.TICKS, 0x0102030405060708, 0x1112131415161718, 0x2122)
    h = decode_header(raw)
    assert (h.kind, h.session, h.first_seq, h.count, h.stream, h.body_offset) == (
        Kind.TICKS, 0x0102030405060708, 0x1112131415161718, 0x2122, "EURUSD", 29)


def test_kind_values_are_fixed() -> None:
    assert {k.name: int(k) for k in Kind} == {
        "TICKS": 1, "HEARTBEAT": 2, "END_OF_SESSION": 3, "SNAPSHOT_REQUEST": 16,
        "SNAPSHOT_REPLY": 17, "GAP_FILL_REQUEST": 18, "GAP_FILL_REPLY": 19, "ERROR_REPLY": 20}


# --- feed round trips ------------------------------------------------------------------------

FEED_MESSAGES = [
    pytest.param(batch(1), id="ticks-1"),
    pytest.param(batch(20, first=1000, session=2**64 - 1), id="ticks-20-max-session"),
    pytest.param(TickBatch("XAUUSD", 3, MAX_SEQ, (ROW,)), id="ticks-at-max-seq"),
    pytest.param(TickBatch("é" * 32, 3, 9, (ROW,)), id="ticks-64-byte-utf8-stream"),
    pytest.param(TickBatch("EURUSD", 0, 1, ((0.0, 0.0, 0.0, 0.0, 0, 0),)), id="ticks-zeros"),
    pytest.param(TickBatch("EURUSD", 1, 1, ((1.5, 0.0, 0.0, 0.0, 0, 2**64 - 1),)),
                 id="ticks-one-sided-quote"),
    pytest.param(Heartbeat("EURUSD", 42, 1234), id="heartbeat"),
    pytest.param(Heartbeat("EURUSD", 42, 0), id="heartbeat-seq-0"),
    pytest.param(EndOfSession("GBPUSD", 42, 99), id="end-of-session"),
]


@pytest.mark.parametrize("msg", FEED_MESSAGES)
def test_feed_round_trip_over_zeromq(msg: Any) -> None:
    frames = encode_feed(msg)
    assert len(frames) == 3
    assert frames[0] == topic(msg.stream)
    assert decode_feed(list(frames)) == msg
    assert decode_feed(tuple(frames)) == msg


@pytest.mark.parametrize("msg", FEED_MESSAGES)
def test_feed_round_trip_over_udp(msg: Any) -> None:
    datagrams = encode_datagrams(msg)
    assert len(datagrams) == 1
    assert decode_datagram(datagrams[0]) == msg
    assert decode_datagram(memoryview(datagrams[0])) == msg


def test_udp_datagram_is_header_frame_plus_body_frame() -> None:
    msg = batch(3)
    _topic, head, payload = encode_feed(msg)
    assert encode_datagrams(msg) == [head + payload]


@pytest.mark.parametrize("kind, msg", [
    (Kind.HEARTBEAT, Heartbeat("EURUSD", 5, 77)),
    (Kind.END_OF_SESSION, EndOfSession("EURUSD", 5, 77)),
], ids=["heartbeat", "end-of-session"])
def test_control_messages_have_count_0_and_first_seq_next(kind: Kind, msg: Any) -> None:
    (data,) = encode_datagrams(msg)
    h = decode_header(data)
    assert (h.kind, h.count, h.first_seq, h.session) == (kind, 0, 77, 5)
    assert len(data) == h.body_offset  # no body


@pytest.mark.parametrize("n, max_bytes", [
    (500, DEFAULT_DATAGRAM_BYTES),
    (MAX_BATCH, DEFAULT_DATAGRAM_BYTES),
    (37, 200),
    (3, 150),
], ids=["500-default", "max-batch-default", "37-in-200-byte", "3-in-150-byte"])
def test_large_batch_is_split_into_datagrams_that_stand_alone(n: int, max_bytes: int) -> None:
    msg = batch(n, first=1_000_000)
    datagrams = encode_datagrams(msg, max_bytes)
    assert len(datagrams) > 1
    decoded = [decode_datagram(d) for d in datagrams]  # each decodes on its own
    assert all(len(d) <= max_bytes for d in datagrams)
    assert all(isinstance(m, TickBatch) for m in decoded)
    parts = [m for m in decoded if isinstance(m, TickBatch)]
    expected_first = msg.first_seq
    for part in parts:
        assert (part.stream, part.session) == (msg.stream, msg.session)
        assert part.first_seq == expected_first, "sub-batches must be consecutive"
        expected_first = part.last_seq + 1
    assert expected_first == msg.last_seq + 1
    assert tuple(r for p in parts for r in p.rows) == msg.rows


def test_one_tick_larger_than_the_datagram_limit_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="datagram limit"):
        encode_datagrams(TickBatch("X" * MAX_STREAM_BYTES, 1, 1, (ROW,)), 100)


def test_encoding_a_non_feed_message_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_feed(SnapshotRequest(1, ("",)))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_recovery(Heartbeat("EURUSD", 1, 1))  # type: ignore[arg-type]


# --- topics ----------------------------------------------------------------------------------


def test_topic_is_utf8_name_plus_nul() -> None:
    assert topic("EURUSD") == b"EURUSD\x00"
    assert topic("é") == b"\xc3\xa9\x00"


def test_prefix_subscription_matches_and_exact_topic_does_not_overmatch() -> None:
    assert topic("EURUSD").startswith(b"EUR")
    assert topic("EURUSD.m").startswith(b"EUR")
    assert topic("EURUSD.m").startswith(b"EURUSD")  # a bare name is a prefix filter ...
    assert not topic("EURUSD.m").startswith(topic("EURUSD"))  # ... name + NUL is exact
    assert topic("EURUSD").startswith(topic("EURUSD"))


STREAMS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                  max_size=16).filter(lambda s: len(s.encode()) <= MAX_STREAM_BYTES)


@FAST
@given(STREAMS, STREAMS)
def test_exact_topic_matches_only_its_own_stream(a: str, b: str) -> None:
    assert topic(b).startswith(topic(a)) == (a == b)
    assert topic(a + b).startswith(a.encode())


# --- malformed feed input ------------------------------------------------------------------

GOOD_BODY = body(list(ROW))
HB = Kind.HEARTBEAT

# (id, frames for decode_feed or bytes for decode_datagram, substring of the reason)
MALFORMED_FEED: list[tuple[str, Any, str]] = [
    ("empty", b"", "feed header of 0 bytes"),
    ("short-header", header()[:22], "feed header of 22 bytes, need >= 23"),
    ("bad-magic", header(magic=b"MT") + GOOD_BODY, "bad magic b'MT'"),
    ("wrong-version", header(version=2) + GOOD_BODY, "unsupported protocol version 2"),
    ("version-0", header(version=0) + GOOD_BODY, "unsupported protocol version 0"),
    ("unknown-kind", header(kind=99) + GOOD_BODY, "kind 99 is not a feed message"),
    ("kind-0", header(kind=0) + GOOD_BODY, "kind 0 is not a feed message"),
    ("recovery-kind-on-feed", header(kind=Kind.GAP_FILL_REQUEST) + GOOD_BODY,
     "kind 18 is not a feed message"),
    ("ticks-count-0", header(count=0) + body(), "tick batch with count 0"),
    ("ticks-count-ffff", header(count=0xFFFF) + GOOD_BODY, "tick batch with count 65535"),
    ("ticks-first-seq-0", header(first_seq=0) + GOOD_BODY, "tick batch with first_seq 0"),
    ("ticks-first-seq-above-max", header(first_seq=MAX_SEQ + 1) + GOOD_BODY, "first_seq"),
    ("ticks-last-seq-above-max", header(first_seq=MAX_SEQ, count=2) + body(ROW, ROW),
     "out of range"),
    ("heartbeat-with-count", header(kind=HB, count=1), "HEARTBEAT with count 1"),
    ("heartbeat-with-body", header(kind=HB, count=0) + b"\x90", "HEARTBEAT with a body of 1"),
    ("end-of-session-with-body", header(kind=Kind.END_OF_SESSION, count=0) + b"\x00\x00",
     "END_OF_SESSION with a body of 2"),
    ("heartbeat-seq-above-max", header(kind=HB, count=0, first_seq=2**64 - 1), "next_seq"),
    ("stream-length-0", header(stream=b"", n=0) + GOOD_BODY, "bad stream length 0"),
    ("stream-length-65", header(stream=b"A" * 65) + GOOD_BODY, "bad stream length 65"),
    ("stream-length-beyond-data", header(stream=b"EUR", n=6), "bad stream length 6"),
    ("stream-not-utf8", header(stream=b"EUR\xff\xfe") + GOOD_BODY, "not UTF-8"),
    ("stream-with-control-char", header(stream=b"EUR\x01") + GOOD_BODY, "control character"),
    ("stream-with-nul", header(stream=b"EUR\x00") + GOOD_BODY, "control character"),
    ("body-empty", header(), "not msgpack"),
    ("body-not-msgpack", header() + b"\xc1", "not msgpack"),
    ("body-truncated", header() + GOOD_BODY[:-3], "not msgpack"),
    ("body-trailing-bytes", header() + GOOD_BODY + b"\x00", "not msgpack"),
    ("body-a-map", header() + msgpack.packb({"bid": 1.0}), "not an array of 1 rows"),
    ("body-too-few-rows", header(count=2) + GOOD_BODY, "not an array of 2 rows"),
    ("body-too-many-rows", header(count=1) + body(ROW, ROW), "not an array of 1 rows"),
    ("row-nan-price", header() + body([math.nan, 1.0, 0.0, 0.0, 0, 0]), "bid must be finite"),
    ("row-inf-price", header() + body([1.0, math.inf, 0.0, 0.0, 0, 0]), "ask must be finite"),
    ("row-negative-price", header() + body([-1.0, 1.0, 0.0, 0.0, 0, 0]), "bid must be finite"),
    ("row-negative-volume", header() + body([1.0, 1.0, 0.0, -2.0, 0, 0]), "volume must be"),
    ("row-string-price", header() + body(["1.0", 1.0, 0.0, 0.0, 0, 0]), "bid must be a number"),
    ("row-bool-price", header() + body([1.0, True, 0.0, 0.0, 0, 0]), "ask must be a number"),
    ("row-nil-price", header() + body([1.0, 1.0, None, 0.0, 0, 0]), "last must be a number"),
    ("row-crossed-quote", header() + body([1.2, 1.1, 0.0, 0.0, 0, 0]), "crossed quote"),
    ("row-too-short", header() + body([1.0, 1.1, 0.0, 0.0, 0]), "needs 6 fields"),
    ("row-not-an-array", header() + body(1.0), "needs 6 fields"),
    ("row-negative-time", header() + body([1.0, 1.1, 0.0, 0.0, -1, 0]), "source_time_ns"),
    ("row-float-time", header() + body([1.0, 1.1, 0.0, 0.0, 0, 1.5]), "feed_time_ns"),
]

MALFORMED_FRAMES: list[tuple[str, Any, str]] = [
    ("no-frames", [], "of 0 frames, need 3"),
    ("two-frames", [b"EURUSD\x00", header() + GOOD_BODY], "of 2 frames, need 3"),
    ("four-frames", [b"EURUSD\x00", header(), GOOD_BODY, b""], "of 4 frames, need 3"),
    ("topic-other-stream", [b"GBPUSD\x00", header(), GOOD_BODY], "does not match stream"),
    ("topic-without-nul", [b"EURUSD", header(), GOOD_BODY], "does not match stream"),
    ("topic-empty", [b"", header(), GOOD_BODY], "does not match stream"),
    ("trailing-bytes-after-header", [b"EURUSD\x00", header() + b"\x00", GOOD_BODY],
     "trailing bytes after the feed header"),
    ("body-in-header-frame", [b"EURUSD\x00", header() + GOOD_BODY, b""], "trailing bytes"),
    ("header-frame-short", [b"EURUSD\x00", b"TM\x01", GOOD_BODY], "feed header of 3 bytes"),
    ("heartbeat-body-frame", [b"EURUSD\x00", header(kind=HB, count=0), b"\x90"],
     "HEARTBEAT with a body"),
]


def _split(data: bytes) -> list[bytes]:
    """The ZeroMQ frames of a would-be datagram (the stream length byte says where to cut)."""
    if len(data) < FEED_HEADER_MIN:
        return [b"EURUSD\x00", data, b""]
    end = min(len(data), FEED_HEADER_MIN + data[FEED_HEADER_MIN - 1])
    name = data[FEED_HEADER_MIN:end]
    return [name + b"\x00", data[:end], data[end:]]


@pytest.mark.parametrize("data, reason", [pytest.param(d, r, id=i)
                                          for i, d, r in MALFORMED_FEED])
def test_malformed_datagram_is_rejected_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_datagram(data)
    assert reason in info.value.reason


@pytest.mark.parametrize("data, reason", [pytest.param(d, r, id=i)
                                          for i, d, r in MALFORMED_FEED])
def test_malformed_feed_frames_are_rejected_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_feed(_split(data))
    assert reason in info.value.reason


@pytest.mark.parametrize("frames, reason", [pytest.param(f, r, id=i)
                                            for i, f, r in MALFORMED_FRAMES])
def test_malformed_zeromq_framing_is_rejected_with_reason(frames: list[bytes],
                                                          reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_feed(frames)
    assert reason in info.value.reason


def test_remote_protocol_error_is_a_value_error_with_reason() -> None:
    with pytest.raises(ValueError) as info:
        decode_datagram(b"junk")
    assert isinstance(info.value, RemoteProtocolError)
    assert str(info.value) == info.value.reason


def test_extra_trailing_row_fields_are_ignored() -> None:
    data = header(count=1) + body([*ROW, "future", 7])
    msg = decode_datagram(data)
    assert isinstance(msg, TickBatch)
    assert msg.rows == (ROW,)


def test_integer_prices_decode_as_floats() -> None:
    msg = decode_datagram(header(count=1) + body([1, 2, 0, 3, 10, 20]))
    assert isinstance(msg, TickBatch)
    assert msg.rows == ((1.0, 2.0, 0.0, 3.0, 10, 20),)
    assert all(isinstance(v, float) for v in msg.rows[0][:4])


# --- recovery round trips ------------------------------------------------------------------

RECOVERY_REQUESTS = [
    pytest.param(SnapshotRequest(1, ("",)), id="snapshot-all"),
    pytest.param(SnapshotRequest(2**63 - 1, ("EUR", "GBPUSD", "é")), id="snapshot-prefixes"),
    pytest.param(GapFillRequest(0, "EURUSD", 1, 1), id="fill-one"),
    pytest.param(GapFillRequest(9, "EURUSD", 100, MAX_SEQ), id="fill-to-max"),
]

RECOVERY_REPLIES = [
    pytest.param(SnapshotReply(1, ()), id="snapshot-empty"),
    pytest.param(SnapshotReply(2, (SnapshotEntry("EURUSD", 5, 10, ROW),
                                   SnapshotEntry("GBPUSD", 6, 1, row(3)))), id="snapshot"),
    pytest.param(GapFillReply(3, "EURUSD", 10, 9), id="fill-nothing-settled"),
    pytest.param(GapFillReply(4, "EURUSD", 10, 30,
                              (TickBatch("EURUSD", 5, 10, (row(1), row(2))),
                               TickBatch("EURUSD", 6, 25, (row(3),))),
                              (SeqRange(12, 20), SeqRange(26, 30))), id="fill-batches-void"),
    pytest.param(GapFillReply(7, "EURUSD", 10, 100, (TickBatch("EURUSD", 5, 10, (row(1),)),),
                              (), (SeqRange(11, 100),)), id="fill-unknown"),
    pytest.param(GapFillReply(8, "EURUSD", 1, 30, (), (SeqRange(1, 5),),
                              (SeqRange(6, 10), SeqRange(20, 30))), id="fill-void-and-unknown"),
    pytest.param(ErrorReply(5, ErrorCode.BAD_REQUEST, "bad magic"), id="error-bad-request"),
    pytest.param(ErrorReply(6, ErrorCode.STORE_UNAVAILABLE, "redis down"), id="error-store"),
    pytest.param(ErrorReply(0, ErrorCode.INTERNAL, ""), id="error-internal"),
]


@pytest.mark.parametrize("msg", RECOVERY_REQUESTS)
def test_recovery_request_round_trip(msg: Any) -> None:
    frames = encode_recovery(msg)
    assert len(frames) == 2 and len(frames[0]) == 4 and frames[0][:3] == b"TM\x01"
    assert decode_request(frames) == msg
    assert request_id_of(frames) == msg.request_id


@pytest.mark.parametrize("msg", RECOVERY_REPLIES)
def test_recovery_reply_round_trip(msg: Any) -> None:
    frames = encode_recovery(msg)
    assert len(frames) == 2 and len(frames[0]) == 4
    assert decode_reply(frames) == msg


def test_recovery_body_uses_the_documented_keys() -> None:
    _h, raw = encode_recovery(GapFillReply(4, "EURUSD", 10, 12,
                                           (TickBatch("EURUSD", 5, 10, (ROW,)),),
                                           (SeqRange(11, 12),)))
    assert msgpack.unpackb(raw) == {
        "id": 4, "stream": "EURUSD", "from": 10, "settled_to": 12,
        "batches": [[5, 10, [list(ROW)]]], "void": [[11, 12]]}
    _h, raw = encode_recovery(GapFillRequest(7, "EURUSD", 1, 5))
    assert msgpack.unpackb(raw) == {"id": 7, "stream": "EURUSD", "from": 1, "to": 5}
    _h, raw = encode_recovery(SnapshotRequest(8, ("EUR",)))
    assert msgpack.unpackb(raw) == {"id": 8, "prefixes": ["EUR"]}
    _h, raw = encode_recovery(SnapshotReply(9, (SnapshotEntry("EURUSD", 5, 10, ROW),)))
    assert msgpack.unpackb(raw) == {"id": 9, "entries": [["EURUSD", 5, 10, list(ROW)]]}
    _h, raw = encode_recovery(ErrorReply(1, ErrorCode.STORE_UNAVAILABLE, "x"))
    assert msgpack.unpackb(raw) == {"id": 1, "code": 2, "message": "x"}


def test_unknown_ranges_travel_under_a_key_old_peers_ignore() -> None:
    """Issue 9: ``unknown`` came after version 1's first release. It is sent only when there
    is one (a reply without it is byte-identical to before), an old client ignores it (and so
    reports those numbers lost, not skipped), and a reply from an old service has none."""
    _h, raw = encode_recovery(GapFillReply(4, "EURUSD", 10, 100, (), (), (SeqRange(11, 100),)))
    assert msgpack.unpackb(raw) == {"id": 4, "stream": "EURUSD", "from": 10, "settled_to": 100,
                                    "batches": [], "void": [], "unknown": [[11, 100]]}
    old = _reply(Kind.GAP_FILL_REPLY, GOOD_FILL_REPLY)
    assert "unknown" not in GOOD_FILL_REPLY
    assert decode_reply(old).unknown == ()  # type: ignore[union-attr]


@pytest.mark.parametrize("frames", [
    pytest.param([], id="no-frames"),
    pytest.param([b"junk"], id="one-frame"),
    pytest.param([b"junk", b"junk"], id="junk"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), b"\xc1"], id="not-msgpack"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), msgpack.packb([1, 2])], id="not-a-map"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), msgpack.packb({"stream": "X"})], id="no-id"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), msgpack.packb({"id": -5})], id="negative-id"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), msgpack.packb({"id": "7"})], id="string-id"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), msgpack.packb({"id": 2**63})], id="huge-id"),
])
def test_request_id_of_junk_is_0(frames: list[bytes]) -> None:
    assert request_id_of(frames) == 0


def test_request_id_of_a_malformed_request_with_an_id_is_that_id() -> None:
    frames = [short(Kind.GAP_FILL_REQUEST), msgpack.packb({"id": 77, "stream": "EURUSD"})]
    with pytest.raises(RemoteProtocolError):
        decode_request(frames)
    assert request_id_of(frames) == 77


@pytest.mark.parametrize("frames", [
    pytest.param([b"TM\x02\x12", msgpack.packb({"id": 77})], id="version-2"),
    pytest.param([b"XX\x01\x12", msgpack.packb({"id": 77})], id="bad-magic"),
    pytest.param([b"TM\x01\x12\x00", msgpack.packb({"id": 77})], id="long-header"),
    pytest.param([b"TM\x01", msgpack.packb({"id": 77})], id="short-header"),
    pytest.param([short(99), msgpack.packb({"id": 77})], id="unknown-kind"),
    pytest.param([short(Kind.TICKS), msgpack.packb({"id": 77})], id="feed-kind"),
    pytest.param([short(Kind.GAP_FILL_REPLY), msgpack.packb({"id": 77})], id="reply-kind"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), msgpack.packb({"id": 77, 1: 2})],
                 id="non-string-key"),
    pytest.param([short(Kind.GAP_FILL_REQUEST), msgpack.packb({"id": 77}), b"x"],
                 id="three-frames"),
    pytest.param([short(Kind.SNAPSHOT_REQUEST), msgpack.packb({"id": 77, "prefixes": 5})],
                 id="bad-prefixes"),
])
def test_request_id_is_echoed_whenever_it_can_be_read(frames: list[bytes]) -> None:
    """Issue 9: the id was 0 for a bad header or kind but echoed for a bad key."""
    with pytest.raises(RemoteProtocolError):
        decode_request(frames)
    assert request_id_of(frames) == 77


# --- malformed recovery input --------------------------------------------------------------

GF = short(Kind.GAP_FILL_REQUEST)
GOOD_GF = {"id": 1, "stream": "EURUSD", "from": 1, "to": 5}


def _gf(**changes: Any) -> list[bytes]:
    d = {**GOOD_GF, **changes}
    return [GF, msgpack.packb({k: v for k, v in d.items() if v is not ...})]


def _reply(kind: Kind, d: Any) -> list[bytes]:
    return [short(kind), msgpack.packb(d)]


GOOD_FILL_REPLY = {"id": 1, "stream": "EURUSD", "from": 1, "settled_to": 1,
                   "batches": [[5, 1, [list(ROW)]]], "void": []}

# (id, decoder, frames, substring of the reason)
MALFORMED_RECOVERY: list[tuple[str, Any, list[bytes], str]] = [
    ("one-frame", decode_request, [GF], "recovery message of 1 frames, need 2"),
    ("three-frames", decode_request, [GF, b"\x80", b""], "of 3 frames, need 2"),
    ("header-3-bytes", decode_request, [b"TM\x01", b"\x80"], "recovery header of 3 bytes"),
    ("header-5-bytes", decode_request, [GF + b"\x00", b"\x80"], "recovery header of 5 bytes"),
    ("feed-header-as-recovery", decode_request, [header(), GOOD_BODY], "recovery header of"),
    ("bad-magic", decode_request, [short(Kind.GAP_FILL_REQUEST, magic=b"XX"), b"\x80"],
     "bad magic"),
    ("wrong-version", decode_request, [short(Kind.GAP_FILL_REQUEST, version=9), b"\x80"],
     "unsupported protocol version 9"),
    ("unknown-kind", decode_request, [short(99), b"\x80"], "unknown kind 99"),
    ("body-not-msgpack", decode_request, [GF, b"\xc1"], "body is not msgpack"),
    ("body-trailing-bytes", decode_request, [GF, b"\x80\x80"], "body is not msgpack"),
    ("body-int-keys", decode_request, [GF, msgpack.packb({1: 2})], "body is not msgpack"),
    ("body-not-a-map", decode_request, [GF, msgpack.packb([1, "EURUSD", 1, 5])],
     "body is not a map"),
    ("body-nil", decode_request, [GF, b"\xc0"], "body is not a map"),
    ("fill-missing-to", decode_request, _gf(to=...), "bad GAP_FILL_REQUEST: KeyError"),
    ("fill-missing-id", decode_request, _gf(id=...), "bad GAP_FILL_REQUEST: KeyError"),
    ("fill-from-0", decode_request, _gf(**{"from": 0}), "bad GAP_FILL_REQUEST: ValueError"),
    ("fill-inverted", decode_request, _gf(**{"from": 9, "to": 5}), "inverted range"),
    ("fill-string-seq", decode_request, _gf(to="5"), "bad GAP_FILL_REQUEST: ValueError"),
    ("fill-bad-stream", decode_request, _gf(stream="EUR\x00"), "control character"),
    ("fill-negative-id", decode_request, _gf(id=-1), "request id"),
    ("snapshot-missing-prefixes", decode_request,
     [short(Kind.SNAPSHOT_REQUEST), msgpack.packb({"id": 1})],
     "bad SNAPSHOT_REQUEST: KeyError"),
    ("snapshot-no-prefixes", decode_request,
     [short(Kind.SNAPSHOT_REQUEST), msgpack.packb({"id": 1, "prefixes": []})],
     "bad SNAPSHOT_REQUEST: ValueError"),
    ("snapshot-prefix-not-str", decode_request,
     [short(Kind.SNAPSHOT_REQUEST), msgpack.packb({"id": 1, "prefixes": [1]})], "bad prefix"),
    ("snapshot-prefixes-int", decode_request,
     [short(Kind.SNAPSHOT_REQUEST), msgpack.packb({"id": 1, "prefixes": 5})],
     "bad SNAPSHOT_REQUEST: TypeError"),
    ("reply-kind-as-request", decode_request, _reply(Kind.GAP_FILL_REPLY, GOOD_FILL_REPLY),
     "GAP_FILL_REPLY is not a request"),
    ("error-reply-as-request", decode_request,
     _reply(Kind.ERROR_REPLY, {"id": 1, "code": 1, "message": "x"}),
     "ERROR_REPLY is not a request"),
    ("feed-kind-as-request", decode_request, [short(Kind.TICKS), b"\x80"],
     "TICKS is not a request"),
    ("request-kind-as-reply", decode_reply, _gf(), "GAP_FILL_REQUEST is not a reply"),
    ("reply-bad-magic", decode_reply, [short(Kind.ERROR_REPLY, magic=b"tm"), b"\x80"],
     "bad magic"),
    ("fill-reply-missing-void", decode_reply,
     _reply(Kind.GAP_FILL_REPLY, {k: v for k, v in GOOD_FILL_REPLY.items() if k != "void"}),
     "bad GAP_FILL_REPLY: KeyError"),
    ("fill-reply-settled-below-from", decode_reply,
     _reply(Kind.GAP_FILL_REPLY, {**GOOD_FILL_REPLY, "from": 5, "settled_to": 3}),
     "settled_to 3 below from_seq 5"),
    ("fill-reply-bad-row", decode_reply,
     _reply(Kind.GAP_FILL_REPLY, {**GOOD_FILL_REPLY,
                                  "batches": [[5, 1, [[2.0, 1.0, 0, 0, 0, 0]]]]}),
     "crossed quote"),
    ("fill-reply-batch-short", decode_reply,
     _reply(Kind.GAP_FILL_REPLY, {**GOOD_FILL_REPLY, "batches": [[5, 1]]}),
     "bad GAP_FILL_REPLY: ValueError"),
    ("fill-reply-inverted-void", decode_reply,
     _reply(Kind.GAP_FILL_REPLY, {**GOOD_FILL_REPLY, "void": [[9, 3]]}), "inverted range"),
    ("fill-reply-inverted-unknown", decode_reply,
     _reply(Kind.GAP_FILL_REPLY, {**GOOD_FILL_REPLY, "unknown": [[9, 3]]}), "inverted range"),
    ("fill-reply-unknown-not-pairs", decode_reply,
     _reply(Kind.GAP_FILL_REPLY, {**GOOD_FILL_REPLY, "unknown": [5]}),
     "bad GAP_FILL_REPLY: TypeError"),
    ("snapshot-reply-entry-short", decode_reply,
     _reply(Kind.SNAPSHOT_REPLY, {"id": 1, "entries": [["EURUSD", 1, 2]]}),
     "bad SNAPSHOT_REPLY: ValueError"),
    ("snapshot-reply-missing-entries", decode_reply,
     _reply(Kind.SNAPSHOT_REPLY, {"id": 1}), "bad SNAPSHOT_REPLY: KeyError"),
    ("error-reply-unknown-code", decode_reply,
     _reply(Kind.ERROR_REPLY, {"id": 1, "code": 99, "message": "x"}),
     "bad ERROR_REPLY: ValueError"),
    ("error-reply-missing-message", decode_reply,
     _reply(Kind.ERROR_REPLY, {"id": 1, "code": 1}), "bad ERROR_REPLY: KeyError"),
]


@pytest.mark.parametrize("decoder, frames, reason", [pytest.param(d, f, r, id=i)
                                                     for i, d, f, r in MALFORMED_RECOVERY])
def test_malformed_recovery_message_is_rejected_with_reason(decoder: Any, frames: list[bytes],
                                                            reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decoder(frames)
    assert reason in info.value.reason


def test_unknown_recovery_map_keys_are_ignored() -> None:
    frames = [GF, msgpack.packb({**GOOD_GF, "hint": "future field"})]
    assert decode_request(frames) == GapFillRequest(1, "EURUSD", 1, 5)


# --- properties ------------------------------------------------------------------------------

PRICES = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
TIMES = st.integers(0, 2**64 - 1)


@st.composite
def rows(draw: st.DrawFn) -> Row:
    a, b = draw(PRICES), draw(PRICES)
    bid, ask = min(a, b), max(a, b)
    if draw(st.booleans()):
        ask = 0.0  # a one-sided quote is never crossed
    return (bid, ask, draw(PRICES), draw(PRICES), draw(TIMES), draw(TIMES))


@st.composite
def tick_batches(draw: st.DrawFn) -> TickBatch:
    batch_rows = tuple(draw(st.lists(rows(), min_size=1, max_size=60)))
    first = draw(st.one_of(st.integers(1, 1000),
                           st.integers(1, MAX_SEQ - len(batch_rows) + 1)))
    return TickBatch(draw(STREAMS), draw(st.integers(0, 2**64 - 1)), first, batch_rows)


@FAST
@given(tick_batches(), st.sampled_from([200, 512, DEFAULT_DATAGRAM_BYTES, 65507]))
def test_any_valid_batch_round_trips_on_both_paths(msg: TickBatch, max_bytes: int) -> None:
    assert decode_feed(encode_feed(msg)) == msg
    parts = [decode_datagram(d) for d in encode_datagrams(msg, max_bytes)]
    assert all(isinstance(p, TickBatch) for p in parts)
    batches = [p for p in parts if isinstance(p, TickBatch)]
    assert tuple(r for b in batches for r in b.rows) == msg.rows
    assert batches[0].first_seq == msg.first_seq


@FAST
@given(STREAMS, st.integers(0, 2**64 - 1), st.integers(0, MAX_SEQ), st.booleans())
def test_any_valid_control_message_round_trips(stream: str, session: int, seq: int,
                                               end: bool) -> None:
    msg = EndOfSession(stream, session, seq) if end else Heartbeat(stream, session, seq)
    assert decode_feed(encode_feed(msg)) == msg
    assert [decode_datagram(d) for d in encode_datagrams(msg)] == [msg]


def _near_valid() -> st.SearchStrategy[bytes]:
    """Bytes that start like a feed header, so the fuzzing gets past the magic."""
    values = st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=4) | st.binary(max_size=4),
        lambda inner: st.lists(inner, max_size=7), max_leaves=20)
    payload = st.one_of(st.binary(max_size=40), values.map(msgpack.packb))
    return st.builds(
        lambda kind, session, first, count, name, n, extra: struct.pack(
            ">2sBBQQHB", MAGIC, PROTOCOL_VERSION, kind, session, first, count,
            n if n is not None else len(name)) + name + extra,
        st.sampled_from([0, 1, 2, 3, 16, 19, 255]), st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1), st.integers(0, 0xFFFF), st.binary(max_size=70),
        st.none() | st.integers(0, 255), payload)


JUNK = st.one_of(st.binary(max_size=200), _near_valid())


@FAST
@given(JUNK)
def test_decode_datagram_never_raises_anything_but_remote_protocol_error(data: bytes) -> None:
    try:
        msg = decode_datagram(data)
    except RemoteProtocolError:
        return
    assert isinstance(msg, (TickBatch, Heartbeat, EndOfSession))


@FAST
@given(st.lists(JUNK, max_size=4), st.booleans())
def test_decode_feed_never_raises_anything_but_remote_protocol_error(frames: list[bytes],
                                                                     fix_topic: bool) -> None:
    if fix_topic and len(frames) == 3:
        frames = _split(frames[1])  # a consistent topic, so the body gets decoded too
    try:
        msg = decode_feed(frames)
    except RemoteProtocolError:
        return
    assert isinstance(msg, (TickBatch, Heartbeat, EndOfSession))


RECOVERY_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=6) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=5) | st.fixed_dictionaries(
        {}, optional={k: inner for k in ("id", "prefixes", "stream", "from", "to",
                                         "settled_to", "batches", "void", "unknown",
                                         "entries",
                                         "code", "message")}),
    max_leaves=30)


@FAST
@given(st.one_of(
    st.lists(st.binary(max_size=12), max_size=3),
    st.tuples(st.sampled_from([*Kind, 0, 99]).map(lambda k: short(int(k))),
              RECOVERY_VALUES.map(msgpack.packb)).map(list)))
def test_recovery_decoders_never_raise_anything_but_remote_protocol_error(
        frames: list[bytes]) -> None:
    for decoder in (decode_request, decode_reply):
        with contextlib.suppress(RemoteProtocolError):
            decoder(frames)
    rid = request_id_of(frames)
    assert isinstance(rid, int) and 0 <= rid < 2**63


# --- docs/PROTOCOL.md ----------------------------------------------------------------------

PROTOCOL_MD = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"


def _hex_after(heading: str) -> list[bytes]:
    """The bytes in the first code block after ``heading``: one entry per dump or frame."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    block = text.split(heading, 1)[1].split("```", 2)[1]
    out: list[bytes] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        if line.startswith("frame"):  # "frame 0:  54 4d 01 12"
            out.append(bytes.fromhex(line.split(":", 1)[1]))
        elif line.startswith(" "):  # continuation of the frame above
            out[-1] += bytes.fromhex(line)
        else:  # "0010  54 4d ...": an offset, then 16 bytes of one dump
            offset, data = line.split(maxsplit=1)
            if int(offset, 16) == 0:
                out.append(b"")
            assert int(offset, 16) == len(out[-1]), f"offset {offset} is wrong"
            out[-1] += bytes.fromhex(data)
    return out


def test_protocol_md_examples_are_what_the_codec_produces() -> None:
    tick = TickBatch("EURUSD", 1732450000123456, 42, (
        (1.0841, 1.0842, 0.0, 1.0, 1732450000123000000, 1732450000123250000),))
    assert _hex_after("### One TICKS datagram with one tick") == encode_datagrams(tick)
    assert _hex_after("### The heartbeat that follows it") == encode_datagrams(
        Heartbeat("EURUSD", 1732450000123456, 43))
    assert _hex_after("### A gap-fill request") == encode_recovery(
        GapFillRequest(7, "EURUSD", 40, 42))
