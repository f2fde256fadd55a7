"""What the ClickHouse and DuckDB history stores share: the SQL, and the store around it.

Every statement is generated from :data:`protocols.history.schema.TABLES` (one definition of
each table) for a :class:`Dialect`, the few places where the two engines differ: type names,
the table engine clause, parameter placeholders, how a DELETE is spelt, how bytes come back.

Reads deduplicate. A row stored twice (an insert retried after an unknown outcome, parts that
``ReplacingMergeTree`` has not merged yet) reads once: rows are grouped by the table's
idempotency key and each other column is ``argMax(column, version)``, the copy with the highest
version wins. Never ``FINAL``: ClickHouse 18.16 runs it single-threaded. ``argMax`` is spelt
the same on both engines (DuckDB knows it as an alias of ``arg_max``), and no output column is
aliased, so no alias can shadow a column inside WHERE or ORDER BY on ClickHouse: results are
read by position, in the spec's column order.

:class:`SqlHistoryStore` implements :class:`bus.store.history.HistoryStore` once; a subclass
connects, runs a statement, inserts a batch and says which driver errors mean "unavailable".
One worker thread owns the connection (``max_workers=1``): neither driver's connection may be
used by two threads at once, and nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocols.errors import StoreError
from protocols.history.schema import NS_PER_S, TABLES, Columns, ColumnType, Table, TableSpec

__all__ = [
    "Dialect",
    "Query",
    "SqlHistoryStore",
    "create_table",
    "insert_prefix",
    "partition_expr",
    "range_query",
    "read_above_query",
    "trim_query",
    "watermark_query",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one engine spells what differs. ``prefix`` qualifies table names ("db.")."""

    name: str
    type_name: Callable[[ColumnType], str]
    placeholder: Callable[[str], str]
    engine: Callable[[TableSpec], str] = lambda spec: ""
    prefix: str = ""
    preamble: tuple[str, ...] = ()
    delete: str = "DELETE FROM {table} WHERE {where}"
    # ClickHouse: bytes columns travel as hex (the driver decodes String as UTF-8 on read).
    bytes_as_hex: bool = False

    def table(self, spec: TableSpec) -> str:
        return f"{self.prefix}{spec.table.value}"


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    params: dict[str, Any] = field(default_factory=dict)


def partition_expr(time_column: str) -> str:
    """The PARTITION BY expression: the UTC month of a nanosecond column, as ``YYYYMM``.

    Equal to :func:`protocols.history.schema.partition_of`. The time zone is named so that a
    server configured for another zone still partitions the way the stores split batches.
    """
    return f"toYYYYMM(toDateTime(intDiv({time_column}, {NS_PER_S}), 'UTC'))"


def create_table(d: Dialect, spec: TableSpec) -> str:
    cols = ", ".join(f"{c.name} {d.type_name(c.type)}" for c in spec.columns)
    return f"CREATE TABLE IF NOT EXISTS {d.table(spec)} ({cols}){d.engine(spec)}"


def insert_prefix(d: Dialect, spec: TableSpec) -> str:
    """``INSERT INTO t (columns)``: ClickHouse appends ``VALUES``, DuckDB a ``SELECT``."""
    return f"INSERT INTO {d.table(spec)} ({', '.join(spec.names)})"


class _Params:
    """Collects query parameters and returns each one's placeholder."""

    def __init__(self, d: Dialect) -> None:
        self._d = d
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return self._d.placeholder(name)


def _winner(spec: TableSpec, name: str) -> str:
    """The value of ``name`` in the copy of a key with the highest version."""
    if name in spec.key:
        return name
    if name == spec.version:
        return f"max({name})"
    return f"argMax({name}, {spec.version})"


