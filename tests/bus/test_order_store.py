"""The fenced order store against a real redis-server: epochs, fencing, idempotency keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from bus.order_store import RedisOrderStore
from nodes.servers import RedisProcess
from protocols.errors import Fenced, InvalidOrder, StoreUnavailable
from protocols.orders import NewOrder, Order, OrderState, OrderType, Side

T = TypeVar("T")
pytestmark = pytest.mark.timeout(30)


def new(coid: str = "c1", account: str = "acc") -> NewOrder:
    return NewOrder(account, coid, "EURUSD", Side.BUY, OrderType.LIMIT, 1.0, 1.08, 1)


def order(order_id: str = "o1", coid: str = "c1", epoch: int = 1) -> Order:
    return Order.from_new(order_id, new(coid), epoch=epoch, now_ns=10)


def with_store(server: RedisProcess, body: Callable[[RedisOrderStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = RedisOrderStore(server.url, "t")
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def test_epoch_is_a_compare_and_swap(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        assert await s.current_epoch() == 0
        assert await s.acquire_epoch(0) == (True, 1)
        assert await s.acquire_epoch(0) == (False, 1)  # someone else took 1 first
        assert await s.acquire_epoch(1) == (True, 2)
        assert await s.current_epoch() == 2
    with_store(redis_server, body)


def test_write_and_read_back(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        o = order(epoch=epoch)
        await s.write(o, epoch)
        assert await s.get("o1") == o
        assert await s.by_client_id("acc", "c1") == o
        assert await s.by_client_id("acc", "nope") is None
        assert await s.open_orders() == [o]
    with_store(redis_server, body)


def test_stale_active_cannot_write(redis_server: RedisProcess) -> None:
    """Two backends both believe they are active; only the newer epoch's writes land."""
    async def body(s: RedisOrderStore) -> None:
        _, old = await s.acquire_epoch(0)  # backend A
        _, new_epoch = await s.acquire_epoch(old)  # backend B took over (A did not notice)
        with pytest.raises(Fenced) as info:
            await s.write(order("oA", "cA", epoch=old), old)
        assert (info.value.epoch, info.value.current) == (old, new_epoch)
        assert await s.get("oA") is None and await s.by_client_id("acc", "cA") is None
        await s.write(order("oB", "cB", epoch=new_epoch), new_epoch)
        assert [o.order_id for o in await s.open_orders()] == ["oB"]
    with_store(redis_server, body)


def test_client_order_id_names_one_order(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        await s.write(order("o1", "c1", epoch), epoch)
        await s.write(order("o1", "c1", epoch), epoch)  # the same order again: fine
        with pytest.raises(InvalidOrder, match="already names order o1"):
            await s.write(order("o2", "c1", epoch), epoch)
    with_store(redis_server, body)


def test_terminal_orders_leave_the_open_set(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        o = order(epoch=epoch)
        await s.write(o, epoch)
        rejected = Order(o.order_id, o.order, OrderState.REJECTED, 0.0, 0.0, epoch, 11,
                         o.quantity, o.price)
        await s.write(rejected, epoch)
        assert await s.open_orders() == []
        assert (await s.get("o1")) == rejected
    with_store(redis_server, body)


def test_executions_are_recorded_once(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        assert await s.record_execution("o1", "x1")
        assert not await s.record_execution("o1", "x1")  # a re-driven order after failover
        assert await s.record_execution("o1", "x2")
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
