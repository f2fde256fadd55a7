"""The fenced order store against a real redis-server: epochs, fencing, idempotency keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from bus.store.orders import RedisOrderStore
from nodes.servers.redis_server import RedisProcess
from protocols.errors import Fenced, InvalidOrder, StoreError, StoreUnavailable
from protocols.orders.messages import NewOrder, Order, OrderState, OrderType, Side

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


def routed(quantity: float = 2.0) -> Order:
    rec = Order.from_new("o1", NewOrder("acc", "c1", "EURUSD", Side.BUY, OrderType.MARKET,
                                        quantity, None, 1), epoch=1, now_ns=1)
    for state in (OrderState.ACCEPTED, OrderState.ROUTED):
        rec = rec.apply(rec.status_report(state, exec_id="b", epoch=1), epoch=1, now_ns=1)
    return rec


def test_the_execution_log_appends_once_per_position(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        rec = routed()
        first = rec.fill_report(0.5, 1.1, seq=1, exec_id="o1:1")
        assert await s.append_execution(first) == []
        # Another decider, same position (a restarted executor; a cancel racing the fill):
        # refused, and told what it missed.
        cancel = rec.status_report(OrderState.CANCELLED, exec_id="o1:1", epoch=1, seq=1)
        assert await s.append_execution(cancel) == [first]
        rec = rec.apply(first, epoch=1, now_ns=2)
        replace = rec.replace_report(3.0, None, exec_id="o1:2", epoch=1, seq=2)
        assert await s.append_execution(replace) == []
        # Appending past the end (a gap) is an error, and writes nothing.
        late = rec.fill_report(0.5, 1.1, seq=4, exec_id="o1:4")
        with pytest.raises(StoreError, match="holds 2 entries: position 4 is beyond its end"):
            await s.append_execution(late)
        assert await s.executions("o1") == [first, replace]
        assert await s.executions("o1", after=1) == [replace]
        assert await s.executions("o1", after=2) == []
        # Fills and final decisions are executions; a replace is not.
        assert await s.redis.smembers(s.executed_key("o1")) == {b"o1:1"}
    with_store(redis_server, body)


def test_an_entry_without_a_position_is_refused(redis_server: RedisProcess) -> None:
    async def body(s: RedisOrderStore) -> None:
        with pytest.raises(ValueError, match="position >= 1"):
            await s.append_execution(routed().fill_report(0.5, 1.1, seq=0, exec_id="o1:0"))
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


def test_an_order_id_never_overwrites_another_client_orders_record(
        redis_server: RedisProcess) -> None:
    """Defence in depth: two writers that (wrongly) pick the same order id cannot replace
    each other's record; only the record's own client order id may rewrite it."""
    async def body(s: RedisOrderStore) -> None:
        _, epoch = await s.acquire_epoch(0)
        first = order("o1", "c1", epoch)
        await s.write(first, epoch)
        with pytest.raises(StoreError, match="already names another client order"):
            await s.write(order("o1", "c2", epoch), epoch)
        assert await s.get("o1") == first
        assert await s.by_client_id("acc", "c2") is None
        await s.write(first, epoch)  # its own client order id: an idempotent rewrite
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
