"""Child processes of a drill or a benchmark, and the JSON-line protocol spoken to them.

Rules every drill keeps, so that a failed or interrupted run leaves nothing behind:

* every child is started in its own session (a Ctrl-C meant for the drill reaches the drill
  only, which then stops its children in order, instead of killing them all mid-write);
* a child is stopped with SIGTERM, and SIGKILL when it has not exited within a timeout;
* every child a :class:`Children` started is stopped by :meth:`Children.stop_all` (call it in
  a ``finally``, or use the object as a context manager), and, as a last resort, when Python
  exits.

The line protocol: the parent writes one JSON object per line to the child's stdin,
``{"cmd": NAME, ...}``, and the child answers each with one JSON object per line on stdout
(its first line, unasked, says it is ready). Lines on stdout that do not start with ``{`` are
skipped, because a wrapper (py-spy) may write to the same stdout.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from protocols.errors import DrillError

__all__ = [
    "ROOT",
    "AsyncLineChild",
    "Children",
    "LineChild",
    "Node",
    "child_setup",
    "read_command",
    "stdin_lines",
    "stop_process",
    "unwind_on_sigterm",
    "wait_for",
]

# The repository root: children run from here, as they would from ./scripts/.
ROOT = Path(__file__).resolve().parents[2]

STOP_TIMEOUT_S = 5.0


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise ``KeyboardInterrupt`` in the main thread, as Ctrl-C does, so a
    drill that is told to stop unwinds through the ``finally`` blocks that stop its children
    (which run in their own sessions and would otherwise outlive it)."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S, *,
                 abort: bool = False) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code (None if it had to be
    killed).

    ``abort``: before SIGKILL, ask the child where it is stuck: SIGUSR1 (a tickmesh node logs
    every asyncio task's stack), then SIGABRT (``-X faulthandler`` writes every thread's stack
    to its log).
    """
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGUSR1, signal.SIGABRT) if abort else ():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        proc.kill()
        proc.wait()
        return None


_everyone: weakref.WeakSet[Children] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for children in list(_everyone):
        children.stop_all()


