"""The simulated terminal's parts in process: the tick ring, the netting book, the journal (a
torn tail, corruption, compaction), and the node serving bad input and replayed quotes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio

from bus.config import MeshConfig, TerminalSection
from bus.ea.simclient import SimTerminal
from nodes.ea import simterm
from nodes.ea.simterm import Journal, SimBook, TerminalNode, TickRing
from nodes.servers.redis_server import free_port
from protocols.ea.mt5 import (
    Action,
    DealEntry,
    OrderStateMt5,
    OrderType,
    Retcode,
    Tick,
    TradeRequest,
)
from protocols.ea.simwire import Reply, SimKind, Symbols, decode_sim, encode_sim
from protocols.errors import ServerError
from tests.support import scaled, wait_until

pytestmark = [pytest.mark.timeout(30)]

SECTION = TerminalSection(symbols=("EURUSD", "GBPUSD"), tick_history=100)
T0 = 1_732_450_000_000


def tick(t: int, bid: float = 1.0, ask: float = 1.1) -> Tick:
    return Tick(t, bid, ask)


def book(path: Path, **overrides: object) -> SimBook:
    b = SimBook(replace(SECTION, **overrides), Journal(path / "journal.msgpack"))  # type: ignore[arg-type]
    b.load()
    return b


def market(b: SimBook, volume: float, kind: OrderType = OrderType.BUY, now: int = T0,
           symbol: str = "EURUSD") -> Retcode:
    return Retcode(b.order_send(TradeRequest(Action.DEAL, symbol, volume, kind), now).retcode)


def test_the_tick_ring_keeps_the_newest_in_order_and_searches_by_time() -> None:
    ring = TickRing(3)
    assert ring.last() is None and ring.since(0, 10) == []
    for t in range(5):
        ring.append(tick(T0 + t))
    assert [t.time_msc for t in ring.since(0, 10)] == [T0 + 2, T0 + 3, T0 + 4]
    assert [t.time_msc for t in ring.since(T0 + 3, 10)] == [T0 + 3, T0 + 4]
    assert [t.time_msc for t in ring.since(T0, 1)] == [T0 + 2]
    assert ring.since(T0 + 5, 10) == [] and ring.last() == tick(T0 + 4)


# (side, volume) of each deal -> its entry and the position after it (side, volume) or None
NETTING = [
    ((OrderType.BUY, 1.0), DealEntry.IN, (OrderType.BUY, 1.0)),
    ((OrderType.BUY, 0.5), DealEntry.IN, (OrderType.BUY, 1.5)),
    ((OrderType.SELL, 0.4), DealEntry.OUT, (OrderType.BUY, 1.1)),
    ((OrderType.SELL, 1.5), DealEntry.INOUT, (OrderType.SELL, 0.4)),
    ((OrderType.BUY, 0.4), DealEntry.OUT, None),
    ((OrderType.SELL, 0.2), DealEntry.IN, (OrderType.SELL, 0.2)),
]


def test_deals_net_into_one_position_per_symbol(tmp_path: Path) -> None:
    b = book(tmp_path)
    b.on_ticks([("EURUSD", tick(T0))])
    for (side, volume), entry, after in NETTING:
        assert market(b, volume, side) == Retcode.DONE
        assert b.history_deals[-1].entry == entry
        pos = b.positions.get("EURUSD")
        assert (None if pos is None else (pos.type, round(pos.volume, 8))) == after
    # The buy opened at the ask (1.1), the last sell at the bid (1.0)
    assert b.positions["EURUSD"].price_open == 1.0
    assert book(tmp_path).positions == b.positions  # the journal has it all


def test_refusals_carry_mt5_retcodes(tmp_path: Path) -> None:
    b = book(tmp_path)
    assert market(b, 1.0) == Retcode.PRICE_OFF  # no quote yet
    b.on_ticks([("EURUSD", tick(T0))])
    assert market(b, 1.0, symbol="NOSUCH") == Retcode.INVALID
    assert market(b, -1.0) == Retcode.INVALID_VOLUME
    assert market(b, 1.0, OrderType.BUY_LIMIT) == Retcode.INVALID  # a limit type as a deal
    pending = TradeRequest(Action.PENDING, "EURUSD", 1.0, OrderType.BUY_LIMIT, price=0.5)
    assert b.order_send(pending, T0).retcode == Retcode.PLACED
    ticket = next(iter(b.active))
    same = TradeRequest(Action.MODIFY, "EURUSD", order=ticket, price=0.5)
    assert b.order_send(same, T0).retcode == Retcode.NO_CHANGES
    zero = TradeRequest(Action.MODIFY, "EURUSD", order=ticket, price=0.0)
    assert b.order_send(zero, T0).retcode == Retcode.INVALID_PRICE
    assert b.stats.rejects == {"TRADE_RETCODE_PRICE_OFF": 1, "TRADE_RETCODE_INVALID": 2,
                               "TRADE_RETCODE_INVALID_VOLUME": 1,
                               "TRADE_RETCODE_NO_CHANGES": 1, "TRADE_RETCODE_INVALID_PRICE": 1}


def test_a_deviating_price_is_requoted(tmp_path: Path) -> None:
    b = book(tmp_path, max_deviation=0.01)
    b.on_ticks([("EURUSD", tick(T0, 1.0, 1.1))])
    far = TradeRequest(Action.DEAL, "EURUSD", 1.0, OrderType.BUY, price=1.05)
    near = TradeRequest(Action.DEAL, "EURUSD", 1.0, OrderType.BUY, price=1.095)
    assert b.order_send(far, T0).retcode == Retcode.REQUOTE
    assert b.order_send(near, T0).retcode == Retcode.DONE


def test_a_torn_last_entry_is_cut_and_the_rest_replayed(tmp_path: Path) -> None:
    b = book(tmp_path, partial_lots=0.5)
    b.on_ticks([("EURUSD", tick(T0))])
    assert market(b, 1.2) == Retcode.DONE_PARTIAL
    b.on_ticks([("EURUSD", tick(T0 + 1))])
    b.journal.close()
    path = b.journal.path
    whole = path.stat().st_size
    with path.open("ab") as fh:  # a kill in the middle of a write
        fh.write(msgpack.packb(["D", [1, 2, 3]])[:3])
    again = book(tmp_path, partial_lots=0.5)
    assert path.stat().st_size == whole
    assert (again.active, again.positions, again.history_deals, again.next_ticket) == (
        b.active, b.positions, b.history_deals, b.next_ticket)
    [rest] = again.active.values()
    assert (rest.state, rest.volume_current) == (OrderStateMt5.PARTIAL, 0.2)  # volumes rounded
    # It goes on where it stopped: the rest fills on the next tick, with the next ticket.
    again.on_ticks([("EURUSD", tick(T0 + 2))])
    assert again.active == {} and again.history_deals[-1].ticket == b.next_ticket


def test_a_corrupt_journal_stops_the_start_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "journal.msgpack").write_bytes(msgpack.packb(["Q", 1]))
    with pytest.raises(ServerError, match=r"journal\.msgpack: bad entry"):
        book(tmp_path)
    (tmp_path / "journal.msgpack").write_bytes(b"\xc1\xc1")
    with pytest.raises(ServerError, match="corrupt at byte 0"):
        book(tmp_path)


def test_a_superseded_journal_is_compacted_at_start_keeping_every_ticket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simterm, "COMPACT_SLACK", 0)
    b = book(tmp_path)
    b.on_ticks([("EURUSD", tick(T0))])
    b.order_send(TradeRequest(Action.PENDING, "EURUSD", 1.0, OrderType.BUY_LIMIT, price=0.5), T0)
    ticket = next(iter(b.active))
    for i in range(20):  # each a new version of the same order
        b.order_send(TradeRequest(Action.MODIFY, "EURUSD", order=ticket, price=0.4 - i / 100),
                     T0)
    market(b, 1.0)
    b.journal.close()
    assert b.journal.records == 24
    again = book(tmp_path)
    assert again.journal.records == 5  # T, the two orders, the deal, the position
    assert (again.active, again.history_orders, again.history_deals, again.positions,
            again.next_ticket) == (b.active, b.history_orders, b.history_deals, b.positions,
                                   b.next_ticket)


# --- the node --------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: object) -> AsyncIterator[TerminalNode]:
    section = replace(SECTION, bind=f"tcp://127.0.0.1:{free_port()}",
                      data_dir=str(tmp_path / "data"), **overrides)  # type: ignore[arg-type]
    node = TerminalNode(MeshConfig(terminal=section).validate())
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    try:
        yield node
    finally:
        stop.set()
        assert await asyncio.wait_for(task, scaled(10)) == 0


def test_bad_input_gets_an_error_reply_and_the_terminal_serves_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as node:
            ctx = zmq.asyncio.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(node.endpoint)
            try:
                for frames, reason in [
                    ([b"junk"], "of 1 frames"),
                    ([b"TM\x01\x82", msgpack.packb({"id": 5})], "unknown terminal kind 130"),
                    ([b"TM\x01\x7c", msgpack.packb({"id": 6, "symbol": "EURUSD", "from_msc": -1,
                                                      "count": 1})], "from_msc must"),
                    (encode_sim(Reply(7, SimKind.SYMBOLS, ())), "Reply is not a request"),
                ]:
                    await sock.send_multipart(frames)
                    reply = decode_sim(await asyncio.wait_for(sock.recv_multipart(), 5))
                    assert reason in getattr(reply, "message", ""), reply
                await sock.send_multipart(encode_sim(Symbols(9)))
                reply = decode_sim(await asyncio.wait_for(sock.recv_multipart(), 5))
                assert reply == Reply(9, SimKind.SYMBOLS, SECTION.symbols)
                stats = node.collect()
                assert stats["bad"] == 4 and stats["requests"] == {"SYMBOLS": 1}
            finally:
                sock.close()
                ctx.term()

    asyncio.run(main())


def test_replayed_quotes_are_stamped_with_the_terminals_clock(tmp_path: Path) -> None:
    csv = tmp_path / "ticks.csv"
    csv.write_text("symbol,bid,ask,last,volume,time_msc\n"
                   + "".join(f"EURUSD,1.{i:04d},1.{i + 1:04d},0,1,{T0 + i}\n"
                             for i in range(1, 51)))

    async def main() -> None:
        async with running(tmp_path, quotes="replay", file=str(csv), speed=0.0,
                           loop=False) as node:
            client = SimTerminal(node.endpoint, timeout_s=5)
            await asyncio.to_thread(client.initialize)
            try:
                await wait_until(lambda: len(node.book.rings["EURUSD"]) == 50, 10,
                                 "the replay's 50 ticks")
                got = await asyncio.to_thread(client.copy_ticks_from, "EURUSD", 0, 100)
                assert [t.bid for t in got] == [float(f"1.{i:04d}") for i in range(1, 51)]
                assert all(t.time_msc > T0 + 50 for t in got)  # now, not the file's times
            finally:
                await asyncio.to_thread(client.shutdown)

    asyncio.run(main())
