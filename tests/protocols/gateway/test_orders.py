"""The order desk's pure half: request bodies, JSON of order writes, rejects, positions and the
snapshot as of a history position."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import (
    AuthError,
    BadRequest,
    InvalidOrder,
    NotYourAccount,
    OrderClientClosed,
    OrderRejected,
    OrderTimeout,
    TooManyInFlight,
)
from protocols.gateway.orders import (
    OpenOrders,
    RecentWrites,
    SnapshotBuilder,
    Write,
    ack_json,
    decode_entry,
    fill_json,
    order_json,
    parse_cancel,
    parse_place,
    parse_replace,
    positions_json,
    reject_for,
)
from protocols.history.report import SymbolReport
from protocols.orders.codec import to_blob
from protocols.orders.lifecycle import OrderState
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
)
from protocols.orders.record import Order

MINE = ("ACC-A",)
NOW = 1_767_225_600_000_000_000


def place(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"account": "ACC-A", "client_order_id": "c1", "symbol": "EURUSD",
                            "side": "buy", "type": "limit", "quantity": 2, "price": 1.08}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def test_a_place_body_is_the_new_order_it_names() -> None:
    assert parse_place(place(), MINE, NOW) == NewOrder(
        "ACC-A", "c1", "EURUSD", Side.BUY, OrderType.LIMIT, 2.0, 1.08, NOW)
    market = parse_place(place(side="sell", type="market", price=...), MINE, NOW)
    assert (market.side, market.type, market.price) == (Side.SELL, OrderType.MARKET, None)
    assert parse_place(place(type="market", price=None), MINE, NOW).price is None


@pytest.mark.parametrize(("body", "says"), [
    (None, "order must be a JSON object, got null"),
    ([1], "order must be a JSON object, got list"),
    (place(account=...), "account must be a string, got null"),
    (place(client_order_id=7), "client_order_id must be a string, got int"),
    (place(client_order_id=""), "client_order_id "),
    (place(symbol=...), "symbol must be a string"),
    (place(side="BUY"), "side must be one of ['buy', 'sell'], got 'BUY'"),
    (place(type="stop"), "type must be one of ['limit', 'market']"),
    (place(quantity=...), "quantity must be a number, got NoneType"),
    (place(quantity="2"), "quantity must be a number, got str"),
    (place(quantity=True), "quantity must be a number, got bool"),
    (place(quantity=-1), "quantity must be > 0"),
    (place(quantity=float("inf")), "quantity must be finite"),
    (place(price=...), "price must be a number > 0 for a LIMIT order"),
    (place(type="market"), "price must be None for a MARKET order"),
    (place(price=0), "price must be > 0"),
])
def test_a_malformed_place_body_is_a_bad_request_naming_the_field(body: object,
                                                                  says: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_place(body, MINE, NOW)
    assert err.value.code == "bad_request" and not err.value.fatal
    assert says in str(err.value)


@pytest.mark.parametrize("parse", [
    lambda b: parse_place(b, MINE, NOW), lambda b: parse_cancel(b, MINE),
    lambda b: parse_replace(b, MINE)])
def test_an_account_the_session_does_not_own_is_refused_before_the_rest_is_read(
        parse: Any) -> None:
    with pytest.raises(NotYourAccount) as err:
        parse({"account": "ACC-B", "quantity": "nonsense"})
    assert isinstance(err.value, AuthError) and err.value.account == "ACC-B"
    assert err.value.code == "NOT_YOUR_ACCOUNT"


def test_cancel_and_replace_bodies() -> None:
    assert parse_cancel({"account": "ACC-A", "client_order_id": "x2", "target": "c1", "id": 4},
                        MINE) == CancelOrder("ACC-A", "x2", "c1")
    assert parse_replace({"account": "ACC-A", "client_order_id": "r2", "target": "c1",
                          "quantity": 3, "price": 1.07}, MINE) == ReplaceOrder(
        "ACC-A", "r2", "c1", 3.0, 1.07)
    assert parse_replace({"account": "ACC-A", "client_order_id": "r3", "target": "c1",
                          "quantity": 3}, MINE).price is None


@pytest.mark.parametrize(("parse", "body", "says"), [
    (parse_cancel, {"account": "ACC-A", "client_order_id": "x"}, "target must be a string"),
    (parse_cancel, {"account": "ACC-A", "client_order_id": "c1", "target": "c1"},
     "client_order_id must differ from target"),
    (parse_replace, {"account": "ACC-A", "client_order_id": "r", "target": "c1"},
     "quantity must be a number"),
    (parse_replace, {"account": "ACC-A", "client_order_id": "r", "target": "c1",
                     "quantity": 1, "price": -2}, "price must be > 0"),
    (parse_replace, "replace me", "replace must be a JSON object, got str"),
])
def test_malformed_cancel_and_replace_bodies(parse: Any, body: object, says: str) -> None:
    with pytest.raises(BadRequest, match="^" + says.replace("(", r"\(")):
        parse(body, MINE)


# --- JSON ------------------------------------------------------------------------------------


def accepted(coid: str = "c1", account: str = "ACC-A", qty: float = 2.0, oid: str = "o1",
             side: Side = Side.BUY, price: float | None = None) -> Order:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    rec = Order.from_new(oid, NewOrder(account, coid, "EURUSD", side, kind, qty, price, NOW),
                         epoch=1, now_ns=NOW)
    for state in (OrderState.ACCEPTED, OrderState.ROUTED):
        rec = rec.apply(rec.status_report(state, exec_id="b", epoch=1), epoch=1,
                        now_ns=rec.updated_ns + 1_000_000)
    return rec


def test_an_order_write_as_json_carries_the_record_and_its_fills_only() -> None:
    rec = accepted(price=1.08)
    fill = rec.fill_report(0.5, 1.07, seq=1, exec_id="o1:1", transact_ns=NOW + 5_000_000)
    after = rec.apply(fill, epoch=1, now_ns=NOW + 6_000_000)
    replace = after.replace_report(3.0, 1.06, exec_id="o1:2", epoch=1, seq=2)
    after = after.apply(replace, epoch=1, now_ns=NOW + 7_000_000)
    assert order_json(after, [fill, replace]) == {
        "order": {"account": "ACC-A", "client_order_id": "c1", "order_id": "o1",
                  "symbol": "EURUSD", "side": "buy", "type": "limit", "quantity": 3.0,
                  "price": 1.06, "state": "PARTIALLY_FILLED", "filled_quantity": 0.5,
                  "avg_price": 1.07, "updated_ms": NOW // 1_000_000 + 7},
        "fills": [fill_json(fill)]}
    assert fill_json(fill) == {"exec_id": "o1:1", "order_id": "o1", "client_order_id": "c1",
                               "account": "ACC-A", "symbol": "EURUSD", "side": "buy",
                               "quantity": 0.5, "price": 1.07,
                               "time_ms": NOW // 1_000_000 + 5}
    write = decode_entry(9, to_blob(after), [to_blob(fill), to_blob(replace)])
    assert write == Write(9, after, (fill, replace))
    assert write.item() == order_json(after, [fill, replace]) and write.fills == (fill,)


def test_an_ack_as_json() -> None:
    assert ack_json(OrderAck("c1", "o1", OrderState.ROUTED, 3)) == {
        "client_order_id": "c1", "order_id": "o1", "state": "ROUTED"}


@pytest.mark.parametrize(("exc", "reason", "retryable"), [
    (NotYourAccount("ACC-B"), "NOT_YOUR_ACCOUNT", False),
    (BadRequest("bad_request", "side must be ..."), "INVALID", False),
    (InvalidOrder("client_order_id", "is already in flight"), "INVALID", False),
    (OrderRejected(OrderReject("c1", RejectReason.PRICE_BAND, "far")), "PRICE_BAND", False),
    (OrderRejected(OrderReject("c1", RejectReason.BUSY, "", 20)), "BUSY", True),
    (OrderTimeout("c1", 4, 5.0), "TIMEOUT", True),
    (OrderClientClosed("c1"), "TIMEOUT", True),
    (TooManyInFlight(1000, 1000), "BUSY", True),
])
def test_every_failure_of_a_request_has_its_reject(exc: Exception, reason: str,
                                                   retryable: bool) -> None:
    got = reject_for(exc)
    assert got is not None
    assert (got["reason"], got["retryable"]) == (reason, retryable)
    assert isinstance(got["message"], str)


def test_an_unexpected_exception_is_no_reject() -> None:
    assert reject_for(KeyError("bug")) is None


# --- positions -------------------------------------------------------------------------------


def fill(qty: float, price: float, side: Side = Side.BUY, account: str = "ACC-A",
         symbol: str = "EURUSD", n: int = 1) -> ExecutionReport:
    return ExecutionReport(f"o{n}", f"c{n}", account, symbol, side, OrderState.FILLED, qty,
                           qty, price, price, 1, f"o{n}:1", 0, 1)


@pytest.mark.parametrize(("fills", "quantity", "avg", "pnl"), [
    ([fill(1, 1.0), fill(1, 1.2)], 2.0, 1.1, 0.0),
    ([fill(2, 1.0), fill(1, 1.5, Side.SELL)], 1.0, 1.0, 0.5),
    ([fill(1, 1.0), fill(3, 1.5, Side.SELL)], -2.0, 1.5, 0.5),  # crosses: the rest at 1.5
    ([fill(2, 2.0, Side.SELL), fill(2, 1.0)], 0.0, 0.0, 2.0),
])
def test_positions_are_average_cost_in_the_order_given(fills: list[ExecutionReport],
                                                       quantity: float, avg: float,
                                                       pnl: float) -> None:
    [pos] = positions_json(fills)
    assert pos["account"] == "ACC-A" and pos["symbol"] == "EURUSD"
    assert pos["quantity"] == pytest.approx(quantity)
    assert pos["avg_price"] == pytest.approx(avg)
    assert pos["realized_pnl"] == pytest.approx(pnl)


def test_positions_are_per_account_and_symbol_sorted() -> None:
    got = positions_json([fill(1, 1.0, symbol="XAU"), fill(1, 1.0, account="ACC-0"),
                          fill(1, 1.0)])
    assert [(p["account"], p["symbol"]) for p in got] == [
        ("ACC-0", "EURUSD"), ("ACC-A", "EURUSD"), ("ACC-A", "XAU")]


# --- the snapshot ----------------------------------------------------------------------------


def random_history(rng: random.Random, writes: int) -> list[Write]:
    """A history stream of two accounts' orders: new (ACCEPTED then ROUTED), fills in
    slices, cancels; positions 1, 2, ..."""
    out: list[Write] = []
    working: list[Order] = []
    n = 0
    while len(out) < writes:
        pos = len(out) + 1
        roll = rng.random()
        if not working or roll < 0.3:
            n += 1
            side = rng.choice((Side.BUY, Side.SELL))
            rec = accepted(f"c{n}", rng.choice(("ACC-A", "ACC-B")), rng.choice((1.0, 2.0)),
                           f"o{n}", side)
            working.append(rec)
            out.append(Write(pos, rec))
            continue
        rec = rng.choice(working)
        seq = rec.exec_seq + 1
        if roll < 0.85:
            entry = rec.fill_report(0.5, round(rng.uniform(1.0, 1.2), 4), seq=seq,
                                    exec_id=f"{rec.order_id}:{seq}", transact_ns=NOW + pos)
        else:
            entry = rec.status_report(OrderState.CANCELLED, exec_id=f"{rec.order_id}:{seq}",
                                      epoch=1, seq=seq)
        after = rec.apply(entry, epoch=1, now_ns=NOW + pos)
        working.remove(rec)
        if not after.terminal:
            working.append(after)
        out.append(Write(pos, after, (entry,)))
    return out


class Client:
    """What a chart client holds of the orders stream: orders by id, fills, and positions
    kept up to date fill by fill from a snapshot's positions."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.fills: list[dict[str, Any]] = []
        self.books: dict[tuple[str, str], SymbolReport] = {}

    def load(self, snapshot_item: dict[str, Any]) -> None:
        self.orders = {o["order_id"]: o for o in snapshot_item["orders"]}
        self.fills = list(snapshot_item["fills"])
        for p in snapshot_item["positions"]:
            book = SymbolReport(p["account"], p["symbol"])
            book.position, book.avg_price = p["quantity"], p["avg_price"]
            book.realized_pnl = p["realized_pnl"]
            self.books[(p["account"], p["symbol"])] = book

    def apply(self, item: dict[str, Any]) -> None:
        self.orders[item["order"]["order_id"]] = item["order"]
        for f in item["fills"]:
            self.fills.append(f)
            key = (f["account"], f["symbol"])
            book = self.books.setdefault(key, SymbolReport(*key))
            book.add_fill(Side.BUY if f["side"] == "buy" else Side.SELL, f["quantity"],
                          f["price"])

    def positions(self) -> list[tuple[str, str, float, float, float]]:
        return [(b.account, b.symbol, round(b.position, 9), round(b.avg_price, 9),
                 round(b.realized_pnl, 9)) for _, b in sorted(self.books.items())]


