"""Each store seam's contract run against every implementation there is: the tick store
(``contract_ticks.py``) and the order store (``contract_orders.py``), on a plain redis-server
and through Sentinels (the shared HA topology of ``tests/conftest.py``, so its data sits under
a key prefix of the test's own); the order store also as the backend pair's store
(``PairStore``, active with its peer away: its client index, backlog and write-behind in the
path; and with a passive peer that confirms every batch: acknowledged by the pair, Redis
written behind).

Adding an implementation is one fixture that returns an opener (an async function that opens
a store on this test's own empty data), and its name in ``TICK_STORES`` or ``ORDER_STORES``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from tests.support import run_with, wait_until

pytestmark = pytest.mark.timeout(30)
S = TypeVar("S")

TICK_STORES = ["redis_tick_store", "sentinel_tick_store"]
ORDER_STORES = ["redis_order_store", "sentinel_order_store", "pair_order_store",
                "linked_pair_order_store"]


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


class _Linked(_Alone):
    """The pair state of a node whose peer is alive and PASSIVE: it holds every batch."""

    def peer_ready(self) -> bool:
        return True


@dataclass
class _Passive(_Alone):
    """The passive node of the test's pair: it knows the highest epoch any store of the
    test won (in a pair, from the heartbeats of the node that won it)."""

    known: list[int]

    def pair_state(self) -> tuple[bool, int]:
        return True, max(self.known)


class AlonePairStore(PairStore):
    """The pair store of an active node whose passive peer is away, activated whenever it
    wins an epoch (the backend activates it at takeover), its tasks running. Its client index
    decides idempotency, its backlog answers reads, its write-behind writes to Redis. With
    ``linked``, a second pair store is its passive peer and confirms every batch: then the
    acknowledgements come from the pair, and Redis is written behind only."""

    def __init__(self, url: str, *, linked: list[int] | None = None) -> None:
        self.ctx = zmq.asyncio.Context()
        ends = (tcp_endpoint(), tcp_endpoint())
        view = _Alone() if linked is None else _Linked()
        super().__init__(RedisOrderStore(url, "t"), self.ctx, view, bind=ends[0], peer=ends[1],
                         ack_timeout_s=0.05 if linked is None else 1.0)
        runs = [self.flusher(), self.acks(), self.catch_up()]
        self.won = linked  # the epochs won by the test's stores
        self.peer: PairStore | None = None
        if linked is not None:
            self.peer = PairStore(RedisOrderStore(url, "t"), self.ctx, _Passive(linked),
                                  bind=ends[1], peer=ends[0], ack_timeout_s=1.0)
            runs.append(self.peer.serve_replica())
        self.tasks = [asyncio.create_task(t) for t in runs]

    async def acquire_epoch(self, expected: int) -> tuple[bool, int]:
        won, epoch = await super().acquire_epoch(expected)
        if won:
            if self.won is not None:
                self.won.append(epoch)
            self.deactivate()
            await self.activate(epoch)
        return won, epoch

    async def close(self) -> None:
        # Re-cancelled while a library call swallows the first cancel (bus.aio: why).
        await cancel_and_wait(self.tasks, what="pair store")
        await super().close()
        if self.peer is not None:
            await self.peer.close()
        self.ctx.term()


async def connected(store: AlonePairStore) -> AlonePairStore:
    """``store`` once its replication DEALER is connected to its peer (IMMEDIATE: a batch
    sent before would not even be sent, and be written through instead)."""
    async def up() -> bool:
        return bool(store.client.getsockopt(zmq.EVENTS) & zmq.POLLOUT)
    await wait_until(up, 5, "the replication link up")
    return store


@pytest.fixture
def pair_order_store(redis_server: RedisProcess) -> OpenOrderStore:
    async def open_store() -> OrderStore:
        return AlonePairStore(redis_server.url)
    return open_store


@pytest.fixture
def linked_pair_order_store(redis_server: RedisProcess) -> OpenOrderStore:
    return linked_opener(redis_server)


def linked_opener(redis_server: RedisProcess) -> OpenOrderStore:
    """Stores of one test, each with its passive peer, the peers knowing every epoch won."""
    won = [0]

    async def open_store() -> OrderStore:
        return await connected(AlonePairStore(redis_server.url, linked=won))
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


def test_the_linked_pair_store_is_acknowledged_by_its_peer(redis_server: RedisProcess) -> None:
    """The fixture is what it says: a write is confirmed by the passive peer, not written
    through, and the peer holds it until Redis has it."""
    async def body(store: OrderStore) -> None:
        assert isinstance(store, AlonePairStore) and store.peer is not None
        _, epoch = await store.acquire_epoch(0)
        await store.write(order(epoch=epoch), epoch)
        assert (store.stats.replicated, store.stats.written_through) == (1, 0)
        assert store.peer.stats.held == 1
        await wait_until(lambda: store.backing.get("o1"), 5, "o1 written behind")
    run_with(linked_opener(redis_server), body)
