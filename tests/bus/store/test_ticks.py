"""The Redis tick store beyond its contract (tests/bus/store/contract_ticks.py, run by
test_contracts.py): its keys, the capped stream, a dead server, the error map."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from bus.store.connection import store_error
from bus.store.ticks import CheckpointRun, RedisTickStore
from nodes.servers.redis_server import RedisProcess
from protocols.errors import StoreError, StoreUnavailable
from tests.bus.store.contract_ticks import filled_seqs, rows
from tests.support import run_with

T = TypeVar("T")
pytestmark = pytest.mark.timeout(30)


def with_store(server: RedisProcess,
               body: Callable[[RedisTickStore], Awaitable[T]]) -> T:
    async def open_store() -> RedisTickStore:
        return RedisTickStore(server.url, "t")
    return run_with(open_store, body)


def test_a_session_reserves_in_the_reserved_hash(redis_server: RedisProcess) -> None:
    async def body(store: RedisTickStore) -> None:
        starts = await store.start_session("f", 1, ["A", "B"], 1000)
        assert starts == {"A": 1, "B": 1}
        assert await store.redis.hget("t:reserved", "A") == b"1000"
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
