"""Rebuild the order store from history before a backend serves (issue 11, item 5).

:func:`rebuild_from_history` compares how far the order store's history stream got
(``P:history:n``) with how far history holds it (the orders table's watermark). A store that
is behind lost writes that history has: both Redis servers were wiped, or restored from an
old backup. Then every order version and log entry is read from history, planned by
:func:`protocols.history.rebuild.plan_rebuild`, and written back where the store lacks it
(:meth:`RedisOrderStore.restore` never overwrites a record or a log it holds). A store at or
ahead of history is left alone: the normal case, since history is written behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bus.store.history_reader import HistoryReader
from bus.store.orders import RedisOrderStore
from protocols.history.rebuild import plan_rebuild
from protocols.history.schema import END_OF_TIME, Table

__all__ = ["RebuildReport", "rebuild_from_history"]

log = logging.getLogger(__name__)

ALL_TIME = (0, END_OF_TIME)


@dataclass(frozen=True, slots=True)
class RebuildReport:
    store_position: int  # where the order store's history stream stood
    history_position: int  # where history stood
    records: int = 0  # order records restored
    entries: int = 0  # log entries restored
    log_holes: int = 0
    bad_rows: int = 0
    seconds: float = 0.0

    @property
    def rebuilt(self) -> bool:
        return self.history_position > self.store_position


async def rebuild_from_history(store: RedisOrderStore, history: HistoryReader
                               ) -> RebuildReport:
    """Restore what the order store lost and history holds; a no-op when it lost nothing."""
    began = time.monotonic()
    held = await store.history_position()
    top = (await history.watermarks(Table.ORDERS)).get("", 0)
    if top <= held:
        return RebuildReport(held, top)
    log.warning("order store is behind history (history stream at %d, history at %d): "
                "rebuilding from history before serving", held, top)
    orders = await history.orders(None, *ALL_TIME)
    executions = await history.executions(None, *ALL_TIME)
    plan = plan_rebuild(orders, executions)
    records, entries = await store.restore(plan.records, plan.epoch, plan.position)
    report = RebuildReport(held, top, records, entries, plan.log_holes, plan.bad_rows,
                           time.monotonic() - began)
    log.warning("rebuilt the order store from history: %d records, %d log entries restored "
                "in %.0f ms (%d logs cut at a hole, %d rows unreadable)", records, entries,
                report.seconds * 1000, plan.log_holes, plan.bad_rows)
    return report
