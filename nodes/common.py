"""What every node process shares: the event loop policy, signals, logging, stats files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_node(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` on uvloop (when available) until it returns; SIGINT/SIGTERM set stop."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(runner())
    return uvloop.run(runner())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


async def stats_writer(path: Path | None, interval_s: float,
                       collect: Callable[[], dict[str, Any]]) -> None:
    """Write ``collect()`` to ``path`` every ``interval_s`` (for the launcher's status line)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        await asyncio.to_thread(write_json_atomic, path, collect())
        await asyncio.sleep(interval_s)
