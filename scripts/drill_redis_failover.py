#!/usr/bin/env python3
"""Redis failover drill: SIGKILL the Redis master again and again under tick and order load.

    ./scripts/drill-redis-failover                      # 5 kills, RTSS/RTS in turn, about 60 s
    ./scripts/drill-redis-failover --kills 2 --role rts --json
    ./scripts/drill-redis-failover --report drill.md    # where the markdown report goes

Everything runs on loopback, on free ports. The drill starts its own Redis HA topology
(``nodes.servers.redis_ha.RedisHA``: RTS and RTSS groups, a master and a replica each, three
Sentinels, ``--down-after-ms``) and a mesh whose ``[redis]`` section points at the Sentinels:
a simulator feed (``--symbols`` symbols at ``--tick-rate`` ticks/s), a recovery node, a
primary and a backup backend and an executor, each started with the real CLI
(``python -m nodes.cli ... --stats F``). A subscriber process (``bus.ticks.subscriber.Subscriber``
with the ZeroMQ and UDP paths, this file's ``_sub`` mode) times every tick it delivers:
latency = receive wall clock - the tick's ``source_time_ns`` (the simulator stamps the wall
clock), also beside ``feed_time_ns``. Order load as in ``drill_backend_crash.py`` (reused):
``--clients`` ``OrderClient`` instances in this process place market orders at ``--rate`` in
total, with a ``--deadline`` above the store's 5 s ride-through.

The tick path is real-time where this user may have it: the mesh file's ``[sched]`` puts the
feed and the subscriber under ``SCHED_FIFO`` priority ``--realtime-priority`` (40) on the last
CPU (``bus.sched``); ``--realtime-priority 0`` leaves them to the normal scheduler. The report
shows the policy the kernel reported for the feed, the recovery node and the subscriber.

Kills (``--role``: ``alternate`` starts with RTSS): the drill SIGKILLs the role's master (as
a majority of Sentinels reports it) and measures

* *switch*: kill -> a majority of the Sentinels report the new master (``wait_switch``);
* *resume*: switch -> the first write of the mesh that lands on the new master. The new master
  can only be the group's other server, so the drill polls it directly from the kill on: for
  RTS ``HGET {prefix}:seq <symbol>`` (the feed's checkpointed sequence) growing, for RTSS
  ``DBSIZE`` growing (a new order's keys). Negative when a node found the new master through
  one Sentinel before a majority reported it. For RTSS also *first ack*: switch -> the first
  order acknowledged after it.

Then the killed server is restarted as a replica of the new master (``RedisHA.restart``,
which returns once its link is up), ``--settle`` seconds pass, and the next kill follows.

End: the load stops, in-flight orders finish, the subscriber reports, and lost / duplicated
orders are counted against the *current* masters (found through the Sentinels) exactly as the
backend drill counts them (``drill_backend_crash.verify``). Failover window: kill -> switch +
``FAILOVER_TAIL_S``; order latency (place -> ack) p99 of the orders placed inside one, and of
the others, and the largest tick latency inside and outside the windows.

Targets (reported, not enforced): largest subscriber-visible tick latency <= 10 ms, 0 ticks
lost, 0 acked orders lost, 0 duplicated, checkpoints on the new master <= 200 ms after the
Sentinels announce it. Exit status 0 when every kill was done and measured, lost == 0 and
duplicated == 0; 1 otherwise; 2 when the drill itself could not run. With ``--json`` the last
line of stdout is one JSON object. docs/BENCHMARKS.md, "Redis failover drill", has results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.drills.measure import latency_ms
from nodes.drills.orders import (
    PREFIX,
    SYMBOL,
    Load,
    client_load,
    close_load,
    count_orders,
    find_active,
)
from nodes.drills.ports import tcp_endpoint, udp_address
from nodes.drills.procs import (
    AsyncLineChild,
    DrillError,
    Node,
    child_setup,
    read_command,
    stdin_lines,
    unwind_on_sigterm,
    wait_for,
)
from nodes.drills.report import aligned, conclude, dash, markdown_table, round1
from nodes.servers.redis_ha import DEFAULT_DOWN_AFTER_MS
from protocols.stats import percentile

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "USDCHF", "AUDUSD", "NZDUSD", "USDCAD")
FAILOVER_TAIL_S = 1.0  # a failover window ends this long after the switch
SWITCH_TIMEOUT_S = 30.0  # Sentinel refuses a second failover of a name for 2 x failover-timeout
RESUME_TIMEOUT_S = 5.0
POLL_S = 0.002
START_TIMEOUT_S = 30.0
BUCKET_NS = 100_000_000  # the subscriber's latency time line: largest latency per 100 ms
TARGET_TICK_MS = 10.0
TARGET_RESUME_MS = 200.0
DEFAULT_REALTIME_PRIORITY = 40  # SCHED_FIFO for the tick path (bus.sched); below the kernel's
# own threaded-IRQ handlers (50), far above nothing else: every other process is SCHED_OTHER

assert SYMBOL in SYMBOLS


# --- the subscriber process ------------------------------------------------------------------


def _sub_main(argv: list[str]) -> int:
    """A tickmesh subscriber that times every tick; ``start`` / ``stop`` commands on stdin."""
    from bus.ticks.subscriber import Subscriber, SubscriberOptions
    from nodes.common import run_node

    cfg, reply = child_setup(argv)

    async def main(stop: asyncio.Event) -> int:
        sub = Subscriber(SubscriberOptions.from_config(cfg))
        await sub.start()
        src_lat: array[int] = array("q")
        feed_lat: array[int] = array("q")
        buckets: dict[int, list[int]] = {}  # bucket -> [max src latency ns, ticks]
        worst: list[tuple[int, int, int, str, int]] = []  # (latency, recv_ns, feed_lat, s, seq)
        recording = False
        consumed = 0

        async def consume() -> None:
            nonlocal consumed
            while True:
                ticks = await sub.get_many()
                now = time.time_ns()
                consumed += len(ticks)
                if not recording:
                    continue
                top = 0
                for t in ticks:
                    lat = now - t.source_time_ns
                    src_lat.append(lat)
                    feed_lat.append(now - t.feed_time_ns)
                    if lat > top:
                        top = lat
                        if lat > 2_000_000:
                            worst.append((lat, now, now - t.feed_time_ns, t.symbol, t.seq))
                b = buckets.setdefault(now // BUCKET_NS, [0, 0])
                b[0] = max(b[0], top)
                b[1] += len(ticks)
                if len(worst) > 2000:
                    worst.sort(reverse=True)
                    del worst[200:]

        task = asyncio.create_task(consume())
        reader = await stdin_lines()
        reply({"ready": True, "pid": os.getpid()})
        try:
            while not stop.is_set():
                cmd = await read_command(reader)
                if cmd is None:
                    break
                op = cmd["cmd"]
                if op == "start":
                    recording = True
                    reply({"consumed": consumed})
                elif op == "stop":
                    recording = False
                    worst.sort(reverse=True)
                    reply({"consumed": consumed, "ticks": len(src_lat),
                           "src_ms": latency_ms(src_lat), "feed_ms": latency_ms(feed_lat),
                           "buckets": sorted([k * BUCKET_NS, v[0], v[1]]
                                             for k, v in buckets.items()),
                           "worst": worst[:20], "stats": sub.stats()})
                    break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sub.close()
        return 0

    return run_node(main, sched=cfg.sched, kind="subscriber", what="the drill's subscriber")


def subscriber(config: Path, log_path: Path) -> AsyncLineChild:
    """The subscriber child (``_sub_main``), spoken to in JSON lines."""
    return AsyncLineChild("the subscriber", [sys.executable, str(Path(__file__).resolve()),
                                             "_sub", str(config)], log_path)


# --- records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Kill:
    n: int
    role: str
    old: tuple[str, int]
    candidate: tuple[str, int]
    at: float  # time.monotonic() just before SIGKILL
    at_wall_ns: int
    new: tuple[str, int] | None = None
    switch_s: float | None = None
    landed: float | None = None  # monotonic: the first write seen on the new master
    first_ack: float | None = None  # RTSS: the first order acked after the switch
    restart_s: float = 0.0
    error: str = ""

    @property
    def switch_at(self) -> float | None:
        return None if self.switch_s is None else self.at + self.switch_s

    def window(self) -> tuple[float, float]:
        """Monotonic failover window: kill -> switch + tail (kill + 5 s when unmeasured)."""
        end = self.switch_at + FAILOVER_TAIL_S if self.switch_at is not None else self.at + 5.0
        return self.at, end

    def resume_ms(self) -> float | None:
        if self.landed is None or self.switch_at is None:
            return None
        return round((self.landed - self.switch_at) * 1000, 1)

    def first_ack_ms(self) -> float | None:
        if self.first_ack is None or self.switch_at is None:
            return None
        return round((self.first_ack - self.switch_at) * 1000, 1)


async def watch_new_master(kill: Kill, role: str, password: str | None,
                           done: asyncio.Event) -> None:
    """Poll the group's other server from the kill on; note when a mesh write lands on it."""
    import redis.asyncio as aioredis

    r = aioredis.Redis(host=kill.candidate[0], port=kill.candidate[1], password=password,
                       socket_timeout=0.5, socket_connect_timeout=0.5)

    async def read() -> int:
        if role == "rts":
            return int(await r.hget(f"{PREFIX}:seq", SYMBOL) or 0)
        return int(await r.dbsize())

    try:
        # What replication had delivered when the master died (let in-flight bytes settle).
        await asyncio.sleep(0.02)
        base = -1
        while base < 0 and not done.is_set():
            try:
                base = await read()
            except Exception:  # the replica is busy (e.g. its link just broke): ask again
                await asyncio.sleep(POLL_S)
        while not done.is_set():
            try:
                value = await read()
            except Exception:  # a poll error is not a landing; keep polling
                value = base
            if value > base:
                kill.landed = time.monotonic()
                return
            await asyncio.sleep(POLL_S)
    finally:
        with contextlib.suppress(Exception):  # a slow close is no measurement error
            await r.aclose()


