"""Real-time scheduling of node processes (bus.sched, [sched], run_node), on the real kernel.

Each case runs in a child process: the test runner itself must stay under the normal
scheduler."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bus.config import SchedSection, parse_config
from bus.sched import (
    STARTUP_NICE,
    apply_realtime,
    policy_of,
    realtime_permitted,
    renice_permitted,
)
from protocols.errors import ConfigError
from tests.support import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
ROOT_ONLY = pytest.mark.skipif(not realtime_permitted(40), reason="needs root or an rtprio limit")

# A node-shaped child: run_node with a [sched] section, a ZeroMQ socket (so that libzmq's I/O
# thread exists), then report every thread's policy and CPU set.
NODE_CHILD = """
import asyncio, json, os, sys
import zmq, zmq.asyncio
from bus.config import SchedSection
from nodes.common import run_node

sched = SchedSection(realtime_priority=int(sys.argv[1]), cpus=tuple(json.loads(sys.argv[2])))

async def main(stop):
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PUB)
    sock.bind("tcp://127.0.0.1:*")
    await asyncio.to_thread(lambda: None)  # a worker thread, started after the switch
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        t = int(tid)
        threads[tid] = [os.sched_getscheduler(t), os.sched_getparam(t).sched_priority,
                        sorted(os.sched_getaffinity(t))]
    print(json.dumps(threads))
    sock.close(0)
    ctx.term()
    return 0

