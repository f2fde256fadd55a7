#!/usr/bin/env python3
"""ClickHouse failover drill: SIGKILL the active history server (or the historian) under load.

    ./scripts/drill-clickhouse-failover                    # 5 kills of the active server, ~70 s
    ./scripts/drill-clickhouse-failover --mode historian   # SIGKILL the historian instead
    ./scripts/drill-clickhouse-failover --mode wipe        # wipe the order store, rebuild
    ./scripts/drill-clickhouse-failover --mode all --json  # the three in turn
    ./scripts/drill-clickhouse-failover --report drill.md  # where the markdown report goes

Everything runs on loopback, on free ports: two redis-servers (``RedisProcess``: the tick
store and the order store, so a wipe of the one leaves the other), two clickhouse-servers
(``ClickHouseProcess``, Debian's 18.16) and a mesh of real CLI nodes (``python -m nodes.cli
... --stats F``): a simulator feed (``--symbols`` symbols at ``--tick-rate`` ticks/s in all), a
recovery node, a primary and a backup backend, an executor, and the historian with
``[history] store = "clickhouse"`` over both servers and its DuckDB spool in the run
directory. Order load: ``--clients`` ``OrderClient`` instances in this process place market
orders at ``--order-rate`` per second in all (``nodes.drills.orders``). Each mode runs on a
mesh of its own (``--mode all``: one after the other, in sub-directories of the run dir).

**clickhouse** (the default). A reader process (this file's ``_reader`` mode: a
``FailoverHistoryReader`` over both servers, the first one active, asking for the last 1 s bars
of a stream every ``READ_EVERY_S``) says which server it reads from; that active server is
SIGKILLed (the reader stays on the other one after a switch, so the kills alternate between
the servers), left down ``--down`` seconds, restarted on its port and data (``restart()``);
the drill waits until the historian's writer reports it live again, then ``--settle`` seconds,
then the next kill. Per kill:

* ``read_switch_ms``: kill -> the reader's first answered read from the other server (the
  reads are ``READ_EVERY_S`` apart: up to that much of the figure is the reader's own pace);
* ``write_stall_ms``: the longest historian write from the kill until the server is live again
  (the writer's ``write_recent_max_ms``, sampled from the historian's stats file, which covers
  the last 2 s of writes whatever the sampling): a write must never wait for the dead server;
* ``resync_s``: the restarted server answering -> the writer reports it live (the stats file
  is written every 0.5 s: that is the figure's resolution), beside the writer's own
  ``last_resync_ms`` (probe answered -> spool copied) and the rows it re-synced.

**historian**: the historian is SIGKILLed instead, ``--kills`` times, left dead ``--down``
seconds while ticks and orders go on, and restarted; per kill the time from its restart until
both servers hold every tick the feed had checkpointed at the restart (``catch_up_s``), what
it backfilled from Redis and the holes it counted (target: 0 inside the Redis retention).

End of both: the load stops, every acked order is waited for until executed (bounded), the
feed and the backends stop cleanly, the historian catches up (bounded), and **each server** is
compared with what was published and executed, counting raw rows (``count()`` beside
``uniqExact`` of the idempotency key, no deduplicating read):

* ticks per stream: every sequence from the first one history holds of the stream (the first
  the historian saw; the lowest of both servers) to the feed's checkpoint (``P:seq``) present
  exactly once;
* orders and executions: every order version and execution-log entry in the order store's
  history stream (``P:history``, PROTOCOL.md section 11; converted by
  ``protocols.history.records.append_write``, the historian's own function) present exactly
  once, and every acknowledged order present.

``rows_expected``, ``rows_lost``, ``rows_duplicated`` (and ``rows_extra``: rows nobody
published) per server and summed. ReplacingMergeTree may collapse a repeated row in a
background merge before the count: the count is of the parts as they are.

**wipe**: after ``--load`` seconds of load, the order path crashes with its store: the
placing stops, both backends and the executor are SIGKILLed, and one Redis transaction reads
the order store's history stream and wipes it (``FLUSHALL``). The drill counts the acked
orders history lacked at that moment (history is written behind: the figure issue 11 asks
for; and those the store itself lacked, since the pair writes Redis behind) and again after
the historian wrote what it had read (what it still lacks then cannot come back). Then the
backends and the executor start again, and the backends rebuild the order store from history
before they serve (``BackendNode._rebuild``: their stats count what they restored, their logs
say how long it took). The drill checks that every order
history holds is back (its record at its latest version, its execution log, its executed
set), that re-sending ``--resend`` acked client order ids gets the stored order back (the
idempotency key: no new order), and that nothing executed twice. The tick rows are compared as
in the other modes.

Targets (reported, not enforced): read failover p99 <= 200 ms; rows lost 0 and duplicated 0 on
each server; historian SIGKILL backfilled with 0 holes. Exit status 0 when every kill was done
and measured and lost == duplicated == 0 (wipe: and every order history held restored, no
re-sent order new); 1 otherwise; 2 when the drill itself could not run. With ``--json`` the
last line of stdout is one JSON object. docs/BENCHMARKS.md, "Issue 11: ClickHouse failover
drill", has results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.drills.orders import (
    PREFIX,
    SYMBOL,
    Load,
    Placed,
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
from nodes.drills.report import aligned, conclude, dash, json_line, markdown_table
from protocols.history.schema import END_OF_TIME
from protocols.stats import percentile

MODES = ("clickhouse", "historian", "wipe")
SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "USDCHF", "AUDUSD", "NZDUSD", "USDCAD")
DATABASE = "tickmesh"
READ_EVERY_S = 0.02  # the reader's pace
START_TIMEOUT_S = 30.0
SWITCH_TIMEOUT_S = 5.0  # a read switch slower than this is reported as not measured
LIVE_TIMEOUT_S = 30.0  # restart -> the writer reports the server live
CATCH_UP_TIMEOUT_S = 30.0
END_CATCH_UP_TIMEOUT_S = 120.0  # the end: a historian behind by a loaded machine catches up
SAMPLE_S = 0.1  # how often the drill reads the historian's stats file
HISTORY_PAGE = 2_000
TARGET_SWITCH_MS = 200.0

assert SYMBOL in SYMBOLS


# --- the reader process ----------------------------------------------------------------------


def _reader_main(argv: list[str]) -> int:
    """A FailoverHistoryReader over the mesh's servers, reading bars in a loop; commands
    ``active``, ``first`` (``after``: monotonic time, ``store``: name) and ``stop``."""
    from bus.history.readers import open_history_reader
    from bus.store.history_reader import FailoverHistoryReader
    from protocols.errors import StoreError

    cfg, reply = child_setup(argv)
    stream = cfg.feeds[0].symbols[0]

    async def main() -> int:
        reader = open_history_reader(cfg).reader
        assert isinstance(reader, FailoverHistoryReader)  # [history] store = "clickhouse"
        await reader.open()
        answered: deque[tuple[float, str]] = deque(maxlen=100_000)  # (monotonic, store)
        failed = 0

        async def loop() -> None:
            nonlocal failed
            while True:
                try:
                    await reader.bars(stream, 1, 0, END_OF_TIME, countback=10)
                except StoreError:
                    failed += 1
                else:  # after a switch the active store is the one that answered
                    answered.append((time.monotonic(), reader.active.name))
                await asyncio.sleep(READ_EVERY_S)

        task = asyncio.create_task(loop())
        commands = await stdin_lines()
        reply({"ready": True, "active": reader.active.name})
        try:
            while True:
                cmd = await read_command(commands)
                if cmd is None:
                    break
                if cmd["cmd"] == "active":
                    reply({"active": reader.active.name})
                elif cmd["cmd"] == "first":
                    reply({"t": next((t for t, name in answered
                                      if t >= cmd["after"] and name == cmd["store"]), None)})
                elif cmd["cmd"] == "stop":
                    reply({**reader.stats(), "reads": len(answered), "failed": failed})
                    break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await reader.close()
        return 0

    return asyncio.run(main())


# --- records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Kill:
    n: int
    target: str  # the server's store name (ch:host:port), or "historian"
    at: float  # monotonic, just before SIGKILL
    switch_at: float | None = None  # the reader's first answer from the other server
    down_seen_at: float | None = None  # the writer reported the server not live
    restarted_at: float | None = None  # the server answers again (restart() returned)
    restart_s: float = 0.0
    live_at: float | None = None  # the writer reports it live again (historian: caught up)
    write_stall_ms: float | None = None
    last_resync_ms: float | None = None
    resynced_rows: int = 0
    backfilled: int = 0
    tick_holes: int = 0
    order_holes: int = 0
    error: str = ""

    def ms(self, t: float | None, since: float | None = None) -> float | None:
        base = self.at if since is None else since
        return None if t is None else round((t - base) * 1000, 1)


@dataclass(slots=True)
class Run:
    mode: str
    run_dir: Path
    rts: Any = None  # RedisProcess: the tick store
    rtss: Any = None  # RedisProcess: the order store
    ch: dict[str, Any] = field(default_factory=dict)  # store name -> ClickHouseProcess
    config: Path | None = None
    cfg: Any = None
    nodes: dict[str, Node] = field(default_factory=dict)
    reader: AsyncLineChild | None = None
    load: Load | None = None
    loaders: list[asyncio.Task[None]] = field(default_factory=list)
    redis: Any = None  # the order store's server (verification)
    ticks_redis: Any = None
    store: Any = None  # RedisOrderStore
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # historian stats
    supervise: bool = True  # restart a historian that exits by itself (as ./scripts/up does)
    historian_exits: list[str] = field(default_factory=list)  # how each unasked exit ended

    @property
    def historian(self) -> Node:
        return self.nodes["historian"]

    @property
    def backends(self) -> dict[str, Node]:
        return {k: self.nodes[k] for k in ("primary", "backup")}


# --- setup -----------------------------------------------------------------------------------


def write_config(run: Run, args: argparse.Namespace) -> Path:
    from bus.config import (
        FeedSection,
        HistorySection,
        MeshConfig,
        MeshSection,
        OrdersSection,
        RecoverySection,
        RedisSection,
        SubscriberSection,
        dump_toml,
        load_config,
    )

    # The nodes bind these from the mesh file, so the ports are named before they start.
    def eps() -> tuple[str, str]:
        return tcp_endpoint(), tcp_endpoint()

    udp = udp_address()
    cfg = MeshConfig(
        mesh=MeshSection(name="drill", key_prefix=PREFIX),
        redis=RedisSection(url=run.rts.url, orders_url=run.rtss.url),
        feeds=(FeedSection(name="sim", symbols=SYMBOLS[:args.symbols], rate=args.tick_rate,
                           pub=tcp_endpoint(), udp_targets=(udp,)),),
        recovery=(RecoverySection(bind=tcp_endpoint()),),
        subscriber=SubscriberSection(udp_bind=udp, snapshot=True),
        orders=OrdersSection(enabled=True, trader_rate=0.0, clients=eps(), peers=eps(),
                             updates=eps(), executor=eps(), replicas=eps(), symbols=(SYMBOL,)),
        history=HistorySection(store="clickhouse", database=DATABASE,
                               clickhouse=tuple(f"{p.host}:{p.port}" for p in run.ch.values()),
                               spool_path=str(run.run_dir / "history-spool.duckdb"),
                               batch_ms=args.batch_ms, query_bind=""),
    ).validate()
    path = run.run_dir / "mesh.toml"
    path.write_text(dump_toml(cfg))
    load_config(path)  # the file says what we meant, or this raises
    return path


async def start_mesh(run: Run, args: argparse.Namespace) -> None:
    """Redis, ClickHouse, the nodes, the reader, the order load; returns once all run."""
    import redis.asyncio as aioredis

    from bus.config import load_config
    from bus.orders.client import OrderClient, OrderClientOptions
    from bus.store.orders import RedisOrderStore
    from nodes.servers.clickhouse_server import ClickHouseProcess
    from nodes.servers.redis_server import RedisProcess, ServerError

    d = run.run_dir
    run.rts = RedisProcess(data_dir=d / "redis-ticks", appendonly=False)
    run.rtss = RedisProcess(data_dir=d / "redis-orders", appendonly=False)
    servers = [ClickHouseProcess(data_dir=d / f"clickhouse-{n}") for n in "ab"]
    try:
        for server in (run.rts, run.rtss):
            await asyncio.to_thread(server.start)
        # The two start concurrently (1-3 s each); ClickHouseProcess waits until it answers.
        await asyncio.gather(*(asyncio.to_thread(s.start, START_TIMEOUT_S) for s in servers))
    except ServerError as exc:
        raise DrillError(f"a server did not start: {exc}") from exc
    run.ch = {f"ch:{s.host}:{s.port}": s for s in servers}
    run.config = write_config(run, args)
    run.cfg = cfg = load_config(run.config)
    py = sys.executable
    for name, cmd in (("recovery", ["recovery"]), ("feed", ["feed"]),
                      ("primary", ["backend", "--role", "primary"]),
                      ("backup", ["backend", "--role", "backup"]),
                      ("executor", ["executor"]), ("historian", ["historian"])):
        stats = d / f"{name}.json"
        run.nodes[name] = Node(name, [py, "-m", "nodes.cli", *cmd, "--config", str(run.config),
                                      "--stats", str(stats), "--log-level", args.log_level],
                               stats, d / f"{name}.log")
    run.redis = aioredis.Redis.from_url(run.rtss.url)
    run.ticks_redis = aioredis.Redis.from_url(run.rts.url)
    run.store = RedisOrderStore.from_config(cfg)
    run.nodes["recovery"].start()
    run.nodes["feed"].start()

    async def quoted() -> bool:
        return bool(await run.ticks_redis.hget(f"{PREFIX}:seq", SYMBOL))

    await wait_for(quoted, START_TIMEOUT_S, "the feed's first checkpoint", run.nodes)
    for name in ("primary", "backup", "executor", "historian"):
        run.nodes[name].start()
    await find_active(run.backends, run.redis, START_TIMEOUT_S)
    await historian_ready(run)
    if run.mode == "clickhouse":
        run.reader = AsyncLineChild("the reader", [py, str(Path(__file__).resolve()), "_reader",
                                                   str(run.config)], d / "reader.log")
        await run.reader.start(START_TIMEOUT_S)
    clients = [OrderClient(OrderClientOptions.from_config(cfg, client_id=f"drill-client-{i}"))
               for i in range(args.clients)]
    run.load = Load(clients)
    for c in clients:
        await c.start()
    run_id = f"h{time.time_ns()}"
    run.loaders = [asyncio.create_task(client_load(run.load, i, args.order_rate / args.clients,
                                                   run_id)) for i in range(args.clients)]


async def historian_ready(run: Run) -> None:
    """Wait for the (re)started historian's first stats file: it has resumed and subscribed."""
    async def up() -> bool:
        return run.historian.stats() is not None

    await wait_for(up, START_TIMEOUT_S, "the historian's first stats", run.nodes)


