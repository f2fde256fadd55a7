"""The order codec: round trips of every message (tables and properties), the header and body
layout, a table of malformed frames with the reason each names, the reject reason a bad
request earns, and junk that never raises anything but RemoteProtocolError.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.orders.codec import (
    OrderKind,
    client_order_id_of,
    decode_order,
    decode_order_reply,
    decode_order_request,
    encode_order,
    reject_reason_of,
)
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
    OrderType,
    RejectReason,
    ReplaceOrder,
    ReplaceRefused,
    ReplaceRequest,
    Side,
)
from protocols.orders.record import Order, OrderMessage
from protocols.ticks.codec import encode_recovery
from protocols.ticks.messages import (
    MAX_STREAM_BYTES,
    PROTOCOL_VERSION,
    GapFillRequest,
    Heartbeat,
    Kind,
)
from protocols.wire import MAGIC

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
S = OrderState

LIMIT = NewOrder("ACC-1", "c-1", "EURUSD", Side.BUY, OrderType.LIMIT, 1.5, 1.0841,
                 1_732_450_000_123_000_000)
MARKET = NewOrder("é" * 32, "x" * 64, "XAUUSD", Side.SELL, OrderType.MARKET, 0.01, None, 0)
FILL = ExecutionReport("o-1", "c-1", "ACC-1", "EURUSD", Side.BUY, S.PARTIALLY_FILLED, 1.0, 0.5,
                       1.0842, 1.08415, 3, "x-7", 1_732_450_000_124_000_000)
RECORD = Order("o-1", LIMIT, S.PARTIALLY_FILLED, 1.0, 1.08415, 3, 2**64 - 1, 2.0, 1.0845)


def short(kind: int, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION) -> bytes:
    return magic + bytes([version, kind])


MESSAGES: list[Any] = [
    pytest.param(LIMIT, id="new-limit"),
    pytest.param(MARKET, id="new-market-utf8-64-byte-ids"),
    pytest.param(CancelOrder("ACC-1", "c-2", "c-1"), id="cancel"),
    pytest.param(ReplaceOrder("ACC-1", "c-3", "c-1", 2.0, 1.0845), id="replace-limit"),
    pytest.param(ReplaceOrder("ACC-1", "c-3", "c-1", 2.0, None), id="replace-market"),
    pytest.param(OrderAck("c-1", "o-1", S.ACCEPTED, 1), id="ack"),
    pytest.param(OrderAck("c-1", "o-1", S.FILLED, 2**63 - 1), id="ack-duplicate-filled"),
    *[pytest.param(OrderReject("c-1", r, f"because {r.name}"), id=f"reject-{r.name.lower()}")
      for r in RejectReason],
    pytest.param(OrderReject("", RejectReason.MALFORMED, ""), id="reject-unknown-id"),
    pytest.param(OrderReject("c-1", RejectReason.BUSY, "at the bound", 7), id="reject-busy-hint"),
    pytest.param(OrderPending(3), id="pending"),
    pytest.param(OrderPending(0), id="pending-none-left"),
    pytest.param(FILL, id="report-partial-fill"),
    pytest.param(ExecutionReport("o-1", "c-1", "ACC-1", "EURUSD", Side.SELL, S.CANCELLED, 1.0,
                                 0.0, 0.0, 1.08415, 4, "x-8"), id="report-cancel-no-time"),
    pytest.param(dataclasses.replace(FILL, seq=7), id="report-log-entry"),
    pytest.param(RECORD.replace_report(3.0, 1.0846, exec_id="o-1:8", epoch=3, seq=8),
                 id="report-replace-limit"),
    pytest.param(dataclasses.replace(Order.from_new("o-2", MARKET, epoch=1, now_ns=5),
                                     state=S.ROUTED).replace_report(
        0.02, None, exec_id="o-2:9", epoch=1), id="report-replace-market-no-position"),
    pytest.param(CancelRequest("o-1", 3, 2**64 - 1), id="cancel-request"),
    pytest.param(CancelRequest("o-1", 1), id="cancel-request-no-time"),
    pytest.param(ReplaceRequest("o-1", "c-3", 2.0, 1.0845, 3, 7), id="replace-request-limit"),
    pytest.param(ReplaceRequest("o-2", "c-4", 0.02, None, 1), id="replace-request-market"),
    *[pytest.param(ReplaceRefused("o-1", r, f"because {r.name}"),
                   id=f"replace-refused-{r.name.lower()}")
      for r in (RejectReason.NOT_CANCELLABLE, RejectReason.BAD_QUANTITY,
                RejectReason.UNKNOWN_ORDER)],
    *[pytest.param(EntryRefused("o-1", 4, r, 3), id=f"entry-refused-{r.name.lower()}")
      for r in EntryRefusal],
    pytest.param(EntryRefused("o-1", 1, EntryRefusal.UNKNOWN_ORDER), id="entry-refused-no-log"),
    pytest.param(RECORD, id="order-record-replaced"),
    pytest.param(dataclasses.replace(RECORD, exec_seq=9, client_id="trader-7"),
                 id="order-record-exec-seq-client"),
    pytest.param(Order.from_new("o-2", MARKET, epoch=1, now_ns=5), id="order-record-market"),
]


@pytest.mark.parametrize("msg", MESSAGES)
def test_round_trip(msg: OrderMessage) -> None:
    frames = encode_order(msg)
    assert len(frames) == 2
    assert decode_order(frames) == msg
    assert decode_order(tuple(frames)) == msg


def test_every_message_type_and_kind_is_in_the_round_trip_table() -> None:
    kinds = {encode_order(p.values[0])[0][3] for p in MESSAGES}
    assert kinds == {int(k) for k in OrderKind}


@pytest.mark.parametrize("msg, kind", [
    (LIMIT, OrderKind.NEW_ORDER), (CancelOrder("A", "c-2", "c-1"), OrderKind.CANCEL_ORDER),
    (ReplaceOrder("A", "c-2", "c-1", 1.0, None), OrderKind.REPLACE_ORDER),
    (OrderAck("c", "o", S.ROUTED, 1), OrderKind.ORDER_ACK),
    (OrderReject("c", RejectReason.FENCED, ""), OrderKind.ORDER_REJECT),
    (FILL, OrderKind.EXECUTION_REPORT), (RECORD, OrderKind.ORDER),
    (OrderPending(1), OrderKind.ORDER_PENDING),
    (CancelRequest("o", 1), OrderKind.CANCEL_REQUEST),
    (ReplaceRequest("o", "c", 1.0, None, 1), OrderKind.REPLACE_REQUEST),
    (ReplaceRefused("o", RejectReason.NOT_CANCELLABLE, ""), OrderKind.REPLACE_REFUSED),
], ids=lambda v: v.name if isinstance(v, OrderKind) else "")
def test_header_is_magic_version_kind(msg: OrderMessage, kind: OrderKind) -> None:
    header, _body = encode_order(msg)
    assert header == b"TM" + bytes([PROTOCOL_VERSION, kind])


def test_order_kinds_are_fixed_and_never_collide_with_tick_kinds() -> None:
    assert {k.name: int(k) for k in OrderKind} == {
        "NEW_ORDER": 32, "CANCEL_ORDER": 33, "REPLACE_ORDER": 34, "ORDER_ACK": 40,
        "ORDER_REJECT": 41, "ORDER_PENDING": 42, "EXECUTION_REPORT": 48,
        "CANCEL_REQUEST": 49, "REPLACE_REQUEST": 50, "REPLACE_REFUSED": 51,
        "ENTRY_REFUSED": 52, "ORDER": 56}
    assert all(32 <= k <= 63 for k in OrderKind)
    assert not {int(k) for k in OrderKind} & {int(k) for k in Kind}


def test_body_uses_the_documented_keys() -> None:
    assert msgpack.unpackb(encode_order(LIMIT)[1]) == {
        "account": "ACC-1", "client_order_id": "c-1", "symbol": "EURUSD", "side": 1, "type": 2,
        "quantity": 1.5, "price": 1.0841, "sent_ns": 1_732_450_000_123_000_000}
    assert msgpack.unpackb(encode_order(CancelOrder("A", "c-2", "c-1"))[1]) == {
        "account": "A", "client_order_id": "c-2", "target_client_order_id": "c-1"}
    assert msgpack.unpackb(encode_order(ReplaceOrder("A", "c-2", "c-1", 2.0, None))[1]) == {
        "account": "A", "client_order_id": "c-2", "target_client_order_id": "c-1",
        "quantity": 2.0, "price": None}
    assert msgpack.unpackb(encode_order(OrderAck("c-1", "o-1", S.ROUTED, 7))[1]) == {
        "client_order_id": "c-1", "order_id": "o-1", "state": 3, "epoch": 7}
    assert msgpack.unpackb(encode_order(OrderReject("c-1", RejectReason.NOT_ACTIVE, "m"))[1]) == {
        "client_order_id": "c-1", "reason": 9, "message": "m", "retryable": True}
    # The hint travels only when there is one: older peers never see the key.
    assert msgpack.unpackb(encode_order(OrderReject("c-1", RejectReason.BUSY, "m", 12))[1]) == {
        "client_order_id": "c-1", "reason": 16, "message": "m", "retryable": True,
        "retry_after_ms": 12}
    assert msgpack.unpackb(encode_order(FILL)[1]) == {
        "order_id": "o-1", "client_order_id": "c-1", "account": "ACC-1", "symbol": "EURUSD",
        "side": 1, "state": 4, "filled_quantity": 1.0, "last_quantity": 0.5,
        "last_price": 1.0842, "avg_price": 1.08415, "epoch": 3, "exec_id": "x-7",
        "transact_ns": 1_732_450_000_124_000_000, "seq": 0, "quantity": 0.0, "price": None}
    record = msgpack.unpackb(encode_order(RECORD)[1])
    assert record == {
        "order_id": "o-1", "order": msgpack.unpackb(encode_order(LIMIT)[1]), "state": 4,
        "filled_quantity": 1.0, "avg_price": 1.08415, "epoch": 3, "updated_ns": 2**64 - 1,
        "quantity": 2.0, "price": 1.0845, "exec_seq": 0, "client_id": ""}


def test_fields_added_later_default_when_a_peer_omits_them() -> None:
    """``seq``, ``quantity`` and ``price`` of a report and ``exec_seq`` of a record came after
    the first version: frames without them (an older peer's) decode with their defaults."""
    body = msgpack.unpackb(encode_order(FILL)[1])
    for key in ("seq", "quantity", "price"):
        del body[key]
    assert decode_order([encode_order(FILL)[0], msgpack.packb(body)]) == FILL
    record = msgpack.unpackb(encode_order(RECORD)[1])
    del record["exec_seq"]
    del record["client_id"]
    assert decode_order([encode_order(RECORD)[0], msgpack.packb(record)]) == RECORD


def test_whole_numbers_sent_as_integers_decode_as_floats() -> None:
    body = {**msgpack.unpackb(encode_order(LIMIT)[1]), "quantity": 3, "price": 2}
    msg = decode_order([short(OrderKind.NEW_ORDER), msgpack.packb(body)])
    assert isinstance(msg, NewOrder)
    assert (msg.quantity, msg.price) == (3.0, 2.0)
    assert isinstance(msg.quantity, float) and isinstance(msg.price, float)
    replace = ReplaceOrder("ACC-1", "c-3", "c-1", 2.0, 1.0845)
    body = {**msgpack.unpackb(encode_order(replace)[1]), "quantity": 4, "price": 1}
    got = decode_order([short(OrderKind.REPLACE_ORDER), msgpack.packb(body)])
    assert isinstance(got, ReplaceOrder) and isinstance(got.quantity, float)
    assert (got.quantity, got.price) == (4.0, 1.0)
    request = ReplaceRequest("o-1", "c-3", 2.0, None, 1)
    body = {**msgpack.unpackb(encode_order(request)[1]), "quantity": 5}
    assert decode_order([short(OrderKind.REPLACE_REQUEST), msgpack.packb(body)]) == \
        dataclasses.replace(request, quantity=5.0)


def test_unknown_keys_are_ignored() -> None:
    body = {**msgpack.unpackb(encode_order(LIMIT)[1]), "time_in_force": "GTC"}
    assert decode_order([short(OrderKind.NEW_ORDER), msgpack.packb(body)]) == LIMIT


def test_encoding_something_else_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="not an order message"):
        encode_order(Heartbeat("EURUSD", 1, 1))  # type: ignore[arg-type]


