"""The executor node against a real redis-server and fake backends (ROUTERs in the test)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq
import zmq.asyncio

from bus.config import MeshConfig, MeshSection, RedisSection
from bus.order_store import RedisOrderStore
from bus.store import CheckpointRun, RedisTickStore
from nodes.executor import ExecutorNode, RedisFillLog, decide, fill_report, usable_quote
from nodes.servers import RedisProcess, free_port
from protocols.order_codec import decode_order, encode_order
from protocols.orders import (
    ExecutionReport,
    NewOrder,
    Order,
    OrderState,
    OrderType,
    Side,
)
from tests.support import scaled, wait_until

pytestmark = pytest.mark.timeout(30)

PREFIX = "ex"
BID, ASK = 1.1000, 1.1002


def routed(order_id: str, side: Side = Side.BUY, type_: OrderType = OrderType.MARKET,
           price: float | None = None, quantity: float = 2.0,
           symbol: str = "EURUSD") -> Order:
    """An order as the backend routes it: NEW -> ACCEPTED -> ROUTED through Order.apply."""
    new = NewOrder("acc", f"c-{order_id}", symbol, side, type_, quantity, price, sent_ns=1)
    order = Order.from_new(order_id, new, epoch=1, now_ns=1)
    for n, state in enumerate((OrderState.ACCEPTED, OrderState.ROUTED), start=2):
        report = order.status_report(state, exec_id=f"{order_id}:b{n}", epoch=1)
        order = order.apply(report, epoch=1, now_ns=n)
    return order


class FakeBackend:
    """A backend's "executor" ROUTER: sends Order records, collects ExecutionReports."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown executor: EHOSTUNREACH
        # As nodes/backend.py: a restarted executor reconnects under the same routing id.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.sock.bind(self.endpoint)

    async def send(self, frames: list[bytes], to: bytes = b"executor") -> None:
        """Send once the executor's DEALER has connected (its routing id is known)."""
        async def attempt() -> bool:
            try:
                await self.sock.send_multipart([to, *frames], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                return False
            return True
        async with asyncio.timeout(scaled(3)):
            while not await attempt():
                await asyncio.sleep(0.005)

    async def order(self, order: Order) -> None:
        await self.send(encode_order(order))

    async def report(self, timeout: float = 2.0) -> ExecutionReport:
        async with asyncio.timeout(scaled(timeout)):
            ident, *frames = await self.sock.recv_multipart()
        assert ident == b"executor"
        msg = decode_order(frames)
        assert isinstance(msg, ExecutionReport)
        return msg

    async def nothing(self, timeout: float = 0.15) -> bool:
        """True if no message arrives within ``timeout``: used only to check an absence."""
        return not await self.sock.poll(int(scaled(timeout) * 1000))


@dataclass
class Rig:
    cfg: MeshConfig
    backends: list[FakeBackend]
    ticks: RedisTickStore
    orders: RedisOrderStore
    seq: dict[str, int] = field(default_factory=dict)
    nodes: list[ExecutorNode] = field(default_factory=list)

    async def tick(self, bid: float, ask: float, symbol: str = "EURUSD") -> None:
        seq = self.seq.get(symbol, 0) + 1
        self.seq[symbol] = seq
        await self.ticks.write([CheckpointRun(symbol, 1, seq, [(bid, ask, 0.0, 1.0, seq, seq)])],
                               10_000)

    @contextlib.asynccontextmanager
    async def executor(self, **options: Any) -> AsyncIterator[ExecutorNode]:
        node = ExecutorNode(self.cfg, backends=tuple(b.endpoint for b in self.backends),
                            poll_s=0.01, **options)
        self.nodes.append(node)
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        try:
            yield node
        finally:
            stop.set()
            async with asyncio.timeout(scaled(5)):
                assert await task == 0


def run(redis: RedisProcess, body: Callable[[Rig], Awaitable[None]],
        backends: int = 2) -> None:
    async def main() -> None:
        cfg = MeshConfig(mesh=MeshSection(key_prefix=PREFIX), redis=RedisSection(url=redis.url))
        ctx = zmq.asyncio.Context()
        fakes = [FakeBackend(ctx) for _ in range(backends)]
        ticks = RedisTickStore(redis.url, PREFIX)
        orders = RedisOrderStore(redis.url, PREFIX)
        await ticks.start_session("f", 1, ["EURUSD", "GBPUSD"], 1000)
        try:
            await body(Rig(cfg, fakes, ticks, orders))
        finally:
            for fake in fakes:
                fake.sock.close(linger=0)
            ctx.term()
            await ticks.close()
            await orders.close()
    asyncio.run(main())


def assert_applies(order: Order, report: ExecutionReport, state: OrderState) -> Order:
    """The backend can apply the report to its record."""
    after = order.apply(report, epoch=1, now_ns=10)
    assert after.state is state
    return after


# --- the decision, without I/O ---------------------------------------------------------------


@pytest.mark.parametrize(("side", "type_", "price", "quote", "expect"), [
    (Side.BUY, OrderType.MARKET, None, (BID, ASK), ASK),
    (Side.SELL, OrderType.MARKET, None, (BID, ASK), BID),
    (Side.BUY, OrderType.MARKET, None, None, "reject"),
    (Side.BUY, OrderType.LIMIT, ASK, (BID, ASK), ASK),
    (Side.BUY, OrderType.LIMIT, 1.1001, (BID, ASK), None),
    (Side.SELL, OrderType.LIMIT, BID, (BID, ASK), BID),
    (Side.SELL, OrderType.LIMIT, 1.1001, (BID, ASK), None),
    (Side.SELL, OrderType.LIMIT, 1.1001, None, None),
])
def test_decide_table(side: Side, type_: OrderType, price: float | None,
                      quote: tuple[float, float] | None, expect: float | str | None) -> None:
    order = routed("o1", side, type_, price)
    report = decide(order, quote, 5)
    if expect is None:
        assert report is None
    elif expect == "reject":
        assert report is not None and report.state is OrderState.REJECTED
        assert report.exec_id == "o1:rej"
        assert_applies(order, report, OrderState.REJECTED)
    else:
        assert report is not None and report.state is OrderState.FILLED
        assert (report.last_price, report.last_quantity, report.exec_id) == (expect, 2.0, "o1:1")
        assert assert_applies(order, report, OrderState.FILLED).avg_price == expect


def test_usable_quote() -> None:
    assert usable_quote(1.0, 1.1) == (1.0, 1.1)
    for bid, ask in ((0.0, 1.0), (1.2, 1.1), (float("nan"), 1.0), (1.0, float("inf"))):
        assert usable_quote(bid, ask) is None


# --- the node --------------------------------------------------------------------------------


def test_market_buy_fills_at_ask_and_sell_at_bid(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            buy, sell = routed("b1", Side.BUY), routed("s1", Side.SELL)
            await rig.backends[0].order(buy)
            got = await rig.backends[0].report()
            assert (got.state, got.last_price, got.filled_quantity) == (OrderState.FILLED, ASK,
                                                                         2.0)
            assert_applies(buy, got, OrderState.FILLED)
            await rig.backends[1].order(sell)
            got = await rig.backends[1].report()
            assert (got.state, got.last_price, got.exec_id) == (OrderState.FILLED, BID, "s1:1")
            assert node.stats.fills == 2 and node.stats.orders == 2
            assert await rig.orders.redis.smembers(f"{PREFIX}:executed:b1") == {b"b1:1"}
    run(redis_server, body)


def test_no_market_data_rejects(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        async with rig.executor() as node:
            order = routed("r1", symbol="GBPUSD")
            await rig.backends[0].order(order)
            got = await rig.backends[0].report()
            assert got.state is OrderState.REJECTED and got.exec_id == "r1:rej"
            assert_applies(order, got, OrderState.REJECTED)
            assert node.stats.rejects == 1
            # The decision is final: a later tick does not turn a re-drive into a fill.
            await rig.tick(BID, ASK, "GBPUSD")
            await rig.backends[0].order(order)
            assert await rig.backends[0].report() == got
            assert node.stats.replays == 1 and node.stats.fills == 0
    run(redis_server, body)


def test_marketable_limit_fills_at_once(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            order = routed("l1", Side.BUY, OrderType.LIMIT, 1.1005)
            await rig.backends[0].order(order)
            got = await rig.backends[0].report()
            assert (got.state, got.last_price) == (OrderState.FILLED, 1.1005)
            assert node.stats.resting == 0
    run(redis_server, body)


def test_limit_rests_until_a_tick_makes_it_marketable(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            order = routed("l2", Side.SELL, OrderType.LIMIT, 1.1010)
            await rig.backends[0].order(order)
            await wait_until(lambda: node.stats.resting == 1, 2, "the order to rest")
            assert await rig.backends[0].nothing()
            # Re-driven by the other backend while it rests: not doubled, answered there.
            await rig.backends[1].order(order)
            await wait_until(lambda: node._resting["l2"].socket == 1, 2, "the re-drive")
            assert node.stats.resting == 1
            await rig.tick(1.1010, 1.1012)
            got = await rig.backends[1].report()
            assert (got.state, got.last_price) == (OrderState.FILLED, 1.1010)
            assert node.stats.resting == 0 and node.stats.fills == 1
            assert await rig.backends[0].nothing()
    run(redis_server, body)


def test_same_order_twice_executes_once(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            order = routed("d1")
            await rig.backends[0].order(order)
            first = await rig.backends[0].report()
            await rig.tick(1.2, 1.3)  # a replay must not re-price
            await rig.backends[0].order(order)
            assert await rig.backends[0].report() == first
            assert (node.stats.fills, node.stats.replays) == (1, 1)
            assert await rig.orders.redis.smembers(f"{PREFIX}:executed:d1") == {b"d1:1"}
    run(redis_server, body)


def test_failover_redrive_from_other_backend(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            order = routed("f1", Side.SELL)
            await rig.backends[0].order(order)
            first = await rig.backends[0].report()
            await rig.backends[1].order(order)
            assert await rig.backends[1].report() == first
            assert await rig.backends[0].nothing()
            assert (node.stats.fills, node.stats.replays) == (1, 1)
    run(redis_server, body)


def test_restarted_executor_does_not_execute_again(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        order = routed("x1")
        async with rig.executor():
            await rig.backends[0].order(order)
            first = await rig.backends[0].report()
        await rig.tick(1.2, 1.3)
        async with rig.executor() as node:  # empty memory: the answer comes from Redis
            await rig.backends[1].order(order)
            assert await rig.backends[1].report() == first
            assert (node.stats.fills, node.stats.replays) == (0, 1)
        assert await rig.orders.redis.smembers(f"{PREFIX}:executed:x1") == {b"x1:1"}
    run(redis_server, body)


def test_malformed_frames_are_counted_and_serving_goes_on(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            backend = rig.backends[0]
            header = encode_order(routed("m0"))[0]
            await backend.send([b"junk"])
            await backend.send([header, b"\xc1not msgpack"])
            await backend.send(encode_order(routed("m0").status_report(
                OrderState.ACCEPTED, exec_id="m0:a", epoch=1)))  # a report is not an Order
            await wait_until(lambda: node.stats.malformed == 3, 2, "three malformed frames")
            await backend.order(routed("m1"))
            got = await backend.report()
            assert got.order_id == "m1" and got.state is OrderState.FILLED
            assert node.stats.orders == 1
    run(redis_server, body)


def test_decision_logged_but_not_recorded_completes(redis_server: RedisProcess) -> None:
    """A crash between the fill log and record_execution: the next arrival records it, with
    the logged price (not today's)."""
    async def body(rig: Rig) -> None:
        await rig.tick(1.2, 1.3)
        order = routed("c1")
        logged = fill_report(order, ASK, 7)
        await RedisFillLog(rig.orders.redis, PREFIX).put_first(logged)
        async with rig.executor() as node:
            await rig.backends[0].order(order)
            assert await rig.backends[0].report() == logged
            assert (node.stats.fills, node.stats.replays) == (1, 0)
        assert await rig.orders.redis.smembers(f"{PREFIX}:executed:c1") == {b"c1:1"}
    run(redis_server, body)


def test_store_down_leaves_the_order_unanswered_and_serving_goes_on(
        redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            await asyncio.to_thread(redis_server.stop)
            order = routed("u1")
            await rig.backends[0].order(order)
            await wait_until(lambda: node.stats.store_errors == 1, 3, "a store error")
            assert await rig.backends[0].nothing()
            assert node.stats.fills == 0
            # Redis back (AOF kept the tick): the backend's re-drive is executed.
            await asyncio.to_thread(redis_server.start)
            await rig.backends[0].order(order)
            got = await rig.backends[0].report()
            assert (got.state, got.last_price) == (OrderState.FILLED, ASK)
            assert node.stats.fills == 1
    run(redis_server, body)


def test_resting_orders_are_bounded_one_more_is_rejected(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor(max_resting=1) as node:
            await rig.backends[0].order(routed("q1", Side.BUY, OrderType.LIMIT, 1.0))
            await wait_until(lambda: node.stats.resting == 1, 2, "the first order to rest")
            await rig.backends[0].order(routed("q2", Side.BUY, OrderType.LIMIT, 1.0))
            got = await rig.backends[0].report()
            assert (got.order_id, got.state) == ("q2", OrderState.REJECTED)
            assert node.stats.resting == 1 and node.stats.rejects == 1
    run(redis_server, body)


def test_order_id_too_long_for_an_exec_id_is_malformed(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            await rig.backends[0].order(routed("x" * 61, Side.BUY, OrderType.LIMIT, 1.0))
            await wait_until(lambda: node.stats.malformed == 1, 2, "the order refused")
            assert node.stats.resting == 0
            await rig.backends[0].order(routed("ok"))
            assert (await rig.backends[0].report()).order_id == "ok"
    run(redis_server, body)


def cancel_request(order: Order) -> ExecutionReport:
    """What the backend sends to cancel: a CANCELLED report for the order."""
    return order.status_report(OrderState.CANCELLED, exec_id=f"{order.order_id}:cxl", epoch=1)


def test_cancel_after_the_fill_answers_the_fill(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            order = routed("x1")
            await rig.backends[0].order(order)
            fill = await rig.backends[0].report()
            await rig.backends[0].send(encode_order(cancel_request(order)))
            assert await rig.backends[0].report() == fill  # the fill won: it is the outcome
            assert (node.stats.fills, node.stats.cancels) == (1, 0)
    run(redis_server, body)


def test_cancel_before_the_order_arrives_wins(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            order = routed("x2")
            # The cancel overtakes the order (e.g. the order is re-driven after a failover).
            await rig.backends[0].send(encode_order(cancel_request(order)))
            cancelled = await rig.backends[0].report()
            assert cancelled.state is OrderState.CANCELLED
            await rig.backends[1].order(order)
            assert await rig.backends[1].report() == cancelled  # never executed
            assert (node.stats.fills, node.stats.cancels) == (0, 1)
    run(redis_server, body)


def test_cancel_of_a_resting_order_removes_it(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            order = routed("x3", type_=OrderType.LIMIT, price=BID - 0.01)
            await rig.backends[0].order(order)
            await wait_until(lambda: node.stats.resting == 1, 3, "the order resting")
            await rig.backends[0].send(encode_order(cancel_request(order)))
            assert (await rig.backends[0].report()).state is OrderState.CANCELLED
            await rig.tick(BID - 0.03, BID - 0.02)  # would have filled it
            assert await rig.backends[0].nothing()
            assert node.stats.resting == 0 and node.stats.fills == 0
    run(redis_server, body)
