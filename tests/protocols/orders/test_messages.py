"""Order messages from tables: idempotency, reject reasons, every field a message validates,
frozen and slotted dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from protocols.errors import (
    InvalidOrder,
    LocalProtocolError,
)
from protocols.orders.messages import (
    NewOrder,
    OrderReject,
    RejectReason,
    Side,
    idempotency,
    reject_reason_for,
)
from tests.protocols.orders.builders import (
    S,
    ack,
    amend,
    cancel,
    fill,
    market,
    new,
    order,
    rec,
    report,
)

# --- idempotency -----------------------------------------------------------------------------

IDEMPOTENCY: list[tuple[str, Any, Any, str]] = [
    ("first-time", None, new(), "new"),
    ("resent", new(), new(), "duplicate"),
    ("restamped-retry", new(), new(sent_ns=5), "duplicate"),
    ("int-quantity-equals-float", new(quantity=1.0), new(quantity=1), "duplicate"),
    ("other-quantity", new(), new(quantity=2.0), "conflict"),
    ("other-price", new(), new(price=1.2), "conflict"),
    ("other-side", new(), new(side=Side.SELL), "conflict"),
    ("other-symbol", new(), new(symbol="XAUUSD"), "conflict"),
    ("other-type", new(), market(), "conflict"),
    ("cancel-resent", cancel(client_order_id="c-1", target_client_order_id="c-0"),
     cancel(client_order_id="c-1", target_client_order_id="c-0"), "duplicate"),
    ("cancel-other-target", cancel(client_order_id="c-1", target_client_order_id="c-0"),
     cancel(client_order_id="c-1", target_client_order_id="c-7"), "conflict"),
    ("order-id-reused-for-cancel", new(), cancel(client_order_id="c-1",
                                                 target_client_order_id="c-0"), "conflict"),
    ("replace-resent", amend(client_order_id="c-1", target_client_order_id="c-0"),
     amend(client_order_id="c-1", target_client_order_id="c-0"), "duplicate"),
]


@pytest.mark.parametrize(("existing", "incoming", "expected"), [c[1:] for c in IDEMPOTENCY],
                         ids=[c[0] for c in IDEMPOTENCY])
def test_idempotency(existing: Any, incoming: Any, expected: str) -> None:
    assert idempotency(existing, incoming) == expected


@pytest.mark.parametrize("other", [new(account="ACC-2"), new(client_order_id="c-2")],
                         ids=["account", "client-order-id"])
def test_idempotency_across_keys_is_a_local_error(other: NewOrder) -> None:
    with pytest.raises(LocalProtocolError, match="across keys"):
        idempotency(new(), other)


# --- reject reasons --------------------------------------------------------------------------

RETRYABLE = {RejectReason.NOT_ACTIVE, RejectReason.STORE_UNAVAILABLE, RejectReason.FENCED,
             RejectReason.EXECUTOR_UNAVAILABLE, RejectReason.BUSY, RejectReason.NO_EXECUTOR}


@pytest.mark.parametrize("reason", list(RejectReason), ids=[r.name for r in RejectReason])
def test_retryable(reason: RejectReason) -> None:
    assert reason.retryable == (reason in RETRYABLE)
    assert OrderReject("c-1", reason, "").retryable == reason.retryable


@pytest.mark.parametrize("field, reason", [
    ("side", RejectReason.BAD_SIDE), ("quantity", RejectReason.BAD_QUANTITY),
    ("price", RejectReason.BAD_PRICE), ("symbol", RejectReason.UNKNOWN_SYMBOL),
    ("account", RejectReason.MALFORMED), ("type", RejectReason.MALFORMED),
    ("sent_ns", RejectReason.MALFORMED),
])
def test_reject_reason_for_a_bad_field(field: str, reason: RejectReason) -> None:
    assert reject_reason_for(InvalidOrder(field, "is bad")) is reason


# --- message validation ----------------------------------------------------------------------


# (id, constructor, field, substring of the message)
INVALID: list[tuple[str, Callable[[], Any], str, str]] = [
    ("account-empty", lambda: new(account=""), "account", "account must be a non-empty string"),
    ("account-bytes", lambda: new(account=b"ACC"), "account", "non-empty string"),
    ("account-65-bytes", lambda: new(account="é" * 32 + "x"), "account", "longer than 64"),
    ("account-control", lambda: new(account="A\x7f"), "account", "control character"),
    ("client-id-nul", lambda: new(client_order_id="c\x00"), "client_order_id", "control"),
    ("symbol-empty", lambda: new(symbol=""), "symbol", "symbol must be a non-empty string"),
    ("side-int", lambda: new(side=1), "side", "must be a Side, got 1"),
    ("side-str", lambda: new(side="BUY"), "side", "must be a Side"),
    ("type-int", lambda: new(type=2), "type", "must be a OrderType"),
    ("quantity-zero", lambda: new(quantity=0.0), "quantity", "must be > 0, got 0.0"),
    ("quantity-negative", lambda: new(quantity=-1), "quantity", "must be > 0"),
    ("quantity-nan", lambda: new(quantity=float("nan")), "quantity", "must be finite"),
    ("quantity-inf", lambda: new(quantity=float("inf")), "quantity", "must be finite"),
    ("quantity-huge-int", lambda: new(quantity=10**400), "quantity", "must be finite"),
    ("quantity-bool", lambda: new(quantity=True), "quantity", "must be a number, got bool"),
    ("quantity-str", lambda: new(quantity="1"), "quantity", "must be a number, got str"),
    ("limit-without-price", lambda: new(price=None), "price", "for a LIMIT order, got None"),
    ("limit-price-zero", lambda: new(price=0.0), "price", "must be > 0"),
    ("limit-price-nan", lambda: new(price=float("nan")), "price", "must be finite"),
    ("market-with-price", lambda: market(price=1.1), "price", "None for a MARKET order"),
    ("sent-negative", lambda: new(sent_ns=-1), "sent_ns", "nanoseconds"),
    ("sent-float", lambda: new(sent_ns=1.0), "sent_ns", "nanoseconds"),
    ("sent-above-u64", lambda: new(sent_ns=2**64), "sent_ns", "nanoseconds"),
    ("cancel-own-id-is-target", lambda: cancel(client_order_id="c-1"), "client_order_id",
     "must differ from target_client_order_id"),
    ("cancel-empty-target", lambda: cancel(target_client_order_id=""),
     "target_client_order_id", "non-empty"),
    ("replace-own-id-is-target", lambda: amend(client_order_id="c-1"), "client_order_id",
     "must differ"),
    ("replace-zero-quantity", lambda: amend(0.0), "quantity", "must be > 0"),
    ("replace-negative-price", lambda: amend(1.0, -1.0), "price", "must be > 0"),
    ("ack-new", lambda: ack(state=S.NEW), "state", "NEW is never acknowledged"),
    ("ack-state-int", lambda: ack(state=2), "state", "must be a OrderState"),
    ("ack-epoch-0", lambda: ack(epoch=0), "epoch", "[1, "),
    ("ack-epoch-bool", lambda: ack(epoch=True), "epoch", "[1, "),
    ("ack-empty-order-id", lambda: ack(order_id=""), "order_id", "non-empty"),
    ("reject-reason-int", lambda: OrderReject("c-1", 3, ""),  # type: ignore[arg-type]
     "reason", "RejectReason"),
    ("reject-message-none",
     lambda: OrderReject("c-1", RejectReason.MALFORMED, None),  # type: ignore[arg-type]
     "message", "must be a string"),
    ("reject-retry-after-negative", lambda: OrderReject("c-1", RejectReason.BUSY, "", -1),
     "retry_after_ms", "must be an integer in [0, 60000]"),
    ("reject-retry-after-float", lambda: OrderReject("c-1", RejectReason.BUSY, "", 1.5),
     "retry_after_ms", "must be an integer"),
    ("reject-retry-after-bool", lambda: OrderReject("c-1", RejectReason.BUSY, "", True),
     "retry_after_ms", "must be an integer"),
    ("reject-retry-after-too-long", lambda: OrderReject("c-1", RejectReason.BUSY, "", 60_001),
     "retry_after_ms", "must be an integer in [0, 60000]"),
    ("reject-bad-id", lambda: OrderReject("c\x01", RejectReason.MALFORMED, ""),
     "client_order_id", "control"),
    ("report-new", lambda: report(S.NEW), "state", "NEW is never reported"),
    ("report-fill-without-last", lambda: fill(0.5, 0.0), "last_quantity", "must be > 0"),
    ("report-fill-zero-price", lambda: report(S.FILLED, 1.0, 1.0, 0.0, 1.0), "last_price",
     "must be > 0"),
    ("report-last-above-filled", lambda: fill(0.5, 0.6), "last_quantity",
     "above filled_quantity"),
    ("report-cancel-with-last", lambda: report(S.CANCELLED, 0.5, 0.5, 1.0, 1.0),
     "last_quantity", "must be 0 in a CANCEL report"),
    ("replace-of-filled", lambda: report(S.FILLED, 1.0, 1.0, 1.0, 1.0, quantity=2.0),
     "quantity", "only a working order is replaced"),
    ("replace-negative-quantity", lambda: report(S.ROUTED, quantity=-1.0), "quantity",
     "must be >= 0"),
    ("replace-bad-price", lambda: report(S.ROUTED, quantity=2.0, price=0.0), "price",
     "must be > 0"),
    ("price-without-replace", lambda: report(S.ROUTED, price=1.2), "price",
     "must be None unless the report is a replace"),
    ("negative-seq", lambda: report(S.ROUTED, seq=-1), "seq", "must be an integer"),
    ("bool-seq", lambda: report(S.ROUTED, seq=True), "seq", "must be an integer"),
    ("record-negative-exec-seq", lambda: dataclasses.replace(order(), exec_seq=-1),
     "exec_seq", "must be an integer"),
    ("report-cancel-with-last-price", lambda: report(S.CANCELLED, last_p=1.0), "last_price",
     "must be 0"),
    ("report-accepted-filled", lambda: report(S.ACCEPTED, 0.5, avg=1.0), "filled_quantity",
     "must be 0 in state ACCEPTED"),
    ("report-rejected-filled", lambda: report(S.REJECTED, 0.5, avg=1.0), "filled_quantity",
     "must be 0 in state REJECTED"),
    ("report-filled-without-avg", lambda: report(S.FILLED, 1.0, 1.0, 1.0, 0.0), "avg_price",
     "both are 0 or both are > 0"),
    ("report-avg-without-fill", lambda: report(S.CANCELLED, 0.0, avg=1.0), "avg_price",
     "both are 0"),
    ("report-negative-filled", lambda: report(S.CANCELLED, -1.0), "filled_quantity",
     "must be >= 0"),
    ("report-empty-exec-id", lambda: fill(0.5, 0.5, exec_id=""), "exec_id", "non-empty"),
    ("report-bad-transact", lambda: fill(0.5, 0.5, transact_ns=-5), "transact_ns",
     "nanoseconds"),
    ("report-epoch-0", lambda: fill(0.5, 0.5, epoch=0), "epoch", "[1, "),
    ("order-not-new-order", lambda: rec(order=cancel()), "order", "must be a NewOrder"),
    ("order-filled-above-quantity", lambda: rec(filled_quantity=1.5), "filled_quantity",
     "above quantity"),
    ("order-filled-but-not-filled-state", lambda: rec(filled_quantity=1.0), "filled_quantity",
     "in state PARTIALLY_FILLED"),
    ("order-filled-state-short", lambda: rec(state=S.FILLED), "filled_quantity",
     "in state FILLED"),
    ("order-routed-with-fills", lambda: rec(state=S.ROUTED), "filled_quantity",
     "must be 0 in state ROUTED"),
    ("order-partial-without-fills", lambda: rec(filled_quantity=0.0, avg_price=0.0),
     "filled_quantity", "must be > 0 in state PARTIALLY_FILLED"),
    ("order-limit-price-none", lambda: rec(price=None), "price", "LIMIT"),
    ("order-epoch-0", lambda: rec(epoch=0), "epoch", "[1, "),
    ("order-bad-updated", lambda: rec(updated_ns=-1), "updated_ns", "nanoseconds"),
    ("order-zero-quantity", lambda: rec(quantity=0.0), "quantity", "must be > 0"),
    ("order-bad-id", lambda: rec(order_id="o\n1"), "order_id", "control character"),
]


@pytest.mark.parametrize(("make", "field", "message"), [i[1:] for i in INVALID],
                         ids=[i[0] for i in INVALID])
def test_invalid_message_is_refused_naming_the_field(make: Callable[[], Any], field: str,
                                                     message: str) -> None:
    with pytest.raises(InvalidOrder) as info:
        make()
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(field)
    assert isinstance(info.value, ValueError)


VALID: list[tuple[str, Callable[[], Any]]] = [
    ("limit", lambda: new()),
    ("market", lambda: market()),
    ("int-quantity", lambda: new(quantity=3)),
    ("64-byte-utf8-ids", lambda: new(account="é" * 32, client_order_id="x" * 64)),
    ("max-sent", lambda: new(sent_ns=2**64 - 1)),
    ("cancel", lambda: cancel()),
    ("replace-market", lambda: amend(1.0, None)),
    ("ack-filled", lambda: ack(state=S.FILLED, epoch=2**63 - 1)),
    ("reject-unknown-id", lambda: OrderReject("", RejectReason.MALFORMED, "junk")),
    ("report-accepted", lambda: report(S.ACCEPTED)),
    ("report-cancel-after-fills", lambda: report(S.CANCELLED, 0.5, avg=1.0)),
    ("report-fill", lambda: fill(1.0, 0.5, done=True)),
    ("order-partial", lambda: rec()),
    ("order-filled-within-noise", lambda: rec(state=S.FILLED, filled_quantity=1.0 + 1e-12)),
]


@pytest.mark.parametrize("make", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_message_constructs(make: Callable[[], Any]) -> None:
    make()


def test_messages_are_frozen_and_slotted() -> None:
    msg = new()
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.quantity = 2.0  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
