"""Order state in Redis, fenced by epoch: the store seam of the binary-star backend pair.

:class:`OrderStore` is the seam (a ``typing.Protocol``); :class:`RedisOrderStore` implements it.
Every order write runs as one Lua script that first compares the writer's epoch with the
store's and refuses a stale one (:class:`~protocols.errors.Fenced`), so a backend that lost the
active role can never write, whatever the network did. Becoming active is a compare-and-swap on
the epoch (:meth:`acquire_epoch`), which is what ``protocols.binary_star.AcquireEpoch`` asks for.

Keys, under the mesh's ``key_prefix`` ``P`` (the RTSS role: never evicted before settlement)::

    P:epoch                      the fencing epoch (0: no active backend yet)
    P:order:{order_id}           the order record (the order codec's frames, joined)
    P:client:{account}:{coid}    -> order_id: the idempotency key of a client order id
    P:open                       set of order ids not yet terminal (reloaded on takeover)
    P:executed:{order_id}        set of execution ids the executor has carried out
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocols.errors import Fenced, InvalidOrder, StoreError
from protocols.order_codec import decode_order, encode_order
from protocols.orders import Order

from .store import store_error

# KEYS: epoch. ARGV: expected. Returns {1, new} on success, {0, current} otherwise.
_ACQUIRE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], cur + 1)
  return {1, cur + 1}
end
return {0, cur}
"""

# KEYS: epoch, order, client, open. ARGV: epoch, order_id, blob, terminal (0/1).
# Returns {1} written, {0, current} fenced, {2, other_order_id} client id taken by another order.
_WRITE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur ~= tonumber(ARGV[1]) then
  return {0, cur}
end
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[2] then
  return {2, owner}
end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[4], ARGV[2])
else
  redis.call('SADD', KEYS[4], ARGV[2])
end
return {1}
"""

_HEADER = 4  # the order codec's header frame: "TM", version, kind


class OrderStore(Protocol):
    """What the backend pair and the executor need from the order store."""

    async def current_epoch(self) -> int:
        ...

    async def acquire_epoch(self, expected: int) -> tuple[bool, int]:
        """Raise the epoch to ``expected + 1`` if it is still ``expected``; (won, epoch now)."""
        ...

    async def write(self, order: Order, epoch: int) -> None:
        """Persist ``order`` under ``epoch``; ``Fenced`` if a newer epoch is active."""
        ...

    async def get(self, order_id: str) -> Order | None:
        ...

    async def by_client_id(self, account: str, client_order_id: str) -> Order | None:
        ...

    async def open_orders(self) -> list[Order]:
        ...

    async def record_execution(self, order_id: str, exec_id: str) -> bool:
        """Remember that ``exec_id`` was carried out; False if it already was (a replay)."""
        ...

    async def close(self) -> None:
        ...


def _blob(order: Order) -> bytes:
    header, body = encode_order(order)
    return header + body


def _order(blob: bytes) -> Order:
    msg = decode_order([blob[:_HEADER], blob[_HEADER:]])
    if not isinstance(msg, Order):
        raise StoreError(f"an order key holds a {type(msg).__name__}, not an Order")
    return msg


class RedisOrderStore:
    """:class:`OrderStore` on one Redis server."""

    def __init__(self, url: str, key_prefix: str = "tm", socket_timeout_s: float = 1.0,
                 client: aioredis.Redis | None = None) -> None:
        self.prefix = key_prefix
        self.redis = client or aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._write = self.redis.register_script(_WRITE)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as exc:
            raise store_error(exc) from exc

    async def current_epoch(self) -> int:
        return int(await self._call(self.redis.get(self._k("epoch"))) or 0)

    async def acquire_epoch(self, expected: int) -> tuple[bool, int]:
        won, epoch = await self._call(self._acquire(keys=[self._k("epoch")], args=[expected]))
        return bool(won), int(epoch)

    async def write(self, order: Order, epoch: int) -> None:
        o = order.order
        keys = [self._k("epoch"), self._k("order", order.order_id),
                self._k("client", o.account, o.client_order_id), self._k("open")]
        result = await self._call(self._write(
            keys=keys, args=[epoch, order.order_id, _blob(order), int(order.terminal)]))
        if result[0] == 0:
            raise Fenced(epoch, int(result[1]))
        if result[0] == 2:
            other = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
            raise InvalidOrder("client_order_id", f"{o.client_order_id!r} of account "
                               f"{o.account!r} already names order {other}")

    async def get(self, order_id: str) -> Order | None:
        blob = await self._call(self.redis.get(self._k("order", order_id)))
        return None if blob is None else _order(blob)

    async def by_client_id(self, account: str, client_order_id: str) -> Order | None:
        order_id = await self._call(self.redis.get(self._k("client", account, client_order_id)))
        return None if order_id is None else await self.get(order_id.decode())

    async def open_orders(self) -> list[Order]:
        ids: Sequence[bytes] = sorted(await self._call(self.redis.smembers(self._k("open"))))
        if not ids:
            return []
        blobs = await self._call(self.redis.mget([self._k("order", i.decode()) for i in ids]))
        return [_order(b) for b in blobs if b is not None]

    def executed_key(self, order_id: str) -> str:
        """The set of execution ids carried out for an order (for scripts that record an
        execution atomically with something else, like the executor's decision)."""
        return self._k("executed", order_id)

    async def record_execution(self, order_id: str, exec_id: str) -> bool:
        added = await self._call(self.redis.sadd(self.executed_key(order_id), exec_id))
        return bool(added)

    async def close(self) -> None:
        await self.redis.aclose()
