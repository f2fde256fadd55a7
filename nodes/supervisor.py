"""``tickmesh up``: the whole mesh on one machine, each node its own process, supervised.

It starts a local Redis (or uses the one already answering at ``[redis].url``), then every
recovery node, every feed and one monitor subscriber, each as ``python -m nodes.cli <role>``
in its own session (so a terminal's Ctrl-C reaches only the supervisor, which then stops the
children in order: the trader and the EAs first, then the feeds, so subscribers see the end of
session). A node that dies is restarted at once, then with back-off if it keeps dying. A status
line shows what flows; with ``--for SECONDS`` the run ends by itself and prints a summary.

Unless ``--no-ea``, the EA path runs too: the simulated MetaTrader 5 terminal, one EA instance
per ``[[ea]]`` entry (``ea-1`` on the first feed when the mesh file has none; ``--ea-standby``
adds ``ea-2``), the first feed fed by the EA and the executor in bridge mode.

Warm restart. A Python process spends 130-250 ms importing before it runs, more than the EA's
restart budget (200 ms). So an EA child is *warm*: beside the running process the supervisor
keeps a spare, the same command with ``--spare``, which has imported everything and parsed its
config and blocks reading a line from stdin. When the running process dies, the spare gets its
line at once and becomes the running child (same stats and log files), and the next spare is
started in the background. A spare that dies is replaced; at stop, spares get EOF on stdin
(then SIGTERM). The same back-off applies: a child that dies right after it took over waits
before the next one takes over, so a bad config does not spin.

Layout of ``--run-dir``: ``mesh.toml`` (the effective config every node reads), ``logs/``,
``stats/`` (one JSON per node, refreshed twice a second), ``pids.json`` (for drills: each
node's pid, a warm child's spare as ``<name>.spare``), ``redis/`` (data and AOF of the Redis it
started), ``terminal/`` (the simulated terminal's journal, kept across its restarts).
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
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from bus.aio import cancel_and_wait
from bus.config import EaSection, MeshConfig, dump_toml
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
QUICK_DEATH_S = 2.0  # a process that dies sooner after it started counts as a failed start
STOP_TIMEOUT_S = 10.0
SPARE_ARG = "--spare"  # the command line of a warm child's spare: its own, with this
TAKE_OVER_LINE = b"run\n"  # a spare runs once it reads a line; EOF: it exits 0
SPARE_EOF_S = 2.0  # at stop, a spare this long to exit on EOF before it gets SIGTERM
# The next spare starts this long after the last one took over: its imports (~200 ms of CPU)
# then do not compete with the new running process while it reconciles and resumes.
SPARE_DELAY_S = 0.2
TERMINAL_READY_S = 10.0  # the EA instances start once the terminal listens, or after this
EXIT_HISTORY = 64  # exit codes and restart times kept per child (a supervisor runs for weeks)
# Counters of a dead process (its last stats file) kept in the run's totals, by node role:
# paths into its stats JSON. Not an EA's "deals": a restarted EA counts again the deals it
# re-reads from the terminal's history while it reconciles.
CARRIED: dict[str, tuple[tuple[str, ...], ...]] = {
    "feed": (("publisher", "ticks"),),
    "ea": (("pushed",), ("sent",)),
}


def _counter(stats: dict[str, Any], path: tuple[str, ...]) -> int:
    value: Any = stats
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return value if isinstance(value, int) else 0


@dataclass
class Child:
    """One supervised node process (and, for a warm child, its spare)."""

    name: str
    args: list[str]
    stats: Path
    log_path: Path
    role: str = ""  # the ``tickmesh`` command it runs
    warm: bool = False  # keeps a spare that takes over at once when the process dies
    proc: asyncio.subprocess.Process | None = None
    spare: asyncio.subprocess.Process | None = None
    restarts: int = 0
    cold_restarts: int = 0  # restarts of a warm child that had no live spare
    started_at: float = 0.0
    exits: deque[int] = field(default_factory=lambda: deque(maxlen=EXIT_HISTORY))
    # ms from a death seen (waitpid returned) to the take-over line written to the spare
    restart_ms: deque[float] = field(default_factory=lambda: deque(maxlen=EXIT_HISTORY))
    restart_ms_max: float | None = None
    earlier: dict[tuple[str, ...], int] = field(default_factory=dict)  # dead processes' counts
    _taken: asyncio.Future[None] | None = None  # resolved when the spare takes over

    def read_stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.stats.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def total(self, *path: str) -> int:
        """Counter ``path`` of the running process plus what the dead ones had counted
        (approximate across a crash: a killed process's last stats are up to 0.5 s old)."""
        return _counter(self.read_stats(), path) + self.earlier.get(path, 0)

    def carry_counters(self) -> None:
        stats = self.read_stats()
        for path in CARRIED.get(self.role, ()):
            self.earlier[path] = self.earlier.get(path, 0) + _counter(stats, path)

    def offer_spare(self, proc: asyncio.subprocess.Process) -> asyncio.Future[None]:
        """Make ``proc`` the spare; the future resolves when it takes over."""
        self.spare = proc
        self._taken = asyncio.get_running_loop().create_future()
        return self._taken

    def take_spare(self) -> asyncio.subprocess.Process | None:
        """The live spare, no longer a spare (None if there is none)."""
        spare, self.spare = self.spare, None
        if self._taken is not None and not self._taken.done():
            self._taken.set_result(None)
        if spare is None or spare.returncode is not None:
            return None
        return spare

    def record_restart(self, ms: float) -> None:
        self.restart_ms.append(ms)
        self.restart_ms_max = ms if self.restart_ms_max is None else max(self.restart_ms_max,
                                                                         ms)


# Stop order: no new orders (the trader), no more ticks or executions from the EAs, the feeds'
# end of session, the rest; the monitor and the historian take in what the others sent last;
# the terminal, which the EAs were attached to, last (Redis after it, outside the supervisor).
_STOP_ORDER = {"trader": 0, "ea": 1, "feed": 2, "monitor": 4, "historian": 5, "sim-terminal": 6}


def _stop_rank(c: Child) -> int:
    return _STOP_ORDER.get(c.role, 3)


async def _listening(endpoint: str, timeout_s: float) -> bool:
    """Wait until something accepts TCP connections at ``endpoint`` (tcp://host:port; other
    transports are not waited for). A bare connect is harmless to a ZeroMQ socket: it drops
    a peer that never greets it."""
    url = urlparse(endpoint)
    if url.scheme != "tcp" or url.port is None:
        return True
    host = "127.0.0.1" if url.hostname in (None, "*", "0.0.0.0") else url.hostname
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _reader, writer = await asyncio.open_connection(host, url.port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    log.warning("nothing listens at %s after %.0f s; starting the EA instances anyway",
                endpoint, timeout_s)
    return False


class Supervisor:
    def __init__(self, cfg: MeshConfig, run_dir: Path, config_file: Path,
                 gateways: int = 0, ea: bool = False) -> None:
        self.cfg = cfg
        self.gateways = gateways
        self.ea = ea  # run the EA path: the simulated terminal and the [[ea]] instances
        self.run_dir = run_dir
        self.config_file = config_file
        self.children: list[Child] = []
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        # Set once the simulated terminal listens (or was given up on): the EA instances
        # start after it, the other nodes do not wait.
        self._terminal_up = asyncio.Event()
        self._spare_tasks: list[asyncio.Task[None]] = []

    def _child(self, name: str, role: str, *extra: str, warm: bool = False) -> Child:
        stats = self.run_dir / "stats" / f"{name}.json"
        args = [sys.executable, "-m", "nodes.cli", role, "--config", str(self.config_file),
                "--stats", str(stats), *extra]
        return Child(name, args, stats, self.run_dir / "logs" / f"{name}.log", role=role,
                     warm=warm)

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
        if self.ea:
            # The terminal before the instances that attach to it; the instances before the
            # feeds (not critical: a feed waits on its PULL socket for what they push).
            if self.cfg.terminal.enabled:
                self.children.append(self._child("terminal", "sim-terminal"))
            for e in self.cfg.ea:
                self.children.append(self._child(e.name, "ea", "--name", e.name, warm=True))
        for f in self.cfg.feeds:
            self.children.append(self._child(f"feed-{f.name}", "feed", "--name", f.name))
        self.children.append(self._child("monitor", "monitor"))
        for i in range(self.gateways):
            self.children.append(self._child(f"gateway-{i + 1}", "gateway", "--index", str(i),
                                             "--name", f"gw-{i + 1}"))
        if orders.enabled and orders.trader_rate > 0:
            self.children.append(self._child("trader", "trader"))

    async def _start_process(self, child: Child, spare: bool = False
                             ) -> asyncio.subprocess.Process:
        args = [*child.args, SPARE_ARG] if spare else child.args
        with child.log_path.open("ab") as out:
            # A spare's stdin is a pipe of ours: its take-over line, or EOF (also if the
            # supervisor itself dies, so no spare outlives it).
            return await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE if spare else None, stdout=out,
                stderr=out, start_new_session=True, cwd=Path(__file__).resolve().parents[1])

    async def _spawn(self, child: Child) -> None:
        child.proc = await self._start_process(child)
        child.started_at = time.monotonic()
        self._write_pids()

    async def _keep_running(self, child: Child) -> None:
        """Run ``child`` until stopping; restart it whenever it dies (a warm child: its spare
        takes over)."""
        failures = 0
        if child.role == "ea":
            await self._terminal_up.wait()
        await self._spawn(child)
        while True:
            assert child.proc is not None
            rc = await child.proc.wait()
            seen = time.monotonic()
            if self.stopping:
                return
            child.exits.append(rc)
            child.restarts += 1
            child.carry_counters()
            # A node that ran a while and died gets restarted at once; one that keeps dying
            # right after start backs off so a bad config does not spin the machine. A warm
            # child SIGKILLed was killed (an operator, a drill, the OOM killer), it did not
            # fail to start: its spare takes over at once however soon that came.
            quick = seen - child.started_at < QUICK_DEATH_S
            killed = child.warm and rc == -signal.SIGKILL
            failures = failures + 1 if quick and not killed else 0
            delay = RESTART_BACKOFF.compute(failures - 1, 0.0) if failures else 0.0
            if delay:
                await asyncio.sleep(delay)
                if self.stopping:
                    return
            if child.warm and await self._take_over(child, seen):
                log.warning("%s exited with %s; back-off %.2f s; its spare took over %.1f ms "
                            "after (restart %d)", child.name, rc, delay, child.restart_ms[-1],
                            child.restarts)
                continue
            if child.warm:
                child.cold_restarts += 1
            log.warning("%s exited with %s; back-off %.2f s; restarted (restart %d)",
                        child.name, rc, delay, child.restarts)
            await self._spawn(child)

    async def _take_over(self, child: Child, seen: float) -> bool:
        """Hand ``child`` to its spare: True once the spare has its line."""
        spare = child.take_spare()
        if spare is None:
            return False
        assert spare.stdin is not None
        try:
            spare.stdin.write(TAKE_OVER_LINE)
            await spare.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):  # it died, not yet reaped
            log.warning("%s: the spare died before it could take over", child.name)
            return False
        child.record_restart((time.monotonic() - seen) * 1000.0)
        child.proc = spare
        child.started_at = time.monotonic()
        self._write_pids()
        return True

    async def _keep_spare(self, child: Child) -> None:
        """Keep one spare of a warm child: a new one after each take-over, a dead one
        replaced (with the restart back-off: a spare that cannot start must not spin)."""
        failures = 0
        while not self.stopping:
            await asyncio.sleep(SPARE_DELAY_S)
            spare = await self._start_process(child, spare=True)
            started = time.monotonic()
            taken = child.offer_spare(spare)
            self._write_pids()
            died: asyncio.Future[Any] = asyncio.ensure_future(spare.wait())
            try:
                await asyncio.wait({died, taken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                died.cancel()
                await asyncio.wait({died})
            if taken.done():
                failures = 0
                continue
            child.spare = None
            self._write_pids()
            failures = failures + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            delay = RESTART_BACKOFF.compute(failures - 1, 0.0) if failures else 0.0
            log.warning("%s: its spare exited with %s; another in %.2f s", child.name,
                        spare.returncode, delay + SPARE_DELAY_S)
            await asyncio.sleep(delay)

    def _write_pids(self) -> None:
        pids = {c.name: c.proc.pid for c in self.children if c.proc is not None}
        pids |= {f"{c.name}.spare": c.spare.pid for c in self.children if c.spare is not None}
        write_json_atomic(self.run_dir / "pids.json", pids)

    async def start(self) -> None:
        for sub in ("logs", "stats"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        for c in self.children:
            c.stats.unlink(missing_ok=True)
        for c in self.children:
            self._tasks.append(asyncio.create_task(self._keep_running(c), name=c.name))
            if c.warm:
                self._spare_tasks.append(asyncio.create_task(self._keep_spare(c),
                                                             name=f"{c.name}.spare"))
            if c.name.startswith("recovery"):
                await asyncio.sleep(0.05)  # serve before the feeds' first subscribers ask
            if c.role == "sim-terminal":
                self._tasks.append(asyncio.create_task(self._wait_terminal(), name="terminal-up"))
        if not any(c.role == "sim-terminal" for c in self.children):
            self._terminal_up.set()

    async def _wait_terminal(self) -> None:
        await _listening(self.cfg.terminal.bind, TERMINAL_READY_S)
        self._terminal_up.set()

    async def stop(self) -> None:
        """Stop the trader and the EAs first, then the feeds (end of session reaches
        subscribers), then everything else; the terminal last."""
        self.stopping = True
        await cancel_and_wait(self._spare_tasks, what="supervisor spares")
        for c in sorted(self.children, key=_stop_rank):
            await self._terminate(c.name, c.proc)
            await self._retire_spare(c)
            if c.role == "feed":
                await asyncio.sleep(0.3)  # let the monitor drain what the feed sent last
        await cancel_and_wait(self._tasks, what="supervisor")
        # One started while the others were being stopped (a restart under way) goes too.
        for c in self.children:
            await self._terminate(c.name, c.proc)
            await self._retire_spare(c)

    async def _retire_spare(self, c: Child) -> None:
        spare, c.spare = c.spare, None
        if spare is None or spare.returncode is not None:
            return
        assert spare.stdin is not None
        spare.stdin.close()  # EOF: a spare waiting for its line exits 0
        try:
            async with asyncio.timeout(SPARE_EOF_S):
                await spare.wait()
        except TimeoutError:  # still importing, or deaf: it gets SIGTERM like the rest
            await self._terminate(f"{c.name}.spare", spare)

    async def _terminate(self, name: str, proc: asyncio.subprocess.Process | None) -> None:
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            log.error("%s did not stop within %.0f s: killing it", name, STOP_TIMEOUT_S)
            proc.kill()
            await proc.wait()

    # -- reporting -------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        feeds = [c for c in self.children if c.role == "feed"]
        mon = next((c.read_stats() for c in self.children if c.name == "monitor"), {})
        tcp, udp = mon.get("tcp", {}), mon.get("udp", {})
        return {
            "published": sum(c.total("publisher", "ticks") for c in feeds),
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
            **self._ea_summary(),
        }

    def _ea_summary(self) -> dict[str, Any]:
        if not self.ea:
            return {}
        eas = [c for c in self.children if c.role == "ea"]
        terminal = next((c.read_stats() for c in self.children if c.role == "sim-terminal"), {})
        times = [c.restart_ms_max for c in eas if c.restart_ms_max is not None]
        return {"ea_ticks": sum(c.total("pushed") for c in eas),  # pushed to the feed
                "ea_orders_sent": sum(c.total("sent") for c in eas),  # order_send calls
                # deals of tickmesh orders the running EA processes saw at the terminal
                "ea_deals": sum(c.total("deals") for c in eas),
                "terminal_deals": _counter(terminal, ("deals",)),  # the terminal's own count
                "ea_restarts": sum(c.restarts for c in eas),
                "ea_cold_restarts": sum(c.cold_restarts for c in eas),
                # ms from a death seen to the spare told to take over (None: no restart)
                "ea_restart_ms_max": round(max(times), 3) if times else None}

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
        ea = (f" | ea ticks {s['ea_ticks']} sent {s['ea_orders_sent']} deals {s['ea_deals']}"
              if "ea_ticks" in s else "")
        return (f"nodes {alive}/{len(self.children)} | published {s['published']} | delivered "
                f"{s['delivered']} (tcp {s['received_tcp']}, udp {s['received_udp']}) | gaps "
                f"{s['gaps']} filled {s['gaps_filled']} lost {s['unrecoverable']}{orders}"
                f"{history}{ea} | restarts {sum(s['restarts'].values())}")


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


def with_ea(cfg: MeshConfig, run_dir: Path, standby: bool = False) -> MeshConfig:
    """The mesh on the EA path: a mesh file without ``[[ea]]`` entries gets ``ea-1`` pushing
    the first feed's ticks (that feed's source becomes "ea") through the simulated terminal,
    which quotes that feed's symbols at its rate; entries the file has are used as they are
    (their endpoints, terminals, feeds). ``standby`` adds ``ea-2``, a copy of the first
    instance (same feed, same accounts: it takes over the accounts' lease when that one goes
    silent). Orders are executed through the EAs. The terminal's journal lives in the run
    dir, like Redis's data."""
    feeds = cfg.feeds
    instances = cfg.ea
    if not instances:
        feeds = (replace(feeds[0], source="ea"), *feeds[1:])
        instances = (EaSection(name="ea-1", feed=feeds[0].name,
                               sim_endpoint=cfg.terminal.bind,
                               state_dir=str(run_dir / "ea")),)
    if standby and not any(e.name == "ea-2" for e in instances):
        instances = (*instances, replace(instances[0], name="ea-2"))
    terminal = cfg.terminal
    sims = [e for e in instances if e.terminal == "sim"]
    if sims and not terminal.enabled:
        fed = [f for f in feeds if any(e.feed == f.name for e in sims)]
        symbols = tuple(dict.fromkeys(s for f in fed for s in f.symbols)) or terminal.symbols
        terminal = replace(terminal, enabled=True, bind=sims[0].sim_endpoint, symbols=symbols,
                           rate=fed[0].rate if fed else terminal.rate)
    data_dir = terminal.data_dir
    if not Path(data_dir).is_absolute():
        data_dir = str(run_dir / Path(data_dir).name)
    orders = cfg.orders
    if orders.enabled and any(e.trades for e in instances):
        orders = replace(orders, execution="ea")
    return replace(cfg, feeds=feeds, ea=instances, orders=orders,
                   terminal=replace(terminal, data_dir=data_dir)).validate()


def _ea_description(cfg: MeshConfig, ea: bool) -> str:
    if not ea:
        return "no EA"
    where = {"sim": "the simulated terminal", "mt5": "MetaTrader 5"}
    return "EA " + ", ".join(f"{e.name} on {where[e.terminal]}" for e in cfg.ea)


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
    ea = not getattr(args, "no_ea", False)
    try:
        cfg = _gateways_in(cfg, run_dir, gateways)
        if ea:
            cfg = with_ea(cfg, run_dir, standby=getattr(args, "ea_standby", False))
    except ConfigError as exc:
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        print(f"tickmesh up: {exc}", file=sys.stderr)
        return 2
    config_file = run_dir / "mesh.toml"
    config_file.write_text(dump_toml(cfg))
    sup = Supervisor(cfg, run_dir, config_file, gateways, ea=ea)
    sup.plan()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = sys.stdout.isatty()
    print(f"tickmesh up: {len(sup.children)} nodes, {_redis_description(cfg)}, "
          f"{_history_description(cfg)}, {_ea_description(cfg, ea)}, run dir {run_dir}"
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
    if ea:
        # The EA path carried the run: its ticks reached the feed, and the trader's orders
        # were executed by the terminal through it.
        ok = ok and summary["ea_ticks"] > 0
        if cfg.orders.enabled and cfg.orders.trader_rate > 0:
            ok = ok and summary["ea_orders_sent"] > 0 and summary["terminal_deals"] > 0
    if not ok:
        print("tickmesh up: the run was not clean (see the summary and "
              f"{run_dir / 'logs'})", file=sys.stderr)
    return 0 if ok else 1


def pid_of(run_dir: Path, name: str) -> int:
    """The pid of a supervised node (for drills): read from ``pids.json``."""
    pids: dict[str, int] = json.loads((run_dir / "pids.json").read_text())
    return pids[name]


__all__ = ["Child", "Supervisor", "pid_of", "run_up", "with_ea"]
