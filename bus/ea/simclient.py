"""The client of tickmesh's simulated MetaTrader 5 terminal (``nodes.ea.simterm``).

:class:`SimTerminal` is a :class:`~bus.ea.terminal.Terminal`: synchronous, like the
``MetaTrader5`` package, each call one request and its reply over a ZeroMQ DEALER
(``protocols.ea.simwire``, docs/PROTOCOL.md section 19). The lazy pirate pattern of the
ZeroMQ guide: a call without an answer within ``timeout_s`` raises
:class:`~protocols.errors.TerminalError` and the socket is closed and made anew, so a lost
reply never wedges the client and nothing queued on the old socket is delivered later. Every
call carries a new request id; a reply for another id (a stray) is dropped.

Not thread-safe, by design: the EA calls its terminal from one worker thread of its own (the
real package is not thread-safe either). Use one instance per thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import zmq

from bus.sockets import TERMINAL_CLIENT, open_socket
from protocols.ea.mt5 import (
    OrderSendResult,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)
from protocols.ea.simwire import (
    MAX_TICKS,
    CopyTicksFrom,
    ErrorReply,
    HistoryDealsGet,
    HistoryOrdersGet,
    Initialize,
    OrderSend,
    OrdersGet,
    PositionsGet,
    Reply,
    Shutdown,
    SimRequest,
    SymbolInfoTick,
    Symbols,
    decode_sim,
    encode_sim,
)
from protocols.errors import RemoteProtocolError, TerminalError

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 0.2  # shutdown tells the terminal, but never waits long for it


class SimTerminal:
    """The simulated terminal at ``endpoint``; ``initialize()`` first, as with MT5."""

    def __init__(self, endpoint: str, *, timeout_s: float = 1.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._ids = itertools.count(1)
        self.strays = 0  # replies that matched no waiting call (answers to timed-out calls)

    # --- the exchange --------------------------------------------------------------------

    def _socket(self, call: str) -> zmq.Socket[bytes]:
        if self._ctx is None:
            raise TerminalError(call, "not initialized: call initialize() first")
        if self._sock is None:
            self._sock = open_socket(self._ctx, TERMINAL_CLIENT, connect=[self.endpoint])
        return self._sock

    def _renew(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _call(self, call: str, make: Any, timeout_s: float | None = None) -> Any:
        """Send ``make(id)`` and return its reply's result; TerminalError on an ERROR reply,
        on no reply within the timeout (the socket is renewed), or on a malformed reply."""
        sock = self._socket(call)
        req: SimRequest = make(next(self._ids))
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        try:
            sock.send_multipart(encode_sim(req), flags=zmq.NOBLOCK)
        except zmq.Again:
            self._renew()
            raise TerminalError(call, f"{self.endpoint}: cannot queue the request") from None
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                self._renew()
                raise TerminalError(call, f"no answer from {self.endpoint} within "
                                          f"{timeout:.3f} s")
            frames = sock.recv_multipart()
            try:
                reply = decode_sim(frames)
            except RemoteProtocolError as exc:
                self._renew()
                raise TerminalError(call, f"malformed reply: {exc.reason}") from None
            if not isinstance(reply, (Reply, ErrorReply)):
                self._renew()
                raise TerminalError(call, f"a {type(reply).__name__} came as a reply")
            if reply.id != req.id:
                self.strays += 1
                continue
            if isinstance(reply, ErrorReply):
                raise TerminalError(call, reply.message)
            return reply.result

    # --- the Terminal protocol ----------------------------------------------------------

    def initialize(self) -> None:
        if self._ctx is None:
            self._ctx = zmq.Context()
        self._call("initialize", Initialize)

    def shutdown(self) -> None:
        """Tell the terminal (briefly, it may be gone) and release the socket."""
        if self._ctx is None:
            return
        try:
            self._call("shutdown", Shutdown, SHUTDOWN_TIMEOUT_S)
        except TerminalError as exc:
            log.debug("terminal shutdown: %s", exc)
        self._renew()
        self._ctx.term()
        self._ctx = None

    def symbols(self) -> tuple[str, ...]:
        result: tuple[str, ...] = self._call("symbols", Symbols)
        return result

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        result: Tick | None = self._call("symbol_info_tick",
                                         lambda i: SymbolInfoTick(i, symbol))
        return result

    def copy_ticks_from(self, symbol: str, from_msc: int, count: int) -> list[Tick]:
        count = max(0, min(count, MAX_TICKS))
        return list(self._call("copy_ticks_from",
                               lambda i: CopyTicksFrom(i, symbol, max(0, from_msc), count)))

    def order_send(self, request: TradeRequest) -> OrderSendResult:
        result: OrderSendResult = self._call("order_send", lambda i: OrderSend(i, request))
        return result

    def orders_get(self) -> list[TradeOrder]:
        return list(self._call("orders_get", OrdersGet))

    def positions_get(self) -> list[TradePosition]:
        return list(self._call("positions_get", PositionsGet))

    def history_orders_get(self, from_msc: int, to_msc: int) -> list[TradeOrder]:
        return list(self._call("history_orders_get",
                               lambda i: HistoryOrdersGet(i, max(0, from_msc), max(0, to_msc))))

    def history_deals_get(self, from_msc: int, to_msc: int) -> list[TradeDeal]:
        return list(self._call("history_deals_get",
                               lambda i: HistoryDealsGet(i, max(0, from_msc), max(0, to_msc))))


__all__ = ["SimTerminal"]
