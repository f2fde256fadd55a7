"""``tickmesh up``: the whole mesh on one machine, each node its own process, supervised.

It starts a local Redis (or uses the one already answering at ``[redis].url``), then every
recovery node, every feed and one monitor subscriber, each as ``python -m nodes.cli <role>``
in its own session (so a terminal's Ctrl-C reaches only the supervisor, which then stops the
children in order: feeds first, so subscribers see the end of session). A node that dies is
restarted at once, then with back-off if it keeps dying. A status line shows what flows; with
``--for SECONDS`` the run ends by itself and prints a summary.

Layout of ``--run-dir``: ``mesh.toml`` (the effective config every node reads), ``logs/``,
``stats/`` (one JSON per node, refreshed twice a second), ``pids.json`` (for drills),
``redis/`` (data and AOF of the Redis it started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from bus.aio import cancel_and_wait
from bus.config import MeshConfig, dump_toml
from nodes.common import write_json_atomic
from nodes.servers.redis_ha import HAPorts, RedisHA
from nodes.servers.redis_ha import Role as HARole
from nodes.servers.redis_server import RedisProcess
from protocols.backoff import Backoff
from protocols.errors import ConfigError, ServerError

if TYPE_CHECKING:  # clickhouse-driver is imported only by a run that starts servers
    from nodes.servers.clickhouse_server import ClickHouseProcess

log = logging.getLogger(__name__)

RESTART_BACKOFF = Backoff(base_s=0.05, cap_s=5.0, jitter=0.0)
STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    """One supervised node process."""

    name: str
    args: list[str]
    stats: Path
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    exits: list[int] = field(default_factory=list)
    earlier: dict[str, int] = field(default_factory=dict)  # counters of previous processes

    def read_stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.stats.read_text())
            return data
        except (OSError, ValueError):
            return {}


class Supervisor:
    def __init__(self, cfg: MeshConfig, run_dir: Path, config_file: Path,
                 gateways: int = 0) -> None:
        self.cfg = cfg
        self.gateways = gateways
        self.run_dir = run_dir
        self.config_file = config_file
        self.children: list[Child] = []
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def _child(self, name: str, role: str, *extra: str) -> Child:
        stats = self.run_dir / "stats" / f"{name}.json"
        args = [sys.executable, "-m", "nodes.cli", role, "--config", str(self.config_file),
                "--stats", str(stats), *extra]
        return Child(name, args, stats, self.run_dir / "logs" / f"{name}.log")

    def plan(self) -> None:
        for r in self.cfg.recovery:
            self.children.append(self._child(f"recovery-{r.name}", "recovery", "--name", r.name))
        if self.cfg.history.enabled:
            # Before the backends: a backend that finds its order store empty asks history
            # whether it was wiped before it serves.
            self.children.append(self._child("historian", "historian"))
        orders = self.cfg.orders
        if orders.enabled:
            for role in ("primary", "backup"):
                self.children.append(self._child(f"backend-{role}", "backend", "--role", role))
            self.children.append(self._child("executor", "executor"))
        for f in self.cfg.feeds:
            self.children.append(self._child(f"feed-{f.name}", "feed", "--name", f.name))
        self.children.append(self._child("monitor", "monitor"))
        for i in range(self.gateways):
            self.children.append(self._child(f"gateway-{i + 1}", "gateway", "--index", str(i),
                                             "--name", f"gw-{i + 1}"))
        if orders.enabled and orders.trader_rate > 0:
            self.children.append(self._child("trader", "trader"))

    async def _spawn(self, child: Child) -> None:
        with child.log_path.open("ab") as out:
            child.proc = await asyncio.create_subprocess_exec(
                *child.args, stdout=out, stderr=out, start_new_session=True,
                cwd=Path(__file__).resolve().parents[1])
        child.started_at = time.monotonic()
        self._write_pids()

    async def _keep_running(self, child: Child) -> None:
        """Run ``child`` until stopping; restart it whenever it dies."""
        failures = 0
        while not self.stopping:
            await self._spawn(child)
            assert child.proc is not None
            rc = await child.proc.wait()
            if self.stopping:
                return
            child.exits.append(rc)
            child.restarts += 1
            # Keep what the dead process had counted (as of its last stats file) in totals.
            published = child.read_stats().get("publisher", {}).get("ticks", 0)
            child.earlier["published"] = child.earlier.get("published", 0) + published
            # A node that ran a while and died gets restarted at once; one that keeps dying
            # right after start backs off so a bad config does not spin the machine.
            failures = failures + 1 if time.monotonic() - child.started_at < 2.0 else 0
            delay = RESTART_BACKOFF.compute(failures - 1, 0.0) if failures else 0.0
            log.warning("%s exited with %s; restarting in %.2f s (restart %d)", child.name, rc,
                        delay, child.restarts)
            await asyncio.sleep(delay)

    def _write_pids(self) -> None:
        pids = {c.name: c.proc.pid for c in self.children if c.proc is not None}
        write_json_atomic(self.run_dir / "pids.json", pids)

    async def start(self) -> None:
        for sub in ("logs", "stats"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        for c in self.children:
            c.stats.unlink(missing_ok=True)
        for c in self.children:
            self._tasks.append(asyncio.create_task(self._keep_running(c), name=c.name))
            if c.name.startswith("recovery"):
                await asyncio.sleep(0.05)  # serve before the feeds' first subscribers ask

    async def stop(self) -> None:
        """Stop feeds first (end of session reaches subscribers), then everything else."""
        self.stopping = True
        # The trader first (no new orders), then feeds, then the rest; the monitor and the
        # historian last, so they take in what the others sent last.
        order = sorted(self.children, key=lambda c: (c.name != "trader",
                                                      not c.name.startswith("feed"),
                                                      c.name in ("monitor", "historian"),
                                                      c.name == "historian"))
        for c in order:
            await self._terminate(c)
            if c.name.startswith("feed"):
                await asyncio.sleep(0.3)  # let the monitor drain what the feed sent last
        await cancel_and_wait(self._tasks, what="supervisor")

    async def _terminate(self, c: Child) -> None:
        if c.proc is None or c.proc.returncode is not None:
            return
        c.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await c.proc.wait()
        except TimeoutError:
            log.error("%s did not stop within %.0f s: killing it", c.name, STOP_TIMEOUT_S)
            c.proc.kill()
            await c.proc.wait()

    # -- reporting -------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        feeds = [c for c in self.children if c.name.startswith("feed")]
        mon = next((c.read_stats() for c in self.children if c.name == "monitor"), {})
        tcp, udp = mon.get("tcp", {}), mon.get("udp", {})
        return {
            # Approximate across a crash: a killed feed's last stats are up to 0.5 s old.
            "published": sum(c.read_stats().get("publisher", {}).get("ticks", 0)
                             + c.earlier.get("published", 0) for c in feeds),
            "delivered": mon.get("delivered", 0),
            "received_tcp": tcp.get("ticks", 0), "received_udp": udp.get("ticks", 0),
            "won_tcp": tcp.get("won", 0), "won_udp": udp.get("won", 0),
            "latency_p50_us_udp": udp.get("latency_p50_us", 0),
            "latency_p99_us_udp": udp.get("latency_p99_us", 0),
            "latency_p50_us_tcp": tcp.get("latency_p50_us", 0),
            "latency_p99_us_tcp": tcp.get("latency_p99_us", 0),
            "gaps": mon.get("gaps", 0),
            "gaps_filled": mon.get("filled_by_path", 0) + mon.get("filled_by_recovery", 0),
            "filled_by_recovery": mon.get("filled_by_recovery", 0),
            "unrecoverable": mon.get("lost", 0),
            "order_errors": mon.get("order_errors", 0),
            "restarts": {c.name: c.restarts for c in self.children if c.restarts},
            **self._order_summary(),
            **self._history_summary(),
            **self._gateway_summary(),
        }

    def _gateway_summary(self) -> dict[str, Any]:
        stats = [c.read_stats() for c in self.children if c.name.startswith("gateway")]
        if not stats:
            return {}
        return {"gateway_urls": list(self.cfg.gateway.urls[:self.gateways]),
                "gateway_symbols_ready": min(g.get("market", {}).get("ready", 0)
                                             for g in stats),
                "gateway_clients": sum(g.get("clients", 0) for g in stats),
                "gateway_seam_gap": sum(g.get("market", {}).get("seam_gap", 0) for g in stats)}

    def _history_summary(self) -> dict[str, Any]:
        if not self.cfg.history.enabled:
            return {}
        h = next((c.read_stats() for c in self.children if c.name == "historian"), {})
        return {"history_store": self.cfg.history.store,
                "history_rows": h.get("written", 0), "history_ticks": h.get("ticks", 0),
                "history_bars": h.get("bars", 0), "history_orders": h.get("orders", 0),
                "history_executions": h.get("executions", 0),
                "history_holes": h.get("tick_holes", 0) + h.get("order_holes", 0),
                "history_lag_ms_p99": h.get("lag_ms_p99")}

    def _order_summary(self) -> dict[str, Any]:
        if not self.cfg.orders.enabled:
            return {}
        trader = next((c.read_stats() for c in self.children if c.name == "trader"), {})
        backends = [c.read_stats() for c in self.children if c.name.startswith("backend")]
        executor = next((c.read_stats() for c in self.children if c.name == "executor"), {})
        return {"orders_placed": trader.get("placed", 0), "orders_acked": trader.get("acked", 0),
                "orders_filled": trader.get("filled", 0),
                "orders_rejected": sum(trader.get("rejects", {}).values()),
                "orders_timed_out": trader.get("timeouts", 0),
                "executions": executor.get("fills", 0),
                "backend_takeovers": sum(b.get("takeovers", 0) for b in backends)}

    def status_line(self) -> str:
        s = self.summary()
        alive = sum(1 for c in self.children if c.proc and c.proc.returncode is None)
        orders = (f" | orders {s['orders_acked']}/{s['orders_placed']} filled "
                  f"{s['orders_filled']}" if "orders_placed" in s else "")
        history = f" | history {s['history_rows']}" if "history_rows" in s else ""
        return (f"nodes {alive}/{len(self.children)} | published {s['published']} | delivered "
                f"{s['delivered']} (tcp {s['received_tcp']}, udp {s['received_udp']}) | gaps "
                f"{s['gaps']} filled {s['gaps_filled']} lost {s['unrecoverable']}{orders}"
                f"{history} | restarts {sum(s['restarts'].values())}")


def _local_redis(cfg: MeshConfig, run_dir: Path, port: int) -> tuple[MeshConfig,
                                                                      RedisProcess | None]:
    """Use the Redis at the configured URL if it answers; else start one on its port."""
    url = urlparse(cfg.redis.url)
    host, cfg_port = url.hostname or "127.0.0.1", url.port or 6379
    port = port or cfg_port
    server = RedisProcess(host=host, port=port, data_dir=run_dir / "redis")
    if port == cfg_port and server.answers():
        log.info("using the Redis already running at %s", cfg.redis.url)
        return cfg, None
    server.start()
    new_url = f"redis://{host}:{port}{url.path or '/0'}"
    return replace(cfg, redis=replace(cfg.redis, url=new_url)), server


def _local_redis_ha(cfg: MeshConfig, run_dir: Path) -> tuple[MeshConfig, RedisHA]:
    """Start the local HA topology on free ports and point the mesh at its Sentinels."""
    ha = RedisHA(run_dir / "redis-ha", ports=HAPorts.free(),
                 password=cfg.redis.password or None)
    ha.start()
    names = ha.master_names
    section = replace(cfg.redis, sentinels=tuple(f"{h}:{p}" for h, p in ha.sentinels),
                      master=names[HARole.RTS], orders_master=names[HARole.RTSS])
    return replace(cfg, redis=section), ha


def _local_clickhouse(cfg: MeshConfig, run_dir: Path
                      ) -> tuple[MeshConfig, list[ClickHouseProcess]]:
    """Start a ClickHouse pair on free ports and point the mesh's history at it."""
    from nodes.servers.clickhouse_server import ClickHouseProcess

    servers = [ClickHouseProcess(data_dir=run_dir / f"clickhouse-{name}") for name in "ab"]
    try:
        for server in servers:
            server.start()
    except ServerError:
        for server in servers:
            server.stop()
        raise
    history = replace(cfg.history, store="clickhouse",
                      clickhouse=tuple(f"127.0.0.1:{s.port}" for s in servers))
    return replace(cfg, history=history), servers


