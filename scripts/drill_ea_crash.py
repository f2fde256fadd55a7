#!/usr/bin/env python3
"""EA crash drill: SIGKILL the active EA instance again and again under tick and order load,
with and without a standby, and count what the *terminal's own record* says became of every
order.

    ./scripts/drill-ea-crash                        # 2 x 10 kills, 1,000 ticks/s, 200 orders/s
    ./scripts/drill-ea-crash --kills 4 --standby no --json
    ./scripts/drill-ea-crash --report drill.md

Each phase (``--standby no``, ``yes`` or ``both``: one phase each) runs the whole mesh under
``tickmesh up`` on free loopback ports, on the EA path: the simulated MetaTrader 5 terminal
(its own process, quoting ``--tick-rate`` ticks/s), ``ea-1`` (and with a standby ``ea-2``, on
the same terminal and symbols), the feed taking the EA's ticks, the backend pair and the
executor in bridge mode. History and gateways are off: the drill is about the EA. The
supervisor restarts a dead EA from its warm spare.

Load: ``OrderClient`` instances in this process place market orders (``--rate``/s); a SUB on
the feed records every tick it publishes (symbol, source time, prices, arrival).

Kills, every ``--interval`` s, of the instance that holds the account lease (its stats file
says so): most are a plain SIGKILL; every 4th (2nd, 6th, ...) is at the worst moment *after
order_send and before the report* (the fault point ``after_send``: the instance kills itself
right after the next ``order_send`` returns); every 4th (4th, 8th, ...) also arms the fault
point ``reconcile``, so the restarted instance dies half way through its reconciliation and is
restarted again.

Per kill:

* **ticks back** = kill -> the first tick published by the feed that the terminal made after
  the kill (with a standby: its copies win once the active is gone);
* **order back** = kill -> the first deal the terminal made after the kill (the terminal's own
  clock, its deal history);

reported as ``restart_ms`` (phase without standby, the supervisor's restart: ticks back) and
``takeover_ms`` (phase with a standby: order back), p50/p99/max, beside the raw reference of
the same run: a cold ``python -c "import nodes.ea.node"`` (what a restart would cost without
the warm spare), and the lease floor (``ea_lease_ms + ea_guard_ms``), under which no new
instance may send.

End: the load stops; the drill waits (bounded) for every acknowledged order to reach a final
state in the store, then reads the terminal's orders and deals and counts per acknowledged
order (tagged by its magic number):

* **executed**: the terminal's deals for it add up to its quantity;
* **lost**: acknowledged, no deal at the terminal, and not finally rejected with a reason;
* **duplicated**: two terminal orders taken for it, or deals beyond its quantity;
* ``log_mismatch``: orders whose fills in tickmesh's log differ from the terminal's deals;
* **ticks_lost**: ticks the terminal made (its tick history, the run's span less a second at
  each end) that the feed never published.

Exit status 0 when every kill was done and measured, lost, duplicated and log_mismatch are 0
(and, with a standby, ticks_lost is 0); 1 otherwise; 2 when the drill could not run.
``--json``: the last line of stdout is one JSON object (``kills``, ``restart_ms_p99``,
``takeover_ms_p99``, ``ticks_lost``, ``acked``, ``executed``, ``lost``, ``duplicated``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import zmq
import zmq.asyncio

from bus.config import HistorySection, MeshConfig
from bus.ea.simclient import SimTerminal
from bus.orders.client import OrderClient, OrderClientOptions
from bus.store.orders import RedisOrderStore
from nodes.drills.mesh import UpMesh, free_mesh_config
from nodes.drills.orders import Load, client_load, close_load, count_orders
from nodes.drills.report import (
    aligned,
    dash,
    markdown_table,
    round1,
    run_drill_main,
)
from nodes.supervisor import with_ea
from protocols.ea.mt5 import OrderStateMt5, magic_of
from protocols.errors import DrillError
from protocols.orders.lifecycle import OrderState
from protocols.stats import percentile
from protocols.ticks.codec import decode_feed
from protocols.ticks.messages import TickBatch

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "eadrill"
READY_TIMEOUT_S = 60.0
SETTLE_S = 2.0  # after a phase's last kill: the last restart's orders go through


# --- the mesh --------------------------------------------------------------------------------

def phase_config(run_dir: Path, *, tick_rate: float, standby: bool) -> MeshConfig:
    cfg = free_mesh_config(run_dir, rate=tick_rate, prefix=PREFIX)
    cfg = replace(cfg, history=HistorySection(enabled=False), gateway=replace(
        cfg.gateway, enabled=False))
    return with_ea(cfg, run_dir, standby=standby)


def ea_stats(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run_dir / "stats" / f"{name}.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


async def wait_ready(mesh: UpMesh, names: list[str]) -> None:
    """Until an instance holds the lease reconciled and every instance pushes ticks."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if mesh.proc is not None and mesh.proc.poll() is not None:
            raise DrillError(f"tickmesh up exited with {mesh.proc.returncode}: see "
                             f"{mesh.run_dir / 'up.log'}")
        stats = [ea_stats(mesh.run_dir, n) for n in names]
        if all(s.get("pushed", 0) > 0 for s in stats) and holder(mesh.run_dir, names):
            return
        await asyncio.sleep(0.1)
    raise DrillError(f"the EA path was not ready within {READY_TIMEOUT_S:g} s; logs in "
                     f"{mesh.run_dir / 'logs'}")


