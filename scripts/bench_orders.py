#!/usr/bin/env python3
"""Order benchmark: tickmesh's order round trip beside raw ZeroMQ and Redis round trips, in one run.

    ./scripts/bench-orders            # about 60-80 seconds
    ./scripts/bench-orders --quick    # about 20 seconds
    ./scripts/bench-orders --json     # the last line of stdout is one JSON object
    ./scripts/bench-orders --profile DIR   # py-spy the backend and the executor at 1,000/s

Everything runs on loopback in separate processes, on free ports, for bounded durations; every
process this script started is stopped (SIGTERM, then SIGKILL) before it exits.

References, measured in the same run:

* raw DEALER/ROUTER: a ROUTER process echoes each 64-byte message; a DEALER process (blocking
  pyzmq) sends one, waits for the echo, sleeps, and repeats (paced, one in flight);
* raw Redis: one process, redis-py asyncio + hiredis, ``SET`` paced the same way against the
  redis-server the order path uses.

tickmesh: redis-server, the backend pair (``nodes.cli backend --role primary|backup``) and the
executor (``nodes.cli executor``), with a last EURUSD tick seeded so market orders are priced;
one ``OrderClient`` in this process (uvloop) places market orders. Per order:

* **round trip** = the FILLED ``ExecutionReport`` returned by ``next_update()`` minus the time just
  before ``place()`` (client → backend → Redis (fenced writes) → executor → fill → Redis →
  backend → client);
* **ack** = ``place()`` returning (the order is ACCEPTED and stored) minus the same start time.

Orders are paced in 1 ms slices, each order its own task, so several are in flight at once. The
1,000 orders/s step gives p50/p99. A rate is *sustained* when every order placed in the window
was acknowledged (no reject, timeout or ``TooManyInFlight``) and FILLED within ``DRAIN_S`` after
the window, no request was retried (every ack came within the client's 50 ms request timeout),
the client placed >= 95 % of the nominal rate, and the round-trip p99 stayed <= ``P99_BOUND_MS``.
If 1,000/s is sustained the rate steps up to the first rate that is not; otherwise it steps down
to the first rate that is (each failure retried once without ``--quick``: the machine is noisy).
Between steps the bench waits until the backends' request counters stop moving, so retries a
backend still has queued do not spill into the next step.

docs/BENCHMARKS.md, section "Orders", describes the method and the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodes.drills.measure import CpuMeter, latency_us, peak_rss_mb
from nodes.drills.orders import seed_tick
from nodes.drills.ports import bind_loopback, tcp_endpoint, udp_address
from nodes.drills.procs import ROOT, Children
from nodes.drills.profile import Profile, folded_summary
from nodes.drills.report import drive, fmt, machine
from protocols.errors import DrillError

SYMBOL = "EURUSD"
TARGETS = {"p99_us_1k": 2000.0}
P99_BOUND_MS = 20.0  # a sustained rate keeps the round-trip p99 below this
DRAIN_S = 2.0  # after the window: how long the last orders may take to fill
PLACED_FRACTION = 0.95  # the client must place this share of the nominal rate


def _say(msg: str) -> None:
    print(f"bench-orders: {msg}", file=sys.stderr, flush=True)


# ============================================================================================
# Child roles: python bench_orders.py _ROLE [args]
# ============================================================================================


def _raw_echo(argv: list[str]) -> int:
    """A ROUTER that sends every message back to its sender until it receives b"END"; it
    binds a port of the kernel's choice and says which on its ready line."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    endpoint = bind_loopback(sock)
    print(json.dumps({"ready": True, "endpoint": endpoint}), flush=True)
    try:
        while True:
            frames = sock.recv_multipart()
            if frames[-1] == b"END":
                break
            sock.send_multipart(frames)
    finally:
        sock.close(linger=0)
        ctx.term()
    return 0


def _paced(n: int, interval_s: float, warmup: int, one: Any) -> dict[str, Any]:
    lat: list[int] = []
    pc, sleep = time.perf_counter_ns, time.sleep
    for i in range(warmup + n):
        t0 = pc()
        one()
        if i >= warmup:
            lat.append(pc() - t0)
        sleep(interval_s)
    return latency_us(lat)


