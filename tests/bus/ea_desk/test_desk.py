"""The executor's EA desk on real ZeroMQ sockets, its clock and timer driven by the test: a
DEALER in the test is the EA instance. Leases and epochs, held orders, refusals, lost facts,
the hold deadline and malformed messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import zmq
import zmq.asyncio

from bus.config import OrdersSection
from bus.ea.desk import SCAN_TICKS, EaDesk, Expired, UnknownSymbol
from protocols.ea.messages import (
    Cancel,
    EaMessage,
    Execute,
    Facts,
    FactStatus,
    Grant,
    Hello,
    Lease,
    Modify,
    OrderFacts,
    Ping,
    Refused,
    RefusedWhy,
    Synced,
    decode_ea,
    encode_ea,
)
from protocols.orders.messages import OrderType, ReplaceRequest
from tests.protocols.orders.test_execution import routed
from tests.support import FakeClock, scaled

pytestmark = pytest.mark.timeout(20)

CFG = OrdersSection(ea_bind="tcp://127.0.0.1:*", ea_hold_ms=500.0)


class Instance:
    """The EA side: one DEALER named ``name``."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, name: str = "ea-1") -> None:
        self.name = name
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.connect(endpoint)
        self.n = 0
        self.kept: list[EaMessage] = []  # what came before the LEASE a ping waited for

    async def send(self, msg: EaMessage) -> None:
        await self.sock.send_multipart(encode_ea(msg))

    async def _next(self) -> EaMessage:
        async with asyncio.timeout(scaled(2)):
            return decode_ea(await self.sock.recv_multipart())

    async def recv(self) -> EaMessage:
        """The next message that is not a LEASE."""
        while not self.kept:
            msg = await self._next()
            if not isinstance(msg, Lease):
                self.kept.append(msg)
        return self.kept.pop(0)

    async def ping(self) -> Lease:
        self.n += 1
        await self.send(Ping(self.name, "i1", self.n))
        while True:  # orders may come first: kept for recv()
            msg = await self._next()
            if isinstance(msg, Lease) and msg.n == self.n:
                return msg
            if not isinstance(msg, Lease):
                self.kept.append(msg)

    async def nothing(self) -> bool:
        """True if nothing came for the instance by the answer to a ping (a round trip)."""
        await self.ping()
        return not self.kept


class Rig:
    def __init__(self, desk: EaDesk, clock: FakeClock, ctx: zmq.asyncio.Context) -> None:
        self.desk, self.clock, self.ctx = desk, clock, ctx

    async def instance(self, name: str = "ea-1", synced: bool = True) -> Instance:
        """An instance that said HELLO, holds "*" and (``synced``) reconciled."""
        ea = Instance(self.ctx, self.desk.endpoint, name)
        await ea.send(Hello(name, "i1", ("*",), 1))
        await ea.ping()
        await self.desk.tick()
        lease = await ea.ping()
        assert lease.grants[0].active, lease
        if synced:
            await ea.send(Synced(name, "*", lease.grants[0].epoch, 0))
            await ea.ping()  # the desk has read the SYNCED
        return ea


@asynccontextmanager
async def rig(cfg: OrdersSection = CFG) -> AsyncIterator[Rig]:
    ctx = zmq.asyncio.Context()
    epochs: dict[str, int] = {}

    async def incr(key: str) -> int:
        epochs[key] = epochs.get(key, 0) + 1
        return epochs[key]

    clock = FakeClock()
    desk = EaDesk(cfg, ctx, epochs=incr, max_orders=10, clock=clock)
    reader = asyncio.create_task(desk.reader())
    try:
        yield Rig(desk, clock, ctx)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        desk.close()
        ctx.destroy(linger=0)


def run(body: Callable[[Rig], Awaitable[None]], cfg: OrdersSection = CFG) -> None:
    async def main() -> None:
        async with rig(cfg) as r:
            await body(r)
    asyncio.run(main())


LIMIT = routed("o1", type_=OrderType.LIMIT, price=1.07)


def test_a_lease_needs_a_tick_and_an_epoch_and_orders_wait_for_synced() -> None:
    async def body(r: Rig) -> None:
        ea = await r.instance(synced=False)
        assert r.desk.stats.sent == 0
        r.desk.submit(LIMIT)
        assert await ea.nothing()  # reconciling: held
        await ea.send(Synced("ea-1", "*", 1, 0))
        ex = await ea.recv()
        assert ex == Execute("*", 1, "o1", "EURUSD", True, 2.0, 1.07)
        assert r.desk.stats.sent == 1 and r.desk.stats.synced == 1
        await r.desk.tick()
        assert r.desk.collect()["holders"] == {"*": "ea-1"}
    run(body)


def test_refusals_put_the_order_back_and_it_goes_again() -> None:
    async def body(r: Rig) -> None:
        ea = await r.instance()
        r.desk.submit(LIMIT)
        assert isinstance(await ea.recv(), Execute)
        for why in (RefusedWhy.TERMINAL_DOWN, RefusedWhy.SYNCING):
            await ea.send(Refused("ea-1", "o1", 1, why))
            await ea.ping()
            await r.desk.tick()
            assert await ea.nothing()  # not at every heartbeat: a refuser refuses again
            r.clock.advance(SCAN_TICKS * CFG.ea_heartbeat_ms / 1000)  # the periodic scan
            await ea.ping()
            await r.desk.tick()
            assert isinstance(await ea.recv(), Execute)
        assert r.desk.stats.refused == {"TERMINAL_DOWN": 1, "SYNCING": 1}
        assert r.desk.stats.sent == 3
    run(body)