# --- directional decoders --------------------------------------------------------------------

REQUESTS = [LIMIT, CancelOrder("A", "c-2", "c-1"), ReplaceOrder("A", "c-2", "c-1", 1.0, None)]
REPLIES = [OrderAck("c", "o", S.ROUTED, 1), OrderReject("c", RejectReason.FENCED, "")]
OTHERS = [FILL, RECORD]


@pytest.mark.parametrize("msg", [*REQUESTS, *REPLIES, *OTHERS],
                         ids=lambda m: type(m).__name__)
def test_directional_decoders_take_only_their_family(msg: OrderMessage) -> None:
    frames = encode_order(msg)
    kind = OrderKind(frames[0][3]).name
    if msg in REQUESTS:
        assert decode_order_request(frames) == msg
    else:
        with pytest.raises(RemoteProtocolError, match=f"{kind} is not an order request"):
            decode_order_request(frames)
    if msg in REPLIES:
        assert decode_order_reply(frames) == msg
    else:
        with pytest.raises(RemoteProtocolError, match=f"{kind} is not an order reply"):
            decode_order_reply(frames)


# --- malformed input -------------------------------------------------------------------------

NEW = short(OrderKind.NEW_ORDER)
GOOD_NEW: dict[str, Any] = msgpack.unpackb(encode_order(LIMIT)[1])
GOOD_REPORT: dict[str, Any] = msgpack.unpackb(encode_order(FILL)[1])
GOOD_RECORD: dict[str, Any] = msgpack.unpackb(encode_order(RECORD)[1])


