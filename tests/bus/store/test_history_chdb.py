"""The ClickHouse store's DDL and queries on a current ClickHouse engine, in process (chdb).

The servers the tests run are Debian's 18.16; the schema must stay valid on current ClickHouse
too. ``ChdbHistoryStore`` is the ClickHouse store with its statements sent to a chdb session
instead of over the native protocol: the same dialect, DDL, inserts split by partition, reads
with ``argMax``/``GROUP BY`` and the trim mutation. Every case of the contract suite that takes
any store runs on it here (chdb checks the SQL; it is not a stand-in for the server).
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from chdb import session as chdb_session
from clickhouse_driver.util.escape import escape_param

from bus.store.history import HistoryStore
from bus.store.history_ch import ClickHouseHistoryStore
from bus.store.history_sql import Query, insert_prefix, partition_expr
from protocols.errors import StoreError
from protocols.history.schema import NS_PER_S, TABLES, Columns, Table, partition_of
from tests.bus.store import test_history_contract as contract
from tests.history_support import FEB, T0, OpenHistoryStore, batch, opener
from tests.support import run_with

pytestmark = pytest.mark.timeout(60)


class ChdbHistoryStore(ClickHouseHistoryStore):
    """The ClickHouse store, its statements run by a chdb session."""

    def __init__(self, sess: chdb_session.Session, database: str) -> None:
        # The driver Client is only used to render parameters as it would; it never connects.
        super().__init__("127.0.0.1", 9, database)
        self.name = f"chdb:{database}"
        self._session = sess

    def _render(self, query: Query) -> str:
        if not query.params:
            return query.sql
        rendered: str = self._client.substitute_params(query.sql, query.params,
                                                       self._client.connection.context)
        return rendered

    def _columns(self, query: Query) -> list[list[Any]]:
        table = self._session.query(self._render(query), "ArrowTable")
        return [col.to_pylist() for col in table.columns] if table.num_rows else []

    def _execute(self, query: Query) -> None:
        self._session.query(self._render(query))

    def _insert_batch(self, batch: Columns) -> None:
        for part in batch.by_partition():
            values = ", ".join(f"({', '.join(_literal(v) for v in row)})" for row in part.rows())
            self._execute(Query(f"{insert_prefix(self._dialect, part.spec)} VALUES {values}"))

    def _disconnect(self) -> None:
        pass

    def _error(self, exc: Exception) -> StoreError | None:
        return StoreError(f"{self.name}: {exc}")


def _literal(value: object) -> str:
    if isinstance(value, bytes):
        return f"unhex('{value.hex()}')"
    return str(escape_param(value, None))


@pytest.fixture(scope="module")
def chdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chdb_session.Session]:
    sess = chdb_session.Session(str(tmp_path_factory.mktemp("chdb")))
    try:
        yield sess
    finally:
        sess.close()


@pytest.fixture
def history_store(chdb: chdb_session.Session) -> OpenHistoryStore:
    database = f"t_{uuid.uuid4().hex[:12]}"
    return opener(lambda: ChdbHistoryStore(chdb, database))


# Every contract case that takes any store, collected again in this module, where
# ``history_store`` is the chdb store above.
for _name, _case in vars(contract).items():
    if _name.startswith("test_") and "history_store" in inspect.signature(_case).parameters:
        globals()[_name] = _case


def test_chdb_is_a_current_engine_and_keeps_the_ddl(chdb: chdb_session.Session) -> None:
    version = str(chdb.query("SELECT version()", "CSV")).strip().strip('"')
    assert int(version.split(".")[0]) >= 24
    database = f"t_{uuid.uuid4().hex[:12]}"

    async def body(store: HistoryStore) -> None:
        await store.open()  # again: every statement is IF NOT EXISTS
        for table, spec in TABLES.items():
            ddl = str(chdb.query(f"SHOW CREATE TABLE {database}.{table.value}", "TSVRaw"))
            assert f"ReplacingMergeTree({spec.version})" in ddl
            assert f"ORDER BY ({', '.join(spec.key)})" in ddl
            assert "PARTITION BY toYYYYMM(toDateTime(intDiv(" in ddl

    run_with(opener(lambda: ChdbHistoryStore(chdb, database)), body)


def test_chdb_partitions_the_way_partition_of_says(chdb: chdb_session.Session) -> None:
    times = [FEB - 1, FEB, T0 - 1, T0, 1_709_164_800 * NS_PER_S, 951_782_400 * NS_PER_S, 0]
    database = f"t_{uuid.uuid4().hex[:12]}"

    async def body(store: HistoryStore) -> None:
        await store.insert(batch(Table.TICKS, *({"stream": "EUR", "seq": i + 1, "ts_ns": t}
                                                for i, t in enumerate(times))))

    run_with(opener(lambda: ChdbHistoryStore(chdb, database)), body)
    parts = chdb.query(f"SELECT DISTINCT partition FROM system.parts WHERE database = "
                       f"'{database}' AND table = 'ticks' AND active", "ArrowTable")
    assert {int(p) for p in parts.column(0).to_pylist()} == {partition_of(t) for t in times}
    computed = chdb.query(f"SELECT ts_ns, {partition_expr('ts_ns')} FROM {database}.ticks",
                          "ArrowTable").to_pydict()
    assert sorted(zip(*computed.values(), strict=True)) == sorted(
        (t, partition_of(t)) for t in times)
