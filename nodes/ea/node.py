"""``tickmesh ea``: an EA instance, the Python process beside a MetaTrader 5 terminal.

It is the terminal's two halves for the mesh (docs/PROTOCOL.md sections 9 and 18):

* ticks (``[[ea]] feed``): polls the terminal's ticks and pushes them to the feed's EA bridge
  (``nodes.ea.ticks``);
* trades (``[[ea]] trades``): holds the executor's lease for its accounts, reconciles with the
  terminal, and executes orders there once (``nodes.ea.trades``).

Every terminal call goes through the ``bus.ea.terminal.Terminal`` seam, on one thread of its
own (the ``MetaTrader5`` package is synchronous and not thread-safe): the event loop never
waits on the terminal. The terminal is the real one (``terminal = "mt5"``, Windows) or
tickmesh's simulated one (``"sim"``, ``nodes.ea.simterm``).

``--spare``: the process imports everything, reads its config, and then waits for a line on
stdin before it touches the terminal or the executor. The supervisor keeps one such spare per
instance and starts it the moment the running one dies: a restart then costs no Python
start-up (130-250 ms here), only the connect and the reconciliation.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import zmq
import zmq.asyncio

from bus.aio import watchdog_from_env
from bus.config import EaSection, MeshConfig
from bus.ea.terminal import Terminal, now_msc, open_terminal
from bus.logutil import RateLimitedLog
from bus.sockets import EA_TICKS, Sender, open_socket
from nodes.common import (
    freeze_heap,
    run_node,
    stats_writer,
    supervise_tasks,
    write_json_atomic,
)
from nodes.ea.ticks import TickReader
from nodes.ea.trades import TradeSide
from protocols.errors import ConfigError, TerminalError

log = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_S = 0.05  # the terminal away: attach again this often
CURSOR_SAVE_S = 0.1  # the tick cursors are saved this often (a restart reads from there)


class EaNode:
    def __init__(self, cfg: MeshConfig, section: EaSection, *, stats_path: Path | None = None,
                 terminal: Terminal | None = None) -> None:
        self.cfg, self.section, self.stats_path = cfg, section, stats_path
        self.name = section.name
        self.terminal = terminal if terminal is not None else open_terminal(section)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"terminal-{self.name}")
        self.ctx = zmq.asyncio.Context()
        self.symbols = cfg.ea_symbols(section)
        self.reader = (TickReader(self.terminal, self.symbols, section.backfill_ms, self.name)
                       if self.symbols else None)
        self.push: Sender | None = None
        self._push_sock: zmq.asyncio.Socket | None = None
        if self.reader is not None:
            pull = cfg.feed(section.feed).pull.replace("*", "127.0.0.1")
            self._push_sock = open_socket(self.ctx, EA_TICKS, connect=(pull,))
            self.push = Sender(self._push_sock)
        self.trades = (TradeSide(cfg, section, self.terminal, self.call, self.ctx)
                       if section.trades else None)
        self.started_ns = time.time_ns()
        self.pushed = 0
        self.polls = 0
        self.push_dropped = 0
        self.first_push_ns = 0
        self.terminal_errors = 0
        self._away = RateLimitedLog(log, f"ea {self.name}: terminal away")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a terminal call on the terminal's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _attach(self, stop: asyncio.Event) -> bool:
        """Attach to the terminal, again every ``RECONNECT_S`` while it is away; False if the
        node was stopped first."""
        while not stop.is_set():
            try:
                await self.call(self.terminal.initialize)
                return True
            except TerminalError as exc:
                self.terminal_errors += 1
                self._away.warning("%s; trying again", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECONNECT_S):
                        await stop.wait()
        return False

    @property
    def cursor_path(self) -> Path | None:
        state = self.section.state_dir
        return Path(state) / f"{self.name}.ticks.json" if state else None

    def _saved(self) -> dict[str, int]:
        path = self.cursor_path
        try:
            data = json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            return {}  # none yet, or torn: the whole backfill window is read
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}

    async def _save_cursors(self) -> None:
        """Task: the tick cursors on disk every ``CURSOR_SAVE_S`` (for the next start)."""
        assert self.reader is not None and self.cursor_path is not None
        self.cursor_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            await asyncio.sleep(CURSOR_SAVE_S)
            await asyncio.to_thread(write_json_atomic, self.cursor_path, self.reader.cursors())

    async def _pump(self) -> None:
        assert self.reader is not None and self.push is not None
        await self.call(self.reader.start, now_msc(), self._saved())
        period = self.section.poll_ms / 1000
        while True:
            try:
                ticks = await self.call(self.reader.read)
            except TerminalError as exc:
                self.terminal_errors += 1
                log.warning("ea %s: ticks not read: %s", self.name, exc)
                await asyncio.sleep(RECONNECT_S)
                continue
            self.polls += 1
            if ticks:
                try:
                    self.push.send([msgpack.packb(ticks)])
                    self.pushed += len(ticks)
                    self.first_push_ns = self.first_push_ns or time.time_ns()
                except zmq.Again:  # the feed's queue is full (never blocks the terminal side)
                    self.push_dropped += len(ticks)
            await asyncio.sleep(period)

    async def run(self, stop: asyncio.Event) -> int:
        log.info("ea %s: terminal %s, %d symbols to feed %r, trades %s", self.name,
                 self.section.terminal, len(self.symbols), self.section.feed,
                 self.section.trades)
        tasks: list[asyncio.Task[None]] = []
        try:
            if not await self._attach(stop):
                return 0
            if self.reader is not None:
                tasks.append(asyncio.create_task(self._pump(), name="ea ticks"))
                if self.cursor_path is not None:
                    tasks.append(asyncio.create_task(self._save_cursors(), name="ea cursors"))
            if self.trades is not None:
                await self.trades.start()
                tasks += self.trades.tasks()
            if self.stats_path is not None:
                tasks.append(asyncio.create_task(
                    stats_writer(self.stats_path, 0.5, self.collect), name="stats"))
            watchdog = watchdog_from_env(f"ea {self.name}")
            if watchdog is not None:
                tasks.append(asyncio.create_task(watchdog.run(), name="watchdog"))
            return await supervise_tasks(f"ea {self.name}", stop, tasks)
        finally:
            if self.trades is not None:
                self.trades.close()
            if self._push_sock is not None:
                self._push_sock.close(linger=0)
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
            await self.call(self.terminal.shutdown)
            self._pool.shutdown(wait=True)
            self.ctx.term()

    def collect(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": "ea", "name": self.name, "started_ns": self.started_ns,
            "pushed": self.pushed, "polls": self.polls, "push_dropped": self.push_dropped,
            "first_push_ns": self.first_push_ns, "terminal_errors": self.terminal_errors,
            "bad_ticks": dict(self.reader.bad) if self.reader is not None else {}}
        if self.trades is not None:
            trades = self.trades.collect()
            out["terminal_errors"] += trades.pop("terminal_errors")
            out.update(trades)
        return out


def run_ea(cfg: MeshConfig, name: str | None, stats: Path | None, *, spare: bool = False) -> int:
    """Run the ``[[ea]]`` instance ``name`` (the first if None); a spare waits for stdin."""
    if not cfg.ea:
        raise ConfigError("ea", "the mesh file has no [[ea]] instance",
                          'add [[ea]] name = "ea-1"')
    section = cfg.ea_instance(name) if name else cfg.ea[0]
    if spare:
        # Everything a start imports is imported before the wait: uvloop, the terminal's client.
        for module in ("uvloop", "bus.ea.mt5" if section.terminal == "mt5"
                       else "bus.ea.simclient"):
            with contextlib.suppress(ImportError):  # reported when the node really starts
                importlib.import_module(module)
        freeze_heap()  # the start's collection done now, not after the take-over line
        if not sys.stdin.readline():
            return 0  # the supervisor stopped without needing this spare
    return run_node(lambda stop: EaNode(cfg, section, stats_path=stats).run(stop),
                    sched=cfg.sched, kind="ea", what=f"ea {section.name}")


__all__ = ["EaNode", "run_ea"]
