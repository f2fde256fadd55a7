"""The supervisor's warm restart: a warm child keeps a spare that takes over when it dies.

The protocol is the supervisor's own (a spare started with ``--spare`` waits for one line on
stdin, then runs; EOF: it exits 0), so these tests run it against a stand-in child of their
own, a few lines of Python, not the EA: what is under test is the supervisor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bus.config import EaSection, default_config
from nodes.supervisor import Child, Supervisor, with_ea
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)

# It marks itself ready (imports done, waiting for its line) with a file named by its pid,
# writes its stats file like a node (pid, a counter), and stops on SIGTERM. With --die it
# exits 3 as soon as it runs, like a node with a bad config.
STAND_IN = textwrap.dedent('''
    import json, os, signal, sys, time
    args = sys.argv[1:]
    stats = args[args.index("--stats") + 1]
    marks = os.path.dirname(stats)
    if "--spare" in args:
        open(os.path.join(marks, f"{os.getpid()}.ready"), "w").close()
        if not sys.stdin.readline():
            sys.exit(0)
        open(os.path.join(marks, f"{os.getpid()}.took-over"), "w").close()
    if "--die" in args:
        sys.exit(3)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    pushed = 0
    while not stop:
        pushed += 1
        tmp = stats + f".{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "pushed": pushed}, f)
        os.replace(tmp, stats)
        time.sleep(0.01)
''')


def warm_supervisor(tmp_path: Path, *extra: str) -> tuple[Supervisor, Child]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    run_dir = tmp_path / "run"
    stats = run_dir / "stats" / "ea-1.json"
    sup = Supervisor(default_config(), run_dir, tmp_path / "mesh.toml")
    child = Child("ea-1", [sys.executable, str(script), "--stats", str(stats), *extra], stats,
                  run_dir / "logs" / "ea-1.log", role="ea", warm=True)
    sup.children.append(child)
    return sup, child


def ready(child: Child) -> int:
    """The spare's pid once it waits for its line (0 before)."""
    spare = child.spare
    if spare is None or not (child.stats.parent / f"{spare.pid}.ready").exists():
        return 0
    return spare.pid


def pids_file(sup: Supervisor) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sup.run_dir / "pids.json").read_text())
    return data


def test_a_killed_warm_child_is_taken_over_by_its_spare_and_a_new_spare_follows(
        tmp_path: Path) -> None:
    sup, child = warm_supervisor(tmp_path)

    async def scenario() -> None:
        await sup.start()
        try:
            spare = await wait_until(lambda: ready(child), 10, "a spare waiting for its line")
            assert child.proc is not None and child.proc.pid != spare
            first = child.proc.pid
            assert pids_file(sup) == {"ea-1": first, "ea-1.spare": spare}
            await wait_until(lambda: child.read_stats().get("pid") == first, 10,
                             "the first process's stats")
            os.kill(first, signal.SIGKILL)
            # The spare becomes the running child, with the same stats file.
            await wait_until(lambda: child.proc is not None and child.proc.pid == spare, 5,
                             "the spare to take over")
            assert (child.stats.parent / f"{spare}.took-over").exists()
            await wait_until(lambda: child.read_stats().get("pid") == spare, 10,
                             "the new running process's stats")
            assert child.restarts == 1 and child.cold_restarts == 0
            assert list(child.exits) == [-signal.SIGKILL]
            assert len(child.restart_ms) == 1 and child.restart_ms_max == child.restart_ms[0]
            # What the killed process had counted stays in the totals.
            assert child.earlier[("pushed",)] > 0
            assert child.total("pushed") > child.earlier[("pushed",)]
            # A new spare is started behind it.
            second = await wait_until(lambda: ready(child) not in (0, first, spare) and
                                      ready(child), 10, "the next spare")
            assert pids_file(sup) == {"ea-1": spare, "ea-1.spare": second}
            # A spare that dies is replaced; the running child is left alone.
            os.kill(second, signal.SIGKILL)
            third = await wait_until(lambda: ready(child) not in (0, second) and
                                     ready(child), 10, "a replacement spare")
            assert child.proc.pid == spare and child.restarts == 1
            last_spare, running = child.spare, child.proc
        finally:
            await sup.stop()
        # Stopped: the spare got EOF and exited 0 without running; the running one, SIGTERM.
        assert last_spare is not None and last_spare.returncode == 0
        assert not (child.stats.parent / f"{third}.took-over").exists()
        assert running.returncode == 0
        assert child.spare is None

    asyncio.run(scenario())


