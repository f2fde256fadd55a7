"""The Redis order store beyond its contract (tests/bus/store/contract_orders.py, run by
test_contracts.py): the executed set kept beside the log, durability through a restart, a dead
server, and how many connections and replica probes a burst of writes costs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from bus.store.orders import RedisOrderStore
from nodes.servers.redis_server import RedisProcess
from protocols.errors import StoreError, StoreUnavailable
from protocols.orders.codec import to_blob
from protocols.orders.lifecycle import OrderState
from tests.bus.store.contract_orders import logged, order, routed, slice_of
from tests.support import run_with

T = TypeVar("T")
pytestmark = pytest.mark.timeout(30)


def with_store(server: RedisProcess, body: Callable[[RedisOrderStore], Awaitable[T]]) -> T:
    async def open_store() -> RedisOrderStore:
        return RedisOrderStore(server.url, "t")
    return run_with(open_store, body)


def test_the_executed_set_holds_fills_and_final_decisions(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        rec = routed()
        first = rec.fill_report(0.5, 1.1, seq=1, exec_id="o1:1")
        rec = logged(rec, first)
        replace = rec.replace_report(3.0, None, exec_id="o1:2", epoch=1, seq=2)
        rec = logged(rec, replace)
        await s.write_batch([rec], epoch, [first, replace])
        # Fills and final decisions are executions; a replace is not.
        assert await s.redis.smembers(s.executed_key("o1")) == {b"o1:1"}
        done = rec.status_report(OrderState.CANCELLED, exec_id="o1:3", epoch=1, seq=3)
        await s.write_batch([logged(rec, done)], epoch, [done])
        assert await s.redis.smembers(s.executed_key("o1")) == {b"o1:1", b"o1:3"}
    with_store(redis_server, body)


# The script's refusals of a log that disagrees with the entries written: the backend's
# decisions never produce one (its record is the log's position), so they guard against a bug,
# writing nothing rather than a log with two histories.


def test_another_entry_at_a_written_position_refuses_the_whole_batch(
        redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        a, b = routed(order_id="oA"), routed(order_id="oB", coid="cB")
        a1 = slice_of(a, 1)
        await s.write_batch([logged(a, a1), b], epoch, [a1])
        other = slice_of(a, 1, price=1.2)
        with pytest.raises(StoreError, match="oA holds another entry there"):
            await s.write_batch([logged(b, slice_of(b, 1)), logged(a, other)], epoch,
                                [slice_of(b, 1), other])
        assert await s.executions("oA") == [a1]
        assert await s.executions("oB") == []
        assert await s.get("oB") == b  # nothing of the batch was written
    with_store(redis_server, body)

def test_a_position_past_the_end_refuses_the_whole_batch(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        a = routed(order_id="oA")
        a1 = slice_of(a, 1)
        a2 = slice_of(logged(a, a1), 2)
        with pytest.raises(StoreError, match="oA holds 0 entries: entry 2 not written"):
            await s.write_batch([logged(a, a1, a2)], epoch, [a2])
        assert await s.executions("oA") == []
        assert await s.get("oA") is None
    with_store(redis_server, body)


def test_orders_survive_a_redis_restart_from_aof(redis_server: RedisProcess) -> None:
    async def write(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        await s.write(order(epoch=epoch), epoch)
    with_store(redis_server, write)
    redis_server.stop()  # SIGTERM: Redis fsyncs the AOF before it exits
    redis_server.restart()

    async def read(s: RedisOrderStore) -> None:
        assert await s.current_epoch() == 1
        assert [o.order_id for o in await s.open_orders()] == ["o1"]
    with_store(redis_server, read)


def test_dead_server_is_store_unavailable(redis_server: RedisProcess) -> None:
    redis_server.kill()

    async def body(s: RedisOrderStore) -> None:
        with pytest.raises(StoreUnavailable):
            await s.acquire_epoch(0)
        with pytest.raises(StoreUnavailable):
            await s.write(order(), 1)
    with_store(redis_server, body)


def test_many_writes_at_once_share_a_few_connections_and_one_replica_probe(
        redis_server: RedisProcess) -> None:
    """Two hundred concurrent writes (a backlog released after a switch): at most
    MAX_IN_FLIGHT connections to the server, and the replica count asked once, not per
    write."""
    from bus.store.orders import MAX_IN_FLIGHT

    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        probe = RedisOrderStore(redis_server.url, "t")
        try:
            await probe.redis.config_resetstat()
            s._replicas = (0, -1.0)  # stale: the next writes must ask
            await asyncio.gather(*(s.write(order(f"o{i}", f"c{i}", epoch), epoch)
                                   for i in range(200)))
            clients = await probe.redis.client_list()
            stats = await probe.redis.info("commandstats")
        finally:
            await probe.close()
        ours = [c for c in clients if c["cmd"] != "client|list"]
        assert len(ours) <= MAX_IN_FLIGHT < 200, len(ours)
        assert stats["cmdstat_info"]["calls"] == 1, stats["cmdstat_info"]
        assert all([await s.get(f"o{i}") for i in range(200)])
    with_store(redis_server, body)


# The history stream (P:history): what the historian records and backfills orders from.


def with_history(server: RedisProcess, cap: int,
                 body: Callable[[RedisOrderStore], Awaitable[T]]) -> T:
    async def open_store() -> RedisOrderStore:
        return RedisOrderStore(server.url, "h", history_cap=cap)
    return run_with(open_store, body)


def test_each_changed_record_write_is_one_history_entry_with_its_new_log_entries(
        redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        rec = routed()
        await s.write_batch([rec], epoch)
        first = rec.fill_report(0.5, 1.1, seq=1, exec_id="o1:1")
        half = logged(rec, first)
        second = half.fill_report(0.5, 1.2, seq=2, exec_id="o1:2")
        filled = logged(half, second)
        await s.write_batch([filled], epoch, [first, second])
        # The same write again (a lost reply, the write-behind after a takeover) changes
        # nothing, so it is not history again.
        await s.write_batch([filled], epoch, [first, second])
        got = await s.history(0, 10)
        assert [e.position for e in got] == [1, 2]
        assert got[0].record == to_blob(rec) and got[0].entries == ()
        assert got[1].record == to_blob(filled)
        assert got[1].entries == tuple(to_blob(e) for e in (first, second))
        assert [e.position for e in await s.history(1, 10)] == [2]
        assert await s.history(2, 10) == []
        assert await s.history_first() == 1
    with_history(redis_server, 100, body)


def test_the_history_stream_is_capped_and_says_where_it_starts(
        redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        for i in range(300):
            await s.write_batch([routed(order_id=f"o{i}", coid=f"c{i}")], epoch)
        first = await s.history_first()
        # MAXLEN ~ trims whole macro nodes: at least the cap is kept, the oldest go.
        assert 1 < first <= 300 - 100 + 1
        held = await s.history(first - 1, 1000)
        assert [e.position for e in held] == list(range(first, 301))
    with_history(redis_server, 100, body)


def test_a_blocking_history_read_waits_for_the_next_write(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        waiting = asyncio.ensure_future(s.history(0, 10, block_ms=5_000))
        await asyncio.sleep(0)
        assert not waiting.done()
        await s.write_batch([routed()], epoch)
        got = await asyncio.wait_for(waiting, 5)
        assert [e.position for e in got] == [1]
    with_history(redis_server, 100, body)


def test_no_history_is_written_without_a_cap(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        await s.write_batch([routed()], epoch)
        assert await s.history(0, 10) == []
        assert await s.history_first() == 0
    with_history(redis_server, 0, body)

