#!/usr/bin/env python3
"""Backend failover drill: SIGKILL the active backend again and again while clients place orders.

    ./scripts/drill-backend-crash                   # 20 kills at 500 orders/s, about 30 s
    ./scripts/drill-backend-crash --kills 2 --rate 100 --interval 0.7 --json
    ./scripts/drill-backend-crash --report drill.md # where the markdown report goes

Everything runs on loopback, on free ports: a redis-server (``RedisProcess``, a last tick seeded
so market orders can be priced), a primary and a backup backend and one executor, each started
with the real CLI (``python -m nodes.cli backend|executor ... --stats F``). Every process this
script started is stopped (SIGTERM, then SIGKILL) before it exits, also after an error.

Load: ``--clients`` ``OrderClient`` instances in this process place market orders with unique
client order ids, paced at ``--rate`` / ``--clients`` per second each. Per order the drill keeps
the send time, the ack time, the ack's order id and epoch, or how the order ended instead
(non-retryable reject, ``OrderTimeout``).

Kills: every ``--interval`` seconds the drill finds the active backend (its stats file says
``active`` at the store's current epoch, and the other one says ``passive``), SIGKILLs it and
restarts it at once with the same command (it comes back passive); so the kills alternate.
*Failover time* = kill -> the first ack whose epoch is above the epoch at the kill (that ack came
from the new active). It is split in two: *takeover* = kill -> the new active's log line
"active at epoch N" (peer timeout, the client's vote, the epoch compare-and-swap, the reload of
open orders; the nodes log at INFO, with millisecond wall-clock stamps) and *serve* = takeover ->
first ack (re-drive of routed orders, the client's retry reaching the new active). The same
log line splits the takeover further (per kill and p50/max): how long the peer had been
silent when a client's request made the node ask for the epoch (the peer timeout and the
vote), and the node's own work after it (the epoch's compare-and-swap, the held records and
client ids, the open orders). The clients run in the drill's own process, so its event loop
being off the CPU is part of the failover it sees: ``client_stall_ms`` is how long that loop
stalled between the kill and the first ack.

End: the load stops, in-flight orders finish, and the drill waits (bounded) until every acked
order has an execution record (``{prefix}:executed:{order_id}``) and its record is FILLED. Then:

* **lost**: acknowledged, never executed;
* **duplicated**: client orders executed more than once: one client order id behind two
  executed order ids, or fills in the order's execution log (``{prefix}:xlog:{order_id}``)
  adding up to more than the order's quantity (an order may fill in several slices);
* ``ack_mismatch``: an ack whose order id is not the one the store maps its client order id to;
* the executor's own ``fills`` beside the executed orders found in Redis.

Exit status 0 when every kill was done and measured, lost == 0, duplicated == 0 and
ack_mismatch == 0; 1 otherwise; 2 when the drill itself could not run. With ``--json`` the last
line of stdout is one JSON object. docs/BENCHMARKS.md, "Backend failover drill", has results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.drills.orders import (
    PREFIX,
    SYMBOL,
    Load,
    client_load,
    close_load,
    count_orders,
    find_active,
    seed_tick,
)
from nodes.drills.ports import tcp_endpoint
from nodes.drills.procs import Node
from nodes.drills.report import aligned, dash, markdown_table, round1, run_drill_main
from protocols.errors import DrillError
from protocols.stats import percentile

FIND_ACTIVE_TIMEOUT_S = 10.0
START_TIMEOUT_S = 20.0


# --- records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Kill:
    n: int
    role: str
    pid: int
    at: float  # time.monotonic() just before SIGKILL
    at_wall: float  # time.time() at the same moment (the nodes' logs are in wall-clock time)
    epoch_before: int
    takeover: float | None = None  # the new active's log line "active at epoch", monotonic
    first_ack: float | None = None  # first ack with a higher epoch, sent before or after
    restart_s: float = 0.0
    phases: Phases | None = None  # the takeover's own split, from the same log line
    client_stall_ms: float | None = None  # the drill's own loop, off the CPU, kill -> first ack

    def ms(self, t: float | None) -> float | None:
        return None if t is None else round((t - self.at) * 1000, 1)


@dataclass(frozen=True, slots=True)
class Phases:
    """What the new active's "active at epoch" line says of its takeover (ms): how long the
    peer had been silent when a client's request made it ask for the epoch, the epoch's
    compare-and-swap, writing the held records Redis lacked (with the client ids' load),
    reading the open orders."""

    silent: float
    epoch: float
    held: float
    open: float

    @property
    def work(self) -> float:
        """The takeover's own work, from the vote to serving."""
        return round(self.epoch + self.held + self.open, 1)


# The logger was nodes.backend before the subpackages, nodes.orders.backend since.
_TAKEOVER = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO "
                       r"nodes\.(?:orders\.)?backend: backend \w+: active at epoch (\d+) with"
                       r"(?:.*\(peer silent ([\d.]+) ms at the vote; epoch ([\d.]+), held records "
                       r"([\d.]+), open orders ([\d.]+) ms\))?")


