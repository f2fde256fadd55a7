"""``Mt5Terminal``'s conversions, through a stand-in for the ``MetaTrader5`` package.

The package runs on Windows only, beside a terminal; this suite cannot run it. The stand-in is
a module object whose functions return what the package's do (named tuples with more fields
than tickmesh reads, numpy-like rows for ticks, None with ``last_error`` on failure), so what
is tested is the adapter's side: field by field conversion, dropped records, errors.
"""

from __future__ import annotations

import sys
import types
from collections import namedtuple
from datetime import UTC, datetime
from typing import Any

import pytest

from bus.ea.mt5 import PACKAGE_MISSING, Mt5Terminal, request_of
from bus.ea.terminal import Terminal
from protocols.ea.mt5 import (
    Action,
    DealEntry,
    DealType,
    OrderSendResult,
    OrderStateMt5,
    OrderType,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)
from protocols.errors import TerminalError

# The package's named tuples, with fields tickmesh drops.
MqlTick = namedtuple("MqlTick", "time bid ask last volume time_msc flags volume_real")
MqlOrder = namedtuple("MqlOrder", "ticket time_setup time_setup_msc time_done time_done_msc "
                      "type type_time type_filling state magic position_id volume_initial "
                      "volume_current price_open sl tp price_current symbol comment external_id")
MqlPosition = namedtuple("MqlPosition", "ticket time time_msc type magic identifier volume "
                         "price_open sl tp price_current profit symbol comment")
MqlDeal = namedtuple("MqlDeal", "ticket order time time_msc type entry magic position_id "
                     "reason volume price commission swap profit fee symbol comment")
MqlResult = namedtuple("MqlResult", "retcode deal order volume price bid ask comment request_id "
                       "retcode_external request")
SymbolInfo = namedtuple("SymbolInfo", "name digits")

T0 = 1_732_450_000_000


def order(ticket: int, kind: int, state: int, setup: int = T0) -> MqlOrder:
    return MqlOrder(ticket, setup // 1000, setup, 0, setup + 5, kind, 0, 2, state, 42, 0, 1.0,
                    0.4, 1.08, 0, 0, 1.09, "EURUSD", "o-1", "")


def deal(ticket: int, kind: int, at: int = T0) -> MqlDeal:
    return MqlDeal(ticket, 7, at // 1000, at, kind, 0, 42, 7, 3, 0.6, 1.08, 0, 0, 0, 0,
                   "EURUSD", "o-1")


