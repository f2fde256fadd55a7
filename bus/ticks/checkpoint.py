"""Write-behind checkpoints of published ticks to the store, off the hot path.

The feed calls :meth:`Checkpointer.add` for every published batch (an O(1) append); a background
task flushes everything buffered every ``interval_s`` in one pipelined round trip. The buffer is
bounded: when the store is slow or away, the oldest ticks are dropped and counted (a subscriber
that needs them sees them as lost), live publishing never waits for the store.

The checkpointer also keeps each stream's sequence reservation ahead of the feed (see
``bus.store.ticks``): :meth:`reserved` is the highest sequence the store has confirmed.

Re-sync after a store failover: a checkpoint the old master accepted but had not replicated
when it died is gone from the new master. The checkpointer keeps the last ``recent`` ticks it
wrote; after a failed flush, before writing again, it reads each stream's last checkpointed
sequence and writes what the store lacks from that memory first (counted as ``resynced``; what
is older than the memory is counted as ``resync_short``: recovery cannot serve those ticks).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass

import msgpack

from bus.aio import wait_event
from bus.store.ticks import CheckpointRun, TickStore
from protocols.backoff import Backoff
from protocols.errors import StoreError
from protocols.ticks.messages import Row

log = logging.getLogger(__name__)

FLUSH_TICKS = 2_000  # ticks per checkpoint write at most (~1 ms of packing)


@dataclass(slots=True)
class CheckpointStats:
    buffered: int = 0
    written: int = 0
    flushes: int = 0
    failures: int = 0
    dropped: int = 0  # ticks dropped because the buffer was full
    resynced: int = 0  # ticks written again after a failover lost them on the store
    resync_short: int = 0  # ticks a failover lost that were no longer in memory
    last_error: str = ""


class Checkpointer:
    def __init__(self, store: TickStore, *, interval_s: float, capacity: int,
                 stream_cap: int, reserve_block: int, reserved: dict[str, int],
                 recent: int = 100_000) -> None:
        self._store = store
        self._interval = interval_s
        self._capacity = capacity
        self._stream_cap = stream_cap
        self._block = reserve_block
        self._reserved = dict(reserved)
        self._chunks: deque[tuple[str, int, int, list[Row]]] = deque()
        # Written chunks, newest last, as (stream, session, first, count, msgpack of the rows):
        # packed, 100,000 remembered ticks are a few thousand bytes objects, not ~700,000
        # tuples and floats for the garbage collector to walk (its full passes stalled the
        # feed's loop for ~30 ms in the Redis failover drill).
        self._recent: deque[tuple[str, int, int, int, bytes]] = deque()
        self._recent_ticks = 0
        self._recent_cap = recent
        self._suspect = False  # a flush failed: the store may have lost what it had
        # Capped at 100 ms: after a Redis failover the buffered checkpoints must reach the new
        # master within ~200 ms of its announcement, not at the next of 1 s retries. (Never
        # below the interval: a checkpoint_ms above 100 made Backoff refuse and the feed die.)
        self._backoff = Backoff(base_s=interval_s, cap_s=max(0.1, interval_s))
        self._failures = 0
        self._wake = asyncio.Event()
        self.stats = CheckpointStats()

    def reserved(self, stream: str) -> int:
        return self._reserved.get(stream, 0)

    def add(self, stream: str, session: int, first_seq: int, rows: list[Row]) -> None:
        """Buffer a published batch (hot path: no I/O)."""
        self._chunks.append((stream, session, first_seq, rows))
        self.stats.buffered += len(rows)
        self._enforce_bound()

    def _enforce_bound(self) -> None:
        while self.stats.buffered > self._capacity:
            _s, _ses, _f, old = self._chunks.popleft()
            self.stats.buffered -= len(old)
            self.stats.dropped += len(old)

    def _runs(self, chunks: list[tuple[str, int, int, list[Row]]], *, reassert: bool = False
              ) -> list[CheckpointRun]:
        """Merge consecutive chunks of each stream into runs (one store entry each).

        ``reassert``: write every stream's reservation again (at least as high as before): a
        failover may have lost it with the rest, and a successor feed must not start below
        numbers this one has published."""
        merged: dict[str, list[tuple[int, int, list[Row]]]] = {}
        for stream, session, first, rows in chunks:
            runs = merged.setdefault(stream, [])
            if runs and runs[-1][0] == session and runs[-1][1] + len(runs[-1][2]) == first:
                runs[-1][2].extend(rows)
            else:
                runs.append((session, first, list(rows)))
        out = []
        for stream, runs in merged.items():
            for i, (session, first, rows) in enumerate(runs):
                last = first + len(rows) - 1
                reserve = 0
                held = self._reserved.get(stream, 0)
                if i == len(runs) - 1 and (reassert or last + self._block // 2 > held):
                    reserve = max(last + self._block, held)
                out.append(CheckpointRun(stream, session, first, rows, reserve))
        return out

    async def flush(self) -> bool:
        """Write what is buffered, oldest first, at most about ``FLUSH_TICKS`` ticks (a backlog
        after an outage goes in slices: packing 20,000 ticks at once held the feed's loop for
        ~30 ms); on failure put it back (bounded) and return False."""
        if not self._chunks:
            return True
        chunks: list[tuple[str, int, int, list[Row]]] = []
        count = 0
        while self._chunks and count < FLUSH_TICKS:
            chunks.append(self._chunks.popleft())
            count += len(chunks[-1][3])
        self.stats.buffered -= count
        try:
            lost = await self._lost_on_store() if self._suspect else []
            runs = self._runs(lost + chunks, reassert=self._suspect)
            await self._store.write(runs, self._stream_cap)
        except StoreError as exc:
            self._suspect = True
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            # The slice goes back in front of anything added meanwhile, then the bound holds.
            # Only the slice is touched: re-adding the whole buffer on every failed attempt was
            # O(backlog) each time, ~10 times a second through an outage.
            self._chunks.extendleft(reversed(chunks))
            self.stats.buffered += count
            self._enforce_bound()
            return False
        for run in runs:
            if run.reserve_to:
                self._reserved[run.stream] = run.reserve_to
        self._suspect = False
        self.stats.resynced += sum(len(c[3]) for c in lost)
        self._remember(chunks)
        self.stats.written += count
        self.stats.flushes += 1
        return True

    def _remember(self, chunks: list[tuple[str, int, int, list[Row]]]) -> None:
        for stream, session, first, rows in chunks:
            self._recent.append((stream, session, first, len(rows),
                                 msgpack.packb(rows, use_bin_type=True)))
            self._recent_ticks += len(rows)
        while self._recent and self._recent_ticks - self._recent[0][3] >= self._recent_cap:
            self._recent_ticks -= self._recent.popleft()[3]

    async def _lost_on_store(self) -> list[tuple[str, int, int, list[Row]]]:
        """The remembered ticks the store no longer has (after a failover), oldest first."""
        if not self._recent:
            return []
        stored = await self._store.checkpointed(sorted({c[0] for c in self._recent}))
        lost: list[tuple[str, int, int, list[Row]]] = []
        oldest: dict[str, int] = {}
        for stream, session, first, count, packed in self._recent:
            oldest.setdefault(stream, first)
            have = stored.get(stream, 0)
            if first + count - 1 > have:
                skip = max(0, have + 1 - first)
                rows: list[Row] = list(msgpack.unpackb(packed, use_list=False))
                lost.append((stream, session, first + skip, rows[skip:]))
        for stream, first in oldest.items():
            self.stats.resync_short += max(0, first - 1 - stored.get(stream, 0))
        return lost

    async def run(self) -> None:
        """Flush every interval until cancelled; back off while the store fails."""
        while True:
            ok = await self.flush()
            if ok:
                if self._failures:
                    log.info("checkpoints resumed after %d failures", self._failures)
                self._failures = 0
                # A backlog is written slice after slice, yielding to the loop in between.
                delay = 0.0 if self.stats.buffered >= FLUSH_TICKS else self._interval
            else:
                if self._failures == 0:
                    log.warning("checkpoint write failed, buffering: %s",
                                self.stats.last_error)
                self._failures += 1
                delay = self._backoff.compute(self._failures, random.random())
            await wait_event(self._wake, delay)
            self._wake.clear()

    def kick(self) -> None:
        """Flush now rather than at the next interval (e.g. a reservation runs short)."""
        self._wake.set()
