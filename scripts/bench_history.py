#!/usr/bin/env python3
"""History benchmark: the historian's ingest and bar queries beside the raw drivers, in one run.

    ./scripts/bench-history                  # 10 M ticks per store: ~5 min quiet, 13.5 loaded
    ./scripts/bench-history --ticks 1000000 --live-seconds 0 --json
    ./scripts/bench-history --report bench-history.md

Everything runs on loopback: two clickhouse-server processes (Debian's 18.16) that the bench
starts on free ports with data directories of its own, DuckDB files in its work directory, and
for the live step a whole mesh under ``tickmesh up``. Every process it started is stopped
before it exits. Issue 11 item 7; docs/BENCHMARKS.md, "Issue 11: history ingest and bar
queries", gives the method and the results.

Steps, in this order, every figure beside its raw reference of the same run:

1. **Raw ClickHouse**: the first ``--raw-ticks`` ticks of the replay (deterministic: 4
   symbols, a random walk of bid/ask, about 10 ticks/s per symbol with random gaps, from
   2026-11-02 00:00 UTC) in batches of ``--batch-rows`` rows, each batch built as columns
   *before* the clock runs, then inserted by clickhouse-driver (``execute(INSERT, columns,
   columnar=True)``, lz4: the store's own ``insert_columns``) into both servers at once from
   two threads, as the writer does. Rows/s = rows held by both over the summed insert times.
   Into a database of its own, dropped before the historian runs.
2. **Historian → ClickHouse pair**: a child process builds a ``Historian`` around
   ``open_writer``'s ``HistoryWriter([server A, server B], spool)`` without starting its
   subscriber, opens the writer and replays all ``--ticks`` ticks into ``Historian.replay``
   (runs of ``--run`` ticks of one symbol into ``ingest``, the node's own flusher and
   back-pressure; it builds the bars too). Rows/s = tick rows held by **both** servers at the
   end (distinct keys, counted on each) over the time from the first tick to the last write.
   The child reports its CPU seconds (all threads, the replay that feeds it included) and
   peak RSS (VmHWM): the historian's own.
3. **Raw DuckDB** (the first ``--raw-ticks`` ticks; ``insert_arrow``, the Arrow table built
   from the columns inside the clock, since the historian must build it too) into a file of
   its own, then **historian → DuckDB** (``HistoryWriter([DuckDBHistoryStore(file)])``), as
   in 1 and 2.
4. **Bar queries** on each store, after all ``--ticks`` ticks are in it: ``--queries`` times,
   at random end points, ``store.bars(stream, 60, start, end, countback=1000)`` (the store:
   its worker thread, the SQL, the conversion to ``Columns``), the **same SQL** through the
   raw driver, and (every ``--agg-every``-th end point) the raw aggregation of the same minutes
   from the ticks table, the reason bars are stored. Interleaved, so noise hits all alike.
5. **Live** (``--live-seconds``, 0 skips it): ``tickmesh up`` with a feed at 10,000 ticks/s,
   recovery, Redis and the monitor, and ``tickmesh historian`` beside it on the same
   ClickHouse pair (database ``live``; the TCP path); after ``--live-seconds`` the
   historian is stopped (its final write) and its stats give its lag p50/p99 (a batch's oldest
   feed time to the batch written) and holes.

The ticks count tick rows only: the historian also writes a bar row per closed bar (about one
per ten ticks at these rates is the 1 s bar), which raw does not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from nodes.drills.measure import latency_ms, peak_rss_mb
from nodes.drills.ports import free_port, tcp_endpoint, udp_address
from nodes.drills.procs import Children, LineChild, stop_process
from nodes.drills.report import drive, fmt, machine, markdown_table
from protocols.errors import DrillError
from protocols.history.schema import NS_PER_S, Columns, Table

SYMBOLS = {"EURUSD": 1.0850, "GBPUSD": 1.2700, "USDJPY": 151.20, "XAUUSD": 2650.0}
START_NS = 1_793_577_600 * NS_PER_S  # 2026-11-02 00:00:00 UTC, a Monday
MEAN_GAP_NS = 100_000_000  # ~10 ticks/s per symbol
SESSION = 1
BAR_RES_S = 60
COUNTBACK = 1000
DATABASE = "tickmesh"
RAW_DATABASE = "bench_raw"
LIVE_DATABASE = "live"
LIVE_RATE = 10_000.0
TARGETS = {"rows_per_s": 100_000, "ratio": 0.8, "bars_p99_ms": 50.0, "live_lag_p99_ms": 1000.0}
CHILD_TIMEOUT_S = 1800.0
LIVE_MARGIN_S = 60.0  # up runs until the bench stops it; --for only bounds a bench that died


def _say(msg: str) -> None:
    print(f"bench-history: {msg}", file=sys.stderr, flush=True)


# ============================================================================================
# The ticks: one deterministic replay, the same for the historian and the raw references
# ============================================================================================


def tick_runs(n: int, run: int, seed: int) -> Iterator[tuple[str, int, int, list[Any]]]:
    """``n`` ticks as runs of (stream, session, first_seq, rows) of ``run`` ticks of one symbol,
    the symbols in turn; rows are ``protocols.ticks.messages.Row`` (bid, ask, last, volume,
    source time, feed time). Steps and gaps come from tables drawn once, so generating costs
    little beside what is measured."""
    rnd = random.Random(seed)
    size = 1 << 14
    steps = [rnd.gauss(0.0, 1.0) for _ in range(size)]
    gaps = [max(1_000_000, int(rnd.expovariate(1 / MEAN_GAP_NS))) for _ in range(size)]
    state = {s: [p, START_NS + i * 7_000_000, 1, rnd.randrange(size)]
             for i, (s, p) in enumerate(SYMBOLS.items())}
    left = n
    while left > 0:
        for stream, st in state.items():
            k = min(run, left)
            if k <= 0:
                return
            price, ts, seq, j = st
            scale = price * 2e-5
            half = price * 1e-5
            rows = []
            for _ in range(k):
                price += steps[j] * scale
                ts += gaps[j]
                j = (j + 1) & (size - 1)
                rows.append((round(price - half, 5), round(price + half, 5), 0.0, 0.0, ts,
                             ts + 150_000))
            yield stream, SESSION, seq, rows
            st[0], st[1], st[2], st[3] = price, ts, seq + k, j
            left -= k


def tick_batches(n: int, run: int, seed: int, batch_rows: int) -> Iterator[Columns]:
    """The same ticks as :func:`tick_runs`, as ``Columns`` batches of ``batch_rows`` rows."""
    batch = Columns(Table.TICKS)
    cols = [batch.column(c) for c in batch.spec.names]
    for stream, session, first, rows in tick_runs(n, run, seed):
        for i, (bid, ask, last, vol, ts, feed) in enumerate(rows):
            for col, v in zip(cols, (stream, first + i, session, ts, feed, bid, ask, last, vol),
                              strict=True):
                col.append(v)
        if len(batch) >= batch_rows:
            yield batch
            batch = Columns(Table.TICKS)
            cols = [batch.column(c) for c in batch.spec.names]
    if len(batch):
        yield batch


def _generation_s_per_m(run: int, seed: int, n: int = 200_000) -> float:
    """CPU seconds per million ticks that :func:`tick_runs` alone costs (inside the historian's
    CPU figure, which includes the replay that feeds it)."""
    t0 = time.process_time()
    for _ in tick_runs(n, run, seed):
        pass
    return (time.process_time() - t0) * 1e6 / n


# ============================================================================================
# Child role: the historian's ingest, in a process of its own (its CPU and RSS are its own)
# ============================================================================================


def _historian_child(argv: list[str]) -> int:
    """``_historian SPEC``: build the historian on the writer of SPEC's [history], replay the
    ticks into it and print one JSON line with its timings, CPU, peak RSS and stats."""
    from dataclasses import asdict

    from bus.config import HistorySection, MeshConfig, RedisSection
    from nodes.common import setup_logging
    from nodes.history.historian import Historian, open_writer

    spec = json.loads(argv[0])
    setup_logging("WARNING")
    # Nothing answers at this Redis: the historian's Redis clients connect lazily, and a
    # replay of consecutive ticks never needs a backfill.
    cfg = MeshConfig(redis=RedisSection(url=spec["redis_url"]),
                     history=HistorySection(**spec["history"])).validate()

    async def main() -> dict[str, Any]:
        writer = open_writer(cfg, Path(spec["root"]))
        historian = Historian(cfg, writer)
        try:
            await writer.open()
            _warm_up()
            cpu0, t0 = time.process_time(), time.perf_counter()
            await historian.replay(tick_runs(spec["ticks"], spec["run"], spec["seed"]))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            return {"elapsed_s": elapsed, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(os.getpid()),
                    "stats": asdict(historian.stats), "writer": writer.stats()}
        finally:
            await historian.close()

    out = _run_loop(main())
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


def _warm_up() -> None:
    """Pay the one-time costs outside the clock, on both sides: pyarrow's first table
    imports pandas (0.3-2 s here), which a node pays once at start."""
    from bus.store.history_duck import arrow_table

    arrow_table(Columns(Table.TICKS))


def _run_loop(coro: Any) -> Any:
    """Run on uvloop, as the tickmesh nodes do, when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


