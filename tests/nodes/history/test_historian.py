"""The historian end to end on DuckDB: a real feed, recovery service and Redis; a restart that
backfills from Redis; orders from the order store's history stream; holes counted, not hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.config import HistorySection, MeshConfig, replace
from bus.history.readers import open_history_reader
from bus.history.writer import HistoryWriter
from bus.store.history_duck import DuckDBHistoryStore
from bus.store.orders import HistoryEntry, RedisOrderStore
from nodes.history.historian import Historian
from nodes.servers.redis_server import RedisProcess, free_port
from protocols.errors import StoreUnavailable
from protocols.history.bars import RES_SECONDS, Bar, bars_from_columns
from protocols.history.schema import END_OF_TIME, Table
from tests.bus.store.contract_orders import logged, routed
from tests.nodes.harness import mesh_config, run_feed, run_recovery
from tests.support import scaled, wait_until

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

END = END_OF_TIME


def history_config(redis: RedisProcess, path: Path, rate: float = 2000.0) -> MeshConfig:
    cfg = mesh_config(redis, rate=rate, udp_target=f"127.0.0.1:{free_port()}")
    return replace(cfg, history=HistorySection(
        duckdb_path=str(path), batch_rows=2_000, batch_ms=50, stream_cap=1_000,
        query_bind=f"tcp://127.0.0.1:{free_port()}"))


@contextlib.asynccontextmanager
async def running(cfg: MeshConfig, path: Path,
                  orders: RedisOrderStore | None = None) -> AsyncIterator[Historian]:
    node = Historian(cfg, HistoryWriter([DuckDBHistoryStore(path)]), orders=orders)
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    await wait_until(lambda: node.ready.is_set() or task.done(), scaled(10),
                     "the historian to start")
    try:
        yield node
    finally:
        stop.set()
        assert await asyncio.wait_for(task, scaled(15)) == 0


async def stored_seqs(path: Path, stream: str) -> list[int]:
    store = DuckDBHistoryStore(path)
    await store.open()
    try:
        return list((await store.ticks(stream, 0, END, 10**7)).column("seq"))
    finally:
        await store.close()


async def caught_up(node: Historian, feed_next: dict[str, int]) -> None:
    await wait_until(lambda: all(node._next.get(s, 0) >= n for s, n in feed_next.items()),
                     scaled(15), "the historian to record every published tick")


def test_every_published_tick_is_stored_once_in_order_with_its_bars(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path)

    async def main() -> None:
        async with run_recovery(cfg), running(cfg, path) as node:
            async with run_feed(cfg) as feed:
                await wait_until(lambda: node.stats.ticks >= 3_000, scaled(20), "3,000 ticks")
                feed.source.close()
            await caught_up(node, feed.next_seq)
        stats = node.collect()  # after the orderly stop, which writes what was buffered
        assert stats["tick_holes"] == 0 and stats["bad_entries"] == 0
        assert stats["written"] == stats["ticks"] + stats["bars"] > 3_000
        for stream, nxt in feed.next_seq.items():
            seqs = await stored_seqs(path, stream)
            # From the stream's first tick (the historian backfilled what it joined after)
            # to the feed's last, each once.
            assert seqs == list(range(1, nxt)), stream
        store = DuckDBHistoryStore(path)
        await store.open()
        try:
            stream = next(iter(feed.next_seq))
            bars = bars_from_columns(await store.bars(stream, 1, 0, END))
            assert bars, "one-second bars were closed and stored"
            ticks = await store.ticks(stream, 0, END, 10**7)
            assert sum(b.ticks for b in bars) <= len(ticks)
            assert all(a.start_ns < b.start_ns for a, b in itertools.pairwise(bars))
        finally:
            await store.close()

    asyncio.run(main())


def test_a_running_historian_answers_bar_and_forming_queries_while_it_writes(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path)
    stream = cfg.feeds[0].symbols[0]

    async def main() -> None:
        readers = open_history_reader(cfg)  # what the CLI and the gateway read through
        await readers.open()
        reader, forming = readers
        try:
            async with run_recovery(cfg), running(cfg, path) as node:
                async with run_feed(cfg) as feed:
                    async def closed() -> list[Bar]:
                        return bars_from_columns(await reader.bars(stream, 1, 0, END))
                    stored = await wait_until(closed, scaled(20), "closed 1 s bars stored")
                    bar = await forming.forming(stream, 1)
                    assert bar is not None and bar.start_ns > stored[-1].start_ns
                    written = node.stats.written
                    await wait_until(lambda: node.stats.written > written, scaled(10),
                                     "more rows written after the queries")
                    feed.source.close()
                await caught_up(node, feed.next_seq)
                await wait_until(lambda: node._buffered == 0, scaled(10), "the last write")
                # Quiet now: the forming bars served are the ones in memory, and each
                # continues right after the last closed bar the store serves.
                for res in RES_SECONDS:
                    bar = await forming.forming(stream, res)
                    assert bar is not None and bar == node.forming(stream, res)
                    last = bars_from_columns(await reader.bars(stream, res, 0, END,
                                                               countback=1))
                    if last:
                        assert last[0].last_seq + 1 == bar.first_seq, res
                assert await forming.forming("NOPE", 60) is None
                query = node.collect()["query"]
                assert query["errors"] == {} and query["answered"] >= 3 + 2 * len(RES_SECONDS)
        finally:
            await readers.close()

    asyncio.run(main())


def test_a_restarted_historian_backfills_the_gap_from_redis_with_no_hole(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path)

    async def main() -> None:
        async with run_recovery(cfg), run_feed(cfg) as feed:
            async with running(cfg, path) as node:
                await wait_until(lambda: node.stats.ticks >= 1_000, scaled(20), "1,000 ticks")
            # Down for a while: the feed goes on, Redis keeps the checkpoints.
            down_at = dict(feed.next_seq)
            await wait_until(lambda: all(feed.next_seq[s] > down_at[s] + 200 for s in down_at),
                             scaled(20), "ticks published while the historian is down")
            async with running(cfg, path) as node:
                await wait_until(lambda: node.stats.backfilled > 0, scaled(20), "a backfill")
                feed.source.close()
                await caught_up(node, feed.next_seq)
        stats = node.collect()
        assert stats["tick_holes"] == 0 and stats["backfilled"] >= 600
        for stream, nxt in feed.next_seq.items():
            seqs = await stored_seqs(path, stream)
            assert seqs == list(range(1, nxt)), stream

    asyncio.run(main())


def test_orders_and_their_log_entries_are_recorded_and_a_trimmed_range_is_a_counted_hole(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path, rate=200.0)

    async def main() -> None:
        orders = RedisOrderStore(redis_server.url, cfg.mesh.key_prefix, history_cap=100)
        _, epoch = await orders.acquire_epoch(await orders.current_epoch())
        # 300 order writes before the historian first runs: the stream keeps only ~100 of
        # them, so the rest is a hole the historian reports.
        for i in range(300):
            await orders.write_batch([routed(order_id=f"a{i}", coid=f"ca{i}")], epoch)
        async with run_recovery(cfg), run_feed(cfg), running(cfg, path) as node:
            rec = routed(order_id="f1", coid="cf1")
            fill = rec.fill_report(1.0, 1.1, seq=1, exec_id="f1:1")
            await orders.write_batch([rec], epoch)
            await orders.write_batch([logged(rec, fill)], epoch, [fill])
            await wait_until(lambda: node._order_pos >= 302, scaled(10), "the order history")
        await orders.close()
        first = await first_position(redis_server, cfg)
        assert node.stats.order_holes == first - 1 > 0
        store = DuckDBHistoryStore(path)
        await store.open()
        try:
            recorded = await store.orders(None, 0, END)
            ids = recorded.column("order_id")
            assert ids.count("f1") == 2 and len(ids) == 302 - (first - 1)
            execs = await store.executions(None, 0, END)
            assert execs.column("order_id") == ["f1"] and execs.column("seq") == [1]
            assert (await store.watermarks(Table.ORDERS)) == {"": 302}
        finally:
            await store.close()

    asyncio.run(main())


async def first_position(redis: RedisProcess, cfg: MeshConfig) -> int:
    store = RedisOrderStore(redis.url, cfg.mesh.key_prefix)
    try:
        return await store.history_first()
    finally:
        await store.close()


def test_an_order_stream_reset_under_it_is_reported_not_silently_skipped(
        redis_server: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.history.historian as historian

    monkeypatch.setattr(historian, "RESET_CHECK_ROUNDS", 1)
    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path, rate=200.0)

    async def main() -> None:
        orders = RedisOrderStore(redis_server.url, cfg.mesh.key_prefix, history_cap=100)
        _, epoch = await orders.acquire_epoch(await orders.current_epoch())
        async with run_recovery(cfg), run_feed(cfg), running(cfg, path) as node:
            for i in range(3):
                await orders.write_batch([routed(order_id=f"r{i}", coid=f"cr{i}")], epoch)
            await wait_until(lambda: node._order_pos >= 3, scaled(10), "the order history")
            # The order store loses its history stream under a running historian.
            await orders.redis.delete(f"{cfg.mesh.key_prefix}:history",
                                      f"{cfg.mesh.key_prefix}:history:n")
            await orders.write_batch([routed(order_id="r9", coid="cr9")], epoch)
            await wait_until(lambda: node.stats.order_stream_behind > 0, scaled(10),
                             "the reset to be reported")
        await orders.close()

    asyncio.run(main())


def test_the_cli_reads_a_file_the_historian_holds_through_its_query_service(
        redis_server: RedisProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bus.config import dump_toml
    from nodes.cli import main as cli

    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path)
    mesh = tmp_path / "mesh.toml"
    mesh.write_text(dump_toml(cfg))

    async def main() -> None:
        async with run_recovery(cfg), run_feed(cfg), running(cfg, path) as node:
            await wait_until(lambda: node.stats.written >= 500, scaled(20), "500 rows written")
            stream = cfg.feeds[0].symbols[0]
            rc = await asyncio.to_thread(cli, ["history", "ticks", stream, "--from", "0",
                                               "--json", "--config", str(mesh)])
            assert rc == 0
            ticks = json.loads(capsys.readouterr().out)["ticks"]
            assert len(ticks) > 0
            assert [t["seq"] for t in ticks] == list(range(1, len(ticks) + 1))

    asyncio.run(main())


class HistoryTimesOut(RedisOrderStore):
    """An order store whose next ``fail`` history reads time out (a Redis failover, or the
    historian off the CPU past its socket timeout)."""

    fail = 0

    async def history(self, after: int, count: int, block_ms: int = 0) -> list[HistoryEntry]:
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("redis unreachable: Timeout reading (test)")
        return await super().history(after, count, block_ms)


def test_a_redis_timeout_reading_the_order_history_is_read_again_not_fatal(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path, rate=200.0)

    async def main() -> None:
        orders = RedisOrderStore(redis_server.url, cfg.mesh.key_prefix, history_cap=1000)
        _, epoch = await orders.acquire_epoch(await orders.current_epoch())
        flaky = HistoryTimesOut(redis_server.url, cfg.mesh.key_prefix)
        flaky.fail = 3
        async with run_recovery(cfg), run_feed(cfg), running(cfg, path, flaky) as node:
            for i in range(5):
                await orders.write_batch([routed(order_id=f"o{i}", coid=f"c{i}")], epoch)
            await wait_until(lambda: node._order_pos >= 5, scaled(10), "the order history")
            assert node.stats.read_errors == 3 and node.stats.order_holes == 0
        # running() asserted the historian's exit code 0: the timeouts did not end it.
        await orders.close()

    asyncio.run(main())
