"""The order lifecycle and pre-trade checks, from tables: every legal transition, every illegal
(state, event) pair, the quantity rules of Order.apply, one validate() case per reason it can
produce, idempotency, amendments, message validation; and properties over random event and
report sequences.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import (
    Fenced,
    InvalidOrder,
    LocalProtocolError,
    OrderStateError,
    StoreError,
)
from protocols.orders.fields import check_id
from protocols.orders.lifecycle import (
    REPORT_EVENTS,
    TRANSITIONS,
    OrderEvent,
    OrderState,
    next_state,
)
from protocols.orders.messages import (
    CancelOrder,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderReject,
    OrderType,
    RejectReason,
    ReplaceOrder,
    Side,
    idempotency,
    reject_reason_for,
)
from protocols.orders.record import OpenOrders, Order, check_amend
from protocols.orders.risk import Limits, validate, validate_replace
from protocols.ticks.messages import check_stream

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
S = OrderState
E = OrderEvent


def new(**changes: Any) -> NewOrder:
    base: dict[str, Any] = dict(account="ACC-1", client_order_id="c-1", symbol="EURUSD",
                                side=Side.BUY, type=OrderType.LIMIT, quantity=1.0, price=1.1,
                                sent_ns=1_732_450_000_000_000_000)
    return NewOrder(**{**base, **changes})


def market(**changes: Any) -> NewOrder:
    return new(**{"type": OrderType.MARKET, "price": None, **changes})


def order(state: OrderState = S.ROUTED, filled: float = 0.0, avg: float = 0.0,
          quantity: float = 1.0, epoch: int = 3, src: NewOrder | None = None) -> Order:
    src = src or new(quantity=quantity)
    return Order("o-1", src, state, filled, avg, epoch, 100, quantity, src.price)


def report(state: OrderState, filled: float = 0.0, last_q: float = 0.0, last_p: float = 0.0,
           avg: float = 0.0, **changes: Any) -> ExecutionReport:
    base: dict[str, Any] = dict(order_id="o-1", client_order_id="c-1", account="ACC-1",
                                symbol="EURUSD", side=Side.BUY, state=state,
                                filled_quantity=filled, last_quantity=last_q, last_price=last_p,
                                avg_price=avg, epoch=3, exec_id="x-1")
    return ExecutionReport(**{**base, **changes})


def fill(filled: float, last_q: float, price: float = 1.1, done: bool = False,
         **changes: Any) -> ExecutionReport:
    state = S.FILLED if done else S.PARTIALLY_FILLED
    return report(state, filled, last_q, price, price, **changes)


# --- the transition table ----------------------------------------------------------------------

# Written out by hand, not derived from TRANSITIONS: this is the specification.
LEGAL: list[tuple[OrderState, OrderEvent, OrderState]] = [
    (S.NEW, E.ACCEPT, S.ACCEPTED),
    (S.NEW, E.REJECT, S.REJECTED),
    (S.ACCEPTED, E.ROUTE, S.ROUTED),
    (S.ACCEPTED, E.CANCEL, S.CANCELLED),
    (S.ACCEPTED, E.EXPIRE, S.EXPIRED),
    (S.ACCEPTED, E.REPLACE, S.ACCEPTED),
    (S.ROUTED, E.PARTIAL_FILL, S.PARTIALLY_FILLED),
    (S.ROUTED, E.FILL, S.FILLED),
    (S.ROUTED, E.REJECT, S.REJECTED),
    (S.ROUTED, E.CANCEL, S.CANCELLED),
    (S.ROUTED, E.EXPIRE, S.EXPIRED),
    (S.ROUTED, E.REPLACE, S.ROUTED),
    (S.PARTIALLY_FILLED, E.PARTIAL_FILL, S.PARTIALLY_FILLED),
    (S.PARTIALLY_FILLED, E.FILL, S.FILLED),
    (S.PARTIALLY_FILLED, E.CANCEL, S.CANCELLED),
    (S.PARTIALLY_FILLED, E.EXPIRE, S.EXPIRED),
    (S.PARTIALLY_FILLED, E.REPLACE, S.PARTIALLY_FILLED),
]
ILLEGAL = [(s, e) for s, e in itertools.product(OrderState, OrderEvent)
           if (s, e) not in {(a, b) for a, b, _ in LEGAL}]
TERMINAL = {S.FILLED, S.REJECTED, S.CANCELLED, S.EXPIRED}


@pytest.mark.parametrize(("state", "event", "after"), LEGAL,
                         ids=[f"{s.name}-{e.name}" for s, e, _ in LEGAL])
def test_legal_transition(state: OrderState, event: OrderEvent, after: OrderState) -> None:
    assert next_state(state, event) is after


@pytest.mark.parametrize(("state", "event"), ILLEGAL,
                         ids=[f"{s.name}-{e.name}" for s, e in ILLEGAL])
def test_illegal_transition_raises_naming_state_and_event(state: OrderState,
                                                          event: OrderEvent) -> None:
    with pytest.raises(OrderStateError) as info:
        next_state(state, event)
    assert state.name in str(info.value) and event.name in str(info.value)
    assert (info.value.state, info.value.event) == (state, event)
    assert isinstance(info.value, LocalProtocolError)


def test_every_table_entry_is_in_the_legal_table_and_nothing_else() -> None:
    table = {(s, e, after) for s, row in TRANSITIONS.items() for e, after in row.items()}
    assert table == set(LEGAL)
    assert set(TRANSITIONS) == set(OrderState)
    assert len(ILLEGAL) == len(OrderState) * len(OrderEvent) - len(LEGAL)


@pytest.mark.parametrize("state", list(OrderState), ids=[s.name for s in OrderState])
def test_terminal_states_take_no_event(state: OrderState) -> None:
    assert state.terminal == (state in TERMINAL)
    if state.terminal:
        for event in OrderEvent:
            with pytest.raises(OrderStateError):
                next_state(state, event)


def test_report_events_cover_every_state_but_new_and_are_legal_somewhere() -> None:
    assert set(REPORT_EVENTS) == set(OrderState) - {S.NEW}
    for state, event in REPORT_EVENTS.items():
        assert any(TRANSITIONS[s].get(event) is state for s in OrderState), state


@FAST
@given(st.sampled_from(list(OrderState)), st.lists(st.sampled_from(list(OrderEvent)),
                                                   max_size=30))
def test_any_event_sequence_stays_in_the_table(start: OrderState,
                                               events: list[OrderEvent]) -> None:
    state = start
    for event in events:
        before = state
        try:
            state = next_state(state, event)
        except OrderStateError as exc:
            assert event not in TRANSITIONS[before]
            assert (exc.state, exc.event) == (before, event)
            continue
        assert not before.terminal, "a terminal state changed"
        assert state is TRANSITIONS[before][event]


# --- Order.apply -----------------------------------------------------------------------------

# (id, record before, report, (state, filled, avg) after or an error substring)
APPLY: list[tuple[str, Order, ExecutionReport, tuple[OrderState, float, Any] | str]] = [
    ("accept", order(S.NEW), report(S.ACCEPTED), (S.ACCEPTED, 0.0, 0.0)),
    ("route", order(S.ACCEPTED), report(S.ROUTED), (S.ROUTED, 0.0, 0.0)),
    ("reject-new", order(S.NEW), report(S.REJECTED), (S.REJECTED, 0.0, 0.0)),
    ("executor-rejects", order(S.ROUTED), report(S.REJECTED), (S.REJECTED, 0.0, 0.0)),
    ("full-fill", order(S.ROUTED), fill(1.0, 1.0, done=True), (S.FILLED, 1.0, 1.1)),
    ("partial-fill", order(S.ROUTED), fill(0.4, 0.4), (S.PARTIALLY_FILLED, 0.4, 1.1)),
    ("second-partial", order(S.PARTIALLY_FILLED, 0.4, 1.0), fill(0.6, 0.2, 1.3),
     (S.PARTIALLY_FILLED, 0.6, pytest.approx((0.4 * 1.0 + 0.2 * 1.3) / 0.6))),
    ("last-fill", order(S.PARTIALLY_FILLED, 0.4, 1.0), fill(1.0, 0.6, 2.0, done=True),
     (S.FILLED, 1.0, pytest.approx(1.6))),
    ("fill-rounding-noise", order(S.PARTIALLY_FILLED, 0.1 + 0.1, 1.1, quantity=0.3),
     fill(0.1 + 0.1 + 0.1, 0.1, done=True), (S.FILLED, 0.3, pytest.approx(1.1))),
    ("cancel-partial-keeps-filled", order(S.PARTIALLY_FILLED, 0.4, 1.0), report(S.CANCELLED,
     0.4, avg=1.0), (S.CANCELLED, 0.4, 1.0)),
    ("expire-routed", order(S.ROUTED), report(S.EXPIRED), (S.EXPIRED, 0.0, 0.0)),
    # quantity rules
    ("fill-exceeds-quantity", order(S.ROUTED), fill(1.5, 1.5, done=True),
     "filled quantity 1.5 exceeds quantity 1.0"),
    ("partial-exceeds-quantity", order(S.PARTIALLY_FILLED, 0.5, 1.0), fill(1.2, 0.7),
     "exceeds quantity"),
    ("filled-decreases", order(S.PARTIALLY_FILLED, 0.5, 1.0), fill(0.3, 0.3),
     "would decrease from 0.5 to 0.3"),
    ("fill-short-of-quantity", order(S.ROUTED), fill(0.5, 0.5, done=True),
     "a FILL must fill 1.0, filled 0.5"),
    ("partial-that-completes", order(S.ROUTED), fill(1.0, 1.0), "must be a FILL"),
    ("cumulative-not-sum", order(S.PARTIALLY_FILLED, 0.5, 1.0), fill(0.9, 0.2),
     "0.9 is not 0.5 + last 0.2"),
    ("replayed-fill", order(S.PARTIALLY_FILLED, 0.5, 1.0), fill(0.5, 0.5),
     "0.5 is not 0.5 + last 0.5"),
    ("cancel-with-hidden-fill", order(S.PARTIALLY_FILLED, 0.5, 1.0),
     report(S.CANCELLED, 0.7, avg=1.0), "changes from 0.5 to 0.7 without a fill"),
    # lifecycle and identity
    ("fill-before-route", order(S.ACCEPTED), fill(1.0, 1.0, done=True),
     "state ACCEPTED cannot take FILL"),
    ("terminal-filled", order(S.FILLED, 1.0, 1.0), report(S.CANCELLED, 1.0, avg=1.0),
     "state FILLED cannot take CANCEL"),
    ("terminal-cancelled", order(S.CANCELLED), fill(0.1, 0.1), "CANCELLED cannot take"),
    ("reject-partial", order(S.PARTIALLY_FILLED, 0.5, 1.0), report(S.REJECTED),
     "PARTIALLY_FILLED cannot take REJECT"),
    ("accept-twice", order(S.ACCEPTED), report(S.ACCEPTED), "ACCEPTED cannot take ACCEPT"),
    ("other-order", order(S.ROUTED), fill(0.5, 0.5, order_id="o-2"),
     "report order_id 'o-2' is not this order's 'o-1'"),
    ("other-account", order(S.ROUTED), fill(0.5, 0.5, account="ACC-2"), "report account"),
    ("other-side", order(S.ROUTED), fill(0.5, 0.5, side=Side.SELL), "report side"),
]


@pytest.mark.parametrize(("before", "rep", "expected"), [a[1:] for a in APPLY],
                         ids=[a[0] for a in APPLY])
def test_apply(before: Order, rep: ExecutionReport,
               expected: tuple[OrderState, float, Any] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(OrderStateError) as info:
            before.apply(rep, epoch=3, now_ns=200)
        assert expected in str(info.value)
        assert info.value.state is before.state
        assert info.value.event is rep.event
        return
    after = before.apply(rep, epoch=3, now_ns=200)
    assert (after.state, after.filled_quantity, after.avg_price) == expected
    assert (after.updated_ns, after.epoch) == (200, 3)
    assert (after.order, after.quantity, after.price) == (before.order, before.quantity,
                                                          before.price)


def test_every_report_state_is_applied_by_the_table() -> None:
    applied = {a[2].state for a in APPLY if not isinstance(a[3], str)}
    assert applied == set(REPORT_EVENTS)


def test_a_full_fill_snaps_filled_to_the_quantity() -> None:
    after = order(S.PARTIALLY_FILLED, 0.1 + 0.1, 1.1, quantity=0.3).apply(
        fill(0.1 + 0.1 + 0.1, 0.1, done=True), epoch=3, now_ns=1)
    assert after.filled_quantity == 0.3 and after.leaves_quantity == 0.0


def test_apply_with_an_older_epoch_is_fenced() -> None:
    with pytest.raises(Fenced) as info:
        order(S.ROUTED, epoch=5).apply(fill(0.5, 0.5), epoch=4, now_ns=1)
    assert (info.value.epoch, info.value.current) == (4, 5)
    assert isinstance(info.value, StoreError)


def test_apply_stamps_the_writers_epoch_not_the_reports() -> None:
    # The executor echoes the epoch the order was routed under; a newer active applies it.
    after = order(S.ROUTED, epoch=5).apply(fill(0.5, 0.5, epoch=4), epoch=6, now_ns=9)
    assert after.epoch == 6


def test_a_whole_lifecycle_through_status_reports() -> None:
    rec = Order.from_new("o-1", new(), epoch=1, now_ns=10)
    assert (rec.state, rec.filled_quantity, rec.quantity, rec.price) == (S.NEW, 0.0, 1.0, 1.1)
    rec = rec.apply(rec.status_report(S.ACCEPTED, exec_id="a", epoch=1), epoch=1, now_ns=11)
    rec = rec.apply(rec.status_report(S.ROUTED, exec_id="r", epoch=1), epoch=1, now_ns=12)
    rec = rec.apply(fill(0.25, 0.25, 1.0, epoch=1), epoch=1, now_ns=13)
    assert rec.leaves_quantity == 0.75
    rep = rec.status_report(S.CANCELLED, exec_id="c", epoch=2, transact_ns=14,
                            client_order_id="c-2")
    assert (rep.filled_quantity, rep.avg_price, rep.client_order_id) == (0.25, 1.0, "c-2")
    rec = rec.apply(rep, epoch=2, now_ns=14)
    assert (rec.state, rec.terminal, rec.leaves_quantity) == (S.CANCELLED, True, 0.0)


# --- amendments ------------------------------------------------------------------------------


def cancel(**changes: Any) -> CancelOrder:
    return CancelOrder(**{"account": "ACC-1", "client_order_id": "c-9",
                          "target_client_order_id": "c-1", **changes})


def amend(quantity: float = 2.0, price: float | None = 1.2, **changes: Any) -> ReplaceOrder:
    return ReplaceOrder(**{"account": "ACC-1", "client_order_id": "c-9",
                           "target_client_order_id": "c-1", "quantity": quantity,
                           "price": price, **changes})


MARKET_ROUTED = order(S.ROUTED, src=market())
AMEND: list[tuple[str, Order | None, CancelOrder | ReplaceOrder, RejectReason | None]] = [
    ("cancel-accepted", order(S.ACCEPTED), cancel(), None),
    ("cancel-routed", order(S.ROUTED), cancel(), None),
    ("cancel-partial", order(S.PARTIALLY_FILLED, 0.5, 1.0), cancel(), None),
    ("cancel-unknown", None, cancel(), RejectReason.UNKNOWN_ORDER),
    ("cancel-other-account", order(S.ROUTED), cancel(account="ACC-2"),
     RejectReason.UNKNOWN_ORDER),
    ("cancel-new", order(S.NEW), cancel(), RejectReason.NOT_CANCELLABLE),
    *[(f"cancel-{s.name.lower()}", order(s, *((1.0, 1.0) if s is S.FILLED else ())), cancel(),
       RejectReason.NOT_CANCELLABLE) for s in sorted(TERMINAL)],
    ("replace-routed", order(S.ROUTED), amend(), None),
    ("replace-partial-above-filled", order(S.PARTIALLY_FILLED, 0.5, 1.0), amend(0.6), None),
    ("replace-market-quantity", MARKET_ROUTED, amend(2.0, None), None),
    ("replace-to-filled", order(S.PARTIALLY_FILLED, 0.5, 1.0), amend(0.5),
     RejectReason.BAD_QUANTITY),
    ("replace-below-filled", order(S.PARTIALLY_FILLED, 0.5, 1.0), amend(0.4),
     RejectReason.BAD_QUANTITY),
    ("replace-limit-without-price", order(S.ROUTED), amend(2.0, None), RejectReason.BAD_PRICE),
    ("replace-market-with-price", MARKET_ROUTED, amend(2.0, 1.2), RejectReason.BAD_PRICE),
    ("replace-filled", order(S.FILLED, 1.0, 1.0), amend(), RejectReason.NOT_CANCELLABLE),
    ("replace-unknown", None, amend(), RejectReason.UNKNOWN_ORDER),
]


@pytest.mark.parametrize(("target", "request_", "expected"), [a[1:] for a in AMEND],
                         ids=[a[0] for a in AMEND])
def test_check_amend(target: Order | None, request_: CancelOrder | ReplaceOrder,
                     expected: RejectReason | None) -> None:
    assert check_amend(target, request_) is expected


@pytest.mark.parametrize(("target", "request_", "expected"),
                         [a[1:] for a in AMEND if isinstance(a[2], ReplaceOrder) and a[1]],
                         ids=[a[0] for a in AMEND if isinstance(a[2], ReplaceOrder) and a[1]])
def test_replace_follows_check_amend(target: Order, request_: ReplaceOrder,
                                     expected: RejectReason | None) -> None:
    """The executor's replace decision, applied, obeys the same rules as the request check."""
    if target.terminal:  # not even a report can say that a terminal order was replaced
        with pytest.raises(InvalidOrder, match="only a working order is replaced"):
            target.replace_report(request_.quantity, request_.price, exec_id="r", epoch=3)
        return
    rep = target.replace_report(request_.quantity, request_.price, exec_id="r", epoch=3,
                                seq=1, client_order_id=request_.client_order_id)
    if expected is not None:
        with pytest.raises(OrderStateError, match=f"cannot take REPLACE: {expected.name}"):
            target.apply(rep, epoch=3, now_ns=7)
        return
    after = target.apply(rep, epoch=3, now_ns=7)
    assert (after.state, after.quantity, after.price) == (target.state, request_.quantity,
                                                          request_.price)
    assert (after.filled_quantity, after.avg_price) == (target.filled_quantity,
                                                        target.avg_price)
    assert after.order == target.order, "the idempotency record never changes"
    assert (after.updated_ns, after.exec_seq) == (7, 1)


