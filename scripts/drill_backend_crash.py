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
first ack (re-drive of routed orders, the client's retry reaching the new active).

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
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SYMBOL = "EURUSD"
PREFIX = "drill"
ACCOUNT = "drill"
FIND_ACTIVE_TIMEOUT_S = 10.0
START_TIMEOUT_S = 20.0


class DrillError(RuntimeError):
    """The drill could not run (a process failed to start, or the pair never settled)."""


# --- processes -------------------------------------------------------------------------------


class Node:
    """One CLI node process: started, SIGKILLed, restarted and stopped by the drill."""

    def __init__(self, name: str, argv: list[str], stats: Path, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.stats_path = stats
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.stats_path.unlink(missing_ok=True)  # a stale "active" must never be read
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stats(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return None
        return data


# --- records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Placed:
    client: int
    client_order_id: str
    sent: float  # time.monotonic()
    outcome: str = "pending"  # acked | rejected:REASON | timeout | closed | error:TYPE
    done: float = 0.0
    order_id: str = ""
    epoch: int = 0
    ack_state: str = ""


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

    def ms(self, t: float | None) -> float | None:
        return None if t is None else round((t - self.at) * 1000, 1)


@dataclass(slots=True)
class Load:
    clients: list[Any]
    records: list[Placed] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    data = sorted(values)
    return data[max(0, math.ceil(q * len(data)) - 1)]


# --- load ------------------------------------------------------------------------------------


async def _place(load: Load, client: Any, rec: Placed) -> None:
    from protocols.errors import OrderClientClosed, OrderRejected, OrderTimeout
    from protocols.orders.messages import NewOrder, OrderType, Side

    order = NewOrder(ACCOUNT, rec.client_order_id, SYMBOL, Side.BUY if len(load.records) % 2
                     else Side.SELL, OrderType.MARKET, 1.0, None, time.time_ns())
    try:
        ack = await client.place(order)
    except OrderRejected as exc:
        rec.outcome = f"rejected:{exc.reason.name}"
    except OrderTimeout:
        rec.outcome = "timeout"
    except OrderClientClosed:
        rec.outcome = "closed"
    except Exception as exc:  # counted and shown: the drill reports, it does not hide
        rec.outcome = f"error:{type(exc).__name__}"
    else:
        rec.outcome, rec.order_id, rec.epoch = "acked", ack.order_id, ack.epoch
        rec.ack_state = ack.state.name
    rec.done = time.monotonic()


async def _client_load(load: Load, idx: int, rate: float, run_id: str) -> None:
    """Place orders at ``rate`` per second on client ``idx``, paced in small batches."""
    client = load.clients[idx]
    start = time.monotonic()
    placed = 0
    while not load.stop.is_set():
        due = int((time.monotonic() - start) * rate) - placed
        for _ in range(max(0, due)):
            placed += 1
            rec = Placed(idx, f"{run_id}-c{idx}-{placed}", time.monotonic())
            load.records.append(rec)
            task = asyncio.create_task(_place(load, client, rec))
            load.tasks.add(task)
            task.add_done_callback(load.tasks.discard)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.02, 1 / rate)):
                await load.stop.wait()


_TAKEOVER = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO nodes\.backend: "
                       r"backend \w+: active at epoch (\d+) with")


def takeovers(logs: list[Path]) -> dict[int, float]:
    """Epoch -> wall-clock time of the backend's "active at epoch" log line (INFO)."""
    out: dict[int, float] = {}
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if m := _TAKEOVER.match(line):
                    when = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f")
                    out[int(m[2])] = when.timestamp()
    return out


# --- the pair --------------------------------------------------------------------------------