# --- setup -----------------------------------------------------------------------------------


def write_config(run_dir: Path, ha: Any, args: argparse.Namespace) -> Path:
    from bus.config import (
        FeedSection,
        MeshConfig,
        MeshSection,
        OrdersSection,
        RecoverySection,
        RedisSection,
        SchedSection,
        SubscriberSection,
        dump_toml,
        load_config,
    )
    from nodes.servers.redis_ha import Role

    # The nodes bind these from the mesh file, so the ports are named before they start.
    def eps() -> tuple[str, str]:
        return tcp_endpoint(), tcp_endpoint()

    udp = udp_address()
    cfg = MeshConfig(
        mesh=MeshSection(name="drill", key_prefix=PREFIX),
        redis=RedisSection(sentinels=tuple(f"{h}:{p}" for h, p in ha.sentinels),
                           master=ha.master_names[Role.RTS],
                           orders_master=ha.master_names[Role.RTSS],
                           password=ha.password or ""),
        feeds=(FeedSection(name="sim", symbols=SYMBOLS[:args.symbols], rate=args.tick_rate,
                           pub=tcp_endpoint(), udp_targets=(udp,)),),
        recovery=(RecoverySection(bind=tcp_endpoint()),),
        subscriber=SubscriberSection(udp_bind=udp, snapshot=True),
        orders=OrdersSection(enabled=True, trader_rate=0.0, clients=eps(), peers=eps(),
                             updates=eps(), executor=eps(), replicas=eps(), symbols=(SYMBOL,)),
        sched=SchedSection(realtime_priority=args.realtime_priority, cpus=tick_path_cpus()),
    ).validate()
    path = run_dir / "mesh.toml"
    path.write_text(dump_toml(cfg))
    load_config(path)  # the file says what we meant, or this raises
    return path


