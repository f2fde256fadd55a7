"""The Redis connection every store shares: the client (plain or through Sentinels), the map
from redis-py's errors to tickmesh's, and the ride-through loop for a store being failed over.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bus.config import RedisSection, parse_hostport
from protocols.backoff import Backoff
from protocols.errors import StoreError, StoreUnavailable

T = TypeVar("T")


# What a Redis call raises when the server or the connection fails. OSError: a socket error
# redis-py did not wrap. RuntimeError: uvloop's "unable to perform operation on <TCPTransport
# closed=True ...>; the handler is closed", when redis-py writes to a connection that a
# failover has just closed; uncaught, it ended the executor's reader task (Redis drill).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, RuntimeError)


def store_error(exc: Exception) -> StoreError:
    """The tickmesh error for a redis-py error.

    ``StoreUnavailable`` (worth retrying) for an unreachable server, a master being switched
    (no master known to the Sentinels, or a demoted master answering ``READONLY``); a plain
    ``StoreError`` otherwise, and for a refused password: retrying cannot fix that.
    """
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in str(exc) \
            or "NOAUTH" in str(exc):
        return StoreError(f"redis refused the password: {exc} (check redis.password, "
                          "redis.sentinel_password or the URL)")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)):
        return StoreUnavailable(f"redis unreachable: {exc}")
    if isinstance(exc, RuntimeError) and "closed" in str(exc):
        return StoreUnavailable(f"redis connection closed under a command: {exc}")
    return StoreError(f"redis error: {exc}")


async def guarded(command: Callable[[], Awaitable[T]]) -> T:
    """``await command()``, a redis-py error raised as the tickmesh one (:func:`store_error`)."""
    try:
        return await command()
    except REDIS_ERRORS as exc:
        raise store_error(exc) from exc


def redis_client(url: str, socket_timeout_s: float = 1.0) -> aioredis.Redis:
    """The asyncio Redis client every store uses.

    A command that finds its pooled connection closed (the server restarted, or a proxy cut
    it) is retried once on a fresh connection: every command the stores send may run twice
    (writes are idempotent or compare-and-set), and without it the first request after any
    reconnect would fail. A timeout is not retried: the caller's deadline is the socket
    timeout, and a slow server gets no second helping of load.
    """
    return aioredis.Redis.from_url(
        url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
        health_check_interval=0, retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError])


def connect_redis(section: RedisSection) -> RedisConnection:
    """The client of one store role as a ``[redis]`` section describes it: a URL, or the
    master of ``section.master`` found through ``section.sentinels`` (pass
    ``section.orders_role()`` for the order store).

    Through Sentinels every new connection asks them for the current master (redis-py's
    ``SentinelManagedConnection``), and a demoted master's ``READONLY`` drops the connection,
    so after a switch the next attempt lands on the new master. The retry across the switch
    itself is the caller's (see ``RedisOrderStore``'s deadline); here a command is retried once
    on a fresh connection, as :func:`redis_client` does.
    """
    timeout = section.socket_timeout_ms / 1000
    if not section.sentinels:
        return RedisConnection(redis_client(section.url, timeout))
    addresses = [parse_hostport(f"redis.sentinels[{i}]", a)
                 for i, a in enumerate(section.sentinels)]
    # No retries inside a Sentinel query (redis-py's default backs off for seconds): the
    # caller's deadline decides how long to keep asking.
    sentinel = Sentinel(addresses, sentinel_kwargs={  # type: ignore[no-untyped-call]
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "password": section.sentinel_password or None, "retry": Retry(NoBackoff(), 0)})
    client = sentinel.master_for(
        section.master, socket_timeout=timeout, socket_connect_timeout=timeout,
        password=section.password or None, db=section.db, health_check_interval=0,
        retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError])
    return RedisConnection(client, sentinel)


class RedisConnection:
    """A store's Redis client and, through Sentinels, the Sentinel clients behind it (closed
    with it)."""

    def __init__(self, client: aioredis.Redis, sentinel: Sentinel | None = None) -> None:
        self.client = client
        self.sentinel = sentinel

    async def close(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            for s in self.sentinel.sentinels:
                await s.aclose()


async def ride_through(command: Callable[[], Awaitable[T]], deadline_s: float,
                       backoff: Backoff) -> tuple[T, int]:
    """Run ``command`` again while it raises ``StoreUnavailable`` (a store being failed over),
    with jittered back-off, until ``deadline_s`` after the first try; then the last
    ``StoreUnavailable`` propagates. Returns the result and how many tries failed first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    failures = 0
    while True:
        try:
            return await command(), failures
        except StoreUnavailable:
            now = loop.time()
            if now >= deadline:
                raise
        failures += 1
        await asyncio.sleep(min(backoff.compute(failures, random.random()), deadline - now))


__all__ = ["REDIS_ERRORS", "RedisConnection", "connect_redis", "guarded", "redis_client",
           "ride_through", "store_error"]
