"""The history store on a ClickHouse server, over the native protocol (clickhouse-driver).

Tables are ``ReplacingMergeTree(version)`` partitioned by the UTC month of their time column
and sorted by their idempotency key, DDL valid on Debian's 18.16 and on current ClickHouse
(``bus.store.history_sql``; checked on a current engine by ``tests/bus/store/
test_history_chdb.py``). The merge collapses a repeated row some time later: a safety net,
since the reads deduplicate by key anyway and writers avoid repeats by watermarks.

Inserts are columnar (``columnar=True``, lz4-compressed), one INSERT per partition and at most
``MAX_ATOMIC_ROWS`` rows (:meth:`Columns.by_partition`): ClickHouse applies such an insert whole
or not at all, so a retry after an unknown outcome never leaves half a batch.

Failures: a server that refuses the connection, drops it or exceeds a timeout raises
:class:`~protocols.errors.StoreUnavailable` at once (connect timeout 0.25 s by default: the
driver's own defaults are 10 s and 300 s); the next call connects again. A server that
answers with an error (bad SQL, a limit) raises :class:`~protocols.errors.StoreError`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from clickhouse_driver import Client, errors

from bus.store.history_sql import Dialect, Query, SqlHistoryStore, insert_prefix, partition_expr
from protocols.errors import StoreError, StoreUnavailable
from protocols.history.schema import Columns, Table, TableSpec

__all__ = ["ClickHouseHistoryStore", "clickhouse_dialect", "insert_columns"]

# The driver logs every failed connect with a traceback; a dead server is expected here (the
# pair's failover) and reported once, by the StoreUnavailable this store raises.
logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)

# How often trim looks whether its DELETE mutation is done (mutations run in the background).
_MUTATION_POLL_S = 0.02
_MUTATION_TIMEOUT_S = 30.0

# A connection that broke or timed out: the outcome of the statement is unknown.
_UNAVAILABLE = (errors.NetworkError, errors.SocketTimeoutError,
                errors.UnexpectedPacketFromServerError, EOFError, OSError)


def clickhouse_dialect(database: str) -> Dialect:
    def engine(spec: TableSpec) -> str:
        return (f" ENGINE = ReplacingMergeTree({spec.version})"
                f" PARTITION BY {partition_expr(spec.time)} ORDER BY ({', '.join(spec.key)})")

    return Dialect(
        name="clickhouse",
        type_name=lambda t: t.clickhouse,
        placeholder=lambda name: f"%({name})s",
        engine=engine,
        prefix=f"{database}.",
        preamble=(f"CREATE DATABASE IF NOT EXISTS {database}",),
        delete="ALTER TABLE {table} DELETE WHERE {where}",
        bytes_as_hex=True,
    )


def insert_columns(client: Client, database: str, batch: Columns) -> None:
    """Insert a batch, one columnar INSERT per atomic part (the raw path a benchmark times)."""
    sql = insert_prefix(clickhouse_dialect(database), batch.spec) + " VALUES"
    for part in batch.by_partition():
        client.execute(sql, [part.data[n] for n in part.spec.names], columnar=True)


class ClickHouseHistoryStore(SqlHistoryStore):
    """History in ``database`` on the ClickHouse server at ``host:port`` (native protocol).

    ``connect_timeout_s`` bounds a connect and the ping the driver sends before each query;
    ``receive_timeout_s`` every send and receive. Large inserts need the latter above the time
    the server takes to write a batch (about 0.3 s per 100,000 rows here); a reader wants it
    short, since a hung server (not a dead one, which refuses at once) costs a reader the
    sum of both before it can switch.
    """

    def __init__(self, host: str, port: int, database: str = "tickmesh",
                 connect_timeout_s: float = 0.25, receive_timeout_s: float = 0.5) -> None:
        if not database.isidentifier():
            raise ValueError(f"database name must be an identifier, got {database!r}")
        super().__init__(f"ch:{host}:{port}", clickhouse_dialect(database))
        self.database = database
        # The ping before each query gets the connect timeout: a late pong only makes the
        # driver connect again, and a hung server then costs connect + receive timeouts
        # instead of two receive timeouts.
        self._client = Client(host, port=port, compression="lz4",
                              connect_timeout=connect_timeout_s,
                              send_receive_timeout=receive_timeout_s,
                              sync_request_timeout=min(connect_timeout_s, receive_timeout_s))

    def _connect(self) -> None:
        pass  # the driver connects at the first statement (CREATE DATABASE), and after a drop

    def _disconnect(self) -> None:
        self._client.disconnect()

    def _columns(self, query: Query) -> list[list[Any]]:
        cols = self._client.execute(query.sql, query.params, columnar=True)
        return [list(col) for col in cols]

    def _execute(self, query: Query) -> None:
        self._client.execute(query.sql, query.params)

    def _insert_batch(self, batch: Columns) -> None:
        insert_columns(self._client, self.database, batch)

    def _delete(self, table: Table, query: Query) -> None:
        # ALTER ... DELETE is a mutation that runs after the statement returns; trim's callers
        # read right after it, so wait until the table has no mutation left to do.
        self._execute(query)
        pending = Query("SELECT count() FROM system.mutations WHERE database = %(db)s AND "
                        "table = %(t)s AND is_done = 0", {"db": self.database, "t": table.value})
        deadline = time.monotonic() + _MUTATION_TIMEOUT_S
        while self._columns(pending)[0][0]:
            if time.monotonic() > deadline:
                raise StoreError(f"{self.name}: the DELETE on {table.value} is not done after "
                                 f"{_MUTATION_TIMEOUT_S:.0f} s (see system.mutations)")
            time.sleep(_MUTATION_POLL_S)

    def _error(self, exc: Exception) -> StoreError | None:
        if isinstance(exc, _UNAVAILABLE):
            return StoreUnavailable(f"{self.name}: {type(exc).__name__}: {exc}")
        if isinstance(exc, errors.Error):
            return StoreError(f"{self.name}: {exc}")
        return None
