#!/usr/bin/env python3
"""Memory soak: the whole local mesh under a steady order load, each node's RSS sampled.

    ./scripts/soak-rss                        # 600 s at 300 orders/s (about 10 minutes)
    ./scripts/soak-rss --seconds 120 --rate 100 --json

It runs ``tickmesh up`` (Redis, recovery, the backend pair, the executor, a simulated feed, a
monitor and a trader placing market orders at ``--rate``) on ports of its own, reads the nodes'
pids from the run directory's ``pids.json`` and samples each node's resident set every
``--every`` seconds with psutil. The report gives, per node, RSS after ``--warmup`` seconds,
at the end, the difference, and the slope of a least-squares line through the samples after
warm-up (MiB per minute; flat memory is ~0). It then prints the supervisor's own summary
(orders placed, acked, filled; ticks per path).

The nodes run from the checkout this script lives in (``python -m nodes.cli up``). Its first
version (commit a6dd311) used nothing but that command line, and measured 7dde414 from a
worktree of it; this one writes its mesh file with ``bus.config.dump_toml``. Bounded in time: ``up``
ends by itself after ``--seconds``; this script kills it if it overruns by 60 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil

from bus.config import default_config, dump_toml
from nodes.drills.ports import free_port
from nodes.drills.procs import ROOT, stop_process

MIB = 1024 * 1024
UP_STOP_S = 30.0  # up stops every node on SIGTERM; give it that long before SIGKILL


def _free_block(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free now, below the kernel's
    ephemeral range (where outgoing connections would take them meanwhile)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SystemExit("soak: no block of free ports found")


def _mesh_file(path: Path, rate: float, base: int) -> None:
    """The local mesh on ports from ``base`` up (so it does not meet a mesh on the defaults),
    with the trader at ``rate`` orders/s."""
    cfg = default_config()
    ep = [f"tcp://127.0.0.1:{base + i}" for i in range(13)]
    udp = f"127.0.0.1:{base + 1}"
    cfg = replace(
        cfg,
        feeds=tuple(replace(f, pub=ep[0], udp_targets=(udp,)) for f in cfg.feeds[:1]),
        recovery=tuple(replace(r, bind=ep[2]) for r in cfg.recovery[:1]),
        subscriber=replace(cfg.subscriber, udp_bind=udp),
        orders=replace(cfg.orders, clients=(ep[3], ep[4]), peers=(ep[5], ep[6]),
                       updates=(ep[7], ep[8]), executor=(ep[9], ep[10]),
                       replicas=(ep[11], ep[12]), trader_rate=rate))
    path.write_text(dump_toml(cfg.validate()))


def _slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, MiB per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mt) * (r - mr) for t, r in samples)
    return cov / var * 60 / MIB


def _sample(run_dir: Path, series: dict[str, list[tuple[float, int]]],
            active: dict[str, float], t: float, every: float) -> None:
    """One RSS sample per node; a backend that reports itself ACTIVE is credited ``every``
    seconds of active time (a pair may fail over during a soak: the active node's growth is
    the one that measures per-order memory)."""
    try:
        pids: dict[str, int] = json.loads((run_dir / "pids.json").read_text())
    except (OSError, ValueError):
        return
    for name, pid in pids.items():
        try:
            rss = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
        series.setdefault(name, []).append((t, rss))
        if name.startswith("backend"):
            try:
                state = json.loads((run_dir / "stats" / f"{name}.json").read_text())["state"]
            except (OSError, ValueError, KeyError):
                continue
            if state == "active":
                active[name] = active.get(name, 0.0) + every


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0, help="length of the run (600)")
    p.add_argument("--rate", type=float, default=300.0, help="trader orders/s (300)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--base-port", type=int, default=0, help="first of 13 ports (0: pick)")
    p.add_argument("--run-dir", type=Path, help="logs and stats (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    run_dir = (args.run_dir or Path(tempfile.mkdtemp(prefix="tickmesh-soak-"))).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    mesh = run_dir / "soak.toml"
    base = args.base_port or _free_block(13)
    _mesh_file(mesh, args.rate, base)
    cmd = [sys.executable, "-m", "nodes.cli", "up", "--for", f"{args.seconds:g}", "--config",
           str(mesh), "--run-dir", str(run_dir), "--redis-port", str(free_port()), "--json"]
    print(f"soak: {args.seconds:g} s at {args.rate:g} orders/s, run dir {run_dir}", flush=True)
    series: dict[str, list[tuple[float, int]]] = {}
    active: dict[str, float] = {}
    out_path = run_dir / "up.out"
    with out_path.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        start = time.monotonic()
        try:
            while proc.poll() is None:
                t = time.monotonic() - start
                if t > args.seconds + 60:
                    break
                _sample(run_dir, series, active, t, args.every)
                time.sleep(args.every)
        finally:
            # SIGTERM first (up stops its nodes), SIGKILL for the whole session if it hangs.
            if stop_process(proc, UP_STOP_S) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    (run_dir / "rss.json").write_text(json.dumps(series))
    lines = out_path.read_text().splitlines()
    summary: dict[str, object] = {}
    for line in reversed(lines):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    nodes: dict[str, dict[str, float]] = {}
    print(f"{'node':<18}{'RSS@warm-up':>14}{'RSS@end':>12}{'delta':>10}{'MiB/min':>10}"
          f"{'active s':>10}")
    for name, samples in sorted(series.items()):
        after = [(t, r) for t, r in samples if t >= args.warmup] or samples
        first, last = after[0][1] / MIB, after[-1][1] / MIB
        slope = _slope_mib_per_min(after)
        nodes[name] = {"rss_warm_mib": round(first, 1), "rss_end_mib": round(last, 1),
                       "delta_mib": round(last - first, 1), "slope_mib_per_min": round(slope, 3),
                       "samples": len(after), "active_s": active.get(name, 0.0)}
        act = f"{active[name]:>10.0f}" if name in active else ""
        print(f"{name:<18}{first:>13.1f}M{last:>11.1f}M{last - first:>+9.1f}M{slope:>+10.3f}"
              + act)
    print("up summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if args.json:
        print(json.dumps({"seconds": args.seconds, "rate": args.rate, "warmup": args.warmup,
                          "nodes": nodes, "up": summary, "up_exit": proc.returncode}))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