def _raw_dealer(argv: list[str]) -> int:
    """Paced DEALER round trips to the echo ROUTER; prints the percentiles."""
    import zmq

    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--interval", type=float, default=0.0005)
    a = p.parse_args(argv)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(a.endpoint)
    payload = b"x" * 64
    try:
        out = _paced(a.n, a.interval, 200, lambda: (sock.send(payload), sock.recv()))
    except zmq.Again:
        out = {"error": "no echo within 5 s"}
    sock.send(b"END")
    print(json.dumps(out), flush=True)
    sock.close(linger=1000)
    ctx.term()
    return 0 if "error" not in out else 1


def _raw_redis(argv: list[str]) -> int:
    """Paced redis-py asyncio (hiredis) SET round trips; prints the percentiles."""
    import redis.asyncio as aredis

    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--interval", type=float, default=0.0005)
    a = p.parse_args(argv)

    async def main() -> dict[str, Any]:
        r = aredis.Redis.from_url(a.url)
        lat: list[int] = []
        pc = time.perf_counter_ns
        value = b"x" * 64
        try:
            for i in range(200 + a.n):
                t0 = pc()
                await r.set("bench:raw", value)
                if i >= 200:
                    lat.append(pc() - t0)
                await asyncio.sleep(a.interval)
        finally:
            await r.aclose()
        import redis.utils

        return {**latency_us(lat), "hiredis": bool(redis.utils.HIREDIS_AVAILABLE)}

    print(json.dumps(_run_loop(main())), flush=True)
    return 0


