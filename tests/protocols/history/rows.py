"""Rows for history tests given by the columns that matter; the others are zero or empty."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from protocols.history.schema import TABLES, Columns, ColumnType, Table

_ZERO: Mapping[ColumnType, Any] = {ColumnType.STRING: "", ColumnType.BYTES: b"",
                                   ColumnType.FLOAT64: 0.0}


def columns(table: Table, rows: Iterable[Mapping[str, Any]]) -> Columns:
    """A batch of ``table`` with one row per mapping (absent columns: 0, "" or b"")."""
    out = Columns(table)
    for r in rows:
        out.append([r.get(c.name, _ZERO.get(c.type, 0)) for c in TABLES[table].columns])
    return out