def body(kind: OrderKind, good: dict[str, Any], **changes: Any) -> list[bytes]:
    """``good`` with ``changes`` applied; a change to ``...`` removes the key."""
    d = {**good, **changes}
    return [short(kind), msgpack.packb({k: v for k, v in d.items() if v is not ...})]


def new_order(**changes: Any) -> list[bytes]:
    return body(OrderKind.NEW_ORDER, GOOD_NEW, **changes)


def exec_report(**changes: Any) -> list[bytes]:
    return body(OrderKind.EXECUTION_REPORT, GOOD_REPORT, **changes)


def record(**changes: Any) -> list[bytes]:
    return body(OrderKind.ORDER, GOOD_RECORD, **changes)


REJECT = {"client_order_id": "c-1", "reason": 9, "message": "m", "retryable": True}
ACK = {"client_order_id": "c-1", "order_id": "o-1", "state": 2, "epoch": 1}

# (id, frames, substring of the reason, the reject reason a request earns)
MALFORMED: list[tuple[str, list[bytes], str, RejectReason]] = [
    ("no-frames", [], "order message of 0 frames, need 2", RejectReason.MALFORMED),
    ("one-frame", [NEW], "of 1 frames, need 2", RejectReason.MALFORMED),
    ("three-frames", [NEW, b"\x80", b""], "of 3 frames, need 2", RejectReason.MALFORMED),
    ("header-3-bytes", [b"TM\x01", b"\x80"], "order header of 3 bytes", RejectReason.MALFORMED),
    ("header-5-bytes", [NEW + b"\x00", b"\x80"], "order header of 5 bytes",
     RejectReason.MALFORMED),
    ("bad-magic", [short(OrderKind.NEW_ORDER, magic=b"MT"), b"\x80"], "bad magic b'MT'",
     RejectReason.MALFORMED),
    ("wrong-version", [short(OrderKind.NEW_ORDER, version=2), b"\x80"],
     "unsupported protocol version 2", RejectReason.MALFORMED),
    ("unknown-kind", [short(63), b"\x80"], "unknown order kind 63", RejectReason.MALFORMED),
    ("recovery-kind", encode_recovery(GapFillRequest(1, "EURUSD", 1, 2)),
     "unknown order kind 18", RejectReason.MALFORMED),
    ("feed-kind", [short(Kind.TICKS), b"\x80"], "unknown order kind 1", RejectReason.MALFORMED),
    ("body-not-msgpack", [NEW, b"\xc1"], "body is not msgpack", RejectReason.MALFORMED),
    ("body-truncated", [NEW, encode_order(LIMIT)[1][:-2]], "body is not msgpack",
     RejectReason.MALFORMED),
    ("body-trailing-bytes", [NEW, encode_order(LIMIT)[1] + b"\x00"], "body is not msgpack",
     RejectReason.MALFORMED),
    ("body-int-keys", [NEW, msgpack.packb({1: 2})], "body is not msgpack",
     RejectReason.MALFORMED),
    ("body-array", [NEW, msgpack.packb(list(GOOD_NEW.values()))], "body is not a map",
     RejectReason.MALFORMED),
    ("body-nil", [NEW, b"\xc0"], "body is not a map", RejectReason.MALFORMED),
    ("missing-account", new_order(account=...), "bad NEW_ORDER: KeyError 'account'",
     RejectReason.MALFORMED),
    ("missing-price", new_order(price=...), "KeyError 'price'", RejectReason.MALFORMED),
    ("missing-sent", new_order(sent_ns=...), "KeyError 'sent_ns'", RejectReason.MALFORMED),
    ("account-int", new_order(account=7), "account must be a non-empty string",
     RejectReason.MALFORMED),
    ("account-binary", new_order(account=b"ACC"), "account must be a non-empty string",
     RejectReason.MALFORMED),
    ("client-id-too-long", new_order(client_order_id="c" * 65), "longer than 64 bytes",
     RejectReason.MALFORMED),
    ("client-id-control", new_order(client_order_id="c\x1b"), "control character",
     RejectReason.MALFORMED),
    ("symbol-control", new_order(symbol="EUR\x00"), "symbol 'EUR\\x00' contains a control",
     RejectReason.UNKNOWN_SYMBOL),
    ("side-unknown", new_order(side=3), "side unknown Side code 3", RejectReason.BAD_SIDE),
    ("side-string", new_order(side="BUY"), "side must be an integer code, got str",
     RejectReason.BAD_SIDE),
    ("side-bool", new_order(side=True), "side must be an integer code, got bool",
     RejectReason.BAD_SIDE),
    ("side-huge", new_order(side=2**64 - 1), "unknown Side code", RejectReason.BAD_SIDE),
    ("type-unknown", new_order(type=0), "type unknown OrderType code 0",
     RejectReason.MALFORMED),
    ("quantity-zero", new_order(quantity=0.0), "quantity must be > 0", RejectReason.BAD_QUANTITY),
    ("quantity-negative-int", new_order(quantity=-3), "quantity must be > 0",
     RejectReason.BAD_QUANTITY),
    ("quantity-nan", new_order(quantity=float("nan")), "quantity must be finite",
     RejectReason.BAD_QUANTITY),
    ("quantity-string", new_order(quantity="1.5"), "quantity must be a number, got str",
     RejectReason.BAD_QUANTITY),
    ("quantity-nil", new_order(quantity=None), "quantity must be a number, got NoneType",
     RejectReason.BAD_QUANTITY),
    ("quantity-bool", new_order(quantity=False), "got bool", RejectReason.BAD_QUANTITY),
    ("limit-price-nil", new_order(price=None), "price must be a number > 0 for a LIMIT order",
     RejectReason.BAD_PRICE),
    ("limit-price-inf", new_order(price=float("inf")), "price must be finite",
     RejectReason.BAD_PRICE),
    ("market-price", new_order(type=1), "price must be None for a MARKET order",
     RejectReason.BAD_PRICE),
    ("sent-negative", new_order(sent_ns=-1), "sent_ns must be an integer of nanoseconds",
     RejectReason.MALFORMED),
    ("sent-float", new_order(sent_ns=1.5), "sent_ns", RejectReason.MALFORMED),
    ("cancel-missing-target", body(OrderKind.CANCEL_ORDER, {"account": "A",
                                                            "client_order_id": "c-2"}),
     "bad CANCEL_ORDER: KeyError 'target_client_order_id'", RejectReason.MALFORMED),
    ("cancel-own-target", body(OrderKind.CANCEL_ORDER, {
        "account": "A", "client_order_id": "c-1", "target_client_order_id": "c-1"}),
     "must differ from target_client_order_id", RejectReason.MALFORMED),
    ("replace-negative-quantity", body(OrderKind.REPLACE_ORDER, {
        "account": "A", "client_order_id": "c-2", "target_client_order_id": "c-1",
        "quantity": -1.0, "price": None}), "quantity must be > 0", RejectReason.BAD_QUANTITY),
    ("ack-state-new", body(OrderKind.ORDER_ACK, ACK, state=1), "NEW is never acknowledged",
     RejectReason.MALFORMED),
    ("ack-state-unknown", body(OrderKind.ORDER_ACK, ACK, state=9),
     "state unknown OrderState code 9", RejectReason.MALFORMED),
    ("ack-epoch-0", body(OrderKind.ORDER_ACK, ACK, epoch=0), "epoch must be an integer in [1",
     RejectReason.MALFORMED),
    ("reject-unknown-reason", body(OrderKind.ORDER_REJECT, REJECT, reason=99),
     "reason unknown RejectReason code 99", RejectReason.MALFORMED),
    ("reject-retryable-wrong", body(OrderKind.ORDER_REJECT, REJECT, retryable=False),
     "retryable must be True for NOT_ACTIVE, got False", RejectReason.MALFORMED),
    ("reject-retryable-int", body(OrderKind.ORDER_REJECT, REJECT, retryable=1),
     "retryable must be True", RejectReason.MALFORMED),
    ("reject-missing-retryable", body(OrderKind.ORDER_REJECT, REJECT, retryable=...),
     "KeyError 'retryable'", RejectReason.MALFORMED),
    ("reject-message-binary", body(OrderKind.ORDER_REJECT, REJECT, message=b"m"),
     "message must be a string", RejectReason.MALFORMED),
    ("report-state-new", exec_report(state=1), "NEW is never reported", RejectReason.MALFORMED),
    ("report-fill-without-last", exec_report(last_quantity=0.0), "last_quantity must be > 0",
     RejectReason.MALFORMED),
    ("report-missing-exec-id", exec_report(exec_id=...), "KeyError 'exec_id'",
     RejectReason.MALFORMED),
    ("report-missing-transact", exec_report(transact_ns=...), "KeyError 'transact_ns'",
     RejectReason.MALFORMED),
    ("report-avg-nan", exec_report(avg_price=float("nan")), "avg_price must be finite",
     RejectReason.MALFORMED),
    ("record-order-not-map", record(order=[1, 2]), "order must be a map, got list",
     RejectReason.MALFORMED),
    ("record-order-missing-key", record(order={k: v for k, v in GOOD_NEW.items() if k != "symbol"}),
     "bad ORDER: KeyError 'symbol'", RejectReason.MALFORMED),
    ("record-filled-above-quantity", record(filled_quantity=3.0), "above quantity",
     RejectReason.MALFORMED),
    ("record-price-for-market", record(order={**GOOD_NEW, "type": 1, "price": None}),
     "price must be None for a MARKET order", RejectReason.BAD_PRICE),
]


