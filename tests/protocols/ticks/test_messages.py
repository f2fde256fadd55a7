"""Messages validate on construction: a table of invalid ones (each raises ValueError) and of
valid ones, the Tick row round trip, and the stream-name rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest

from protocols.ticks.messages import (
    MAX_BATCH,
    MAX_SEQ,
    MAX_STREAM_BYTES,
    EndOfSession,
    ErrorCode,
    ErrorReply,
    GapFillReply,
    GapFillRequest,
    Heartbeat,
    Row,
    SeqRange,
    SnapshotEntry,
    SnapshotRequest,
    Tick,
    TickBatch,
    check_row,
    check_stream,
)

ROW: Row = (1.0841, 1.0842, 0.0, 1.0, 1_732_450_000_123_000_000, 0)


def tick(**changes: Any) -> Callable[[], Any]:
    base: dict[str, Any] = dict(symbol="EURUSD", bid=1.0841, ask=1.0842, last=0.0, volume=1.0,
                                source_time_ns=1, feed_time_ns=2, seq=3, session=4)
    return lambda: Tick(**{**base, **changes})


def tb(stream: str = "EURUSD", session: int = 1, first_seq: int = 1,
       rows: tuple[Any, ...] = (ROW,)) -> Callable[[], Any]:
    return lambda: TickBatch(stream, session, first_seq, rows)


def fill_reply(**changes: Any) -> Callable[[], Any]:
    base: dict[str, Any] = dict(request_id=1, stream="EURUSD", from_seq=10, settled_to=20)
    return lambda: GapFillReply(**{**base, **changes})


# (id, constructor, substring of the ValueError message)
INVALID: list[tuple[str, Callable[[], Any], str]] = [
    # Tick
    ("tick-empty-symbol", tick(symbol=""), "non-empty string"),
    ("tick-symbol-not-str", tick(symbol=b"EURUSD"), "non-empty string"),
    ("tick-symbol-too-long", tick(symbol="X" * 65), "longer than 64 bytes"),
    ("tick-symbol-nul", tick(symbol="EUR\x00USD"), "control character"),
    ("tick-nan-bid", tick(bid=math.nan), "bid must be finite"),
    ("tick-inf-ask", tick(ask=math.inf), "ask must be finite"),
    ("tick-negative-last", tick(last=-0.5), "last must be finite"),
    ("tick-negative-volume", tick(volume=-1.0), "volume must be finite"),
    ("tick-string-bid", tick(bid="1.08"), "bid must be a number"),
    ("tick-bool-ask", tick(ask=True), "ask must be a number"),
    ("tick-none-volume", tick(volume=None), "volume must be a number"),
    ("tick-crossed", tick(bid=1.1, ask=1.0), "crossed quote"),
    ("tick-negative-time", tick(source_time_ns=-1), "source_time_ns"),
    ("tick-float-time", tick(feed_time_ns=1.0), "feed_time_ns"),
    ("tick-time-above-u64", tick(source_time_ns=2**64), "source_time_ns"),
    ("tick-negative-seq", tick(seq=-1), "seq must be an integer in"),
    ("tick-seq-above-max", tick(seq=MAX_SEQ + 1), "seq must be an integer in"),
    # TickBatch
    ("batch-no-rows", tb(rows=()), "holds 1..65534 ticks"),
    ("batch-too-many-rows", tb(rows=(ROW,) * (MAX_BATCH + 1)), "holds 1..65534 ticks"),
    ("batch-first-seq-0", tb(first_seq=0), "out of range"),
    ("batch-negative-first-seq", tb(first_seq=-1), "first_seq"),
    ("batch-past-max-seq", tb(first_seq=MAX_SEQ, rows=(ROW, ROW)), "out of range"),
    ("batch-negative-session", tb(session=-1), "session must be a u64"),
    ("batch-session-above-u64", tb(session=2**64), "session must be a u64"),
    ("batch-bad-stream", tb(stream="EUR\nUSD"), "control character"),
    # (TickBatch does not validate its rows: the codec does, on decode.)
    # Heartbeat / EndOfSession
    ("heartbeat-negative-seq", lambda: Heartbeat("EURUSD", 1, -1), "next_seq"),
    ("heartbeat-seq-above-max", lambda: Heartbeat("EURUSD", 1, MAX_SEQ + 1), "next_seq"),
    ("heartbeat-bool-seq", lambda: Heartbeat("EURUSD", 1, True), "next_seq"),
    ("heartbeat-negative-session", lambda: Heartbeat("EURUSD", -1, 1), "session"),
    ("heartbeat-bad-stream", lambda: Heartbeat("", 1, 1), "non-empty string"),
    ("end-of-session-negative-seq", lambda: EndOfSession("EURUSD", 1, -1), "next_seq"),
    ("end-of-session-bad-stream", lambda: EndOfSession("A\x7f", 1, 1), "control character"),
    # GapFillRequest
    ("fill-from-0", lambda: GapFillRequest(1, "EURUSD", 0, 5), "empty or inverted range"),
    ("fill-inverted", lambda: GapFillRequest(1, "EURUSD", 6, 5), "empty or inverted range"),
    ("fill-to-above-max", lambda: GapFillRequest(1, "EURUSD", 1, MAX_SEQ + 1), "to_seq"),
    ("fill-float-from", lambda: GapFillRequest(1, "EURUSD", 1.0, 5), "from_seq"),  # type: ignore[arg-type]
    ("fill-negative-id", lambda: GapFillRequest(-1, "EURUSD", 1, 5), "request id"),
    ("fill-id-2**63", lambda: GapFillRequest(2**63, "EURUSD", 1, 5), "request id"),
    ("fill-string-id", lambda: GapFillRequest("1", "EURUSD", 1, 5), "request id"),  # type: ignore[arg-type]
    ("fill-bad-stream", lambda: GapFillRequest(1, "E" * 65, 1, 5), "longer than 64"),
    # GapFillReply
    ("reply-settled-below-from-1", fill_reply(settled_to=8), "below from_seq"),
    ("reply-negative-settled", fill_reply(from_seq=0, settled_to=-1), "settled_to must be"),
    ("reply-settled-above-max", fill_reply(settled_to=MAX_SEQ + 1), "settled_to"),
    ("reply-negative-from", fill_reply(from_seq=-1), "from_seq"),
    ("reply-bad-id", fill_reply(request_id=-1), "request id"),
    ("reply-bad-stream", fill_reply(stream=""), "non-empty string"),
    ("reply-batch-of-other-stream",
     fill_reply(batches=(TickBatch("GBPUSD", 1, 10, (ROW,)),)), "batch of stream 'GBPUSD'"),
    # SnapshotRequest
    ("snapshot-no-prefixes", lambda: SnapshotRequest(1, ()), "1..1024 prefixes"),
    ("snapshot-too-many-prefixes", lambda: SnapshotRequest(1, ("A",) * 1025),
     "1..1024 prefixes"),
    ("snapshot-prefix-not-str", lambda: SnapshotRequest(1, (b"EUR",)), "bad prefix"),  # type: ignore[arg-type]
    ("snapshot-prefix-too-long", lambda: SnapshotRequest(1, ("X" * 65,)), "bad prefix"),
    ("snapshot-bad-id", lambda: SnapshotRequest(-3, ("",)), "request id"),
    # SnapshotEntry
    ("entry-crossed-row", lambda: SnapshotEntry("EURUSD", 1, 1, (2.0, 1.0, 0.0, 0.0, 0, 0)),
     "crossed quote"),
    ("entry-short-row", lambda: SnapshotEntry("EURUSD", 1, 1, (1.0, 2.0)), "needs 6 fields"),  # type: ignore[arg-type]
    ("entry-negative-seq", lambda: SnapshotEntry("EURUSD", 1, -1, ROW), "seq"),
    # SeqRange
    ("range-inverted", lambda: SeqRange(5, 4), "inverted range 5..4"),
    ("range-negative", lambda: SeqRange(-1, 4), "first"),
    ("range-above-max", lambda: SeqRange(1, MAX_SEQ + 1), "last"),
    ("range-float", lambda: SeqRange(1.0, 2), "first"),  # type: ignore[arg-type]
    # ErrorReply
    ("error-int-code", lambda: ErrorReply(1, 1, "x"), "unknown error code"),  # type: ignore[arg-type]
    ("error-bad-id", lambda: ErrorReply(-1, ErrorCode.INTERNAL, "x"), "request id"),
]


@pytest.mark.parametrize("make, fragment", [pytest.param(m, f, id=i) for i, m, f in INVALID])
def test_invalid_construction_raises_value_error(make: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert fragment in str(info.value)


VALID: list[tuple[str, Callable[[], Any]]] = [
    ("tick", tick()),
    ("tick-unsequenced", tick(seq=0, session=0, feed_time_ns=0)),
    ("tick-max-seq", tick(seq=MAX_SEQ)),
    ("tick-zero-prices", tick(bid=0.0, ask=0.0, last=0.0, volume=0.0)),
    ("tick-one-sided-bid", tick(bid=1.2, ask=0.0)),  # ask 0 = no ask: not crossed
    ("tick-int-prices", tick(bid=1, ask=2, last=0, volume=3)),
    ("tick-max-time", tick(source_time_ns=2**64 - 1, feed_time_ns=2**64 - 1)),
    ("tick-64-byte-symbol", tick(symbol="é" * 32)),
    ("tick-snapshot", tick(snapshot=True)),
    ("batch-1", tb()),
    ("batch-max", tb(rows=(ROW,) * MAX_BATCH)),
    ("batch-ends-at-max-seq", tb(first_seq=MAX_SEQ - 1, rows=(ROW, ROW))),
    ("batch-max-session", tb(session=2**64 - 1)),
    ("heartbeat-seq-0", lambda: Heartbeat("EURUSD", 0, 0)),
    ("heartbeat-max", lambda: Heartbeat("EURUSD", 2**64 - 1, MAX_SEQ)),
    ("end-of-session", lambda: EndOfSession("EURUSD", 1, 1)),
    ("fill-one", lambda: GapFillRequest(0, "EURUSD", 1, 1)),
    ("fill-max", lambda: GapFillRequest(2**63 - 1, "EURUSD", 1, MAX_SEQ)),
    ("reply-nothing-settled", fill_reply(settled_to=9)),
    ("reply-settled-from-minus-1", fill_reply(from_seq=1, settled_to=0)),
    ("reply-with-batches-and-void",
     fill_reply(batches=(TickBatch("EURUSD", 1, 10, (ROW,)),), void=(SeqRange(11, 20),))),
    ("snapshot-everything", lambda: SnapshotRequest(1, ("",))),
    ("snapshot-1024-prefixes", lambda: SnapshotRequest(1, ("A",) * 1024)),
    ("snapshot-64-byte-prefix", lambda: SnapshotRequest(1, ("X" * 64,))),
    ("entry", lambda: SnapshotEntry("EURUSD", 1, 0, ROW)),
    ("range-one", lambda: SeqRange(5, 5)),
    ("range-zero", lambda: SeqRange(0, 0)),
    ("error", lambda: ErrorReply(0, ErrorCode.BAD_REQUEST, "")),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=i) for i, m in VALID])
def test_valid_construction(make: Callable[[], Any]) -> None:
    msg = make()
    assert dataclasses.is_dataclass(msg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, dataclasses.fields(msg)[0].name, None)


def test_tick_row_and_from_row_round_trip() -> None:
    t = Tick("EURUSD", 1.0841, 1.0842, 1.08415, 3.0, 111, 222, seq=7, session=9)
    assert t.row() == (1.0841, 1.0842, 1.08415, 3.0, 111, 222)
    assert Tick.from_row("EURUSD", 7, 9, t.row()) == t
    snap = Tick.from_row("EURUSD", 7, 9, t.row(), snapshot=True)
    assert snap.snapshot and dataclasses.replace(snap, snapshot=False) == t


def test_batch_ticks_carry_consecutive_sequences() -> None:
    rows = tuple((1.0 + i, 2.0 + i, 0.0, 0.0, i, i) for i in range(3))
    batch = TickBatch("EURUSD", 5, 100, rows)
    assert batch.last_seq == 102
    ticks = batch.ticks()
    assert [t.seq for t in ticks] == [100, 101, 102]
    assert all(t.session == 5 and t.symbol == "EURUSD" for t in ticks)
    assert tuple(t.row() for t in ticks) == rows


def test_snapshot_entry_tick_is_marked_snapshot() -> None:
    t = SnapshotEntry("EURUSD", 3, 10, ROW).tick()
    assert (t.symbol, t.seq, t.session, t.snapshot, t.row()) == ("EURUSD", 10, 3, True, ROW)


def test_check_row_ignores_extra_fields_and_converts_prices() -> None:
    assert check_row([1, 2, 0, 0, 5, 6, "extra", None]) == (1.0, 2.0, 0.0, 0.0, 5, 6)
    assert all(isinstance(v, float) for v in check_row([1, 2, 0, 0, 5, 6])[:4])


# --- stream names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, fragment", [
    pytest.param("", "non-empty string", id="empty"),
    pytest.param(None, "non-empty string", id="none"),
    pytest.param(42, "non-empty string", id="int"),
    pytest.param(b"EURUSD", "non-empty string", id="bytes"),
    pytest.param("X" * (MAX_STREAM_BYTES + 1), "longer than 64 bytes", id="65-ascii"),
    pytest.param("é" * 33, "longer than 64 bytes", id="66-utf8-bytes"),
    pytest.param("EUR\x00USD", "control character", id="nul"),
    pytest.param("EURUSD\x00", "control character", id="trailing-nul"),
    pytest.param("EUR\tUSD", "control character", id="tab"),
    pytest.param("EUR\nUSD", "control character", id="newline"),
    pytest.param("EUR\x1fUSD", "control character", id="unit-separator"),
    pytest.param("EUR\x7fUSD", "control character", id="delete"),
    pytest.param("EUR\udc80", "surrogates not allowed", id="lone-surrogate"),
])
def test_check_stream_rejects(name: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        check_stream(name)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", [
    pytest.param("EURUSD", id="plain"),
    pytest.param("EURUSD.m", id="suffix"),
    pytest.param("X", id="one-char"),
    pytest.param("X" * MAX_STREAM_BYTES, id="64-ascii"),
    pytest.param("é" * 32, id="64-utf8-bytes"),
    pytest.param("BTC/USD #1", id="punctuation-and-space"),
    pytest.param("日経225", id="cjk"),
])
def test_check_stream_accepts(name: str) -> None:
    assert check_stream(name) == name