def _select(d: Dialect, spec: TableSpec, where: Sequence[str], order: Sequence[str],
            limit: int | None, narrow_on: Sequence[str] = (),
            narrow_order: Sequence[str] = ()) -> str:
    """The deduplicating SELECT.

    With a limit and ``narrow_on`` (the key columns of ``order`` that the WHERE does not fix
    to one value), only the rows whose ``narrow_on`` values are among the first ``limit``
    distinct ones are grouped: a superset of the first ``limit`` keys, found first by a
    DISTINCT on those columns alone. Grouping every row in range to return a few costs
    seconds on 18.16 for a million rows (a GROUP BY with an argMax state per column, on a
    String key), the DISTINCT of one integer column a small fraction of that.
    """
    outs = []
    for c in spec.columns:
        expr = _winner(spec, c.name)
        outs.append(f"hex({expr})" if d.bytes_as_hex and c.type is ColumnType.BYTES else expr)
    conditions = list(where)
    tail = ""
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        tail = f" LIMIT {int(limit)}"
        if narrow_on:
            cols = ", ".join(narrow_on)
            inner = f"SELECT DISTINCT {cols} FROM {d.table(spec)}"
            if where:
                inner += f" WHERE {' AND '.join(where)}"
            conditions.append(f"({cols}) IN ({inner} ORDER BY {', '.join(narrow_order)}{tail})")
    sql = f"SELECT {', '.join(outs)} FROM {d.table(spec)}"
    if conditions:
        sql += f" WHERE {' AND '.join(conditions)}"
    return sql + f" GROUP BY {', '.join(spec.key)} ORDER BY {', '.join(order)}{tail}"


def range_query(d: Dialect, table: Table, equal: Mapping[str, Any], start_ns: int | None,
                end_ns: int, limit: int | None, newest_first: bool = False) -> Query:
    """Rows with ``equal`` column values and ``start_ns <= time < end_ns``, in key order
    (``newest_first``: the reverse), one per key."""
    spec = TABLES[table]
    p = _Params(d)
    where = [f"{name} = {p(value)}" for name, value in equal.items()]
    if start_ns is not None:
        where.append(f"{spec.time} >= {p(start_ns)}")
    where.append(f"{spec.time} < {p(end_ns)}")
    direction = " DESC" if newest_first else ""
    order = [f"{k}{direction}" for k in spec.key]
    free = [k for k in spec.key if k not in equal]
    return Query(_select(d, spec, where, order, limit, narrow_on=free,
                         narrow_order=[f"{k}{direction}" for k in free]), p.values)


def read_above_query(d: Dialect, table: Table, marks: Mapping[str, int], limit: int) -> Query:
    """Rows above ``marks`` (a group without a mark: all of it), in (group, position) order."""
    spec = TABLES[table]
    p = _Params(d)
    pos = spec.position
    where: list[str] = []
    if not spec.group:
        if "" in marks:
            where.append(f"{pos} > {p(marks[''])}")
        order = [_winner(spec, pos)]
    else:
        if marks:
            groups = sorted(marks)
            above = [f"({spec.group} = {p(g)} AND {pos} > {p(marks[g])})" for g in groups]
            above.append(f"{spec.group} NOT IN ({', '.join(p(g) for g in groups)})")
            where.append(f"({' OR '.join(above)})")
        order = [_winner(spec, spec.group), _winner(spec, pos)]
    on_key = all(o in spec.key for o in order)  # else a copy of a key could order elsewhere
    return Query(_select(d, spec, where, order, limit, narrow_on=order if on_key else (),
                         narrow_order=order), p.values)


def trim_query(d: Dialect, table: Table, marks: Mapping[str, int]) -> Query | None:
    """The DELETE of every row at or below ``marks``; None when there is nothing to delete."""
    spec = TABLES[table]
    p = _Params(d)
    pos = spec.position
    if not spec.group:
        if "" not in marks:
            return None
        where = f"{pos} <= {p(marks[''])}"
    else:
        if not marks:
            return None
        where = " OR ".join(f"({spec.group} = {p(g)} AND {pos} <= {p(m)})"
                            for g, m in sorted(marks.items()))
    return Query(d.delete.format(table=d.table(spec), where=where), p.values)


def watermark_query(d: Dialect, table: Table) -> Query:
    """Rows of (group, max position); a table without groups answers (row count, max)."""
    spec = TABLES[table]
    if not spec.group:
        return Query(f"SELECT count(), max({spec.position}) FROM {d.table(spec)}")
    return Query(f"SELECT {spec.group}, max({spec.position}) FROM {d.table(spec)} "
                 f"GROUP BY {spec.group}")


