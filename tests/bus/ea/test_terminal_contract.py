"""The contract every :class:`bus.ea.terminal.Terminal` keeps.

The tests taking ``terminal`` run against the simulated terminal, a real ``sim-terminal``
process on a free loopback port, and against ``Mt5Terminal`` when the ``MetaTrader5`` package
imports (Windows, beside a terminal logged in to a *demo* account: these tests trade;
``TICKMESH_MT5_PATH`` names terminal64.exe, ``TICKMESH_MT5_SYMBOL`` the symbol, default
EURUSD). The tests below them need the simulator's own knobs (partial fills, requote and
reject rates, a terminal to SIGKILL) and run against it only.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from bus.ea.mt5 import Mt5Terminal
from bus.ea.simclient import SimTerminal
from bus.ea.terminal import Terminal, now_msc
from nodes.ea.simproc import TerminalProcess
from protocols.ea.mt5 import (
    Action,
    DealEntry,
    DealType,
    OrderStateMt5,
    OrderType,
    Retcode,
    Tick,
    TradeDeal,
    TradeOrder,
    TradeRequest,
    comment_of,
    magic_of,
    order_id_of,
)
from protocols.errors import TerminalError
from tests.bus.ea.conftest import SYMBOLS, StartTerminal
from tests.support import scaled, wait_until_sync

T = TypeVar("T")
_ids = itertools.count(1)
FAR = 60_000  # ms: history reads end this far ahead of now


@dataclass
class Under:
    """A terminal under test and the symbol it trades."""

    term: Terminal
    symbol: str
    sim: bool


def new_id(what: str) -> str:
    return f"t-{what}-{os.getpid()}-{next(_ids)}"


def tagged(action: Action, symbol: str, order_id: str, **kw: object) -> TradeRequest:
    return TradeRequest(action, symbol, magic=magic_of(order_id), comment=comment_of(order_id),
                        **kw)  # type: ignore[arg-type]


def wait_tick(term: Terminal, symbol: str) -> Tick:
    tick = wait_until_sync(lambda: term.symbol_info_tick(symbol), 10, f"a tick of {symbol}")
    assert tick is not None
    return tick


def deals_of(term: Terminal, ticket: int, since: int) -> list[TradeDeal]:
    return [d for d in term.history_deals_get(since, now_msc() + FAR) if d.order == ticket]


def finished(term: Terminal, ticket: int, since: int) -> TradeOrder | None:
    return next((o for o in term.history_orders_get(since, now_msc() + FAR)
                 if o.ticket == ticket), None)


def sim_client(proc: TerminalProcess, timeout_s: float = 2.0) -> SimTerminal:
    client = SimTerminal(proc.endpoint, timeout_s=scaled(timeout_s))
    client.initialize()
    return client


@pytest.fixture(params=["sim", "mt5"])
def under(request: pytest.FixtureRequest) -> Iterator[Under]:
    term: Terminal
    if request.param == "mt5":
        try:
            import MetaTrader5  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            pytest.skip("the MetaTrader5 package is not installed (it runs on Windows only)")
        term = Mt5Terminal(os.environ.get("TICKMESH_MT5_PATH", ""))
        symbol = os.environ.get("TICKMESH_MT5_SYMBOL", "EURUSD")
    else:
        proc: TerminalProcess = request.getfixturevalue("shared_terminal")
        term = SimTerminal(proc.endpoint, timeout_s=scaled(2.0))
        symbol = SYMBOLS[0]
    term.initialize()
    try:
        yield Under(term, symbol, request.param == "sim")
    finally:
        term.shutdown()


# --- every terminal --------------------------------------------------------------------------

def test_ticks_flow_and_copy_ticks_from_reads_oldest_first_from_a_time(under: Under) -> None:
    term, sym = under.term, under.symbol
    assert sym in term.symbols()
    t0 = wait_tick(term, sym).time_msc

    def twenty() -> list[Tick] | None:
        ticks = term.copy_ticks_from(sym, t0, 1000)
        return ticks if len(ticks) >= 20 else None

    ticks = wait_until_sync(twenty, 10, "20 ticks from t0")
    assert ticks is not None
    times = [t.time_msc for t in ticks]
    assert times[0] >= t0 and times == sorted(times)
    assert all(0 < t.bid < t.ask for t in ticks)
    assert term.copy_ticks_from(sym, t0, 5) == ticks[:5]
    later = times[len(times) // 2]
    first_later = next(t for t in ticks if t.time_msc >= later)
    assert term.copy_ticks_from(sym, later, 1)[0] == first_later
    assert term.symbol_info_tick(sym).time_msc >= times[-1]  # type: ignore[union-attr]


def test_a_market_order_is_done_with_one_deal_tagged_like_the_request(under: Under) -> None:
    term, sym = under.term, under.symbol
    since = now_msc() - 1
    oid = new_id("market")
    wait_tick(term, sym)
    r = term.order_send(tagged(Action.DEAL, sym, oid, volume=0.1, type=OrderType.BUY))
    assert r.retcode == Retcode.DONE, r
    assert r.deal > 0 and r.order > 0 and r.volume == pytest.approx(0.1) and r.price > 0
    [deal] = deals_of(term, r.order, since)
    assert (deal.ticket, deal.type, deal.price) == (r.deal, DealType.BUY, r.price)
    assert deal.volume == pytest.approx(0.1)
    assert order_id_of(deal.magic, deal.comment) == oid
    order = finished(term, r.order, since)
    assert order is not None and order.state == OrderStateMt5.FILLED
    assert order_id_of(order.magic, order.comment) == oid
    assert order.volume_current == 0 and order.volume_initial == pytest.approx(0.1)
    # Close it again: a netting account's position moves by each deal.
    close = term.order_send(tagged(Action.DEAL, sym, new_id("close"), volume=0.1,
                                   type=OrderType.SELL))
    assert close.retcode == Retcode.DONE


def test_a_pending_order_rests_is_modified_and_removed(under: Under) -> None:
    term, sym = under.term, under.symbol
    since = now_msc() - 1
    oid = new_id("pending")
    ask = wait_tick(term, sym).ask
    low = round(ask * 0.5, 5)
    r = term.order_send(tagged(Action.PENDING, sym, oid, volume=0.2, type=OrderType.BUY_LIMIT,
                               price=low))
    assert r.retcode == Retcode.PLACED and r.order > 0 and r.deal == 0, r
    [resting] = [o for o in term.orders_get() if o.ticket == r.order]
    assert (resting.state, resting.type, resting.price_open) == (
        OrderStateMt5.PLACED, OrderType.BUY_LIMIT, low)
    assert order_id_of(resting.magic, resting.comment) == oid
    lower = round(ask * 0.4, 5)
    mod = term.order_send(TradeRequest(Action.MODIFY, sym, order=r.order, price=lower))
    assert mod.retcode == Retcode.DONE, mod
    assert [o.price_open for o in term.orders_get() if o.ticket == r.order] == [lower]
    rm = term.order_send(TradeRequest(Action.REMOVE, sym, order=r.order))
    assert rm.retcode == Retcode.DONE, rm
    assert r.order not in {o.ticket for o in term.orders_get()}
    gone = finished(term, r.order, since)
    assert gone is not None and gone.state == OrderStateMt5.CANCELED
    assert gone.volume_current == pytest.approx(0.2) and deals_of(term, r.order, since) == []
    for action in (Action.MODIFY, Action.REMOVE):  # it is in the history now, not active
        again = term.order_send(TradeRequest(action, sym, order=r.order, price=lower))
        assert again.retcode == Retcode.INVALID_ORDER, again


def test_unknown_symbols_and_bad_volumes_are_refused_with_their_retcodes(under: Under) -> None:
    term, sym = under.term, under.symbol
    r = term.order_send(tagged(Action.DEAL, "NOSUCH", new_id("unknown"), volume=0.1))
    assert r.retcode == Retcode.INVALID and r.order == 0
    assert term.symbol_info_tick("NOSUCH") is None
    with pytest.raises(TerminalError, match="NOSUCH"):
        term.copy_ticks_from("NOSUCH", 0, 10)
    wait_tick(term, sym)
    r = term.order_send(tagged(Action.DEAL, sym, new_id("zero"), volume=0.0))
    assert r.retcode == Retcode.INVALID_VOLUME and r.order == 0


# --- the simulated terminal ------------------------------------------------------------------

def test_a_resting_limit_fills_at_its_price_when_a_tick_makes_it_marketable(
        shared_terminal: TerminalProcess) -> None:
    term = sim_client(shared_terminal)
    sym = SYMBOLS[1]
    since = now_msc() - 1
    ask = wait_tick(term, sym).ask
    r = term.order_send(tagged(Action.PENDING, sym, new_id("fill"), volume=0.3,
                               type=OrderType.SELL_LIMIT, price=round(ask * 2, 5)))
    assert r.retcode == Retcode.PLACED
    assert deals_of(term, r.order, since) == []
    # The limit moves under the market: the next tick fills it, at the limit.
    limit = round(ask * 0.5, 5)
    assert term.order_send(TradeRequest(Action.MODIFY, sym, order=r.order,
                                        price=limit)).retcode == Retcode.DONE
    [deal] = wait_until_sync(lambda: deals_of(term, r.order, since), 10, "the fill")
    assert (deal.type, deal.price) == (DealType.SELL, limit)
    assert deal.volume == pytest.approx(0.3)
    order = finished(term, r.order, since)
    assert order is not None and order.state == OrderStateMt5.FILLED
    assert r.order not in {o.ticket for o in term.orders_get()}
    term.shutdown()


def test_partial_fills_come_in_deals_of_at_most_partial_lots(sim_terminal: StartTerminal
                                                             ) -> None:
    term = sim_client(sim_terminal(partial_lots=0.3))
    sym = SYMBOLS[0]
    since = now_msc() - 1
    wait_tick(term, sym)
    oid = new_id("partial")
    r = term.order_send(tagged(Action.DEAL, sym, oid, volume=1.0, type=OrderType.BUY))
    assert r.retcode == Retcode.DONE_PARTIAL and r.volume == pytest.approx(0.3), r
    rest = [o for o in term.orders_get() if o.ticket == r.order]
    assert rest == [] or rest[0].state == OrderStateMt5.PARTIAL  # it may be done already
    order = wait_until_sync(lambda: finished(term, r.order, since), 10, "the last deal")
    assert order is not None and order.state == OrderStateMt5.FILLED
    deals = deals_of(term, r.order, since)
    assert [d.volume for d in deals] == pytest.approx([0.3, 0.3, 0.3, 0.1])
    assert deals[0].ticket == r.deal and [d.entry for d in deals] == [DealEntry.IN] * 4
    assert {order_id_of(d.magic, d.comment) for d in deals} == {oid}
    [pos] = term.positions_get()
    assert (pos.symbol, pos.type, pos.ticket) == (sym, OrderType.BUY, r.order)
    assert pos.volume == pytest.approx(1.0)
    term.shutdown()


def test_requotes_make_no_order_and_rejects_go_to_history_rejected(
        sim_terminal: StartTerminal) -> None:
    term = sim_client(sim_terminal(requote_rate=1.0, reject_rate=1.0))
    sym = SYMBOLS[0]
    since = now_msc() - 1
    wait_tick(term, sym)
    r = term.order_send(tagged(Action.DEAL, sym, new_id("requote"), volume=0.1))
    assert r.retcode == Retcode.REQUOTE and r.order == 0 and r.bid > 0, r
    # A pending order is never requoted: at a reject rate of 1 it is rejected, recorded.
    oid = new_id("reject")
    r = term.order_send(tagged(Action.PENDING, sym, oid, volume=0.1, type=OrderType.BUY_LIMIT,
                               price=1.0))
    assert r.retcode == Retcode.REJECT and r.order > 0, r
    assert term.orders_get() == [] and term.positions_get() == []
    [order] = term.history_orders_get(since, now_msc() + FAR)
    assert order.ticket == r.order and order.state == OrderStateMt5.REJECTED
    assert order_id_of(order.magic, order.comment) == oid
    assert term.history_deals_get(since, now_msc() + FAR) == []
    term.shutdown()


def test_a_killed_terminal_restarts_with_its_history_and_the_client_with_it(
        sim_terminal: StartTerminal) -> None:
    proc = sim_terminal(partial_lots=0.5)
    term = sim_client(proc, timeout_s=0.5)
    sym, other = SYMBOLS
    since = now_msc() - 1
    wait_tick(term, sym)
    bought = term.order_send(tagged(Action.DEAL, sym, new_id("k-buy"), volume=1.0))
    ask = wait_tick(term, other).ask
    resting = term.order_send(tagged(Action.PENDING, other, new_id("k-rest"), volume=0.7,
                                     type=OrderType.BUY_LIMIT, price=round(ask * 0.5, 5)))
    removed = term.order_send(tagged(Action.PENDING, other, new_id("k-rm"), volume=0.1,
                                     type=OrderType.BUY_LIMIT, price=round(ask * 0.5, 5)))
    assert term.order_send(TradeRequest(Action.REMOVE, other, order=removed.order)
                           ).retcode == Retcode.DONE
    wait_until_sync(lambda: finished(term, bought.order, since), 10, "the partial buy's end")
    before = (term.orders_get(), term.positions_get(),
              term.history_orders_get(since, now_msc() + FAR),
              term.history_deals_get(since, now_msc() + FAR))
    assert [o.ticket for o in before[0]] == [resting.order] and len(before[3]) == 2

    # A lost reply: the terminal stops answering; the call times out, the socket is renewed,
    # and the next call (the terminal back) is answered, not the stale one.
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TerminalError, match="no answer"):
            term.orders_get()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert term.orders_get() == before[0]

    proc.kill()
    with pytest.raises(TerminalError, match="no answer"):
        term.positions_get()
    proc.restart()
    # The client's socket is renewed after each timeout; the restarted terminal answers.
    back = wait_until_sync(lambda: _answer(term.orders_get), 10, "the terminal back")
    assert back is not None
    after = (back[0], term.positions_get(),
             term.history_orders_get(since, now_msc() + FAR),
             term.history_deals_get(since, now_msc() + FAR))
    assert after == before
    # Tickets continue above every ticket the terminal ever gave.
    again = term.order_send(tagged(Action.DEAL, other, new_id("k-after"), volume=0.2))
    assert again.retcode == Retcode.DONE
    used = {o.ticket for o in before[0] + before[2]} | {d.ticket for d in before[3]}
    assert min(again.order, again.deal) > max(used)
    term.shutdown()


def _answer(call: Callable[[], T]) -> tuple[T] | None:
    """``(call(),)`` (an empty answer is still one), None while the terminal is away."""
    try:
        return (call(),)
    except TerminalError:
        return None