def test_replace_with_an_older_epoch_is_fenced() -> None:
    target = order(S.ROUTED, epoch=5)
    with pytest.raises(Fenced):
        target.apply(target.replace_report(2.0, 1.2, exec_id="r", epoch=5), epoch=4, now_ns=1)


def test_fills_count_against_the_replaced_quantity() -> None:
    rec = order(S.ROUTED)
    rec = rec.apply(rec.replace_report(2.0, 1.2, exec_id="r", epoch=3), epoch=3, now_ns=1)
    rec = rec.apply(fill(1.0, 1.0), epoch=3, now_ns=2)
    assert rec.state is S.PARTIALLY_FILLED  # 1.0 of the order's 1.0 but of the new 2.0
    rec = rec.apply(fill(2.0, 1.0, done=True), epoch=3, now_ns=3)
    assert rec.state is S.FILLED


# --- the executor's log: positions -------------------------------------------------------------

# (id, record's exec_seq, report's seq, position)
POSITIONS = [
    ("backend-report", 4, 0, "next"),
    ("first-entry", 0, 1, "next"),
    ("next-entry", 4, 5, "next"),
    ("replayed-entry", 4, 4, "applied"),
    ("old-entry", 4, 1, "applied"),
    ("one-missing", 4, 6, "gap"),
    ("first-missing", 0, 2, "gap"),
]


