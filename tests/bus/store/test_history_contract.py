"""The history store contract (``bus.store.history.HistoryStore``), one suite run against each
implementation: DuckDB on a file of the test's own, and ClickHouse 18.16 (one real server for
the session, a fresh database per test).

Adding an implementation is one fixture that returns an opener (an async function that opens
a store on empty tables) and its name in ``HISTORY_STORES``.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from bus.store.history import HistoryStore
from bus.store.history_ch import ClickHouseHistoryStore
from bus.store.history_duck import DuckDBHistoryStore
from bus.store.history_sql import partition_expr
from nodes.servers.clickhouse_server import ClickHouseProcess, free_port
from protocols.errors import StoreError, StoreUnavailable
from protocols.history.schema import NS_PER_S, Columns, Table, partition_of
from tests.history_support import (
    FEB,
    T0,
    OpenHistoryStore,
    batch,
    duckdb_file_held,
    opener,
    rows_of,
    tick_batch,
)
from tests.support import run_with, scaled

pytestmark = pytest.mark.timeout(30)

HISTORY_STORES = ["duckdb_history", "clickhouse_history"]
S = NS_PER_S


@pytest.fixture(params=HISTORY_STORES)
def history_store(request: pytest.FixtureRequest) -> OpenHistoryStore:
    open_it: OpenHistoryStore = request.getfixturevalue(request.param)
    return open_it


@pytest.fixture
def duckdb_history(tmp_path: Path) -> OpenHistoryStore:
    return opener(lambda: DuckDBHistoryStore(tmp_path / "history.duckdb"))


def clickhouse_opener(server: ClickHouseProcess, database: str) -> OpenHistoryStore:
    return opener(lambda: ClickHouseHistoryStore(server.host, server.port, database,
                                                 receive_timeout_s=scaled(5)))


@pytest.fixture
def clickhouse_history(clickhouse_server: ClickHouseProcess) -> OpenHistoryStore:
    return clickhouse_opener(clickhouse_server, f"t_{uuid.uuid4().hex[:12]}")


def bar_row(start_s: int, last_seq: int, close: float, res_s: int = 60,
            stream: str = "EUR") -> dict[str, object]:
    return {"stream": stream, "res_s": res_s, "start_ns": T0 + start_s * S, "open": 1.0,
            "high": max(1.0, close), "low": min(1.0, close), "close": close, "volume": 2.0,
            "ticks": last_seq, "first_seq": 1, "last_seq": last_seq}


def order_row(order_id: str, src: int, account: str, updated_s: int,
              blob: bytes = b"") -> dict[str, object]:
    return {"order_id": order_id, "updated_ns": T0 + updated_s * S, "src": src,
            "account": account, "symbol": "EUR", "side": 1, "quantity": 10.0, "state": 1,
            "blob": blob or bytes([0, 255, src % 256])}


def execution_row(order_id: str, seq: int, src: int, account: str, transact_s: int,
                  ) -> dict[str, object]:
    return {"order_id": order_id, "seq": seq, "src": src, "exec_id": f"{order_id}-{seq}",
            "account": account, "symbol": "EUR", "side": -1, "state": 2,
            "last_quantity": 1.0, "last_price": 1.1, "transact_ns": T0 + transact_s * S,
            "blob": b"\x00exec\xff"}


# -- insert and read back ------------------------------------------------------------------

def test_each_table_reads_back_what_was_inserted(history_store: OpenHistoryStore) -> None:
    ticks = tick_batch("EUR", range(1, 6))
    bars = batch(Table.BARS, *(bar_row(60 * i, 10 * i, 1.0 + i) for i in range(3)))
    orders = batch(Table.ORDERS, order_row("o1", 1, "acc", 1), order_row("o1", 2, "acc", 2))
    execs = batch(Table.EXECUTIONS, execution_row("o1", 1, 3, "acc", 3),
                  execution_row("o1", 2, 4, "acc", 4))

    async def body(store: HistoryStore) -> None:
        for cols in (ticks, bars, orders, execs):
            await store.insert(cols)
        assert rows_of(await store.ticks("EUR", T0, T0 + 10 * S, 100)) == rows_of(ticks)
        assert rows_of(await store.bars("EUR", 60, T0, T0 + 3600 * S)) == rows_of(bars)
        assert rows_of(await store.orders(None, T0, T0 + 10 * S)) == rows_of(orders)
        assert rows_of(await store.executions(None, T0, T0 + 10 * S)) == rows_of(execs)

    run_with(history_store, body)


def test_binary_blobs_come_back_byte_for_byte(history_store: OpenHistoryStore) -> None:
    blob = bytes(range(256))

    async def body(store: HistoryStore) -> None:
        await store.insert(batch(Table.ORDERS, order_row("o1", 1, "acc", 1, blob=blob)))
        got = await store.orders("acc", T0, T0 + 10 * S)
        assert got.column("blob") == [blob]

    run_with(history_store, body)


def test_empty_tables_read_as_empty_batches(history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        for table in Table:
            assert await store.watermarks(table) == {}
            above = await store.read_above(table, {}, 10)
            assert (above.table, len(above)) == (table, 0)
        assert len(await store.ticks("EUR", 0, 2**63, 10)) == 0
        assert len(await store.bars("EUR", 60, 0, 2**63, countback=5)) == 0
        assert len(await store.orders("acc", 0, 2**63)) == 0
        assert len(await store.executions(None, 0, 2**63)) == 0
        await store.insert(Columns(Table.TICKS))  # an empty batch is a no-op
        await store.trim(Table.TICKS, {"EUR": 5})
        await store.ping()

    run_with(history_store, body)


def test_calls_leave_the_event_loop_free(history_store: OpenHistoryStore) -> None:
    # A task that is ready when the store is called runs before the call returns: the
    # driver works on the store's thread, not on the loop.
    ticks = tick_batch("EUR", range(1, 20_001))

    async def body(store: HistoryStore) -> None:
        ran = asyncio.Event()

        async def other() -> None:
            ran.set()

        for call in (lambda: store.insert(ticks), lambda: store.ticks("EUR", 0, 2**63, 10),
                     lambda: store.watermarks(Table.TICKS)):
            ran.clear()
            task = asyncio.create_task(other())
            await call()
            assert ran.is_set()
            await task

    run_with(history_store, body)


# -- watermarks, read_above, trim ----------------------------------------------------------

def test_watermarks_per_group_and_for_tables_without_groups(
        history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        await store.insert(tick_batch("EUR", range(1, 8)))
        await store.insert(tick_batch("XAU", range(1, 3)))
        await store.insert(batch(Table.BARS, bar_row(0, 7, 1.2)))
        await store.insert(batch(Table.ORDERS, order_row("o1", 4, "a", 1),
                                 order_row("o2", 9, "a", 2)))
        await store.insert(batch(Table.EXECUTIONS, execution_row("o1", 1, 5, "a", 1)))
        assert await store.watermarks(Table.TICKS) == {"EUR": 7, "XAU": 2}
        assert await store.watermarks(Table.BARS) == {"EUR": 7}
        assert await store.watermarks(Table.ORDERS) == {"": 9}
        assert await store.watermarks(Table.EXECUTIONS) == {"": 5}

    run_with(history_store, body)


def test_read_above_takes_each_group_above_its_mark_in_order_up_to_the_limit(
        history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        # Inserted out of order: the store orders by (group, position).
        await store.insert(tick_batch("XAU", [3, 1, 2]))
        await store.insert(tick_batch("EUR", range(1, 6)))
        await store.insert(tick_batch("BTC", range(1, 3)))
        got = await store.read_above(Table.TICKS, {"EUR": 3, "XAU": 1, "GONE": 9}, 100)
        assert list(zip(got.column("stream"), got.column("seq"), strict=True)) == [
            ("BTC", 1), ("BTC", 2), ("EUR", 4), ("EUR", 5), ("XAU", 2), ("XAU", 3)]
        limited = await store.read_above(Table.TICKS, {"EUR": 3, "XAU": 1}, 3)
        assert rows_of(limited) == rows_of(got.slice(0, 3))
        everything = await store.read_above(Table.TICKS, {}, 100)
        assert len(everything) == 10

        await store.insert(batch(Table.ORDERS, *(order_row(f"o{i}", i, "a", i)
                                                 for i in (5, 2, 4, 1, 3))))
        orders = await store.read_above(Table.ORDERS, {"": 2}, 2)
        assert orders.column("src") == [3, 4]

    run_with(history_store, body)


def test_trim_deletes_rows_at_or_below_the_marks(history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        await store.insert(tick_batch("EUR", range(1, 6)))
        await store.insert(tick_batch("XAU", range(1, 4)))
        await store.insert(batch(Table.EXECUTIONS, *(execution_row("o1", i, i, "a", i)
                                                     for i in range(1, 5))))
        await store.trim(Table.TICKS, {"EUR": 3})
        got = await store.read_above(Table.TICKS, {}, 100)
        assert list(zip(got.column("stream"), got.column("seq"), strict=True)) == [
            ("EUR", 4), ("EUR", 5), ("XAU", 1), ("XAU", 2), ("XAU", 3)]
        await store.trim(Table.EXECUTIONS, {"": 2})
        assert (await store.read_above(Table.EXECUTIONS, {}, 100)).column("src") == [3, 4]
        await store.trim(Table.EXECUTIONS, {})  # no marks: nothing to delete
        assert await store.watermarks(Table.EXECUTIONS) == {"": 4}

    run_with(history_store, body)


# -- reads that deduplicate -----------------------------------------------------------------

def test_a_repeated_bar_reads_once_and_the_higher_last_seq_wins(
        history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        await store.insert(batch(Table.BARS, bar_row(0, 5, 1.1), bar_row(60, 8, 1.3)))
        # Recomputed with more ticks (a late backfill), then the old one slips in again.
        await store.insert(batch(Table.BARS, bar_row(0, 6, 1.2)))
        await store.insert(batch(Table.BARS, bar_row(0, 5, 1.1)))
        got = await store.bars("EUR", 60, T0, T0 + 3600 * S)
        assert list(zip(got.column("start_ns"), got.column("close"), got.column("last_seq"),
                        strict=True)) == [(T0, 1.2, 6), (T0 + 60 * S, 1.3, 8)]
        assert rows_of(await store.bars("EUR", 60, 0, T0 + 3600 * S, countback=2)) == rows_of(
            got)

    run_with(history_store, body)


def test_a_repeated_tick_and_execution_read_once(history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        ticks = tick_batch("EUR", range(1, 4))
        await store.insert(ticks)
        await store.insert(ticks)
        assert rows_of(await store.ticks("EUR", T0, T0 + 10 * S, 10)) == rows_of(ticks)
        assert len(await store.read_above(Table.TICKS, {}, 10)) == 3
        # A limit counts keys, not stored copies.
        assert (await store.ticks("EUR", T0, T0 + 10 * S, 2)).column("seq") == [1, 2]
        assert (await store.read_above(Table.TICKS, {}, 2)).column("seq") == [1, 2]
        execs = batch(Table.EXECUTIONS, execution_row("o1", 1, 7, "a", 1))
        await store.insert(execs)
        await store.insert(execs)
        assert rows_of(await store.executions("a", T0, T0 + 10 * S)) == rows_of(execs)

    run_with(history_store, body)


# -- the queries ---------------------------------------------------------------------------

def test_bars_countback_takes_the_last_bars_before_the_end(
        history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        await store.insert(batch(Table.BARS, *(bar_row(60 * i, i + 1, 1.0 + i / 10)
                                               for i in range(6))))
        await store.insert(batch(Table.BARS, bar_row(0, 1, 9.9, res_s=300),
                                 bar_row(0, 1, 9.9, stream="XAU")))
        end = T0 + 300 * S  # bars at 0..240 s are before it; 300 s is not
        got = await store.bars("EUR", 60, T0 + 10**6 * S, end, countback=3)
        assert got.column("start_ns") == [T0 + s * S for s in (120, 180, 240)]
        more = await store.bars("EUR", 60, 0, end, countback=50)
        assert more.column("start_ns") == [T0 + 60 * i * S for i in range(5)]
        ranged = await store.bars("EUR", 60, T0 + 60 * S, T0 + 180 * S)
        assert ranged.column("start_ns") == [T0 + 60 * S, T0 + 120 * S]

    run_with(history_store, body)


def test_ticks_range_is_half_open_and_limited(history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        await store.insert(tick_batch("EUR", range(1, 11)))
        await store.insert(tick_batch("XAU", range(1, 11)))
        got = await store.ticks("EUR", T0 + 3 * S, T0 + 7 * S, 100)
        assert got.column("seq") == [3, 4, 5, 6]
        assert set(got.column("stream")) == {"EUR"}
        assert (await store.ticks("EUR", T0 + 3 * S, T0 + 7 * S, 2)).column("seq") == [3, 4]
        assert len(await store.ticks("EUR", T0 + 7 * S, T0 + 7 * S, 100)) == 0

    run_with(history_store, body)


def test_orders_and_executions_by_account_and_time(history_store: OpenHistoryStore) -> None:
    async def body(store: HistoryStore) -> None:
        await store.insert(batch(Table.ORDERS, order_row("o1", 1, "alice", 1),
                                 order_row("o1", 2, "alice", 5), order_row("o2", 3, "bob", 2)))
        await store.insert(batch(Table.EXECUTIONS, execution_row("o1", 1, 4, "alice", 3),
                                 execution_row("o2", 1, 5, "bob", 4),
                                 execution_row("o1", 2, 6, "alice", 9)))
        alice = await store.orders("alice", T0, T0 + 10 * S)
        assert list(zip(alice.column("order_id"), alice.column("src"), strict=True)) == [
            ("o1", 1), ("o1", 2)]
        assert (await store.orders("alice", T0, T0 + 5 * S)).column("src") == [1]
        assert (await store.orders(None, T0, T0 + 10 * S)).column("src") == [1, 2, 3]
        assert (await store.executions("alice", T0, T0 + 10 * S)).column("src") == [4, 6]
        assert (await store.executions("bob", T0, T0 + 10 * S)).column("exec_id") == ["o2-1"]
        assert (await store.executions(None, T0, T0 + 5 * S)).column("src") == [4, 5]
        assert len(await store.executions("carol", T0, T0 + 10 * S)) == 0

    run_with(history_store, body)


def test_a_batch_across_a_month_boundary_is_stored_whole(
        history_store: OpenHistoryStore) -> None:
    # Ticks 1-4 in January, 5-8 in February (one per 0.25 s around midnight UTC).
    ticks = tick_batch("EUR", range(1, 9), t0=FEB - 5 * S // 4, step_ns=S // 4)
    assert [partition_of(t) for t in ticks.column("ts_ns")] == [202601] * 4 + [202602] * 4
    assert len(ticks.by_partition()) == 2

    async def body(store: HistoryStore) -> None:
        await store.insert(ticks)
        assert rows_of(await store.ticks("EUR", 0, 2**63, 100)) == rows_of(ticks)
        assert await store.watermarks(Table.TICKS) == {"EUR": 8}

    run_with(history_store, body)


# -- ClickHouse only -----------------------------------------------------------------------

def test_clickhouse_partitions_are_the_months_partition_of_names(
        clickhouse_server: ClickHouseProcess) -> None:
    # Around month ends, a leap day and year ends: the server's PARTITION BY expression on
    # the stored rows, and as a bare expression, agree with partition_of.
    times = [FEB - 1, FEB, T0 - 1, T0,
             1_709_164_800 * S - 1, 1_709_164_800 * S, 1_709_251_200 * S,  # 2024-02-29, 03-01
             951_782_400 * S, 4_107_542_400 * S - 1, 0]  # 2000-02-29, 2099-12-31T23:59:59

    async def body(store: HistoryStore) -> None:
        await store.insert(batch(Table.TICKS, *({"stream": "EUR", "seq": i + 1, "ts_ns": t}
                                                for i, t in enumerate(times))))

    store_db = f"t_{uuid.uuid4().hex[:12]}"
    run_with(clickhouse_opener(clickhouse_server, store_db), body)
    client = clickhouse_server.client(timeout=scaled(5))
    try:
        parts = client.execute("SELECT DISTINCT partition FROM system.parts WHERE database = "
                               "%(db)s AND table = 'ticks' AND active", {"db": store_db})
        expr = partition_expr("ts_ns")
        computed = client.execute(f"SELECT ts_ns, {expr} FROM {store_db}.ticks")
    finally:
        client.disconnect()
    assert {int(p) for (p,) in parts} == {partition_of(t) for t in times}
    assert sorted(computed) == sorted((t, partition_of(t)) for t in times)


def test_a_dead_clickhouse_server_is_unavailable_at_once(tmp_path: Path) -> None:
    server = ClickHouseProcess(data_dir=tmp_path / "ch")
    server.start(timeout=scaled(20))

    async def body() -> None:
        store = ClickHouseHistoryStore(server.host, server.port, "t")
        try:
            await store.open()
            await store.insert(tick_batch("EUR", range(1, 4)))
            server.kill()
            with pytest.raises(StoreUnavailable, match=f"ch:127.0.0.1:{server.port}"):
                await store.ticks("EUR", 0, 2**63, 10)
            with pytest.raises(StoreUnavailable):
                await store.insert(tick_batch("EUR", range(4, 6)))
            with pytest.raises(StoreUnavailable):
                await store.ping()
            # Back on the same port and data: the store connects again by itself.
            server.start(timeout=scaled(20))
            assert (await store.watermarks(Table.TICKS)) == {"EUR": 3}
        finally:
            await store.close()
            server.stop()

        nobody = ClickHouseHistoryStore("127.0.0.1", free_port(), "t")
        try:
            with pytest.raises(StoreUnavailable):
                await nobody.open()
        finally:
            await nobody.close()

    asyncio.run(body())


def test_a_clickhouse_server_error_is_a_store_error_not_unavailable(
        clickhouse_server: ClickHouseProcess) -> None:
    database = f"t_{uuid.uuid4().hex[:12]}"

    async def body(store: HistoryStore) -> None:
        client = clickhouse_server.client(timeout=scaled(5))
        try:
            client.execute(f"DROP TABLE {database}.bars")
        finally:
            client.disconnect()
        with pytest.raises(StoreError) as info:
            await store.bars("EUR", 60, 0, 2**63)
        assert not isinstance(info.value, StoreUnavailable)
        await store.ping()  # the connection is fine

    run_with(clickhouse_opener(clickhouse_server, database), body)


# -- DuckDB only ---------------------------------------------------------------------------

def test_a_duckdb_file_held_by_another_process_is_a_clear_store_error(
        tmp_path: Path) -> None:
    path = tmp_path / "spool.duckdb"
    with duckdb_file_held(path):

        async def open_and_fail() -> None:
            store = DuckDBHistoryStore(path)
            try:
                with pytest.raises(StoreError, match=str(path)) as info:
                    await store.open()
                assert "another process" in str(info.value)
            finally:
                await store.close()

        asyncio.run(open_and_fail())
