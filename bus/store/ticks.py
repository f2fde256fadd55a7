"""The tick store: what feeds checkpoint and what the recovery service reads back.

:class:`TickStore` is the seam (a ``typing.Protocol``); :class:`RedisTickStore` implements it on
Redis. Keys, under the mesh's ``key_prefix`` ``P``::

    P:ticks:{stream}   Redis stream, one entry per checkpointed run of ticks. Entry id is
                       "{last_seq}-0"; fields f (first seq), s (session), d (msgpack rows), or
                       f + v=1 for an *unknown* range (numbers a crashed feed reserved: it may
                       have published ticks there that no checkpoint holds).
                       Capped by MINID ~ (last_seq - stream_cap).
    P:last             hash stream -> msgpack [session, seq, row]: the last value (snapshots)
    P:seq              hash stream -> last checkpointed sequence (everything <= it is settled)
    P:reserved         hash stream -> highest sequence a feed may have published
    P:feeds            hash feed -> msgpack {session, streams} (who publishes what; session is
                       the start time in microseconds)

Why reservations: checkpoints trail the live stream by a few milliseconds. A feed killed with
SIGKILL may have published ticks its checkpoint never saw; restarting at the checkpointed
sequence would reuse those numbers for different ticks. So a feed reserves numbers ahead
(``reserve_block``) and a new session starts above the reservation, recording the remainder
as an *unknown* range: a gap fill reports it as such, and a subscriber that did not receive a
number there live counts it as unknown (or lost, if it knows a tick was published there) rather
than skipping it. (The entry's ``v`` field predates the distinction: a recovery node of an
older version reads the range as void, as it always did.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

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
from protocols.errors import StoreError, StoreUnavailable
from protocols.ticks.messages import Row, SeqRange, SnapshotEntry, TickBatch

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CheckpointRun:
    """Consecutive ticks of one stream to persist, and the reservation to extend."""

    stream: str
    session: int
    first_seq: int
    rows: tuple[Row, ...] | list[Row]
    reserve_to: int = 0  # 0: leave the reservation as it is

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.rows) - 1


@dataclass(frozen=True, slots=True)
class FillResult:
    """What the store holds for a requested range; see ``GapFillReply`` for the meaning."""

    settled_to: int
    batches: tuple[TickBatch, ...]
    void: tuple[SeqRange, ...]
    unknown: tuple[SeqRange, ...] = ()
    known_stream: bool = True  # False: no feed ever opened the stream in this store


class TickStore(Protocol):
    """What feeds and recovery services need from the state store."""

    async def start_session(self, feed: str, session: int, streams: Sequence[str],
                            reserve_block: int) -> dict[str, int]:
        """Open a feed session; return the first sequence each stream must use."""
        ...

    async def end_session(self, feed: str, last_seq: dict[str, int]) -> None:
        """Close a session cleanly: release the unused reservation so no void is recorded."""
        ...

    async def write(self, runs: Sequence[CheckpointRun], stream_cap: int) -> None:
        """Persist runs of ticks, the last values and sequences, and extend reservations."""
        ...

    async def checkpointed(self, streams: Sequence[str]) -> dict[str, int]:
        """The last checkpointed sequence of each stream (0: none)."""
        ...

    async def snapshot(self, prefixes: Sequence[str]) -> list[SnapshotEntry]:
        ...

    async def last(self, stream: str) -> SnapshotEntry | None:
        """The last checkpointed tick of one stream, or None."""
        ...

    async def fill(self, stream: str, from_seq: int, to_seq: int, max_ticks: int) -> FillResult:
        ...

    async def close(self) -> None:
        ...


class QuoteCache:
    """The last (bid, ask) of each symbol in a tick store, read at most every ``ttl_s`` (one
    Redis read per symbol per ``ttl_s``, not one per order).

    ``stale_s`` > 0 rides through a tick store being failed over: the last quote read serves
    while it is younger than ``stale_s``, and a symbol never read waits for the store (with
    back-off) for up to ``stale_s``. With 0, a store error propagates at once. ``clock`` (in
    seconds) ages the quotes; tests pass a fake one.
    """

    def __init__(self, ticks: TickStore, ttl_s: float, stale_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ticks = ticks
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self._clock = clock
        self._read: dict[str, tuple[float, tuple[float, float] | None]] = {}  # when, quote
        self._backoff = Backoff(base_s=0.005, cap_s=0.1)

    async def get(self, symbol: str) -> tuple[float, float] | None:
        now = self._clock()
        hit = self._read.get(symbol)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            entry = await self._ticks.last(symbol)
        except StoreUnavailable:
            if not self.stale_s:
                raise
            if hit is not None and now - hit[0] <= self.stale_s:
                return hit[1]
            left = self.stale_s - (self._clock() - now)
            entry, _ = await ride_through(lambda: self._ticks.last(symbol), left, self._backoff)
        quote = (entry.row[0], entry.row[1]) if entry is not None else None
        self._read[symbol] = (now, quote)
        return quote


class RedisTickStore:
    """:class:`TickStore` on Redis (the RTS role)."""

    def __init__(self, url: str, key_prefix: str = "tm", socket_timeout_s: float = 1.0,
                 client: aioredis.Redis | None = None) -> None:
        self.url = url
        self.prefix = key_prefix
        self.redis = client or redis_client(url, socket_timeout_s)
        self._connection: RedisConnection | None = None

    @classmethod
    def from_config(cls, cfg: MeshConfig) -> RedisTickStore:
        """The tick store of a mesh (the RTS role of its ``[redis]`` section)."""
        connection = connect_redis(cfg.redis)
        store = cls(cfg.redis.url, cfg.mesh.key_prefix, client=connection.client)
        store._connection = connection
        return store

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc

    async def start_session(self, feed: str, session: int, streams: Sequence[str],
                            reserve_block: int) -> dict[str, int]:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(self._k("seq"), list(streams))
            pipe.hmget(self._k("reserved"), list(streams))
            seqs, reserved = await pipe.execute()
            starts: dict[str, int] = {}
            tx = self.redis.pipeline(transaction=True)
            for stream, last_b, res_b in zip(streams, seqs, reserved, strict=True):
                last, res = int(last_b or 0), int(res_b or 0)
                top = max(last, res)
                if res > last:
                    # The previous session may have published up to `res` without a
                    # checkpoint: nobody can tell which numbers carried ticks, so settle the
                    # range as unknown rather than reuse it.
                    tx.xadd(self._k("ticks", stream), {"f": last + 1, "v": 1}, id=f"{res}-0")
                    tx.hset(self._k("seq"), stream, res)
                tx.hset(self._k("reserved"), stream, top + reserve_block)
                starts[stream] = top + 1
            tx.hset(self._k("feeds"), feed, msgpack.packb(
                {"session": session, "streams": list(streams)}, use_bin_type=True))
            await tx.execute()
            return starts
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc

    async def end_session(self, feed: str, last_seq: dict[str, int]) -> None:
        if not last_seq:
            return
        try:
            await self.redis.hset(self._k("reserved"), mapping=last_seq)  # type: ignore[arg-type]
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc

    async def write(self, runs: Sequence[CheckpointRun], stream_cap: int) -> None:
        if not runs:
            return
        pipe = self.redis.pipeline(transaction=False)
        last_values: dict[str, bytes] = {}
        last_seqs: dict[str, int] = {}
        reserves: dict[str, int] = {}
        for run in runs:
            last = run.last_seq
            pipe.xadd(self._k("ticks", run.stream),
                      {"f": run.first_seq, "s": run.session,
                       "d": msgpack.packb(run.rows, use_bin_type=True)},
                      id=f"{last}-0", minid=max(0, last - stream_cap), approximate=True)
            last_values[run.stream] = msgpack.packb([run.session, last, run.rows[-1]],
                                                    use_bin_type=True)
            last_seqs[run.stream] = last
            if run.reserve_to:
                reserves[run.stream] = run.reserve_to
        # Reservations first in the wire order cost nothing and are safer: the feed trusts a
        # reservation only after this pipeline succeeded.
        if reserves:
            pipe.hset(self._k("reserved"), mapping=reserves)  # type: ignore[arg-type]
        pipe.hset(self._k("last"), mapping=last_values)  # type: ignore[arg-type]
        pipe.hset(self._k("seq"), mapping=last_seqs)  # type: ignore[arg-type]
        try:
            results = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc
        for res in results:
            if isinstance(res, ResponseError):
                # A retried run whose entry landed the first time: the id is already there.
                if "equal or smaller" in str(res):
                    continue
                raise StoreError(f"checkpoint write failed: {res}")
            if isinstance(res, Exception):
                raise store_error(res)

    async def checkpointed(self, streams: Sequence[str]) -> dict[str, int]:
        try:
            values = await self.redis.hmget(self._k("seq"), list(streams))
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc
        return {s: int(v) if v is not None else 0 for s, v in zip(streams, values, strict=True)}

    async def snapshot(self, prefixes: Sequence[str]) -> list[SnapshotEntry]:
        try:
            raw = await self.redis.hgetall(self._k("last"))
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc
        out = []
        for key, value in raw.items():
            stream = key.decode() if isinstance(key, bytes) else key
            if any(stream.startswith(p) for p in prefixes):
                session, seq, row = msgpack.unpackb(value, use_list=False)
                out.append(SnapshotEntry(stream, session, seq, tuple(row)))
        out.sort(key=lambda e: e.stream)
        return out

    async def last(self, stream: str) -> SnapshotEntry | None:
        """The last checkpointed tick of one stream, or None."""
        try:
            value = await self.redis.hget(self._k("last"), stream)
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc
        if value is None:
            return None
        session, seq, row = msgpack.unpackb(value, use_list=False)
        return SnapshotEntry(stream, session, seq, tuple(row))

    async def fill(self, stream: str, from_seq: int, to_seq: int, max_ticks: int) -> FillResult:
        key = self._k("ticks", stream)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self._k("seq"), stream)
        pipe.hget(self._k("reserved"), stream)
        # Entry ids are last sequences: every entry that overlaps [from, to] has an id in
        # [from, +), and the first with an id above `to` may still start inside the range.
        pipe.xrange(key, f"{from_seq}-0", f"{to_seq}-0", count=max(16, max_ticks // 8))
        pipe.xrange(key, f"{to_seq + 1}-0", "+", count=1)
        try:
            checkpointed_b, reserved_b, entries, after = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise store_error(exc) from exc
        if checkpointed_b is None and reserved_b is None and not entries and not after:
            # No feed ever opened the stream here (a session reserves before it publishes):
            # nothing will be stored for these numbers, so say so rather than "not yet".
            return FillResult(to_seq, (), (), known_stream=False)
        checkpointed = int(checkpointed_b or 0)
        batches: list[TickBatch] = []
        unknown: list[SeqRange] = []
        settled = min(to_seq, checkpointed)
        total = 0
        for entry_id, data in [*entries, *after]:
            last = int(entry_id.split(b"-")[0])
            first = int(data[b"f"])
            lo, hi = max(first, from_seq), min(last, to_seq)
            if lo > hi:
                continue
            if data.get(b"v"):
                unknown.append(SeqRange(lo, hi))
            else:
                rows = msgpack.unpackb(data[b"d"], use_list=False)
                batches.append(TickBatch(stream, int(data[b"s"]), lo,
                                         rows[lo - first: hi - first + 1]))
                total += hi - lo + 1
            if total >= max_ticks:
                settled = min(settled, hi)
                break
        else:
            if len(entries) >= max(16, max_ticks // 8) and entries:
                # The page was cut: speak only for what it covered.
                settled = min(settled, int(entries[-1][0].split(b"-")[0]))
        return FillResult(max(settled, from_seq - 1), tuple(batches), (), tuple(unknown))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        else:
            await self.redis.aclose()