@dataclass(slots=True)
class Run:
    ha: Any = None
    nodes: dict[str, Node] = field(default_factory=dict)
    sub: AsyncLineChild | None = None
    load: Load | None = None
    redis: Any = None  # RTSS master through the Sentinels (verification)
    store: Any = None  # RedisOrderStore through the Sentinels (verification)
    ticks: Any = None
    sched: dict[str, str] = field(default_factory=dict)  # process -> policy the kernel reports


# --- the drill -------------------------------------------------------------------------------


async def run_drill(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from bus.config import load_config
    from bus.orders.client import OrderClient, OrderClientOptions
    from bus.store.connection import connect_redis
    from bus.store.orders import RedisOrderStore
    from bus.store.ticks import RedisTickStore
    from nodes.servers.redis_ha import RedisHA, Role
    from nodes.servers.redis_server import ServerError

    run = Run()
    kills: list[Kill] = []
    try:
        run.ha = RedisHA(run_dir / "redis-ha", down_after_ms=args.down_after_ms)
        try:
            await asyncio.to_thread(run.ha.start, START_TIMEOUT_S)
        except ServerError as exc:
            raise DrillError(f"the Redis HA topology did not start: {exc}") from exc
        config = write_config(run_dir, run.ha, args)
        cfg = load_config(config)
        py = sys.executable
        for name, cmd in (("recovery", ["recovery"]), ("feed", ["feed"]),
                          ("primary", ["backend", "--role", "primary"]),
                          ("backup", ["backend", "--role", "backup"]),
                          ("executor", ["executor"])):
            stats = run_dir / f"{name}.json"
            run.nodes[name] = Node(name, [py, "-m", "nodes.cli", *cmd, "--config", str(config),
                                          "--stats", str(stats), "--log-level", args.log_level],
                                   stats, run_dir / f"{name}.log")
        conn = connect_redis(cfg.redis.orders_role())
        run.redis = conn.client
        run.store = RedisOrderStore.from_config(cfg)
        run.ticks = RedisTickStore.from_config(cfg)
        run.nodes["recovery"].start()
        run.nodes["feed"].start()

        async def quoted() -> bool:
            with contextlib.suppress(Exception):
                return await run.ticks.last(SYMBOL) is not None
            return False

        await wait_for(quoted, START_TIMEOUT_S, "the feed's first checkpoint", run.nodes)
        for name in ("primary", "backup", "executor"):
            run.nodes[name].start()
        backends = {k: run.nodes[k] for k in ("primary", "backup")}
        await find_active(backends, run.redis, START_TIMEOUT_S)
        run.sub = subscriber(config, run_dir / "subscriber.log")
        await run.sub.start(START_TIMEOUT_S)
        run.sched = tick_path_policies(run)

        clients = [OrderClient(OrderClientOptions.from_config(
            cfg, client_id=f"drill-client-{i}", deadline_s=args.deadline,
            **({"request_timeout_s": args.request_timeout} if args.request_timeout else {})))
            for i in range(args.clients)]
        run.load = load = Load(clients)
        for c in clients:
            await c.start()
        run_id = f"r{time.time_ns()}"
        loaders = [asyncio.create_task(client_load(load, i, args.rate / args.clients, run_id))
                   for i in range(args.clients)]
        load_start = time.monotonic()
        await asyncio.sleep(args.warmup / 2)  # the subscriber's snapshot and first fills
        await run.sub.ask("start")
        record_start_wall = time.time_ns()
        await asyncio.sleep(args.warmup / 2)
        kill_error = ""
        for n in range(args.kills):
            role = (args.role if args.role != "alternate"
                    else ("rtss", "rts")[n % 2])
            try:
                await one_kill(run.ha, Role(role), n + 1, kills)
            except (ServerError, DrillError, OSError) as exc:
                kill_error = f"kill {n + 1} ({role}): {exc}"
                break
            await asyncio.sleep(args.settle)
        load.stop.set()
        await asyncio.gather(*loaders)
        load_s = time.monotonic() - load_start
        if load.tasks:  # each ends by its deadline (OrderTimeout) at the latest
            await asyncio.wait(set(load.tasks), timeout=args.deadline + 5)
        ticks = await run.sub.ask("stop")
        record_end_wall = time.time_ns()
        feed_stats = run.nodes["feed"].stats() or {}
        orders = await count_orders(load, run.redis, run.store,
                                    drain_timeout=args.drain_timeout)
        for name in ("primary", "backup", "executor"):  # a clean stop writes final stats
            run.nodes[name].stop()
        orders["final_epoch"] = int(await run.redis.get(f"{PREFIX}:epoch") or 0)
        run.nodes["feed"].stop()  # a clean stop writes the final stats
        feed_stats = run.nodes["feed"].stats() or feed_stats
        return summarize(args, kills, load, ticks, orders, feed_stats, kill_error,
                         load_s, (record_start_wall, record_end_wall), clients,
                         run.nodes["recovery"].stats() or {}, run.sched)
    finally:
        await cleanup(run)


async def one_kill(ha: Any, role: Any, n: int, kills: list[Kill]) -> None:
    """Kill the role's master, measure the switch and the resume, bring the server back."""
    old = await asyncio.to_thread(ha.master_address, role)
    process = ha.process_at(old)
    candidate = next(s.address for s in ha.servers(role) if s.address != old)
    kill = Kill(n, role.value, old, candidate, time.monotonic(), time.time_ns())
    kills.append(kill)
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_new_master(kill, role.value, ha.password, done))
    try:
        kill.at, kill.at_wall_ns = time.monotonic(), time.time_ns()
        await asyncio.to_thread(process.kill)
        kill.new, kill.switch_s = await asyncio.to_thread(
            ha.wait_switch, role, old, SWITCH_TIMEOUT_S, since=kill.at)
        try:
            async with asyncio.timeout(RESUME_TIMEOUT_S):
                await asyncio.shield(watcher)
        except TimeoutError:
            kill.error = f"no write on the new master within {RESUME_TIMEOUT_S:.0f} s"
    finally:
        done.set()
        with contextlib.suppress(Exception):
            await watcher
    t = time.monotonic()
    await asyncio.to_thread(ha.restart, process)
    kill.restart_s = time.monotonic() - t