async def find_active(backends: dict[str, Node], redis: Any,
                      timeout: float) -> tuple[Node, Node, int]:
    """The active backend (stats: active at the store's epoch) and its passive peer."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        epoch = int(await redis.get(f"{PREFIX}:epoch") or 0)
        seen = {name: (n.alive(), n.stats()) for name, n in backends.items()}
        active = [n for n in backends.values() if n.alive() and (s := n.stats())
                  and s.get("state") == "active" and s.get("epoch") == epoch]
        passive = [n for n in backends.values() if n.alive() and (s := n.stats())
                   and s.get("state") == "passive"]
        if len(active) == 1 and len(passive) == 1 and epoch > 0:
            return active[0], passive[0], epoch
        await asyncio.sleep(0.02)
    states = {name: (alive, s and s.get("state"), s and s.get("epoch"))
              for name, (alive, s) in seen.items()}
    raise DrillError(f"no settled pair within {timeout:.0f} s (alive, state, epoch): {states}")


async def seed_tick(url: str) -> None:
    from bus.store.ticks import CheckpointRun, RedisTickStore

    ticks = RedisTickStore(url, PREFIX)
    try:
        await ticks.start_session("drill-seed", 1, [SYMBOL], 100)
        await ticks.write([CheckpointRun(SYMBOL, 1, 1, [(1.08, 1.0802, 0.0, 1.0, 1, 1)])], 100)
    finally:
        await ticks.close()


def write_config(run_dir: Path, redis_url: str) -> Path:
    from bus.config import MeshConfig, MeshSection, OrdersSection, RedisSection, dump_toml
    from nodes.servers.redis_server import free_port

    ports: set[int] = set()
    while len(ports) < 8:  # free_port may hand out the same port twice in a row
        ports.add(free_port())
    pool = [f"tcp://127.0.0.1:{port}" for port in sorted(ports)]

    def eps() -> tuple[str, str]:
        return pool.pop(), pool.pop()

    cfg = MeshConfig(mesh=MeshSection(name="drill", key_prefix=PREFIX),
                     redis=RedisSection(url=redis_url),
                     orders=OrdersSection(enabled=True, trader_rate=0.0, clients=eps(),
                                          peers=eps(), updates=eps(), executor=eps(),
                                          symbols=(SYMBOL,))).validate()
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
        run_id = f"d{time.time_ns()}"
        loaders = [asyncio.create_task(_client_load(load, i, args.rate / args.clients, run_id))
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
        summary = await verify(args, load, kills, redis, store, nodes)
        summary.update(kill_error=kill_error, load_s=round(load_s, 2),
                       client_stats=dict(sum((Counter(c.stats()) for c in clients), Counter())))
        return summary
    finally:
        if load is not None:
            load.stop.set()
            for task in list(load.tasks):
                task.cancel()
            for c in load.clients:
                with contextlib.suppress(Exception):
                    await c.close()
        for node in nodes.values():
            node.stop()
        if store is not None:
            await store.close()
        if redis is not None:
            await redis.aclose()
        server.stop()


async def verify(args: argparse.Namespace, load: Load, kills: list[Kill], redis: Any,
                 store: Any, nodes: dict[str, Node]) -> dict[str, Any]:
    """Wait for every acked order to be executed (bounded), then count and measure."""
    from protocols.orders.messages import OrderState

    acked = [r for r in load.records if r.outcome == "acked"]
    waiting = {r.order_id for r in acked}
    deadline = time.monotonic() + args.drain_timeout
    while waiting and time.monotonic() < deadline:
        ids = sorted(waiting)
        pipe = redis.pipeline(transaction=False)
        for oid in ids:
            pipe.scard(f"{PREFIX}:executed:{oid}")
        for oid, n in zip(ids, await pipe.execute(), strict=True):
            if n:
                waiting.discard(oid)
        if waiting:
            await asyncio.sleep(0.1)
    drain_left = len(waiting)
    # Every execution record in the store, and the order each belongs to.
    executed_sets: dict[str, set[bytes]] = {}
    keys = [k async for k in redis.scan_iter(match=f"{PREFIX}:executed:*", count=1000)]
    pipe = redis.pipeline(transaction=False)
    for k in keys:
        pipe.smembers(k)
    for k, members in zip(keys, await pipe.execute(), strict=True):
        executed_sets[k.decode().split(":", 2)[2]] = set(members)
    orders = {}
    ids = sorted(executed_sets.keys() | {r.order_id for r in acked})
    for i in range(0, len(ids), 50):  # the client pool is bounded
        chunk = ids[i:i + 50]
        for oid, order in zip(chunk, await asyncio.gather(*(store.get(o) for o in chunk)),
                              strict=True):
            orders[oid] = order
    executed = sorted(executed_sets)
    lots: dict[str, float] = {}
    for i in range(0, len(executed), 50):
        chunk = executed[i:i + 50]
        logs = await asyncio.gather(*(store.executions(o) for o in chunk))
        for oid, entries in zip(chunk, logs, strict=True):
            lots[oid] = sum(e.last_quantity for e in entries if e.is_fill)
    by_coid: dict[str, list[str]] = defaultdict(list)
    for oid in executed_sets:
        order = orders.get(oid)
        if order is not None:
            by_coid[order.order.client_order_id].append(oid)
    duplicated = sum(1 for oids in by_coid.values()
                     if len(oids) > 1 or lots[oids[0]] > orders[oids[0]].quantity * (1 + 1e-9))
    ack_mismatch = 0
    for r in acked:
        order = orders.get(r.order_id)
        if order is None or order.order.client_order_id != r.client_order_id:
            ack_mismatch += 1
    filled = {oid for oid, o in orders.items() if o is not None and o.state is OrderState.FILLED}
    lost = [r for r in acked if r.order_id not in executed_sets]
    lost_ids = [r.order_id for r in lost]
    lost_detail = [{"order_id": r.order_id, "client_order_id": r.client_order_id,
                    "ack_state": r.ack_state, "ack_epoch": r.epoch,
                    "stored_state": (o := orders.get(r.order_id)) and o.state.name,
                    "stored_epoch": o and o.epoch} for r in lost[:20]]
    acked_by_state = Counter(r.ack_state for r in acked)
    lost_by_state = Counter((o := orders.get(r.order_id)) and o.state.name for r in lost)
    not_filled = [r.order_id for r in acked if r.order_id in executed_sets
                  and r.order_id not in filled]
    acked_ids = {r.order_id for r in acked}
    outcomes = Counter(r.outcome.split(":")[0] for r in load.records)
    reasons = Counter(r.outcome.split(":", 1)[1] for r in load.records
                      if r.outcome.startswith(("rejected:", "error:")))
    # Failover: the first ack from a higher epoch than the killed active's.
    by_ack = sorted((r for r in acked), key=lambda r: r.done)
    for k in kills:
        k.first_ack = next((r.done for r in by_ack
                            if r.done >= k.at and r.epoch > k.epoch_before), None)
    for node in nodes.values():  # a clean stop writes final stats and flushes the logs
        node.stop()
    taken = takeovers([nodes["primary"].log_path, nodes["backup"].log_path])
    for k in kills:
        if (wall := taken.get(k.epoch_before + 1)) is not None:
            k.takeover = k.at + (wall - k.at_wall)
    failover = [v for k in kills if (v := k.ms(k.first_ack)) is not None]
    takeover = [v for k in kills if (v := k.ms(k.takeover)) is not None]
    serve = [round(a - d, 1) for k in kills
             if (a := k.ms(k.first_ack)) is not None and (d := k.ms(k.takeover)) is not None]
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
        "failovers_measured": len(failover), "final_epoch": final_epoch,
        # Epochs beyond the first activation and one per kill: takeovers nobody provoked.
        "extra_takeovers": max(0, final_epoch - 1 - len(kills)),
        "sent": len(load.records), "acked": len(acked),
        "rejected": outcomes["rejected"], "timed_out": outcomes["timeout"],
        "other_errors": outcomes["error"] + outcomes["closed"] + outcomes["pending"],
        "reject_reasons": dict(reasons),
        "executed": len(executed_sets), "executed_unacked": len(executed_sets.keys() - acked_ids),
        "lost": len(lost_ids), "duplicated": duplicated, "ack_mismatch": ack_mismatch,
        "acked_not_filled": len(not_filled), "drain_unfinished": drain_left,
        "executor_fills": executor.get("fills"), "executor_replays": executor.get("replays"),
        "executor_rejects": executor.get("rejects"),
        "ack_latency_ms_p50": _r(percentile(latencies, 0.5)),
        "ack_latency_ms_p99": _r(percentile(latencies, 0.99)),
        "ack_latency_ms_max": _r(max(latencies, default=None)),
        "rate": args.rate, "clients": args.clients, "interval_s": args.interval,
        "request_timeout_s": args.request_timeout,
        "backend_starts": {k: nodes[k].starts for k in ("primary", "backup")},
        "backend_stats": {k: nodes[k].stats() for k in ("primary", "backup")},
        "per_kill": [{"n": k.n, "killed": k.role, "epoch_before": k.epoch_before,
                      "takeover_ms": k.ms(k.takeover), "failover_ms": k.ms(k.first_ack),
                      "restart_ms": round(k.restart_s * 1000, 1)} for k in kills],
        "acked_by_state": dict(acked_by_state), "lost_by_stored_state": dict(lost_by_state),
        "lost_detail": lost_detail, "acked_not_filled_ids": not_filled[:20],
    }
    return summary


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def passed(s: dict[str, Any]) -> bool:
    return (s["kills"] == s["kills_requested"] and s["failovers_measured"] == s["kills"]
            and s["lost"] == 0 and s["duplicated"] == 0 and s["ack_mismatch"] == 0
            and not s.get("kill_error"))


# --- output ----------------------------------------------------------------------------------


def _f(v: Any) -> str:
    return "-" if v is None else str(v)


def markdown(s: dict[str, Any], command: str) -> str:
    lines = [
        "# Backend failover drill", "",
        f"{s['date']}, {s['machine']}. Command: `{command}`", "",
        f"Result: **{'PASS' if s['ok'] else 'FAIL'}**"
        + (f" ({s['kill_error']})" if s.get("kill_error") else ""), "",
        "| figure | value |", "|---|---|",
        f"| kills (requested) | {s['kills']} ({s['kills_requested']}) |",
        f"| failover ms p50 / p99 / max | {_f(s['failover_ms_p50'])} / "
        f"{_f(s['failover_ms_p99'])} / {_f(s['failover_ms_max'])} |",
        f"| takeover ms (kill -> new active's log line) p50 / max | {_f(s['takeover_ms_p50'])} / "
        f"{_f(s['takeover_ms_max'])} |",
        f"| serve ms (takeover -> first ack) p50 / max | {_f(s['serve_ms_p50'])} / "
        f"{_f(s['serve_ms_max'])} |",
        f"| epoch at the end / takeovers beyond one per kill | {s['final_epoch']} / "
        f"{s['extra_takeovers']} |",
        f"| load | {s['rate']:g} orders/s over {s['clients']} clients for {s['load_s']} s |",
        f"| sent / acked | {s['sent']} / {s['acked']} |",
        f"| rejected / timed out / other | {s['rejected']} / {s['timed_out']} / "
        f"{s['other_errors']} |",
        f"| executed (of them unacked) | {s['executed']} ({s['executed_unacked']}) |",
        f"| **lost** / **duplicated** / ack mismatch | {s['lost']} / {s['duplicated']} / "
        f"{s['ack_mismatch']} |",
        f"| executor fills / replays / rejects | {_f(s['executor_fills'])} / "
        f"{_f(s['executor_replays'])} / {_f(s['executor_rejects'])} |",
        f"| ack latency ms p50 / p99 / max | {_f(s['ack_latency_ms_p50'])} / "
        f"{_f(s['ack_latency_ms_p99'])} / {_f(s['ack_latency_ms_max'])} |",
        "", "| kill | killed | epoch before | takeover ms | failover ms | restart ms |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {k['n']} | {k['killed']} | {k['epoch_before']} | {_f(k['takeover_ms'])} | "
              f"{_f(k['failover_ms'])} | {k['restart_ms']} |" for k in s["per_kill"]]
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
        ("failover ms p50/p99/max", f"{_f(s['failover_ms_p50'])} / {_f(s['failover_ms_p99'])}"
                                    f" / {_f(s['failover_ms_max'])}"),
        ("takeover ms p50/max", f"{_f(s['takeover_ms_p50'])} / {_f(s['takeover_ms_max'])}"),
        ("serve ms p50/max", f"{_f(s['serve_ms_p50'])} / {_f(s['serve_ms_max'])}"),
        ("extra takeovers", str(s["extra_takeovers"])),
        ("sent / acked", f"{s['sent']} / {s['acked']}"),
        ("rejected / timed out", f"{s['rejected']} / {s['timed_out']}"),
        ("executed", f"{s['executed']} ({s['executed_unacked']} unacked)"),
        ("lost / duplicated", f"{s['lost']} / {s['duplicated']}"),
        ("ack mismatch", str(s["ack_mismatch"])),
        ("result", "PASS" if s["ok"] else "FAIL"),
    ]
    return aligned(rows)


def aligned(rows: list[tuple[str, str]]) -> str:
    """``name  value`` lines with the values in one column (the drills' console summary)."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


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
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="tickmesh-drill-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    report = args.report or run_dir / "drill-backend-crash.md"
    command = "./scripts/drill-backend-crash " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    try:
        summary = asyncio.run(run_drill(args, run_dir))
    except (DrillError, OSError) as exc:
        print(f"drill-backend-crash: {exc} (logs in {run_dir})", file=sys.stderr)
        return 2
    return conclude(summary, ok=passed(summary), run_dir=run_dir, report=report,
                    markdown=lambda s: markdown(s, command.strip()), human=human,
                    as_json=args.json)


def conclude(summary: dict[str, Any], *, ok: bool, run_dir: Path, report: Path,
             markdown: Callable[[dict[str, Any]], str], human: Callable[[dict[str, Any]], str],
             as_json: bool) -> int:
    """The end of a drill, shared by the drills: stamp the summary (verdict, date, machine,
    where its files are), write the markdown report, print the table and the JSON line, and
    give the exit status (0: every target met, 1: not)."""
    summary["ok"] = ok
    summary["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary["machine"] = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                          f"{platform.python_version()}, load average "
                          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    summary["run_dir"], summary["report"] = str(run_dir), str(report)
    report.write_text(markdown(summary))
    print(human(summary))
    print(f"report: {report}")
    print(f"logs:   {run_dir}")
    if as_json:
        print(json.dumps(summary, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