def _run_loop(coro: Any) -> Any:
    """Run on uvloop, as the tickmesh nodes do, when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


ROLES = {"_raw-echo": _raw_echo, "_raw-dealer": _raw_dealer, "_raw-redis": _raw_redis}


# ============================================================================================
# Orchestration
# ============================================================================================


@dataclass(frozen=True)
class Timing:
    window_s: float
    raw_n: int
    ramp: tuple[int, ...]  # after a sustained 1k step, upwards
    down: tuple[int, ...]  # after a 1k step that is not sustained, downwards
    retry: bool


FULL = Timing(window_s=3.0, raw_n=5000, ramp=(2000, 3000, 4000, 6000, 8000, 12000),
              down=(800, 600, 500, 400, 300, 200, 100), retry=True)
QUICK = Timing(window_s=2.0, raw_n=2000, ramp=(2000, 4000, 6000, 8000),
               down=(700, 500, 300, 100), retry=False)


def raw_refs(procs: Children, redis_url: str, n: int) -> dict[str, Any]:
    me = [sys.executable, str(Path(__file__).resolve())]
    echo = procs.start("raw-echo", [*me, "_raw-echo"], pipes=True)
    assert echo.stdout is not None
    line = echo.stdout.readline()
    if not line.startswith(b"{"):
        raise DrillError(f"raw echo did not start: {procs.log_tail('raw-echo')}")
    ep = json.loads(line)["endpoint"]
    out: dict[str, Any] = {}
    for name, args in (("zmq", ["_raw-dealer", ep]), ("redis", ["_raw-redis", redis_url])):
        _say(f"raw {'DEALER/ROUTER' if name == 'zmq' else 'Redis SET'} round trips x {n:,}")
        try:
            res = subprocess.run([*me, *args, "--n", str(n)], cwd=ROOT, capture_output=True,
                                 timeout=60, check=False)
            out[name] = json.loads(res.stdout.decode().strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, IndexError, ValueError):
            raise DrillError(f"raw {name} run failed") from None
        if "error" in out[name]:
            raise DrillError(f"raw {name} run failed: {out[name]}")
    Children.stop(echo)
    return out


class Mesh:
    """redis-server, the backend pair and the executor, started with the real CLI."""

    def __init__(self, procs: Children, workdir: Path, *, aof: bool,
                 profile: Profile | None = None) -> None:
        from bus.config import (
            FeedSection,
            MeshConfig,
            MeshSection,
            OrdersSection,
            RecoverySection,
            RedisSection,
        )
        from nodes.servers.redis_server import RedisProcess

        # The nodes bind these from the mesh file, so the ports are named before they start.
        tcp = tcp_endpoint

        self.procs, self.workdir, self.profile = procs, workdir, profile
        self.redis = RedisProcess(data_dir=workdir / "redis", appendonly=aof)
        self.cfg = MeshConfig(
            mesh=MeshSection(name="bench", key_prefix="bench"),
            redis=RedisSection(url=self.redis.url),
            feeds=(FeedSection(name="bench", symbols=(SYMBOL,), pub=tcp(),
                               udp_targets=(udp_address(),)),),
            recovery=(RecoverySection(bind=tcp()),),
            orders=OrdersSection(trader_rate=0.0, clients=(tcp(), tcp()), peers=(tcp(), tcp()),
                                 updates=(tcp(), tcp()), executor=(tcp(), tcp()),
                                 max_quantity=100.0, max_exposure=1e15),
        ).validate()
        self.cpu = CpuMeter()
        self.cpu.pids["bench"] = os.getpid()
        self.peak_rss: dict[str, float] = {}
        self.spied: dict[str, tuple[subprocess.Popen[bytes], int]] = {}

    def start(self) -> None:
        from bus.config import dump_toml, load_config

        self.redis.start()
        self.cpu.pids["redis"] = self.redis.pid or 0
        path = self.workdir / "mesh.toml"
        path.write_text(dump_toml(self.cfg))
        if load_config(path) != self.cfg:
            raise DrillError("the mesh file does not read back as written")
        _run_loop(seed_tick(self.cfg.redis.url, self.cfg.mesh.key_prefix, SYMBOL))
        for name, args in (("primary", ["backend", "--role", "primary"]),
                           ("backup", ["backend", "--role", "backup"]),
                           ("executor", ["executor"])):
            stats = self.workdir / f"{name}.json"
            cmd = [sys.executable, "-X", "faulthandler", "-m", "nodes.cli", *args, "--config",
                   str(path), "--log-level", "WARNING", "--stats", str(stats)]
            spy = self.profile is not None and name in ("primary", "executor")
            if spy:
                assert self.profile is not None
                cmd = self.profile.py_spy(name) + cmd
            proc = self.procs.start(name, cmd)
            pid = self.procs.wrapped_pid(proc) if spy else proc.pid
            if spy:
                self.spied[name] = (proc, pid)
            self.cpu.pids[name] = pid
            self.procs.wait_file(stats, proc, name)

    async def wait_idle(self, timeout: float) -> float:
        """Wait until the backends' request counters stop moving (their stats files, written
        every 0.5 s, show the same count twice); the seconds it took."""
        t0 = time.monotonic()
        last: tuple[int, ...] = ()
        while time.monotonic() - t0 < timeout:
            now: list[int] = []
            for name in ("primary", "backup"):
                with contextlib.suppress(OSError, ValueError):
                    now.append(int(json.loads(
                        (self.workdir / f"{name}.json").read_text())["requests"]))
            if tuple(now) == last:
                return round(time.monotonic() - t0, 1)
            last = tuple(now)
            await asyncio.sleep(0.55)
        return round(time.monotonic() - t0, 1)

    def backends(self) -> dict[str, dict[str, Any]]:
        """Each backend's state, epoch and counters, from its latest stats file."""
        out: dict[str, dict[str, Any]] = {}
        for name in ("primary", "backup"):
            with contextlib.suppress(OSError, ValueError):
                st = json.loads((self.workdir / f"{name}.json").read_text())
                out[name] = {k: st.get(k) for k in ("state", "epoch", "requests", "acks",
                                                     "rejects", "not_active", "duplicates",
                                                     "fenced", "reports", "redriven")}
        return out

    def note_rss(self) -> None:
        for name, pid in self.cpu.pids.items():
            self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), peak_rss_mb(pid))

    def stop_spied(self) -> None:
        """Stop the py-spy wrapped nodes first, so py-spy writes its output."""
        for proc, pid in self.spied.values():
            Children.stop_wrapped(proc, pid)
        self.spied.clear()

    def close(self) -> None:
        self.stop_spied()
        self.procs.stop_all()
        with contextlib.suppress(Exception):
            self.redis.stop()


