"""The backend's order record from tables: the quantity rules of Order.apply, amendments, the
executor's log positions, fill reports, properties over random report sequences, and the
open orders' running exposure."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import (
    Fenced,
    InvalidOrder,
    OrderStateError,
    StoreError,
)
from protocols.orders.lifecycle import (
    REPORT_EVENTS,
    TRANSITIONS,
    OrderState,
)
from protocols.orders.messages import (
    CancelOrder,
    EntryRefusal,
    ExecutionReport,
    NewOrder,
    OrderType,
    RejectReason,
    ReplaceOrder,
    Side,
)
from protocols.orders.record import TAKEN, OpenOrders, Order, Refusal, check_amend, judge_entry
from tests.protocols.orders.builders import (
    FAST,
    MARKET_ROUTED,
    TERMINAL,
    S,
    amend,
    cancel,
    fill,
    market,
    new,
    order,
    report,
)

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


# --- judge_entry: the active backend's decision on a proposed log entry ----------------------

AT2 = dataclasses.replace(order(S.PARTIALLY_FILLED, 0.4, 1.1), exec_seq=2)
# (id, record, proposed entry, the verdict: "decided" (and the record's state after), TAKEN,
# or the refusal's reason and a substring of why)
JUDGE: list[tuple[str, Order | None, ExecutionReport, Any]] = [
    ("next-decided", AT2, fill(1.0, 0.6, seq=3, done=True), ("decided", S.FILLED)),
    ("cancel-decided", AT2, report(S.CANCELLED, 0.4, avg=1.1, seq=3), ("decided", S.CANCELLED)),
    ("taken-same-position", AT2, fill(0.6, 0.2, seq=2), TAKEN),
    ("taken-older-position", AT2, report(S.CANCELLED, seq=1), TAKEN),
    ("past-the-end", AT2, fill(1.0, 0.6, seq=4), (EntryRefusal.GAP, "after the log's end at 2")),
    ("no-record", None, fill(1.0, 1.0, seq=1), (EntryRefusal.UNKNOWN_ORDER, "no record")),
    ("no-position", AT2, fill(1.0, 0.6, seq=0), (EntryRefusal.INVALID, "no log position")),
    ("overfill", AT2, fill(1.4, 1.0, seq=3), (EntryRefusal.INVALID, "exceeds quantity")),
    ("other-order", AT2, fill(1.0, 0.6, seq=3, symbol="GBPUSD"),
     (EntryRefusal.INVALID, "symbol")),
    ("after-terminal", dataclasses.replace(order(S.FILLED, 1.0, 1.1), exec_seq=2),
     report(S.CANCELLED, 1.0, avg=1.1, seq=3), (EntryRefusal.INVALID, "CANCEL")),
]


@pytest.mark.parametrize(("rec", "entry", "expected"), [j[1:] for j in JUDGE],
                         ids=[j[0] for j in JUDGE])
def test_judge_entry(rec: Order | None, entry: ExecutionReport, expected: Any) -> None:
    got = judge_entry(rec, entry, epoch=3, now_ns=7)
    if expected == TAKEN:
        assert got == TAKEN
    elif expected[0] == "decided":
        assert isinstance(got, Order) and rec is not None
        assert got == rec.apply(entry, epoch=3, now_ns=7) and got.state is expected[1]
        assert got.exec_seq == entry.seq
    else:
        assert isinstance(got, Refusal) and got.reason is expected[0]
        assert expected[1] in got.why


def test_judge_entry_with_an_older_epoch_is_fenced() -> None:
    with pytest.raises(Fenced):
        judge_entry(AT2, fill(1.0, 0.6, seq=3, done=True), epoch=2, now_ns=7)


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
    from protocols.orders.messages import ExecutionReport, Side
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