def _history_description(cfg: MeshConfig) -> str:
    h = cfg.history
    if not h.enabled:
        return "no history"
    if h.store == "clickhouse":
        return f"history on ClickHouse {', '.join(h.clickhouse)}"
    return f"history in {h.duckdb_path}"


def _history_in(cfg: MeshConfig, run_dir: Path) -> MeshConfig:
    """Relative history files live in the run dir, like Redis's data."""
    h = cfg.history
    def inside(path: str) -> str:
        return path if Path(path).is_absolute() else str(run_dir / Path(path).name)
    return replace(cfg, history=replace(h, duckdb_path=inside(h.duckdb_path),
                                        spool_path=inside(h.spool_path)))


def _gateways_in(cfg: MeshConfig, run_dir: Path, count: int) -> MeshConfig:
    """The users file lives in the run dir (a relative path); a missing one gets the demo
    users (alice/alice, bob/bob: docs/GATEWAY.md). Raises ConfigError for too many gateways."""
    from bus.gateway.sessions import write_demo_users

    g = cfg.gateway
    if not 0 <= count <= len(g.listen):
        raise ConfigError("gateway.listen", f"--gateways {count} needs {count} addresses, the "
                          f"mesh file lists {len(g.listen)}", "add addresses to listen")
    path = g.users_file if Path(g.users_file).is_absolute() else str(run_dir /
                                                                     Path(g.users_file).name)
    if count:
        write_demo_users(Path(path))
    return replace(cfg, gateway=replace(g, users_file=path))