class Load:
    """One ``OrderClient`` placing paced market orders and timing acks and fills."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.sent: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        self.filled: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.other_reports: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._n = 0
        self._prefix = f"b{time.time_ns()}"

    async def reports(self) -> None:
        from protocols.orders.lifecycle import OrderState

        pc = time.perf_counter_ns
        while True:
            report = await self.client.next_update()
            if report.state is OrderState.FILLED:
                self.filled[report.client_order_id] = pc()
            else:
                self.other_reports[report.state.name] = \
                    self.other_reports.get(report.state.name, 0) + 1

    async def _place(self, cid: str) -> None:
        from protocols.orders.messages import NewOrder, OrderType, Side

        side = Side.BUY if self._n & 1 else Side.SELL
        order = NewOrder("bench", cid, SYMBOL, side, OrderType.MARKET, 1.0, None, time.time_ns())
        self.sent[cid] = time.perf_counter_ns()
        try:
            await self.client.place(order)
            self.acked[cid] = time.perf_counter_ns()
        except Exception as exc:  # counted: any failure makes the step not sustained
            name = type(exc).__name__
            reason = getattr(exc, "reason", None)
            key = f"{name}:{reason.name}" if reason is not None else name
            self.errors[key] = self.errors.get(key, 0) + 1

    def place_one(self) -> str:
        self._n += 1
        cid = f"{self._prefix}-{self._n}"
        task = asyncio.create_task(self._place(cid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return cid

    async def paced(self, rate: float, seconds: float) -> tuple[list[str], float]:
        """Place ``rate`` orders per second for ``seconds``, in 1 ms slices."""
        loop = asyncio.get_running_loop()
        ids: list[str] = []
        t0 = loop.time()
        while (el := loop.time() - t0) < seconds:
            due = int(el * rate) + 1 - len(ids)
            for _ in range(due):
                ids.append(self.place_one())
            await asyncio.sleep(0.001)
        return ids, loop.time() - t0

    async def settle(self, ids: list[str], timeout: float) -> None:
        """Wait until every order has been answered and every acknowledged one FILLED, or
        ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._tasks and all(c in self.filled for c in ids if c in self.acked):
                return
            await asyncio.sleep(0.005)

    def result(self, ids: list[str], rate: float, seconds: float) -> dict[str, Any]:
        rtt = [self.filled[c] - self.sent[c] for c in ids if c in self.filled and c in self.sent]
        ack = [self.acked[c] - self.sent[c] for c in ids if c in self.acked and c in self.sent]
        n = len(ids)
        return {"rate": rate, "placed": n, "placed_per_s": round(n / seconds),
                "acked": len(ack), "filled": len(rtt), "errors": dict(self.errors),
                "other_reports": dict(self.other_reports),
                "rtt_us": latency_us(rtt), "ack_us": latency_us(ack)}


async def run_steps(mesh: Mesh, t: Timing, *, profile_s: float = 0.0,
                    profile_rate: int = 1000) -> list[dict[str, Any]]:
    from bus.orders.client import OrderClient, OrderClientOptions

    steps: list[dict[str, Any]] = []
    async with OrderClient(OrderClientOptions.from_config(mesh.cfg)) as client:
        load = Load(client)
        reader = asyncio.create_task(load.reports())
        try:
            # Warm-up: the pair elects its active node (cold start), the executor connects.
            deadline = time.monotonic() + 20
            while True:
                ids, _ = await load.paced(50, 0.1)
                await load.settle(ids, 2.0)
                if all(c in load.filled for c in ids):
                    break
                if time.monotonic() > deadline:
                    raise DrillError(f"no fills after 20 s: errors {load.errors}")
                load.errors.clear()
            await load.paced(500, 0.5)
            await asyncio.sleep(0.2)

            async def step(rate: int, seconds: float) -> dict[str, Any]:
                load.errors.clear()
                load.other_reports.clear()
                _say(f"tickmesh at {rate:,} orders/s for {seconds} s")
                retries0 = client.stats()["retries"]
                c0 = mesh.cpu.sample()
                ids, took = await load.paced(rate, seconds)
                c1 = mesh.cpu.sample()
                await load.settle(ids, DRAIN_S)
                mesh.note_rss()
                s = load.result(ids, rate, took)
                s["retries"] = client.stats()["retries"] - retries0
                s["cpu_pct"] = CpuMeter.percent(c0, c1)
                s["client"] = client.stats()
                s["sustained"] = (not s["errors"] and s["acked"] == s["placed"]
                                  and s["filled"] == s["placed"]
                                  and s["retries"] == 0
                                  and s["placed"] >= PLACED_FRACTION * rate * seconds
                                  and s["rtt_us"]["p99"] <= P99_BOUND_MS * 1000)
                _say(f"  placed {s['placed_per_s']:,}/s, acked {s['acked']}, filled "
                     f"{s['filled']}/{s['placed']}, rtt p50/p99 {fmt(s['rtt_us']['p50'])}/"
                     f"{fmt(s['rtt_us']['p99'])} us, errors {s['errors'] or 0}, cpu "
                     f"{s['cpu_pct']}{'' if s['sustained'] else '  NOT SUSTAINED'}")
                steps.append(s)
                # Retries the backends have queued but not read yet belong to this step.
                s["idle_after_s"] = await mesh.wait_idle(30.0)
                s["backends"] = mesh.backends()
                s["active"] = "/".join(n for n, b in s["backends"].items()
                                       if b["state"] == "active") or "none"
                if s["active"] != steps[0]["active"]:
                    _say(f"  the active backend is now {s['active']} (epoch "
                         f"{[b['epoch'] for b in s['backends'].values()]})")
                return s

            if profile_s:
                await step(profile_rate, profile_s)
                return steps
            s = await step(1000, t.window_s)
            if s["sustained"]:
                for rate in t.ramp:  # up to the first rate that is not sustained
                    s = await step(rate, t.window_s)
                    if not s["sustained"] and t.retry:
                        s = await step(rate, t.window_s)
                    if not s["sustained"]:
                        break
            else:
                for rate in t.down:  # down to the first rate that is sustained
                    s = await step(rate, t.window_s)
                    if not s["sustained"] and t.retry:
                        s = await step(rate, t.window_s)
                    if s["sustained"]:
                        break
        finally:
            reader.cancel()
            await asyncio.gather(reader, *load._tasks, return_exceptions=True)
    return steps


