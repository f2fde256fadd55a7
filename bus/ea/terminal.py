"""The one seam between tickmesh and a MetaTrader 5 terminal.

Every call the EA makes into a terminal goes through :class:`Terminal`. Two implementations:

* ``bus.ea.mt5.Mt5Terminal`` wraps the ``MetaTrader5`` Python package, which runs on Windows
  only, beside a real terminal (``initialize(path=...)``).
* ``bus.ea.simclient.SimTerminal`` talks to tickmesh's simulated terminal
  (``nodes.ea.simterm``), a process of its own, like the real one: killing the EA leaves it,
  its open orders and its history alive.

The methods are the package's, synchronous like it (it is not thread-safe either): the EA
calls them from one worker thread of its own, never on its event loop. Each returns
``protocols.ea.mt5`` records, so the EA reads the same shapes from both. A call the terminal
cannot serve (not connected, the terminal gone) raises :class:`~protocols.errors.TerminalError`;
a trade request the terminal refuses is not an error: ``order_send`` answers with its retcode.

:func:`open_terminal` builds the one a mesh file's ``[[ea]]`` entry names; the contract both
must keep is ``tests/bus/ea/test_terminal_contract.py``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from protocols.ea.mt5 import (
    OrderSendResult,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)

if TYPE_CHECKING:
    from bus.config import EaSection


class Terminal(Protocol):
    """A MetaTrader 5 terminal, as the ``MetaTrader5`` package presents it."""

    def initialize(self) -> None:
        """Attach to the terminal (raises TerminalError if it cannot)."""

    def shutdown(self) -> None:
        """Detach; the terminal itself runs on."""

    def symbols(self) -> tuple[str, ...]:
        """The symbols the terminal quotes (``symbols_get``)."""

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        """The symbol's last tick, None if it has none (or the terminal does not know it)."""

    def copy_ticks_from(self, symbol: str, from_msc: int, count: int) -> list[Tick]:
        """At most ``count`` ticks of ``symbol`` from time ``from_msc`` on (inclusive), oldest
        first, from the terminal's tick history (``COPY_TICKS_ALL``)."""

    def order_send(self, request: TradeRequest) -> OrderSendResult:
        """Send a trade request; the result's retcode says what became of it."""

    def orders_get(self) -> list[TradeOrder]:
        """The account's active (pending) orders."""

    def positions_get(self) -> list[TradePosition]:
        """The account's open positions."""

    def history_orders_get(self, from_msc: int, to_msc: int) -> list[TradeOrder]:
        """The account's finished orders set up between the two times (inclusive)."""

    def history_deals_get(self, from_msc: int, to_msc: int) -> list[TradeDeal]:
        """The account's deals made between the two times (inclusive)."""


def now_msc() -> int:
    """Now in the terminal's unit of time: milliseconds since the epoch (``time_msc``)."""
    return time.time_ns() // 1_000_000


def open_terminal(section: EaSection) -> Terminal:
    """The terminal an ``[[ea]]`` entry names: ``terminal = "sim"`` reaches the simulated
    terminal at ``sim_endpoint``; ``"mt5"`` the real one at ``terminal_path`` (Windows)."""
    if section.terminal == "mt5":
        from bus.ea.mt5 import Mt5Terminal
        return Mt5Terminal(section.terminal_path, login=section.login,
                           server=section.server)
    from bus.ea.simclient import SimTerminal
    return SimTerminal(section.sim_endpoint)


__all__ = ["Terminal", "now_msc", "open_terminal"]
