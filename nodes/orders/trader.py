"""The trader node: places market orders at a steady rate through the order client.

It is the order path's load for ``./scripts/up`` (and a worked example of ``OrderClient``):
paced, not spinning; every order has a fresh client order id; it counts acks, fills, rejects
by reason and timeouts, so the launcher's summary can say whether orders flowed. Orders of
several lots fill in slices (the executor's simulated liquidity), so on stop it places nothing
more and waits (at most ``DRAIN_S``) for the orders it has to finish before it counts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bus.aio import cancel_and_wait
from bus.config import MeshConfig
from bus.orders.client import OrderClient, OrderClientOptions
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from protocols.errors import OrderRejected, OrderTimeout, TooManyInFlight
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import NewOrder, OrderType, Side

log = logging.getLogger(__name__)

DRAIN_S = 3.0


class TraderNode:
    def __init__(self, cfg: MeshConfig, *, rate: float, account: str = "sim",
                 stats_path: Path | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.rate = rate
        self.account = account
        self.symbols = cfg.orders.symbols or tuple(s for f in cfg.feeds for s in f.symbols)
        self.client = OrderClient(OrderClientOptions.from_config(cfg))
        self.stats_path = stats_path
        self.placed = 0
        self.acked = 0
        self.filled = 0
        self.finished = 0  # orders that reached a terminal state (filled ones included)
        self.timeouts = 0
        self.rejects: Counter[str] = Counter()
        self._rnd = random.Random(seed)
        # Unique across restarts of this node: a restarted trader must not reuse an id.
        self._ids = (f"{account}-{time.time_ns()}-{n}" for n in itertools.count(1))
        self._tasks: set[asyncio.Task[None]] = set()

    def _order(self) -> NewOrder:
        return NewOrder(self.account, next(self._ids), self._rnd.choice(self.symbols),
                        self._rnd.choice((Side.BUY, Side.SELL)), OrderType.MARKET,
                        float(self._rnd.randint(1, 5)), None, time.time_ns())

    async def _place(self, order: NewOrder) -> None:
        try:
            await self.client.place(order)
            self.acked += 1
        except OrderRejected as exc:
            self.rejects[exc.reason.name] += 1
        except OrderTimeout:
            self.timeouts += 1
        except TooManyInFlight:
            self.rejects["TOO_MANY_IN_FLIGHT"] += 1

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            due = int((loop.time() - start) * self.rate) - self.placed
            for _ in range(max(0, due)):
                self.placed += 1
                task = asyncio.create_task(self._place(self._order()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(min(0.05, 1 / self.rate))

    async def _reports(self) -> None:
        async for report in self.client.updates():
            if report.state is OrderState.FILLED:
                self.filled += 1
            if report.state.terminal and not report.is_replace:
                self.finished += 1

    async def _drain(self, reports: asyncio.Task[None]) -> None:
        """Wait (bounded) until every order placed has its answer and every acknowledged one
        its final report."""
        deadline = asyncio.get_running_loop().time() + DRAIN_S
        while ((self._tasks or self.finished < self.acked) and not reports.done()
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.02)
        if self._tasks or self.finished < self.acked:
            log.warning("trader: stopped with %d orders unanswered and %d unfinished",
                        len(self._tasks), self.acked - self.finished)

    def collect(self) -> dict[str, Any]:
        return {"node": "trader", "placed": self.placed, "acked": self.acked,
                "filled": self.filled, "timeouts": self.timeouts,
                "rejects": dict(self.rejects), "client": self.client.stats()}

    async def run(self, stop: asyncio.Event) -> int:
        await self.client.start()
        reports = asyncio.create_task(self._reports(), name="reports")
        tasks = [asyncio.create_task(self._load(), name="load")]
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.collect),
                                             name="stats"))
        try:
            rc = await supervise_tasks("trader", stop, tasks)
            await self._drain(reports)
            return rc
        finally:
            await cancel_and_wait([reports, *self._tasks], what="trader orders")
            await self.client.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