def summarize(raw: dict[str, Any], steps: list[dict[str, Any]],
              peak_rss: dict[str, float]) -> dict[str, Any]:
    s1k = next((s for s in steps if s["rate"] == 1000), None)
    ok = [s for s in steps if s["sustained"]]
    best = max(ok, key=lambda s: s["rate"]) if ok else None
    nan = math.nan
    out = {
        "p50_us_1k": s1k["rtt_us"]["p50"] if s1k else nan,
        "p99_us_1k": s1k["rtt_us"]["p99"] if s1k else nan,
        "ack_p50_us_1k": s1k["ack_us"]["p50"] if s1k else nan,
        "ack_p99_us_1k": s1k["ack_us"]["p99"] if s1k else nan,
        "sustained_1k": bool(s1k and s1k["sustained"]),
        "max_orders_per_s": best["placed_per_s"] if best else 0,
        "max_rate_step": best["rate"] if best else 0,
        "p99_us_max": best["rtt_us"]["p99"] if best else nan,
        "raw_zmq_rtt_p50_us": raw["zmq"]["p50"], "raw_zmq_rtt_p99_us": raw["zmq"]["p99"],
        "raw_redis_p50_us": raw["redis"]["p50"], "raw_redis_p99_us": raw["redis"]["p99"],
        "cpu_pct_1k": s1k["cpu_pct"] if s1k else {},
        "cpu_pct_max": best["cpu_pct"] if best else {},
        "peak_rss_mb": {k: round(v, 1) for k, v in peak_rss.items()},
        "criterion": f"every order acked and FILLED within {DRAIN_S} s of the window, no "
                     f"errors, no client retry (each ack within the client's 50 ms request "
                     f"timeout), placed >= {PLACED_FRACTION:.0%} of nominal, rtt p99 <= "
                     f"{P99_BOUND_MS} ms",
    }
    out["active_by_step"] = [s.get("active", "") for s in steps]
    out["failovers"] = sum(1 for x, y in itertools.pairwise(steps)
                           if x.get("active") != y.get("active"))
    out["ratio_p50_rtt_vs_raw_zmq"] = out["p50_us_1k"] / out["raw_zmq_rtt_p50_us"]
    out["pass_p99_1k"] = out["p99_us_1k"] <= TARGETS["p99_us_1k"]
    return out


