"""Reads from an active-passive pair of history stores, switching when the active one is away.

ClickHouse has no promotion: the historian writes every batch to both servers, and a reader
picks one (REFERENCES.md section 4, the kdb+ pattern). :class:`FailoverHistoryReader` reads
from the *active* store; when a call raises :class:`~protocols.errors.StoreUnavailable` it
makes the same call once on the other store and, if that one answers, the other becomes the
active store (the reader stays there until it fails in turn; there is no switching back by
itself). When neither answers, the call raises StoreUnavailable naming both. A
:class:`~protocols.errors.StoreError` that is not "unavailable" (bad SQL, a missing table) is
raised as it is: the other server would answer the same.

How fast a switch is depends on how fast the active store fails: a killed server refuses the
connection at once; a hung one costs the store's receive timeout (keep it short for readers).
``stats()`` counts switches and reports each switch's time, from the start of the call that
failed to the other store's answer: what a reader waited.

:class:`HistoryReader` is the read half of :class:`bus.store.history.HistoryStore`: code that
only reads (chart history, reports, the backend's rebuild) takes one, and gets a single store
or this pair alike.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from bus.store.history import HistoryStore
from protocols.errors import StoreUnavailable
from protocols.history.schema import Columns, Table
from protocols.stats import percentile

__all__ = ["FailoverHistoryReader", "HistoryReader"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Switch times kept for stats() (the most recent; older ones are dropped).
_SWITCH_HISTORY = 1000


class HistoryReader(Protocol):
    """The read half of :class:`~bus.store.history.HistoryStore` (same contracts)."""

    name: str

    async def ping(self) -> None: ...

    async def watermarks(self, table: Table) -> dict[str, int]: ...

    async def read_above(self, table: Table, marks: Mapping[str, int], limit: int) -> Columns: ...

    async def ticks(self, stream: str, start_ns: int, end_ns: int, limit: int) -> Columns: ...

    async def bars(self, stream: str, res_s: int, start_ns: int, end_ns: int,
                   countback: int = 0) -> Columns: ...

    async def orders(self, account: str | None, start_ns: int, end_ns: int) -> Columns: ...

    async def executions(self, account: str | None, start_ns: int, end_ns: int) -> Columns: ...


class FailoverHistoryReader:
    """:class:`HistoryReader` over ``stores`` (the first is active at the start).

    ``open()`` opens every store and succeeds when at least one answers; ``close()`` closes
    them all. The stores are the reader's: it opens and closes them.
    """

    def __init__(self, stores: Sequence[HistoryStore],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not stores:
            raise ValueError("FailoverHistoryReader needs at least one store")
        self._stores = list(stores)
        self._clock = clock
        self._active = 0
        self._switches = 0
        self._unanswered = 0
        self._switch_ms: deque[float] = deque(maxlen=_SWITCH_HISTORY)
        self.name = "failover:" + ",".join(s.name for s in self._stores)

    @property
    def active(self) -> HistoryStore:
        return self._stores[self._active]

    def stats(self) -> dict[str, Any]:
        """``active`` (its name), ``switches``, ``unanswered`` (calls no store answered), and
        switch times in ms: ``switch_ms_last``, ``_p50``, ``_p99``, ``_max`` (None before the
        first switch) and ``switch_ms`` (the most recent, oldest first)."""
        times = list(self._switch_ms)
        return {
            "active": self.active.name,
            "switches": self._switches,
            "unanswered": self._unanswered,
            "switch_ms_last": times[-1] if times else None,
            "switch_ms_p50": percentile(times, 0.5),
            "switch_ms_p99": percentile(times, 0.99),
            "switch_ms_max": max(times) if times else None,
            "switch_ms": times,
        }

    async def open(self) -> None:
        failures: list[StoreUnavailable] = []
        for i, store in enumerate(self._stores):
            try:
                await store.open()
            except StoreUnavailable as exc:
                log.warning("%s: %s is unavailable at open: %s", self.name, store.name, exc)
                failures.append(exc)
                if i == self._active:
                    self._active = (i + 1) % len(self._stores)
        if len(failures) == len(self._stores):
            raise StoreUnavailable(f"{self.name}: no store answers: "
                                   + "; ".join(str(e) for e in failures)) from failures[-1]

    async def close(self) -> None:
        for store in self._stores:
            try:
                await store.close()
            except Exception:  # close every store whatever one of them raises
                log.exception("%s: closing %s failed", self.name, store.name)

    async def ping(self) -> None:
        await self._read(lambda s: s.ping())

    async def watermarks(self, table: Table) -> dict[str, int]:
        return await self._read(lambda s: s.watermarks(table))

    async def read_above(self, table: Table, marks: Mapping[str, int], limit: int) -> Columns:
        return await self._read(lambda s: s.read_above(table, marks, limit))

    async def ticks(self, stream: str, start_ns: int, end_ns: int, limit: int) -> Columns:
        return await self._read(lambda s: s.ticks(stream, start_ns, end_ns, limit))

    async def bars(self, stream: str, res_s: int, start_ns: int, end_ns: int,
                   countback: int = 0) -> Columns:
        return await self._read(lambda s: s.bars(stream, res_s, start_ns, end_ns, countback))

    async def orders(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        return await self._read(lambda s: s.orders(account, start_ns, end_ns))

    async def executions(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        return await self._read(lambda s: s.executions(account, start_ns, end_ns))

    async def _read(self, call: Callable[[HistoryStore], Awaitable[T]]) -> T:
        started = self._clock()
        first = self._active
        try:
            return await call(self._stores[first])
        except StoreUnavailable as exc:
            if len(self._stores) == 1:
                self._unanswered += 1
                raise
            failed = exc
        other = (first + 1) % len(self._stores)
        try:
            result = await call(self._stores[other])
        except StoreUnavailable as exc:
            self._unanswered += 1
            raise StoreUnavailable(f"{self.name}: no store answers: {failed}; {exc}") from exc
        if self._active == first:  # concurrent calls that failed together switch once
            self._active = other
            self._switches += 1
            switch_ms = (self._clock() - started) * 1000.0
            self._switch_ms.append(switch_ms)
            log.warning("%s: reading from %s, %s is unavailable (%s); switched in %.1f ms",
                        self.name, self._stores[other].name, self._stores[first].name, failed,
                        switch_ms)
        return result