def holder(run_dir: Path, names: list[str]) -> str | None:
    """The instance whose stats say it holds the account lease, reconciled: of two that say
    so (a dead process's last stats file), the one that reconciled last."""
    holding = [(s.get("synced_at_ns", 0), name) for name in names
               if (s := ea_stats(run_dir, name)).get("holding") and s.get("synced_at_ns", 0)]
    return max(holding)[1] if holding else None


# --- the tick tap ------------------------------------------------------------------------------

class TickTap:
    """A SUB on the feed: every tick it publishes, with its arrival time."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.ticks: dict[tuple[str, int, float, float], int] = {}  # -> arrival ns
        self.arrivals: list[tuple[int, int]] = []  # (arrival ns, source ns)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            now = time.time_ns()
            msg = decode_feed(frames)
            if isinstance(msg, TickBatch):
                for bid, ask, _last, _vol, source_ns, _feed_ns in msg.rows:
                    self.ticks.setdefault((msg.stream, source_ns // 1_000_000, bid, ask), now)
                    self.arrivals.append((now, source_ns))

    def first_made_after(self, t_ns: int) -> int | None:
        """Arrival of the first published tick the terminal made at or after ``t_ns``."""
        for arrival, source in self.arrivals:
            if arrival >= t_ns and source >= t_ns - 1_000_000:  # ms resolution of MT5 times
                return arrival
        return None

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close(linger=0)
        self.ctx.term()


# --- kills -------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_dead(pid: int, timeout: float) -> int:
    """When process ``pid`` died (ns), polled every millisecond."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return time.time_ns()
        await asyncio.sleep(0.001)
    raise DrillError(f"process {pid} did not die within {timeout:g} s")


async def kill_once(mesh: UpMesh, names: list[str], n: int, faults: Path) -> dict[str, Any]:
    name = holder(mesh.run_dir, names)
    if name is None:
        raise DrillError("no EA instance holds the lease")
    pid = mesh.pids()[name]
    mode = "after_send" if n % 4 == 2 else ("reconcile" if n % 4 == 0 else "kill")
    if mode == "after_send":
        (faults / f"{name}.after_send").touch()
        killed_ns = await wait_dead(pid, 10.0)
    else:
        if mode == "reconcile":
            # Whoever reconciles next dies half way: the standby taking over, or (alone) the
            # restarted instance itself.
            others = [x for x in names if x != name]
            (faults / f"{(others or [name])[0]}.reconcile").touch()
        killed_ns = time.time_ns()
        os.kill(pid, 9)
    return {"n": n, "killed": name, "mode": mode, "killed_ns": killed_ns}


