"""The checkpointer (write-behind tick checkpoints) against a real redis-server: buffering while
the store is away, bounded overflow, re-writing what a failover lost, backlogs in slices."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from bus.store.ticks import RedisTickStore
from bus.ticks.checkpoint import FLUSH_TICKS, Checkpointer
from nodes.servers.redis_server import RedisProcess
from tests.bus.store.contract_ticks import filled_seqs, rows
from tests.support import run_with

T = TypeVar("T")
pytestmark = pytest.mark.timeout(30)


def with_store(server: RedisProcess,
               body: Callable[[RedisTickStore], Awaitable[T]]) -> T:
    async def open_store() -> RedisTickStore:
        return RedisTickStore(server.url, "t")
    return run_with(open_store, body)



def test_checkpointer_buffers_while_store_is_down_then_catches_up(
        redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 100)
        cp = Checkpointer(store, interval_s=0.001, capacity=1000, stream_cap=10_000,
                          reserve_block=100, reserved={"X": 100})
        cp.add("X", 1, 1, rows(1, 60))
        redis_server.kill()
        assert not await cp.flush()
        assert cp.stats.failures == 1 and cp.stats.buffered == 60
        cp.add("X", 1, 61, rows(61, 70))
        redis_server.restart()
        assert await cp.flush()
        assert cp.stats.written == 70 and cp.stats.buffered == 0
        assert cp.reserved("X") == 170  # 70 + block: extended past half the block
        assert filled_seqs(await store.fill("X", 1, 70, 100)) == list(range(1, 71))
    with_store(redis_server, body)


@pytest.mark.parametrize("interval_s", [0.001, 0.1, 2.0])
def test_checkpointer_takes_any_interval_the_config_allows(interval_s: float) -> None:
    """checkpoint_ms above 100 made the retry back-off refuse (base above its 100 ms cap), so
    such a feed died at start-up."""
    async def main() -> None:
        store = RedisTickStore("redis://127.0.0.1:1/0", "t")  # never contacted
        try:
            cp = Checkpointer(store, interval_s=interval_s, capacity=10, stream_cap=10,
                              reserve_block=100, reserved={})
            assert cp.stats.written == 0
        finally:
            await store.close()
    asyncio.run(main())


def test_checkpointer_overflow_drops_oldest_and_counts(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 1000)
        cp = Checkpointer(store, interval_s=0.001, capacity=25, stream_cap=10_000,
                          reserve_block=1000, reserved={"X": 1000})
        for first in range(1, 41, 10):
            cp.add("X", 1, first, rows(first, first + 9))
        assert cp.stats.dropped == 20 and cp.stats.buffered == 20
        assert await cp.flush()
        res = await store.fill("X", 1, 40, 100)
        assert filled_seqs(res) == list(range(21, 41))
        assert res.settled_to == 40  # 1..20 are settled as missing: counted lost downstream
    with_store(redis_server, body)


def test_checkpointer_rewrites_what_a_failover_lost_from_memory(
        redis_server: RedisProcess) -> None:
    """A new master lacks the last checkpoints the old one took (not replicated when it died):
    after the failed flush, the checkpointer writes them again from memory, then the rest, and
    re-asserts the reservation."""
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 1000)
        cp = Checkpointer(store, interval_s=0.001, capacity=1000, stream_cap=10_000,
                          reserve_block=1000, reserved={"X": 1000}, recent=30)
        cp.add("X", 1, 1, rows(1, 20))
        assert await cp.flush()
        cp.add("X", 1, 21, rows(21, 40))
        assert await cp.flush()
        # The failover: the new master has the first run only, and an older reservation.
        await store.redis.xdel(store._k("ticks", "X"), "40-0")
        await store.redis.hset(store._k("seq"), "X", 20)
        await store.redis.hset(store._k("reserved"), "X", 20)
        redis_server.kill()
        cp.add("X", 1, 41, rows(41, 50))
        assert not await cp.flush()
        redis_server.restart()
        assert await cp.flush()
        assert (cp.stats.resynced, cp.stats.resync_short) == (20, 0)
        assert filled_seqs(await store.fill("X", 1, 50, 100)) == list(range(1, 51))
        assert int(await store.redis.hget(store._k("reserved"), "X") or 0) >= 1000
    with_store(redis_server, body)


def test_checkpointer_counts_what_a_failover_lost_beyond_its_memory(
        redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 1000)
        cp = Checkpointer(store, interval_s=0.001, capacity=1000, stream_cap=10_000,
                          reserve_block=1000, reserved={"X": 1000}, recent=15)
        for first in (1, 21):
            cp.add("X", 1, first, rows(first, first + 19))
            assert await cp.flush()  # memory keeps the newest run only (21..40)
        await store.redis.xdel(store._k("ticks", "X"), "40-0", "20-0")
        await store.redis.hset(store._k("seq"), "X", 5)
        redis_server.kill()
        cp.add("X", 1, 41, rows(41, 50))
        assert not await cp.flush()
        redis_server.restart()
        assert await cp.flush()
        # 21..40 written again; 6..20 are gone for good (counted, never invented).
        assert (cp.stats.resynced, cp.stats.resync_short) == (20, 15)
        assert filled_seqs(await store.fill("X", 21, 50, 100)) == list(range(21, 51))
    with_store(redis_server, body)


def test_checkpointer_writes_a_backlog_in_slices(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 100_000)
        cp = Checkpointer(store, interval_s=0.001, capacity=100_000, stream_cap=100_000,
                          reserve_block=100_000, reserved={"X": 100_000})
        for first in range(1, 5001, 500):  # a backlog of 5,000 ticks after an outage
            cp.add("X", 1, first, rows(first, first + 499))
        assert await cp.flush()
        assert (cp.stats.written, cp.stats.buffered) == (FLUSH_TICKS, 5000 - FLUSH_TICKS)
        while cp.stats.buffered:
            assert await cp.flush()
        assert cp.stats.flushes == 3
        assert filled_seqs(await store.fill("X", 1, 5000, 10_000)) == list(range(1, 5001))
    with_store(redis_server, body)


def test_a_failed_slice_goes_back_in_front_and_the_order_holds(
        redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 100_000)
        cp = Checkpointer(store, interval_s=0.001, capacity=100_000, stream_cap=100_000,
                          reserve_block=100_000, reserved={"X": 100_000})
        for first in range(1, 5001, 500):
            cp.add("X", 1, first, rows(first, first + 499))
        redis_server.kill()
        assert not await cp.flush() and not await cp.flush()
        assert (cp.stats.buffered, cp.stats.dropped) == (5000, 0)
        cp.add("X", 1, 5001, rows(5001, 5100))  # published meanwhile
        redis_server.restart()
        while cp.stats.buffered:
            assert await cp.flush()
        assert filled_seqs(await store.fill("X", 1, 5100, 10_000)) == list(range(1, 5101))
    with_store(redis_server, body)