def test_an_unknown_symbol_is_handed_back() -> None:
    async def body(r: Rig) -> None:
        ea = await r.instance()
        r.desk.submit(LIMIT)
        await ea.recv()
        await ea.send(Refused("ea-1", "o1", 1, RefusedWhy.UNKNOWN_SYMBOL))
        await ea.ping()
        assert r.desk.events.get_nowait() == UnknownSymbol("o1") and "o1" not in r.desk
    run(body)


def test_cancel_and_modify_follow_the_execute_and_a_held_one_is_the_executors() -> None:
    async def body(r: Rig) -> None:
        r.desk.submit(LIMIT)  # no instance: held, never sent
        request = ReplaceRequest("o1", "r1", 2.0, 1.05, epoch=1)
        assert not r.desk.modify(request)  # the executor replaces it itself
        ea = await r.instance()
        assert (await ea.recv()) == Execute("*", 1, "o1", "EURUSD", True, 2.0, 1.05)
        assert r.desk.modify(replace(request, price=1.04))
        assert await ea.recv() == Modify("*", 1, "o1", 1.04)
        assert r.desk.cancel("o1")
        assert await ea.recv() == Cancel("*", 1, "o1")
        assert r.desk.asked("o1") == (True, replace(request, price=1.04))
        other = routed("o2", type_=OrderType.LIMIT, price=1.07)
        r.desk.submit(other)
        await ea.recv()
        await ea.send(Refused("ea-1", "o2", 1, RefusedWhy.NOT_ACTIVE))
        await ea.ping()
        assert not r.desk.cancel("o2") and "o2" not in r.desk  # no terminal has it
    run(body)


def test_the_hold_deadline_hands_back_only_orders_no_execute_reached() -> None:
    async def body(r: Rig) -> None:
        r.desk.submit(LIMIT)
        r.clock.advance(0.4)
        await r.desk.tick()
        assert r.desk.events.empty()
        r.clock.advance(0.2)
        await r.desk.tick()
        assert r.desk.events.get_nowait() == Expired(("o1",)) and len(r.desk) == 0
        # One that went out (and was not refused) is never handed back.
        ea = await r.instance()
        r.desk.submit(routed("o2"))
        await ea.recv()
        r.clock.advance(5)
        await ea.ping()
        await r.desk.tick()
        assert r.desk.events.empty() and "o2" in r.desk and r.desk.stats.expired == 1
    run(body)


def test_facts_lost_to_a_full_queue_are_asked_again() -> None:
    async def body(r: Rig) -> None:
        r.desk.events = asyncio.Queue(1)
        ea = await r.instance()
        r.desk.submit(LIMIT)
        await ea.recv()
        facts = Facts("ea-1", "*", 1, (OrderFacts("o1", FactStatus.WORKING, 5, 1.07),))
        await ea.send(facts)
        await ea.send(facts)
        await ea.ping()
        assert r.desk.stats.dropped == 1 and r.desk.stats.facts == 2
        await r.desk.tick()
        assert await ea.recv() == Execute("*", 1, "o1", "EURUSD", True, 2.0, 1.07)
    run(body)


def test_a_takeover_sends_the_open_orders_to_the_new_holder_after_its_synced() -> None:
    async def body(r: Rig) -> None:
        a = await r.instance("ea-a")
        b = Instance(r.ctx, r.desk.endpoint, "ea-b")
        await b.send(Hello("ea-b", "i1", ("*",), 2))
        assert (await b.ping()).grants == (Grant("*", 1, False),)
        r.desk.submit(LIMIT)
        await a.recv()
        r.clock.advance(0.121)  # a silent: lease and guard over
        await b.ping()
        await r.desk.tick()
        lease = await b.ping()
        assert lease.grants == (Grant("*", 2, True),)
        assert await b.nothing()  # not before SYNCED
        await b.send(Synced("ea-b", "*", 2, 1))
        assert await b.recv() == Execute("*", 2, "o1", "EURUSD", True, 2.0, 1.07)
        assert r.desk.collect()["takeovers"] == 1
    run(body)


def test_malformed_messages_are_counted_and_the_desk_serves_on() -> None:
    async def body(r: Rig) -> None:
        ea = Instance(r.ctx, r.desk.endpoint)
        await ea.sock.send_multipart([b"junk"])
        await ea.sock.send_multipart([b"TM", b"junk"])
        await ea.send(Lease(1, 100.0, ()))  # not for the executor
        await ea.send(Hello("ea-1", "i1", ("*",), 1))
        assert (await ea.ping()).grants == (Grant("*", 0, False),)
        assert r.desk.stats.malformed == 3
    run(body)


def test_a_ping_of_an_unknown_incarnation_gets_no_grants() -> None:
    """A restarted executor does not know the instance: the empty LEASE asks for a HELLO."""
    async def body(r: Rig) -> None:
        ea = Instance(r.ctx, r.desk.endpoint)
        assert (await ea.ping()).grants == ()
    run(body)