def disarm(faults: Path) -> None:
    """A fault point that did not fire by the time the mesh settled must not fire at a later
    kill (it would make that one a double fault)."""
    for marker in faults.glob("*.*"):
        marker.unlink(missing_ok=True)


async def wait_settled(mesh: UpMesh, names: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        name = holder(mesh.run_dir, names)
        if name is not None and ea_stats(mesh.run_dir, name).get("synced_at_ns", 0) > 0:
            return
        await asyncio.sleep(0.05)
    raise DrillError(f"no instance held the lease again within {timeout:g} s")


# --- the terminal's record ----------------------------------------------------------------

@contextlib.contextmanager
def attached(endpoint: str) -> Iterator[SimTerminal]:
    """A client of the terminal at ``endpoint``, attached for the ``with`` block."""
    term = SimTerminal(endpoint, timeout_s=10.0)
    term.initialize()
    try:
        yield term
    finally:
        term.shutdown()


def terminal_record(endpoint: str) -> tuple[dict[int, list[Any]], dict[int, list[Any]]]:
    """The terminal's orders and deals, by magic number."""
    orders: dict[int, list[Any]] = defaultdict(list)
    deals: dict[int, list[Any]] = defaultdict(list)
    with attached(endpoint) as term:
        for o in term.orders_get() + term.history_orders_get(0, 2**62):
            orders[o.magic].append(o)
        for d in term.history_deals_get(0, 2**62):
            deals[d.magic].append(d)
    return orders, deals


def terminal_ticks(endpoint: str, symbols: tuple[str, ...], from_ms: int, to_ms: int
                   ) -> set[tuple[str, int, float, float]]:
    out: set[tuple[str, int, float, float]] = set()
    with attached(endpoint) as term:
        for s in symbols:
            cursor = from_ms
            while True:
                got = [t for t in term.copy_ticks_from(s, cursor, 50_000) if t.time_msc <= to_ms]
                out |= {(s, t.time_msc, t.bid, t.ask) for t in got}
                if len(got) < 50_000 - 10:
                    break
                cursor = got[-1].time_msc
    return out


def cold_start_ms(runs: int = 5) -> list[float]:
    """The raw reference: a cold start of the EA's imports in a fresh interpreter."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import nodes.ea.node, uvloop"], cwd=ROOT,
                       check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


# --- a phase -----------------------------------------------------------------------------------

async def run_phase(args: argparse.Namespace, run_dir: Path, standby: bool) -> dict[str, Any]:
    cfg = phase_config(run_dir, tick_rate=args.tick_rate, standby=standby)
    names = [e.name for e in cfg.ea]
    faults = run_dir / "faults"
    faults.mkdir(parents=True, exist_ok=True)
    os.environ["TICKMESH_EA_FAULTS"] = str(faults)
    load: Load | None = None
    tap: TickTap | None = None
    with UpMesh(cfg, run_dir, gateways=0) as mesh:
        await wait_ready(mesh, names)
        tap = TickTap(cfg.feeds[0].pub)
        clients = [OrderClient(OrderClientOptions(endpoints=tuple(cfg.orders.clients)))
                   for _ in range(args.clients)]
        load = Load(clients)
        for c in clients:
            await c.start()
        run_id = f"r{os.getpid()}{'s' if standby else 'n'}"
        tasks = [asyncio.create_task(client_load(load, i, args.rate / args.clients, run_id))
                 for i in range(args.clients)]
        started_ms = time.time_ns() // 1_000_000
        kills: list[dict[str, Any]] = []
        try:
            await asyncio.sleep(args.interval)
            for n in range(1, args.kills + 1):
                kills.append(await kill_once(mesh, names, n, faults))
                await asyncio.sleep(args.interval)
                await wait_settled(mesh, names)
                disarm(faults)
            await asyncio.sleep(SETTLE_S)
        finally:
            load.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        ended_ms = time.time_ns() // 1_000_000
        await asyncio.sleep(0.5)  # the feed publishes what the EA pushed last
        redis = aioredis.from_url(cfg.redis.url)
        store = RedisOrderStore(cfg.redis.url, PREFIX)
        try:
            await wait_final(load, store, args.drain_timeout)
            counted = await count_orders(load, redis, store, drain_timeout=1.0, prefix=PREFIX)
        finally:
            await redis.aclose()
            await store.close()
        await close_load(load)
        await tap.close()
        record = await asyncio.to_thread(terminal_record, cfg.terminal.bind)
        made = await asyncio.to_thread(terminal_ticks, cfg.terminal.bind, cfg.feeds[0].symbols,
                                       started_ms + 1000, ended_ms - 1000)
        stats = {n: ea_stats(run_dir, n) for n in names}
    return summarize_phase(standby, kills, tap, load, counted, record, made, stats)


async def wait_final(load: Load, store: RedisOrderStore, timeout: float) -> None:
    """Until every acknowledged order is in a final state in the store (bounded)."""
    deadline = time.monotonic() + timeout
    waiting = {r.order_id for r in load.acked()}
    while waiting and time.monotonic() < deadline:
        ids = sorted(waiting)[:500]
        for oid, order in zip(ids, await asyncio.gather(*(store.get(o) for o in ids)),
                              strict=True):
            if order is not None and order.terminal:
                waiting.discard(oid)
        await asyncio.sleep(0.05)


def summarize_phase(standby: bool, kills: list[dict[str, Any]], tap: TickTap, load: Load,
                    counted: dict[str, Any],
                    record: tuple[dict[int, list[Any]], dict[int, list[Any]]],
                    made: set[tuple[str, int, float, float]], stats: dict[str, Any]
                    ) -> dict[str, Any]:
    orders, deals = record
    finals, logged = counted["states"], counted["logged_lots"]
    all_deal_ms = sorted(d.time_msc for ds in deals.values() for d in ds)
    for k in kills:
        t = k["killed_ns"]
        back = tap.first_made_after(t)
        k["ticks_back_ms"] = round1((back - t) / 1e6) if back else None
        kill_ms = t / 1e6
        nxt = next((ms for ms in all_deal_ms if ms >= kill_ms), None)
        k["order_back_ms"] = round1(nxt - kill_ms) if nxt is not None else None
    executed = lost = duplicated = rejected_after_ack = mismatch = 0
    lost_ids: list[str] = []
    for r in load.acked():
        magic = magic_of(r.order_id)
        taken = [o for o in orders.get(magic, []) if o.state != OrderStateMt5.REJECTED]
        volume = sum(d.volume for d in deals.get(magic, []))
        if len(taken) > 1 or volume > 1.0 + 1e-9:
            duplicated += 1
        if volume >= 1.0 - 1e-9:
            executed += 1
        elif finals.get(r.order_id) in (OrderState.REJECTED.name, OrderState.CANCELLED.name):
            rejected_after_ack += 1
        else:
            lost += 1
            lost_ids.append(r.order_id)
        if abs(logged.get(r.order_id, 0.0) - volume) > 1e-9:
            mismatch += 1
    published = set(tap.ticks)
    missing = sorted(made - published, key=lambda t: t[1])
    ticks_lost = len(missing)
    return {"standby": standby, "per_kill": kills, "kills": len(kills),
            "sent": counted["sent"], "acked": counted["acked"],
            "rejected": counted["rejected"], "timed_out": counted["timed_out"],
            "reject_reasons": counted["reject_reasons"],
            "executed": executed, "lost": lost, "duplicated": duplicated,
            "rejected_after_ack": rejected_after_ack, "log_mismatch": mismatch,
            "lost_ids": lost_ids[:20], "ticks_made": len(made), "ticks_lost": ticks_lost,
            "ticks_lost_sample": [[s, ms] for s, ms, _b, _a in missing[:20]],
            "ticks_published": len(published), "ea_stats": stats}


def pct(values: list[float | None], q: float) -> float | None:
    got = [v for v in values if v is not None]
    return round1(percentile(got, q / 100)) if got else None


def summarize(args: argparse.Namespace, phases: list[dict[str, Any]],
              cold: list[float], cfg_lease_ms: float) -> dict[str, Any]:
    plain = [p for p in phases if not p["standby"]]
    stand = [p for p in phases if p["standby"]]

    def values(ps: list[dict[str, Any]], key: str) -> list[float | None]:
        return [k[key] for p in ps for k in p["per_kill"]]

    out: dict[str, Any] = {
        "kills": sum(p["kills"] for p in phases), "kills_requested": args.kills * len(phases),
        "tick_rate": args.tick_rate, "order_rate": args.rate,
        "restart_ms_p50": pct(values(plain, "ticks_back_ms"), 50),
        "restart_ms_p99": pct(values(plain, "ticks_back_ms"), 99),
        "restart_ms_max": pct(values(plain, "ticks_back_ms"), 100),
        "restart_order_ms_p50": pct(values(plain, "order_back_ms"), 50),
        "restart_order_ms_p99": pct(values(plain, "order_back_ms"), 99),
        "restart_order_ms_max": pct(values(plain, "order_back_ms"), 100),
        "takeover_ms_p50": pct(values(stand, "order_back_ms"), 50),
        "takeover_ms_p99": pct(values(stand, "order_back_ms"), 99),
        "takeover_ms_max": pct(values(stand, "order_back_ms"), 100),
        "takeover_ticks_ms_p99": pct(values(stand, "ticks_back_ms"), 99),
        "raw_cold_start_ms_p50": pct(list(cold), 50),
        "raw_cold_start_ms_max": pct(list(cold), 100),
        "lease_floor_ms": cfg_lease_ms,
    }
    for key in ("sent", "acked", "executed", "lost", "duplicated", "rejected_after_ack",
                "log_mismatch", "timed_out", "rejected"):
        out[key] = sum(p[key] for p in phases)
    for mode in ("kill", "after_send", "reconcile"):
        out[f"takeover_ms_p99_{mode}"] = pct([k["order_back_ms"] for p in stand
                                              for k in p["per_kill"] if k["mode"] == mode], 99)
        out[f"restart_ms_p99_{mode}"] = pct([k["ticks_back_ms"] for p in plain
                                             for k in p["per_kill"] if k["mode"] == mode], 99)
    out["ticks_lost"] = sum(p["ticks_lost"] for p in phases)
    out["ticks_lost_standby"] = sum(p["ticks_lost"] for p in stand)
    out["ticks_made"] = sum(p["ticks_made"] for p in phases)
    out["phases"] = phases
    return out


def passed(s: dict[str, Any]) -> bool:
    measured = all(k.get("order_back_ms") is not None for p in s["phases"]
                   for k in p["per_kill"])
    return (s["kills"] == s["kills_requested"] and measured and s["lost"] == 0
            and s["duplicated"] == 0 and s["log_mismatch"] == 0
            and s["ticks_lost_standby"] == 0)


# --- reports -----------------------------------------------------------------------------------

def markdown(s: dict[str, Any], command: str) -> str:
    lines = [f"# drill-ea-crash, {s['date']}", "", f"`{command}`", "", f"Machine: {s['machine']}",
             "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {dash(v)} |" for k, v in s.items()
              if k not in ("phases", "machine", "date", "run_dir", "report")]
    for p in s["phases"]:
        lines += ["", f"## Phase {'with' if p['standby'] else 'without'} a standby", ""]
        lines += markdown_table(
            ["kill", "killed", "mode", "ticks back ms", "order back ms"],
            [[k["n"], k["killed"], k["mode"], dash(k["ticks_back_ms"]),
              dash(k["order_back_ms"])] for k in p["per_kill"]])
        lines += ["", f"Reject reasons: {json.dumps(p['reject_reasons'])}",
                  f"Ticks lost (first 20, symbol and ms): {json.dumps(p['ticks_lost_sample'])}",
                  f"Lost (first 20): {json.dumps(p['lost_ids'])}",
                  f"EA stats: `{json.dumps(p['ea_stats'])}`", ""]
    return "\n".join(lines)


def human(s: dict[str, Any]) -> str:
    rows = [
        ("kills", f"{s['kills']} of {s['kills_requested']}"),
        ("restart ms p50/p99/max (ticks)", f"{dash(s['restart_ms_p50'])} / "
         f"{dash(s['restart_ms_p99'])} / {dash(s['restart_ms_max'])}"),
        ("restart ms p50/p99/max (orders)", f"{dash(s['restart_order_ms_p50'])} / "
         f"{dash(s['restart_order_ms_p99'])} / {dash(s['restart_order_ms_max'])}"),
        ("takeover ms p50/p99/max", f"{dash(s['takeover_ms_p50'])} / "
         f"{dash(s['takeover_ms_p99'])} / {dash(s['takeover_ms_max'])}"),
        ("raw cold start ms p50/max", f"{dash(s['raw_cold_start_ms_p50'])} / "
         f"{dash(s['raw_cold_start_ms_max'])}"),
        ("lease floor ms", str(s["lease_floor_ms"])),
        ("ticks made / lost (standby)", f"{s['ticks_made']} / {s['ticks_lost']} "
         f"({s['ticks_lost_standby']})"),
        ("sent / acked / executed", f"{s['sent']} / {s['acked']} / {s['executed']}"),
        ("lost / duplicated", f"{s['lost']} / {s['duplicated']}"),
        ("rejected after ack / log mismatch", f"{s['rejected_after_ack']} / "
         f"{s['log_mismatch']}"),
        ("result", "PASS" if s["ok"] else "FAIL"),
    ]
    return aligned(rows)


async def run_drill(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    cold = await asyncio.to_thread(cold_start_ms)
    phases = []
    for standby in {"no": [False], "yes": [True], "both": [False, True]}[args.standby]:
        phases.append(await run_phase(args, run_dir / ("standby" if standby else "alone"),
                                      standby))
    lease = phase_config(run_dir / "x", tick_rate=1, standby=False).orders
    return summarize(args, phases, cold, lease.ea_lease_ms + lease.ea_guard_ms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs per phase (default 10)")
    p.add_argument("--standby", choices=("no", "yes", "both"), default="both",
                   help="phases: without, with a standby, or both (default)")
    p.add_argument("--rate", type=float, default=200.0, help="orders/s (default 200)")
    p.add_argument("--tick-rate", type=float, default=1000.0, help="ticks/s (default 1000)")
    p.add_argument("--clients", type=int, default=2, help="order clients (default 2)")
    p.add_argument("--interval", type=float, default=1.5, help="seconds between kills")
    p.add_argument("--drain-timeout", type=float, default=20.0,
                   help="seconds to wait for acked orders to finish at the end")
    p.add_argument("--report", type=Path, help="markdown report (default: in the run dir)")
    p.add_argument("--run-dir", type=Path, help="logs, stats, mesh files (default: temp)")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = p.parse_args(argv)
    if args.kills < 1 or args.rate <= 0 or args.clients < 1 or args.interval <= 0:
        p.error("--kills, --rate, --clients and --interval must be positive")
    return run_drill_main("drill-ea-crash", argv, args.run_dir,
                          lambda run_dir: run_drill(args, run_dir), passed, markdown, human,
                          report=args.report, as_json=args.json)

if __name__ == "__main__":
    sys.exit(main())
