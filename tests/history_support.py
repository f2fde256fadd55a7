"""Helpers for the history store tests: batches built from a few named fields, and stores
opened for a test.

:func:`batch` fills every column a row does not name with its type's zero, so a test states
only what it is about (``batch(Table.TICKS, {"stream": "EUR", "seq": 1, "ts_ns": T0})``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bus.store.history import HistoryStore
from protocols.history.schema import NS_PER_S, TABLES, Columns, ColumnType, Table

# 2026-01-01T00:00:00Z: rows in tests are stamped relative to it.
T0 = 1_767_225_600 * NS_PER_S
# 2026-02-01T00:00:00Z, the next partition (month) boundary.
FEB = T0 + 31 * 86_400 * NS_PER_S

OpenHistoryStore = Callable[[], Awaitable[HistoryStore]]

_ZERO: dict[ColumnType, Any] = {
    ColumnType.STRING: "",
    ColumnType.BYTES: b"",
    ColumnType.UINT64: 0,
    ColumnType.UINT32: 0,
    ColumnType.INT8: 0,
    ColumnType.FLOAT64: 0.0,
}


def batch(table: Table, *rows: Mapping[str, Any]) -> Columns:
    """A batch of ``rows``; a column a row leaves out is its type's zero."""
    spec = TABLES[table]
    out = Columns(table)
    for row in rows:
        unknown = set(row) - set(spec.names)
        if unknown:
            raise ValueError(f"{table.value} has no columns {sorted(unknown)}")
        out.append([row.get(c.name, _ZERO[c.type]) for c in spec.columns])
    return out


def tick_batch(stream: str, seqs: range | list[int], t0: int = T0,
               step_ns: int = NS_PER_S) -> Columns:
    """Ticks of ``stream`` numbered ``seqs``, tick ``seq`` at ``t0 + seq * step_ns``."""
    return batch(Table.TICKS, *({"stream": stream, "seq": s, "ts_ns": t0 + s * step_ns,
                                 "bid": 1.0 + s / 1000, "ask": 1.0002 + s / 1000}
                                for s in seqs))


def rows_of(cols: Columns) -> list[tuple[Any, ...]]:
    return list(cols.rows())


def opener(make: Callable[[], HistoryStore]) -> OpenHistoryStore:
    """An async function that makes a store and opens it (what ``run_with`` takes)."""
    async def open_store() -> HistoryStore:
        store = make()
        await store.open()
        return store
    return open_store


@contextmanager
def duckdb_file_held(path: Path) -> Iterator[None]:
    """``path`` held open by another process (DuckDB's one-writer lock) while in the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("", timeout=10)
