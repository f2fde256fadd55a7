"""Order state in Redis, fenced by epoch: the store seam of the binary-star backend pair.

:class:`OrderStore` is the seam (a ``typing.Protocol``); :class:`RedisOrderStore` implements it.
Every order write runs as one Lua script that first compares the writer's epoch with the
store's and refuses a stale one (:class:`~protocols.errors.Fenced`), so a backend that lost the
active role can never write, whatever the network did. A batch of orders is one call of the same
script (:meth:`RedisOrderStore.write_batch`, one ``WAIT`` after it): the epoch is checked once,
then each order in turn by the rules of a single write. Becoming active is a compare-and-swap on
the epoch (:meth:`acquire_epoch`), which is what
``protocols.orders.binary_star.AcquireEpoch`` asks for.

Keys, under the mesh's ``key_prefix`` ``P`` (the RTSS role: never evicted before settlement)::

    P:epoch                      the fencing epoch (0: no active backend yet)
    P:order:{order_id}           the order record (the order codec's frames, joined)
    P:client:{account}:{coid}    -> order_id: the idempotency key of a client order id
    P:open                       set of order ids not yet terminal (reloaded on takeover)
    P:recent                     sorted set: "account US coid US order_id" of the client order
                                 ids written within the window, score: when (ms); the pair's
                                 client index is loaded from it (US: the byte 0x1f)
    P:xlog:{order_id}            list: the executor's log of the order (report frames, joined);
                                 entry ``seq`` is at index ``seq - 1``
    P:executed:{order_id}        set of exec ids of the log's fills and final decisions
    P:history                    stream: one entry per record write that changed the record,
                                 id "{n}-0" (n counts from 1, P:history:n), fields ``o`` (the
                                 record) and ``e1``, ``e2``, ... (the log entries it appended);
                                 capped near ``history_cap`` entries: what the historian
                                 records and backfills from (0: no stream)

The executor's log is decided by the active backend (``protocols.orders.record.judge_entry``:
a position is taken once) and written here with the record that applied it, in the same fenced
script (:meth:`OrderStore.write_batch` with ``entries``): the record and its log never disagree
in Redis, and a deposed backend writes neither. An entry is appended only at the log's end; one
found at its position already is the same write again (a lost reply, the write-behind after a
takeover) and is skipped; a different one there, or a position past the end, refuses the whole
call (``StoreError``) before anything is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from bus.config import MeshConfig
from bus.store.connection import (
    REDIS_ERRORS,
    RedisConnection,
    connect_redis,
    redis_client,
    ride_through,
    store_error,
)
from protocols.backoff import Backoff
from protocols.errors import Fenced, InvalidOrder, StoreError, StoreUnavailable
from protocols.orders.codec import EncodedEntry, EncodedOrder, from_blob
from protocols.orders.messages import ExecutionReport
from protocols.orders.record import Order
from protocols.orders.replication import WINDOW_S

# KEYS: epoch. ARGV: expected. Returns {1, new} on success, {0, current} otherwise.
_ACQUIRE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], cur + 1)
  return {1, cur + 1}
end
return {0, cur}
"""

# KEYS: epoch, open, recent, then per order its record and its client order id key, then per
# log entry its log and its executed set. ARGV: epoch, force (0/1), now_ms, window_ms, the number
# of orders, then per order its order_id, blob, terminal (0/1) and its member of the recent set,
# then per log entry the (1-based) index of its order, position - 1, the entry and its exec id
# if an execution (else ""). The epoch is checked once: {0, current} when fenced (nothing
# written). Then the entries, before anything is written: each must be at its log's end or be
# there already (the same write again); {2, entry, log length} for one past the end, {3, entry,
# position} for another entry at its position (nothing written). Otherwise {1, code, other,
# code, other, ...}, one pair per order in turn (a later order of the batch sees the earlier
# ones' writes): code 1 written, 2 the client order id names another order (other: its order
# id), 3 the order id already names another client order's record (never overwritten). With
# force (the pair's write-behind: its client index decided already) a client order id naming
# another order is pointed at this one (an id reused past the index's window names a new
# order). A client order id that now names its order is added to the recent set (score:
# now_ms); entries older than the window are trimmed. A written order's new log entries are
# appended, its executions added to its executed set. The last two KEYS are the history stream
# and its counter, the last ARGV its cap (0: no history): each record that was written and
# changed gets one stream entry with the record and the log entries appended with it.
_WRITE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur ~= tonumber(ARGV[1]) then
  return {0, cur}