def test_a_warm_child_that_dies_right_after_start_backs_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bad config must not spin: each quick death doubles the wait before the next
    process (a spare or a fresh one) runs."""
    sup, child = warm_supervisor(tmp_path, "--die")
    caplog.set_level(logging.WARNING, logger="nodes.supervisor")

    def delays() -> list[float]:
        return [float(m.group(1)) for r in caplog.records
                if r.name == "nodes.supervisor"
                and (m := re.search(r"ea-1 exited with 3; back-off ([\d.]+) s", r.getMessage()))]

    async def scenario() -> None:
        await sup.start()
        try:
            await wait_until(lambda: len(delays()) >= 4, 20, "four restarts")
        finally:
            await sup.stop()

    asyncio.run(scenario())
    assert delays()[:4] == [0.05, 0.1, 0.2, 0.4]
    assert child.proc is not None and child.proc.returncode is not None


def test_up_puts_the_first_feed_and_the_orders_on_the_ea_path(tmp_path: Path) -> None:
    base = default_config()
    cfg = with_ea(base, tmp_path)
    feed = cfg.feeds[0]
    assert feed.source == "ea" and feed.symbols == base.feeds[0].symbols
    assert [(e.name, e.feed, e.sim_endpoint) for e in cfg.ea] == [
        ("ea-1", feed.name, cfg.terminal.bind)]
    t = cfg.terminal
    assert t.enabled and t.symbols == feed.symbols and t.rate == feed.rate
    assert t.data_dir == str(tmp_path / "terminal")
    assert cfg.orders.execution == "ea"
    # --ea-standby: a second instance on the same feed and accounts.
    standby = with_ea(base, tmp_path, standby=True)
    assert [e.name for e in standby.ea] == ["ea-1", "ea-2"]
    assert standby.ea[1] == replace(standby.ea[0], name="ea-2")


def test_up_keeps_the_ea_entries_of_the_mesh_file(tmp_path: Path) -> None:
    base = default_config()
    feeds = (replace(base.feeds[0], name="mt5", source="ea", pull="tcp://127.0.0.1:17150"),)
    mine = EaSection(name="a", accounts=("ACC-1",), feed="mt5", symbols=("EURUSD",),
                     sim_endpoint="tcp://127.0.0.1:17460")
    cfg = with_ea(replace(base, feeds=feeds, ea=(mine,),
                          terminal=replace(base.terminal, data_dir="/var/tm/terminal")),
                  tmp_path, standby=True)
    assert cfg.feeds == feeds
    assert cfg.ea == (mine, replace(mine, name="ea-2"))
    # The terminal listens where the entries look for it, and quotes the feed's symbols.
    assert cfg.terminal.bind == mine.sim_endpoint and cfg.terminal.symbols == feeds[0].symbols
    assert cfg.terminal.data_dir == "/var/tm/terminal"


def test_stop_order_trader_eas_feeds_rest_terminal_last(tmp_path: Path) -> None:
    """Stopped one by one, each waited for: the trader (no new orders), the EA and its spare,
    the feed, the rest, the historian, the terminal last (the EAs were attached to it)."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN.replace("stop = []", "stop = []\n" + textwrap.dedent('''
        def stopped(*_):
            stop.append(1)
            with open(os.path.join(marks, "order"), "a") as f:
                f.write(os.path.basename(stats)[:-5] + "\\n")
        ''')).replace("lambda *_: stop.append(1)", "stopped"))
    run_dir = tmp_path / "run"
    base = default_config()
    # Not a TCP endpoint: the EA does not wait for the stand-in terminal to listen.
    cfg = replace(base, terminal=replace(base.terminal, bind=f"ipc://{tmp_path}/terminal"))
    sup = Supervisor(cfg, run_dir, tmp_path / "mesh.toml")
    for name, role in (("terminal", "sim-terminal"), ("historian", "historian"),
                       ("ea-1", "ea"), ("feed-sim", "feed"), ("monitor", "monitor"),
                       ("trader", "trader")):
        stats = run_dir / "stats" / f"{name}.json"
        sup.children.append(Child(name, [sys.executable, str(script), "--stats", str(stats)],
                                  stats, run_dir / "logs" / f"{name}.log", role=role,
                                  warm=role == "ea"))
    ea = sup.children[2]

    async def scenario() -> None:
        await sup.start()
        try:
            await wait_until(lambda: ready(ea) and all(c.read_stats() for c in sup.children),
                             10, "every node running and the EA's spare waiting")
        finally:
            await sup.stop()

    asyncio.run(scenario())
    order = (run_dir / "stats" / "order").read_text().split()
    assert order == ["trader", "ea-1", "feed-sim", "monitor", "historian", "terminal"]
