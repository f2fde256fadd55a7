"""Rebuild the order store from history: what to restore, decided from the history rows.

The design: "Historical data backfill from ClickHouse -> rebuild missing state." When the
order store (RTSS) lost everything (both Redis servers wiped), history still holds every order
version and execution-log entry the historian recorded. :func:`plan_rebuild` turns those rows
into the records to restore:

- **Each order's latest version**: the row with the highest ``src`` (the history stream's
  position: a later write of the record always has a higher one), restored byte for byte from
  its ``blob``, so its idempotency key (account, client order id) names it again and a retried
  NEW_ORDER gets the duplicate answer, never a second order.
- **Its execution log**: the entries at positions 1, 2, ... up to the first missing one, so
  the log's compare-and-set continues where history ends; a position missing inside a log (a
  hole in history) is counted, and the entries after it are left out rather than restored out
  of order. An entry's exec id goes back into the executed set when it is an execution.
- **The epoch** to restore: the highest epoch any version carries, so the next takeover's
  compare-and-swap moves above every epoch that wrote history, and a deposed node stays fenced.
- **The history stream's position**: the highest ``src``, so the store numbers its next write
  above what the historian holds and the historian reads on without a reset.

What history lacks (it is written behind by a batch interval or so) cannot be rebuilt; the
backend reports how much it restored, and the note measures the lag.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import RemoteProtocolError
from protocols.history.schema import Columns, Table
from protocols.orders.codec import EncodedEntry, EncodedOrder, from_blob, is_execution
from protocols.orders.messages import ExecutionReport
from protocols.orders.record import Order

__all__ = ["RebuildPlan", "plan_rebuild"]


@dataclass(frozen=True, slots=True)
class RebuildPlan:
    records: tuple[EncodedOrder, ...]  # each order's latest version with its whole log
    epoch: int  # the highest epoch in history
    position: int  # the highest history stream position in history
    log_holes: int = 0  # logs cut short at a missing position
    bad_rows: int = 0  # rows whose blob did not decode (left out, counted)


def plan_rebuild(orders: Columns, executions: Columns) -> RebuildPlan:
    """The records to restore from every stored order version and execution-log entry."""
    if orders.table is not Table.ORDERS or executions.table is not Table.EXECUTIONS:
        raise ValueError("plan_rebuild takes the orders and the executions tables")
    latest: dict[str, tuple[int, bytes]] = {}
    epoch = position = 0
    for oid, src, ep, blob in zip(orders.column("order_id"), orders.column("src"),
                                  orders.column("epoch"), orders.column("blob"), strict=True):
        epoch, position = max(epoch, ep), max(position, src)
        if src > latest.get(oid, (-1, b""))[0]:
            latest[oid] = (src, blob)
    logs: dict[str, dict[int, bytes]] = {}
    for oid, seq, ep, blob in zip(executions.column("order_id"), executions.column("seq"),
                                  executions.column("epoch"), executions.column("blob"),
                                  strict=True):
        epoch = max(epoch, ep)
        logs.setdefault(oid, {})[seq] = blob
    records: list[EncodedOrder] = []
    holes = bad = 0
    for oid, (_, blob) in sorted(latest.items()):
        try:
            record = from_blob(blob)
        except RemoteProtocolError:
            bad += 1
            continue
        if not isinstance(record, Order):
            bad += 1
            continue
        entries, cut = _log(logs.get(oid, {}))
        holes += cut
        records.append(EncodedOrder.of(record, entries))
    return RebuildPlan(tuple(records), epoch, position, holes, bad)


def _log(by_seq: dict[int, bytes]) -> tuple[tuple[EncodedEntry, ...], int]:
    """The log's entries from position 1 up to the first missing one; 1 if one was missing."""
    out: list[EncodedEntry] = []
    seq = 1
    while (blob := by_seq.get(seq)) is not None:
        try:
            entry = from_blob(blob)
        except RemoteProtocolError:
            break
        if not isinstance(entry, ExecutionReport) or entry.seq != seq:
            break
        out.append(EncodedEntry(seq, blob, entry.exec_id if is_execution(entry) else ""))
        seq += 1
    return tuple(out), int(len(out) < len(by_seq))