def render(result: dict[str, Any]) -> str:
    m, raw, sm = result["machine"], result["raw"], result["summary"]
    lines = [f"tickmesh order benchmark, {m['date']}: {m['nproc']} cores {m['cpu']}, "
             f"Python {m['python']}, pyzmq {m['pyzmq']}, redis {m['redis']}", "",
             "reference round trips (same run)          p50 us   p99 us   max us",
             f"  raw DEALER/ROUTER echo, 64 B       {fmt(raw['zmq']['p50']):>10} "
             f"{fmt(raw['zmq']['p99']):>8} {fmt(raw['zmq']['max']):>8}",
             f"  raw Redis SET (asyncio + hiredis)  {fmt(raw['redis']['p50']):>10} "
             f"{fmt(raw['redis']['p99']):>8} {fmt(raw['redis']['max']):>8}", "",
             "  rate  placed/s  filled   rtt p50  rtt p99  ack p50  ack p99  retries  active   "
             "sustained  "
             "cpu % bench/primary/backup/executor/redis"]
    for s in result["steps"]:
        c = s["cpu_pct"]
        cpu = "/".join(fmt(c.get(k, math.nan)) for k in
                       ("bench", "primary", "backup", "executor", "redis"))
        lines.append(f"{s['rate']:>6} {s['placed_per_s']:>9,} {s['filled']:>7,} "
                     f"{fmt(s['rtt_us']['p50']):>9} {fmt(s['rtt_us']['p99']):>8} "
                     f"{fmt(s['ack_us']['p50']):>8} {fmt(s['ack_us']['p99']):>8} "
                     f"{s['retries']:>8,} {s['active']:>7} "
                     f"{'yes' if s['sustained'] else 'NO':>10}  {cpu}"
                     + (f"  errors {s['errors']}" if s["errors"] else ""))
    lines += ["", f"order round trip at 1,000/s: p50 {fmt(sm['p50_us_1k'])} us, p99 "
              f"{fmt(sm['p99_us_1k'])} us (target <= {TARGETS['p99_us_1k']:,.0f}: "
              f"{'PASS' if sm['pass_p99_1k'] else 'FAIL'}); ack p50 {fmt(sm['ack_p50_us_1k'])}"
              f" us, p99 {fmt(sm['ack_p99_us_1k'])} us",
              f"max sustained: {sm['max_orders_per_s']:,} orders/s (step {sm['max_rate_step']:,}"
              f"); sustained = {sm['criterion']}",
              f"peak RSS MiB: {sm['peak_rss_mb']}"]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace, procs: Children, workdir: Path) -> dict[str, Any]:
    t = QUICK if args.quick else FULL
    if args.rates:
        t = replace(t, ramp=tuple(int(r) for r in args.rates.split(",")))
    mesh = Mesh(procs, workdir, aof=args.aof)
    try:
        mesh.start()
        raw = raw_refs(procs, mesh.redis.url, t.raw_n)
        steps = _run_loop(run_steps(mesh, t))
        mesh.note_rss()
    finally:
        mesh.close()
    return {"machine": machine(), "raw": raw, "steps": steps,
            "summary": summarize(raw, steps, mesh.peak_rss)}


def run_profile(args: argparse.Namespace, procs: Children, workdir: Path) -> None:
    prof = Profile(Path(args.profile).resolve(), "py-spy")
    prof.dir.mkdir(parents=True, exist_ok=True)
    mesh = Mesh(procs, workdir, aof=args.aof, profile=prof)
    try:
        mesh.start()
        steps = _run_loop(run_steps(mesh, QUICK, profile_s=args.profile_seconds,
                                    profile_rate=args.profile_rate))
        mesh.stop_spied()
    finally:
        mesh.close()
    s = steps[-1]
    print(f"profiled (py-spy) at {args.profile_rate:,} orders/s: placed "
          f"{s['placed_per_s']:,}/s, filled "
          f"{s['filled']}/{s['placed']}, rtt p50/p99 {fmt(s['rtt_us']['p50'])}/"
          f"{fmt(s['rtt_us']['p99'])} us, cpu % {s['cpu_pct']}")
    for name in ("primary", "executor"):
        path = prof.dir / f"{name}.folded"
        print(f"\n=== {name}: {path} ===")
        print(folded_summary(path) if path.exists() else "(no samples written)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        return ROLES[argv[0]](argv[1:])
    p = argparse.ArgumentParser(prog="bench-orders", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter windows and ramp (~20 s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON, last line")
    p.add_argument("--rates", help="comma-separated ramp of orders/s (after the 1k step)")
    p.add_argument("--aof", action="store_true",
                   help="run redis with appendonly yes / everysec (default: no persistence)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, stats)")
    p.add_argument("--profile", metavar="DIR",
                   help="instead of the benchmark: py-spy the primary and the executor")
    p.add_argument("--profile-seconds", type=float, default=5.0)
    p.add_argument("--profile-rate", type=int, default=1000)
    args = p.parse_args(argv)

    return drive(args, "tickmesh-bench-orders-", run_profile, run_bench, render, _say)


if __name__ == "__main__":
    sys.exit(main())