@pytest.mark.parametrize(("at", "seq", "expected"), [p[1:] for p in POSITIONS],
                         ids=[p[0] for p in POSITIONS])
def test_position_in_the_executors_log(at: int, seq: int, expected: str) -> None:
    rec = dataclasses.replace(order(S.ROUTED), exec_seq=at)
    assert rec.position(fill(0.5, 0.5, seq=seq)) == expected
    if expected == "next":
        assert rec.apply(fill(0.5, 0.5, seq=seq), epoch=3, now_ns=1).exec_seq == (seq or at)
    else:
        with pytest.raises(OrderStateError, match=f"is {expected} \\(the record is at {at}\\)"):
            rec.apply(fill(0.5, 0.5, seq=seq), epoch=3, now_ns=1)


def test_a_replayed_log_converges_whatever_was_applied_before() -> None:
    """A backend that took over applies the executor's whole log again: entries it has are
    skipped by position, the rest apply in order, and the result is the same record."""
    start = order(S.ROUTED, quantity=3.0)
    log_: list[ExecutionReport] = []
    rec = start
    for seq, step in enumerate(("fill", "replace", "fill", "fill"), start=1):
        if step == "replace":
            entry = rec.replace_report(4.0, 1.2, exec_id=f"o-1:{seq}", epoch=3, seq=seq)
        else:
            entry = rec.fill_report(1.5, 1.0 + seq / 10, seq=seq, exec_id=f"o-1:{seq}")
        log_.append(entry)
        rec = rec.apply(entry, epoch=3, now_ns=seq)
    assert (rec.state, rec.filled_quantity, rec.quantity, rec.exec_seq) == (S.FILLED, 4.0,
                                                                            4.0, 4)
    for known in range(len(log_) + 1):
        partial = start
        for entry in log_[:known]:
            partial = partial.apply(entry, epoch=3, now_ns=entry.seq)
        for entry in log_:
            if partial.position(entry) == "next":
                partial = partial.apply(entry, epoch=3, now_ns=entry.seq)
        assert partial == rec