def takeovers(logs: list[Path]) -> dict[int, tuple[float, Phases | None]]:
    """Epoch -> wall-clock time of the backend's "active at epoch" log line (INFO), and the
    takeover's phases where the line gives them."""
    out: dict[int, tuple[float, Phases | None]] = {}
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if m := _TAKEOVER.match(line):
                    when = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f")
                    phases = None if m[3] is None else Phases(*(float(m[i]) for i in (3, 4, 5, 6)))
                    out[int(m[2])] = (when.timestamp(), phases)
    return out


class LoopStalls:
    """The drill's own event loop: when it was off the CPU (or busy) past a small sleep. The
    clients run in this process, so a stall here is part of the failover the drill sees."""

    TICK_S = 0.005
    MIN_S = 0.002  # later than this past the tick counts as a stall

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (monotonic start, seconds)

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            late = time.monotonic() - before - self.TICK_S
            if late > self.MIN_S:
                self.stalls.append((before, late))

    def within(self, start: float, end: float) -> float:
        """Milliseconds stalled between ``start`` and ``end``."""
        return round(sum(d for t, d in self.stalls if start <= t < end) * 1000, 1)


# --- the pair --------------------------------------------------------------------------------


def write_config(run_dir: Path, redis_url: str) -> Path:
    from bus.config import MeshConfig, MeshSection, OrdersSection, RedisSection, dump_toml

    def eps() -> tuple[str, str]:
        # The nodes bind these from the mesh file, so the ports are named before they start.
        return tcp_endpoint(), tcp_endpoint()

    cfg = MeshConfig(mesh=MeshSection(name="drill", key_prefix=PREFIX),
                     redis=RedisSection(url=redis_url),
                     orders=OrdersSection(enabled=True, trader_rate=0.0, clients=eps(),
                                          peers=eps(), updates=eps(), executor=eps(),
                                          replicas=eps(), symbols=(SYMBOL,))).validate()
    path = run_dir / "mesh.toml"
    path.write_text(dump_toml(cfg))
    return path


# --- the drill -------------------------------------------------------------------------------


