"""The executor in bridge mode ([orders] execution = "ea"): the real backend pair and executor
on a real Redis, orders from the order client, and scripted EA instances (DEALERs speaking
protocols.ea.messages, each with a dict standing for its terminal's record)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from bus.orders.client import OrderClient
from bus.store.orders import RedisOrderStore
from nodes.orders.executor import ExecutorNode
from nodes.servers.redis_server import RedisProcess
from protocols.ea.messages import (
    Bye,
    Cancel,
    Deal,
    EaMessage,
    Execute,
    Facts,
    FactStatus,
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
from protocols.errors import OrderRejected
from protocols.orders.binary_star import Role
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelOrder,
    ExecutionReport,
    RejectReason,
    ReplaceOrder,
)
from protocols.orders.record import Order
from tests.nodes.orders.test_backend import Pair, order, pair, run, wait_active
from tests.nodes.orders.test_e2e import both_backends
from tests.support import scaled, wait_until

pytestmark = pytest.mark.timeout(60)

EA = {"execution": "ea", "ea_bind": "tcp://127.0.0.1:*", "ea_heartbeat_ms": 20.0,
      "ea_lease_ms": 100.0, "ea_guard_ms": 20.0}
ASK = 1.0802


class Peer:
    """A scripted EA instance: HELLO, a PING every 20 ms (while ``pinging``), reconciliation
    (its terminal's facts, then SYNCED) at each new epoch, and EXECUTE answered with FACTS:
    a market order DONE at once in one deal, a limit order resting (``answer`` may say
    otherwise). ``terminal`` is the order facts its terminal holds (shared by two instances
    that trade one account); ``sends`` every order it sent to that terminal."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, name: str, *,
                 incarnation: str = "1", keys: tuple[str, ...] = ("*",),
                 terminal: dict[str, OrderFacts] | None = None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.connect(endpoint)
        self.name, self.incarnation, self.keys = name, incarnation, keys
        self.terminal: dict[str, OrderFacts] = {} if terminal is None else terminal
        self.sends: list[str] = []
        self.log: list[tuple[str, Any]] = []  # ("synced", epoch) and ("execute", order id)
        self.epochs: dict[str, int] = {}  # keys held, with the epoch
        self.pinging = True
        self.repeat = 1  # FACTS sent this many times per answer
        self.answer: Callable[[Execute], OrderFacts] = self.default_answer
        self._ticket = 1000
        self._tasks: list[asyncio.Task[None]] = []

    def default_answer(self, ex: Execute) -> OrderFacts:
        if ex.price == 0:  # market: one deal at the ask
            return OrderFacts(ex.order_id, FactStatus.FILLED, self.ticket(), 0.0, 10009,
                              (Deal(self.ticket(), ex.quantity, ASK, 1),))
        return OrderFacts(ex.order_id, FactStatus.WORKING, self.ticket(), ex.price, 10008)

    def ticket(self) -> int:
        self._ticket += 1
        return self._ticket

    async def start(self) -> Peer:
        self.send(Hello(self.name, self.incarnation, self.keys, 1))
        self._tasks = [asyncio.create_task(self._pinger()), asyncio.create_task(self._reader())]
        return self

    async def stop(self, bye: bool = False) -> None:
        if bye:
            self.send(Bye(self.name, self.incarnation))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.close(linger=0)

    def send(self, msg: EaMessage) -> None:
        self.sock.send_multipart(encode_ea(msg), flags=zmq.NOBLOCK)

    def facts(self, *order_ids: str, sync: bool = False) -> None:
        key = next(iter(self.epochs), self.keys[0])
        self.send(Facts(self.name, key, self.epochs.get(key, 0),
                        tuple(self.terminal[o] for o in order_ids), sync))

    def deal(self, order_id: str, volume: float, price: float, *, done: bool = False,
             report: bool = True) -> None:
        """A deal at the terminal (a resting order trades); reported unasked."""
        f = self.terminal[order_id]
        self.terminal[order_id] = dataclasses.replace(
            f, status=FactStatus.FILLED if done else FactStatus.WORKING,
            deals=(*f.deals, Deal(self.ticket(), volume, price, 2)))
        if report:
            self.facts(order_id)

    async def _pinger(self) -> None:
        n = 0
        while True:
            if self.pinging:
                self.send(Ping(self.name, self.incarnation, n))
                n += 1
            await asyncio.sleep(0.02)

    async def _reader(self) -> None:
        while True:
            self.handle(decode_ea(await self.sock.recv_multipart()))

    def handle(self, msg: EaMessage) -> None:
        match msg:
            case Lease():
                if not msg.grants:  # the executor does not know this incarnation
                    self.send(Hello(self.name, self.incarnation, self.keys, 1))
                for g in msg.grants:
                    if g.active and self.epochs.get(g.key) != g.epoch:
                        self.epochs[g.key] = g.epoch
                        mine = tuple(self.terminal)
                        if mine:
                            self.send(Facts(self.name, g.key, g.epoch,
                                            tuple(self.terminal[o] for o in mine), True))
                        self.send(Synced(self.name, g.key, g.epoch, len(mine)))
                        self.log.append(("synced", g.epoch))
                    elif not g.active:
                        self.epochs.pop(g.key, None)
            case Execute():
                self.log.append(("execute", msg.order_id))
                if self.epochs.get(msg.key) != msg.epoch:
                    self.send(Refused(self.name, msg.order_id, msg.epoch,
                                      RefusedWhy.NOT_ACTIVE))
                    return
                if msg.order_id not in self.terminal:
                    self.terminal[msg.order_id] = self.answer(msg)
                    self.sends.append(msg.order_id)
                for _ in range(self.repeat):
                    self.facts(msg.order_id)
            case Cancel():
                f = self.terminal[msg.order_id]
                if f.status is FactStatus.WORKING:
                    self.terminal[msg.order_id] = dataclasses.replace(
                        f, status=FactStatus.CANCELLED, retcode=10009)
                self.facts(msg.order_id)
            case Modify():
                f = self.terminal[msg.order_id]
                self.terminal[msg.order_id] = dataclasses.replace(f, price=msg.price)
                self.facts(msg.order_id)
            case _:
                raise AssertionError(f"an EA instance got {msg}")


@contextlib.asynccontextmanager
async def ea_pair(redis: RedisProcess, **orders: Any) -> AsyncIterator[tuple[Pair, str]]:
    """The pair and the real executor in bridge mode, with the desk's endpoint."""
    async with pair(redis, real_executor=True, orders={**EA, **orders}) as p:
        assert p.executor is not None and p.executor.desk is not None
        await wait_active(p.node(Role.PRIMARY))
        yield p, p.executor.desk.endpoint


@contextlib.asynccontextmanager
async def peer(p: Pair, endpoint: str, name: str = "ea-1", **kw: Any) -> AsyncIterator[Peer]:
    ea = await Peer(p.ctx, endpoint, name, **kw).start()
    try:
        yield ea
    finally:
        await ea.stop()


async def stored(p: Pair, order_id: str, state: OrderState | None = None,
                 timeout: float = 5.0, price: float | None = None
                 ) -> tuple[Order, list[ExecutionReport]]:
    """The order's record (once in ``state``, at ``price``: Redis is written behind the
    pair) and its log."""
    store = RedisOrderStore(p.cfg.redis.url, "bk")
    try:
        async def got() -> Order | None:
            o = await store.get(order_id)
            if o is None or (state is not None and o.state is not state) or \
                    (price is not None and o.price != price):
                return None
            return o
        record = await wait_until(got, timeout, f"{order_id} {state} {price}", interval=0.02)
        return record, await store.executions(order_id)
    finally:
        await store.close()


async def synced(ea: Peer) -> None:
    await wait_until(lambda: ea.epochs, 3, f"{ea.name} holds a key")


def test_the_eas_facts_become_the_orders_log(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with ea_pair(redis_server) as (p, endpoint), peer(p, endpoint) as ea, \
                OrderClient(both_backends(p)) as client:
            assert p.executor is not None
            stats = p.executor.stats
            await synced(ea)
            # A market order filled by the terminal, its facts sent three times: one fill.
            ea.repeat = 3
            ack = await client.place(order("m1", qty=2.0))
            record, xlog = await stored(p, ack.order_id, OrderState.FILLED)
            assert [(e.state, e.last_quantity, e.last_price) for e in xlog] == [
                (OrderState.FILLED, 2.0, ASK)]
            assert ea.sends == [ack.order_id] and record.avg_price == ASK
            await wait_until(lambda: stats.ea_facts >= 3, 2, "three facts taken")
            ea.repeat = 1
            # A resting limit order: a partial deal, then the rest.
            rest = await client.place(order("l1", qty=2.0, price=1.07))
            await wait_until(lambda: rest.order_id in ea.terminal, 2, "at the terminal")
            ea.deal(rest.order_id, 0.5, 1.07)
            await stored(p, rest.order_id, OrderState.PARTIALLY_FILLED)
            ea.deal(rest.order_id, 1.5, 1.07, done=True)
            _, xlog = await stored(p, rest.order_id, OrderState.FILLED)
            assert [e.last_quantity for e in xlog] == [0.5, 1.5]
            # The terminal refuses one: REJECTED, VENUE_REJECTED, counted by retcode.
            ea.answer = lambda ex: OrderFacts(ex.order_id, FactStatus.REJECTED, 0, 0.0, 10019)
            bad = await client.place(order("r1"))
            _, xlog = await stored(p, bad.order_id, OrderState.REJECTED)
            assert [(e.state, e.reason) for e in xlog] == [
                (OrderState.REJECTED, RejectReason.VENUE_REJECTED)]
            assert stats.venue_rejects == {"10019": 1}
            ea.answer = ea.default_answer
            # A resting order cancelled: CANCEL to the EA, CANCELLED without a venue reason.
            live = await client.place(order("l2", price=1.07))
            await wait_until(lambda: live.order_id in ea.terminal, 2, "at the terminal")
            await client.cancel(CancelOrder("acc", "c-l2", "l2"))
            _, xlog = await stored(p, live.order_id, OrderState.CANCELLED)
            assert [(e.state, e.reason) for e in xlog] == [(OrderState.CANCELLED, 0)]
            # A price replace: MODIFY, the terminal's new price, the replace entry.
            moved = await client.place(order("l3", qty=2.0, price=1.07))
            await wait_until(lambda: moved.order_id in ea.terminal, 2, "at the terminal")
            await client.replace(ReplaceOrder("acc", "p-l3", "l3", 2.0, 1.06))
            record, xlog = await stored(p, moved.order_id, price=1.06)
            assert ea.terminal[moved.order_id].price == 1.06
            assert [(e.is_replace, e.client_order_id) for e in xlog] == [(True, "p-l3")]
            # A quantity replace: refused at once, nothing sent.
            with pytest.raises(OrderRejected) as refused:
                await client.replace(ReplaceOrder("acc", "q-l3", "l3", 3.0, 1.06))
            assert refused.value.reason is RejectReason.BAD_QUANTITY
            assert "volume" in refused.value.reject.message
            # A deal the log cannot take (no price): counted, the executor serves on.
            odd = await client.place(order("l4", price=1.07))
            await wait_until(lambda: odd.order_id in ea.terminal, 2, "at the terminal")
            ea.deal(odd.order_id, 0.5, 0.0)
            await wait_until(lambda: stats.ea_bad_facts == 1, 2, "bad facts counted")
            # Facts for an order the store does not know: counted, nothing appended.
            ea.terminal["nope"] = OrderFacts("nope", FactStatus.FILLED, 1, 0.0, 0,
                                             (Deal(1, 1.0, ASK, 1),))
            ea.facts("nope")
            await wait_until(lambda: stats.ea_unknown == 1, 2, "an unknown order counted")
            assert len(ea.sends) == len(set(ea.sends)) == 6  # each order sent once
            record, _ = await stored(p, odd.order_id)
            assert record.state is OrderState.ROUTED
            assert stats.fills == 3 and stats.ea_overfill == 0
    run(main())


def test_a_restarted_instance_reconciles_a_fill_the_log_lacks(
        redis_server: RedisProcess) -> None:
    """The terminal filled a resting order while its EA was down: the restarted instance's
    reconciliation facts (sent twice) append the fill once, and it is sent nothing before it
    said SYNCED."""
    async def main() -> None:
        async with ea_pair(redis_server) as (p, endpoint), \
                OrderClient(both_backends(p)) as client:
            assert p.executor is not None
            async with peer(p, endpoint) as first:
                await synced(first)
                ack = await client.place(order("rc", qty=1.0, price=1.07))
                await wait_until(lambda: ack.order_id in first.terminal, 2, "at the terminal")
                terminal = first.terminal
            # Killed (no BYE); the terminal trades meanwhile.
            first.deal(ack.order_id, 1.0, 1.07, done=True, report=False)
            async with peer(p, endpoint, incarnation="2", terminal=terminal) as second:
                await synced(second)
                second.facts(ack.order_id, sync=True)  # and once more
                _, xlog = await stored(p, ack.order_id, OrderState.FILLED)
                assert [e.last_quantity for e in xlog] == [1.0]
                assert second.epochs == {"*": 2}
                assert first.sends == [ack.order_id] and second.sends == []
                # The re-sent EXECUTE of the open order came after SYNCED.
                assert second.log[0] == ("synced", 2)
    run(main())


def test_no_instance_holds_then_rejects_and_a_late_one_executes(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with ea_pair(redis_server, ea_hold_ms=300.0) as (p, endpoint), \
                OrderClient(both_backends(p)) as client:
            assert p.executor is not None
            ack = await client.place(order("h1"))
            executor = p.executor
            await wait_until(lambda: executor.collect()["ea"]["held"] == 1, 2, "held")
            _, xlog = await stored(p, ack.order_id, OrderState.REJECTED)
            assert [(e.state, e.reason) for e in xlog] == [
                (OrderState.REJECTED, RejectReason.NO_EXECUTOR)]
            assert p.executor.stats.ea_no_executor == 1
            # Within the deadline an instance appears: the held order is executed.
            late = await client.place(order("h2"))
            async with peer(p, endpoint) as ea:
                _, xlog = await stored(p, late.order_id, OrderState.FILLED)
                assert ea.sends == [late.order_id]
    run(main())


def test_a_standby_takes_over_after_the_active_one_stops_pinging(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with ea_pair(redis_server) as (p, endpoint), \
                OrderClient(both_backends(p)) as client:
            assert p.executor is not None
            terminal: dict[str, OrderFacts] = {}  # one account at the broker: one record
            async with peer(p, endpoint, "ea-a", terminal=terminal) as a:
                await synced(a)
                async with peer(p, endpoint, "ea-b", terminal=terminal) as b:
                    first = await client.place(order("t1"))
                    await stored(p, first.order_id, OrderState.FILLED)
                    resting = await client.place(order("t0", price=1.07))
                    await wait_until(lambda: resting.order_id in terminal, 2, "at the terminal")
                    await asyncio.sleep(scaled(0.05))  # b pings a while as a standby
                    assert a.sends == [first.order_id, resting.order_id]
                    assert b.log == [] and not b.epochs
                    a.pinging = False  # silent: its lease runs out, then the guard
                    await synced(b)
                    assert b.epochs == {"*": 2}
                    after = await client.place(order("t2"))
                    await stored(p, after.order_id, OrderState.FILLED)
                    assert b.sends == [after.order_id]  # the resting one is at the terminal
                    assert a.sends == [first.order_id, resting.order_id]
                    # Nothing before SYNCED; then the open order again, and the new one.
                    assert b.log[0] == ("synced", 2)
                    assert {("execute", resting.order_id), ("execute", after.order_id)} <= \
                        set(b.log)
                    assert ("execute", after.order_id) not in a.log
                    assert p.executor.collect()["ea"]["takeovers"] == 1
    run(main())


def test_a_restarted_executor_takes_a_new_epoch_and_converges(
        redis_server: RedisProcess) -> None:
    """The executor restarts while a resting order trades at the terminal: the new process
    knows no instance (its empty LEASE asks for a HELLO), grants the key under the next epoch
    from Redis (never the old one), and the holder's reconciliation and the backend's
    re-drive bring the order's log up to the terminal's record, each order sent once."""
    async def main() -> None:
        async with ea_pair(redis_server) as (p, endpoint), peer(p, endpoint) as ea, \
                OrderClient(both_backends(p)) as client:
            first, stop_first = p.executor, p.executor_stop
            assert first is not None and stop_first is not None
            await synced(ea)
            rest = await client.place(order("x1", qty=1.0, price=1.07))
            await wait_until(lambda: rest.order_id in ea.terminal, 2, "at the terminal")
            done = await client.place(order("x2"))
            await stored(p, done.order_id, OrderState.FILLED)
            stop_first.set()
            await wait_until(lambda: first.ctx.closed, 5, "the first executor stopped")
            ea.deal(rest.order_id, 1.0, 1.07, done=True, report=False)
            cfg = dataclasses.replace(p.cfg, orders=dataclasses.replace(p.cfg.orders,
                                                                        ea_bind=endpoint))
            second = ExecutorNode(cfg, name="executor", backends=(
                p.ends[Role.PRIMARY].executor, p.ends[Role.BACKUP].executor))
            stop = asyncio.Event()
            task = asyncio.create_task(second.run(stop))
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            try:
                _, xlog = await stored(p, rest.order_id, OrderState.FILLED)
                assert [e.last_quantity for e in xlog] == [1.0]
                assert ea.epochs == {"*": 2}
                assert await store.redis.get("bk:ea:epoch:*") == b"2"
                assert sorted(ea.sends) == sorted([rest.order_id, done.order_id])
                assert second.stats.fills == 1 and second.stats.ea_unknown == 0
            finally:
                stop.set()
                await task
                await store.close()
    run(main())
