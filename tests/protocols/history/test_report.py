"""Performance reports: fills, volume, average-cost P&L, slippage and latency percentiles,
against expectations computed by hand (in the comments)."""

from __future__ import annotations

from typing import Any

import pytest

from protocols.history.report import (
    LatencyRow,
    LatencyStats,
    SymbolReport,
    latency_report,
    performance_report,
)
from protocols.history.schema import Columns, Table
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import Side
from tests.history_support import batch

MS = 1_000_000
H14 = 1_796_133_600 * 10**9  # 2026-12-01T14:00:00Z
H15 = H14 + 3600 * 10**9
B, S = int(Side.BUY), int(Side.SELL)


def order(oid: str, account: str, symbol: str, side: int, sent: int, updated: int, src: int,
          bid: float, ask: float) -> dict[str, Any]:
    return {"order_id": oid, "account": account, "symbol": symbol, "side": side,
            "sent_ns": sent, "updated_ns": updated, "src": src, "quote_bid": bid,
            "quote_ask": ask, "state": int(OrderState.ACCEPTED)}


def execution(oid: str, seq: int, account: str, symbol: str, side: int, qty: float,
              price: float, at: int) -> dict[str, Any]:
    return {"order_id": oid, "seq": seq, "account": account, "symbol": symbol, "side": side,
            "last_quantity": qty, "last_price": price, "transact_ns": at, "src": seq,
            "state": int(OrderState.PARTIALLY_FILLED if qty else OrderState.ACCEPTED)}


T1, T2, T3, T4 = H14 + 600 * 10**9, H14 + 1200 * 10**9, H15 + 10**9, H15 + 2 * 10**9
ORDERS = batch(Table.ORDERS, *[
    order("o1", "acc-1", "EURUSD", B, T1, T1 + 2 * MS, 1, 1.0998, 1.1000),
    # a later version of o1: its quote is not the one at order time
    order("o1", "acc-1", "EURUSD", B, T1, T1 + 5 * MS, 4, 1.5, 1.6),
    order("o2", "acc-1", "EURUSD", S, T2, T2 + 4 * MS, 2, 1.1010, 1.1012),
    order("o3", "acc-1", "XAUUSD", B, T3, T3 + 1 * MS, 3, 0.0, 0.0),  # no quote
    order("o4", "acc-2", "EURUSD", S, 0, T4, 5, 1.2001, 1.2003),  # no sent_ns
])
EXECUTIONS = batch(Table.EXECUTIONS, *[
    execution("o1", 1, "acc-1", "EURUSD", B, 0.0, 0.0, T1 + 2 * MS),  # the ack: not a fill
    execution("o1", 2, "acc-1", "EURUSD", B, 1.0, 1.1002, T1 + 10 * MS),
    execution("o1", 3, "acc-1", "EURUSD", B, 1.0, 1.1004, T1 + 30 * MS),
    execution("o2", 1, "acc-1", "EURUSD", S, 3.0, 1.1008, T2 + 8 * MS),
    execution("o3", 1, "acc-1", "XAUUSD", B, 1.0, 2000.0, T3 + 3 * MS),
    execution("o4", 1, "acc-2", "EURUSD", S, 1.0, 1.2, T4 + 1 * MS),
    execution("o4", 1, "acc-2", "EURUSD", S, 1.0, 1.2, T4 + 1 * MS),  # stored twice
])


