"""The history store in a DuckDB file: the embedded default, and the historian's spool.

Batches go in as Arrow tables (:func:`insert_arrow`: ``INSERT INTO t SELECT ... FROM`` the
registered table), never row by row: ``executemany`` of tuples runs at about a thousand rows a
second, an Arrow insert at millions (REFERENCES.md section 4). A batch is one statement, so
one transaction: it is applied whole or not at all, whatever partitions it spans.

DuckDB lets one process write a database file; a second process that opens it fails at once
with a lock error, raised here as a :class:`~protocols.errors.StoreError` naming the file.
The tables have no primary key: a duplicate row is accepted and read once (the shared reads
deduplicate by key, ``bus.store.history_sql``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from bus.store.history_sql import Dialect, Query, SqlHistoryStore, insert_prefix
from protocols.errors import StoreError
from protocols.history.schema import TABLES, Columns, ColumnType, Table

__all__ = ["DUCKDB", "DuckDBHistoryStore", "arrow_table", "insert_arrow"]

DUCKDB = Dialect(
    name="duckdb",
    type_name=lambda t: t.duckdb,
    placeholder=lambda name: f"${name}",
)

_ARROW_TYPES = {
    ColumnType.STRING: pa.string(),
    ColumnType.BYTES: pa.binary(),
    ColumnType.UINT64: pa.uint64(),
    ColumnType.UINT32: pa.uint32(),
    ColumnType.INT8: pa.int8(),
    ColumnType.FLOAT64: pa.float64(),
}
_SCHEMAS = {t: pa.schema([(c.name, _ARROW_TYPES[c.type]) for c in spec.columns])
            for t, spec in TABLES.items()}
_INSERTS = {t: f"{insert_prefix(DUCKDB, spec)} SELECT {', '.join(spec.names)} FROM _batch"
            for t, spec in TABLES.items()}


def arrow_table(batch: Columns) -> pa.Table:
    """The batch as an Arrow table with the schema's column types."""
    return pa.table(batch.data, schema=_SCHEMAS[batch.table])


def insert_arrow(conn: duckdb.DuckDBPyConnection, batch: Columns) -> None:
    """Insert a batch in one statement from its Arrow table (the raw path a benchmark times)."""
    conn.register("_batch", arrow_table(batch))
    try:
        conn.execute(_INSERTS[batch.table])
    finally:
        conn.unregister("_batch")


class DuckDBHistoryStore(SqlHistoryStore):
    """History in the DuckDB file ``path`` (``":memory:"`` for a store that lives in RAM)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"duckdb:{self.path}", DUCKDB)
        self._conn: duckdb.DuckDBPyConnection | None = None

    def _connect(self) -> None:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = duckdb.connect(self.path)
            # pyarrow's first table imports pandas (0.3-2 s here): paid at open, not by the
            # first insert, which for the spool is the first batch of an outage (the drill
            # saw a 1.2 s write stall at the first kill of a server).
            arrow_table(Columns(Table.TICKS))

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            raise StoreError(f"{self.name}: the store is not open")
        return self._conn

    def _columns(self, query: Query) -> list[list[Any]]:
        rows = self._connection().execute(query.sql, query.params).fetchall()
        return [list(col) for col in zip(*rows, strict=True)]

    def _execute(self, query: Query) -> None:
        self._connection().execute(query.sql, query.params)

    def _insert_batch(self, batch: Columns) -> None:
        insert_arrow(self._connection(), batch)

    def _error(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
            return StoreError(f"{self.path}: the DuckDB file is open in another process (one "
                              f"process may write it; the historian owns its file): {exc}")
        if isinstance(exc, duckdb.Error):
            return StoreError(f"{self.name}: {exc}")
        return None
