"""The real MetaTrader 5 terminal through the ``MetaTrader5`` Python package (Windows only).

:class:`Mt5Terminal` is a :class:`~bus.ea.terminal.Terminal`: each method is one call of the
package, its named tuples converted to ``protocols.ea.mt5`` records by field name (the fields
tickmesh does not read are dropped). A call that returns None raises
:class:`~protocols.errors.TerminalError` with the package's ``last_error()``, except where
None is an answer: ``symbol_info_tick`` of a symbol without a tick, and an empty
``orders_get``/``positions_get``/history (the package answers None with ``last_error`` 1,
"Success", for those).

Records the vocabulary cannot hold are dropped and counted in :attr:`Mt5Terminal.dropped`: a
stop order (``ORDER_TYPE_BUY_STOP`` and the others tickmesh never sends) or a bookkeeping
deal other than balance (credit, commission, ...). Both are foreign to tickmesh by
definition.

**Tested only by its conversions.** The package runs on Windows beside a terminal, which
this project's CI does not have: ``tests/bus/ea/test_mt5.py`` drives this class through a
stand-in module object that returns the package's named tuples, and the contract suite
(``tests/bus/ea/test_terminal_contract.py``) runs against it only where the package imports.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from bus.ea.terminal import Terminal

log = logging.getLogger(__name__)

PACKAGE_MISSING = "the MetaTrader5 package runs on Windows only: pip install MetaTrader5"
RES_S_OK = 1  # last_error()'s "Success": a None that means "nothing", not a failure
COPY_TICKS_ALL = -1  # the package's constant, used when a stand-in lacks it
ORDER_TIME_GTC = 0


def _get(record: Any, name: str) -> Any:
    """A field of a named tuple, or of a numpy structured row (``copy_ticks_from``)."""
    try:
        return getattr(record, name)
    except AttributeError:
        return record[name]


def _dt(msc: int) -> datetime:
    return datetime.fromtimestamp(msc / 1000, tz=UTC)


def tick_of(row: Any) -> Tick:
    """A ``Tick`` of the package's tick (``volume_real`` when it has one: ``volume`` is
    whole lots)."""
    try:
        volume = float(_get(row, "volume_real"))
    except (KeyError, ValueError, IndexError):
        volume = float(_get(row, "volume"))
    return Tick(int(_get(row, "time_msc")), float(_get(row, "bid")), float(_get(row, "ask")),
                float(_get(row, "last")), volume)


def order_of(o: Any) -> TradeOrder | None:
    """A ``TradeOrder`` of the package's, None for a type or state outside the vocabulary."""
    try:
        kind, state = OrderType(int(o.type)), OrderStateMt5(int(o.state))
    except ValueError:
        return None
    return TradeOrder(int(o.ticket), int(o.time_setup_msc), kind, state, int(o.magic),
                      float(o.volume_initial), float(o.volume_current), float(o.price_open),
                      str(o.symbol), str(o.comment), int(o.time_done_msc))


def position_of(p: Any) -> TradePosition:
    # POSITION_TYPE_BUY and _SELL are 0 and 1, as ORDER_TYPE_BUY and _SELL are.
    return TradePosition(int(p.ticket), str(p.symbol), OrderType(int(p.type)),
                         float(p.volume), float(p.price_open), int(p.magic))


def deal_of(d: Any) -> TradeDeal | None:
    """A ``TradeDeal`` of the package's, None for a deal type outside the vocabulary."""
    try:
        kind, entry = DealType(int(d.type)), DealEntry(int(d.entry))
    except ValueError:
        return None
    return TradeDeal(int(d.ticket), int(d.order), int(d.time_msc), kind, entry, int(d.magic),
                     float(d.volume), float(d.price), str(d.symbol), str(d.comment))


def result_of(r: Any) -> OrderSendResult:
    return OrderSendResult(int(r.retcode), int(r.deal), int(r.order), float(r.volume),
                           float(r.price), float(r.bid), float(r.ask), str(r.comment))


def request_of(req: TradeRequest, time_gtc: int = ORDER_TIME_GTC) -> dict[str, Any]:
    """The package's request dict for ``req``: only the fields its action reads."""
    out: dict[str, Any] = {"action": int(req.action), "symbol": req.symbol}
    if req.action in (Action.DEAL, Action.PENDING):
        out |= {"volume": float(req.volume), "type": int(req.type), "price": float(req.price),
                "deviation": int(req.deviation), "type_filling": int(req.type_filling),
                "type_time": time_gtc, "magic": int(req.magic), "comment": req.comment}
    elif req.action is Action.MODIFY:
        out |= {"order": int(req.order), "price": float(req.price), "type_time": time_gtc}
    else:
        out["order"] = int(req.order)
    return out


