"""The history store seam: one ``typing.Protocol`` that ClickHouse and DuckDB both implement.

Rows come and go as :class:`protocols.history.schema.Columns`. Every implementation runs its
synchronous driver off the event loop (one worker thread per store: a clickhouse-driver Client
is one connection and not thread-safe, a DuckDB connection is used by one thread at a time), so
each method is awaited from the loop without blocking it. One contract suite
(tests/bus/store/test_history_contract.py) runs against every implementation.

Failures: a store that cannot be reached, or that stops answering within its timeouts, raises
:class:`~protocols.errors.StoreUnavailable`; an insert that failed that way has an unknown
outcome (the server may have applied it), which is why writers re-read watermarks before
writing again instead of retrying blindly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from protocols.history.schema import Columns, Table

__all__ = ["HistoryStore"]


class HistoryStore(Protocol):
    """Where history lives. ``name`` names the store in logs and stats ("ch:127.0.0.1:9000")."""

    name: str

    async def open(self) -> None:
        """Connect and create the tables that are missing (idempotent)."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""

    async def insert(self, batch: Columns) -> None:
        """Insert the rows, split into atomic inserts (one partition, < MAX_ATOMIC_ROWS each)."""

    async def watermarks(self, table: Table) -> dict[str, int]:
        """``max(position)`` per watermark group held (groups with no rows are absent)."""

    async def read_above(self, table: Table, marks: Mapping[str, int], limit: int) -> Columns:
        """Up to ``limit`` rows above ``marks`` (absent group: all), in (group, position) order.

        What a writer copies to a server that returns: the server's own marks in, its missing
        rows out, a chunk at a time.
        """

    async def trim(self, table: Table, marks: Mapping[str, int]) -> None:
        """Delete the rows at or below ``marks`` (a spool drops what every server holds)."""

    async def ticks(self, stream: str, start_ns: int, end_ns: int, limit: int) -> Columns:
        """Ticks of ``stream`` with ``start_ns <= ts_ns < end_ns``, oldest first (``limit``)."""

    async def bars(self, stream: str, res_s: int, start_ns: int, end_ns: int,
                   countback: int = 0) -> Columns:
        """Closed bars with ``start_ns <= start < end_ns``, oldest first, one row per bar.

        ``countback > 0``: the ``countback`` bars before ``end_ns`` instead, whatever
        ``start_ns`` says (TradingView's ``countback``). A bar stored twice reads once (the
        row with the highest ``last_seq``).
        """

    async def orders(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        """Every stored version of orders (of ``account``, or all) updated in the range."""

    async def executions(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        """Execution-log entries (of ``account``, or all) transacted in the range, one per key."""

    async def close(self) -> None:
        """Release the connection and the worker thread."""