ROLES = {"_historian": _historian_child}


# ============================================================================================
# Orchestration
# ============================================================================================


def run_historian(procs: Children, name: str, history: dict[str, Any], root: Path,
                  args: argparse.Namespace) -> dict[str, Any]:
    """The historian child of one store: its result line."""
    spec = {"history": {"batch_rows": args.batch_rows, **history}, "root": str(root),
            "ticks": args.ticks, "run": args.run, "seed": args.seed,
            "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    proc = procs.start(name, [sys.executable, str(Path(__file__).resolve()), "_historian",
                              json.dumps(spec)], pipes=True)
    try:
        return LineChild(proc, name).read(CHILD_TIMEOUT_S)
    except DrillError as exc:
        raise DrillError(f"{exc}:\n{procs.log_tail(name)}") from None
    finally:
        stop_process(proc)


def _ch_client(server: Any, timeout: float = 60.0) -> Any:
    from clickhouse_driver import Client

    return Client(server.host, port=server.port, compression="lz4", connect_timeout=5,
                  send_receive_timeout=timeout, sync_request_timeout=timeout)


def ch_held(client: Any, database: str) -> dict[str, int]:
    """Tick rows a server holds: ``rows`` and ``distinct`` (stream, seq) keys."""
    ((rows, distinct),) = client.execute(
        f"SELECT count(), uniqExact(stream, seq) FROM {database}.ticks")
    return {"rows": int(rows), "distinct": int(distinct)}