def test_performance_per_account_and_symbol() -> None:
    got = performance_report(ORDERS, EXECUTIONS, marks={"EURUSD": 1.1000, "XAUUSD": 2010.0})
    assert [(r.account, r.symbol) for r in got] == [
        ("acc-1", "EURUSD"), ("acc-1", "XAUUSD"), ("acc-2", "EURUSD")]
    eur, xau, acc2 = got
    # buy 1 @ 1.1002, buy 1 @ 1.1004: long 2 @ 1.1003; sell 3 @ 1.1008 closes 2 for
    # (1.1008 - 1.1003) * 2 = 0.001 and opens short 1 @ 1.1008; at 1.1000 that is +0.0008.
    assert (eur.fills, eur.volume) == (3, 5.0)
    assert eur.position == pytest.approx(-1.0)
    assert eur.avg_price == pytest.approx(1.1008)
    assert eur.realized_pnl == pytest.approx(0.001)
    assert eur.unrealized_pnl == pytest.approx(0.0008)
    # buys vs ask 1.1000: +0.0002, +0.0004 (1 each); sell vs bid 1.1010: +0.0002 (3):
    # (0.0002 + 0.0004 + 0.0006) / 5 = 0.00024, worse for the trader
    assert eur.slippage_avg == pytest.approx(0.00024)
    assert (eur.slippage_fills, eur.no_quote) == (3, 0)
    # no quote: no slippage, counted; long 1 @ 2000 marked at 2010
    assert (xau.fills, xau.slippage_avg, xau.no_quote) == (1, None, 1)
    assert xau.unrealized_pnl == pytest.approx(10.0)
    # the duplicate counts once; sold at 1.2 against bid 1.2001: 0.0001 worse
    assert (acc2.fills, acc2.volume, acc2.position) == (1, 1.0, -1.0)
    assert acc2.slippage_avg == pytest.approx(0.0001)
    assert acc2.unrealized_pnl == pytest.approx(-1.0 * (1.1 - 1.2))


def test_unrealized_is_unknown_without_a_mark() -> None:
    got = performance_report(ORDERS, EXECUTIONS)
    assert [r.unrealized_pnl for r in got] == [None, None, None]


@pytest.mark.parametrize(("fills", "position", "avg", "realized"), [
    # (side, quantity, price) in order
    ([(Side.BUY, 1, 10.0), (Side.BUY, 3, 14.0)], 4, 13.0, 0.0),
    ([(Side.BUY, 2, 10.0), (Side.SELL, 1, 12.0)], 1, 10.0, 2.0),
    ([(Side.SELL, 2, 10.0), (Side.BUY, 2, 7.0)], 0, 0.0, 6.0),
    ([(Side.SELL, 1, 10.0), (Side.SELL, 1, 12.0), (Side.BUY, 3, 13.0)], 1, 13.0, -4.0),
    ([(Side.BUY, 0.1, 1.0), (Side.BUY, 0.2, 1.0), (Side.SELL, 0.3, 2.0)], 0, 0.0, 0.3),
])
def test_average_cost_table(fills: list[tuple[Side, float, float]], position: float,
                            avg: float, realized: float) -> None:
    rep = SymbolReport("a", "s")
    for side, qty, price in fills:
        rep.add_fill(side, qty, price)
    assert (rep.position, rep.avg_price) == (pytest.approx(position), pytest.approx(avg))
    assert rep.realized_pnl == pytest.approx(realized)


def test_latency_percentiles_per_hour() -> None:
    rows = latency_report(ORDERS, EXECUTIONS)
    # hour 14: acks 2, 4 ms; fills 10, 30 (o1) and 8 (o2) ms after placing.
    # nearest rank over [8, 10, 30]: p50 rank 2 = 10, p90 rank 3 = 30.
    # hour 15: o3 alone. o4 has no sent_ns and is left out.
    assert rows == [
        LatencyRow(H14, LatencyStats(2, 2.0, 4.0, 4.0, 4.0),
                   LatencyStats(3, 10.0, 30.0, 30.0, 30.0)),
        LatencyRow(H15, LatencyStats(1, 1.0, 1.0, 1.0, 1.0), LatencyStats(1, 3.0, 3.0, 3.0, 3.0)),
        # all: acks [1, 2, 4]; fills [3, 8, 10, 30]: p50 rank 2 = 8, p90 rank 4 = 30
        LatencyRow(None, LatencyStats(3, 2.0, 4.0, 4.0, 4.0),
                   LatencyStats(4, 8.0, 30.0, 30.0, 30.0)),
    ]


def test_empty_inputs_make_empty_reports() -> None:
    assert performance_report(Columns(Table.ORDERS), Columns(Table.EXECUTIONS)) == []
    assert latency_report(Columns(Table.ORDERS), Columns(Table.EXECUTIONS)) == [
        LatencyRow(None, LatencyStats(0, None, None, None, None),
                   LatencyStats(0, None, None, None, None))]


def test_wrong_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="not orders"):
        performance_report(Columns(Table.TICKS), Columns(Table.EXECUTIONS))
    with pytest.raises(ValueError, match="not executions"):
        latency_report(Columns(Table.ORDERS), Columns(Table.BARS))