def rounded(positions: list[dict[str, Any]] | tuple[dict[str, Any], ...]
            ) -> list[tuple[str, str, float, float, float]]:
    return [(p["account"], p["symbol"], round(p["quantity"], 9), round(p["avg_price"], 9),
             round(p["realized_pnl"], 9)) for p in positions]


@given(st.integers(0, 2**32 - 1), st.integers(1, 80), st.data())
def test_a_snapshot_and_the_items_after_it_are_the_whole_stream(
        seed: int, length: int, data: st.DataObject) -> None:
    """From any snapshot point, with the history store and the Redis stream overlapping
    anywhere below it, a client that loads the snapshot and applies the items above it holds
    what a client that applied every item holds: each fill once, positions included."""
    history = random_history(random.Random(seed), length)
    at = data.draw(st.integers(0, length), label="snapshot position")
    mark = data.draw(st.integers(0, at), label="history store watermark")
    lo = data.draw(st.integers(0, mark), label="Redis stream read from")
    mine = frozenset({"ACC-A"})
    builder = SnapshotBuilder(mine, recent=10_000)
    for w in history[:mark]:  # the history store's rows
        builder.add_write(w)
    for w in history[lo:at]:  # the Redis stream above the watermark (and some below it)
        builder.add_write(w)
    snap = builder.build(at)
    resumed = Client()
    resumed.load(snap.item())
    for w in history[at:]:
        if w.account in mine:
            resumed.apply(w.item())
    everything = Client()
    for w in history:
        if w.account in mine:
            everything.apply(w.item())
    assert resumed.orders == everything.orders
    assert [f["exec_id"] for f in resumed.fills] == [f["exec_id"] for f in everything.fills]
    assert resumed.positions() == everything.positions()
    assert snap.complete and snap.seq == at


