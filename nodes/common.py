"""What every node process shares: the event loop policy, signals, logging, stats files."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bus.aio import cancel_and_wait
from bus.config import NodeKind, SchedSection
from bus.sched import apply_sched

log = logging.getLogger(__name__)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_node(main: Callable[[asyncio.Event], Awaitable[int]], *,
             sched: SchedSection | None = None, kind: NodeKind | None = None,
             what: str = "the node") -> int:
    """Run ``main(stop)`` on uvloop (when available) until it returns; SIGINT/SIGTERM set stop.

    If ``sched`` lists ``kind`` as real-time, the process first goes under ``SCHED_FIFO`` (and
    onto ``sched.cpus``; ``bus.sched``), before the loop and any ZeroMQ thread exist, so that
    every thread inherits it; :class:`ConfigError` if the process may not.
    """

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        except (NotImplementedError, AttributeError):
            # Windows (an EA beside its terminal): no loop signal handlers and no SIGUSR1;
            # Ctrl-C and a service stop arrive as SIGINT / SIGBREAK in the main thread.
            for name in ("SIGINT", "SIGBREAK", "SIGTERM"):
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name),
                                  lambda *_: loop.call_soon_threadsafe(stop.set))
        return await main(stop)

    if sched is not None and kind is not None:
        apply_sched(sched, kind, what=what)
    freeze_heap()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(runner())
    return uvloop.run(runner())


def freeze_heap() -> None:
    """Move everything alive now (modules, classes, functions: the bulk of a node's heap once
    it is imported) out of the garbage collector's sight.

    Why: a full (generation 2) collection walks every tracked object; in the feed it took 14-28 ms
    under load (the Redis failover drill, measured with the loop watchdog), and the event loop,
    with every tick behind it, waits for it. What a node allocates while running is still
    collected as usual. The pattern of Instagram's ``gc.freeze()`` (Python 3.7+)."""
    gc.collect()
    gc.freeze()


async def supervise_tasks(name: str, stop: asyncio.Event,
                          tasks: list[asyncio.Task[None]]) -> int:
    """Run ``tasks`` until ``stop`` is set; a task that ends first is a failure of the node.

    Every task is cancelled and awaited before this returns. Returns the exit code: 0 after an
    orderly stop, 1 if any task ended on its own (with its exception logged).
    """
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper]
        for t in failed:
            exc = None if t.cancelled() else t.exception()
            log.error("%s: task %s ended unexpectedly", name, t.get_name(), exc_info=exc)
        return 1 if failed else 0
    finally:
        await cancel_and_wait([stopper, *tasks], what=name)


def dump_tasks() -> None:
    """Log the stack of every asyncio task (``kill -USR1 <pid>``): where is a node waiting?"""
    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(limit=8, file=out)
        log.warning("task %s:\n%s", task.get_name(), out.getvalue())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


async def stats_writer(path: Path, interval_s: float,
                       collect: Callable[[], dict[str, Any]]) -> None:
    """Write ``collect()`` to ``path`` every ``interval_s`` (for the launcher's status line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        await asyncio.to_thread(write_json_atomic, path, collect())
        await asyncio.sleep(interval_s)