class Children:
    """Every child process one run started, each logging to ``workdir/NAME.log``;
    :meth:`stop_all` ends each of them, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._adopted: list[int] = []  # grandchildren (the program a py-spy wrapper runs)
        _everyone.add(self)

    def start(self, name: str, args: list[str], *, pipes: bool = False) -> subprocess.Popen[bytes]:
        """Start ``args`` in its own session, stderr (and stdout unless ``pipes``) to its log;
        with ``pipes`` its stdin and stdout are pipes for the line protocol."""
        log = self.log_path(name).open("ab")
        try:
            proc = subprocess.Popen(
                args, cwd=ROOT, stdout=subprocess.PIPE if pipes else log, stderr=log,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL, bufsize=0,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        finally:
            log.close()
        self._procs.append((name, proc))
        return proc

    def log_path(self, name: str) -> Path:
        """Where child ``name`` logs (stderr, and stdout unless it is a pipe)."""
        return self.workdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last ``lines`` lines of a child's log, for an error message."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wrapped_pid(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
        """The pid of the program a wrapper (py-spy) started; it is stopped with the rest."""
        import psutil

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                kids = psutil.Process(proc.pid).children()
                if kids:
                    pid: int = kids[0].pid
                    self._adopted.append(pid)
                    return pid
            time.sleep(0.01)
        raise DrillError(f"the wrapped program of pid {proc.pid} did not start")

    @staticmethod
    def stop_wrapped(proc: subprocess.Popen[bytes], pid: int, timeout: float = 15.0) -> None:
        """Stop the wrapped program with SIGTERM and let its wrapper write its output."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc)

    stop = staticmethod(stop_process)

    def wait_file(self, path: Path, proc: subprocess.Popen[bytes], name: str,
                  timeout: float = 15.0) -> None:
        """Wait until child ``name`` has written ``path`` (a node's first stats file says it
        is up); DrillError with the end of its log when it exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None:
                raise DrillError(f"{name} exited with code {proc.returncode}:\n"
                                 f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise DrillError(f"{name} did not start within {timeout:.0f} s:\n"
                                 f"{self.log_tail(name)}")
            time.sleep(0.01)

    def stop_all(self) -> None:
        """Stop every child (and adopted grandchild) this object started."""
        if self._adopted:
            import psutil

            for pid in self._adopted:
                with contextlib.suppress(psutil.Error):
                    child = psutil.Process(pid)
                    child.terminate()
                    try:
                        child.wait(STOP_TIMEOUT_S)
                    except psutil.TimeoutExpired:
                        child.kill()
            self._adopted.clear()
        for _name, proc in reversed(self._procs):
            stop_process(proc)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()


class Node:
    """One CLI node process (``python -m nodes.cli ... --stats F``) that a drill starts,
    SIGKILLs, restarts and stops; its stats file is how the drill reads its state."""

    def __init__(self, name: str, argv: list[str], stats: Path, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.stats_path = stats
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start (or start again) with the same command, in its own session."""
        self.stats_path.unlink(missing_ok=True)  # a stale "active" must never be read
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.starts += 1

    @property
    def pid(self) -> int:
        """The pid of the current (latest) process; only after :meth:`start`."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the latest process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        if self.proc is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """A clean stop (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def stats(self) -> dict[str, Any] | None:
        """The node's latest stats file, or None while there is none (or it is mid-write)."""
        try:
            data: dict[str, Any] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return None
        return data


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                   nodes: Mapping[str, Node], poll_s: float = 0.05) -> None:
    """Wait until ``check()`` is true; DrillError naming ``what`` when a started node of
    ``nodes`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not await check():
        dead = [n.name for n in nodes.values() if n.proc is not None and not n.alive()]
        if dead:
            raise DrillError(f"{', '.join(dead)} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise DrillError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(poll_s)


def _command(cmd: str, kw: dict[str, Any]) -> bytes:
    return (json.dumps({"cmd": cmd, **kw}) + "\n").encode()


class LineChild:
    """The parent's side of the line protocol over a child's pipes, blocking, with deadlines."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc, self.name = proc, name
        self._buf = b""

    def read(self, timeout: float) -> dict[str, Any]:
        """The child's next JSON line; DrillError when none comes within ``timeout``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DrillError(f"{self.name} did not answer within {timeout:.0f} s")
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise DrillError(f"{self.name} exited (code {self.proc.poll()})")
                    self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            if not line.startswith(b"{"):
                continue  # not ours: a wrapper (py-spy) writes to the same stdout
            out: dict[str, Any] = json.loads(line)
            return out

    def send(self, cmd: str, **kw: Any) -> None:
        """Send ``{"cmd": cmd, **kw}`` without waiting for the answer (several children
        asked at once, then each answer read)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(_command(cmd, kw))

    def ask(self, cmd: str, timeout: float = 10.0, **kw: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **kw}`` and return the answer."""
        self.send(cmd, **kw)
        return self.read(timeout)


class AsyncLineChild:
    """The parent's side of the line protocol for an asyncio drill: a child started in its
    own session, stdout read as lines, stderr to ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float) -> dict[str, Any]:
        """Start the child and return its first (ready) line."""
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
                limit=64 * 1024 * 1024)
        return await self.read(timeout)

    async def read(self, timeout: float) -> dict[str, Any]:
        """The child's next JSON line; DrillError when it exits first."""
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise DrillError(f"{self.name} exited (see {self.log_path})")
                if line.startswith(b"{"):
                    out: dict[str, Any] = json.loads(line)
                    return out

    async def ask(self, cmd: str, timeout: float = 30.0, **kw: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **kw}`` and return the answer."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(_command(cmd, kw))
        await self.proc.stdin.drain()
        return await self.read(timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# --- the child's side ------------------------------------------------------------------------


def child_setup(argv: list[str]) -> tuple[Any, Callable[[dict[str, Any]], None]]:
    """For a measuring child process: its mesh config (the one argument, a mesh file) and the
    function that answers the parent with one JSON line on stdout."""
    import argparse

    from bus.config import load_config
    from nodes.common import setup_logging

    p = argparse.ArgumentParser()
    p.add_argument("config")
    a = p.parse_args(argv)
    setup_logging("WARNING")

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    return load_config(a.config), reply


async def stdin_lines() -> asyncio.StreamReader:
    """The parent's commands to a measuring child, one per line, read without blocking the
    child's event loop."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def read_command(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The parent's next command (``{"cmd": ...}``), or None when the parent closed stdin."""
    line = await reader.readline()
    if not line:
        return None
    cmd: dict[str, Any] = json.loads(line)
    return cmd