# --- the executor's fills ----------------------------------------------------------------------

# (id, record, quantity asked, price, expected (state, filled, last quantity, avg))
FILLS = [
    ("whole", order(S.ROUTED, quantity=2.0), 2.0, 1.1, (S.FILLED, 2.0, 2.0, 1.1)),
    ("capped-at-leaves", order(S.ROUTED, quantity=2.0), 5.0, 1.1, (S.FILLED, 2.0, 2.0, 1.1)),
    ("slice", order(S.ROUTED, quantity=2.0), 0.5, 1.1, (S.PARTIALLY_FILLED, 0.5, 0.5, 1.1)),
    ("last-slice", order(S.PARTIALLY_FILLED, 1.5, 1.0, quantity=2.0), 0.5, 1.4,
     (S.FILLED, 2.0, 0.5, pytest.approx(1.1))),
    ("rounding-noise", order(S.PARTIALLY_FILLED, 0.1 + 0.1, 1.0, quantity=0.3), 0.1, 1.0,
     (S.FILLED, 0.3, pytest.approx(0.1), pytest.approx(1.0))),
]


@pytest.mark.parametrize(("rec", "qty", "price", "expected"), [f[1:] for f in FILLS],
                         ids=[f[0] for f in FILLS])
def test_fill_report(rec: Order, qty: float, price: float,
                     expected: tuple[OrderState, float, float, Any]) -> None:
    rep = rec.fill_report(qty, price, seq=1, exec_id="o-1:1", transact_ns=5)
    assert (rep.state, rep.filled_quantity, rep.last_quantity, rep.avg_price) == expected
    assert (rep.seq, rep.exec_id, rep.transact_ns, rep.last_price) == (1, "o-1:1", 5, price)
    after = rec.apply(rep, epoch=3, now_ns=1)  # what the executor decides, the backend takes
    assert (after.state, after.filled_quantity) == expected[:2]
    assert after.avg_price == pytest.approx(rep.avg_price)