sys.exit(run_node(main, sched=sched, kind=sys.argv[3], what="the test node"))
"""


# Runs a command without CAP_SYS_NICE (and with it out of reach), the rest as it is: what a
# process that may not use real time looks like, even where the tests run as root.
NO_SYS_NICE = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"]


def _can_drop() -> bool:
    """setpriv is there and may drop the capability here (a container may forbid it)."""
    if not shutil.which("setpriv") or not shutil.which("prlimit"):
        return False
    return subprocess.run([*NO_SYS_NICE, "true"], capture_output=True).returncode == 0


CAN_DROP = pytest.mark.skipif(not _can_drop(), reason="needs setpriv and prlimit (util-linux) "
                              "allowed to drop CAP_SYS_NICE")


def _run_child(code: str, *args: str, prefix: tuple[str, ...] = ()
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-c", code, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@ROOT_ONLY
def test_run_node_puts_every_thread_of_a_realtime_kind_under_fifo_on_its_cpus() -> None:
    cpu = max(os.sched_getaffinity(0))
    proc = _run_child(NODE_CHILD, "40", json.dumps([cpu]), "feed")
    assert proc.returncode == 0, proc.stderr
    threads = json.loads(proc.stdout)
    assert len(threads) >= 3  # the loop's thread, ZeroMQ's I/O thread(s), a to_thread worker
    for tid, (policy, priority, cpus) in threads.items():
        assert (policy, priority, cpus) == (os.SCHED_FIFO, 40, [cpu]), tid


def test_a_kind_not_listed_stays_under_the_normal_scheduler() -> None:
    proc = _run_child(NODE_CHILD, "40", "[]", "backend")
    assert proc.returncode == 0, proc.stderr
    for policy, priority, cpus in json.loads(proc.stdout).values():
        assert (policy, priority) == (os.SCHED_OTHER, 0)
        assert set(cpus) == os.sched_getaffinity(0)


def test_priority_zero_changes_nothing() -> None:
    proc = _run_child(NODE_CHILD, "0", "[0]", "feed")
    assert proc.returncode == 0, proc.stderr
    for policy, _priority, cpus in json.loads(proc.stdout).values():
        assert policy == os.SCHED_OTHER and set(cpus) == os.sched_getaffinity(0)


@CAN_DROP
def test_a_process_that_may_not_is_refused_with_the_fix() -> None:
    code = ("import resource\n"
            "from bus.sched import apply_realtime, realtime_permitted\n"
            "from protocols.errors import ConfigError\n"
            "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
            "print('permitted', realtime_permitted(40))\n"
            "try:\n    apply_realtime(40, what='feed sim')\n"
            "except ConfigError as exc:\n    print(exc)\n")
    proc = _run_child(code, prefix=tuple(NO_SYS_NICE))
    assert proc.returncode == 0, proc.stderr
    assert "permitted False" in proc.stdout
    assert "sched.realtime_priority" in proc.stdout
    assert "feed sim may not use SCHED_FIFO priority 40" in proc.stdout
    assert "CAP_SYS_NICE" in proc.stdout


def test_out_of_range_priority_and_missing_cpu_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="1-99"):
        apply_realtime(100)
    with pytest.raises(ConfigError, match="not available here"):
        apply_realtime(40, cpus=(max(os.sched_getaffinity(0)) + 64,), what="feed sim")


def test_policy_of_names_policy_priority_and_a_restricted_cpu_set() -> None:
    assert policy_of() == "other"  # the test runner
    if os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        cpu = min(os.sched_getaffinity(0))
        proc = subprocess.Popen(["taskset", "-c", str(cpu), "sleep", "5"])
        try:
            # taskset sets the mask, then execs sleep
            wait_until_sync(lambda: "cpus" in policy_of(proc.pid), 1, "the CPU mask set")
            assert policy_of(proc.pid) == f"other cpus {cpu}"
        finally:
            proc.kill()
            proc.wait()


def test_sched_section_parses_validates_and_says_which_kinds_are_realtime() -> None:
    cfg = parse_config({"sched": {"realtime_priority": 30, "realtime": ["feed"],
                                  "cpus": [1]}})
    assert cfg.sched == SchedSection(realtime_priority=30, realtime=("feed",), cpus=(1,))
    assert cfg.sched.priority_for("feed") == 30
    assert cfg.sched.priority_for("subscriber") == 0
    assert parse_config({}).sched.priority_for("feed") == 0  # off unless asked for
    with pytest.raises(ConfigError, match=r"sched\.realtime_priority"):
        parse_config({"sched": {"realtime_priority": 120}})
    with pytest.raises(ConfigError, match=r"sched.realtime\[0\]"):
        parse_config({"sched": {"realtime_priority": 30, "realtime": ["fed"]}})
    with pytest.raises(ConfigError, match=r"sched.cpus\[0\]"):
        parse_config({"sched": {"cpus": [-1]}})


@CAN_DROP
def test_a_node_asked_for_realtime_it_may_not_have_exits_2_with_the_fix(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.toml"
    mesh.write_text('[sched]\nrealtime_priority = 40\nrealtime = ["recovery"]\n')
    proc = subprocess.run([*NO_SYS_NICE, "prlimit", "--rtprio=0", sys.executable, "-m",
                           "nodes.cli", "recovery", "--config", str(mesh)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "tickmesh: " in proc.stderr and "may not use SCHED_FIFO" in proc.stderr


# A starting node: lowered first thing, threads started after (ZeroMQ's I/O thread), then
# restored; every thread's nice value at both points.
STARTUP_CHILD = """
import json, os
from bus.sched import start_niced

def nices():
    return sorted(os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task"))

startup = start_niced()
import zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.PUB)
sock.bind("tcp://127.0.0.1:*")
during = nices()
startup.restore()
startup.restore()  # idempotent
print(json.dumps({"during": during, "after": nices(), "threads": len(during)}))
sock.close(0)
ctx.term()
"""
RENICE = pytest.mark.skipif(not renice_permitted(os.getpriority(os.PRIO_PROCESS, 0)),
                            reason="needs CAP_SYS_NICE or an RLIMIT_NICE that allows it")


@RENICE
def test_a_starting_process_runs_at_the_lowest_priority_until_restored() -> None:
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    proc = _run_child(STARTUP_CHILD)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["threads"] >= 2  # the main thread and ZeroMQ's I/O thread(s), started later
    assert out["during"] == [min(19, normal + STARTUP_NICE)] * out["threads"]
    assert out["after"] == [normal] * out["threads"]


@CAN_DROP
def test_a_process_that_could_not_raise_its_priority_again_is_not_lowered() -> None:
    # Without CAP_SYS_NICE and with RLIMIT_NICE 0 a nice value, once raised, stays raised.
    proc = _run_child(STARTUP_CHILD, prefix=(*NO_SYS_NICE, "prlimit", "--nice=0"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    assert out["during"] == out["after"] == [normal] * out["threads"]