def test_an_open_order_read_now_stands_unless_a_later_write_of_it_was_read() -> None:
    history = [Write(1, accepted("c1", oid="o1")), Write(2, accepted("c2", oid="o2"))]
    rec = accepted("c1", oid="o1")
    entry = rec.fill_report(0.5, 1.1, seq=1, exec_id="o1:1")
    history.append(Write(3, rec.apply(entry, epoch=1, now_ns=NOW + 9), (entry,)))
    builder = SnapshotBuilder(frozenset({"ACC-A"}))
    # Read after position 2: o1's record is already the one of position 3 (the store moved
    # on between the two reads), o2's is that of position 2, o3 is older than any read.
    o3 = accepted("c3", oid="o3")
    for order in (history[2].order, history[1].order, o3):
        builder.add_current(order, since=2)
    for w in history[2:]:  # what was read above position 2
        builder.add_write(w)
    snap = builder.build(3)
    by_id = {o["order_id"]: o for o in snap.orders}
    assert by_id["o1"]["filled_quantity"] == 0.5 and by_id["o2"]["state"] == "ROUTED"
    assert set(by_id) == {"o1", "o2", "o3"}
    assert [f["exec_id"] for f in snap.fills] == ["o1:1"]


def test_a_snapshot_keeps_open_orders_and_the_most_recent_terminal_ones() -> None:
    builder = SnapshotBuilder(frozenset({"ACC-A"}), recent=2)
    pos = 0
    for i in range(5):
        rec = accepted(f"c{i}", oid=f"o{i}")
        pos += 1
        builder.add_write(Write(pos, rec))
        if i < 4:  # o0..o3 filled, o4 stays open
            entry = rec.fill_report(2.0, 1.1, seq=1, exec_id=f"o{i}:1")
            pos += 1
            builder.add_write(Write(pos, rec.apply(entry, epoch=1, now_ns=NOW + pos * 10**7),
                                    (entry,)))
    builder.add_write(Write(pos + 1, accepted("b1", account="ACC-B", oid="b1")))
    snap = builder.build(pos + 1)
    assert [o["order_id"] for o in snap.orders] == ["o4", "o2", "o3"]
    assert [f["exec_id"] for f in snap.fills] == ["o2:1", "o3:1"]  # the most recent
    [position] = snap.positions  # from every fill, not the recent ones only
    assert position["quantity"] == pytest.approx(8.0)
    none = SnapshotBuilder(frozenset({"ACC-A"}), recent=0)
    none.add_write(Write(1, accepted()))
    assert len(none.build(1).orders) == 1 and none.build(1).fills == ()