# --- pre-trade validation --------------------------------------------------------------------

LIMITS = Limits(symbols=frozenset({"EURUSD", "XAUUSD"}), max_quantity=10.0, price_band=0.05,
                max_exposure_per_account=100.0)
QUOTE = (0.99, 1.01)  # mid 1.0

# (id, order, last_bid_ask, exposure, expected)
VALIDATE: list[tuple[str, NewOrder, tuple[float, float] | None, float, RejectReason | None]] = [
    ("limit-ok", new(price=1.0), QUOTE, 0.0, None),
    ("market-ok", market(), QUOTE, 0.0, None),
    ("limit-at-upper-band", new(price=1.05), QUOTE, 0.0, None),
    ("limit-at-lower-band", new(price=0.95), QUOTE, 0.0, None),
    ("max-quantity", new(quantity=10.0, price=1.0), QUOTE, 0.0, None),
    ("exposure-up-to-limit", new(quantity=10.0, price=1.0), QUOTE, 90.0, None),
    ("sell-ok", new(side=Side.SELL, price=1.0), QUOTE, 0.0, None),
    ("unknown-symbol", new(symbol="GBPUSD"), QUOTE, 0.0, RejectReason.UNKNOWN_SYMBOL),
    ("symbol-case-matters", new(symbol="eurusd"), QUOTE, 0.0, RejectReason.UNKNOWN_SYMBOL),
    ("quantity-limit", new(quantity=10.5, price=1.0), QUOTE, 0.0, RejectReason.QUANTITY_LIMIT),
    ("above-band", new(price=1.06), QUOTE, 0.0, RejectReason.PRICE_BAND),
    ("below-band", new(price=0.94), QUOTE, 0.0, RejectReason.PRICE_BAND),
    ("limit-no-market-data", new(price=1.0), None, 0.0, RejectReason.PRICE_BAND),
    ("market-no-market-data", market(), None, 0.0, RejectReason.PRICE_BAND),
    ("market-one-sided-quote", market(), (1.0, 0.0), 0.0, RejectReason.PRICE_BAND),
    ("market-zero-quote", market(), (0.0, 0.0), 0.0, RejectReason.PRICE_BAND),
    ("market-crossed-quote", market(), (1.02, 1.01), 0.0, RejectReason.PRICE_BAND),
    ("exposure-over-limit", new(quantity=10.0, price=1.0), QUOTE, 90.5,
     RejectReason.EXPOSURE_LIMIT),
    ("market-valued-at-mid-up-to-limit", market(quantity=10.0), (9.9, 10.1), 0.0, None),
    ("market-valued-at-mid-over-limit", market(quantity=10.0), (9.9, 10.1), 0.5,
     RejectReason.EXPOSURE_LIMIT),
    ("limit-exposure-at-limit-price", new(quantity=10.0, price=10.4), (9.9, 10.1), 0.0,
     RejectReason.EXPOSURE_LIMIT),
    # order of checks: the first failing one wins
    ("unknown-symbol-before-quantity", new(symbol="GBPUSD", quantity=50.0), None, 1e9,
     RejectReason.UNKNOWN_SYMBOL),
    ("quantity-before-band", new(quantity=50.0, price=9.0), QUOTE, 0.0,
     RejectReason.QUANTITY_LIMIT),
    ("band-before-exposure", new(price=9.0), QUOTE, 1e9, RejectReason.PRICE_BAND),
]