async def cleanup(run: Run) -> None:
    await close_load(run.load)
    if run.sub is not None:
        await run.sub.stop()
    for node in run.nodes.values():
        node.stop()
    for closer in (run.store, run.ticks):
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer.close()
    if run.redis is not None:
        with contextlib.suppress(Exception):
            await run.redis.aclose()
    if run.ha is not None:
        await asyncio.to_thread(run.ha.stop)


# --- figures ---------------------------------------------------------------------------------


def summarize(args: argparse.Namespace, kills: list[Kill], load: Load, ticks: dict[str, Any],
              orders: dict[str, Any], feed: dict[str, Any], kill_error: str, load_s: float,
              recorded: tuple[int, int], clients: list[Any],
              recovery: dict[str, Any], sched: dict[str, str]) -> dict[str, Any]:
    acked = sorted((r for r in load.records if r.outcome == "acked"), key=lambda r: r.done)
    for k in kills:
        if k.role == "rtss" and k.switch_at is not None:
            k.first_ack = next((r.done for r in acked if r.done >= k.switch_at), None)
    windows = [k.window() for k in kills]

    def in_window(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    lat_fail = [(r.done - r.sent) * 1000 for r in acked if in_window(r.sent)]
    lat_calm = [(r.done - r.sent) * 1000 for r in acked if not in_window(r.sent)]
    switch = [k.switch_s * 1000 for k in kills if k.switch_s is not None]
    resume = {role: [v for k in kills if (role in ("all", k.role))
                     and (v := k.resume_ms()) is not None] for role in ("all", "rts", "rtss")}
    first_ack = [v for k in kills if (v := k.first_ack_ms()) is not None]
    # Tick latency inside / outside the failover windows (wall-clock buckets of 100 ms).
    mono_to_wall = time.time_ns() - time.monotonic_ns()
    wwall = [(int(a * 1e9) + mono_to_wall, int(b * 1e9) + mono_to_wall) for a, b in windows]
    bmax_fail = bmax_calm = 0.0
    for start, top, _n in ticks.get("buckets", []):
        hit = any(a - BUCKET_NS <= start <= b for a, b in wwall)
        if hit:
            bmax_fail = max(bmax_fail, top / 1e6)
        else:
            bmax_calm = max(bmax_calm, top / 1e6)
    worst = [{"latency_ms": round(lat / 1e6, 2), "feed_latency_ms": round(fl / 1e6, 2),
              "at_s": round((now - recorded[0]) / 1e9, 3), "symbol": sym, "seq": seq,
              "kill": next((k.n for k, (a, b) in zip(kills, wwall, strict=True)
                            if a <= now <= b), None)}
             for lat, now, fl, sym, seq in ticks.get("worst", [])[:10]]
    sub_stats = ticks.get("stats", {})
    cp = feed.get("checkpoint", {})
    per_kill = []
    for k in kills:
        per_kill.append({
            "n": k.n, "role": k.role, "old": f"{k.old[0]}:{k.old[1]}",
            "new": k.new and f"{k.new[0]}:{k.new[1]}",
            "switch_ms": round1(k.switch_s and k.switch_s * 1000),
            "resume_ms": k.resume_ms(), "first_ack_ms": k.first_ack_ms(),
            "at_s": round((k.at_wall_ns - recorded[0]) / 1e9, 2),
            "restart_ms": round(k.restart_s * 1000), "error": k.error})
    tick_max = ticks.get("src_ms", {}).get("max")
    resume_all = resume["all"]
    targets = {
        "tick_latency_max_le_10ms": tick_max is not None and tick_max <= TARGET_TICK_MS,
        "ticks_lost_0": sub_stats.get("lost", 0) == 0,
        "orders_lost_0": orders["lost"] == 0,
        "orders_duplicated_0": orders["duplicated"] == 0,
        "checkpoints_resume_le_200ms": bool(resume["rts"])
        and max(resume["rts"]) <= TARGET_RESUME_MS,
    }
    return {
        "kills": len([k for k in kills if k.switch_s is not None]),
        "kills_requested": args.kills, "kill_error": kill_error,
        "kills_resumed": len(resume_all), "role": args.role,
        "switch_ms_p50": round1(percentile(switch, 0.5)), "switch_ms_max": round1(max(switch,
                                                                             default=None)),
        "resume_after_switch_ms_p50": round1(percentile(resume_all, 0.5)),
        "resume_after_switch_ms_p99": round1(percentile(resume_all, 0.99)),
        "resume_after_switch_ms_max": round1(max(resume_all, default=None)),
        "resume_rts_ms_max": round1(max(resume["rts"], default=None)),
        "resume_rtss_ms_max": round1(max(resume["rtss"], default=None)),
        "first_ack_after_switch_ms_max": round1(max(first_ack, default=None)),
        "tick_latency_p50_ms": ticks.get("src_ms", {}).get("p50"),
        "tick_latency_p99_ms": ticks.get("src_ms", {}).get("p99"),
        "tick_latency_p999_ms": ticks.get("src_ms", {}).get("p999"),
        "tick_latency_max_ms": tick_max,
        "tick_latency_max_failover_ms": round(bmax_fail, 3),
        "tick_latency_max_calm_ms": round(bmax_calm, 3),
        "tick_feed_latency_ms": ticks.get("feed_ms"),
        "ticks_timed": ticks.get("ticks"), "ticks_lost": sub_stats.get("lost"),
        "tick_gaps_filled": {k: v for k, v in sub_stats.items()
                             if isinstance(v, int | float) and ("fill" in k or "gap" in k)},
        "worst_ticks": worst,
        "checkpoint": {k: cp.get(k) for k in ("written", "failures", "dropped", "flushes")},
        "feed_unreserved": feed.get("unreserved"),
        "recovery_stats": recovery,
        "order_p99_ms_failover": round1(percentile(lat_fail, 0.99)),
        "order_max_ms_failover": round1(max(lat_fail, default=None)),
        "order_p50_ms_calm": round1(percentile(lat_calm, 0.5)),
        "order_p99_ms_calm": round1(percentile(lat_calm, 0.99)),
        "orders_in_failover_windows": len(lat_fail),
        "sent": orders["sent"], "acked": orders["acked"], "rejected": orders["rejected"],
        "timed_out": orders["timed_out"], "other_errors": orders["other_errors"],
        "reject_reasons": orders["reject_reasons"],
        "executed": orders["executed"], "executed_unacked": orders["executed_unacked"],
        "lost": orders["lost"], "duplicated": orders["duplicated"],
        "ack_mismatch": orders["ack_mismatch"], "acked_not_filled": orders["acked_not_filled"],
        "drain_unfinished": orders["drain_unfinished"], "lost_detail": orders["lost_detail"],
        "backend_takeovers": max(0, orders["final_epoch"] - 1),
        "client_stats": dict(sum((Counter(c.stats()) for c in clients), Counter())),
        "tick_rate": args.tick_rate, "symbols": args.symbols, "rate": args.rate,
        "clients": args.clients, "down_after_ms": args.down_after_ms, "settle_s": args.settle,
        "load_s": round(load_s, 1), "per_kill": per_kill, "targets": targets,
        "realtime_priority": args.realtime_priority, "sched": sched,
    }


def default_realtime_priority() -> int:
    """``DEFAULT_REALTIME_PRIORITY`` where this user may use it, else 0 (with a note)."""
    from bus.sched import realtime_permitted

    if realtime_permitted(DEFAULT_REALTIME_PRIORITY):
        return DEFAULT_REALTIME_PRIORITY
    print("drill-redis-failover: SCHED_FIFO is not permitted here (needs root or an rtprio "
          "limit); the tick path runs under the normal scheduler", file=sys.stderr)
    return 0


def tick_path_cpus() -> tuple[int, ...]:
    """The last CPU for the real-time tick path, where there are two or more: the others stay
    with the normal tasks (``bus.sched._pin``: why)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[-1],) if len(cpus) > 1 else ()


def tick_path_policies(run: Run) -> dict[str, str]:
    """The scheduling policy of the feed, the recovery node and the subscriber, as the kernel
    reports it: what the run measured, not what the mesh file asked for."""
    from bus.sched import policy_of

    pids = {"feed": run.nodes["feed"].pid, "recovery": run.nodes["recovery"].pid}
    assert run.sub is not None and run.sub.proc is not None
    pids["subscriber"] = run.sub.proc.pid
    return {name: policy_of(pid) for name, pid in pids.items()}


def passed(s: dict[str, Any]) -> bool:
    return (s["kills"] == s["kills_requested"] and not s["kill_error"]
            and s["lost"] == 0 and s["duplicated"] == 0 and s["ack_mismatch"] == 0)


# --- output ----------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(s: dict[str, Any], command: str) -> str:
    t = s["targets"]
    lines = [
        "# Redis failover drill", "",
        f"{s['date']}, {s['machine']}. Command: `{command}`", "",
        f"Result: **{'PASS' if s['ok'] else 'FAIL'}**"
        + (f" ({s['kill_error']})" if s["kill_error"] else ""), "",
        "| figure | value | target |", "|---|---|---|",
        f"| kills (requested), role | {s['kills']} ({s['kills_requested']}), {s['role']} | |",
        f"| Sentinel switch ms p50 / max | {dash(s['switch_ms_p50'])} / {dash(s['switch_ms_max'])}"
        " | |",
        f"| resume after switch ms p50 / p99 / max | {dash(s['resume_after_switch_ms_p50'])} / "
        f"{dash(s['resume_after_switch_ms_p99'])} / {dash(s['resume_after_switch_ms_max'])} | |",
        f"| checkpoints on the new RTS master, ms after switch (max) | "
        f"{dash(s['resume_rts_ms_max'])} | <= 200: "
        f"{_met(t['checkpoints_resume_le_200ms'])} |",
        f"| first order write on the new RTSS master / first ack, ms after switch (max) | "
        f"{dash(s['resume_rtss_ms_max'])} / {dash(s['first_ack_after_switch_ms_max'])} | |",
        f"| tick latency ms p50 / p99 / p99.9 / max | {dash(s['tick_latency_p50_ms'])} / "
        f"{dash(s['tick_latency_p99_ms'])} / {dash(s['tick_latency_p999_ms'])} / "
        f"{dash(s['tick_latency_max_ms'])} | max <= 10: {_met(t['tick_latency_max_le_10ms'])} |",
        f"| largest tick latency ms in / outside failover windows | "
        f"{s['tick_latency_max_failover_ms']} / {s['tick_latency_max_calm_ms']} | |",
        f"| ticks timed / lost | {dash(s['ticks_timed'])} / {dash(s['ticks_lost'])} | 0 lost: "
        f"{_met(t['ticks_lost_0'])} |",
        f"| feed checkpoints written / failed flushes / dropped | "
        f"{dash(s['checkpoint']['written'])} / {dash(s['checkpoint']['failures'])} / "
        f"{dash(s['checkpoint']['dropped'])} | |",
        f"| order latency ms p99 (max) in failover windows, {s['orders_in_failover_windows']} "
        f"orders | {dash(s['order_p99_ms_failover'])} ({dash(s['order_max_ms_failover'])}) | |",
        f"| order latency ms p50 / p99 outside | {dash(s['order_p50_ms_calm'])} / "
        f"{dash(s['order_p99_ms_calm'])} | |",
        f"| load | {s['tick_rate']:g} ticks/s ({s['symbols']} symbols), {s['rate']:g} orders/s "
        f"over {s['clients']} clients, {s['load_s']} s | |",
        f"| sent / acked / rejected / timed out / other | {s['sent']} / {s['acked']} / "
        f"{s['rejected']} / {s['timed_out']} / {s['other_errors']} | |",
        f"| **lost** / **duplicated** / ack mismatch | {s['lost']} / {s['duplicated']} / "
        f"{s['ack_mismatch']} | 0 / 0: {_met(t['orders_lost_0'] and t['orders_duplicated_0'])}"
        " |",
        f"| backend takeovers (should be 0) | {s['backend_takeovers']} | |",
        f"| tick path scheduling (`[sched]`, as the kernel reported it) | "
        f"{', '.join(f'{k} {v}' for k, v in s['sched'].items())} | |",
        "",
    ]
    lines += markdown_table(
        ["kill", "role", "at s", "switch ms", "resume ms", "first ack ms", "restart ms", "note"],
        [[k["n"], k["role"], k["at_s"], k["switch_ms"], k["resume_ms"], k["first_ack_ms"],
          k["restart_ms"], k["error"]] for k in s["per_kill"]])
    lines += ["", f"Reject reasons: {json.dumps(s['reject_reasons'])}",
              f"Client counters: {json.dumps(s['client_stats'])}",
              f"Subscriber gap figures: {json.dumps(s['tick_gaps_filled'])}", "",
              "Worst ticks (latency from source time; `kill`: inside that kill's window):", ""]
    lines += [f"* {json.dumps(w)}" for w in s["worst_ticks"]]
    if s["lost_detail"]:
        lines += ["", "Lost orders (the first 20):", ""]
        lines += [f"* {json.dumps(d)}" for d in s["lost_detail"]]
    lines.append("")
    return "\n".join(lines)


def human(s: dict[str, Any]) -> str:
    rows = [
        ("kills", f"{s['kills']} of {s['kills_requested']} ({s['role']})"),
        ("switch ms p50/max", f"{dash(s['switch_ms_p50'])} / {dash(s['switch_ms_max'])}"),
        ("resume ms p50/p99/max", f"{dash(s['resume_after_switch_ms_p50'])} / "
                                  f"{dash(s['resume_after_switch_ms_p99'])} / "
                                  f"{dash(s['resume_after_switch_ms_max'])}"),
        ("tick latency ms p50/p99/max", f"{dash(s['tick_latency_p50_ms'])} / "
                                        f"{dash(s['tick_latency_p99_ms'])} / "
                                        f"{dash(s['tick_latency_max_ms'])}"),
        ("ticks lost", dash(s["ticks_lost"])),
        ("order p99 ms failover/calm", f"{dash(s['order_p99_ms_failover'])} / "
                                       f"{dash(s['order_p99_ms_calm'])}"),
        ("sent / acked", f"{s['sent']} / {s['acked']}"),
        ("rejected / timed out", f"{s['rejected']} / {s['timed_out']}"),
        ("lost / duplicated", f"{s['lost']} / {s['duplicated']}"),
        ("tick path scheduling", ", ".join(f"{k} {v}" for k, v in s["sched"].items())),
        ("targets", ", ".join(f"{k} {'met' if v else 'MISSED'}"
                              for k, v in s["targets"].items())),
        ("result", "PASS" if s["ok"] else "FAIL"),
    ]
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_sub"]:
        return _sub_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs of a master (default 5)")
    p.add_argument("--role", choices=("alternate", "rtss", "rts"), default="alternate",
                   help="whose master to kill (default: alternate, RTSS first)")
    p.add_argument("--down-after-ms", type=int, default=DEFAULT_DOWN_AFTER_MS,
                   help=f"Sentinel down-after-milliseconds (default {DEFAULT_DOWN_AFTER_MS})")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds after the killed server is back before the next kill")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before kill 1")
    p.add_argument("--tick-rate", type=float, default=10_000.0, help="ticks/s (default 10000)")
    p.add_argument("--symbols", type=int, default=4, choices=range(1, len(SYMBOLS) + 1),
                   metavar=f"1..{len(SYMBOLS)}", help="symbols of the feed (default 4)")
    p.add_argument("--rate", type=float, default=500.0, help="orders/s over all clients")
    p.add_argument("--realtime-priority", type=int, default=None, metavar="0..99",
                   help="SCHED_FIFO priority of the feed, recovery and subscriber ([sched] "
                        "realtime_priority; default 40 where permitted, else 0); 0: the "
                        "normal scheduler, to compare")
    p.add_argument("--clients", type=int, default=4, help="order clients (default 4)")
    p.add_argument("--deadline", type=float, default=10.0,
                   help="the clients' deadline_s (default 10; above the store's 5 s)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="the clients' request_timeout_s (default: the client's own)")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="seconds to wait for acked orders to execute at the end")
    p.add_argument("--report", type=Path, help="markdown report (default: in the run dir)")
    p.add_argument("--run-dir", type=Path, help="logs, stats, mesh file (default: a temp dir)")
    p.add_argument("--log-level", default="INFO", help="the nodes' log level")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = p.parse_args(argv)
    if args.kills < 1 or args.rate <= 0 or args.clients < 1 or args.tick_rate <= 0 \
            or args.settle < 0 or args.warmup < 0 or args.deadline <= 5.0:
        p.error("--kills, --rate, --clients, --tick-rate must be positive, --settle and "
                "--warmup not negative, --deadline above 5 (the store's ride-through)")
    if args.realtime_priority is None:
        args.realtime_priority = default_realtime_priority()
    elif not 0 <= args.realtime_priority <= 99:
        p.error("--realtime-priority must be 0-99")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="tickmesh-redis-drill-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    report = args.report or run_dir / "drill-redis-failover.md"
    command = "./scripts/drill-redis-failover " + " ".join(argv)

    unwind_on_sigterm()
    try:
        summary = asyncio.run(run_drill(args, run_dir))
    except (DrillError, OSError) as exc:
        print(f"drill-redis-failover: {exc} (logs in {run_dir})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drill-redis-failover: interrupted (logs in {run_dir})", file=sys.stderr)
        return 2
    return conclude(summary, ok=passed(summary), run_dir=run_dir, report=report,
                    markdown=lambda s: markdown(s, command.strip()), human=human,
                    as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
