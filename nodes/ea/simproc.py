"""A simulated MetaTrader 5 terminal in a child process, for tests, drills and demos.

    with start_terminal(TerminalSection(symbols=("EURUSD",)), tmp / "term") as term:
        client = SimTerminal(term.endpoint)
        ...
        term.kill()      # SIGKILL: a crash, the journal is what survives
        term.restart()   # the same mesh file, port and data_dir; returns once it serves

The child is ``python -m nodes.cli sim-terminal --config F --stats S``, started in its own
session (``nodes.drills.procs.Node``); it serves once its first stats file exists, which it
writes after replaying its journal and binding its ROUTER.
"""

from __future__ import annotations

import atexit
import sys
import time
import weakref
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bus.config import MeshConfig, TerminalSection, dump_toml, load_config
from nodes.drills.procs import Node
from nodes.servers.redis_server import free_port
from protocols.errors import DrillError

START_TIMEOUT_S = 15.0

# Every terminal started here, stopped when Python exits as a last resort (the children run in
# their own sessions: a test run that dies without its teardown would leave them serving).
_started: weakref.WeakSet[TerminalProcess] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_started):
        proc.stop()


class TerminalProcess:
    """One simulated terminal child process; see :func:`start_terminal`."""

    def __init__(self, cfg: MeshConfig, workdir: Path, name: str = "terminal") -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump_toml(cfg))
        self.node = Node(name, [sys.executable, "-m", "nodes.cli", "sim-terminal", "--config",
                                str(self.config_path), "--stats",
                                str(workdir / f"{name}.stats.json")],
                         workdir / f"{name}.stats.json", workdir / f"{name}.log")
        _started.add(self)

    @property
    def endpoint(self) -> str:
        """Where a :class:`~bus.ea.simclient.SimTerminal` connects."""
        return self.cfg.terminal.bind

    @property
    def data_dir(self) -> Path:
        return Path(self.cfg.terminal.data_dir)

    @property
    def pid(self) -> int:
        return self.node.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start the process and return once it serves; DrillError with its log's end if it
        exits first or does not serve within ``timeout``."""
        self.node.start()
        deadline = time.monotonic() + timeout
        while self.node.stats() is None:
            if not self.node.alive():
                raise DrillError(f"{self.name} exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DrillError(f"{self.name} did not serve within {timeout:.0f} s:\n"
                                 f"{self.log_tail()}")
            time.sleep(0.01)
        return self

    def alive(self) -> bool:
        return self.node.alive()

    def kill(self) -> None:
        """SIGKILL (a crash), and reap it."""
        self.node.kill()

    def restart(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Stop it if it runs (SIGKILL: a crash), then start it again with the same mesh file."""
        self.node.kill()
        return self.start(timeout)

    def stop(self) -> None:
        """A clean stop (SIGTERM, then SIGKILL after a timeout)."""
        self.node.stop()

    def stats(self) -> dict[str, Any] | None:
        """Its latest stats file (rewritten every 0.5 s), None while there is none."""
        return self.node.stats()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.node.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_terminal(config: TerminalSection | MeshConfig | str | Path, data_dir: Path, *,
                   workdir: Path | None = None, bind: str | None = None,
                   name: str = "terminal") -> TerminalProcess:
    """Start a simulated terminal with its journal in ``data_dir`` and return once it serves.

    ``config`` is a ``[terminal]`` section, a whole mesh, or a mesh file's path; its ``bind``
    is kept when ``bind`` is None and ``config`` is a file or a mesh, and is a free loopback
    port for a bare section. The mesh file the child reads, its log and its stats go to
    ``workdir`` (default: ``data_dir``'s parent)."""
    if isinstance(config, TerminalSection):
        cfg = MeshConfig(terminal=replace(
            config, bind=bind or f"tcp://127.0.0.1:{free_port()}"))
    else:
        cfg = config if isinstance(config, MeshConfig) else load_config(config)
        if bind is not None:
            cfg = replace(cfg, terminal=replace(cfg.terminal, bind=bind))
    cfg = replace(cfg, terminal=replace(cfg.terminal, data_dir=str(data_dir)))
    return TerminalProcess(cfg.validate(), workdir or data_dir.parent, name).start()


__all__ = ["TerminalProcess", "start_terminal"]
