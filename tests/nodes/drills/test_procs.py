"""nodes.drills.procs: children in their own session, stopped SIGTERM-then-SIGKILL, and the
JSON-line protocol both ways."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nodes.drills.procs import AsyncLineChild, Children, LineChild, stop_process
from protocols.errors import DrillError

pytestmark = pytest.mark.timeout(30)

# A child speaking the line protocol: a ready line, then an answer per command.
ECHO = textwrap.dedent("""
    import json, os, sys
    print(json.dumps({"ready": True, "pid": os.getpid(), "sid": os.getsid(0)}), flush=True)
    print("not a JSON line: skipped by the parent", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        print(json.dumps({"echo": cmd}), flush=True)
""")

# A child that ignores SIGTERM, so only SIGKILL ends it.
STUBBORN = textwrap.dedent("""
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_child_runs_in_its_own_session_and_answers_lines(tmp_path: Path) -> None:
    with Children(tmp_path) as children:
        proc = children.start("echo", [sys.executable, "-c", ECHO], pipes=True)
        child = LineChild(proc, "echo")
        ready = child.read(timeout=10)
        assert ready["sid"] == ready["pid"] != os.getsid(0)
        assert child.ask("ping", n=3) == {"echo": {"cmd": "ping", "n": 3}}
    assert proc.poll() is not None  # stopped on leaving the block


def test_a_child_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    children = Children(tmp_path)
    proc = children.start("stubborn", [sys.executable, "-c", STUBBORN])
    deadline = time.monotonic() + 10
    while "ready" not in children.log_tail("stubborn") and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    assert stop_process(proc, timeout=0.3) is None  # None: it had to be killed
    assert time.monotonic() - t0 < 5
    children.stop_all()


def test_a_child_that_exits_is_a_drill_error(tmp_path: Path) -> None:
    with Children(tmp_path) as children:
        proc = children.start("gone", [sys.executable, "-c", "pass"], pipes=True)
        with pytest.raises(DrillError, match="exited"):
            LineChild(proc, "gone").read(timeout=10)


def test_the_async_child_speaks_the_same_protocol(tmp_path: Path) -> None:
    async def run() -> None:
        child = AsyncLineChild("echo", [sys.executable, "-c", ECHO], tmp_path / "echo.log")
        try:
            ready = await child.start(timeout=10)
            assert ready["ready"] is True
            assert await child.ask("start", timeout=10) == {"echo": {"cmd": "start"}}
        finally:
            await child.stop(timeout=2)
        assert child.proc is not None and child.proc.returncode is not None

    asyncio.run(run())


# A drill that starts a long-lived child in its own session, then waits to be told to stop.
DRILL = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from nodes.drills.procs import Children, unwind_on_sigterm
    unwind_on_sigterm()
    with Children(Path(sys.argv[1])) as children:
        child = children.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
""")


def test_sigterm_to_a_drill_stops_its_children(tmp_path: Path) -> None:
    import subprocess

    import psutil

    drill = subprocess.Popen([sys.executable, "-c", DRILL, str(tmp_path)],
                             stdout=subprocess.PIPE)
    try:
        assert drill.stdout is not None
        child_pid = int(drill.stdout.readline())
        assert psutil.pid_exists(child_pid)
        drill.terminate()
        drill.wait(timeout=10)
        child = None
        with contextlib.suppress(psutil.NoSuchProcess):
            child = psutil.Process(child_pid)
        assert child is None or child.status() == psutil.STATUS_ZOMBIE
    finally:
        stop_process(drill)


def test_wait_file_names_a_child_that_exits_first(tmp_path: Path) -> None:
    with Children(tmp_path) as children:
        proc = children.start("dies", [sys.executable, "-c", "import sys; print('boom', "
                                       "file=sys.stderr); sys.exit(3)"])
        with pytest.raises(DrillError, match=r"dies exited with code 3:\nboom"):
            children.wait_file(tmp_path / "never.json", proc, "dies", timeout=10)
        writes = children.start("writes", [sys.executable, "-c",
                                           f"open({str(tmp_path / 'up.json')!r}, 'w')"])
        children.wait_file(tmp_path / "up.json", writes, "writes", timeout=10)


def test_wait_for_stops_at_a_dead_node_or_the_deadline(tmp_path: Path) -> None:
    from nodes.drills.procs import Node, wait_for

    node = Node("short", [sys.executable, "-c", "pass"], tmp_path / "s.json", tmp_path / "s.log")

    async def never() -> bool:
        return False

    async def run() -> None:
        node.start()
        with pytest.raises(DrillError, match="short exited while waiting for godot"):
            await wait_for(never, 10, "godot", {"short": node})
        with pytest.raises(DrillError, match="timed out"):
            await wait_for(never, 0.1, "godot", {})

    asyncio.run(run())