@pytest.mark.parametrize(("o", "quote", "exposure", "expected"), [v[1:] for v in VALIDATE],
                         ids=[v[0] for v in VALIDATE])
def test_validate(o: NewOrder, quote: tuple[float, float] | None, exposure: float,
                  expected: RejectReason | None) -> None:
    assert validate(o, limits=LIMITS, last_bid_ask=quote, exposure=exposure) is expected


def test_validate_cases_cover_every_reason_it_can_produce() -> None:
    produced = {v[4] for v in VALIDATE}
    assert produced == {None, RejectReason.UNKNOWN_SYMBOL, RejectReason.QUANTITY_LIMIT,
                        RejectReason.PRICE_BAND, RejectReason.EXPOSURE_LIMIT}


# (id, target, request, exposure of the account's other orders, expected)
REPLACE_LIMITS: list[tuple[str, Order, ReplaceOrder, float, RejectReason | None]] = [
    ("ok", order(S.ROUTED), amend(2.0, 1.0), 0.0, None),
    ("market-ok", MARKET_ROUTED, amend(2.0, None), 0.0, None),
    ("quantity-limit-on-the-total", order(S.PARTIALLY_FILLED, 5.0, 1.0, quantity=6.0),
     amend(10.5, 1.0), 0.0, RejectReason.QUANTITY_LIMIT),
    ("band", order(S.ROUTED), amend(2.0, 1.06), 0.0, RejectReason.PRICE_BAND),
    ("no-quote", order(S.ROUTED), amend(2.0, 1.0), 0.0, RejectReason.PRICE_BAND),
    # exposure counts what is left to fill: 9 filled of 10, 1 left at 1.0 on top of 99
    ("exposure-counts-leaves", order(S.PARTIALLY_FILLED, 9.0, 1.0, quantity=9.5),
     amend(10.0, 1.0), 99.0, None),
    ("exposure-limit", order(S.ROUTED), amend(10.0, 1.0), 91.0, RejectReason.EXPOSURE_LIMIT),
]


@pytest.mark.parametrize(("target", "req", "exposure", "expected"),
                         [r[1:] for r in REPLACE_LIMITS], ids=[r[0] for r in REPLACE_LIMITS])
