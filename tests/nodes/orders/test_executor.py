"""The executor node against a real redis-server and fake backends (ROUTERs in the test)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq
import zmq.asyncio

from bus.aio import cancel_and_wait
from bus.config import MeshConfig, MeshSection, RedisSection
from bus.sockets import recv_batch
from bus.store.orders import RedisOrderStore
from bus.store.ticks import CheckpointRun, RedisTickStore
from nodes.drills.ports import bind_loopback
from nodes.orders.executor import ExecutorNode
from nodes.servers.redis_server import RedisProcess
from protocols.orders.codec import decode_order, encode_order
from protocols.orders.execution import decide
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelRequest,
    EntryRefusal,
    EntryRefused,
    ExecutionReport,
    OrderAck,
    OrderType,
    RejectReason,
    ReplaceRefused,
    ReplaceRequest,
    Side,
)
from protocols.orders.record import TAKEN, Order, Refusal, judge_entry
from tests.protocols.orders.test_execution import assert_applies, routed
from tests.support import scaled, wait_until

pytestmark = pytest.mark.timeout(30)

PREFIX = "ex"
BID, ASK = 1.1000, 1.1002


@dataclass
class Authority:
    """What the active backend of a pair decides the executor's log with, shared by the fake
    backends (one pair, one log): its records (newest seen: sent, or decided here; else the
    store's) and a store the decided entries are written to with their records."""

    store: RedisOrderStore
    records: dict[str, Order] = field(default_factory=dict)
    calls: list[list[ExecutionReport]] = field(default_factory=list)  # decided, per write
    delay_s: float = 0.0  # each write takes this long (a slow pair)

    def know(self, order: Order) -> None:
        known = self.records.get(order.order_id)
        if known is None or order.exec_seq >= known.exec_seq:
            self.records[order.order_id] = order

    async def decide(self, proposals: Sequence[ExecutionReport]
                     ) -> list[ExecutionReport | EntryRefused]:
        """Each proposal's answer, as ``BackendNode._decide_entries`` gives it."""
        changed: dict[str, Order] = {}
        decided: list[ExecutionReport] = []
        verdicts = []
        for entry in proposals:
            oid = entry.order_id
            record = (changed.get(oid) or self.records.get(oid)
                      or await self.store.get(oid))
            verdict = judge_entry(record, entry, epoch=1, now_ns=time.time_ns())
            if isinstance(verdict, Order):
                changed[oid] = verdict
                decided.append(entry)
            verdicts.append(verdict)
        if decided:
            self.calls.append(decided)
            await asyncio.sleep(self.delay_s)  # the delay is the fault injected, not a wait
            await self.store.write_batch(list(changed.values()), 1, decided)
            self.records.update(changed)
        answers: list[ExecutionReport | EntryRefused] = []
        for entry, verdict in zip(proposals, verdicts, strict=True):
            if isinstance(verdict, Order):
                answers.append(entry)
            elif verdict == TAKEN:
                answers.append((await self.store.executions(entry.order_id, entry.seq - 1))[0])
            else:
                assert isinstance(verdict, Refusal)
                answers.append(EntryRefused(entry.order_id, entry.seq, verdict.reason))
        return answers


class FakeBackend:
    """A backend's "executor" ROUTER: sends Order records and requests, and answers the
    executor's proposed log entries as the active node of the pair would (``authority``), or
    with NOT_ACTIVE while ``active`` is False. ``lose``: "proposals" drops them unanswered (a
    backend that died), "answers" decides them and drops the answers (one that died right
    after). ``message()`` returns what it answered with (the entry that holds each proposed
    position) and the executor's ReplaceRefused."""

    def __init__(self, ctx: zmq.asyncio.Context, authority: Authority) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown executor: EHOSTUNREACH
        # As nodes/orders/backend.py: a restarted executor reconnects under the same routing id.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.endpoint = bind_loopback(self.sock)
        self.authority = authority
        self.active = True
        self.lose = ""
        self.nodes: list[ExecutorNode] = []  # whose decisions message() waits for
        self.refused: list[EntryRefused] = []
        self._inbox: asyncio.Queue[ExecutionReport | ReplaceRefused] = asyncio.Queue()

    async def serve(self) -> None:
        """Task: answer every batch of proposals queued on the socket, keep the rest."""
        while True:
            proposals: list[ExecutionReport] = []
            for ident, *frames in await recv_batch(self.sock, 256):
                assert ident == b"executor"
                msg = decode_order(frames)
                if isinstance(msg, ExecutionReport):
                    proposals.append(msg)
                else:
                    assert isinstance(msg, ReplaceRefused), msg
                    self._inbox.put_nowait(msg)
            if self.lose == "proposals":
                continue
            if not self.active:
                answers: list[ExecutionReport | EntryRefused] = [
                    EntryRefused(p.order_id, p.seq, EntryRefusal.NOT_ACTIVE) for p in proposals]
            else:
                answers = await self.authority.decide(proposals)
            for answer in answers:
                if self.lose == "answers":
                    continue
                await self.sock.send_multipart([b"executor", *encode_order(answer)])
                if isinstance(answer, EntryRefused):
                    self.refused.append(answer)
                else:
                    self._inbox.put_nowait(answer)

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
        await wait_until(attempt, 3, "the executor connected")

    async def order(self, order: Order) -> None:
        self.authority.know(order)
        await self.send(encode_order(order))

    async def message(self, timeout: float = 2.0) -> ExecutionReport | ReplaceRefused:
        """The next answer (or refusal of a replace), once the executors took what they were
        answered (their counts are then up to date)."""
        async with asyncio.timeout(scaled(timeout)):
            msg = await self._inbox.get()
        await wait_until(lambda: all(not n._deciding.locked() and not any(n._inboxes)
                                     for n in self.nodes), timeout, "the executor idle")
        return msg

    async def report(self, timeout: float = 2.0) -> ExecutionReport:
        msg = await self.message(timeout)
        assert isinstance(msg, ExecutionReport), msg
        return msg

    async def reports(self, count: int, timeout: float = 3.0) -> list[ExecutionReport]:
        return [await self.report(timeout) for _ in range(count)]

    async def nothing(self, timeout: float = 0.15) -> bool:
        """True if nothing arrives within ``timeout``: used only to check an absence."""
        await asyncio.sleep(scaled(timeout))
        return self._inbox.empty()


@dataclass
class Rig:
    cfg: MeshConfig
    backends: list[FakeBackend]
    ticks: RedisTickStore
    orders: RedisOrderStore
    seq: dict[str, int] = field(default_factory=dict)
    nodes: list[ExecutorNode] = field(default_factory=list)

    async def stored(self, order: Order) -> None:
        """Write ``order`` as the active backend would (the executor reads unknown orders)."""
        await self.orders.write(order, 1)

    async def tick(self, bid: float, ask: float, symbol: str = "EURUSD") -> None:
        seq = self.seq.get(symbol, 0) + 1
        self.seq[symbol] = seq
        await self.ticks.write([CheckpointRun(symbol, 1, seq, [(bid, ask, 0.0, 1.0, seq, seq)])],
                               10_000)

    @contextlib.asynccontextmanager
    async def executor(self, **options: Any) -> AsyncIterator[ExecutorNode]:
        node = ExecutorNode(self.cfg, backends=tuple(b.endpoint for b in self.backends),
                            **{"poll_s": 0.01, **options})
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
        cfg = MeshConfig(mesh=MeshSection(key_prefix=PREFIX),
                         redis=RedisSection(url=redis.url, deadline_ms=300))
        ctx = zmq.asyncio.Context()
        ticks = RedisTickStore(redis.url, PREFIX)
        orders = RedisOrderStore(redis.url, PREFIX)
        assert await orders.acquire_epoch(0) == (True, 1)  # the records' epoch
        fakes = [FakeBackend(ctx, Authority(orders)) for _ in range(backends)]
        for fake in fakes[1:]:
            fake.authority = fakes[0].authority
        serving = [asyncio.create_task(fake.serve()) for fake in fakes]
        await ticks.start_session("f", 1, ["EURUSD", "GBPUSD"], 1000)
        rig = Rig(cfg, fakes, ticks, orders)
        for fake in fakes:
            fake.nodes = rig.nodes
        try:
            await body(rig)
        finally:
            await cancel_and_wait(serving, what="fake backends")
            for fake in fakes:
                fake.sock.close(linger=0)
            ctx.term()
            await ticks.close()
            await orders.close()
    asyncio.run(main())


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
            assert got.state is OrderState.REJECTED and got.exec_id == "r1:1"
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
            await wait_until(lambda: node._working["l2"].socket == 1, 2, "the re-drive")
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
            # It decided afresh, lost the append to the log, and answered the logged fill.
            assert (node.stats.fills, node.stats.conflicts) == (0, 1)
        assert await rig.orders.redis.smembers(f"{PREFIX}:executed:x1") == {b"x1:1"}
    run(redis_server, body)


def test_a_refusal_as_not_active_sends_the_next_proposal_to_the_other_backend(
        redis_server: RedisProcess) -> None:
    """The pair switched: the backend a resting order came from answers NOT_ACTIVE, and the
    next proposal goes to the other one, which decides it: fills go on without waiting for
    the new active node's re-drive."""
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            await rig.backends[0].order(routed("n1", Side.SELL, OrderType.LIMIT, 1.1010))
            await wait_until(lambda: node.stats.resting == 1, 2, "the order to rest")
            rig.backends[0].active = False
            await rig.tick(1.1010, 1.1012)
            got = await rig.backends[1].report()
            assert (got.order_id, got.state) == ("n1", OrderState.FILLED)
            assert [r.reason for r in rig.backends[0].refused] == [EntryRefusal.NOT_ACTIVE]
            assert (node.stats.refused, node.stats.fills, node.stats.resting) == (1, 1, 0)
    run(redis_server, body)


@pytest.mark.parametrize("lose", ["proposals", "answers"])
def test_a_proposal_left_unanswered_is_decided_once(redis_server: RedisProcess,
                                                    lose: str) -> None:
    """No answer within the decision timeout (the backend died before deciding, or right
    after): the order is decided again later, and the pair's answer then is final. A fill
    decided before the answer was lost is the one the log keeps: one fill either way."""
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        backend = rig.backends[0]
        async with rig.executor() as node:
            await backend.order(routed("u1", Side.SELL, OrderType.LIMIT, 1.1010))
            await wait_until(lambda: node.stats.resting == 1, 2, "the order to rest")
            backend.lose = lose
            await rig.tick(1.1010, 1.1012)
            await wait_until(lambda: node.stats.unanswered >= 1, 3, "a proposal unanswered")
            backend.lose = ""
            got = await backend.report() if lose == "proposals" else None
            await wait_until(lambda: node.stats.resting == 0, 3, "the order decided")
            log_ = await rig.orders.executions("u1")
            assert len(log_) == 1 and log_[0].state is OrderState.FILLED
            assert got is None or got == log_[0]
            # Lost answers: the next proposal lost to the fill decided before, now known.
            assert node.stats.fills + node.stats.conflicts == 1
            assert node._done["u1"].entries == log_
    run(redis_server, body, backends=1)


def test_a_backend_that_stops_answering_is_left_for_the_other(
        redis_server: RedisProcess) -> None:
    """The order's backend died before it answered (here: it takes the proposals and never
    answers): the next proposal goes to the other backend, which answers with what the pair
    holds. An order the dead node had already filled is learnt that way (the new active node
    re-drives only open orders), so it does not stay working here."""
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        dead, other = rig.backends
        async with rig.executor() as node:
            await dead.order(routed("z1", Side.SELL, OrderType.LIMIT, 1.1010))
            await wait_until(lambda: node.stats.resting == 1, 2, "the order to rest")
            dead.lose = "answers"  # decides (the pair holds it), then dies unheard
            await rig.tick(1.1010, 1.1012)
            got = await other.report()
            assert (got.order_id, got.state) == ("z1", OrderState.FILLED)
            await wait_until(lambda: node.stats.resting == 0, 3, "the order finished here")
            assert [e.seq for e in await rig.orders.executions("z1")] == [1]
            assert node.stats.unanswered >= 1 and node.stats.fills == 1  # its own, late
    run(redis_server, body)


def test_malformed_frames_are_counted_and_serving_goes_on(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            backend = rig.backends[0]
            header = encode_order(routed("m0"))[0]
            await backend.send([b"junk"])
            await backend.send([header, b"\xc1not msgpack"])
            await backend.send(encode_order(OrderAck("c-m0", "m0", OrderState.ACCEPTED, 1)))
            await wait_until(lambda: node.stats.malformed == 3, 2, "three malformed frames")
            await backend.order(routed("m1"))
            got = await backend.report()
            assert got.order_id == "m1" and got.state is OrderState.FILLED
            assert node.stats.orders == 1
    run(redis_server, body)


def test_a_logged_decision_is_answered_not_decided_again(redis_server: RedisProcess) -> None:
    """An executor that died right after the pair decided its fill, and a stale copy of the
    order (sent before the fill) reaching the next one: it decides afresh, and the pair answers
    the logged fill at the logged price (not today's); nothing new is recorded."""
    async def body(rig: Rig) -> None:
        await rig.tick(1.2, 1.3)
        order = routed("c1")
        logged = decide(order, (BID, ASK), 7)
        assert logged is not None
        filled = order.apply(logged, epoch=1, now_ns=8)
        await rig.orders.write_batch([filled], 1, [logged])
        rig.backends[0].authority.know(filled)
        async with rig.executor() as node:
            await rig.backends[0].order(order)
            assert await rig.backends[0].report() == logged
            assert (node.stats.fills, node.stats.conflicts) == (0, 1)
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


def cancel_request(order: Order) -> CancelRequest:
    """What the backend sends to cancel."""
    return CancelRequest(order.order_id, epoch=1)


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
            await rig.stored(order)
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


def replace_request(order: Order, quantity: float, price: float | None) -> ReplaceRequest:
    """What the backend sends to replace."""
    return ReplaceRequest(order.order_id, f"r-{order.order_id}", quantity, price, epoch=1)


def test_a_cancel_for_an_order_the_store_does_not_know_is_counted(
        redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        async with rig.executor() as node:
            await rig.backends[0].send(encode_order(cancel_request(routed("nobody"))))
            await wait_until(lambda: node.stats.unknown == 1, 2, "the unknown order counted")
            assert await rig.backends[0].nothing()
            msg = replace_request(routed("nobody"), 3.0, None)
            await rig.backends[0].send(encode_order(msg))
            refused = await rig.backends[0].message()
            assert refused == ReplaceRefused("nobody", RejectReason.UNKNOWN_ORDER, "no such order")
    run(redis_server, body)


# --- partial fills ----------------------------------------------------------------------------


def test_a_large_order_fills_in_slices_each_applying_in_order(
        redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor(fill_lots=0.5) as node:
            order = routed("p1")  # 2 lots: four slices of 0.5
            await rig.backends[0].order(order)
            got = await rig.backends[0].reports(4)
            assert [r.seq for r in got] == [1, 2, 3, 4]
            assert [r.state for r in got] == [OrderState.PARTIALLY_FILLED] * 3 + [
                OrderState.FILLED]
            assert [r.last_quantity for r in got] == [0.5] * 4
            for report in got:
                order = order.apply(report, epoch=1, now_ns=5)
            assert (order.state, order.filled_quantity, order.exec_seq) == (OrderState.FILLED,
                                                                            2.0, 4)
            assert node.stats.fills == 4 and node.stats.resting == 0
            executed = await rig.orders.redis.smembers(f"{PREFIX}:executed:p1")
            assert executed == {f"p1:{n}".encode() for n in range(1, 5)}
    run(redis_server, body)


def test_a_redrive_gets_only_the_entries_the_backend_lacks(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor(fill_lots=1.0) as node:
            order = routed("p2")
            await rig.backends[0].order(order)
            first, second = await rig.backends[0].reports(2)
            behind = order.apply(first, epoch=1, now_ns=5)  # the backend missed `second`
            await rig.backends[1].order(behind)
            assert await rig.backends[1].report() == second
            assert await rig.backends[1].nothing()
            assert node.stats.replays == 1
    run(redis_server, body)


def test_a_restarted_executor_finishes_a_partly_filled_order_exactly(
        redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        order = routed("p3")
        async with rig.executor(fill_lots=0.5, poll_s=30):  # one slice, then it dies
            await rig.backends[0].order(order)
            first = await rig.backends[0].report()
        record = order.apply(first, epoch=1, now_ns=5)
        await rig.stored(record)
        async with rig.executor(fill_lots=0.5) as node:
            await rig.backends[1].order(record)  # the backend's re-drive
            rest = await rig.backends[1].reports(3)
            for report in rest:
                record = record.apply(report, epoch=1, now_ns=6)
            assert (record.state, record.filled_quantity) == (OrderState.FILLED, 2.0)
            assert node.stats.fills == 3
        log_ = await rig.orders.executions("p3")
        assert [e.seq for e in log_] == [1, 2, 3, 4]
        assert sum(e.last_quantity for e in log_) == 2.0  # never more than the order
    run(redis_server, body)


# --- replace ----------------------------------------------------------------------------------


def test_a_replace_makes_a_resting_limit_marketable(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor(fill_lots=0) as node:  # whole orders
            order = routed("r2", Side.BUY, OrderType.LIMIT, BID - 0.001)
            await rig.backends[0].order(order)
            await wait_until(lambda: node.stats.resting == 1, 2, "the order to rest")
            await rig.backends[0].send(encode_order(replace_request(order, 3.0, ASK)))
            replaced, filled = await rig.backends[0].reports(2)
            assert replaced.is_replace and (replaced.quantity, replaced.price,
                                            replaced.seq) == (3.0, ASK, 1)
            assert replaced.client_order_id == "r-r2"
            assert (filled.state, filled.last_price, filled.filled_quantity,
                    filled.seq) == (OrderState.FILLED, ASK, 3.0, 2)
            order = order.apply(replaced, epoch=1, now_ns=5).apply(filled, epoch=1, now_ns=6)
            assert (order.quantity, order.price, order.state) == (3.0, ASK, OrderState.FILLED)
            assert node.stats.replaces == 1 and node.stats.resting == 0
    run(redis_server, body)


def test_a_replace_below_what_filled_meanwhile_is_refused(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor(fill_lots=1.5, poll_s=30) as node:
            order = routed("r3")  # 2 lots: 1.5 fill at once, the rest after poll_s
            await rig.backends[0].order(order)
            partial = await rig.backends[0].report()
            assert partial.filled_quantity == 1.5
            # The backend saw nothing filled yet: replacing down to 1 lot looked fine there.
            await rig.backends[0].send(encode_order(replace_request(order, 1.0, None)))
            refused = await rig.backends[0].message()
            assert isinstance(refused, ReplaceRefused)
            assert (refused.order_id, refused.reason) == ("r3",
                                                                 RejectReason.BAD_QUANTITY)
            assert node.stats.amends_refused == 1 and node.stats.replaces == 0
    run(redis_server, body)


def test_a_replace_of_a_filled_order_is_refused(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor():
            order = routed("r4")
            await rig.backends[0].order(order)
            await rig.backends[0].report()
            await rig.backends[0].send(encode_order(replace_request(order, 3.0, None)))
            refused = await rig.backends[0].message()
            assert isinstance(refused, ReplaceRefused)
            assert refused.reason is RejectReason.NOT_CANCELLABLE
            assert "FILLED" in refused.message
    run(redis_server, body)


# --- batches ----------------------------------------------------------------------------------


def by_order(reports: Sequence[ExecutionReport]) -> dict[str, list[ExecutionReport]]:
    out: dict[str, list[ExecutionReport]] = {}
    for report in reports:
        out.setdefault(report.order_id, []).append(report)
    return out


def test_a_burst_on_a_slow_pair_is_decided_in_few_rounds_and_a_restart_continues(
        redis_server: RedisProcess) -> None:
    """200 orders and 100 cancels arrive while each decision round takes 50 ms at the pair:
    they are decided in batches, each order's entries at consecutive positions (a fill, then
    its cancel, decided from it in the next round), every entry recorded once. A restarted
    executor finishes the rest from the log."""
    count = 200
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        orders = [routed(f"b{i}") for i in range(count)]  # 2 lots: a slice of 1 now
        cancelled = {o.order_id for o in orders[::2]}
        calls = rig.backends[0].authority.calls
        rig.backends[0].authority.delay_s = 0.05
        async with rig.executor(fill_lots=1.0, poll_s=30) as node:
            for order in orders:
                await rig.backends[0].order(order)
                if order.order_id in cancelled:
                    await rig.backends[0].send(encode_order(cancel_request(order)))
            got = by_order(await rig.backends[0].reports(count + len(cancelled), timeout=5))
            assert len(calls) <= 10, [len(c) for c in calls]  # not 300
            assert sum(len(c) for c in calls) == count + len(cancelled)
            # A cancel decided from its order's fill came in a later round than the fill.
            where = {(e.order_id, e.seq): n for n, c in enumerate(calls) for e in c}
            assert all(where[(oid, 1)] < where[(oid, 2)] for oid in cancelled)
            assert (node.stats.fills, node.stats.cancels, node.stats.conflicts) == (
                count, len(cancelled), 0)
        records = {}
        for order in orders:
            reports = got[order.order_id]
            assert [r.seq for r in reports] == ([1, 2] if order.order_id in cancelled else [1])
            record = order
            for report in reports:  # the backend applies them in order
                record = record.apply(report, epoch=1, now_ns=5)
            assert record.state is (OrderState.CANCELLED if order.order_id in cancelled
                                    else OrderState.PARTIALLY_FILLED)
            assert await rig.orders.executions(order.order_id) == reports
            records[order.order_id] = record
        # A new executor, empty memory: the backend re-drives each order as it has it.
        rig.backends[0].authority.delay_s = 0.0
        calls.clear()
        async with rig.executor(fill_lots=1.0) as node:
            for order in orders:
                await rig.backends[1].order(records[order.order_id])
            rest = by_order(await rig.backends[1].reports(count - len(cancelled), timeout=5))
            assert set(rest) == {o.order_id for o in orders} - cancelled
            assert all(r.state is OrderState.FILLED and r.seq == 2 for (r,) in rest.values())
            assert (node.stats.fills, node.stats.conflicts) == (count - len(cancelled), 0)
            assert len(calls) < count - len(cancelled)
        for order in orders:
            log_ = await rig.orders.executions(order.order_id)
            assert [e.seq for e in log_] == [1, 2]
            assert sum(e.last_quantity for e in log_) == (
                1.0 if order.order_id in cancelled else 2.0)  # never more than the order
    run(redis_server, body)


def test_two_decisions_for_one_order_in_one_batch_are_consecutive_positions(
        redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        calls = rig.backends[0].authority.calls
        async with rig.executor(fill_lots=1.0, poll_s=30) as node:
            a, b = routed("a1"), routed("a2", quantity=1.0)
            await rig.backends[0].order(routed("warm", quantity=1.0))  # the DEALER connected
            await rig.backends[0].report()
            calls.clear()
            for order in (a, b):
                rig.backends[0].authority.know(order)
            async with node._deciding:
                await node.handle([encode_order(a), encode_order(replace_request(a, 3.0, None)),
                                   encode_order(cancel_request(a)),
                                   encode_order(b), encode_order(cancel_request(b))], 0)
            # a: a slice, the replace and the cancel decided from it, each proposed once the
            # one before is decided; b: filled whole, so its cancel is answered with the fill
            # (sent again: the pair answers with the entry it holds there), once that is
            # decided.
            where = {(e.order_id, e.seq): n for n, c in enumerate(calls) for e in c}
            assert [key for c in calls for key in ((e.order_id, e.seq) for e in c)] == [
                ("a1", 1), ("a2", 1), ("a1", 2), ("a1", 3)]
            assert where[("a1", 1)] < where[("a1", 2)] < where[("a1", 3)]
            got = await rig.backends[0].reports(5)
            assert [(r.order_id, r.seq) for r in got] == [("a1", 1), ("a2", 1), ("a1", 2),
                                                          ("a1", 3), ("a2", 1)]
            assert [r.state for r in got] == [OrderState.PARTIALLY_FILLED, OrderState.FILLED,
                                              OrderState.PARTIALLY_FILLED,
                                              OrderState.CANCELLED, OrderState.FILLED]
            assert got[2].is_replace and got[2].quantity == 3.0
            assert (node.stats.replays, node.stats.cancels, node.stats.resting) == (1, 1, 0)
            assert await rig.orders.executions("a1") == [got[0], got[2], got[3]]
    run(redis_server, body)


def test_the_poller_proposes_a_round_at_once(redis_server: RedisProcess) -> None:
    async def body(rig: Rig) -> None:
        await rig.tick(BID, ASK)
        async with rig.executor() as node:
            for i in range(5):
                await rig.backends[0].order(routed(f"l{i}", Side.SELL, OrderType.LIMIT, 1.1010))
            await wait_until(lambda: node.stats.resting == 5, 2, "five orders resting")
            rounds = node.stats.rounds
            await rig.tick(1.1010, 1.1012)  # all five marketable at once
            got = await rig.backends[0].reports(5)
            assert sorted(r.order_id for r in got) == [f"l{i}" for i in range(5)]
            assert all(r.state is OrderState.FILLED for r in got)
            assert node.stats.rounds - rounds == 1  # the five proposed at once
            assert node.stats.resting == 0
    run(redis_server, body)