def _held_on_each(servers: list[Any], database: str) -> list[dict[str, int]]:
    out = []
    for s in servers:
        client = _ch_client(s)
        try:
            out.append(ch_held(client, database))
        finally:
            client.disconnect()
    return out


def raw_clickhouse(servers: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The raw reference: the batches into both servers at once, two threads, lz4."""
    from bus.store.history_ch import clickhouse_dialect, insert_columns
    from bus.store.history_sql import create_table
    from protocols.history.schema import TABLES

    clients = [_ch_client(s) for s in servers]
    ddl = create_table(clickhouse_dialect(RAW_DATABASE), TABLES[Table.TICKS])
    for c in clients:
        c.execute(f"DROP DATABASE IF EXISTS {RAW_DATABASE}")
        c.execute(f"CREATE DATABASE {RAW_DATABASE}")
        c.execute(ddl)
    n = min(args.ticks, args.raw_ticks or args.ticks)
    spent, batches = 0.0, 0
    try:
        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            for batch in tick_batches(n, args.run, args.seed, args.batch_rows):
                t0 = time.perf_counter()
                for f in [pool.submit(insert_columns, c, RAW_DATABASE, batch) for c in clients]:
                    f.result()
                spent += time.perf_counter() - t0
                batches += 1
        held = [ch_held(c, RAW_DATABASE) for c in clients]
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.execute(f"DROP DATABASE IF EXISTS {RAW_DATABASE}")
            c.disconnect()
    both = min(h["distinct"] for h in held)
    return {"ticks": n, "batches": batches, "insert_s": round(spent, 3),
            "rows_per_s": round(both / spent) if spent else math.nan, "held": held,
            "threads": len(clients)}


def raw_duckdb(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The raw reference: the batches by ``insert_arrow`` (Arrow build included)."""
    import duckdb

    from bus.store.history_duck import DUCKDB, insert_arrow
    from bus.store.history_sql import create_table
    from protocols.history.schema import TABLES

    _warm_up()
    conn = duckdb.connect(str(path))
    try:
        conn.execute(create_table(DUCKDB, TABLES[Table.TICKS]))
        n = min(args.ticks, args.raw_ticks or args.ticks)
        spent, batches = 0.0, 0
        for batch in tick_batches(n, args.run, args.seed, args.batch_rows):
            t0 = time.perf_counter()
            insert_arrow(conn, batch)
            spent += time.perf_counter() - t0
            batches += 1
        row = conn.execute("SELECT count(*), count(DISTINCT (stream, seq)) FROM ticks").fetchone()
        assert row is not None
    finally:
        conn.close()
    path.unlink(missing_ok=True)
    return {"ticks": n, "batches": batches, "insert_s": round(spent, 3),
            "rows_per_s": round(int(row[1]) / spent) if spent else math.nan,
            "held": {"rows": int(row[0]), "distinct": int(row[1])}}


def historian_figures(child: dict[str, Any], both: int, gen_s_per_m: float) -> dict[str, Any]:
    """The historian's ingest figures from its child's line and the rows held everywhere."""
    el, cpu, ticks = child["elapsed_s"], child["cpu_s"], child["stats"]["ticks"]
    per_m = cpu * 1e6 / ticks if ticks else math.nan
    return {"elapsed_s": round(el, 3), "rows_on_all": both,
            "rows_per_s": round(both / el) if el else math.nan,
            "cpu_s": round(cpu, 2), "cpu_s_per_m_ticks": round(per_m, 2),
            "cpu_s_per_m_ticks_without_replay": round(per_m - gen_s_per_m, 2),
            "cpu_pct": round(100 * cpu / el, 1) if el else math.nan,
            "peak_rss_mb": round(child["peak_rss_mb"], 1), "stats": child["stats"],
            "writer": child["writer"]}


# -- bar queries -------------------------------------------------------------------------------


def end_points(spans: dict[str, tuple[int, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` (stream, end_ns) pairs, at random whole minutes at least ``COUNTBACK`` minutes
    after each stream's first tick when it spans that (else in its second half)."""
    rnd = random.Random(seed + 1)
    step = BAR_RES_S * NS_PER_S
    out = []
    streams = sorted(spans)
    for _ in range(n):
        s = rnd.choice(streams)
        lo, hi = spans[s]
        first = lo + min(COUNTBACK * step, (hi - lo) // 2)
        end = rnd.randrange(first, hi + 1)
        out.append((s, end - end % step))
    return out


def _agg_sql(d: Any, table: str) -> str:
    """OHLCV of one-minute buckets of the mid price straight from the ticks table."""
    mid = "(bid + ask) / 2"
    if d.name == "clickhouse":
        bucket = f"toStartOfMinute(toDateTime(intDiv(ts_ns, {NS_PER_S}), 'UTC'))"
        count = "count()"
    else:
        bucket = f"ts_ns // {BAR_RES_S * NS_PER_S}"
        count = "count(*)"
    p = d.placeholder
    return (f"SELECT {bucket} AS m, argMin({mid}, seq), max({mid}), min({mid}), "
            f"argMax({mid}, seq), sum(volume), {count} FROM {table} "
            f"WHERE stream = {p('s')} AND ts_ns >= {p('lo')} AND ts_ns < {p('hi')} "
            f"GROUP BY m ORDER BY m")


async def bar_queries(store: Any, run_sql: Any, dialect: Any, points: list[tuple[str, int]],
                      agg_every: int) -> dict[str, Any]:
    """Per end point: ``store.bars`` (countback), the same SQL through ``run_sql`` (the raw
    driver, called on this thread), and every ``agg_every``-th time the aggregation of the
    same minutes from the ticks. Latencies in ms, and the bars each returned."""
    from bus.store.history_sql import range_query

    ticks_table = dialect.table(_spec(Table.TICKS))
    agg = _agg_sql(dialect, ticks_table)
    lat: dict[str, list[int]] = {"store": [], "raw": [], "agg": []}
    got: dict[str, list[int]] = {"store": [], "raw": [], "agg": []}
    pc = time.perf_counter_ns
    for i, (stream, end) in enumerate(points):
        t0 = pc()
        bars = await store.bars(stream, BAR_RES_S, 0, end, countback=COUNTBACK)
        lat["store"].append(pc() - t0)
        got["store"].append(len(bars))
        q = range_query(dialect, Table.BARS, {"stream": stream, "res_s": BAR_RES_S}, None, end,
                        COUNTBACK, newest_first=True)
        t0 = pc()
        rows = run_sql(q.sql, q.params)
        lat["raw"].append(pc() - t0)
        got["raw"].append(len(rows[0]) if rows else 0)
        if agg_every and i % agg_every == 0:
            lo = end - COUNTBACK * BAR_RES_S * NS_PER_S
            t0 = pc()
            rows = run_sql(agg, {"s": stream, "lo": lo, "hi": end})
            lat["agg"].append(pc() - t0)
            got["agg"].append(len(rows[0]) if rows else 0)
    return {k: {**latency_ms(v), "n": len(v), "bars_min": min(got[k], default=0),
                "bars_max": max(got[k], default=0)} for k, v in lat.items()}


def _spec(table: Table) -> Any:
    from protocols.history.schema import TABLES

    return TABLES[table]


def spans_of(rows: list[list[Any]]) -> dict[str, tuple[int, int]]:
    """(first, last) tick time per stream from a (stream, min, max) result by column."""
    return {str(s): (int(lo), int(hi)) for s, lo, hi in zip(*rows, strict=True)}


SPAN_SQL = "SELECT stream, min(ts_ns), max(ts_ns) FROM {table} GROUP BY stream"


async def ch_bars(server: Any, args: argparse.Namespace) -> dict[str, Any]:
    from bus.store.history_ch import ClickHouseHistoryStore, clickhouse_dialect

    d = clickhouse_dialect(DATABASE)
    client = _ch_client(server, timeout=10)
    store = ClickHouseHistoryStore(server.host, server.port, DATABASE, 1.0, 10.0)
    await store.open()
    try:
        def run_sql(sql: str, params: dict[str, Any]) -> list[list[Any]]:
            out: list[list[Any]] = client.execute(sql, params, columnar=True)
            return out

        points = end_points(spans_of(run_sql(SPAN_SQL.format(table=f"{DATABASE}.ticks"), {})),
                            args.queries + args.warmup, args.seed)
        await bar_queries(store, run_sql, d, points[:args.warmup], 1)
        return await bar_queries(store, run_sql, d, points[args.warmup:], args.agg_every)
    finally:
        await store.close()
        client.disconnect()


async def duck_bars(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same on the DuckDB file: the store and the raw connection are two connections of
    this process to one file (DuckDB allows that within a process)."""
    import duckdb

    from bus.store.history_duck import DUCKDB, DuckDBHistoryStore

    store = DuckDBHistoryStore(path)
    await store.open()
    conn = duckdb.connect(str(path))
    try:
        def run_sql(sql: str, params: dict[str, Any]) -> list[list[Any]]:
            rows = conn.execute(sql, params).fetchall()
            return [list(c) for c in zip(*rows, strict=True)]

        points = end_points(spans_of(run_sql(SPAN_SQL.format(table="ticks"), {})),
                            args.queries + args.warmup, args.seed)
        await bar_queries(store, run_sql, DUCKDB, points[:args.warmup], 1)
        return await bar_queries(store, run_sql, DUCKDB, points[args.warmup:], args.agg_every)
    finally:
        conn.close()
        await store.close()


# -- live --------------------------------------------------------------------------------------


def live_meshes(workdir: Path, servers: list[Any]) -> tuple[Path, Path]:
    """The mesh files of the live step: ``up``'s (a feed at 10,000 ticks/s, recovery, Redis,
    which ``up`` starts on a free port, the monitor; no order path, no historian) and the
    historian's: the same mesh with history on the bench's ClickHouse pair (the historian
    subscribes on the TCP path only)."""
    from bus.config import default_config, dump_toml

    cfg = default_config()
    udp = udp_address()
    cfg = replace(
        cfg,
        mesh=replace(cfg.mesh, name="bench-history", key_prefix="bh"),
        redis=replace(cfg.redis, url=f"redis://127.0.0.1:{free_port()}/0"),
        feeds=(replace(cfg.feeds[0], pub=tcp_endpoint(), rate=LIVE_RATE, udp_targets=(udp,)),),
        recovery=(replace(cfg.recovery[0], bind=tcp_endpoint()),),
        subscriber=replace(cfg.subscriber, udp_bind=udp),
        orders=replace(cfg.orders, enabled=False),
        history=replace(cfg.history, enabled=False))
    historian = replace(
        cfg,
        history=replace(cfg.history, enabled=True, store="clickhouse", database=LIVE_DATABASE,
                        clickhouse=tuple(f"{s.host}:{s.port}" for s in servers),
                        spool_path=str(workdir / "live-spool.duckdb"), query_bind=""))
    paths = workdir / "live-up.toml", workdir / "live-historian.toml"
    for path, mesh in zip(paths, (cfg, historian), strict=True):
        path.write_text(dump_toml(mesh.validate()))
    return paths


def run_live(procs: Children, workdir: Path, servers: list[Any],
             seconds: float) -> dict[str, Any]:
    """``tickmesh up`` on the live mesh and the historian beside it for ``seconds``; the
    historian's lag and holes (its stats file), the rows on each server, ``up``'s summary."""
    up_mesh, hist_mesh = live_meshes(workdir, servers)
    run_dir = workdir / "live"
    up = procs.start("up", [sys.executable, "-m", "nodes.cli", "up", "--for",
                            f"{seconds + LIVE_MARGIN_S:g}", "--config", str(up_mesh),
                            "--run-dir", str(run_dir), "--json", "--log-level", "WARNING"],
                     pipes=True)
    procs.wait_file(run_dir / "stats" / "feed-sim.json", up, "up", timeout=30)
    stats = workdir / "live-historian.json"
    proc = procs.start("historian-live", [
        sys.executable, "-m", "nodes.cli", "historian", "--config", str(hist_mesh),
        "--log-level", "WARNING", "--stats", str(stats)])
    procs.wait_file(stats, proc, "historian-live", timeout=30)
    time.sleep(seconds)
    code = stop_process(proc, 15)
    stop_process(up, 30)
    assert up.stdout is not None
    lines = [ln for ln in up.stdout.read().decode().splitlines() if ln.startswith("{")]
    summary = json.loads(lines[-1]) if lines else {}
    try:
        hist = json.loads(stats.read_text())
    except (OSError, ValueError):
        raise DrillError(f"the live historian left no stats (exit {code}):\n"
                         f"{procs.log_tail('historian-live')}") from None
    return {"seconds": seconds, "rate": LIVE_RATE, "historian_exit": code,
            "lag_ms_p50": hist.get("lag_ms_p50"), "lag_ms_p99": hist.get("lag_ms_p99"),
            "ticks": hist.get("ticks"), "written": hist.get("written"),
            "batches": hist.get("batches"),
            "holes": hist.get("tick_holes", 0) + hist.get("order_holes", 0),
            "backfilled": hist.get("backfilled"),
            # Ticks recorded live per second: a stream new to history is recorded from its
            # first sequence, so what the feed sent before the historian started is backfilled.
            "ticks_per_s": round((hist.get("ticks", 0) - hist.get("backfilled", 0)) / seconds),
            "held": _held_on_each(servers, LIVE_DATABASE), "writer": hist.get("writer"),
            "subscriber": hist.get("subscriber"), "up": summary}


# -- the run -----------------------------------------------------------------------------------


def summarize(raw: dict[str, Any], hist: dict[str, Any], bars: dict[str, Any],
              live: dict[str, Any] | None, ticks: int) -> dict[str, Any]:
    """The headline figures (the JSON keys issue 11 names, and the rest), and the targets."""
    out: dict[str, Any] = {"ticks": ticks}
    for key, store in (("ch", "clickhouse"), ("duck", "duckdb")):
        ours, ref = hist[store]["rows_per_s"], raw[store]["rows_per_s"]
        out[f"{key}_rows_per_s"] = ours
        out[f"{key}_raw_rows_per_s"] = ref
        out[f"{key}_ratio"] = round(ours / ref, 3) if ref else math.nan
        out[f"{key}_rows_held"] = hist[store]["rows_on_all"]
        for q, name in (("store", ""), ("raw", "_raw"), ("agg", "_agg")):
            prefix = "bars" if key == "ch" else "duck_bars"
            out[f"{prefix}{name}_p50_ms"] = bars[store][q]["p50"]
            out[f"{prefix}{name}_p99_ms"] = bars[store][q]["p99"]
        out[f"{key}_bars_returned_min"] = bars[store]["store"]["bars_min"]
        out[f"{key}_historian_cpu_s_per_m_ticks"] = hist[store]["cpu_s_per_m_ticks"]
        out[f"{key}_historian_peak_rss_mb"] = hist[store]["peak_rss_mb"]
        out[f"{key}_spooled"] = hist[store]["writer"].get("spooled", 0)
    out["historian_cpu_s_per_m_ticks"] = out["ch_historian_cpu_s_per_m_ticks"]
    out["historian_peak_rss_mb"] = out["ch_historian_peak_rss_mb"]
    out["replay_cpu_s_per_m_ticks"] = hist["replay_cpu_s_per_m_ticks"]
    out["live_lag_ms_p50"] = live["lag_ms_p50"] if live else None
    out["live_lag_ms_p99"] = live["lag_ms_p99"] if live else None
    out["live_holes"] = live["holes"] if live else None
    out["live_ticks_per_s"] = live["ticks_per_s"] if live else None
    out["targets"] = targets(out, ticks)
    return out


def targets(s: dict[str, Any], ticks: int) -> dict[str, bool | None]:
    """Issue 11's benchmark targets; None where the step did not run or could not measure."""
    def at_most(v: float | None, bound: float) -> bool | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v <= bound

    t = TARGETS
    out: dict[str, bool | None] = {}
    for key in ("ch", "duck"):
        out[f"{key}_rows_per_s"] = s[f"{key}_rows_per_s"] >= t["rows_per_s"]
        out[f"{key}_ratio"] = s[f"{key}_ratio"] >= t["ratio"]
        out[f"{key}_every_row_held"] = s[f"{key}_rows_held"] == ticks
    out["bars_p99"] = at_most(s["bars_p99_ms"], t["bars_p99_ms"])
    out["duck_bars_p99"] = at_most(s["duck_bars_p99_ms"], t["bars_p99_ms"])
    out["bars_over_10m_ticks"] = ticks >= 10_000_000
    out["live_lag_p99"] = at_most(s["live_lag_ms_p99"], t["live_lag_p99_ms"])
    out["live_no_holes"] = None if s["live_holes"] is None else s["live_holes"] == 0
    return out


def run_bench(args: argparse.Namespace, procs: Children, workdir: Path) -> dict[str, Any]:
    from nodes.servers.clickhouse_server import ClickHouseProcess

    servers = [ClickHouseProcess(data_dir=workdir / f"ch-{n}", cache_mib=args.cache_mib)
               for n in ("a", "b")]
    raw: dict[str, Any] = {}
    hist: dict[str, Any] = {}
    bars: dict[str, Any] = {}
    live = None
    try:
        for s in servers:
            s.start(timeout=60)
        info = _versions(servers[0])
        _say(f"clickhouse-server {info['clickhouse']} on ports "
             f"{', '.join(str(s.port) for s in servers)}; {args.ticks:,} ticks per store, "
             f"batches of {args.batch_rows:,}")
        hist["replay_cpu_s_per_m_ticks"] = round(_generation_s_per_m(args.run, args.seed), 3)

        _say("raw clickhouse-driver inserts into both servers (two threads)")
        raw["clickhouse"] = raw_clickhouse(servers, args)
        _say(f"  {fmt(raw['clickhouse']['rows_per_s'])} rows/s")
        _say("historian -> ClickHouse pair")
        child = run_historian(procs, "historian-ch", {
            "store": "clickhouse", "clickhouse": [f"{s.host}:{s.port}" for s in servers],
            "database": DATABASE, "spool_path": str(workdir / "spool.duckdb")}, workdir, args)
        held = _held_on_each(servers, DATABASE)
        hist["clickhouse"] = {**historian_figures(child, min(h["distinct"] for h in held),
                                                  hist["replay_cpu_s_per_m_ticks"]),
                              "held": held}
        _say(f"  {fmt(hist['clickhouse']['rows_per_s'])} rows/s on both servers "
             f"({hist['clickhouse']['cpu_pct']} % of a core)")

        _say("raw DuckDB insert_arrow")
        raw["duckdb"] = raw_duckdb(workdir / "raw.duckdb", args)
        _say(f"  {fmt(raw['duckdb']['rows_per_s'])} rows/s")
        _say("historian -> DuckDB")
        duck_path = workdir / "history.duckdb"
        child = run_historian(procs, "historian-duck", {
            "store": "duckdb", "duckdb_path": str(duck_path)}, workdir, args)
        held_duck = _duck_held(duck_path)
        hist["duckdb"] = {**historian_figures(child, held_duck["distinct"],
                                              hist["replay_cpu_s_per_m_ticks"]),
                          "held": held_duck}
        _say(f"  {fmt(hist['duckdb']['rows_per_s'])} rows/s ({hist['duckdb']['cpu_pct']} % of "
             f"a core)")

        _say(f"bar queries: {args.queries} x {COUNTBACK} one-minute bars per store")
        bars["clickhouse"] = _run_loop(ch_bars(servers[0], args))
        bars["duckdb"] = _run_loop(duck_bars(duck_path, args))
        if args.live_seconds > 0:
            _say(f"live: tickmesh up at {LIVE_RATE:,.0f} ticks/s for {args.live_seconds:g} s")
            live = run_live(procs, workdir, servers, args.live_seconds)
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
    summary = summarize(raw, hist, bars, live, args.ticks)
    result = {"machine": {**machine(), **info}, "raw": raw, "summary": summary,
              "steps": [{"step": "historian", **hist}, {"step": "bars", **bars},
                        {"step": "live", **(live or {})}],
              "args": {k: v for k, v in vars(args).items() if k != "report"}}
    if args.report:
        Path(args.report).write_text(markdown(result))
        _say(f"report: {args.report}")
    return result


def _versions(server: Any) -> dict[str, str]:
    import clickhouse_driver
    import duckdb
    import pyarrow

    client = _ch_client(server)
    try:
        ((version,),) = client.execute("SELECT version()")
    finally:
        client.disconnect()
    return {"clickhouse": str(version), "clickhouse_driver": clickhouse_driver.__version__,
            "duckdb": duckdb.__version__, "pyarrow": pyarrow.__version__}


def _duck_held(path: Path) -> dict[str, int]:
    import duckdb

    conn = duckdb.connect(str(path), read_only=True)
    try:
        row = conn.execute("SELECT count(*), count(DISTINCT (stream, seq)) FROM ticks").fetchone()
    finally:
        conn.close()
    assert row is not None
    return {"rows": int(row[0]), "distinct": int(row[1])}


# -- output ------------------------------------------------------------------------------------


def _verdict(v: bool | None) -> str:
    return "-" if v is None else "PASS" if v else "FAIL"


def figure_rows(result: dict[str, Any]) -> list[list[Any]]:
    """(figure, tickmesh, raw reference, ratio, target) rows of the report and the table."""
    s, t = result["summary"], result["summary"]["targets"]
    rows: list[list[Any]] = []
    for key, name in (("ch", "ClickHouse pair (rows on both)"), ("duck", "DuckDB file")):
        rows.append([f"ingest, {name}, ticks/s", fmt(s[f"{key}_rows_per_s"]),
                     fmt(s[f"{key}_raw_rows_per_s"]), fmt(s[f"{key}_ratio"], 2),
                     f">= 100,000 {_verdict(t[f'{key}_rows_per_s'])}; ratio >= 0.8 "
                     f"{_verdict(t[f'{key}_ratio'])}"])
    for prefix, name in (("bars", "ClickHouse"), ("duck_bars", "DuckDB")):
        ours, ref = s[f"{prefix}_p99_ms"], s[f"{prefix}_raw_p99_ms"]
        ratio = ours / ref if ours is not None and ref else None
        target = t["bars_p99" if prefix == "bars" else "duck_bars_p99"]
        rows.append([f"{COUNTBACK:,} one-minute bars, {name}, p50 / p99 ms",
                     f"{fmt(s[f'{prefix}_p50_ms'], 1)} / {fmt(ours, 1)}",
                     f"{fmt(s[f'{prefix}_raw_p50_ms'], 1)} / {fmt(ref, 1)} (same SQL); "
                     f"{fmt(s[f'{prefix}_agg_p50_ms'], 1)} / {fmt(s[f'{prefix}_agg_p99_ms'], 1)}"
                     " (from ticks)", fmt(ratio, 2), f"p99 <= 50 ms {_verdict(target)}"])
    for key, name in (("ch", "ClickHouse"), ("duck", "DuckDB")):
        rows.append([f"historian CPU s per million ticks / peak RSS MiB, {name}",
                     f"{fmt(s[f'{key}_historian_cpu_s_per_m_ticks'], 2)} / "
                     f"{fmt(s[f'{key}_historian_peak_rss_mb'], 0)}",
                     f"replay alone {fmt(s['replay_cpu_s_per_m_ticks'], 2)} s per million",
                     "-", "-"])
    rows.append(["live at 10,000 ticks/s: historian lag p50 / p99 ms, holes",
                 f"{fmt(s['live_lag_ms_p50'], 1)} / {fmt(s['live_lag_ms_p99'], 1)}, "
                 f"{dash_int(s['live_holes'])}", "-", "-",
                 f"p99 <= 1,000 ms {_verdict(t['live_lag_p99'])}; no holes "
                 f"{_verdict(t['live_no_holes'])}"])
    return rows


def dash_int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["summary"]
    lines = [f"tickmesh history benchmark, {m['date']}: {m['nproc']} cores {m['cpu']}, "
             f"load {m['loadavg_1m']:.2f}, Python {m['python']}, clickhouse-server "
             f"{m['clickhouse']}, clickhouse-driver {m['clickhouse_driver']}, duckdb "
             f"{m['duckdb']}", f"{s['ticks']:,} ticks per store", ""]
    header = ["figure", "tickmesh", "raw reference (same run)", "ratio", "target"]
    rows = figure_rows(result)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    lines.append("")
    lines.append(f"rows held: ClickHouse {s['ch_rows_held']:,} on both servers (spooled "
                 f"{s['ch_spooled']:,}), DuckDB {s['duck_rows_held']:,}; fewest bars a query "
                 f"returned: {s['ch_bars_returned_min']:,} / {s['duck_bars_returned_min']:,}")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["summary"]
    out = ["# bench-history", "",
           f"{m['date']}; {m['nproc']} cores {m['cpu']}, load average {m['loadavg_1m']:.2f} at "
           f"the end; clickhouse-server {m['clickhouse']}, clickhouse-driver "
           f"{m['clickhouse_driver']}, duckdb {m['duckdb']}, pyarrow {m['pyarrow']}; "
           f"{s['ticks']:,} ticks per store, batches of {result['args']['batch_rows']:,} rows.",
           "", *markdown_table(["figure", "tickmesh", "raw reference (same run)", "ratio",
                                "target"], figure_rows(result)), "",
           "```json", json.dumps(s, indent=1, default=str), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        return ROLES[argv[0]](argv[1:])
    p = argparse.ArgumentParser(prog="bench-history", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ticks", type=int, default=10_000_000,
                   help="ticks ingested into each store (default 10,000,000)")
    p.add_argument("--raw-ticks", type=int, default=2_000_000,
                   help="ticks of the raw references, the first of the replay (default "
                        "2,000,000, or --ticks if fewer; 0: all of --ticks)")
    p.add_argument("--batch-rows", type=int, default=50_000,
                   help="rows per batch, the historian's [history] batch_rows and raw's "
                        "(default 50,000, the mesh default)")
    p.add_argument("--run", type=int, default=100,
                   help="ticks per ingest() call, one symbol each (default 100)")
    p.add_argument("--queries", type=int, default=200, help="bar queries per store (200)")
    p.add_argument("--warmup", type=int, default=10, help="bar queries before (10)")
    p.add_argument("--agg-every", type=int, default=4,
                   help="the aggregation from ticks at every N-th end point (default 4)")
    p.add_argument("--live-seconds", type=float, default=25.0,
                   help="the live step's duration (default 25; 0 skips it)")
    p.add_argument("--cache-mib", type=int, default=256,
                   help="each server's mark and uncompressed cache, MiB (default 256)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--report", type=Path, help="write a markdown report to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON, last line")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.set_defaults(profile=None)
    args = p.parse_args(argv)
    if args.ticks < 1 or args.batch_rows < 1 or args.run < 1 or args.queries < 1:
        p.error("--ticks, --batch-rows, --run and --queries must be positive")
    return drive(args, "tickmesh-bench-history-", _no_profile, run_bench, render, _say)


def _no_profile(args: argparse.Namespace, procs: Children, workdir: Path) -> None:
    raise DrillError("bench-history has no --profile")


if __name__ == "__main__":
    sys.exit(main())