class StandIn(types.ModuleType):
    """A ``MetaTrader5`` that records its calls."""

    COPY_TICKS_ALL = -1
    ORDER_TIME_GTC = 0

    def __init__(self) -> None:
        super().__init__("MetaTrader5")
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.error = (1, "Success")
        self.answers: dict[str, Any] = {
            "initialize": True, "shutdown": None,
            "symbols_get": (SymbolInfo("EURUSD", 5), SymbolInfo("XAUUSD", 2)),
            "symbol_info_tick": MqlTick(T0 // 1000, 1.0841, 1.0842, 0.0, 0, T0, 6, 0.0),
            # numpy structured rows: fields by item, not by attribute
            "copy_ticks_from": [{"time": 1, "bid": 1.0, "ask": 1.1, "last": 0.0, "volume": 3,
                                 "time_msc": T0 + i, "flags": 6, "volume_real": 2.5}
                                for i in range(-2, 3)],
            "order_send": MqlResult(10009, 8, 7, 0.6, 1.0842, 1.0841, 1.0842, "Request executed",
                                    1, 0, None),
            "orders_get": (order(7, 2, 1), order(9, 4, 1)),  # 4: BUY_STOP, not ours
            "positions_get": (MqlPosition(7, 0, T0, 1, 42, 7, 0.6, 1.08, 0, 0, 1.09, 3.0,
                                          "EURUSD", "o-1"),),
            "history_orders_get": (order(5, 0, 4, T0 - 10), order(6, 1, 4, T0 + 10_000)),
            "history_deals_get": (deal(1, 2, T0 - 5), deal(8, 0, T0), deal(9, 5, T0)),  # 5: credit
        }

    def __getattr__(self, name: str) -> Any:
        if name not in self.__dict__.get("answers", {}):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return self.answers[name]
        return call

    def last_error(self) -> tuple[int, str]:
        return self.error


@pytest.fixture
def mt5(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    fake = StandIn()
    monkeypatch.setitem(sys.modules, "MetaTrader5", fake)
    return fake


@pytest.fixture
def term(mt5: StandIn) -> Mt5Terminal:
    t = Mt5Terminal("C:/MT5/terminal64.exe", login=1234, server="Demo")
    t.initialize()
    return t


def test_a_missing_package_says_it_runs_on_windows_only(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setitem(sys.modules, "MetaTrader5", None)  # import raises ImportError
    with pytest.raises(TerminalError, match="Windows only: pip install MetaTrader5") as err:
        Mt5Terminal("").initialize()
    assert err.value.problem == PACKAGE_MISSING


def test_initialize_passes_path_and_account_and_reports_last_error(mt5: StandIn) -> None:
    t: Terminal = Mt5Terminal("C:/MT5/terminal64.exe", login=1234, server="Demo")
    t.initialize()
    assert mt5.calls[0] == ("initialize", ("C:/MT5/terminal64.exe",),
                            {"login": 1234, "server": "Demo"})
    mt5.answers["initialize"], mt5.error = False, (-6, "Terminal: Authorization failed")
    with pytest.raises(TerminalError, match=r"MT5 error -6: Terminal: Authorization failed"):
        Mt5Terminal("").initialize()
    assert mt5.calls[-1] == ("initialize", (), {})


def test_calls_before_initialize_raise() -> None:
    with pytest.raises(TerminalError, match="not initialized"):
        Mt5Terminal("").orders_get()


def test_ticks_convert_by_field_name(term: Mt5Terminal, mt5: StandIn) -> None:
    assert term.symbols() == ("EURUSD", "XAUUSD")
    assert term.symbol_info_tick("EURUSD") == Tick(T0, 1.0841, 1.0842, 0.0, 0.0)
    ticks = term.copy_ticks_from("EURUSD", T0, 2)
    assert ticks == [Tick(T0, 1.0, 1.1, 0.0, 2.5), Tick(T0 + 1, 1.0, 1.1, 0.0, 2.5)]
    name, args, _ = mt5.calls[-1]
    assert name == "copy_ticks_from" and args == ("EURUSD", datetime.fromtimestamp(
        T0 / 1000, tz=UTC), 2, -1)
    mt5.answers["symbol_info_tick"] = None
    assert term.symbol_info_tick("NOSUCH") is None
    mt5.answers["copy_ticks_from"], mt5.error = None, (-4, "Terminal: Not found")
    with pytest.raises(TerminalError, match="copy_ticks_from: MT5 error -4"):
        term.copy_ticks_from("NOSUCH", T0, 2)


def test_orders_positions_and_deals_convert_and_foreign_kinds_are_dropped(
        term: Mt5Terminal, mt5: StandIn) -> None:
    assert term.orders_get() == [TradeOrder(7, T0, OrderType.BUY_LIMIT, OrderStateMt5.PLACED,
                                            42, 1.0, 0.4, 1.08, "EURUSD", "o-1", T0 + 5)]
    assert term.dropped["order"] == 1
    assert term.positions_get() == [TradePosition(7, "EURUSD", OrderType.SELL, 0.6, 1.08, 42)]
    # Whole seconds asked of the package, cut to the millisecond here.
    assert [o.ticket for o in term.history_orders_get(T0 - 10, T0)] == [5]
    assert mt5.calls[-1][1] == (datetime.fromtimestamp((T0 - 1010) / 1000, tz=UTC),
                                datetime.fromtimestamp((T0 + 1000) / 1000, tz=UTC))
    assert term.history_deals_get(T0 - 5, T0) == [
        TradeDeal(1, 7, T0 - 5, DealType.BALANCE, DealEntry.IN, 42, 0.6, 1.08, "EURUSD", "o-1"),
        TradeDeal(8, 7, T0, DealType.BUY, DealEntry.IN, 42, 0.6, 1.08, "EURUSD", "o-1")]
    assert term.dropped["deal"] == 1


def test_none_is_empty_on_success_and_an_error_otherwise(term: Mt5Terminal,
                                                         mt5: StandIn) -> None:
    mt5.answers["orders_get"] = None
    assert term.orders_get() == []
    mt5.error = (-10004, "No IPC connection")
    with pytest.raises(TerminalError, match="orders_get: MT5 error -10004: No IPC connection"):
        term.orders_get()


def test_order_send_sends_the_fields_of_its_action(term: Mt5Terminal, mt5: StandIn) -> None:
    req = TradeRequest(Action.DEAL, "EURUSD", 0.6, OrderType.BUY, magic=42, comment="o-1")
    assert term.order_send(req) == OrderSendResult(10009, 8, 7, 0.6, 1.0842, 1.0841, 1.0842,
                                                   "Request executed")
    sent = mt5.calls[-1][1][0]
    assert sent == {"action": 1, "symbol": "EURUSD", "volume": 0.6, "type": 0,
                    "price": 1.0842, "deviation": 0, "type_filling": 2, "type_time": 0,
                    "magic": 42, "comment": "o-1"}  # price: the current ask
    assert request_of(TradeRequest(Action.REMOVE, "EURUSD", order=7)) == {
        "action": 8, "symbol": "EURUSD", "order": 7}
    assert request_of(TradeRequest(Action.MODIFY, "EURUSD", order=7, price=1.07)) == {
        "action": 7, "symbol": "EURUSD", "order": 7, "price": 1.07, "type_time": 0}
    mt5.answers["order_send"], mt5.error = None, (-2, "Invalid arguments")
    with pytest.raises(TerminalError, match="order_send: MT5 error -2"):
        term.order_send(req)