class Mt5Terminal:
    """The terminal at ``path`` (terminal64.exe; "": the one the package finds), logged in
    to ``login`` on ``server`` when given (0: the terminal's current account)."""

    def __init__(self, path: str, *, login: int = 0, server: str = "") -> None:
        self.path = path
        self.login = login
        self.server = server
        self.dropped: Counter[str] = Counter()  # records outside the vocabulary, by kind
        self._mt5: Any = None

    def _pkg(self, call: str) -> Any:
        if self._mt5 is None:
            raise TerminalError(call, "not initialized: call initialize() first")
        return self._mt5

    def _error(self, call: str) -> TerminalError:
        try:
            code, text = self._mt5.last_error()
        except Exception as exc:  # the package itself failing: say so, with what it raised
            return TerminalError(call, f"returned None, and last_error() failed: {exc!r}")
        return TerminalError(call, f"MT5 error {code}: {text}")

    def _many(self, call: str, value: Any) -> list[Any]:
        """A sequence answer; None is an empty one when last_error says success."""
        if value is None:
            code = self._mt5.last_error()[0]
            if code != RES_S_OK:
                raise self._error(call)
            return []
        return list(value)

    def _keep(self, what: str, records: list[Any]) -> list[Any]:
        kept = [r for r in records if r is not None]
        if len(kept) < len(records):
            self.dropped[what] += len(records) - len(kept)
        return kept

    def initialize(self) -> None:
        try:
            import MetaTrader5 as mt5  # type: ignore[import-not-found]  # Windows only
        except ImportError:
            raise TerminalError("initialize", PACKAGE_MISSING) from None
        kwargs: dict[str, Any] = {}
        if self.login:
            kwargs["login"] = self.login
        if self.server:
            kwargs["server"] = self.server
        ok = mt5.initialize(self.path, **kwargs) if self.path else mt5.initialize(**kwargs)
        self._mt5 = mt5
        if not ok:
            err = self._error("initialize")
            self._mt5 = None
            raise err

    def shutdown(self) -> None:
        if self._mt5 is not None:
            self._mt5.shutdown()
            self._mt5 = None

    def symbols(self) -> tuple[str, ...]:
        return tuple(str(s.name) for s in self._many("symbols", self._pkg("symbols")
                                                      .symbols_get()))

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        tick = self._pkg("symbol_info_tick").symbol_info_tick(symbol)
        return None if tick is None or not tick.time_msc else tick_of(tick)

    def copy_ticks_from(self, symbol: str, from_msc: int, count: int) -> list[Tick]:
        mt5 = self._pkg("copy_ticks_from")
        rows = mt5.copy_ticks_from(symbol, _dt(from_msc), count,
                                   getattr(mt5, "COPY_TICKS_ALL", COPY_TICKS_ALL))
        if rows is None:
            raise self._error("copy_ticks_from")
        # The package's from is a datetime it may round to the second: cut to the millisecond.
        return [t for t in map(tick_of, rows) if t.time_msc >= from_msc][:count]

    def order_send(self, request: TradeRequest) -> OrderSendResult:
        mt5 = self._pkg("order_send")
        if request.action is Action.DEAL and request.price <= 0:
            # A market order names the price it expects; the current one, as the EA would.
            tick = self.symbol_info_tick(request.symbol)
            if tick is not None:
                request = replace(request, price=tick.ask if request.type.buy else tick.bid)
        result = mt5.order_send(request_of(request, getattr(mt5, "ORDER_TIME_GTC",
                                                             ORDER_TIME_GTC)))
        if result is None:
            raise self._error("order_send")
        return result_of(result)

    def orders_get(self) -> list[TradeOrder]:
        raw = self._many("orders_get", self._pkg("orders_get").orders_get())
        return self._keep("order", [order_of(o) for o in raw])

    def positions_get(self) -> list[TradePosition]:
        raw = self._many("positions_get", self._pkg("positions_get").positions_get())
        return [position_of(p) for p in raw if int(p.type) in (0, 1)]

    def history_orders_get(self, from_msc: int, to_msc: int) -> list[TradeOrder]:
        # The package's range is in whole seconds: ask a second wider, cut to the millisecond.
        raw = self._many("history_orders_get", self._pkg("history_orders_get")
                         .history_orders_get(_dt(from_msc - 1000), _dt(to_msc + 1000)))
        orders = self._keep("order", [order_of(o) for o in raw])
        return [o for o in orders if from_msc <= o.time_setup_msc <= to_msc]

    def history_deals_get(self, from_msc: int, to_msc: int) -> list[TradeDeal]:
        raw = self._many("history_deals_get", self._pkg("history_deals_get")
                         .history_deals_get(_dt(from_msc - 1000), _dt(to_msc + 1000)))
        deals = self._keep("deal", [deal_of(d) for d in raw])
        return [d for d in deals if from_msc <= d.time_msc <= to_msc]


if TYPE_CHECKING:
    _check: Terminal = Mt5Terminal("")  # mypy: the class keeps the Terminal protocol


__all__ = ["PACKAGE_MISSING", "Mt5Terminal", "deal_of", "order_of", "position_of",
           "request_of", "result_of", "tick_of"]