@pytest.mark.parametrize(("frames", "reason"), [pytest.param(f, r, id=i)
                                                for i, f, r, _ in MALFORMED])
def test_malformed_frames_are_rejected_with_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_order(frames)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason


@pytest.mark.parametrize(("frames", "expected"), [pytest.param(f, e, id=i)
                                                  for i, f, _, e in MALFORMED])
def test_reject_reason_of_a_decode_error(frames: list[bytes], expected: RejectReason) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_order(frames)
    assert reject_reason_of(info.value) is expected


def test_malformed_table_covers_every_reason_a_decode_error_can_earn() -> None:
    assert {m[3] for m in MALFORMED} == {RejectReason.MALFORMED, RejectReason.BAD_SIDE,
                                         RejectReason.BAD_QUANTITY, RejectReason.BAD_PRICE,
                                         RejectReason.UNKNOWN_SYMBOL}


def test_reject_reason_of_an_error_without_a_cause_is_malformed() -> None:
    assert reject_reason_of(RemoteProtocolError("x")) is RejectReason.MALFORMED


# --- client_order_id_of ----------------------------------------------------------------------


@pytest.mark.parametrize("frames, expected", [
    pytest.param(encode_order(LIMIT), "c-1", id="valid-request"),
    pytest.param(new_order(quantity=-1.0), "c-1", id="invalid-request-with-an-id"),
    pytest.param(new_order(side="x", client_order_id="c-9"), "c-9", id="bad-side"),
    pytest.param(body(OrderKind.CANCEL_ORDER, {"client_order_id": "c-5"}), "c-5",
                 id="cancel-missing-fields"),
    pytest.param(encode_order(RECORD), "", id="record-has-no-top-level-id"),
    pytest.param([], "", id="no-frames"),
    pytest.param([b"junk", b"junk"], "", id="junk"),
    pytest.param([short(99), msgpack.packb({"client_order_id": "c-1"})], "", id="unknown-kind"),
    pytest.param([NEW, b"\xc1"], "", id="not-msgpack"),
    pytest.param([NEW, msgpack.packb(["c-1"])], "", id="not-a-map"),
    pytest.param(new_order(client_order_id=...), "", id="no-id"),
    pytest.param(new_order(client_order_id=7), "", id="int-id"),
    pytest.param(new_order(client_order_id=""), "", id="empty-id"),
    pytest.param(new_order(client_order_id="c" * 65), "", id="long-id"),
    pytest.param(new_order(client_order_id="c\n"), "", id="control-char-id"),
])
def test_client_order_id_of(frames: list[bytes], expected: str) -> None:
    assert client_order_id_of(frames) == expected


