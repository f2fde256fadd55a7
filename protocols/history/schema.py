"""The history schema: tables, their columns, idempotency keys and watermarks, in one place.

Every history store (ClickHouse, DuckDB, the historian's DuckDB spool) builds its DDL from
:data:`TABLES`, so the servers of a pair, the spool and the embedded default always agree on
column names and order. Rows travel as :class:`Columns` (one list per column): the drivers
insert columnar data (clickhouse-driver ``columnar=True``, DuckDB an Arrow table), and row
tuples would cost a conversion per row on the hot path.

Rules of the schema, chosen for ClickHouse 18.16 (Debian's) that must stay valid on current
ClickHouse (REFERENCES.md section 4):

- Times are ``UInt64`` epoch nanoseconds (``*_ns``). 18.16 has no ``DateTime64``; its
  ``DateTime`` is whole seconds and the driver drops sub-seconds silently.
- Each table has an **idempotency key** (its sort key, so ``ReplacingMergeTree`` collapses a
  repeated row on merge: the safety net) and a **watermark**: a ``(group, position)`` column
  pair where ``max(position)`` per ``group`` says how far a server holds the table. Writers use
  the watermark, not the merge, to never write a row twice: after a restart or a server's
  return they write only rows above it.
- Rows of one watermark group arrive in position order, so "every position up to the mark"
  and "held by this server" are the same statement (a hole below the mark is a *counted* hole,
  reported by the writer, never silently skipped).
- An INSERT is atomic only within one partition and under 1,048,576 rows: :func:`partition_of`
  names a row's partition and stores split a batch on it (:data:`MAX_ATOMIC_ROWS`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "END_OF_TIME",
    "MAX_ATOMIC_ROWS",
    "NS_PER_S",
    "TABLES",
    "Column",
    "ColumnType",
    "Columns",
    "Table",
    "TableSpec",
    "partition_of",
]

NS_PER_S = 1_000_000_000
# The end of a time range that means "everything from its start on" (times are epoch ns that
# every engine holds as a signed 64-bit integer too).
END_OF_TIME = 2**63 - 1
# ClickHouse: an INSERT of at most this many rows into one partition is applied atomically
# (max_insert_block_size); stores stay below it so a retried insert is all or nothing.
MAX_ATOMIC_ROWS = 1_000_000


class ColumnType(Enum):
    """A column's type, spelled for each engine."""

    STRING = ("String", "VARCHAR")
    # Raw bytes (an encoded message): ClickHouse's String holds any bytes, DuckDB's VARCHAR
    # only valid UTF-8, so binary columns are BLOB there.
    BYTES = ("String", "BLOB")
    UINT64 = ("UInt64", "UBIGINT")
    UINT32 = ("UInt32", "UINTEGER")
    INT8 = ("Int8", "TINYINT")
    FLOAT64 = ("Float64", "DOUBLE")

    @property
    def clickhouse(self) -> str:
        return self.value[0]

    @property
    def duckdb(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType


class Table(Enum):
    TICKS = "ticks"
    BARS = "bars"
    ORDERS = "orders"
    EXECUTIONS = "executions"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table: its columns, idempotency key, watermark and partition columns.

    ``key`` is the idempotency key (and the sort key). ``group`` and ``position`` name the
    watermark columns. ``version`` is the ``ReplacingMergeTree`` version column (the row that
    wins a collapse): readers pick it with ``argMax`` rather than ``FINAL``, which 18.16 runs
    single-threaded. ``time`` is the nanosecond column the partition is derived from.
    """

    table: Table
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    group: str
    position: str
    version: str
    time: str
    names: tuple[str, ...] = ()  # the column names in order (derived: every append reads it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(c.name for c in self.columns))


_S = ColumnType.STRING
_B = ColumnType.BYTES
_U64 = ColumnType.UINT64
_U32 = ColumnType.UINT32
_I8 = ColumnType.INT8
_F = ColumnType.FLOAT64


def _cols(*pairs: tuple[str, ColumnType]) -> tuple[Column, ...]:
    return tuple(Column(n, t) for n, t in pairs)


TABLES: Mapping[Table, TableSpec] = {
    # One row per tick, as published (PROTOCOL.md section 7): (stream, seq) is unique because a
    # feed's new session continues its stream's numbering.
    Table.TICKS: TableSpec(
        Table.TICKS,
        _cols(("stream", _S), ("seq", _U64), ("session", _U64), ("ts_ns", _U64),
              ("feed_ns", _U64), ("bid", _F), ("ask", _F), ("last", _F), ("volume", _F)),
        key=("stream", "seq"), group="stream", position="seq", version="seq", time="ts_ns"),
    # One row per closed bar (protocols.history.bars). ``res_s`` is the resolution in seconds;
    # the watermark group is the stream, the position the bar's last tick sequence, so bars
    # share the ticks' watermark arithmetic. A bar recomputed with more ticks (a late backfill)
    # has a higher last_seq and wins the collapse.
    Table.BARS: TableSpec(
        Table.BARS,
        _cols(("stream", _S), ("res_s", _U32), ("start_ns", _U64), ("open", _F), ("high", _F),
              ("low", _F), ("close", _F), ("volume", _F), ("ticks", _U64),
              ("first_seq", _U64), ("last_seq", _U64)),
        key=("stream", "res_s", "start_ns"), group="stream", position="last_seq",
        version="last_seq", time="start_ns"),
    # One row per stored version of an order record (each write of the record the backend
    # made): the lifecycle. ``src`` is the position of the write in the store's history stream
    # (PROTOCOL.md section 11), ``blob`` the ORDER message itself so a rebuild can restore the
    # record byte for byte. ``quote_bid``/``quote_ask``: the historian's last quote of the
    # symbol at the order's first version (0 if none), for slippage.
    Table.ORDERS: TableSpec(
        Table.ORDERS,
        _cols(("order_id", _S), ("updated_ns", _U64), ("src", _U64), ("account", _S),
              ("client_order_id", _S), ("symbol", _S), ("side", _I8), ("type", _I8),
              ("quantity", _F), ("price", _F), ("state", _I8), ("filled_quantity", _F),
              ("avg_price", _F), ("exec_seq", _U32), ("epoch", _U64), ("sent_ns", _U64),
              ("quote_bid", _F), ("quote_ask", _F), ("blob", _B)),
        key=("order_id", "updated_ns", "src"), group="", position="src", version="src",
        time="updated_ns"),
    # One row per entry of an order's execution log, keyed (order id, log position).
    Table.EXECUTIONS: TableSpec(
        Table.EXECUTIONS,
        _cols(("order_id", _S), ("seq", _U32), ("src", _U64), ("exec_id", _S),
              ("account", _S), ("symbol", _S), ("side", _I8), ("state", _I8),
              ("last_quantity", _F), ("last_price", _F), ("filled_quantity", _F),
              ("avg_price", _F), ("transact_ns", _U64), ("epoch", _U64), ("blob", _B)),
        key=("order_id", "seq"), group="", position="src", version="src", time="transact_ns"),
}
# group "" means one watermark for the whole table (the history stream's position).


def partition_of(ts_ns: int) -> int:
    """The partition of a row with time ``ts_ns``: its UTC month as ``YYYYMM``.

    The same value as ClickHouse's ``toYYYYMM(toDateTime(intDiv(ts_ns, 1000000000)))``, the
    ``PARTITION BY`` expression of every table. Months keep the part count low for years of
    history, and a live batch crosses a boundary twelve times a year.
    """
    days = ts_ns // NS_PER_S // 86_400
    year, month = _civil_from_days(days)
    return year * 100 + month


def _civil_from_days(days: int) -> tuple[int, int]:
    # Howard Hinnant's days_from_civil inverse: exact for every day of the proleptic Gregorian
    # calendar, with no datetime import (protocols/ is pure and this runs once per batch row).
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month


class Columns:
    """Rows of one table as one list per column, in :data:`TABLES` order.

    Mutable while a batch is built (``append``), handed over whole; a store never keeps a
    reference to a batch it was given.
    """

    __slots__ = ("data", "spec")

    def __init__(self, table: Table, data: Mapping[str, list[Any]] | None = None) -> None:
        self.spec = TABLES[table]
        if data is None:
            self.data: dict[str, list[Any]] = {n: [] for n in self.spec.names}
        else:
            missing = set(self.spec.names) - set(data)
            if missing:
                raise ValueError(f"{table.value}: columns missing: {sorted(missing)}")
            self.data = {n: list(data[n]) for n in self.spec.names}
            lengths = {len(v) for v in self.data.values()}
            if len(lengths) > 1:
                raise ValueError(f"{table.value}: columns of different lengths {sorted(lengths)}")

    @property
    def table(self) -> Table:
        return self.spec.table

    def __len__(self) -> int:
        return len(self.data[self.spec.names[0]])

    def append(self, row: Sequence[Any]) -> None:
        """Add one row given in column order."""
        if len(row) != len(self.spec.names):
            raise ValueError(f"{self.table.value}: row of {len(row)} values, "
                             f"table has {len(self.spec.names)} columns")
        for name, value in zip(self.spec.names, row, strict=True):
            self.data[name].append(value)

    def extend_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Add rows given in column order, a column at a time (``zip(*rows)`` at C speed)."""
        if not rows:
            return
        width = len(self.spec.names)
        if any(len(r) != width for r in rows):
            raise ValueError(f"{self.table.value}: rows must have {width} values")
        for name, values in zip(self.spec.names, zip(*rows, strict=True), strict=True):
            self.data[name].extend(values)

    def extend(self, other: Columns) -> None:
        if other.table is not self.table:
            raise ValueError(f"cannot extend {self.table.value} with {other.table.value}")
        for name in self.spec.names:
            self.data[name].extend(other.data[name])

    def take(self, indexes: Sequence[int]) -> Columns:
        """A new batch of the rows at ``indexes``, in that order."""
        return Columns(self.table, {n: [col[i] for i in indexes] for n, col in self.data.items()})

    def slice(self, start: int, stop: int) -> Columns:
        return Columns(self.table, {n: col[start:stop] for n, col in self.data.items()})

    def rows(self) -> Iterator[tuple[Any, ...]]:
        return zip(*(self.data[n] for n in self.spec.names), strict=True)

    def column(self, name: str) -> list[Any]:
        return self.data[name]

    def by_partition(self) -> list[Columns]:
        """This batch split into atomic inserts: one partition, at most MAX_ATOMIC_ROWS each.

        The pieces are runs of *consecutive* rows, in batch order, not all rows of a partition
        together: rows arrive in watermark order, and if the k-th insert fails after the first
        k-1 were applied, the server's watermark must not have jumped over a row it lacks.
        """
        times = self.data[self.spec.time]
        if not times or (len(times) <= MAX_ATOMIC_ROWS
                         and partition_of(min(times)) == partition_of(max(times))):
            return [self]  # the common case, at C speed: partitions grow with time
        cuts = [0]
        part = partition_of(times[0])
        for i in range(1, len(times)):
            p = partition_of(times[i])
            if p != part or i - cuts[-1] >= MAX_ATOMIC_ROWS:
                cuts.append(i)
                part = p
        if len(cuts) == 1:
            return [self]
        cuts.append(len(times))
        return [self.slice(lo, hi) for lo, hi in itertools.pairwise(cuts)]

    def above(self, marks: Mapping[str, int]) -> Columns:
        """The rows whose watermark position is above ``marks`` of their group (absent: all).

        Rows of a group are in position order (the schema's rule), so a group's first row is
        its lowest: when every group's first row is above its mark, the batch itself is the
        answer, found with C-speed scans instead of a Python loop over the rows (the writer
        asks this of every batch, for every server)."""
        group = self.spec.group
        pos = self.data[self.spec.position]
        if not group:
            mark = marks.get("", -1)
            if not pos or min(pos) > mark:
                return self
            return self.take([i for i, p in enumerate(pos) if p > mark])
        groups = self.data[group]
        if all(pos[groups.index(g)] > marks.get(g, -1) for g in set(groups)):
            return self
        return self.take([i for i, (g, p) in enumerate(zip(groups, pos, strict=True))
                          if p > marks.get(g, -1)])

    def marks(self) -> dict[str, int]:
        """The highest watermark position of each group in this batch (its last row: rows of
        a group are in position order)."""
        group = self.spec.group
        pos = self.data[self.spec.position]
        if not pos:
            return {}
        if not group:
            return {"": max(pos)}
        groups = self.data[group]
        last = len(groups) - 1
        backwards = groups[::-1]
        return {g: pos[last - backwards.index(g)] for g in set(groups)}