def _redis_description(cfg: MeshConfig) -> str:
    if cfg.redis.sentinels:
        return (f"Redis HA via Sentinels {', '.join(cfg.redis.sentinels)} "
                f"(masters {cfg.redis.master}, {cfg.redis.orders_master})")
    return f"Redis at {cfg.redis.url}"


async def run_up(cfg: MeshConfig, args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    redis: RedisProcess | RedisHA | None = None
    try:
        # Starting servers blocks for a while (the HA topology ~2-3 s): off the event loop.
        if getattr(args, "ha", False):
            cfg, redis = await asyncio.to_thread(_local_redis_ha, cfg, run_dir)
        else:
            cfg, redis = await asyncio.to_thread(_local_redis, cfg, run_dir, args.redis_port)
        clickhouse: list[ClickHouseProcess] = []
        if getattr(args, "clickhouse", False):
            cfg, clickhouse = await asyncio.to_thread(_local_clickhouse, cfg, run_dir)
    except ServerError as exc:
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        print(f"tickmesh up: {exc}", file=sys.stderr)
        return 2
    cfg = _history_in(cfg, run_dir)
    gateways = getattr(args, "gateways", 0) if cfg.gateway.enabled else 0
    try:
        cfg = _gateways_in(cfg, run_dir, gateways)
    except ConfigError as exc:
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        print(f"tickmesh up: {exc}", file=sys.stderr)
        return 2
    config_file = run_dir / "mesh.toml"
    config_file.write_text(dump_toml(cfg))
    sup = Supervisor(cfg, run_dir, config_file, gateways)
    sup.plan()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = sys.stdout.isatty()
    print(f"tickmesh up: {len(sup.children)} nodes, {_redis_description(cfg)}, "
          f"{_history_description(cfg)}, run dir {run_dir}"
          + (f", for {args.duration:g} s" if args.duration else ", Ctrl-C to stop"), flush=True)
    for url in cfg.gateway.urls[:gateways]:
        print(f"tickmesh up: chart at {url}/ (demo logins alice/alice, bob/bob; users in "
              f"{cfg.gateway.users_file})", flush=True)
    try:
        await sup.start()
        deadline = loop.time() + args.duration if args.duration else None
        last_print = 0.0
        while not stop.is_set() and (deadline is None or loop.time() < deadline):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
            if tty:
                print("\r" + sup.status_line()[:200].ljust(120), end="", flush=True)
            elif loop.time() - last_print >= 5.0:
                print(sup.status_line(), flush=True)
                last_print = loop.time()
    finally:
        await sup.stop()
        for server in clickhouse:
            await asyncio.to_thread(server.stop)
        if redis is not None:
            await asyncio.to_thread(redis.stop)
    summary = sup.summary()
    if tty:
        print()
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    ok = (summary["received_tcp"] > 0 and summary["received_udp"] > 0
          and summary["unrecoverable"] == 0 and summary["order_errors"] == 0)
    if cfg.orders.enabled and cfg.orders.trader_rate > 0:
        ok = ok and summary["orders_filled"] > 0 and summary["orders_timed_out"] == 0
    if cfg.history.enabled:
        ok = ok and summary["history_rows"] > 0
    if not ok:
        print("tickmesh up: the run was not clean (see the summary and "
              f"{run_dir / 'logs'})", file=sys.stderr)
    return 0 if ok else 1


def pid_of(run_dir: Path, name: str) -> int:
    """The pid of a supervised node (for drills): read from ``pids.json``."""
    pids: dict[str, int] = json.loads((run_dir / "pids.json").read_text())
    return pids[name]


__all__ = ["Supervisor", "pid_of", "run_up"]