async def run_drill(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from bus.orders.client import OrderClient, OrderClientOptions
    from bus.store.orders import RedisOrderStore
    from nodes.servers.redis_server import RedisProcess

    server = RedisProcess(data_dir=run_dir / "redis", appendonly=False)
    nodes: dict[str, Node] = {}
    load: Load | None = None
    redis: Any = None
    store: RedisOrderStore | None = None
    kills: list[Kill] = []
    try:
        server.start()
        await seed_tick(server.url)
        config = write_config(run_dir, server.url)
        py = sys.executable
        for name, cmd in (("primary", ["backend", "--role", "primary"]),
                          ("backup", ["backend", "--role", "backup"]),
                          ("executor", ["executor"])):
            stats = run_dir / f"{name}.json"
            nodes[name] = Node(name, [py, "-m", "nodes.cli", *cmd, "--config", str(config),
                                      "--stats", str(stats), "--log-level", args.log_level],
                               stats, run_dir / f"{name}.log")
            nodes[name].start()
        backends = {k: nodes[k] for k in ("primary", "backup")}
        redis = aioredis.Redis.from_url(server.url)
        store = RedisOrderStore(server.url, PREFIX)
        await find_active(backends, redis, START_TIMEOUT_S)
        from bus.config import load_config

        cfg = load_config(config)
        clients = [OrderClient(OrderClientOptions.from_config(
            cfg, client_id=f"drill-client-{i}", request_timeout_s=args.request_timeout))
            for i in range(args.clients)]
        load = Load(clients)
        for c in clients:
            await c.start()
        stalls = LoopStalls()
        stall_task = asyncio.create_task(stalls.run())
        run_id = f"d{time.time_ns()}"
        loaders = [asyncio.create_task(client_load(load, i, args.rate / args.clients, run_id))
                   for i in range(args.clients)]
        load_start = time.monotonic()
        kill_error = ""
        for n in range(args.kills):
            await asyncio.sleep(max(0.0, load_start + (n + 1) * args.interval - time.monotonic()))
            try:
                target, _peer, epoch = await find_active(backends, redis, FIND_ACTIVE_TIMEOUT_S)
            except DrillError as exc:
                kill_error = f"kill {n + 1}: {exc}"
                break
            kill = Kill(n + 1, target.name, target.pid, time.monotonic(), time.time(), epoch)
            target.kill()
            kills.append(kill)
            t = time.monotonic()
            target.start()  # the same command: it comes back in its role, then passive
            kill.restart_s = time.monotonic() - t
        # Let the last failover complete and be measured before the load stops.
        await asyncio.sleep(args.interval)
        load.stop.set()
        await asyncio.gather(*loaders)
        load_s = time.monotonic() - load_start
        if load.tasks:  # each ends by its deadline (OrderTimeout) at the latest
            await asyncio.wait(set(load.tasks), timeout=15.0)
        stall_task.cancel()
        summary = await verify(args, load, kills, redis, store, nodes, stalls)
        summary.update(kill_error=kill_error, load_s=round(load_s, 2),
                       client_stats=dict(sum((Counter(c.stats()) for c in clients), Counter())))
        return summary
    finally:
        await close_load(load)
        for node in nodes.values():
            node.stop()
        if store is not None:
            await store.close()
        if redis is not None:
            await redis.aclose()
        server.stop()



async def verify(args: argparse.Namespace, load: Load, kills: list[Kill], redis: Any,
                 store: Any, nodes: dict[str, Node], stalls: LoopStalls) -> dict[str, Any]:
    """Wait for every acked order to be executed (bounded), then count and measure."""
    orders = await count_orders(load, redis, store, drain_timeout=args.drain_timeout)
    acked = load.acked()
    # Failover: the first ack from a higher epoch than the killed active's.
    by_ack = sorted(acked, key=lambda r: r.done)
    for k in kills:
        k.first_ack = next((r.done for r in by_ack
                            if r.done >= k.at and r.epoch > k.epoch_before), None)
    for node in nodes.values():  # a clean stop writes final stats and flushes the logs
        node.stop()
    taken = takeovers([nodes["primary"].log_path, nodes["backup"].log_path])
    for k in kills:
        if (seen := taken.get(k.epoch_before + 1)) is not None:
            k.takeover, k.phases = k.at + (seen[0] - k.at_wall), seen[1]
        if k.first_ack is not None:
            k.client_stall_ms = stalls.within(k.at, k.first_ack)
    failover = [v for k in kills if (v := k.ms(k.first_ack)) is not None]
    takeover = [v for k in kills if (v := k.ms(k.takeover)) is not None]
    serve = [round(a - d, 1) for k in kills
             if (a := k.ms(k.first_ack)) is not None and (d := k.ms(k.takeover)) is not None]
    work = [k.phases.work for k in kills if k.phases is not None]
    silent = [k.phases.silent for k in kills if k.phases is not None]
    client_stall = [k.client_stall_ms for k in kills if k.client_stall_ms is not None]
    latencies = [(r.done - r.sent) * 1000 for r in acked]
    executor = nodes["executor"].stats() or {}
    final_epoch = int(await redis.get(f"{PREFIX}:epoch") or 0)
    summary: dict[str, Any] = {
        "kills": len(kills), "kills_requested": args.kills,
        "failover_ms_p50": percentile(failover, 0.5), "failover_ms_p99": percentile(failover, 0.99),
        "failover_ms_max": max(failover, default=None),
        "takeover_ms_p50": percentile(takeover, 0.5),
        "takeover_ms_max": max(takeover, default=None),
        "serve_ms_p50": percentile(serve, 0.5), "serve_ms_max": max(serve, default=None),
        "vote_silence_ms_p50": percentile(silent, 0.5),
        "vote_silence_ms_max": max(silent, default=None),
        "takeover_work_ms_p50": round1(percentile(work, 0.5)),
        "takeover_work_ms_max": max(work, default=None),
        "client_stall_ms_p50": round1(percentile(client_stall, 0.5)),
        "client_stall_ms_max": max(client_stall, default=None),
        "failovers_measured": len(failover), "final_epoch": final_epoch,
        # Epochs beyond the first activation and one per kill: takeovers nobody provoked.
        "extra_takeovers": max(0, final_epoch - 1 - len(kills)),
        **{k: orders[k] for k in ("sent", "acked", "rejected", "timed_out", "other_errors",
                                  "reject_reasons", "executed", "executed_unacked", "lost",
                                  "duplicated", "ack_mismatch", "acked_not_filled",
                                  "drain_unfinished")},
        "executor_fills": executor.get("fills"), "executor_replays": executor.get("replays"),
        "executor_rejects": executor.get("rejects"),
        "ack_latency_ms_p50": round1(percentile(latencies, 0.5)),
        "ack_latency_ms_p99": round1(percentile(latencies, 0.99)),
        "ack_latency_ms_max": round1(max(latencies, default=None)),
        "rate": args.rate, "clients": args.clients, "interval_s": args.interval,
        "request_timeout_s": args.request_timeout,
        "backend_starts": {k: nodes[k].starts for k in ("primary", "backup")},
        "backend_stats": {k: nodes[k].stats() for k in ("primary", "backup")},
        "per_kill": [{"n": k.n, "killed": k.role, "epoch_before": k.epoch_before,
                      "takeover_ms": k.ms(k.takeover), "failover_ms": k.ms(k.first_ack),
                      "restart_ms": round(k.restart_s * 1000, 1),
                      **({} if k.phases is None else {
                          "vote_silence_ms": k.phases.silent, "epoch_ms": k.phases.epoch,
                          "held_ms": k.phases.held, "open_ms": k.phases.open}),
                      "client_stall_ms": k.client_stall_ms} for k in kills],
        **{k: orders[k] for k in ("acked_by_state", "lost_by_stored_state", "lost_detail",
                                  "acked_not_filled_ids")},
    }
    return summary


def passed(s: dict[str, Any]) -> bool:
    return (s["kills"] == s["kills_requested"] and s["failovers_measured"] == s["kills"]
            and s["lost"] == 0 and s["duplicated"] == 0 and s["ack_mismatch"] == 0
            and not s.get("kill_error"))



# --- output ----------------------------------------------------------------------------------


def markdown(s: dict[str, Any], command: str) -> str:
    lines = [
        "# Backend failover drill", "",
        f"{s['date']}, {s['machine']}. Command: `{command}`", "",
        f"Result: **{'PASS' if s['ok'] else 'FAIL'}**"
        + (f" ({s['kill_error']})" if s.get("kill_error") else ""), "",
        "| figure | value |", "|---|---|",
        f"| kills (requested) | {s['kills']} ({s['kills_requested']}) |",
        f"| failover ms p50 / p99 / max | {dash(s['failover_ms_p50'])} / "
        f"{dash(s['failover_ms_p99'])} / {dash(s['failover_ms_max'])} |",
        f"| takeover ms (kill -> new active's log line) p50 / max | {dash(s['takeover_ms_p50'])} / "
        f"{dash(s['takeover_ms_max'])} |",
        f"| serve ms (takeover -> first ack) p50 / max | {dash(s['serve_ms_p50'])} / "
        f"{dash(s['serve_ms_max'])} |",
        f"| in the takeover: peer silence at the vote / the node's own work ms, p50 / max | "
        f"{dash(s['vote_silence_ms_p50'])} / {dash(s['vote_silence_ms_max'])}, "
        f"{dash(s['takeover_work_ms_p50'])} / {dash(s['takeover_work_ms_max'])} |",
        f"| the drill's own loop stalled, kill -> first ack, ms p50 / max | "
        f"{dash(s['client_stall_ms_p50'])} / {dash(s['client_stall_ms_max'])} |",
        f"| epoch at the end / takeovers beyond one per kill | {s['final_epoch']} / "
        f"{s['extra_takeovers']} |",
        f"| load | {s['rate']:g} orders/s over {s['clients']} clients for {s['load_s']} s |",
        f"| sent / acked | {s['sent']} / {s['acked']} |",
        f"| rejected / timed out / other | {s['rejected']} / {s['timed_out']} / "
        f"{s['other_errors']} |",
        f"| executed (of them unacked) | {s['executed']} ({s['executed_unacked']}) |",
        f"| **lost** / **duplicated** / ack mismatch | {s['lost']} / {s['duplicated']} / "
        f"{s['ack_mismatch']} |",
        f"| executor fills / replays / rejects | {dash(s['executor_fills'])} / "
        f"{dash(s['executor_replays'])} / {dash(s['executor_rejects'])} |",
        f"| ack latency ms p50 / p99 / max | {dash(s['ack_latency_ms_p50'])} / "
        f"{dash(s['ack_latency_ms_p99'])} / {dash(s['ack_latency_ms_max'])} |",
        "",
    ]
    lines += markdown_table(
        ["kill", "killed", "epoch before", "takeover ms", "failover ms", "silent at vote ms",
         "epoch ms", "held ms", "open ms", "drill stall ms", "restart ms"],
        [[k["n"], k["killed"], k["epoch_before"], k["takeover_ms"], k["failover_ms"],
          dash(k.get("vote_silence_ms")), dash(k.get("epoch_ms")), dash(k.get("held_ms")),
          dash(k.get("open_ms")), dash(k["client_stall_ms"]), k["restart_ms"]]
         for k in s["per_kill"]])
    lines += ["", f"Client counters: {json.dumps(s['client_stats'])}",
              f"Reject reasons: {json.dumps(s['reject_reasons'])}",
              f"Acks by the state they carried: {json.dumps(s['acked_by_state'])}", ""]
    if s["lost_detail"]:
        lines += ["Lost orders (acknowledged, never executed) by their stored state: "
                  f"{json.dumps(s['lost_by_stored_state'])}; the first 20:", ""]
        lines += [f"* {json.dumps(d)}" for d in s["lost_detail"]]
        lines.append("")
    return "\n".join(lines)


def human(s: dict[str, Any]) -> str:
    rows = [
        ("kills", f"{s['kills']} of {s['kills_requested']}"),
        ("failover ms p50/p99/max", f"{dash(s['failover_ms_p50'])} / {dash(s['failover_ms_p99'])}"
                                    f" / {dash(s['failover_ms_max'])}"),
        ("takeover ms p50/max", f"{dash(s['takeover_ms_p50'])} / {dash(s['takeover_ms_max'])}"),
        ("serve ms p50/max", f"{dash(s['serve_ms_p50'])} / {dash(s['serve_ms_max'])}"),
        ("takeover work ms p50/max", f"{dash(s['takeover_work_ms_p50'])} / "
                                     f"{dash(s['takeover_work_ms_max'])}"),
        ("drill stall ms p50/max", f"{dash(s['client_stall_ms_p50'])} / "
                                   f"{dash(s['client_stall_ms_max'])}"),
        ("extra takeovers", str(s["extra_takeovers"])),
        ("sent / acked", f"{s['sent']} / {s['acked']}"),
        ("rejected / timed out", f"{s['rejected']} / {s['timed_out']}"),
        ("executed", f"{s['executed']} ({s['executed_unacked']} unacked)"),
        ("lost / duplicated", f"{s['lost']} / {s['duplicated']}"),
        ("ack mismatch", str(s["ack_mismatch"])),
        ("result", "PASS" if s["ok"] else "FAIL"),
    ]
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of the active (default 20)")
    p.add_argument("--rate", type=float, default=500.0, help="orders/s over all clients")
    p.add_argument("--clients", type=int, default=4, help="order clients (default 4)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between kills")
    p.add_argument("--request-timeout", type=float, default=0.04,
                   help="the clients' request_timeout_s (default 0.04)")
    p.add_argument("--drain-timeout", type=float, default=10.0,
                   help="seconds to wait for acked orders to execute at the end")
    p.add_argument("--report", type=Path, help="markdown report (default: in the run dir)")
    p.add_argument("--run-dir", type=Path, help="logs, stats, mesh file (default: a temp dir)")
    p.add_argument("--log-level", default="INFO", help="the nodes' log level")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = p.parse_args(argv)
    if args.kills < 1 or args.rate <= 0 or args.clients < 1 or args.interval <= 0:
        p.error("--kills, --rate, --clients and --interval must be positive")
    return run_drill_main("drill-backend-crash", argv, args.run_dir,
                          lambda run_dir: run_drill(args, run_dir), passed, markdown, human,
                          report=args.report, as_json=args.json)

if __name__ == "__main__":
    sys.exit(main())
