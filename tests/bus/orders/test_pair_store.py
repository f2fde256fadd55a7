"""The pair store (bus.orders.pair_store) with two stores on loopback and a real redis-server:
acknowledged once the passive store holds a batch, with Redis stopped; Redis written behind;
a stale epoch refused; a passive that never answers; a takeover that writes what the passive
held where newer; retries answered from memory; a new active that knows the client order
ids the old one wrote to Redis alone. The pair's state is a stand-in (:class:`View`): the
binary star is tested on its own, and with these stores in tests/nodes/orders."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import pytest
import zmq.asyncio

from bus.aio import cancel_and_wait
from bus.orders.pair_store import PairStore
from bus.store.orders import RedisOrderStore, WriteOutcome
from nodes.drills.ports import tcp_endpoint
from nodes.servers.redis_server import RedisProcess
from protocols.errors import Fenced
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import ExecutionReport
from protocols.orders.pair import ReplicaAck, ReplicaRefused
from protocols.orders.record import Order
from tests.bus.store.contract_orders import order
from tests.support import scaled, wait_until

pytestmark = pytest.mark.timeout(60)
ACK_TIMEOUT_S = 0.1


@dataclass
class View:
    """The pair state a store sees (the backend node answers these)."""

    passive: bool = False
    epoch: int = 0
    ready: bool = True  # the peer is alive and passive
    fenced: list[int] = field(default_factory=list)

    def pair_state(self) -> tuple[bool, int]:
        return self.passive, self.epoch

    def peer_ready(self) -> bool:
        return self.ready

    async def on_fenced(self, current: int) -> None:
        self.fenced.append(current)


@dataclass
class Node:
    store: PairStore
    view: View
    tasks: list[asyncio.Task[None]]

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


@contextlib.asynccontextmanager
async def two_stores(redis: RedisProcess, *, serve_b: bool = True
                     ) -> AsyncIterator[tuple[Node, Node, RedisOrderStore]]:
    """Store A (to be made active by the test) and store B (passive), linked; ``serve_b``
    False: B takes nothing (a passive node frozen). Also a plain reader of Redis."""
    ctx = zmq.asyncio.Context()
    ends = (tcp_endpoint(), tcp_endpoint())
    nodes: list[Node] = []
    for i, passive in ((0, False), (1, True)):
        view = View(passive=passive)
        backing = RedisOrderStore(redis.url, "ps", deadline_s=5.0)
        store = PairStore(backing, ctx, view, bind=ends[i], peer=ends[1 - i],
                          ack_timeout_s=ACK_TIMEOUT_S, on_fenced=view.on_fenced)
        runs = [store.acks(), store.flusher(), store.catch_up()]
        if i == 0 or serve_b:
            runs.append(store.serve_replica())
        nodes.append(Node(store, view, [asyncio.create_task(r) for r in runs]))
    reader = RedisOrderStore(redis.url, "ps")
    try:
        yield nodes[0], nodes[1], reader
    finally:
        for node in nodes:
            # Re-cancelled while a library call swallows the first cancel (bus.aio: why).
            await cancel_and_wait(node.tasks, what="pair store")
            with contextlib.suppress(Exception):
                await node.store.close()
        await reader.close()
        ctx.term()


async def make_active(node: Node) -> int:
    """Win the next epoch in Redis and activate the store at it."""
    current = await node.store.current_epoch()
    won, epoch = await node.store.acquire_epoch(current)
    assert won
    node.view.passive, node.view.epoch = False, epoch
    await node.store.activate(epoch)
    return epoch


async def linked(a: Node, b: Node, epoch: int) -> None:
    """Until a batch of ``a`` is confirmed by ``b`` (the link is up: a first batch sent while
    it connects is not even sent, IMMEDIATE)."""
    b.view.epoch = epoch
    tries = iter(range(1000))

    async def confirmed() -> bool:
        await a.store.write_batch([rec(f"warm-{next(tries)}", f"warm-{next(tries)}", epoch)],
                                  epoch)
        return a.store.stats.replicated > 0
    await wait_until(confirmed, 5, "the link up")


async def in_redis_then_away(a: Node, b: Node, reader: RedisOrderStore,
                             redis_server: RedisProcess, order_id: str) -> tuple[int, Order]:
    """A active, linked to B, a record of ``order_id`` written and in Redis; then Redis
    stopped. The epoch and the record."""
    epoch = await make_active(a)
    await linked(a, b, epoch)
    record = rec(order_id, f"c-{order_id}", epoch)
    await a.store.write_batch([record], epoch)
    await wait_until(lambda: reader.get(order_id), 5, f"{order_id} written behind")
    await asyncio.to_thread(redis_server.stop)
    return epoch, record


def rec(order_id: str, coid: str, epoch: int, exec_seq: int = 0) -> Order:
    return replace(order(order_id, coid, epoch), state=OrderState.ROUTED, exec_seq=exec_seq)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_acknowledged_once_the_passive_holds_it_with_redis_stopped_and_in_redis_after(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, reader):
            epoch = await make_active(a)
            await linked(a, b, epoch)
            first = rec("o1", "c1", epoch)
            replicated, held = a.store.stats.replicated, b.store.stats.held
            assert await a.store.write_batch([first], epoch) == [WriteOutcome.WRITTEN]
            assert a.store.stats.replicated == replicated + 1
            assert b.store.stats.held == held + 1
            await wait_until(lambda: reader.get("o1"), 5, "o1 written behind")
            await asyncio.to_thread(redis_server.stop)
            held = rec("o2", "c2", epoch)
            outcome = await asyncio.wait_for(a.store.write_batch([held], epoch), scaled(1.0))
            assert outcome == [WriteOutcome.WRITTEN]
            assert b.store.replica.backlog.get("o2") is not None
            assert a.store.backlog() >= 1  # not in Redis yet
            assert await a.store.get("o2") == held  # read from memory, Redis away
            await asyncio.to_thread(redis_server.start)
            assert await wait_until(lambda: reader.get("o2"), 10, "o2 written behind") == held
            await wait_until(lambda: a.store.backlog() == 0, 5, "the backlog flushed")
    run(main())


def test_a_batch_from_a_stale_epoch_is_refused_and_its_sender_fenced(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, reader):
            epoch = await make_active(a)
            await linked(a, b, epoch)
            await wait_until(lambda: a.store.backlog() == 0, 5, "the warm-up written behind")
            # A newer active exists (it won the next epoch; the passive heard of it).
            assert await reader.acquire_epoch(epoch) == (True, epoch + 1)
            b.view.epoch = epoch + 1
            with pytest.raises(Fenced):
                await a.store.write_batch([rec("o1", "c1", epoch)], epoch)
            assert a.view.fenced and set(a.view.fenced) == {epoch + 1}
            # The refusal, or the write-behind's fencing first: either way nothing is held.
            await wait_until(lambda: b.store.stats.refusals == 1, 5, "the batch refused")
            assert b.store.replica.backlog.get("o1") is None
            assert await reader.by_client_id("acc", "c1") is None  # Redis fenced it too
    run(main())


def test_a_passive_that_does_not_confirm_makes_the_batch_wait_for_redis(
        redis_server: RedisProcess) -> None:
    """The peer dies (here: never answers) between the replication and its confirmation:
    the batch is acknowledged only once Redis has it, fenced and confirmed (as soon as it
    has: no longer waiting for the peer then)."""
    async def main() -> None:
        async with two_stores(redis_server, serve_b=False) as (a, _b, reader):
            epoch = await make_active(a)
            await asyncio.sleep(scaled(0.3))  # connected (IMMEDIATE: else not even sent)
            assert await a.store.write_batch([rec("o1", "c1", epoch)], epoch) == \
                [WriteOutcome.WRITTEN]
            assert await reader.get("o1") is not None  # in Redis by the acknowledgement
            assert a.store.stats.written_through == 1 and a.store.stats.replicated == 0
            await a.store.write_batch([rec("o2", "c2", epoch)], epoch)
            assert await reader.get("o2") is not None
            assert a.store.stats.written_through == 2 and a.store.stats.replicated == 0
    run(main())


def test_a_passive_that_confirms_late_once_is_re_synced_without_redis(
        redis_server: RedisProcess) -> None:
    """A confirmation that comes too late (a passive node busy for a moment) with Redis
    away: the batch is not left waiting for Redis; the reset sent after it is confirmed and
    covers it."""
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, reader):
            epoch = await make_active(a)
            await linked(a, b, epoch)
            before = replace(a.store.stats)  # (warm-up batches: sent before the link was up)
            await asyncio.to_thread(redis_server.stop)
            take, dropped = b.store._take, []

            def drop_first(frames: list[bytes]) -> ReplicaAck | ReplicaRefused | None:
                if not dropped:  # held, but the confirmation never comes (a late one)
                    dropped.append(take(frames))
                    return None
                return take(frames)
            b.store._take = drop_first  # type: ignore[method-assign]
            got = await asyncio.wait_for(a.store.write_batch([rec("o1", "c1", epoch)], epoch),
                                         scaled(2.0))
            assert got == [WriteOutcome.WRITTEN] and len(dropped) == 1
            assert a.store.stats.unconfirmed - before.unconfirmed == 1
            assert a.store.stats.resynced - before.resynced == 1
            assert b.store.backlog() >= 1  # held by the passive, Redis still away
            await asyncio.to_thread(redis_server.start)
            await wait_until(lambda: reader.get("o1"), 5, "o1 written behind")
    run(main())


def test_a_batch_waiting_for_redis_is_taken_by_a_passive_that_is_back(
        redis_server: RedisProcess) -> None:
    """No passive node (its heartbeats stopped) and Redis away: a batch waits for Redis. The
    passive node beats again: it gets the batch (a re-sync), and the write is acknowledged
    without waiting for Redis any longer."""
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, reader):
            epoch = await make_active(a)
            await linked(a, b, epoch)
            before = replace(a.store.stats)
            await asyncio.to_thread(redis_server.stop)
            take = b.store._take
            b.store._take = lambda frames: None  # type: ignore[method-assign]  # stalled...
            a.view.ready = False  # ... and its heartbeats stopped
            write = asyncio.create_task(a.store.write_batch([rec("o1", "c1", epoch)], epoch))
            await wait_until(lambda: a.store.stats.written_through > before.written_through, 3,
                             "the batch waiting for Redis")
            await asyncio.sleep(scaled(0.2))  # a while with neither
            assert not write.done()
            b.store._take = take  # type: ignore[method-assign]
            a.view.ready = True  # back
            assert await asyncio.wait_for(write, scaled(2.0)) == [WriteOutcome.WRITTEN]
            assert a.store.stats.resynced - before.resynced == 1
            assert b.store.backlog() >= 1  # the passive holds it; Redis still away
            await asyncio.to_thread(redis_server.start)
            await wait_until(lambda: reader.get("o1"), 5, "o1 written behind")
    run(main())


def test_with_no_passive_and_redis_away_a_batch_is_not_acknowledged(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with two_stores(redis_server) as (a, _b, reader):
            epoch = await make_active(a)
            a.view.ready = False  # the peer is gone
            await asyncio.to_thread(redis_server.stop)
            write = asyncio.create_task(a.store.write_batch([rec("o1", "c1", epoch)], epoch))
            await asyncio.sleep(scaled(0.5))
            assert not write.done()  # held for Redis, as without replication
            await asyncio.to_thread(redis_server.start)
            assert await asyncio.wait_for(write, scaled(10)) == [WriteOutcome.WRITTEN]
            assert await reader.get("o1") is not None
    run(main())


def test_a_retry_is_answered_from_memory_while_redis_is_away(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, _reader):
            epoch = await make_active(a)
            await linked(a, b, epoch)
            await asyncio.to_thread(redis_server.stop)
            first = rec("o1", "c1", epoch)
            assert await a.store.write_batch([first], epoch) == [WriteOutcome.WRITTEN]
            again = rec("o2", "c1", epoch)  # the same client order id, another order
            assert await a.store.write_batch([again], epoch) == [WriteOutcome.CLIENT_ID_TAKEN]
            assert await a.store.by_client_id("acc", "c1") == first
            await asyncio.to_thread(redis_server.start)
    run(main())


def test_the_active_dies_with_write_behind_not_in_redis_and_the_new_active_writes_it(
        redis_server: RedisProcess) -> None:
    """What the old active acknowledged but Redis never got is written by the node taking
    over, under its epoch, before it serves; a record Redis has newer is kept."""
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, reader):
            epoch, older = await in_redis_then_away(a, b, reader, redis_server, "o-old")
            lost = rec("o-lost", "c-lost", epoch)
            stale = rec("o-old", "c-o-old", epoch, exec_seq=0)  # a version Redis will beat
            await a.store.write_batch([lost, stale], epoch)
            a.stop()  # killed: its write-behind never runs
            await asyncio.to_thread(redis_server.start)
            newer_in_redis = replace(older, exec_seq=3, state=OrderState.PARTIALLY_FILLED,
                                     filled_quantity=0.5, avg_price=1.1)
            await reader.write(newer_in_redis, epoch)  # e.g. written through after a cut link
            taken = await make_active(b)
            assert taken == epoch + 1
            assert await reader.get("o-lost") == lost
            assert await reader.get("o-old") == newer_in_redis
            assert b.store.stats.reconciled == 1
            assert {o.order_id for o in await b.store.open_orders()} >= {"o-lost", "o-old"}
            retry = rec("o-new", "c-lost", taken)  # a client's retry at the new active
            assert await b.store.write_batch([retry], taken) == [WriteOutcome.CLIENT_ID_TAKEN]
    run(main())


def test_decided_log_entries_survive_the_active_with_redis_away_and_reach_redis_once(
        redis_server: RedisProcess) -> None:
    """The executor's decisions take the acknowledgement's road: a fill written with its
    record is durable once the passive holds it, with Redis stopped; the active dies before
    its write-behind; the node taking over writes the whole part of the log Redis lacks with
    the newest record, and the log holds each entry once."""
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, reader):
            epoch, routed = await in_redis_then_away(a, b, reader, redis_server, "o-f")
            first = logged_fill(routed, 1)
            after_first = routed.apply(first, epoch=epoch, now_ns=5)
            second = logged_fill(after_first, 2)
            record = after_first.apply(second, epoch=epoch, now_ns=6)
            await a.store.write_batch([after_first], epoch, [first])
            await a.store.write_batch([record], epoch, [second])  # both acknowledged
            assert a.store.held("o-f") == record
            assert await a.store.executions("o-f") == [first, second]  # held, not in Redis
            a.stop()  # killed: its write-behind never runs
            await asyncio.to_thread(redis_server.start)
            assert await reader.executions("o-f") == []
            await make_active(b)
            assert await reader.get("o-f") == record
            assert await reader.executions("o-f") == [first, second]
            assert await reader.redis.smembers("ps:executed:o-f") == {b"o-f:1", b"o-f:2"}
            assert await b.store.executions("o-f", after=1) == [second]
    run(main())


def logged_fill(record: Order, seq: int) -> ExecutionReport:
    """A fill of 0.25 lots at position ``seq`` of ``record``'s log."""
    return record.fill_report(0.25, 1.1, seq=seq, exec_id=f"{record.order_id}:{seq}")


def test_a_new_active_knows_the_client_order_ids_the_old_one_wrote_to_redis_alone(
        redis_server: RedisProcess) -> None:
    """The link was cut: the old active wrote through to Redis. The node taking over loads
    those client order ids from the recent set, so a retry is not a second order."""
    async def main() -> None:
        async with two_stores(redis_server) as (a, b, _reader):
            epoch = await make_active(a)
            a.view.ready = False
            await a.store.write_batch([rec("o1", "c1", epoch)], epoch)
            assert b.store.stats.held == 0
            taken = await make_active(b)
            assert await b.store.write_batch([rec("o9", "c1", taken)], taken) == \
                [WriteOutcome.CLIENT_ID_TAKEN]
            found = await b.store.by_client_id("acc", "c1")
            assert found is not None and found.order_id == "o1"
    run(main())