def test_validate_replace(target: Order, req: ReplaceOrder, exposure: float,
                          expected: RejectReason | None) -> None:
    quote = None if expected is RejectReason.PRICE_BAND and req.price == 1.0 else QUOTE
    assert validate_replace(target, req, limits=LIMITS, last_bid_ask=quote,
                            exposure=exposure) is expected


def test_validate_refuses_a_bad_exposure_argument() -> None:
    with pytest.raises(ValueError, match="exposure"):
        validate(new(), limits=LIMITS, last_bid_ask=QUOTE, exposure=-1.0)


@pytest.mark.parametrize("changes, message", [
    ({"symbols": {"EURUSD"}}, "frozenset"),
    ({"symbols": frozenset({"EUR\x00"})}, "control character"),
    ({"max_quantity": 0.0}, "max_quantity must be > 0"),
    ({"price_band": -0.1}, "price_band must be >= 0"),
    ({"max_exposure_per_account": float("nan")}, "max_exposure_per_account must be finite"),
], ids=["set-not-frozenset", "bad-symbol", "zero-max-quantity", "negative-band", "nan-exposure"])
def test_bad_limits_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(LIMITS, **changes)


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
             RejectReason.EXECUTOR_UNAVAILABLE}


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


def ack(**changes: Any) -> OrderAck:
    return OrderAck(**{"client_order_id": "c-1", "order_id": "o-1", "state": S.ACCEPTED,
                       "epoch": 1, **changes})


def rec(**changes: Any) -> Order:
    base = order(S.PARTIALLY_FILLED, 0.5, 1.0)
    return dataclasses.replace(base, **changes)


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


IDS = st.text(st.characters(codec="utf-8"), max_size=20) | st.binary(max_size=4) | st.none()


@FAST
@given(IDS)
def test_check_id_follows_the_stream_name_rules(value: Any) -> None:
    try:
        check_stream(value)
        stream_ok = True
    except ValueError:
        stream_ok = False
    try:
        assert check_id("account", value) == value
        id_ok = True
    except InvalidOrder as exc:
        assert exc.field == "account" and str(exc).startswith("account ")
        id_ok = False
    assert id_ok == stream_ok


# --- property: whatever reports arrive, the record stays consistent --------------------------


SHARES = st.none() | st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.2)


@FAST
@given(st.floats(0.01, 100), st.integers(0, 20), st.data())
def test_random_reports_keep_the_record_consistent(quantity: float, n: int,
                                                   data: st.DataObject) -> None:
    """Reports of any kind and size, in any order (``share`` None: the remainder): each one is
    refused with OrderStateError and changes nothing, or follows the table and the rules."""
    rec_ = Order.from_new("o-1", new(quantity=quantity), epoch=1, now_ns=0)
    for i in range(n):
        legal = [s for s, e in REPORT_EVENTS.items() if e in TRANSITIONS[rec_.state]]
        forward = [s for s in legal if not s.terminal or s is S.FILLED]
        pools: dict[str, list[OrderState]] = {"legal": legal, "forward": forward}
        steer = data.draw(st.sampled_from(["any", "legal", "forward", "forward"]))
        pool = pools.get(steer) or list(REPORT_EVENTS)
        state = data.draw(st.sampled_from(pool))
        share, price = data.draw(SHARES, label="share"), data.draw(st.floats(0.5, 2.0))
        is_fill = state in (S.PARTIALLY_FILLED, S.FILLED)
        last = quantity - rec_.filled_quantity if share is None else quantity * share
        try:
            if is_fill:
                rep = report(state, rec_.filled_quantity + last, last, price, price, epoch=1,
                             exec_id=f"x{i}")
            else:
                rep = rec_.status_report(state, exec_id=f"x{i}", epoch=1)
        except InvalidOrder:
            continue  # not a report anyone could send (a zero-quantity fill, ...)
        before = rec_
        try:
            rec_ = rec_.apply(rep, epoch=1, now_ns=i + 1)
        except OrderStateError:
            assert rec_ is before
            continue
        assert not before.terminal, "a terminal order changed"
        assert rec_.state is TRANSITIONS[before.state][REPORT_EVENTS[state]]
        assert rec_.filled_quantity >= before.filled_quantity
        assert rec_.filled_quantity <= quantity * (1 + 1e-9)
        assert (rec_.state is S.FILLED) == (rec_.filled_quantity == quantity)
        if is_fill:  # the average lies between the old average and this fill's price
            lo, hi = sorted((before.avg_price or price, price))
            assert lo * (1 - 1e-9) <= rec_.avg_price <= hi * (1 + 1e-9)


