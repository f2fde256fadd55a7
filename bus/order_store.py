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
    P:xlog:{order_id}            list: the executor's log of the order (report frames, joined);
                                 entry ``seq`` is at index ``seq - 1``
    P:executed:{order_id}        set of exec ids of the log's fills and final decisions

The executor's log is append-only with a compare-and-set on its length
(:meth:`RedisOrderStore.append_execution`): an entry for position ``seq`` is written only if the
log holds exactly ``seq - 1`` entries, so two deciders (an executor and its restarted self, or a
fill and a cancel racing) can never both decide the same step: the loser gets the entries it
missed instead and decides again from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocols.errors import Fenced, InvalidOrder, StoreError
from protocols.order_codec import decode_order, encode_order
from protocols.orders import ExecutionReport, Order

from .store import redis_client, store_error

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

# KEYS: the log, the executed set. ARGV: position - 1, entry, exec id ("" : not an execution).
# Returns {1} appended, {0, entries from the position on} when the log is longer already, or
# {2, length} when it is shorter (a position beyond the end: the caller's bug, never written).
_APPEND = """
local n = redis.call('LLEN', KEYS[1])
local at = tonumber(ARGV[1])
if n == at then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  if ARGV[3] ~= '' then
    redis.call('SADD', KEYS[2], ARGV[3])
  end
  return {1}
end
if n < at then
  return {2, n}
end
return {0, redis.call('LRANGE', KEYS[1], at, -1)}
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

    async def append_execution(self, entry: ExecutionReport) -> list[ExecutionReport]:
        """Append ``entry`` to its order's execution log at position ``entry.seq`` if the log
        holds exactly ``entry.seq - 1`` entries, and record a fill or final decision as
        executed in the same step. Returns [] when appended, else the entries from position
        ``entry.seq`` on (decided by someone else first)."""
        ...

    async def executions(self, order_id: str, after: int = 0) -> list[ExecutionReport]:
        """The entries of the order's execution log after position ``after``."""
        ...

    async def close(self) -> None:
        ...


def _blob(order: Order | ExecutionReport) -> bytes:
    header, body = encode_order(order)
    return header + body


def _order(blob: bytes) -> Order:
    msg = decode_order([blob[:_HEADER], blob[_HEADER:]])
    if not isinstance(msg, Order):
        raise StoreError(f"an order key holds a {type(msg).__name__}, not an Order")
    return msg


def _entry(blob: bytes) -> ExecutionReport:
    msg = decode_order([blob[:_HEADER], blob[_HEADER:]])
    if not isinstance(msg, ExecutionReport) or msg.seq < 1:
        raise StoreError(f"an execution log holds a {type(msg).__name__} without a position")
    return msg


def is_execution(entry: ExecutionReport) -> bool:
    """True for the log entries recorded as executed: fills and final decisions."""
    return entry.is_fill or entry.state.terminal


class RedisOrderStore:
    """:class:`OrderStore` on one Redis server."""

    def __init__(self, url: str, key_prefix: str = "tm", socket_timeout_s: float = 1.0,
                 client: aioredis.Redis | None = None) -> None:
        self.prefix = key_prefix
        self.redis = client or redis_client(url, socket_timeout_s)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._write = self.redis.register_script(_WRITE)
        self._append = self.redis.register_script(_APPEND)

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
        """The set of exec ids carried out for an order (see :func:`is_execution`)."""
        return self._k("executed", order_id)

    async def append_execution(self, entry: ExecutionReport) -> list[ExecutionReport]:
        if entry.seq < 1:
            raise ValueError(f"an execution log entry needs a position >= 1, got {entry.seq}")
        oid = entry.order_id
        exec_id = entry.exec_id if is_execution(entry) else ""
        result = await self._call(self._append(
            keys=[self._k("xlog", oid), self.executed_key(oid)],
            args=[entry.seq - 1, _blob(entry), exec_id]))
        if result[0] == 2:
            raise StoreError(f"execution log of {oid} holds {result[1]} entries: position "
                             f"{entry.seq} is beyond its end")
        return [] if result[0] == 1 else [_entry(b) for b in result[1]]

    async def executions(self, order_id: str, after: int = 0) -> list[ExecutionReport]:
        blobs = await self._call(self.redis.lrange(self._k("xlog", order_id), after, -1))
        return [_entry(b) for b in blobs]

    async def close(self) -> None:
        await self.redis.aclose()