def test_a_reject_for_any_malformed_request_can_be_built() -> None:
    for _id, frames, _reason, _ in MALFORMED:
        with pytest.raises(RemoteProtocolError) as info:
            decode_order(frames)
        reply = OrderReject(client_order_id_of(frames), reject_reason_of(info.value),
                            info.value.reason)
        assert decode_order_reply(encode_order(reply)) == reply


# --- properties ------------------------------------------------------------------------------

IDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1,
              max_size=16).filter(lambda s: len(s.encode()) <= MAX_STREAM_BYTES)
POSITIVE = st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False)
NS = st.integers(0, 2**64 - 1)
EPOCHS = st.integers(1, 2**63 - 1)


@st.composite
def new_orders(draw: st.DrawFn) -> NewOrder:
    kind = draw(st.sampled_from(OrderType))
    price = None if kind is OrderType.MARKET else draw(POSITIVE)
    return NewOrder(draw(IDS), draw(IDS), draw(IDS), draw(st.sampled_from(Side)), kind,
                    draw(POSITIVE), price, draw(NS))


@st.composite
def reports(draw: st.DrawFn) -> ExecutionReport:
    state = draw(st.sampled_from([s for s in OrderState if s is not S.NEW]))
    unfilled = state in (S.ACCEPTED, S.ROUTED, S.REJECTED)
    filled = 0.0 if unfilled else draw(POSITIVE | st.just(0.0))
    avg = draw(POSITIVE) if filled else 0.0
    if state in (S.PARTIALLY_FILLED, S.FILLED):
        filled = filled or 1.0
        avg = avg or 1.0
        last_q, last_p = draw(st.floats(1e-9, 1.0)) * filled, draw(POSITIVE)
    else:
        last_q = last_p = 0.0
    return ExecutionReport(draw(IDS), draw(IDS), draw(IDS), draw(IDS), draw(st.sampled_from(Side)),
                           state, filled, last_q, last_p, avg, draw(EPOCHS), draw(IDS), draw(NS))