# --- what the desk holds ---------------------------------------------------------------------


def held(ring: RecentWrites, after: int, accounts: tuple[str, ...] = ("ACC-A", "ACC-B")
         ) -> list[int]:
    return [w.position for w, _ in ring.since(after, accounts)]


def test_recent_writes_cover_a_range_without_gaps() -> None:
    ring = RecentWrites(limit=3, position=10)
    assert ring.covers(10) and not ring.covers(9) and held(ring, 10) == []
    for pos, account in ((11, "ACC-A"), (12, "ACC-B"), (13, "ACC-A")):
        ring.passed(pos)
        w = Write(pos, accepted(f"c{pos}", account, oid=f"o{pos}"))
        ring.add(w, w.item())
    assert held(ring, 10) == [11, 12, 13] and held(ring, 11, ("ACC-A",)) == [13]
    ring.passed(14)  # an entry that did not decode: covered, nothing held for it
    assert (ring.start, ring.end) == (10, 14) and ring.covers(14)
    w = Write(15, accepted("c15", oid="o15"))
    ring.passed(15)
    ring.add(w, w.item())  # past the limit: the oldest goes, and the range starts at it
    assert (ring.start, len(ring)) == (11, 3) and not ring.covers(10)
    assert held(ring, 11) == [12, 13, 15]
    ring.passed(20)  # a hole (16..19 trimmed before they were read): start again
    assert (ring.start, ring.end, len(ring)) == (19, 20, 0)
    assert not ring.covers(15) and ring.covers(19)


def test_open_orders_follow_the_writes() -> None:
    book = OpenOrders()
    a1, a2, b1 = accepted("c1", oid="a1"), accepted("c2", oid="a2"), accepted(
        "c3", account="ACC-B", oid="b1")
    book.load([a1, b1])
    book.apply(a2)
    entry = a1.fill_report(2.0, 1.1, seq=1, exec_id="a1:1")
    book.apply(a1.apply(entry, epoch=1, now_ns=NOW + 10**9))  # filled: no longer open
    assert [o.order_id for o in book.of(["ACC-A"])] == ["a2"] and len(book) == 2
    book.apply(b1.apply(b1.status_report(OrderState.CANCELLED, exec_id="b1:1", epoch=1,
                                         seq=1), epoch=1, now_ns=NOW + 10**9))
    assert book.of(["ACC-B"]) == [] and len(book) == 1
