#!/usr/bin/env python3
"""Gateway benchmark: N WebSocket chart clients on the gateway beside a raw broadcast, in one run.

    ./scripts/bench-gateway                       # steps 100, 250, 500, 1,000: ~3-4 min
    ./scripts/bench-gateway --steps 50,100 --json
    ./scripts/bench-gateway --servers raw         # the raw reference alone

Everything runs on loopback: redis-server on a free port, the mesh's own recovery, feed and
historian nodes for the whole run (``tickmesh feed`` with ``[[feeds]] rate = 10000``: EURUSD,
GBPUSD, USDJPY, XAUUSD; the historian, whose query service a gateway reads bars from, when
the gateway is one of ``--servers``), and
per step, one at a time and in this order:

1. **raw**: ``nodes/drills/rawcast.py``, a minimal broadcast server on the gateway's library
   (aiohttp) that subscribes to the same feed with the subscriber library and every
   ``flush_ms`` (the mesh's ``[gateway] flush_ms``, 20) sends each client the batch the gateway
   would send (the gateway's own encoder): the latest ``tick`` item per subscribed symbol,
   one batch text per subscription set, no sessions, no resume, no per-client conflation;
2. **gateway**: ``tickmesh gateway --config F --listen HOST:PORT`` on the same mesh, counted
   started once ``/healthz`` answers and its stats say every symbol is ready.

Each server is started for its step and stopped after it. N clients
(``nodes.drills.wsclients``: ``--procs`` processes, each an asyncio loop with its share of
``aiohttp`` ``ws_connect`` clients) log in (the gateway: ``POST /api/login`` with the bench
user's API key, once per process: the gateway takes 5 logins a second per address), send
``hello`` and subscribe to ``ticks:{SYM}`` of the 4 symbols. After ``--warmup`` seconds a
window of ``--window`` seconds measures, per client and ``tick`` item received, the
**staleness** of that price (receive time minus the item's ``ft``, the feed time:
docs/GATEWAY.md section 4), p50/p99 over all clients and samples (nearest rank,
``protocols.stats``); frames/s and bytes/s per client (and the slowest client's frames/s);
the server's CPU (psutil user + system, 100 = one core) and RSS (now and peak); the other
processes' CPU (``cpu_pct_all``: the feed, the historian, each client process, and "other",
the rest of the machine); connect failures. The clients run on the same two cores: past a
few hundred they take a core between them, for the raw server and the gateway alike.

**Resume** (``--resume-clients`` K, 0 skips it; ``--resume-kills`` SIGKILLs each): K clients
that reconnect on their own (``hello`` with their token and the ``(epoch, seq)`` they hold per
stream), on the server they are connected to, which is SIGKILLed and started again. Per client
and kill, the time from the moment its socket closed to the first ``batch`` after its new
``welcome`` and every ``subscribed`` (the chart is live again), p50/p99 over all; and across
the gaps, per kind of stream, the duplicated items (a ``seq`` at or below the one the client
held, same epoch), missing bars (consecutive bar times more than a bucket apart: the feed
ticks every bucket), resets and snapshots. Three runs:

* ``restart``: one gateway, the clients on ``bars:{SYM}:1`` of the 4 symbols and ``orders``;
  they come back to it once it answers again (``resume_ms_p99``);
* ``failover``: both gateways of the mesh (``[gateway] listen``), the clients on the one
  killed; they move to the other while it restarts (``failover_resume_ms_p99``);
* ``raw``: rawcast on the tick streams, the reference: a process restart and a reconnect,
  with nothing resumed (``raw_resume_ms_p99``).

Headline keys of ``--json`` (issue 12 item 7): ``clients_max_p99_50ms`` (the largest step
whose gateway staleness p99 <= 50 ms), ``p99_ms_500``, ``raw_p99_ms_500``, ``ratio_p99_500``,
``resume_ms_p99`` (and ``failover_resume_ms_p99``, ``raw_resume_ms_p99``); ``steps`` holds
every figure per step and per server, ``resumes`` every resume run. Every process this
script started is stopped before it exits. docs/BENCHMARKS.md gives the method and results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nodes.drills.measure import CpuMeter, latency_ms, peak_rss_mb
from nodes.drills.ports import free_port
from nodes.drills.procs import ROOT, Children, LineChild, Node, stop_process
from nodes.drills.report import drive, fmt, machine, markdown_table
from nodes.drills.wsclients import ClientFleet, FleetSpec
from protocols.errors import DrillError

RATE = 10_000.0
SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
TICK_STREAMS = tuple(f"ticks:{s}" for s in SYMBOLS)
RESUME_STREAMS = (*(f"bars:{s}:1" for s in SYMBOLS), "orders")
HOST = "127.0.0.1"
BENCH_USER = "bench"
BENCH_ACCOUNT = "sim"  # the trader node's account
TARGETS = {"p99_ms": 50.0, "ratio": 1.5, "resume_p99_ms": 1000.0}
AT_CLIENTS = 500  # the step the targets are set at
SERVERS = ("raw", "gateway")


def _say(msg: str) -> None:
    print(f"bench-gateway: {msg}", file=sys.stderr, flush=True)


# ============================================================================================
# The mesh: Redis, recovery, the feed at 10,000 ticks/s, a users file
# ============================================================================================


def write_users(path: Path) -> str:
    """The users file: the bench user, with no password and one API key (a key login costs
    the gateway one SHA-256, a password one scrypt run: a thousand clients log in with the
    key), and the demo users. Returns the key."""
    from bus.gateway.sessions import append_users, write_demo_users
    from protocols.gateway.auth import User, hash_api_key, new_api_key

    key = new_api_key()
    write_demo_users(path)
    append_users(path, [User(BENCH_USER, (BENCH_ACCOUNT,), None, (hash_api_key(key),))])
    return key


class Mesh:
    """redis-server, the recovery node, the feed and the historian for the whole run; the
    order path (the backend pair, the executor, the trader) for the gateway's resume runs;
    the mesh file (``nodes.drills.mesh.free_mesh_config``) every server reads.

    The bench user owns the trader's account (``sim``), the only one that trades here: its
    ``orders`` stream carries every history position, so a client can tell a missing one."""

    def __init__(self, procs: Children, workdir: Path, max_clients: int,
                 order_rate: float) -> None:
        from bus.config import RedisSection
        from nodes.drills.mesh import free_mesh_config
        from nodes.servers.redis_server import RedisProcess

        self.procs, self.workdir = procs, workdir
        self.redis = RedisProcess(data_dir=workdir / "redis", appendonly=False)
        cfg = free_mesh_config(workdir, rate=RATE, trader_rate=order_rate, gateways=2,
                               symbols=SYMBOLS, prefix="bg",
                               connections_per_user=max_clients + 16)
        self.cfg = replace(cfg, redis=RedisSection(url=self.redis.url)).validate()
        self.users = Path(self.cfg.gateway.users_file)
        self.api_key = write_users(self.users)
        self.path = workdir / "mesh.toml"
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}

    def write(self) -> None:
        from bus.config import dump_toml, load_config

        self.path.write_text(dump_toml(self.cfg))
        load_config(self.path)  # the file says what we meant, or this raises

    def start_nodes(self, *nodes: tuple[str, ...]) -> None:
        """Each ``(NAME, ARGS...)`` as ``tickmesh ARGS --config F --stats NAME.json``, all
        started at once; up once each has written its first stats."""
        for name, *args in nodes:
            stats = self.workdir / f"{name}.json"
            self.nodes[name] = self.procs.start(name, [
                sys.executable, "-m", "nodes.cli", *args, "--config", str(self.path),
                "--log-level", "WARNING", "--stats", str(stats)])
        for name, *_ in nodes:
            self.procs.wait_file(self.workdir / f"{name}.json", self.nodes[name], name,
                                 timeout=60)

    def start(self, historian: bool) -> None:
        """Redis, recovery, the feed and (for a run with the gateway, whose bars come from
        its query service) the historian: each server of each step finds them running."""
        self.redis.start()
        self.write()
        self.start_nodes(*((name, name) for name in
                           ("recovery", "feed", "historian")[:3 if historian else 2]))

    def start_orders(self) -> None:
        """The backend pair, the executor and the trader (``[orders] trader_rate``)."""
        self.start_nodes(("primary", "backend", "--role", "primary"),
                         ("backup", "backend", "--role", "backup"), ("executor", "executor"))
        self.start_nodes(("trader", "trader"))  # its first orders find the pair up

    def pid(self, name: str) -> int:
        proc = self.nodes.get(name)
        return proc.pid if proc is not None else 0

    def feed_stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.workdir / "feed.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def check_alive(self) -> None:
        for name, proc in self.nodes.items():
            if proc.poll() is not None:
                raise DrillError(f"{name} exited with code {proc.returncode}:\n"
                                 f"{self.procs.log_tail(name)}")

    def close(self) -> None:
        self.redis.stop()


# ============================================================================================
# The two servers
# ============================================================================================


class RawServer:
    """``nodes.drills.rawcast`` as a child, on one port for the whole run (a restarted one
    is found where its clients left it)."""

    name = "raw"

    def __init__(self, procs: Children, mesh: Mesh) -> None:
        self.procs, self.mesh = procs, mesh
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.listen = f"{HOST}:{free_port()}"
        self.urls: tuple[str, ...] = (f"http://{self.listen}",)
        self.runs = 0

    def start(self, timeout: float = 30.0) -> float:
        """Start it and wait for its ready line (it is listening); the seconds that took."""
        t0 = time.monotonic()
        self.runs += 1
        name = f"rawcast-{self.runs}"
        self.proc = self.procs.start(name, [sys.executable, "-m", "nodes.drills.rawcast",
                                            str(self.mesh.path), "--listen", self.listen],
                                     pipes=True)
        try:
            self.pid = int(LineChild(self.proc, name).read(timeout)["pid"])
        except DrillError as exc:
            raise DrillError(f"{exc}:\n{self.procs.log_tail(name)}") from None
        return time.monotonic() - t0

    def login(self) -> dict[str, str] | None:
        return None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class GatewayServer:
    """``tickmesh gateway --config F --listen HOST:PORT`` (the lead's node) as a
    :class:`~nodes.drills.procs.Node` a resume step SIGKILLs and restarts."""

    name = "gateway"

    def __init__(self, procs: Children, mesh: Mesh, workdir: Path, index: int = 0) -> None:
        self.procs, self.mesh = procs, mesh
        listen = mesh.cfg.gateway.listen[index]
        self.urls = (f"http://{listen}",)
        name = f"gateway-{index}"
        stats = workdir / f"{name}.json"
        self.node = Node(name, [sys.executable, "-m", "nodes.cli", "gateway", "--config",
                                str(mesh.path), "--listen", listen, "--log-level", "WARNING",
                                "--stats", str(stats)], stats, workdir / f"{name}.log")
        self.pid = 0
        self.ready_s = 0.0

    @staticmethod
    def available() -> bool:
        """Whether this tree has the gateway node (``tickmesh gateway``)."""
        out = subprocess.run([sys.executable, "-m", "nodes.cli", "gateway", "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        return out.returncode == 0

    def start(self, timeout: float = 60.0) -> float:
        """Start it and wait until ``/healthz`` answers (the seconds that took, returned) and
        then until its market data is ready for every symbol (its stats say so:
        ``ready_s``)."""
        t0 = time.monotonic()
        self.node.start()
        self.pid = self.node.pid
        self._wait(lambda: _healthy(self.urls[0]), t0 + timeout, "answer /healthz")
        up = time.monotonic() - t0
        self._wait(self._ready, t0 + timeout, "be ready for every symbol")
        self.ready_s = time.monotonic() - t0
        return up

    def _ready(self) -> bool:
        stats = self.node.stats() or {}
        return int(stats.get("market", {}).get("ready", 0)) >= len(SYMBOLS)

    def _wait(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        while not check():
            if not self.node.alive():
                code = self.node.proc.returncode if self.node.proc else None
                raise DrillError(f"the gateway exited (code {code}):\n"
                                 f"{_tail(self.node.log_path)}")
            if time.monotonic() > deadline:
                raise DrillError(f"the gateway did not {what} in time:\n"
                                 f"{_tail(self.node.log_path)}")
            time.sleep(0.02)

    def login(self) -> dict[str, str] | None:
        return {"api_key": self.mesh.api_key}

    def kill(self) -> None:
        self.node.kill()

    def stop(self) -> None:
        self.node.stop()


Server = RawServer | GatewayServer


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ============================================================================================
# Steps
# ============================================================================================


def run_step(server: RawServer | GatewayServer, fleet: ClientFleet, mesh: Mesh, n: int,
             args: argparse.Namespace) -> dict[str, Any]:
    """One server, ``n`` clients on the tick streams: the window's figures."""
    cpu = CpuMeter()
    t0 = time.monotonic()
    start_s = server.start()
    ready_s = getattr(server, "ready_s", start_s)
    try:
        cpu.pids.update({"server": server.pid, "feed": mesh.pid("feed"),
                         "historian": mesh.pid("historian")})
        cpu.pids.update({f"clients-{i}": pid for i, pid in enumerate(fleet.pids)})
        spec = FleetSpec(urls=server.urls, streams=TICK_STREAMS, login=server.login(),
                         connect_timeout_s=args.connect_timeout)
        conn = fleet.connect(spec, n)
        time.sleep(args.warmup)
        mesh.check_alive()
        a = cpu.sample()
        w = fleet.window(args.window)
        b = cpu.sample()
        rss = cpu.rss_mb()
        peak = peak_rss_mb(server.pid)
        fleet.close()
        t_stop = time.monotonic()
    finally:
        server.stop()
    stop_s = time.monotonic() - t_stop
    pct = CpuMeter.percent(a, b)
    return {"clients": n, "live": w.live, "connect_failures": conn["failed"],
            "connect_errors": conn["errors"], "connect_first_errors": conn["first_errors"],
            "connect_s": conn["connect_s"], "start_s": round(start_s, 3),
            "ready_s": round(ready_s, 3), "stop_s": round(stop_s, 3),
            "step_s": round(time.monotonic() - t0, 3), "window_s": w.seconds,
            "staleness_ms": w.staleness_ms, "samples": w.samples,
            "p50_ms": w.staleness_ms["p50"], "p99_ms": w.staleness_ms["p99"],
            "frames_per_s": w.frames_per_s, "bytes_per_s": w.bytes_per_s,
            "frames_per_s_min": w.frames_per_s_min, "cpu_pct": pct.get("server"),
            "rss_mb": rss.get("server"), "peak_rss_mb": round(peak, 1),
            "cpu_pct_all": pct, "client_cpu_pct": w.client_cpu_pct, "errors": w.errors}


def run_resume(servers: list[Server], streams: tuple[str, ...], fleet: ClientFleet,
               args: argparse.Namespace) -> dict[str, Any]:
    """K reconnecting clients on ``streams``; the server they are on SIGKILLed and started
    again, ``--resume-kills`` times. With one server they come back to it; with two (both
    gateways of the mesh) they fail over to the other while the killed one restarts."""
    restart_s: list[float] = []
    ready_s: list[float] = []
    kills: list[dict[str, Any]] = []
    for server in servers:
        server.start()
    try:
        urls = tuple(u for server in servers for u in server.urls)
        spec = FleetSpec(urls=urls, streams=streams, login=servers[0].login(), reconnect=True,
                         check=True, consecutive=tuple(s for s in streams if s == "orders"),
                         connect_timeout_s=args.connect_timeout)
        conn = fleet.connect(spec, args.resume_clients)
        if conn["live"] == 0:
            raise DrillError(f"no resume client connected: {conn['errors']}")
        for i in range(args.resume_kills):
            time.sleep(args.warmup)
            live = fleet.resume_arm()
            victim = servers[i % len(servers)]  # every client is on it: they move together
            victim.kill()
            restart_s.append(round(victim.start(), 3))
            ready_s.append(round(getattr(victim, "ready_s", restart_s[-1]), 3))
            kills.append({"live_before": live, **fleet.resume_wait(args.resume_timeout)})
        fleet.close()
    finally:
        for server in servers:
            server.stop()
    every = latency_ms([v for k in kills for v in k.pop("resume_ns")])
    totals: dict[str, dict[str, int]] = {}
    for k in kills:
        for kind, counts in k["streams"].items():
            agg = totals.setdefault(kind, {})
            for key, v in counts.items():
                agg[key] = agg.get(key, 0) + v
    return {"server": servers[0].name, "servers": len(servers), "streams": list(streams),
            "clients": args.resume_clients, "connect_failures": conn["failed"],
            "kills": kills, "restart_s": restart_s, "ready_s": ready_s, "resume_ms": every,
            "resume_ms_p50": every["p50"], "resume_ms_p99": every["p99"],
            "not_resumed": sum(k["not_resumed"] for k in kills), "checks": totals}


# ============================================================================================
# Summary, table, report
# ============================================================================================


def _at(steps: list[dict[str, Any]], n: int, server: str, key: str) -> Any:
    for s in steps:
        if s["clients"] == n and s.get(server):
            return s[server].get(key)
    return None


RESUMES = {"restart": "resume", "failover": "failover_resume", "raw": "raw_resume"}


def _resume_figures(prefix: str, r: dict[str, Any] | None) -> dict[str, Any]:
    def total(key: str) -> int | None:
        return None if r is None else sum(v.get(key, 0) for v in r["checks"].values())

    return {f"{prefix}_ms_p50": r["resume_ms_p50"] if r else None,
            f"{prefix}_ms_p99": r["resume_ms_p99"] if r else None,
            f"{prefix}_not_resumed": r["not_resumed"] if r else None,
            f"{prefix}_duplicates": total("duplicates"),
            f"{prefix}_missing": total("missing"), f"{prefix}_resets": total("resets")}


def summarize(steps: list[dict[str, Any]], resumes: dict[str, dict[str, Any]]
              ) -> dict[str, Any]:
    """The headline figures (issue 12's JSON keys) and the targets."""
    at = AT_CLIENTS
    ok_steps = [s["clients"] for s in steps if s.get("gateway")
                and s["gateway"]["p99_ms"] is not None and s["gateway"]["connect_failures"] == 0
                and s["gateway"]["p99_ms"] <= TARGETS["p99_ms"]]
    p99, raw = _at(steps, at, "gateway", "p99_ms"), _at(steps, at, "raw", "p99_ms")
    ratio = round(p99 / raw, 2) if p99 is not None and raw else None
    out: dict[str, Any] = {
        "clients_max_p99_50ms": max(ok_steps, default=None),
        "p99_ms_500": p99, "raw_p99_ms_500": raw, "ratio_p99_500": ratio,
        "p50_ms_500": _at(steps, at, "gateway", "p50_ms"),
        "raw_p50_ms_500": _at(steps, at, "raw", "p50_ms"),
        "cpu_pct_500": _at(steps, at, "gateway", "cpu_pct"),
        "raw_cpu_pct_500": _at(steps, at, "raw", "cpu_pct"),
    }
    for mode, prefix in RESUMES.items():
        out.update(_resume_figures(prefix, resumes.get(mode)))

    def at_most(v: float | None, bound: float) -> bool | None:
        return None if v is None else v <= bound

    out["targets"] = {
        "p99_500": at_most(p99, TARGETS["p99_ms"]),
        "ratio_500": at_most(ratio, TARGETS["ratio"]),
    }
    for mode in ("restart", "failover"):
        prefix = RESUMES[mode]
        out["targets"][f"{prefix}_p99"] = at_most(out[f"{prefix}_ms_p99"],
                                                  TARGETS["resume_p99_ms"])
        out["targets"][f"{prefix}_nothing_missing_or_doubled"] = (
            None if mode not in resumes else out[f"{prefix}_duplicates"] == 0
            and out[f"{prefix}_missing"] == 0 and out[f"{prefix}_not_resumed"] == 0)
    return out


def run_bench(args: argparse.Namespace, procs: Children, workdir: Path) -> dict[str, Any]:
    servers = list(args.servers)
    have_gateway = "gateway" in servers and GatewayServer.available()
    if "gateway" in servers and not have_gateway:
        _say("this tree has no `tickmesh gateway`: the gateway steps and resume are skipped")
        servers.remove("gateway")
    mesh = Mesh(procs, workdir, max([*args.steps, args.resume_clients]), args.order_rate)
    fleet = ClientFleet(procs, workdir, args.procs)
    steps: list[dict[str, Any]] = []
    resumes: dict[str, dict[str, Any]] = {}
    try:
        mesh.start(historian=have_gateway)
        fleet.start()
        raw = RawServer(procs, mesh)
        gateways = [GatewayServer(procs, mesh, workdir, i) for i in range(2)]
        by_name: dict[str, Server] = {"raw": raw, "gateway": gateways[0]}
        _say(f"feed at {RATE:,.0f} ticks/s ({', '.join(SYMBOLS)}); {args.procs} client "
             f"processes; servers {', '.join(servers)}; steps {args.steps}")
        for n in args.steps:
            step: dict[str, Any] = {"clients": n}
            for name in servers:
                _say(f"{n:,} clients on {name}")
                step[name] = run_step(by_name[name], fleet, mesh, n, args)
                r = step[name]
                _say(f"  staleness p50 {fmt(r['p50_ms'], 2)} / p99 {fmt(r['p99_ms'], 2)} ms, "
                     f"{fmt(r['frames_per_s'], 1)} frames/s per client, CPU "
                     f"{fmt(r['cpu_pct'], 0)} %, {r['connect_failures']} failed to connect; "
                     f"started in {r['start_s']:.1f} s (ready {r['ready_s']:.1f}), connected "
                     f"in {r['connect_s']:.1f}, stopped in {r['stop_s']:.1f}")
            steps.append(step)
        if args.resume_clients > 0 and args.resume_kills > 0:
            runs: list[tuple[str, list[Server], tuple[str, ...]]] = []
            if "raw" in servers:
                runs.append(("raw", [raw], TICK_STREAMS))
            if have_gateway:
                runs += [("restart", [gateways[0]], RESUME_STREAMS),
                         ("failover", list(gateways), RESUME_STREAMS)]
            for mode, group, streams in [r for r in runs if r[0] in args.resume_modes]:
                if group[0].name == "gateway" and "trader" not in mesh.nodes:
                    _say(f"the order path, the trader at {args.order_rate:g} orders/s")
                    mesh.start_orders()
                _say(f"resume ({mode}): {args.resume_clients} clients on {len(group)} "
                     f"{group[0].name} server(s), {args.resume_kills} SIGKILLs")
                resumes[mode] = r = run_resume(group, streams, fleet, args)
                _say(f"  resume p50 / p99 {fmt(r['resume_ms_p50'], 1)} / "
                     f"{fmt(r['resume_ms_p99'], 1)} ms, restarts {r['restart_s']} s, not "
                     f"resumed {r['not_resumed']}, checks {r['checks']}")
        feed = mesh.feed_stats()
    finally:
        fleet.stop()
        mesh.close()
    summary = {**summarize(steps, resumes), "resumes": resumes}  # drive() prints the summary
    result = {"machine": {**machine(), "aiohttp": _aiohttp_version()}, "summary": summary,
              "steps": steps, "resumes": resumes,
              "raw": {"server": "nodes/drills/rawcast.py", "flush_ms": mesh.cfg.gateway.flush_ms,
                      "p99_ms": {s["clients"]: s["raw"]["p99_ms"] for s in steps if "raw" in s},
                      "resume": resumes.get("raw")},
              "feed": {"rate": RATE, "publisher": feed.get("publisher")},
              "args": {k: v for k, v in vars(args).items() if k != "report"}}
    if args.report:
        Path(args.report).write_text(markdown(result))
        _say(f"report: {args.report}")
    return result


def _aiohttp_version() -> str:
    import aiohttp

    return aiohttp.__version__


def _verdict(v: bool | None) -> str:
    return "-" if v is None else "PASS" if v else "FAIL"


HEADER = ["clients", "server", "p50 ms", "p99 ms", "max ms", "frames/s", "bytes/s",
          "slowest frames/s", "CPU %", "RSS MiB", "failed", "clients' CPU %", "rest %"]


def step_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for s in result["steps"]:
        for name in SERVERS:
            r = s.get(name)
            if not r:
                continue
            rows.append([f"{s['clients']:,}", name, fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
                         fmt(r["staleness_ms"]["max"], 1), fmt(r["frames_per_s"], 1),
                         fmt(r["bytes_per_s"]), fmt(r["frames_per_s_min"], 1),
                         fmt(r["cpu_pct"], 0), fmt(r["rss_mb"], 0), str(r["connect_failures"]),
                         fmt(sum(r["client_cpu_pct"]), 0), fmt(r["cpu_pct_all"].get("other"), 0)])
    return rows


def headline(result: dict[str, Any]) -> list[str]:
    s, t = result["summary"], result["summary"]["targets"]
    out = [
        f"largest step with gateway p99 <= 50 ms: {s['clients_max_p99_50ms'] or '-'} clients",
        f"{AT_CLIENTS} clients: gateway p99 {fmt(s['p99_ms_500'], 2)} ms "
        f"({_verdict(t['p99_500'])}), raw p99 {fmt(s['raw_p99_ms_500'], 2)} ms, ratio "
        f"{fmt(s['ratio_p99_500'], 2)} (<= 1.5 {_verdict(t['ratio_500'])})"]
    for mode, prefix in RESUMES.items():
        r = result["resumes"].get(mode)
        if r is None:
            continue
        verdict = ("" if mode == "raw" else f" (<= 1,000 {_verdict(t[f'{prefix}_p99'])}; "
                   f"{_verdict(t[f'{prefix}_nothing_missing_or_doubled'])})")
        out.append(f"resume, {mode} ({', '.join(r['streams'])}): p50 / p99 "
                   f"{fmt(s[f'{prefix}_ms_p50'], 1)} / {fmt(s[f'{prefix}_ms_p99'], 1)} ms"
                   f"{verdict}; duplicates {s[f'{prefix}_duplicates']}, missing bars "
                   f"{s[f'{prefix}_missing']}, resets {s[f'{prefix}_resets']}, not resumed "
                   f"{s[f'{prefix}_not_resumed']}; restarted in {r['restart_s']} s (ready "
                   f"{r['ready_s']} s)")
    return out


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"tickmesh gateway benchmark, {m['date']}: {m['nproc']} cores {m['cpu']}, load "
             f"{m['loadavg_1m']:.2f}, Python {m['python']}, aiohttp {m['aiohttp']}",
             f"feed {RATE:,.0f} ticks/s over {len(SYMBOLS)} symbols; staleness = receive "
             "time - ft, per tick item; CPU % of one core; rest: the machine's CPU outside "
             "this run's processes (another load skews a step)", ""]
    rows = step_rows(result)
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for r in [HEADER, *rows]:
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join([*lines, "", *headline(result)])


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    return "\n".join([
        "# bench-gateway", "",
        f"{m['date']}; {m['nproc']} cores {m['cpu']}, load average {m['loadavg_1m']:.2f} at the "
        f"end; aiohttp {m['aiohttp']}; feed {RATE:,.0f} ticks/s.", "",
        *markdown_table(HEADER, step_rows(result)), "", *(f"- {h}" for h in headline(result)),
        "", "```json", json.dumps({k: v for k, v in result["summary"].items() if k != "resumes"},
                                  indent=1, default=str), "```", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="100,250,500,1000",
                   help="client counts, comma-separated (default 100,250,500,1000)")
    p.add_argument("--servers", default="raw,gateway",
                   help="which servers, in this order per step (default raw,gateway)")
    p.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before a window (2)")
    p.add_argument("--window", type=float, default=5.0, help="seconds measured per step (5)")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="seconds for every client of a step to connect (60)")
    p.add_argument("--resume-clients", type=int, default=100,
                   help="clients of the resume step (default 100; 0 skips it)")
    p.add_argument("--resume-kills", type=int, default=3,
                   help="SIGKILLs of the gateway in the resume step (default 3)")
    p.add_argument("--resume-modes", default=",".join(RESUMES),
                   help="resume runs: restart (one gateway), failover (two), raw (rawcast); "
                        "default all")
    p.add_argument("--order-rate", type=float, default=20.0,
                   help="the trader's orders/s during the gateway's resume runs (20)")
    p.add_argument("--resume-timeout", type=float, default=30.0,
                   help="seconds for every client to resume after a kill (30)")
    p.add_argument("--report", type=Path, help="write a markdown report to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON, last line")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.set_defaults(profile=None)
    args = p.parse_args(argv)
    try:
        args.steps = [int(x) for x in args.steps.split(",") if x.strip()]
    except ValueError:
        p.error("--steps takes whole numbers, e.g. --steps 100,250")
    args.servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    args.resume_modes = [x.strip() for x in args.resume_modes.split(",") if x.strip()]
    if set(args.resume_modes) - set(RESUMES):
        p.error(f"--resume-modes takes {', '.join(RESUMES)}")
    if not args.steps or min(args.steps) < 1 or args.procs < 1 or args.window <= 0:
        p.error("--steps, --procs and --window must be positive")
    if set(args.servers) - set(SERVERS) or not args.servers:
        p.error(f"--servers takes {', '.join(SERVERS)}")
    return drive(args, "tickmesh-bench-gateway-", _no_profile, run_bench, render, _say)


def _no_profile(args: argparse.Namespace, procs: Children, workdir: Path) -> None:
    raise DrillError("bench-gateway has no --profile")


if __name__ == "__main__":
    sys.exit(main())