@st.composite
def records(draw: st.DrawFn) -> Order:
    new = draw(new_orders())
    state = draw(st.sampled_from(OrderState))
    quantity = draw(POSITIVE)
    if state is S.FILLED:
        filled = quantity
    elif state in (S.PARTIALLY_FILLED, S.CANCELLED, S.EXPIRED):
        filled = quantity * draw(st.sampled_from([0.5, 0.25]))
        if state is not S.PARTIALLY_FILLED and draw(st.booleans()):
            filled = 0.0
    else:
        filled = 0.0
    avg = draw(POSITIVE) if filled else 0.0
    price = None if new.type is OrderType.MARKET else draw(POSITIVE)
    return Order(draw(IDS), new, state, filled, avg, draw(EPOCHS), draw(NS), quantity, price)


ANY_MESSAGE = st.one_of(
    new_orders(), reports(), records(),
    st.tuples(IDS, IDS, IDS).filter(lambda t: t[1] != t[2]).map(lambda t: CancelOrder(*t)),
    st.tuples(IDS, IDS, IDS, POSITIVE, st.none() | POSITIVE).filter(
        lambda t: t[1] != t[2]).map(lambda t: ReplaceOrder(*t)),
    st.builds(OrderAck, IDS, IDS, st.sampled_from([s for s in OrderState if s is not S.NEW]),
              EPOCHS),
    st.builds(OrderReject, IDS | st.just(""), st.sampled_from(RejectReason), st.text()),
)


