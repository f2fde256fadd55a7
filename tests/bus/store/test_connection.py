"""The store layer across outages, against real redis-servers: ride-through until the deadline,
WAIT for a replica before an order write counts, clear errors for a wrong password and for
Sentinels that cannot be reached."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus.config import MeshConfig, MeshSection, RedisSection
from bus.store.connection import connect_redis
from bus.store.orders import RedisOrderStore
from bus.store.ticks import QuoteCache, RedisTickStore
from nodes.servers.redis_server import RedisProcess, command, free_port
from protocols.errors import StoreError, StoreUnavailable
from protocols.orders.messages import NewOrder, OrderType, Side
from protocols.orders.record import Order
from protocols.ticks.messages import SnapshotEntry
from tests.support import FakeClock, wait_until

pytestmark = pytest.mark.timeout(60)


def record(order_id: str = "o1") -> Order:
    new = NewOrder("acc", f"c-{order_id}", "EURUSD", Side.BUY, OrderType.LIMIT, 1.0, 1.08, 1)
    return Order.from_new(order_id, new, epoch=1, now_ns=1)


def mesh(url: str, **redis: object) -> MeshConfig:
    return MeshConfig(mesh=MeshSection(key_prefix="ha"), redis=RedisSection(url=url, **redis))


async def active_store(cfg: MeshConfig) -> RedisOrderStore:
    store = RedisOrderStore.from_config(cfg)
    won, _ = await store.acquire_epoch(await store.current_epoch())
    assert won
    return store


def test_an_order_write_rides_through_a_store_restart(redis_server: RedisProcess) -> None:
    async def main() -> None:
        store = await active_store(mesh(redis_server.url, deadline_ms=10_000))
        try:
            await asyncio.to_thread(redis_server.stop)
            write = asyncio.create_task(store.write(record(), 1))
            await asyncio.sleep(0.3)  # the time under test: the write is held, not failed
            assert not write.done(), "the write is held while the store is away"
            await asyncio.to_thread(redis_server.start)  # the AOF kept the epoch
            await write
            assert await store.get("o1") == record()
            assert store.stats.ridden == 1 and store.stats.unavailable == 0
        finally:
            await store.close()
    asyncio.run(main())


def test_past_the_deadline_the_store_is_unavailable(redis_server: RedisProcess) -> None:
    async def main() -> None:
        store = await active_store(mesh(redis_server.url, deadline_ms=300))
        try:
            await asyncio.to_thread(redis_server.stop)
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await store.write(record(), 1)
            assert store.stats.unavailable == 1
        finally:
            await store.close()
    asyncio.run(main())


def test_an_order_write_waits_for_the_replica(tmp_path: Path,
                                              redis_server: RedisProcess) -> None:
    # The first sync starts at once, not after Redis 7's default 5 s wait for more replicas.
    command(redis_server.address, "CONFIG", "SET", "repl-diskless-sync-delay", "0")
    replica = RedisProcess(data_dir=tmp_path / "replica", replica_of=redis_server.address)
    replica.start()

    async def main() -> None:
        store = await active_store(mesh(redis_server.url, deadline_ms=300,
                                        wait_timeout_ms=100))
        on_replica = RedisOrderStore(replica.url, "ha")
        try:
            # The replica's link comes up after its first sync, and the store asks the master
            # about replicas at most once a second.
            await wait_until(store._replica_count, 10, "the store to know of the replica",
                             interval=0.05)
            await store.write(record("o1"), 1)
            # Returned only after WAIT: the replica has it, no polling needed.
            assert await on_replica.get("o1") == record("o1")
            await store.redis.script_flush()  # as on a restarted or promoted server
            await store.write(record("o3"), 1)  # NOSCRIPT: loaded, sent again
            assert await on_replica.get("o3") == record("o3")
            # The replica dies while the store still believes it there: the WAIT is not
            # confirmed, the store asks the master again, finds no replica and writes alone
            # (durability is "on a replica when one exists": a lone master is all there is).
            await asyncio.to_thread(replica.kill)
            store._replicas = (1, asyncio.get_running_loop().time())
            await store.write(record("o2"), 1)
            assert store.stats.not_replicated == 1 and store.stats.ridden == 1
        finally:
            await store.close()
            await on_replica.close()
    try:
        asyncio.run(main())
    finally:
        replica.stop()


def test_a_wrong_password_is_a_clear_error_not_retried(tmp_path: Path) -> None:
    server = RedisProcess(data_dir=tmp_path / "redis", password="right")
    server.start()

    async def main() -> None:
        url = server.url.replace("right", "wrong")
        store = RedisOrderStore.from_config(mesh(url, deadline_ms=5000))
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(StoreError, match="password") as info:
                await store.current_epoch()
            assert not isinstance(info.value, StoreUnavailable)
            assert loop.time() - start < 4, "a refused password must not ride the deadline"
        finally:
            await store.close()
    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_unreachable_sentinels_make_the_store_unavailable() -> None:
    async def main() -> None:
        dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
        cfg = mesh("redis://127.0.0.1:1/0", sentinels=tuple(dead), deadline_ms=200)
        store = RedisOrderStore.from_config(cfg)
        ticks = RedisTickStore.from_config(cfg)
        try:
            with pytest.raises(StoreUnavailable, match="tickmesh-rtss"):
                await store.write(record(), 1)
            with pytest.raises(StoreUnavailable):
                await ticks.last("EURUSD")
        finally:
            await store.close()
            await ticks.close()
    asyncio.run(main())


def test_the_order_role_has_its_own_master_and_url() -> None:
    section = RedisSection(url="redis://a:1/0", orders_url="redis://b:2/0",
                           sentinels=("127.0.0.1:26379",))
    orders = section.orders_role()
    assert (orders.url, orders.master) == ("redis://b:2/0", "tickmesh-rtss")
    same = RedisSection(url="redis://a:1/0", orders_master="").orders_role()
    assert (same.url, same.master) == ("redis://a:1/0", "tickmesh-rts")

    async def close() -> None:
        await connect_redis(orders).close()  # builds without touching the network
    asyncio.run(close())


def test_quote_cache_serves_the_last_quote_while_the_tick_store_is_away(
        redis_server: RedisProcess) -> None:
    from bus.store.ticks import CheckpointRun

    async def main() -> None:
        ticks = RedisTickStore(redis_server.url, "ha")
        try:
            await ticks.start_session("f", 1, ["EURUSD"], 100)
            await ticks.write([CheckpointRun("EURUSD", 1, 1, [(1.1, 1.2, 0.0, 1.0, 1, 1)])], 100)
            riding = QuoteCache(ticks, ttl_s=0.0, stale_s=5.0)
            strict = QuoteCache(ticks, ttl_s=0.0)
            assert await riding.get("EURUSD") == await strict.get("EURUSD") == (1.1, 1.2)
            await asyncio.to_thread(redis_server.stop)
            assert await riding.get("EURUSD") == (1.1, 1.2)  # the last one read, not an error
            with pytest.raises(StoreUnavailable):
                await strict.get("EURUSD")  # stale_s 0: the error at once
            waiting = QuoteCache(ticks, ttl_s=0.0, stale_s=0.3)
            with pytest.raises(StoreUnavailable):
                await waiting.get("EURUSD")  # never read: waits for the store, then gives up
        finally:
            await ticks.close()
    asyncio.run(main())


class Quotes:
    """The one method of a tick store that a ``QuoteCache`` reads, counting its calls; the
    next ``failures`` calls find the store unavailable."""

    def __init__(self, **quotes: tuple[float, float]) -> None:
        self.quotes = quotes
        self.reads = 0
        self.failures = 0

    async def last(self, stream: str) -> SnapshotEntry | None:
        self.reads += 1
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("redis unreachable: (a test's outage)")
        quote = self.quotes.get(stream)
        return None if quote is None else SnapshotEntry(stream, 1, 1, (*quote, 0.0, 1.0, 1, 1))


def test_quote_cache_reads_each_symbol_at_most_once_per_ttl() -> None:
    clock, store = FakeClock(), Quotes(EURUSD=(1.1, 1.2))
    cache = QuoteCache(store, ttl_s=0.5, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        assert await cache.get("EURUSD") == (1.1, 1.2)
        store.quotes["EURUSD"] = (1.3, 1.4)
        clock.advance(0.49)
        assert await cache.get("EURUSD") == (1.1, 1.2)  # within the TTL: not read again
        assert store.reads == 1
        clock.advance(0.01)
        assert await cache.get("EURUSD") == (1.3, 1.4)  # the TTL is over: read again
        assert await cache.get("XAUUSD") is None
        assert await cache.get("XAUUSD") is None  # "no quote" is cached as well
        assert store.reads == 3
    asyncio.run(main())


def test_quote_cache_serves_a_stale_quote_only_while_it_is_younger_than_stale_s() -> None:
    clock, store = FakeClock(), Quotes(EURUSD=(1.1, 1.2))
    riding = QuoteCache(store, ttl_s=0.1, stale_s=2.0, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        assert await riding.get("EURUSD") == (1.1, 1.2)
        store.quotes["EURUSD"] = (1.3, 1.4)
        store.failures = 1_000
        clock.advance(1.9)  # past the TTL, within stale_s: the last quote, not an error
        assert await riding.get("EURUSD") == (1.1, 1.2)
        assert store.reads == 2
        clock.advance(0.2)  # older than stale_s: it waits for the store instead
        store.failures = 2
        assert await riding.get("EURUSD") == (1.3, 1.4)
        assert store.reads == 2 + 3  # one failed read, then ridden through: a failure, a success
        store.failures = 1
        with pytest.raises(StoreUnavailable):  # stale_s 0: the error at once
            await QuoteCache(store, ttl_s=0.1, clock=clock).get(  # type: ignore[arg-type]
                "EURUSD")
    asyncio.run(main())
