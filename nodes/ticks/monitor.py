"""The monitor node: a subscriber that counts what it receives and reports per-path statistics.

The launcher runs one so that ``./scripts/up`` shows ticks arriving on both paths; it is also the
smallest complete example of the client library.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from bus.config import MeshConfig
from bus.ticks.subscriber import Subscriber, SubscriberOptions
from nodes.common import stats_writer, supervise_tasks, write_json_atomic

log = logging.getLogger(__name__)


class MonitorNode:
    def __init__(self, cfg: MeshConfig, *, stats_path: Path | None = None,
                 options: SubscriberOptions | None = None) -> None:
        self.sub = Subscriber(options or SubscriberOptions.from_config(cfg))
        self.stats_path = stats_path
        self.per_symbol: dict[str, int] = {}
        # A tick whose sequence is not above the previous one (a duplicate or a step back).
        # Forward jumps are not errors here: a lost range is counted as `lost`, and the
        # unknown range after a feed crash as `unknown`.
        self.order_errors = 0
        self._last_seq: dict[str, int] = {}

    async def _consume(self) -> None:
        async for tick in self.sub:
            prev = self._last_seq.get(tick.symbol)
            if prev is not None and tick.seq <= prev and not tick.snapshot:
                self.order_errors += 1
            self._last_seq[tick.symbol] = tick.seq
            self.per_symbol[tick.symbol] = self.per_symbol.get(tick.symbol, 0) + 1

    def collect(self) -> dict[str, Any]:
        return {"node": "monitor", **self.sub.stats(), "per_symbol": dict(self.per_symbol),
                "order_errors": self.order_errors}

    async def run(self, stop: asyncio.Event) -> int:
        await self.sub.start()
        tasks = [asyncio.create_task(self._consume(), name="consume")]
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.collect),
                                             name="stats"))
        try:
            code = await supervise_tasks("monitor", stop, tasks)
        finally:
            await self.sub.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
        return code