end
local force, now, n = ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[5])
local e0, k0, cap = 5 + 4 * n, 3 + 2 * n, tonumber(ARGV[#ARGV])
local lens, fresh, changed = {}, {}, {}
for j = 1, (#ARGV - 1 - e0) / 4 do
  local key, at = KEYS[k0 + 2 * j - 1], tonumber(ARGV[e0 + 4 * j - 2])
  local len = lens[key] or redis.call('LLEN', key)
  if at > len then
    return {2, j, len}
  elseif at == len then
    fresh[#fresh + 1] = j
    len = len + 1
  elseif redis.call('LINDEX', key, at) ~= ARGV[e0 + 4 * j - 1] then
    return {3, j, at + 1}
  end
  lens[key] = len
end
local out = {1}
for i = 0, n - 1 do
  local rec, cid = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local oid, blob, terminal, member = ARGV[6 + 4 * i], ARGV[7 + 4 * i], ARGV[8 + 4 * i],
    ARGV[9 + 4 * i]
  local owner = redis.call('GET', cid)
  if owner and owner ~= oid and not force then
    out[#out + 1] = 2
    out[#out + 1] = owner
  elseif owner ~= oid and redis.call('EXISTS', rec) == 1 then
    out[#out + 1] = 3
    out[#out + 1] = ''
  else
    if owner ~= oid then
      redis.call('SET', cid, oid)
      redis.call('ZADD', KEYS[3], now, member)
    end
    if cap > 0 and redis.call('GET', rec) ~= blob then
      changed[i + 1] = {blob}
    end
    redis.call('SET', rec, blob)
    if terminal == '1' then
      redis.call('SREM', KEYS[2], oid)
    else
      redis.call('SADD', KEYS[2], oid)
    end
    out[#out + 1] = 1
    out[#out + 1] = ''
  end
end
for _, j in ipairs(fresh) do
  if out[2 * tonumber(ARGV[e0 + 4 * j - 3])] == 1 then
    redis.call('RPUSH', KEYS[k0 + 2 * j - 1], ARGV[e0 + 4 * j - 1])
    local executed = ARGV[e0 + 4 * j]
    if executed ~= '' then
      redis.call('SADD', KEYS[k0 + 2 * j], executed)
    end
    local rec = changed[tonumber(ARGV[e0 + 4 * j - 3])]
    if rec then
      rec[#rec + 1] = ARGV[e0 + 4 * j - 1]
    end
  end
end
for i = 1, n do
  local rec = changed[i]
  if rec then
    local args = {'XADD', KEYS[#KEYS - 1], 'MAXLEN', '~', cap,
                  redis.call('INCR', KEYS[#KEYS]) .. '-0', 'o', rec[1]}
    for k = 2, #rec do
      args[#args + 1] = 'e' .. (k - 1)
      args[#args + 1] = rec[k]
    end
    redis.call(unpack(args))
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - tonumber(ARGV[4])))
return out
"""

# The rebuild from history (protocols.history.rebuild): restores what the store lacks and
# never overwrites what it has. KEYS: epoch, open, recent, history counter, then per record its
# record key, client order id key, log and executed set. ARGV: epoch, history position,
# now_ms, window_ms, then per record its order id, blob, terminal (0/1), recent-set member,
# updated_ms, the number of its log entries, then per entry its blob and exec id ("" if none).
# Returns {records restored, entries restored}.
_RESTORE = """
local function raise_to(key, value)
  if tonumber(redis.call('GET', key) or '0') < value then
    redis.call('SET', key, value)
  end
end
raise_to(KEYS[1], tonumber(ARGV[1]))
raise_to(KEYS[4], tonumber(ARGV[2]))
local now, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local a, restored, logged = 5, 0, 0
for k = 5, #KEYS, 4 do
  local oid, blob, terminal, member = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local updated, n = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  a = a + 6
  if redis.call('SET', KEYS[k], blob, 'NX') then
    restored = restored + 1
    redis.call('SET', KEYS[k + 1], oid, 'NX')
    if terminal == '0' then
      redis.call('SADD', KEYS[2], oid)
    end
    if updated > now - window then
      redis.call('ZADD', KEYS[3], updated, member)
    end
  end
  local fresh = redis.call('LLEN', KEYS[k + 2]) == 0
  for j = 1, n do
    if fresh then
      redis.call('RPUSH', KEYS[k + 2], ARGV[a])
      if ARGV[a + 1] ~= '' then
        redis.call('SADD', KEYS[k + 3], ARGV[a + 1])
      end
      logged = logged + 1
    end
    a = a + 2
  end
end
return {restored, logged}
"""

RESTORE_PAGE = 500  # records restored per script call (a call holds Redis for its length)
OPEN_PAGE = 200  # order records read and decoded per round trip by open_orders
RECENT_PAGE = 5_000  # members of the recent set read per round trip
_US = "\x1f"  # separates the fields of a recent-set member: ids hold no control characters


class OrderStore(Protocol):
    """What the backend pair and the executor need from the order store."""

    async def current_epoch(self) -> int:
        ...

    async def acquire_epoch(self, expected: int) -> tuple[bool, int]:
        """Raise the epoch to ``expected + 1`` if it is still ``expected``; (won, epoch now)."""
        ...

    async def write(self, order: Order, epoch: int) -> None:
        """Persist ``order`` under ``epoch``; ``Fenced`` if a newer epoch is active,
        ``InvalidOrder`` if its client order id names another order, ``StoreError`` if its
        order id names another client order's record (nothing written then)."""
        ...

    async def write_batch(self, orders: Sequence[Order], epoch: int,
                          entries: Sequence[ExecutionReport] = ()) -> list[WriteOutcome]:
        """Persist ``orders`` under ``epoch`` in one step, each by the rules of :meth:`write`
        (in turn: a later order sees the earlier ones), and say per order what was done.
        ``entries``: the executor's log entries the records applied (the active backend
        decided them), appended to their logs with their records, or not at all
        (:func:`with_entries` says what they must be). ``Fenced`` (nothing written) if a newer
        epoch is active; ``StoreError`` (nothing written) if the store's log holds another
        entry at one of their positions or ends before one."""
        ...

    async def get(self, order_id: str) -> Order | None:
        ...

    async def by_client_id(self, account: str, client_order_id: str) -> Order | None:
        ...

    async def open_orders(self) -> list[Order]:
        ...

    async def executions(self, order_id: str, after: int = 0) -> list[ExecutionReport]:
        """The entries of the order's execution log after position ``after`` (all the active
        backend decided; a store written behind may lag it)."""
        ...

    async def close(self) -> None:
        ...


class WriteOutcome(Enum):
    """What a batched order write did with one order of the batch."""

    WRITTEN = 1
    CLIENT_ID_TAKEN = 2  # its client order id names another order: not written
    ORDER_ID_TAKEN = 3  # its order id names another client order's record: not written


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def raise_for(outcome: WriteOutcome, order: Order, other: str | None) -> None:
    """What :meth:`OrderStore.write` raises for a batch outcome other than WRITTEN
    (``other``: the order its client order id names)."""
    o = order.order
    if outcome is WriteOutcome.CLIENT_ID_TAKEN:
        raise InvalidOrder("client_order_id", f"{o.client_order_id!r} of account "
                           f"{o.account!r} already names order {other}")
    if outcome is WriteOutcome.ORDER_ID_TAKEN:
        raise StoreError(f"order id {order.order_id} already names another client "
                         "order's record: not overwritten")


def with_entries(orders: Sequence[Order], entries: Sequence[ExecutionReport]
                 ) -> list[EncodedOrder]:
    """``orders`` encoded with the log entries each applied: an order's entries must be at
    consecutive positions ending at its record's ``exec_seq`` (``ValueError`` otherwise, as
    for an entry of an order not in the batch)."""
    by_order: dict[str, list[ExecutionReport]] = {}
    for entry in entries:
        by_order.setdefault(entry.order_id, []).append(entry)
    out: list[EncodedOrder] = []
    for order in orders:
        own = by_order.pop(order.order_id, [])
        if own and ([e.seq for e in own]
                    != list(range(order.exec_seq - len(own) + 1, order.exec_seq + 1))):
            raise ValueError(f"order {order.order_id} at position {order.exec_seq}: entries "
                             f"{[e.seq for e in own]} are not the positions it applied last")
        out.append(EncodedOrder.of(order, tuple(map(EncodedEntry.of, own))))
    if by_order:
        raise ValueError(f"entries of orders not in the batch: {sorted(by_order)[:3]}")
    return out


def _member(account: str, client_order_id: str, order_id: str) -> str:
    return _US.join((account, client_order_id, order_id))


def _order(blob: bytes) -> Order:
    msg = from_blob(blob)
    if not isinstance(msg, Order):
        raise StoreError(f"an order key holds a {type(msg).__name__}, not an Order")
    return msg


def _entry(blob: bytes) -> ExecutionReport:
    msg = from_blob(blob)
    if not isinstance(msg, ExecutionReport) or msg.seq < 1:
        raise StoreError(f"an execution log holds a {type(msg).__name__} without a position")
    return msg


# Commands of one store in flight at once. Each takes a pooled connection, and through
# Sentinels every new connection first asks them for the master: with hundreds of requests in
# flight after a switch the pool grew to hundreds of connections, and opening them was 11 % of
# the active backend's samples in the Redis drill. Not fewer: a write with a replica online
# waits for its WAIT (up to wait_timeout_ms while the replica catches up), so 16 slots slowed
# the drain of a held backlog.
MAX_IN_FLIGHT = 64


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of the history stream: a record write and the log entries it appended."""

    position: int  # n of the entry id "{n}-0": consecutive from 1
    record: bytes  # the ORDER message, as stored in P:order:{order_id}
    entries: tuple[bytes, ...]  # EXECUTION_REPORT messages, in log order


def _history_position(entry_id: bytes | str) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _history_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> HistoryEntry:
    entries = []
    k = 1
    while (blob := fields.get(f"e{k}".encode())) is not None:
        entries.append(blob)
        k += 1
    return HistoryEntry(_history_position(entry_id), fields[b"o"], tuple(entries))


@dataclass(slots=True)
class OrderStoreStats:
    ridden: int = 0  # commands that succeeded after the store was unavailable for a while
    unavailable: int = 0  # commands that gave up at the deadline
    not_replicated: int = 0  # writes the replica did not confirm in time (then retried)


class RedisOrderStore:
    """:class:`OrderStore` on Redis (the RTSS role).

    Riding through a store outage (a Sentinel switch takes about 1.3-1.7 s here): a command
    that finds the store unavailable is retried with jittered back-off until ``deadline_s``
    after it was first tried, then raises ``StoreUnavailable``; so an order is held, not
    refused, while the master is switched. Every command here may run twice safely: the
    scripts are compare-and-set or idempotent for the same order.

    Durability: when the master has a replica, a write that decides something (an order
    record, an epoch, an execution log entry) is followed by ``WAIT 1`` in the same round trip
    and counts as done only once the replica has it, so a master that dies right after cannot
    take an acknowledged order or an executed fill with it.
    """

    def __init__(self, url: str, key_prefix: str = "tm", socket_timeout_s: float = 1.0,
                 client: aioredis.Redis | None = None, *, deadline_s: float = 0.0,
                 wait_timeout_s: float = 0.1, window_s: float = WINDOW_S,
                 history_cap: int = 0) -> None:
        self.prefix = key_prefix
        self.history_cap = history_cap  # entries the history stream keeps (0: none written)
        self.window_s = window_s  # the recent set keeps client order ids this long
        self.redis = client or redis_client(url, socket_timeout_s)
        self.deadline_s = deadline_s
        self.wait_timeout_s = wait_timeout_s
        self._connection: RedisConnection | None = None
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._write = self.redis.register_script(_WRITE)
        self._restore = self.redis.register_script(_RESTORE)
        self._backoff = Backoff(base_s=0.005, cap_s=0.1)
        self._replicas = (0, -1.0)  # (connected replicas, when known by the loop's clock)
        self._replicas_lock = asyncio.Lock()  # one INFO when it is stale, not one per caller
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.stats = OrderStoreStats()

    @classmethod
    def from_config(cls, cfg: MeshConfig) -> RedisOrderStore:
        """The order store of a mesh (the RTSS role of its ``[redis]`` section)."""
        section = cfg.redis.orders_role()
        connection = connect_redis(section)
        store = cls(section.url, cfg.mesh.key_prefix, client=connection.client,
                    deadline_s=section.deadline_ms / 1000,
                    wait_timeout_s=section.wait_timeout_ms / 1000,
                    history_cap=cfg.history.stream_cap if cfg.history.enabled else 0)
        store._connection = connection
        return store

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def _call(self, command: Callable[[], Awaitable[Any]], *, ride: bool = True) -> Any:
        """Run ``command``, again and again while the store is unavailable (if ``ride``: until
        the deadline); redis-py errors become tickmesh errors."""
        async def attempt() -> Any:
            # A slot per attempt, not per ride-through: a command backing off holds none.
            async with self._slots:
                try:
                    return await command()
                except REDIS_ERRORS as exc:
                    raise store_error(exc) from exc
        try:
            result, failures = await ride_through(attempt, self.deadline_s if ride else 0.0,
                                                  self._backoff)
        except StoreUnavailable:
            self.stats.unavailable += 1
            raise
        if failures:
            self.stats.ridden += 1
        return result

    async def _replica_count(self) -> int:
        """Replicas online at the master (connected and past their first sync: one still
        syncing cannot confirm a WAIT), as its INFO said within the last second."""
        if not self._replicas_stale():
            return self._replicas[0]
        # Every order in flight found it stale at once after a switch (the drill: INFO was
        # 7.5 % of the backend's samples): the first asks, the others wait and read its answer.
        async with self._replicas_lock:
            if self._replicas_stale():
                info = await self.redis.info("replication")
                count = sum(1 for key, value in info.items() if key.startswith("slave")
                            and isinstance(value, dict) and value.get("state") == "online")
                self._replicas = (count, asyncio.get_running_loop().time())
        return self._replicas[0]

    def _replicas_stale(self) -> bool:
        return asyncio.get_running_loop().time() - self._replicas[1] > 1.0

    async def _decide(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run a deciding script; with a replica, ``WAIT`` for it in the same round trip."""
        if not await self._replica_count():
            return await script(keys=keys, args=args)
        # EVALSHA by hand: a Script added to a pipeline makes redis-py send SCRIPT EXISTS
        # first, one more round trip per write. A server that lost the script (restarted, or
        # a promoted replica) answers NOSCRIPT once; load it and go again.
        for attempt in (1, 2):
            # As a context: a pipeline that failed mid-flight (the master died) is reset and
            # its connection returned, not left for the garbage collector to warn about.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", 1, int(self.wait_timeout_s * 1000))
                try:
                    result, replicated = await pipe.execute()
                    break
                except NoScriptError:
                    if attempt == 2:
                        raise
            await self.redis.script_load(script.script)
        if int(replicated) < 1:
            self._replicas = (0, -1.0)  # ask again: the replica may be gone
            self.stats.not_replicated += 1
            raise StoreUnavailable(f"the replica did not confirm the write within "
                                   f"{self.wait_timeout_s * 1000:g} ms")
        return result

    async def current_epoch(self) -> int:
        return int(await self._call(lambda: self.redis.get(self._k("epoch"))) or 0)

    async def acquire_epoch(self, expected: int) -> tuple[bool, int]:
        # Not ridden through: the pair's state machine retries a takeover on its own.
        won, epoch = await self._call(
            lambda: self._decide(self._acquire, [self._k("epoch")], [expected]), ride=False)
        return bool(won), int(epoch)

    async def write(self, order: Order, epoch: int) -> None:
        [(outcome, other)] = await self._write_encoded([EncodedOrder.of(order)], epoch)
        raise_for(outcome, order, other)

    async def write_batch(self, orders: Sequence[Order], epoch: int,
                          entries: Sequence[ExecutionReport] = ()) -> list[WriteOutcome]:
        if not orders:
            return []
        records = with_entries(orders, entries)
        return [outcome for outcome, _ in await self._write_encoded(records, epoch)]

    async def write_behind(self, records: Sequence[EncodedOrder], epoch: int
                           ) -> list[WriteOutcome]:
        """:meth:`write_batch` of encoded records for the pair's write-behind: its client
        index has decided every client order id already, so one naming another order is
        pointed at this one (reused past the window); ``ORDER_ID_TAKEN`` is still refused."""
        if not records:
            return []
        return [o for o, _ in await self._write_encoded(records, epoch, force=True)]


    async def _write_encoded(self, records: Sequence[EncodedOrder], epoch: int, *,
                             force: bool = False) -> list[tuple[WriteOutcome, str]]:
        """One fenced script call (and one WAIT) for ``records`` and their log entries: per
        record, the outcome and the order id its client order id names when that is another
        order's."""
        keys = [self._k("epoch"), self._k("open"), self._k("recent")]
        args: list[Any] = [epoch, int(force), int(time.time() * 1000),
                           int(self.window_s * 1000), len(records)]
        log_keys: list[str] = []
        log_args: list[Any] = []
        entries: list[tuple[str, EncodedEntry]] = []
        for i, r in enumerate(records, start=1):
            keys += [self._k("order", r.order_id),
                     self._k("client", r.account, r.client_order_id)]
            args += [r.order_id, r.blob, int(r.terminal),
                     _member(r.account, r.client_order_id, r.order_id)]
            for e in r.entries:
                log_keys += [self._k("xlog", r.order_id), self.executed_key(r.order_id)]
                log_args += [i, e.seq - 1, e.blob, e.executed]
                entries.append((r.order_id, e))
        keys += [*log_keys, self._k("history"), self._k("history", "n")]
        args += [*log_args, self.history_cap]
        result = await self._call(lambda: self._decide(self._write, keys, args))
        if result[0] == 0:
            raise Fenced(epoch, int(result[1]))
        if result[0] in (2, 3):
            oid, entry = entries[int(result[1]) - 1]
            what = (f"holds {result[2]} entries" if result[0] == 2
                    else "holds another entry there")
            raise StoreError(f"execution log of {oid} {what}: entry {entry.seq} not written "
                             "(nor anything of its batch)")
        return [(WriteOutcome(int(code)), _text(other))
                for code, other in zip(result[1::2], result[2::2], strict=True)]

    async def get(self, order_id: str) -> Order | None:
        blob = await self._call(lambda: self.redis.get(self._k("order", order_id)))
        return None if blob is None else _order(blob)

    async def get_many(self, order_ids: Sequence[str]) -> dict[str, Order]:
        """The records of ``order_ids`` the store has, by order id (one MGET a page)."""
        out: dict[str, Order] = {}
        for start in range(0, len(order_ids), OPEN_PAGE):
            page = order_ids[start:start + OPEN_PAGE]
            blobs = await self._call(partial(self.redis.mget,
                                             [self._k("order", i) for i in page]))
            out.update((i, _order(b)) for i, b in zip(page, blobs, strict=True) if b is not None)
        return out

    async def client_owners(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The order id each (account, client order id) names, for those that name one."""
        if not keys:
            return {}
        ids = await self._call(partial(self.redis.mget,
                                       [self._k("client", a, c) for a, c in keys]))
        return {key: _text(i) for key, i in zip(keys, ids, strict=True) if i is not None}

    async def recent_clients(self, since_s: float) -> list[tuple[tuple[str, str], str, float]]:
        """The recent set from ``since_s`` (wall-clock seconds) on: ((account, client order
        id), order id, when in seconds), oldest first, read in pages."""
        out: list[tuple[tuple[str, str], str, float]] = []
        low: str = str(int(since_s * 1000))
        while True:
            page = await self._call(partial(self.redis.zrangebyscore, self._k("recent"), low,
                                            "+inf", start=0, num=RECENT_PAGE, withscores=True))
            for member, score in page:
                account, coid, oid = _text(member).split(_US)
                out.append(((account, coid), oid, float(score) / 1000))
            if len(page) < RECENT_PAGE:
                return out
            # Scores repeat (one ms, many orders): go on from the last one, dropping what a
            # page already had.
            seen = {m for m, sc in page if sc == page[-1][1]}
            low = str(int(page[-1][1]))
            rest = await self._call(partial(self.redis.zrangebyscore, self._k("recent"), low,
                                            low, withscores=True))
            for member, score in rest:
                if member not in seen:
                    account, coid, oid = _text(member).split(_US)
                    out.append(((account, coid), oid, float(score) / 1000))
            low = "(" + low

    async def by_client_id(self, account: str, client_order_id: str) -> Order | None:
        key = self._k("client", account, client_order_id)
        order_id = await self._call(lambda: self.redis.get(key))
        return None if order_id is None else await self.get(order_id.decode())

    async def open_orders(self) -> list[Order]:
        ids: Sequence[bytes] = sorted(await self._call(
            lambda: self.redis.smembers(self._k("open"))))
        orders: list[Order] = []
        # In pages: decoding thousands of records at once would hold the event loop (and the
        # pair's heartbeats) for tens of milliseconds.
        for start in range(0, len(ids), OPEN_PAGE):
            page = [self._k("order", i.decode()) for i in ids[start:start + OPEN_PAGE]]
            blobs = await self._call(partial(self.redis.mget, page))
            orders.extend(_order(b) for b in blobs if b is not None)
        return orders

    def executed_key(self, order_id: str) -> str:
        """The set of exec ids carried out for an order (see ``codec.is_execution``)."""
        return self._k("executed", order_id)

    async def executions(self, order_id: str, after: int = 0) -> list[ExecutionReport]:
        blobs = await self._call(lambda: self.redis.lrange(self._k("xlog", order_id), after, -1))
        return [_entry(b) for b in blobs]

    async def history_position(self) -> int:
        """The position of the last history stream entry written (0: none, or a wiped store)."""
        value = await self._call(lambda: self.redis.get(self._k("history", "n")))
        return int(value or 0)

    async def restore(self, records: Sequence[EncodedOrder], epoch: int, position: int
                      ) -> tuple[int, int]:
        """Write back what the store lacks of ``records`` (a rebuild from history): a record
        it holds is never overwritten, a log it holds is left as it is. Raises the epoch and
        the history position to at least ``epoch`` and ``position``. Returns the records and
        log entries restored."""
        restored = logged = 0
        now_ms = int(time.time() * 1000)
        for start in range(0, len(records), RESTORE_PAGE):
            keys = [self._k("epoch"), self._k("open"), self._k("recent"),
                    self._k("history", "n")]
            args: list[Any] = [epoch, position, now_ms, int(self.window_s * 1000)]
            for r in records[start:start + RESTORE_PAGE]:
                updated_ms = r.decode().updated_ns // 1_000_000
                keys += [self._k("order", r.order_id),
                         self._k("client", r.account, r.client_order_id),
                         self._k("xlog", r.order_id), self.executed_key(r.order_id)]
                args += [r.order_id, r.blob, int(r.terminal),
                         _member(r.account, r.client_order_id, r.order_id), updated_ms,
                         len(r.entries)]
                for e in r.entries:
                    args += [e.blob, e.executed]
            got = await self._call(partial(self._decide, self._restore, keys, args))
            restored += int(got[0])
            logged += int(got[1])
        return restored, logged

    async def history(self, after: int, count: int, block_ms: int = 0) -> list[HistoryEntry]:
        """Up to ``count`` entries of the history stream after position ``after``, oldest first;
        ``block_ms > 0`` waits that long for the first one when there is none yet."""
        key = self._k("history")
        if block_ms > 0:
            reply = await self._call(lambda: self.redis.xread({key: f"{after}-0"}, count=count,
                                                              block=block_ms))
            items = reply[0][1] if reply else []
        else:
            items = await self._call(lambda: self.redis.xrange(key, f"({after}-0", "+",
                                                               count=count))
        return [_history_entry(i, f) for i, f in items]

    async def history_first(self) -> int:
        """The position of the oldest entry the history stream still holds (0: it is empty):
        what is older was trimmed by the cap and can only be a counted hole."""
        items = await self._call(lambda: self.redis.xrange(self._k("history"), "-", "+",
                                                           count=1))
        return _history_position(items[0][0]) if items else 0

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        else:
            await self.redis.aclose()