def test_average_price_of_a_tiny_first_fill_is_its_price() -> None:
    """Regression (found by hypothesis): 5e-324 lots at 1.5 once averaged to 2.0."""
    from protocols.orders.lifecycle import OrderState
    from protocols.orders.messages import ExecutionReport, NewOrder, OrderType, Side
    from protocols.orders.record import Order
    new = NewOrder("ACC-1", "c-1", "EURUSD", Side.BUY, OrderType.LIMIT, 1.0, 1.6, 1)
    rec = Order.from_new("o-1", new, epoch=1, now_ns=1)
    for n, state in enumerate((OrderState.ACCEPTED, OrderState.ROUTED), start=2):
        rec = rec.apply(rec.status_report(state, exec_id=f"s{n}", epoch=1), epoch=1, now_ns=n)

    def fill(state: OrderState, filled: float, qty: float, price: float, n: int) -> Order:
        report = ExecutionReport("o-1", "c-1", "ACC-1", "EURUSD", Side.BUY, state, filled, qty,
                                 price, price, 1, f"f{n}", n)
        return rec.apply(report, epoch=1, now_ns=n)

    rec = fill(OrderState.PARTIALLY_FILLED, 5e-324, 5e-324, 1.5, 4)
    assert rec.avg_price == 1.5
    rec = fill(OrderState.FILLED, 1.0, 1.0 - 5e-324, 1.5, 5)
    assert rec.avg_price == 1.5 and rec.state is OrderState.FILLED


# --- the active backend's open orders ----------------------------------------------------------


def test_open_orders_keep_each_accounts_exposure() -> None:
    book = OpenOrders()
    a1 = order(S.ROUTED, quantity=2.0)  # limit 1.1: 2.2
    a2 = dataclasses.replace(order(S.PARTIALLY_FILLED, 0.5, 1.1, quantity=1.0), order_id="o-2")
    other = dataclasses.replace(order(S.ROUTED, src=new(account="ACC-2")), order_id="o-3")
    mkt = dataclasses.replace(order(S.ROUTED, src=market()), order_id="o-4")
    for o in (a1, a2, other, mkt):
        book.put(o)
    assert len(book) == 4 and "o-2" in book
    assert book.exposure("ACC-1") == pytest.approx(2.2 + 0.5 * 1.1)  # MARKET counts 0
    assert book.exposure("ACC-1", excluding="o-1") == pytest.approx(0.5 * 1.1)
    assert book.exposure("ACC-1", excluding="o-3") == pytest.approx(2.2 + 0.55)  # not ACC-1's
    assert book.exposure("ACC-2") == pytest.approx(1.1)
    book.put(dataclasses.replace(a1, quantity=3.0))  # replaced terms: the old notional goes
    assert book.exposure("ACC-1") == pytest.approx(3.3 + 0.55)
    assert book.remove("o-1") is not None and book.remove("o-1") is None
    book.remove("o-2")
    book.remove("o-4")
    assert book.exposure("ACC-1") == 0.0 and book.get("o-2") is None
    book.clear()
    assert len(book) == 0 and book.exposure("ACC-2") == 0.0


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0.01, 50), st.booleans()), max_size=60))
@settings(max_examples=100, deadline=None)
def test_open_orders_exposure_equals_a_fresh_sum(steps: list[tuple[int, float, bool]]) -> None:
    book = OpenOrders()
    for n, qty, keep in steps:
        o = dataclasses.replace(order(S.ROUTED, quantity=qty), order_id=f"o-{n}")
        if keep:
            book.put(o)
        else:
            book.remove(o.order_id)
        fresh = sum(OpenOrders.notional(x) for x in book.values())
        assert book.exposure("ACC-1") == pytest.approx(fresh, rel=1e-9, abs=1e-9)


# --- one vocabulary of working states ----------------------------------------------------------

STATE_NAMES = [
    # (state, terminal, replaceable, at_executor, unrouted)
    (S.NEW, False, False, False, True),
    (S.ACCEPTED, False, True, False, True),
    (S.ROUTED, False, True, True, False),
    (S.PARTIALLY_FILLED, False, True, True, False),
    (S.FILLED, True, False, False, False),
    (S.REJECTED, True, False, False, False),
    (S.CANCELLED, True, False, False, False),
    (S.EXPIRED, True, False, False, False),
]


@pytest.mark.parametrize(("state", "terminal", "replaceable", "at_executor", "unrouted"),
                         STATE_NAMES)
def test_state_names(state: OrderState, terminal: bool, replaceable: bool, at_executor: bool,
                     unrouted: bool) -> None:
    assert (state.terminal, state.replaceable, state.at_executor, state.unrouted) == (
        terminal, replaceable, at_executor, unrouted)
    # replaceable is what the lifecycle table allows a cancel and a replace in
    assert state.replaceable is (E.REPLACE in TRANSITIONS[state]) is (
        E.CANCEL in TRANSITIONS[state])


def test_the_price_band_and_the_executor_share_one_quote_rule() -> None:
    from protocols.orders.risk import usable_quote
    order = new(type=OrderType.MARKET, price=None)
    for bid, ask in ((0.0, 1.0), (1.2, 1.1), (float("nan"), 1.0), (1.0, float("inf"))):
        assert usable_quote(bid, ask) is None
        assert validate(order, limits=LIMITS, last_bid_ask=(bid, ask),
                        exposure=0.0) is RejectReason.PRICE_BAND
