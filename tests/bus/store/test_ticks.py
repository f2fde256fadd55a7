"""The Redis tick store and the checkpointer against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from bus.store.connection import store_error
from bus.store.ticks import CheckpointRun, RedisTickStore
from bus.ticks.checkpoint import FLUSH_TICKS, Checkpointer
from nodes.servers.redis_server import RedisProcess
from protocols.errors import StoreError, StoreUnavailable
from protocols.ticks.messages import Row, SeqRange

T = TypeVar("T")
pytestmark = pytest.mark.timeout(30)


def row(seq: int) -> Row:
    return (1.0 + seq / 1000, 1.0 + seq / 1000 + 0.0001, 0.0, 1.0, seq, seq + 1)


def rows(a: int, b: int) -> list[Row]:
    return [row(s) for s in range(a, b + 1)]


def with_store(server: RedisProcess,
               body: Callable[[RedisTickStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = RedisTickStore(server.url, "t")
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def filled_seqs(result: Any) -> list[int]:
    return [b.first_seq + i for b in result.batches for i in range(len(b.rows))]


def test_new_streams_start_at_one_and_reserve(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        starts = await store.start_session("f", 1, ["A", "B"], 1000)
        assert starts == {"A": 1, "B": 1}
        assert await store.redis.hget("t:reserved", "A") == b"1000"
    with_store(redis_server, body)


def test_write_then_snapshot_and_fill(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 7, ["EURUSD", "GBPUSD"], 1000)
        await store.write([CheckpointRun("EURUSD", 7, 1, rows(1, 10)),
                           CheckpointRun("GBPUSD", 7, 1, rows(1, 3))], 10_000)
        await store.write([CheckpointRun("EURUSD", 7, 11, rows(11, 20))], 10_000)
        snap = await store.snapshot(["EUR"])
        assert [(e.stream, e.session, e.seq, e.row) for e in snap] == [
            ("EURUSD", 7, 20, row(20))]
        assert {e.stream for e in await store.snapshot([""])} == {"EURUSD", "GBPUSD"}
        res = await store.fill("EURUSD", 5, 15, 1000)
        assert res.settled_to == 15
        assert filled_seqs(res) == list(range(5, 16))
        assert [r for b in res.batches for r in b.rows] == rows(5, 15)
        assert all(b.session == 7 for b in res.batches)
    with_store(redis_server, body)


def test_fill_speaks_only_for_what_is_checkpointed(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 1000)
        await store.write([CheckpointRun("X", 1, 1, rows(1, 10))], 10_000)
        res = await store.fill("X", 8, 30, 1000)
        assert res.settled_to == 10
        assert filled_seqs(res) == [8, 9, 10]
        nothing = await store.fill("X", 11, 30, 1000)
        assert nothing.settled_to == 10 and not nothing.batches
    with_store(redis_server, body)


def test_crash_restart_resumes_above_reservation_with_unknown(
        redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 100)
        await store.write([CheckpointRun("X", 1, 1, rows(1, 10))], 10_000)
        # No end_session: the feed was killed. Numbers 11..100 may have been published.
        starts = await store.start_session("f", 2, ["X"], 100)
        assert starts == {"X": 101}
        res = await store.fill("X", 5, 101, 1000)
        assert filled_seqs(res) == list(range(5, 11))
        # Not void (proven unused): the killed feed may have published there (issue 9).
        assert res.unknown == (SeqRange(11, 100),) and res.void == ()
        assert res.settled_to == 100
        part = await store.fill("X", 50, 60, 1000)
        assert part.unknown == (SeqRange(50, 60),) and part.settled_to == 60
    with_store(redis_server, body)


def test_clean_end_releases_reservation(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 100)
        await store.write([CheckpointRun("X", 1, 1, rows(1, 10))], 10_000)
        await store.end_session("f", {"X": 10})
        assert await store.start_session("f", 2, ["X"], 100) == {"X": 11}
        res = await store.fill("X", 1, 10, 100)
        assert res.void == () and res.unknown == ()
    with_store(redis_server, body)


def test_a_stream_no_feed_opened_is_settled_with_nothing(redis_server: RedisProcess) -> None:
    """Issue 9: an unknown stream was answered "not checkpointed yet", retried until give-up."""
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 100)
        res = await store.fill("NOPE", 5, 20, 1000)
        assert (res.settled_to, res.batches, res.void, res.unknown) == (20, (), (), ())
        assert not res.known_stream
        # A stream a feed opened but has not checkpointed yet: nothing is settled, ask again.
        opened = await store.fill("X", 1, 20, 1000)
        assert opened.settled_to == 0 and opened.known_stream
    with_store(redis_server, body)


def test_retried_write_is_idempotent(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 100)
        run = CheckpointRun("X", 1, 1, rows(1, 10))
        await store.write([run], 10_000)
        await store.write([run], 10_000)  # the first reply was lost; the retry must not fail
        assert filled_seqs(await store.fill("X", 1, 10, 100)) == list(range(1, 11))
    with_store(redis_server, body)


def test_capped_stream_settles_trimmed_range_empty(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 10_000)
        for first in range(1, 2001, 100):
            await store.write([CheckpointRun("X", 1, first, rows(first, first + 99))], 500)
        res = await store.fill("X", 1, 2000, 10_000)
        assert res.settled_to == 2000
        have = filled_seqs(res)
        assert have[-1] == 2000 and have[0] > 1  # the oldest were trimmed: gone for good
        assert have == list(range(have[0], 2001))
    with_store(redis_server, body)


def test_fill_pages_large_ranges(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        await store.start_session("f", 1, ["X"], 10_000)
        await store.write([CheckpointRun("X", 1, f, rows(f, f + 9)) for f in range(1, 1001, 10)],
                          10_000)
        res = await store.fill("X", 1, 1000, 100)
        assert 100 <= res.settled_to < 1000
        assert filled_seqs(res)[: res.settled_to] == list(range(1, res.settled_to + 1))
    with_store(redis_server, body)


def test_dead_server_raises_store_unavailable(redis_server: RedisProcess) -> None:
    redis_server.kill()

    async def body(store: RedisTickStore) -> None:
        with pytest.raises(StoreUnavailable):
            await store.fill("X", 1, 2, 10)
        with pytest.raises(StoreUnavailable):
            await store.write([CheckpointRun("X", 1, 1, rows(1, 1))], 10)
    with_store(redis_server, body)


def test_store_error_says_which_failures_are_worth_retrying() -> None:
    # The mapping alone (our logic): what the ride-through loops retry and what they give up on.
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True reading="
                          "False 0x5627>; the handler is closed")  # uvloop, under a failover
    assert type(store_error(closed)) is StoreUnavailable
    assert type(store_error(ConnectionRefusedError(111, "refused"))) is StoreUnavailable
    assert type(store_error(RuntimeError("something else"))) is StoreError
    assert "password" in str(store_error(Exception("WRONGPASS invalid username-password")))


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