def writer_server(stats: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """One server's entry in the historian's writer stats ({} when unknown)."""
    if not stats:
        return {}
    server: dict[str, Any] = stats.get("writer", {}).get("servers", {}).get(name, {})
    return server


async def sample_historian(run: Run) -> None:
    """Keep the historian's stats as they change (write stalls, states, holes), and restart
    it when it exits by itself (counted: a finding, not part of the drill)."""
    last: Any = None
    while True:
        node = run.historian
        if run.supervise and node.proc is not None and not node.alive():
            run.historian_exits.append(f"exit code {node.proc.returncode}: "
                                       + " | ".join(_log_tail(node.log_path, 3)))
            node.start()
        s = node.stats()
        if s is not None and s != last:
            run.samples.append((time.monotonic(), s))
            last = s
        await asyncio.sleep(SAMPLE_S)


def _log_tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def samples_between(run: Run, a: float, b: float) -> list[dict[str, Any]]:
    return [s for t, s in run.samples if a <= t <= b]


async def poll_until(check: Callable[[], Awaitable[Any]], timeout: float,
                     poll_s: float = 0.05) -> Any:
    """``check()``'s first truthy value, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(poll_s)


# --- clickhouse mode -------------------------------------------------------------------------


async def kill_server(run: Run, args: argparse.Namespace, n: int) -> Kill:
    """SIGKILL the reader's active server, measure, restart it, wait until it is live."""
    assert run.reader is not None
    name = (await run.reader.ask("active"))["active"]
    other = next(k for k in run.ch if k != name)
    server = run.ch[name]
    downs = writer_server(run.historian.stats(), name).get("downs", 0)
    kill = Kill(n, name, time.monotonic())
    await asyncio.to_thread(server.kill)

    async def switched() -> float | None:
        assert run.reader is not None
        t: float | None = (await run.reader.ask("first", after=kill.at, store=other))["t"]
        return t

    async def noticed() -> bool:
        s = writer_server(run.historian.stats(), name)
        return s.get("downs", 0) > downs

    kill.switch_at = await poll_until(switched, SWITCH_TIMEOUT_S)
    if await poll_until(noticed, args.down + 5.0):
        kill.down_seen_at = time.monotonic()
    await asyncio.sleep(max(0.0, kill.at + args.down - time.monotonic()))
    t = time.monotonic()
    await asyncio.to_thread(server.restart, START_TIMEOUT_S)
    kill.restarted_at = time.monotonic()
    kill.restart_s = kill.restarted_at - t

    async def live() -> dict[str, Any] | None:
        s = writer_server(run.historian.stats(), name)
        return s if s.get("state") == "live" and s.get("downs", 0) > downs else None

    back = await poll_until(live, LIVE_TIMEOUT_S)
    if back is None:
        kill.error = f"{name} not live within {LIVE_TIMEOUT_S:.0f} s of its restart"
    else:
        kill.live_at = time.monotonic()
        kill.last_resync_ms = back.get("last_resync_ms")
        kill.resynced_rows = back.get("resynced", 0)
    if kill.switch_at is None:
        kill.error = kill.error or f"no read from {other} within {SWITCH_TIMEOUT_S:.0f} s"
    await asyncio.sleep(SAMPLE_S * 2)  # the last samples of the window
    window = samples_between(run, kill.at, time.monotonic())
    kill.write_stall_ms = max((s.get("writer", {}).get("write_recent_max_ms", 0.0)
                               for s in window), default=None)
    return kill


# --- historian mode --------------------------------------------------------------------------


async def server_max_seqs(run: Run) -> dict[str, dict[str, int]]:
    """Per server, per stream, the highest tick sequence it holds."""
    out: dict[str, dict[str, int]] = {}
    for name, server in run.ch.items():
        rows = await ch_query(server, f"SELECT stream, max(seq) FROM {DATABASE}.ticks "
                                      "GROUP BY stream")
        out[name] = {stream: int(seq) for stream, seq in rows}
    return out


async def published_seqs(run: Run) -> dict[str, int]:
    """The feed's checkpointed sequence per stream (P:seq)."""
    raw = await run.ticks_redis.hgetall(f"{PREFIX}:seq")
    return {k.decode(): int(v) for k, v in raw.items()}


async def kill_historian(run: Run, args: argparse.Namespace, n: int) -> Kill:
    """SIGKILL the historian, restart it after ``--down`` s, wait until it has caught up."""
    kill = Kill(n, "historian", time.monotonic())
    run.supervise = False
    run.historian.kill()
    await asyncio.sleep(args.down)
    t = time.monotonic()
    run.historian.start()
    run.supervise = True
    await historian_ready(run)
    kill.restarted_at = time.monotonic()
    kill.restart_s = kill.restarted_at - t
    target = await published_seqs(run)

    async def caught_up() -> bool:
        held = await server_max_seqs(run)
        return all(held[s].get(stream, 0) >= seq for s in held for stream, seq in target.items())

    if await poll_until(caught_up, CATCH_UP_TIMEOUT_S, poll_s=0.1):
        kill.live_at = time.monotonic()
    else:
        kill.error = f"the historian did not catch up within {CATCH_UP_TIMEOUT_S:.0f} s"
    await asyncio.sleep(0.6)  # its stats file after the catch-up (written every 0.5 s)
    now = run.historian.stats() or {}
    kill.backfilled = now.get("backfilled", 0)
    kill.tick_holes, kill.order_holes = now.get("tick_holes", 0), now.get("order_holes", 0)
    return kill


def historian_totals(run: Run) -> dict[str, int]:
    """Backfilled ticks and holes over every historian process of the run (each process's
    last stats: before its SIGKILL, or its final file after the clean stop)."""
    totals = {"backfilled": 0, "tick_holes": 0, "order_holes": 0, "processes": 0}
    prev: dict[str, Any] | None = None
    for _t, s in [*run.samples, (0.0, None)]:
        if prev is not None and (s is None or s.get("written", 0) < prev.get("written", 0)
                                 or s.get("ticks", 0) < prev.get("ticks", 0)):
            totals["processes"] += 1
            for k in ("backfilled", "tick_holes", "order_holes"):
                totals[k] += prev.get(k, 0)
        prev = s
    return totals


# --- the end: every server against what was published ----------------------------------------


async def ch_query(server: Any, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on one ClickHouse server (the driver is synchronous: a thread)."""
    def run() -> list[tuple[Any, ...]]:
        client = server.client(timeout=10.0)
        try:
            rows: list[tuple[Any, ...]] = client.execute(sql)
            return rows
        finally:
            client.disconnect()

    return await asyncio.to_thread(run)


async def history_stream(run: Run) -> tuple[int, list[Any]]:
    """Every entry of the order store's history stream and the position of its first."""
    entries: list[Any] = []
    after = 0
    while True:
        page = await run.store.history(after, HISTORY_PAGE)
        if not page:
            break
        entries.extend(page)
        after = page[-1].position
    return (entries[0].position if entries else 0), entries


def expected_orders(entries: list[Any]) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The (order id, updated_ns, src) of every order version and the (order id, seq) of every
    log entry in the history stream, converted as the historian converts them."""
    from protocols.history.records import append_write
    from protocols.history.schema import Columns, Table

    orders, execs = Columns(Table.ORDERS), Columns(Table.EXECUTIONS)
    for e in entries:
        append_write(orders, execs, e.position, e.record, e.entries)
    return (set(zip(orders.column("order_id"), orders.column("updated_ns"),
                    orders.column("src"), strict=True)),
            set(zip(execs.column("order_id"), execs.column("seq"), strict=True)))


def table_figures(expected: int, count: int, unique: int, held_expected: int) -> dict[str, int]:
    """Rows expected / lost / duplicated / extra of one table on one server: ``count`` raw
    rows, ``unique`` distinct keys, ``held_expected`` the expected keys among them."""
    return {"expected": expected, "lost": expected - held_expected,
            "duplicated": count - unique, "extra": unique - held_expected}


async def compare(run: Run, acked: list[Placed], *, orders: bool) -> dict[str, Any]:
    """Each server against the feed's checkpoints and (``orders``) the history stream."""
    published = await published_seqs(run)
    per: dict[str, dict[str, Any]] = {}
    first: dict[str, int] = {}
    stats: dict[str, dict[str, tuple[int, int, int, int]]] = {}
    for name, server in run.ch.items():
        rows = await ch_query(server, f"SELECT stream, count(), uniqExact(seq), min(seq), "
                                      f"max(seq) FROM {DATABASE}.ticks GROUP BY stream")
        stats[name] = {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
        for stream, (_c, _u, lo, _hi) in stats[name].items():
            first[stream] = min(lo, first.get(stream, lo))
    history_first, entries = (await history_stream(run)) if orders else (0, [])
    want_orders, want_execs = expected_orders(entries) if orders else (set(), set())
    acked_ids = {r.order_id for r in acked}
    for name, server in run.ch.items():
        ticks = {"expected": 0, "lost": 0, "duplicated": 0, "extra": 0}
        streams = {}
        for stream, top in published.items():
            lo = first.get(stream, 1)
            expected = max(0, top - lo + 1)
            count, unique, _lo, s_hi = stats[name].get(stream, (0, 0, lo, lo - 1))
            # The servers hold one contiguous run per stream from lo: what lies above the
            # checkpoint (it should be nothing) is extra, not held.
            extra = max(0, s_hi - top)
            f = table_figures(expected, count, unique, unique - extra)
            streams[stream] = f
            for k in ticks:
                ticks[k] += f[k]
        out: dict[str, Any] = {"ticks": ticks, "streams": streams}
        if orders:
            keys = await ch_query(server, f"SELECT order_id, updated_ns, src FROM "
                                          f"{DATABASE}.orders")
            held = set(keys)
            out["orders"] = table_figures(len(want_orders), len(keys), len(held),
                                          len(held & want_orders))
            ekeys = await ch_query(server, f"SELECT order_id, seq FROM {DATABASE}.executions")
            eheld = set(ekeys)
            out["executions"] = table_figures(len(want_execs), len(ekeys), len(eheld),
                                              len(eheld & want_execs))
            out["acked_orders_missing"] = len(acked_ids - {k[0] for k in held})
        for k in ("expected", "lost", "duplicated", "extra"):
            out[f"rows_{k}"] = sum(out[t][k] for t in ("ticks", "orders", "executions")
                                   if t in out)
        per[name] = out
    return {"servers": per, "history_first": history_first, "history_entries": len(entries),
            "published": published, "first_seq": first}


async def finish(run: Run, args: argparse.Namespace
                 ) -> tuple[dict[str, Any], list[Placed], float | None]:
    """Stop the load, count the orders, stop the feed and the backends cleanly, let the
    historian catch up (bounded)."""
    assert run.load is not None
    run.load.stop.set()
    await asyncio.gather(*run.loaders)
    if run.load.tasks:  # each ends by its deadline (OrderTimeout) at the latest
        await asyncio.wait(set(run.load.tasks), timeout=15.0)
    orders = await count_orders(run.load, run.redis, run.store, drain_timeout=args.drain_timeout)
    for name in ("feed", "primary", "backup", "executor"):  # clean: final checkpoints, writes
        run.nodes[name].stop()
    return orders, run.load.acked(), await catch_up(run)


async def catch_up(run: Run) -> float | None:
    """Wait until both servers hold every checkpointed tick and the whole history stream;
    the seconds it took (None: not within ``END_CATCH_UP_TIMEOUT_S``)."""
    began = time.monotonic()
    target = await published_seqs(run)
    top = await run.store.history_position()

    async def done() -> bool:
        held = await server_max_seqs(run)
        if not all(held[s].get(k, 0) >= v for s in held for k, v in target.items()):
            return False
        for server in run.ch.values():
            rows = await ch_query(server, f"SELECT max(src) FROM {DATABASE}.orders")
            if int(rows[0][0] or 0) < top:
                return False
        return True

    if await poll_until(done, END_CATCH_UP_TIMEOUT_S, poll_s=0.2):
        return round(time.monotonic() - began, 2)
    return None


# --- wipe mode -------------------------------------------------------------------------------


async def history_order_ids(run: Run) -> tuple[set[str], int]:
    """The order ids the active history server holds, and its orders watermark."""
    server = next(iter(run.ch.values()))
    ids = {r[0] for r in await ch_query(server, f"SELECT DISTINCT order_id FROM "
                                                f"{DATABASE}.orders")}
    top = await ch_query(server, f"SELECT max(src) FROM {DATABASE}.orders")
    return ids, int(top[0][0] or 0)


# bus.orders.rebuild's log line, in a backend's log (the drill's record of each rebuild).
_REBUILT = re.compile(r"rebuilt the order store from history: (\d+) records, (\d+) log entries "
                      r"restored in (\d+) ms \((\d+) logs cut at a hole, (\d+) rows unreadable\)")


def store_entry_order(fields: dict[bytes, bytes]) -> str:
    """The order id of one raw history stream entry (its record blob, field ``o``)."""
    from protocols.orders.codec import from_blob
    from protocols.orders.record import Order

    record = from_blob(fields[b"o"])
    return record.order_id if isinstance(record, Order) else ""


async def wipe(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """Stop the order path, wipe the order store, rebuild it from history, check it."""
    from bus.orders.client import OrderClient, OrderClientOptions
    from nodes.history.cli import open_reader

    assert run.load is not None
    # The wipe lands at the worst moment: under load, the order path crashing with it. The
    # placing stops, the pair and the executor are SIGKILLed together, and at once one Redis
    # transaction reads what the order store held (its history stream) and wipes it.
    run.load.stop.set()
    for name in ("primary", "backup", "executor"):
        run.nodes[name].kill()
    pipe = run.redis.pipeline(transaction=True)
    pipe.get(f"{PREFIX}:history:n")
    pipe.xrange(f"{PREFIX}:history", "-", "+")
    pipe.flushall()
    raw_position, stream, _ = await pipe.execute()
    wiped_at = time.monotonic()
    ids_at_wipe, top_at_wipe = await history_order_ids(run)
    position = int(raw_position or 0)
    await asyncio.gather(*run.loaders)
    if run.load.tasks:  # in flight at the crash: each ends by its deadline
        await asyncio.wait(set(run.load.tasks), timeout=15.0)
    acked = run.load.acked()
    acked_ids = {r.order_id for r in acked}
    in_store = {store_entry_order(fields) for _id, fields in stream}
    # What the historian had read before the wipe it still writes; then history is final.
    async def settled() -> bool:
        s = run.historian.stats() or {}
        _ids, top = await history_order_ids(run)
        return top >= s.get("order_position", 0) > 0

    await poll_until(settled, 10.0, poll_s=0.2)
    await asyncio.sleep(1.0)  # a batch on its way (batch_ms) lands
    ids_after, top_after = await history_order_ids(run)
    # The backends rebuild the wiped store from history before they serve
    # (BackendNode._rebuild); the drill only reads history to check what came back.
    started = time.monotonic()
    for name in ("primary", "backup", "executor"):
        run.nodes[name].start()
    await find_active(run.backends, run.redis, START_TIMEOUT_S)
    serving_s = time.monotonic() - started
    await asyncio.sleep(0.6)  # the backends' stats files (every 0.5 s) after the rebuild
    backend_stats = [run.nodes[k].stats() or {} for k in ("primary", "backup")]
    rebuilds = [tuple(int(g) for g in m.groups()) for k in ("primary", "backup")
                for m in _REBUILT.finditer(run.nodes[k].log_path.read_text(errors="replace"))]
    reader = await open_reader(run.cfg)
    try:
        hist_orders = await reader.orders(None, 0, END_OF_TIME)
        hist_execs = await reader.executions(None, 0, END_OF_TIME)
    finally:
        await reader.close()
    # Every order history holds: its latest version and its log are back.
    latest: dict[str, tuple[int, int, int]] = {}  # order id -> (src, state, exec_seq)
    for oid, src, state, xseq in zip(hist_orders.column("order_id"), hist_orders.column("src"),
                                     hist_orders.column("state"),
                                     hist_orders.column("exec_seq"), strict=True):
        if oid not in latest or src > latest[oid][0]:
            latest[oid] = (src, state, xseq)
    log_len: dict[str, int] = {}
    for oid in hist_execs.column("order_id"):
        log_len[oid] = log_len.get(oid, 0) + 1
    missing = mismatched = short_logs = 0
    for oid, (_src, state, xseq) in latest.items():
        order = await run.store.get(oid)
        if order is None:
            missing += 1
            continue
        if int(order.state) != state or order.exec_seq != xseq:
            mismatched += 1
        if len(await run.store.executions(oid)) < log_len.get(oid, 0):
            short_logs += 1
    # The idempotency keys: re-sending acked client order ids history holds answers with the
    # stored order, never a new one.
    resend = [r for r in acked if r.order_id in latest][:args.resend]
    resent_same = resent_new = 0
    resent_failed: dict[str, int] = {}
    client = OrderClient(OrderClientOptions.from_config(run.cfg, client_id="drill-resend"))
    await client.start()
    try:
        for r in resend:
            stored = await run.store.get(r.order_id)
            if stored is None:
                continue  # counted above as restored_missing
            try:  # the very order the client sent (a client's retry after the wipe)
                ack = await client.place(stored.order)
            except Exception as exc:  # counted: the drill reports, it does not hide
                why = getattr(exc, "reason", None)
                key = type(exc).__name__ + (f":{why.name}" if why is not None else "")
                resent_failed[key] = resent_failed.get(key, 0) + 1
                continue
            if ack.order_id == r.order_id:
                resent_same += 1
            else:
                resent_new += 1
    finally:
        await client.close()
    after = await count_orders(run.load, run.redis, run.store, drain_timeout=args.drain_timeout)
    return {
        "wipe": {
            "acked": len(acked), "store_position_at_wipe": position,
            "history_position_at_wipe": top_at_wipe,
            "history_entries_behind_at_wipe": position - top_at_wipe,
            # Acked orders the order store itself did not hold yet (the pair writes Redis
            # behind; both backends died with the wipe): not history's lag.
            "acked_missing_from_store_at_wipe": len(acked_ids - in_store),
            "acked_missing_from_history_at_wipe": len(acked_ids - ids_at_wipe),
            "acked_in_store_missing_from_history_at_wipe": len((acked_ids & in_store)
                                                               - ids_at_wipe),
            "acked_missing_from_history_after_flush": len(acked_ids - ids_after),
            "history_position_after_flush": top_after,
            "wipe_to_backend_start_s": round(started - wiped_at, 2),
            "rebuild_ms": max((r[2] for r in rebuilds), default=0), "rebuilt_by": "the backends",
            "records_restored": sum(b.get("rebuilt_records", 0) for b in backend_stats),
            "entries_restored": sum(b.get("rebuilt_entries", 0) for b in backend_stats),
            "log_holes": sum(r[3] for r in rebuilds), "bad_rows": sum(r[4] for r in rebuilds),
            "backend_start_to_serving_s": round(serving_s, 2),
            "backend_rebuilds_logged": len(rebuilds),
            "history_orders": len(latest), "restored_missing": missing,
            "restored_mismatched": mismatched, "restored_short_logs": short_logs,
            "resent": len(resend), "resent_same_order": resent_same,
            "resent_new_order": resent_new, "resent_failed": sum(resent_failed.values()),
            "resent_failed_by": resent_failed,
            "executed_after_rebuild": after["executed"],
            "lost_after_rebuild": after["lost"], "duplicated_after_rebuild": after["duplicated"],
        },
        "orders_after": after,
    }


# --- one mode --------------------------------------------------------------------------------


async def run_mode(mode: str, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    run = Run(mode, run_dir)
    kills: list[Kill] = []
    sampler: asyncio.Task[None] | None = None
    try:
        await start_mesh(run, args)
        sampler = asyncio.create_task(sample_historian(run))
        load_start = time.monotonic()
        await asyncio.sleep(args.warmup)
        kill_error = ""
        extra: dict[str, Any] = {}
        if mode == "wipe":
            await asyncio.sleep(max(0.0, args.load - args.warmup))
            extra = await wipe(run, args)
            for name in ("primary", "backup", "executor"):
                run.nodes[name].stop()
            run.nodes["feed"].stop()
            end_catch_up = await catch_up(run)
            orders = extra["orders_after"]
            acked: list[Placed] = []
        else:
            for n in range(args.kills):
                try:
                    kill = await (kill_server(run, args, n + 1) if mode == "clickhouse"
                                  else kill_historian(run, args, n + 1))
                except DrillError as exc:
                    kill_error = f"kill {n + 1}: {exc}"
                    break
                kills.append(kill)
                await asyncio.sleep(args.settle)
            orders, acked, end_catch_up = await finish(run, args)
        load_s = time.monotonic() - load_start
        run.supervise = False
        run.historian.stop()  # clean: the final stats file
        await asyncio.sleep(SAMPLE_S * 3)
        rows = await compare(run, acked, orders=mode != "wipe")
        reads = await run.reader.ask("stop") if run.reader is not None else {}
        extra["end_catch_up_s"] = end_catch_up
        return summarize(mode, args, kills, orders, rows, reads, run, kill_error, load_s, extra)
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        await cleanup(run)


async def cleanup(run: Run) -> None:
    await close_load(run.load)
    if run.reader is not None:
        await run.reader.stop()
    for node in run.nodes.values():
        node.stop()
    if run.store is not None:
        with contextlib.suppress(Exception):
            await run.store.close()
    for r in (run.redis, run.ticks_redis):
        if r is not None:
            with contextlib.suppress(Exception):
                await r.aclose()
    for server in [*run.ch.values(), run.rtss, run.rts]:
        if server is not None:
            await asyncio.to_thread(server.stop)


# --- figures ---------------------------------------------------------------------------------


def summarize(mode: str, args: argparse.Namespace, kills: list[Kill], orders: dict[str, Any],
              rows: dict[str, Any], reads: dict[str, Any], run: Run, kill_error: str,
              load_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    switch = [v for k in kills if (v := k.ms(k.switch_at)) is not None]
    stalls = [k.write_stall_ms for k in kills if k.write_stall_ms is not None]
    resync = [round(k.live_at - k.restarted_at, 2) for k in kills
              if k.live_at is not None and k.restarted_at is not None]
    totals = historian_totals(run)
    final = run.historian.stats() or {}
    # Writes outside the outages (and the 2 s the recent maximum looks back): the baseline
    # the stall during one is to be read against.
    windows = [(k.at, (k.live_at or k.at + LIVE_TIMEOUT_S) + 2.5) for k in kills]
    calm = [st.get("writer", {}).get("write_recent_max_ms", 0.0) for t, st in run.samples
            if not any(a <= t <= b for a, b in windows)]
    servers = rows["servers"]
    summary: dict[str, Any] = {
        "mode": mode,
        "kills": len(kills), "kills_requested": args.kills if mode != "wipe" else 0,
        "kill_error": kill_error,
        "read_switch_ms_p50": percentile(switch, 0.5),
        "read_switch_ms_p99": percentile(switch, 0.99),
        "read_switch_ms_max": max(switch, default=None),
        "write_stall_ms_max": max(stalls, default=None),
        "write_calm_ms_max": max(calm, default=None),
        "resync_s_p50": percentile(resync, 0.5), "resync_s_p99": percentile(resync, 0.99),
        "catch_up_s_max": max(resync, default=None) if mode == "historian" else None,
        **{f"rows_{k}": sum(s[f"rows_{k}"] for s in servers.values())
           for k in ("expected", "lost", "duplicated", "extra")},
        "servers": servers,
        "history_entries": rows["history_entries"], "history_first": rows["history_first"],
        "published": rows["published"], "first_seq": rows["first_seq"],
        "end_catch_up_s": extra.get("end_catch_up_s"),
        "historian_exits": len(run.historian_exits), "historian_exit_logs": run.historian_exits,
        "historian": {**totals, "lag_ms_p99_last": final.get("lag_ms_p99"),
                      "write_max_ms_last": final.get("writer", {}).get("write_max_ms"),
                      "spooled_last": final.get("writer", {}).get("spooled"),
                      "starts": run.historian.starts},
        "reader": {k: reads.get(k) for k in ("switches", "unanswered", "switch_ms_p50",
                                             "switch_ms_p99", "switch_ms_max", "reads",
                                             "failed")} if reads else {},
        **{k: orders.get(k) for k in ("sent", "acked", "rejected", "timed_out", "executed",
                                      "lost", "duplicated", "ack_mismatch")},
        "tick_rate": args.tick_rate, "order_rate": args.order_rate, "load_s": round(load_s, 1),
        "down_s": args.down, "settle_s": args.settle,
        "per_kill": [{
            "n": k.n, "killed": k.target, "read_switch_ms": k.ms(k.switch_at),
            "writer_noticed_ms": k.ms(k.down_seen_at),
            "write_stall_ms": k.write_stall_ms, "restart_ms": round(k.restart_s * 1000),
            ("catch_up_s" if mode == "historian" else "resync_s"):
                None if k.live_at is None or k.restarted_at is None
                else round(k.live_at - k.restarted_at, 2),
            "last_resync_ms": k.last_resync_ms, "resynced_rows": k.resynced_rows,
            "backfilled": k.backfilled, "tick_holes": k.tick_holes,
            "order_holes": k.order_holes, "error": k.error} for k in kills],
    }
    if "wipe" in extra:
        summary["wipe"] = extra["wipe"]
    summary["orders_lost_to_history"] = sum(s.get("acked_orders_missing", 0)
                                            for s in servers.values())
    return summary


def passed(s: dict[str, Any]) -> bool:
    ok = (s["rows_lost"] == 0 and s["rows_duplicated"] == 0 and not s["kill_error"]
          and s["kills"] == s["kills_requested"]
          and all(not k["error"] for k in s["per_kill"])
          and not s["lost"] and not s["duplicated"])
    if s["mode"] == "clickhouse":
        ok = ok and s["read_switch_ms_p99"] is not None
    if s["mode"] == "wipe":
        w = s["wipe"]
        ok = (s["rows_lost"] == 0 and s["rows_duplicated"] == 0 and w["restored_missing"] == 0
              and w["restored_mismatched"] == 0 and w["restored_short_logs"] == 0
              and w["resent_new_order"] == 0 and w["duplicated_after_rebuild"] == 0
              and w["lost_after_rebuild"] <= w["acked_missing_from_history_after_flush"])
    return ok


def targets(s: dict[str, Any]) -> dict[str, bool]:
    out = {"rows_lost_0": s["rows_lost"] == 0, "rows_duplicated_0": s["rows_duplicated"] == 0}
    if s["mode"] == "clickhouse":
        out["read_switch_p99_le_200ms"] = (s["read_switch_ms_p99"] is not None
                                           and s["read_switch_ms_p99"] <= TARGET_SWITCH_MS)
    if s["mode"] == "historian":
        out["historian_holes_0"] = (s["historian"]["tick_holes"] == 0
                                    and s["historian"]["order_holes"] == 0)
    return out


def markdown(s: dict[str, Any], command: str) -> str:
    modes = s["modes"] if s["mode"] == "all" else {s["mode"]: s}
    lines = ["# ClickHouse failover drill", "", f"{s['date']}, {s['machine']}. Command: "
             f"`{command}`", "", f"Result: **{'PASS' if s['ok'] else 'FAIL'}**", ""]
    for mode, m in modes.items():
        lines += [f"## Mode {mode}: {'PASS' if m['ok_mode'] else 'FAIL'}", "",
                  "| figure | value |", "|---|---|",
                  f"| load | {m['tick_rate']:g} ticks/s, {m['order_rate']:g} orders/s for "
                  f"{m['load_s']} s |"]
        if mode != "wipe":
            lines.append(f"| kills (requested) | {m['kills']} ({m['kills_requested']}), "
                         f"down {m['down_s']:g} s each |")
        if mode == "clickhouse":
            lines += [f"| read switch ms p50 / p99 / max | {dash(m['read_switch_ms_p50'])} / "
                      f"{dash(m['read_switch_ms_p99'])} / {dash(m['read_switch_ms_max'])} |",
                      f"| longest historian write while a server was down / outside the "
                      f"outages, ms | {dash(m['write_stall_ms_max'])} / "
                      f"{dash(m['write_calm_ms_max'])} |",
                      f"| re-sync s p50 / p99 (restart -> live) | {dash(m['resync_s_p50'])} / "
                      f"{dash(m['resync_s_p99'])} |"]
        if mode == "historian":
            h = m["historian"]
            lines += [f"| catch-up s max (restart -> both servers hold every checkpointed "
                      f"tick) | {dash(m['catch_up_s_max'])} |",
                      f"| backfilled from Redis / tick holes / order holes | {h['backfilled']} "
                      f"/ {h['tick_holes']} / {h['order_holes']} |"]
        lines += [f"| the end: historian caught up in, s | {dash(m['end_catch_up_s'])} |",
                  f"| historian exits nobody asked for (restarted) | {m['historian_exits']} |",
                  f"| orders sent / acked / executed | {dash(m['sent'])} / {dash(m['acked'])} "
                  f"/ {dash(m['executed'])} |",
                  f"| orders lost / duplicated (order store) | {dash(m['lost'])} / "
                  f"{dash(m['duplicated'])} |",
                  f"| **rows expected / lost / duplicated / extra (all servers)** | "
                  f"{m['rows_expected']} / {m['rows_lost']} / {m['rows_duplicated']} / "
                  f"{m['rows_extra']} |", ""]
        lines += markdown_table(
            ["server", "ticks exp/lost/dup", "orders exp/lost/dup", "executions exp/lost/dup",
             "acked orders missing"],
            [[name, _eld(v["ticks"]), _eld(v.get("orders")), _eld(v.get("executions")),
              dash(v.get("acked_orders_missing"))] for name, v in m["servers"].items()])
        if m["per_kill"]:
            key = "catch_up_s" if mode == "historian" else "resync_s"
            lines += ["", *markdown_table(
                ["kill", "killed", "read switch ms", "writer noticed ms", "write stall ms",
                 "restart ms", key.replace("_", " "), "writer re-sync ms", "rows re-synced",
                 "backfilled", "tick holes", "error"],
                [[k["n"], k["killed"], k["read_switch_ms"], k["writer_noticed_ms"],
                  k["write_stall_ms"], k["restart_ms"], k[key], k["last_resync_ms"],
                  k["resynced_rows"], k["backfilled"], k["tick_holes"], k["error"] or "-"]
                 for k in m["per_kill"]])]
        if mode == "wipe":
            lines += ["", *markdown_table(["wipe figure", "value"],
                                          [[k, v] for k, v in m["wipe"].items()])]
        lines += ["", f"Historian: {json.dumps(m['historian'])}",
                  f"Reader: {json.dumps(m['reader'])}", ""]
    return "\n".join(lines)


def _eld(t: dict[str, int] | None) -> str:
    return "-" if t is None else f"{t['expected']} / {t['lost']} / {t['duplicated']}"


def human(s: dict[str, Any]) -> str:
    modes = s["modes"] if s["mode"] == "all" else {s["mode"]: s}
    rows: list[tuple[str, str]] = []
    for mode, m in modes.items():
        rows.append((f"[{mode}]", "PASS" if m["ok_mode"] else "FAIL"))
        if mode == "clickhouse":
            rows += [("read switch ms p50/p99/max", f"{dash(m['read_switch_ms_p50'])} / "
                      f"{dash(m['read_switch_ms_p99'])} / {dash(m['read_switch_ms_max'])}"),
                     ("write stall ms max (calm)", f"{dash(m['write_stall_ms_max'])} "
                                                   f"({dash(m['write_calm_ms_max'])})"),
                     ("resync s p50/p99", f"{dash(m['resync_s_p50'])} / "
                                          f"{dash(m['resync_s_p99'])}")]
        if mode == "historian":
            h = m["historian"]
            rows += [("catch-up s max", dash(m["catch_up_s_max"])),
                     ("backfilled / holes", f"{h['backfilled']} / "
                                            f"{h['tick_holes'] + h['order_holes']}")]
        if mode == "wipe":
            w = m["wipe"]
            rows += [("acked missing from history at wipe",
                      str(w["acked_missing_from_history_at_wipe"])),
                     ("restored / missing", f"{w['records_restored']} / "
                                            f"{w['restored_missing']}"),
                     ("resent: same / new", f"{w['resent_same_order']} / "
                                            f"{w['resent_new_order']}")]
        rows += [("end catch-up s", dash(m["end_catch_up_s"])),
                 ("historian exits (unasked)", str(m["historian_exits"])),
                 ("rows expected/lost/dup", f"{m['rows_expected']} / {m['rows_lost']} / "
                                            f"{m['rows_duplicated']}"),
                 ("orders acked / lost / dup", f"{dash(m['acked'])} / {dash(m['lost'])} / "
                                               f"{dash(m['duplicated'])}")]
    rows.append(("result", "PASS" if s["ok"] else "FAIL"))
    return aligned(rows)


# --- main ------------------------------------------------------------------------------------


async def run_drill(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    modes = MODES if args.mode == "all" else (args.mode,)
    done: dict[str, dict[str, Any]] = {}
    for mode in modes:
        d = run_dir / mode if len(modes) > 1 else run_dir
        d.mkdir(parents=True, exist_ok=True)
        s = await run_mode(mode, args, d)
        s["ok_mode"] = passed(s)
        s["targets"] = targets(s)
        done[mode] = s
    if len(modes) == 1:
        return done[modes[0]]
    first = done["clickhouse"]
    keys = ("kills", "read_switch_ms_p50", "read_switch_ms_p99", "write_stall_ms_max",
            "resync_s_p50", "resync_s_p99", "servers")
    return {"mode": "all", **{k: first[k] for k in keys},
            **{f"rows_{k}": sum(m[f"rows_{k}"] for m in done.values())
               for k in ("expected", "lost", "duplicated", "extra")},
            "ok_mode": all(m["ok_mode"] for m in done.values()), "modes": done}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_reader":
        return _reader_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=(*MODES, "all"), default="clickhouse")
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs (default 5)")
    p.add_argument("--tick-rate", type=float, default=10_000.0, help="ticks/s in all")
    p.add_argument("--symbols", type=int, default=4, help="streams the feed publishes")
    p.add_argument("--order-rate", type=float, default=200.0, help="orders/s in all")
    p.add_argument("--clients", type=int, default=2, help="order clients (default 2)")
    p.add_argument("--down", type=float, default=3.0, help="seconds a killed process stays down")
    p.add_argument("--settle", type=float, default=2.5, help="seconds between kills")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before kill 1")
    p.add_argument("--load", type=float, default=20.0, help="wipe: seconds of load before it")
    p.add_argument("--resend", type=int, default=20, help="wipe: acked orders re-sent after")
    p.add_argument("--batch-ms", type=float, default=200.0, help="[history] batch_ms")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="seconds to wait for acked orders to execute at the end")
    p.add_argument("--report", type=Path, help="markdown report (default: in the run dir)")
    p.add_argument("--run-dir", type=Path, help="logs, stats, data (default: a temp dir)")
    p.add_argument("--log-level", default="INFO", help="the nodes' log level")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    args = p.parse_args(argv)
    if (args.kills < 1 or args.tick_rate <= 0 or args.order_rate <= 0 or args.clients < 1
            or not 1 <= args.symbols <= len(SYMBOLS) or args.down <= 0):
        p.error("--kills, --tick-rate, --order-rate, --clients, --down must be positive, "
                f"--symbols 1-{len(SYMBOLS)}")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="tickmesh-drill-ch-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    report = args.report or run_dir / "drill-clickhouse-failover.md"
    command = "./scripts/drill-clickhouse-failover " + " ".join(
        argv if argv is not None else sys.argv[1:])
    unwind_on_sigterm()
    try:
        summary = asyncio.run(run_drill(args, run_dir))
    except (DrillError, OSError) as exc:
        print(f"drill-clickhouse-failover: {exc} (logs in {run_dir})", file=sys.stderr)
        if args.json:
            print(json_line({"ok": False, "error": str(exc), "run_dir": str(run_dir)}))
        return 2
    except KeyboardInterrupt:
        print(f"drill-clickhouse-failover: interrupted (logs in {run_dir})", file=sys.stderr)
        return 2
    return conclude(summary, ok=summary["ok_mode"], run_dir=run_dir, report=report,
                    markdown=lambda s: markdown(s, command.strip()), human=human,
                    as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
