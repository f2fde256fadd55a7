"""Write history to every server of a pair, spool what a dead one misses, re-sync it on return.

:class:`HistoryWriter` carries out :mod:`protocols.history.pair` for each server. The order of
a write is the safety argument:

1. If any server is not LIVE, the batch goes to the spool first: what that server misses is
   durable before anything else happens, so a historian killed at any moment after never
   leaves a row only on the live server and nowhere for the other.
2. Then each LIVE server gets the batch, concurrently (a slow server does not delay the other),
   filtered to the rows above that server's watermarks (after a restart the historian resumes
   from the lowest mark of its servers, so one of them may hold a batch already).
3. A server whose insert failed goes DOWN, and the batch is spooled if step 1 did not.

:meth:`HistoryWriter.maintain` runs between writes: it probes DOWN servers (with back-off),
reads a returning server's own watermarks, and copies one chunk per table of the spool's rows
above them; a server whose spool rows above its marks have all been copied is LIVE again
(under load every write spools a batch, so a copy that finds nothing may never come), and once
every server is, the spool is emptied of what all of them hold. With one server and no spool
(the DuckDB default), a failed insert is an error for the caller: there is nowhere else to put
the rows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bus.store.history import HistoryStore
from protocols.errors import StoreError
from protocols.history.pair import Link, LinkEvent, ServerLink
from protocols.history.schema import Columns, Table

__all__ = ["HistoryWriter", "ServerStats"]

log = logging.getLogger(__name__)

RESYNC_CHUNK = 100_000  # rows copied from the spool per table and maintain() call
# stats()' write_recent_max_ms: the longest write that ended this recently. Longer than the
# interval of a node's stats file (0.5 s), so a reader of that file misses no write.
RECENT_WRITES_S = 2.0
_RECENT_WRITES_KEPT = 1024  # bounded: at most this many recent writes are looked at


@dataclass(slots=True)
class ServerStats:
    rows: int = 0  # rows inserted live
    resynced: int = 0  # rows copied from the spool
    failures: int = 0  # inserts that failed (each sent the server DOWN)


@dataclass(slots=True)
class _Server:
    store: HistoryStore
    link: ServerLink
    marks: dict[Table, dict[str, int]] = field(default_factory=dict)
    stats: ServerStats = field(default_factory=ServerStats)


class HistoryWriter:
    """One writer over ``servers`` (one or two) and an optional ``spool``."""

    def __init__(self, servers: Sequence[HistoryStore], spool: HistoryStore | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 resync_chunk: int = RESYNC_CHUNK) -> None:
        if not servers:
            raise ValueError("a history writer needs at least one server")
        if len(servers) > 1 and spool is None:
            raise ValueError("a pair of history servers needs a spool")
        self.servers = [_Server(s, ServerLink(s.name)) for s in servers]
        self.spool = spool
        self.clock = clock
        self.resync_chunk = resync_chunk
        self.spooled = 0  # rows written to the spool
        self.write_max_s = 0.0  # the longest write() (the drill's write stall)
        self._recent: deque[tuple[float, float]] = deque(maxlen=_RECENT_WRITES_KEPT)
        self._rand = random.Random()

    async def open(self) -> None:
        """Open the spool and every server that answers; the others start DOWN."""
        if self.spool is not None:
            await self.spool.open()
        for s in self.servers:
            try:
                await s.store.open()
                s.marks = await self._read_marks(s.store)
            except StoreError as exc:
                if self.spool is None:
                    raise
                log.warning("history server %s is down at start: %s", s.store.name, exc)
                self._fail(s)

    async def resume_marks(self, table: Table) -> dict[str, int]:
        """Where the historian resumes ``table``: per group the lowest mark of the LIVE servers
        that hold the group (what some server lacks below it is in the spool), or the spool's
        marks when no server is LIVE."""
        live = [s.marks.get(table, {}) for s in self.servers if s.link.state is Link.LIVE]
        if not live:
            return await self.spool.watermarks(table) if self.spool is not None else {}
        out: dict[str, int] = {}
        for marks in live:
            for group, pos in marks.items():
                out[group] = min(pos, out.get(group, pos))
        return out

    def reader(self) -> HistoryStore:
        """A store to read back what was written (the first LIVE server, else the spool)."""
        for s in self.servers:
            if s.link.state is Link.LIVE:
                return s.store
        if self.spool is None:
            raise StoreError(f"history server {self.servers[0].store.name} is down")
        return self.spool

    async def write(self, batches: Sequence[Columns]) -> None:
        """Write ``batches`` (in watermark order) to every server, or to the spool for it."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return
        t0 = self.clock()
        spooled = False
        if any(not s.link.direct for s in self.servers):
            await self._spool(batches)
            spooled = True
        direct = [s for s in self.servers if s.link.direct]
        results = await asyncio.gather(*(self._insert(s, batches) for s in direct))
        if not all(results) and not spooled:
            await self._spool(batches)
        end = self.clock()
        self.write_max_s = max(self.write_max_s, end - t0)
        self._recent.append((end, end - t0))

    async def _insert(self, s: _Server, batches: Sequence[Columns]) -> bool:
        for batch in batches:
            marks = s.marks.setdefault(batch.table, {})
            rows = batch.above(marks)
            if not len(rows):
                continue
            try:
                await s.store.insert(rows)
            except StoreError as exc:
                if self.spool is None:
                    raise
                log.warning("history server %s failed an insert: %s", s.store.name, exc)
                s.stats.failures += 1
                self._fail(s)
                return False
            _raise_marks(marks, rows.marks())
            s.stats.rows += len(rows)
        return True

    async def _spool(self, batches: Sequence[Columns]) -> None:
        assert self.spool is not None  # a lone server's failure raised in _insert
        for batch in batches:
            await self.spool.insert(batch)
            self.spooled += len(batch)

    def _fail(self, s: _Server) -> None:
        s.link.on(LinkEvent.FAILED, self.clock(), self._rand.random())

    async def maintain(self) -> None:
        """Probe DOWN servers that are due, copy one spool chunk to each catching-up server,
        and empty the spool of what every server holds once all are LIVE."""
        if self.spool is None:
            return
        now = self.clock()
        for s in self.servers:
            if s.link.probe_due(now):
                await self._probe(s)
            if s.link.state is Link.RESYNC:
                await self._resync_step(s)

    async def _probe(self, s: _Server) -> None:
        try:
            await s.store.open()
            s.marks = await self._read_marks(s.store)
        except StoreError:
            self._fail(s)
            return
        log.info("history server %s answers again: re-syncing from the spool", s.store.name)
        s.link.on(LinkEvent.PROBED, self.clock())

    async def _resync_step(self, s: _Server) -> None:
        assert self.spool is not None
        copied = 0
        more = False  # a table had a whole chunk above the marks: there may be more
        try:
            for table in Table:
                marks = s.marks.setdefault(table, {})
                rows = await self.spool.read_above(table, marks, self.resync_chunk)
                if len(rows):
                    await s.store.insert(rows)
                    _raise_marks(marks, rows.marks())
                    copied += len(rows)
                    more = more or len(rows) >= self.resync_chunk
        except StoreError as exc:
            log.warning("history server %s failed during re-sync: %s", s.store.name, exc)
            self._fail(s)
            return
        s.stats.resynced += copied
        # Caught up once a step copied the spool's last rows above the marks, not only once a
        # step finds nothing: under load every write between two steps spools a batch, so a
        # step that must find nothing never comes. No write runs during a step (both are the
        # flusher's), so the server now holds everything the spool does.
        if more:
            return
        s.link.on(LinkEvent.CAUGHT_UP, self.clock())
        log.info("history server %s is live again (re-sync took %.0f ms)", s.store.name,
                 s.link.last_resync_s * 1000)
        if all(x.link.state is Link.LIVE for x in self.servers):
            await self._trim()

    async def _trim(self) -> None:
        assert self.spool is not None
        for table in Table:
            held: dict[str, int] | None = None
            for s in self.servers:
                marks = s.marks.get(table, {})
                held = dict(marks) if held is None else {
                    g: min(p, marks[g]) for g, p in held.items() if g in marks}
            if held:
                await self.spool.trim(table, held)

    @staticmethod
    async def _read_marks(store: HistoryStore) -> dict[Table, dict[str, int]]:
        return {t: await store.watermarks(t) for t in Table}

    def stats(self) -> dict[str, Any]:
        """``write_max_ms``: the longest write since the start; ``write_recent_max_ms``: the
        longest that ended in the last ``RECENT_WRITES_S`` (a drill samples it per window)."""
        since = self.clock() - RECENT_WRITES_S
        recent = max((d for end, d in self._recent if end >= since), default=0.0)
        return {
            "spooled": self.spooled,
            "write_max_ms": round(self.write_max_s * 1000, 1),
            "write_recent_max_ms": round(recent * 1000, 1),
            "servers": {s.store.name: {"state": s.link.state.value, "downs": s.link.downs,
                                       "last_resync_ms": round(s.link.last_resync_s * 1000, 1),
                                       "rows": s.stats.rows, "resynced": s.stats.resynced,
                                       "failures": s.stats.failures}
                        for s in self.servers},
        }

    async def close(self) -> None:
        for s in self.servers:
            await s.store.close()
        if self.spool is not None:
            await self.spool.close()


def _raise_marks(marks: dict[str, int], new: Mapping[str, int]) -> None:
    for group, pos in new.items():
        if pos > marks.get(group, -1):
            marks[group] = pos
