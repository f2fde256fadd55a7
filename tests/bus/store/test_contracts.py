"""Each store seam's contract run against every implementation there is: the tick store
(``contract_ticks.py``) and the order store (``contract_orders.py``), on a plain redis-server
and through Sentinels (the shared HA topology of ``tests/conftest.py``, so its data sits under
a key prefix of the test's own); the order store also as the backend pair's store
(``PairStore``, active with its peer away: its client index, backlog and write-behind in the
path).

Adding an implementation is one fixture that returns an opener (an async function that opens
a store on this test's own empty data), and its name in ``TICK_STORES`` or ``ORDER_STORES``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import zmq.asyncio

from bus.aio import cancel_and_wait
from bus.config import MeshConfig, MeshSection, RedisSection
from bus.orders.pair_store import PairStore
from bus.store.orders import OrderStore, RedisOrderStore
from bus.store.ticks import RedisTickStore
from nodes.drills.ports import tcp_endpoint
from nodes.servers.redis_ha import MASTER_NAMES, RedisHA, Role
from nodes.servers.redis_server import RedisProcess
from tests.bus.store.contract_orders import OpenOrderStore, OrderStoreContract, order
from tests.bus.store.contract_ticks import OpenTickStore, TickStoreContract
from tests.support import run_with

pytestmark = pytest.mark.timeout(30)
S = TypeVar("S")

TICK_STORES = ["redis_tick_store", "sentinel_tick_store"]
ORDER_STORES = ["redis_order_store", "sentinel_order_store", "pair_order_store"]


@pytest.fixture(params=TICK_STORES)
def tick_store(request: pytest.FixtureRequest) -> OpenTickStore:
    opener: OpenTickStore = request.getfixturevalue(request.param)
    return opener


@pytest.fixture(params=ORDER_STORES)
def order_store(request: pytest.FixtureRequest) -> OpenOrderStore:
    opener: OpenOrderStore = request.getfixturevalue(request.param)
    return opener


def sentinel_mesh(ha: RedisHA) -> MeshConfig:
    """A mesh on ``ha``'s Sentinels, under a key prefix no other test uses."""
    return MeshConfig(
        mesh=MeshSection(key_prefix=f"c{uuid.uuid4().hex[:8]}"),
        redis=RedisSection(sentinels=tuple(f"{h}:{p}" for h, p in ha.sentinels),
                           master=MASTER_NAMES[Role.RTS], orders_master=MASTER_NAMES[Role.RTSS],
                           password=ha.password or "", deadline_ms=2000))


def opener(make: Callable[[], S]) -> Callable[[], Awaitable[S]]:
    async def open_store() -> S:
        return make()
    return open_store


@pytest.fixture
def redis_tick_store(redis_server: RedisProcess) -> OpenTickStore:
    return opener(lambda: RedisTickStore(redis_server.url, "t"))


@pytest.fixture
def sentinel_tick_store(redis_ha: RedisHA) -> OpenTickStore:
    cfg = sentinel_mesh(redis_ha)
    return opener(lambda: RedisTickStore.from_config(cfg))


@pytest.fixture
def redis_order_store(redis_server: RedisProcess) -> OpenOrderStore:
    return opener(lambda: RedisOrderStore(redis_server.url, "t"))


@pytest.fixture
def sentinel_order_store(redis_ha: RedisHA) -> OpenOrderStore:
    """Through Sentinels to the RTSS master, which has a replica: every deciding write waits
    for it (``WAIT``), the path a plain server never takes."""
    cfg = sentinel_mesh(redis_ha)
    return opener(lambda: RedisOrderStore.from_config(cfg))


class _Alone:
    """The pair state of a node whose peer is away: every batch is written through."""

    def pair_state(self) -> tuple[bool, int]:
        return False, 0

    def peer_ready(self) -> bool:
        return False


class AlonePairStore(PairStore):
    """The pair store of an active node whose passive peer is away, activated whenever it
    wins an epoch (the backend activates it at takeover), its tasks running. Its client index
    decides idempotency, its backlog answers reads, its write-behind writes to Redis."""

    def __init__(self, url: str) -> None:
        self.ctx = zmq.asyncio.Context()
        super().__init__(RedisOrderStore(url, "t"), self.ctx, _Alone(), bind=tcp_endpoint(),
                         peer=tcp_endpoint(), ack_timeout_s=0.05)
        self.tasks = [asyncio.create_task(t) for t in (self.flusher(), self.acks(),
                                                        self.catch_up())]

    async def acquire_epoch(self, expected: int) -> tuple[bool, int]:
        won, epoch = await super().acquire_epoch(expected)
        if won:
            self.deactivate()
            await self.activate(epoch)
        return won, epoch

    async def close(self) -> None:
        # Re-cancelled while a library call swallows the first cancel (bus.aio: why).
        await cancel_and_wait(self.tasks, what="pair store")
        await super().close()
        self.ctx.term()


@pytest.fixture
def pair_order_store(redis_server: RedisProcess) -> OpenOrderStore:
    async def open_store() -> OrderStore:
        return AlonePairStore(redis_server.url)
    return open_store


class TestTickStore(TickStoreContract):
    pass


class TestOrderStore(OrderStoreContract):
    pass


def test_the_sentinel_order_store_writes_to_the_rtss_master_and_waits_for_its_replica(
        redis_ha: RedisHA, sentinel_order_store: OpenOrderStore) -> None:
    """The fixture is what it says: the order lands on the RTSS group, on its replica too by
    the time the write returns."""
    master = redis_ha.master_address(Role.RTSS)
    replica = next(s for s in redis_ha.servers(Role.RTSS) if s.address != master)

    async def body(store: OrderStore) -> None:
        assert isinstance(store, RedisOrderStore)
        _, epoch = await store.acquire_epoch(0)
        await store.write(order(epoch=epoch), epoch)
        on_replica = RedisOrderStore(replica.url, store.prefix)
        try:
            assert await on_replica.get("o1") == order(epoch=epoch)
        finally:
            await on_replica.close()
    run_with(sentinel_order_store, body)