class SqlHistoryStore:
    """:class:`bus.store.history.HistoryStore` on a SQL engine run by one worker thread.

    A subclass provides the engine hooks (``_connect``, ``_disconnect``, ``_columns``,
    ``_execute``, ``_insert_batch``, ``_error``); they run on the worker thread only.
    """

    name: str

    def __init__(self, name: str, dialect: Dialect) -> None:
        self.name = name
        self._dialect = dialect
        self._pool: ThreadPoolExecutor | None = None

    # -- engine hooks (worker thread) ----------------------------------------------------

    def _connect(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _columns(self, query: Query) -> list[list[Any]]:
        """The result as one list per column (an empty list when there are no rows)."""
        raise NotImplementedError

    def _execute(self, query: Query) -> None:
        raise NotImplementedError

    def _insert_batch(self, batch: Columns) -> None:
        raise NotImplementedError

    def _error(self, exc: Exception) -> StoreError | None:
        """The StoreError a driver exception stands for, or None if it is a bug here."""
        raise NotImplementedError

    # -- HistoryStore --------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-store")
        await self._call(self._open)

    async def ping(self) -> None:
        await self._call(self._columns, Query("SELECT 1"))

    async def insert(self, batch: Columns) -> None:
        if len(batch):
            await self._call(self._insert_batch, batch)

    async def watermarks(self, table: Table) -> dict[str, int]:
        cols = await self._call(self._columns, watermark_query(self._dialect, table))
        if not cols:
            return {}
        if not TABLES[table].group:
            (count,), (mark,) = cols
            return {"": int(mark)} if count else {}
        return {str(g): int(m) for g, m in zip(cols[0], cols[1], strict=True)}

    async def read_above(self, table: Table, marks: Mapping[str, int], limit: int) -> Columns:
        return await self._read(table, read_above_query(self._dialect, table, marks, limit))

    async def trim(self, table: Table, marks: Mapping[str, int]) -> None:
        query = trim_query(self._dialect, table, marks)
        if query is not None:
            await self._call(self._delete, table, query)

    async def ticks(self, stream: str, start_ns: int, end_ns: int, limit: int) -> Columns:
        return await self._read(Table.TICKS, range_query(
            self._dialect, Table.TICKS, {"stream": stream}, start_ns, end_ns, limit))

    async def bars(self, stream: str, res_s: int, start_ns: int, end_ns: int,
                   countback: int = 0) -> Columns:
        equal = {"stream": stream, "res_s": res_s}
        if countback <= 0:
            return await self._read(Table.BARS, range_query(
                self._dialect, Table.BARS, equal, start_ns, end_ns, None))
        newest = await self._read(Table.BARS, range_query(
            self._dialect, Table.BARS, equal, None, end_ns, countback, newest_first=True))
        return newest.take(range(len(newest) - 1, -1, -1))

    async def orders(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        return await self._read(Table.ORDERS, range_query(
            self._dialect, Table.ORDERS, _account(account), start_ns, end_ns, None))

    async def executions(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        return await self._read(Table.EXECUTIONS, range_query(
            self._dialect, Table.EXECUTIONS, _account(account), start_ns, end_ns, None))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(pool, self._disconnect)
        finally:
            pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- internals -----------------------------------------------------------------------

    def _open(self) -> None:
        self._connect()
        for sql in self._dialect.preamble:
            self._execute(Query(sql))
        for spec in TABLES.values():
            self._execute(Query(create_table(self._dialect, spec)))

    def _delete(self, table: Table, query: Query) -> None:
        """Run a trim's DELETE (ClickHouse waits for its mutation)."""
        self._execute(query)

    async def _read(self, table: Table, query: Query) -> Columns:
        cols = await self._call(self._columns, query)
        if not cols or not cols[0]:
            return Columns(table)
        spec = TABLES[table]
        if self._dialect.bytes_as_hex:
            cols = [[bytes.fromhex(v) for v in col] if c.type is ColumnType.BYTES else col
                    for c, col in zip(spec.columns, cols, strict=True)]
        return Columns(table, dict(zip(spec.names, cols, strict=True)))

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.name}: the store is not open")
        return await asyncio.get_running_loop().run_in_executor(pool, self._mapped, fn, *args)

    def _mapped(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except StoreError:
            raise
        except Exception as exc:
            err = self._error(exc)
            if err is None:
                raise
            raise err from exc


def _account(account: str | None) -> dict[str, Any]:
    return {} if account is None else {"account": account}