@FAST
@given(ANY_MESSAGE)
def test_any_valid_message_round_trips(msg: OrderMessage) -> None:
    assert decode_order(encode_order(msg)) == msg


VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=6) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.fixed_dictionaries(
        {}, optional={k: inner for k in (
            "account", "client_order_id", "target_client_order_id", "symbol", "side", "type",
            "quantity", "price", "sent_ns", "order_id", "state", "epoch", "reason", "message",
            "retryable", "filled_quantity", "last_quantity", "last_price", "avg_price",
            "exec_id", "transact_ns", "order", "updated_ns")}),
    max_leaves=40)


def _mutated(draw: st.DrawFn) -> list[bytes]:
    """A valid message with one field replaced by an arbitrary value, or removed."""
    msg = draw(ANY_MESSAGE)
    header, raw = encode_order(msg)
    d = msgpack.unpackb(raw)
    key = draw(st.sampled_from(sorted(d)))
    if draw(st.booleans()):
        del d[key]
    else:
        d[key] = draw(VALUES)
    return [header, msgpack.packb(d)]


JUNK = st.one_of(
    st.lists(st.binary(max_size=12), max_size=3),
    st.tuples(st.sampled_from([*OrderKind, *Kind, 0, 63, 255]).map(lambda k: short(int(k))),
              VALUES.map(msgpack.packb)).map(list),
    st.composite(_mutated)(),
)


@FAST
@given(JUNK)
def test_decoders_never_raise_anything_but_remote_protocol_error(frames: list[bytes]) -> None:
    for decoder in (decode_order, decode_order_request, decode_order_reply):
        with contextlib.suppress(RemoteProtocolError):
            decoder(frames)
    cid = client_order_id_of(frames)
    assert isinstance(cid, str) and len(cid.encode()) <= MAX_STREAM_BYTES


def test_a_pending_notice_with_a_bad_count_is_malformed() -> None:
    for bad in (-1, "3", True, 1.5):
        frames = [short(OrderKind.ORDER_PENDING), msgpack.packb({"in_service": bad})]
        with pytest.raises(RemoteProtocolError):
            decode_order(frames)
