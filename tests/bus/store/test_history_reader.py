"""FailoverHistoryReader: reads go to the active store and move to the other one when it is
unavailable; on real ClickHouse servers killed with SIGKILL, and on DuckDB stores behind a
wrapper that injects faults (the switching rules, deterministically)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.store.history import HistoryStore
from bus.store.history_ch import ClickHouseHistoryStore
from bus.store.history_duck import DuckDBHistoryStore
from bus.store.history_reader import FailoverHistoryReader
from nodes.servers.clickhouse_server import ClickHouseProcess
from protocols.errors import StoreError, StoreUnavailable
from protocols.history.schema import NS_PER_S, Table
from tests.history_support import T0, batch, rows_of, tick_batch
from tests.support import scaled

pytestmark = pytest.mark.timeout(60)

BARS = batch(Table.BARS, *({"stream": "EUR", "res_s": 60, "start_ns": T0 + 60 * i * NS_PER_S,
                            "open": 1.0, "close": 1.0 + i, "ticks": 1, "last_seq": i + 1}
                           for i in range(10)))


def test_a_read_moves_to_the_other_server_when_the_active_one_is_killed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    servers = [ClickHouseProcess(data_dir=tmp_path / name) for name in ("a", "b")]
    for server in servers:
        server.start(timeout=scaled(20))

    async def body() -> None:
        stores = [ClickHouseHistoryStore(s.host, s.port, "tickmesh") for s in servers]
        reader = FailoverHistoryReader(stores)
        try:
            await reader.open()
            for store in stores:  # the historian writes every batch to both
                await store.insert(BARS)
            expected = rows_of(BARS)[-5:]
            assert rows_of(await reader.bars("EUR", 60, 0, 2**63, countback=5)) == expected
            assert reader.stats()["switches"] == 0

            servers[0].kill()
            assert rows_of(await reader.bars("EUR", 60, 0, 2**63, countback=5)) == expected
            stats = reader.stats()
            assert (stats["switches"], stats["active"]) == (1, stores[1].name)
            assert stats["switch_ms_last"] is not None
            # It stays on the server that answers.
            assert await reader.watermarks(Table.BARS) == {"EUR": 10}
            assert reader.stats()["switches"] == 1

            servers[0].start(timeout=scaled(20))
            servers[1].kill()
            assert await reader.watermarks(Table.BARS) == {"EUR": 10}
            assert (reader.stats()["switches"], reader.active) == (2, stores[0])

            servers[0].kill()
            with pytest.raises(StoreUnavailable, match="no store answers") as info:
                await reader.ping()
            assert stores[0].name in str(info.value) and stores[1].name in str(info.value)
            assert reader.stats()["unanswered"] == 1
        finally:
            await reader.close()

    try:
        caplog.set_level("WARNING", logger="bus.store.history_reader")
        asyncio.run(body())
    finally:
        for server in servers:
            server.stop()
    switched = [r.getMessage() for r in caplog.records if "switched in" in r.getMessage()]
    assert len(switched) == 2


class Breakable:
    """A store wrapper whose calls raise ``fault`` while it is set (and count themselves)."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.name = store.name
        self.fault: Exception | None = None
        self.calls = 0

    def __getattr__(self, attr: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.store, attr)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.fault is not None:
                raise self.fault
            return await method(*args, **kwargs)
        return call


def pair(tmp_path: Path) -> tuple[Breakable, Breakable, FailoverHistoryReader]:
    a = Breakable(DuckDBHistoryStore(tmp_path / "a.duckdb"))
    b = Breakable(DuckDBHistoryStore(tmp_path / "b.duckdb"))
    return a, b, FailoverHistoryReader([a, b])  # type: ignore[list-item]


def run_pair(tmp_path: Path,
             body: Callable[[Breakable, Breakable, FailoverHistoryReader], Awaitable[None]],
             ) -> None:
    async def main() -> None:
        a, b, reader = pair(tmp_path)
        await reader.open()
        try:
            for store in (a, b):
                await store.insert(tick_batch("EUR", range(1, 6)))
            await body(a, b, reader)
        finally:
            a.fault = b.fault = None
            await reader.close()
    asyncio.run(main())


def test_calls_that_fail_together_switch_once(tmp_path: Path) -> None:
    async def body(a: Breakable, b: Breakable, reader: FailoverHistoryReader) -> None:
        a.fault = StoreUnavailable("a is away")
        got = await asyncio.gather(*(reader.ticks("EUR", 0, 2**63, 100) for _ in range(5)))
        assert all(len(cols) == 5 for cols in got)
        stats = reader.stats()
        assert (stats["switches"], stats["active"], len(stats["switch_ms"])) == (1, b.name, 1)
        calls = a.calls
        await reader.ticks("EUR", 0, 2**63, 100)
        assert a.calls == calls  # the active store is b now

    run_pair(tmp_path, body)


def test_a_store_error_is_not_a_reason_to_switch(tmp_path: Path) -> None:
    async def body(a: Breakable, b: Breakable, reader: FailoverHistoryReader) -> None:
        a.fault = StoreError("a table is missing")
        calls = b.calls
        with pytest.raises(StoreError, match="missing"):
            await reader.watermarks(Table.TICKS)
        assert b.calls == calls and reader.stats()["switches"] == 0

    run_pair(tmp_path, body)


def test_a_store_away_at_open_leaves_the_other_active_without_a_switch(
        tmp_path: Path) -> None:
    async def main() -> None:
        a, b, reader = pair(tmp_path)
        a.fault = StoreUnavailable("a is away")
        await reader.open()
        try:
            assert reader.active is b  # type: ignore[comparison-overlap]
            await reader.ping()
            assert reader.stats()["switches"] == 0
        finally:
            a.fault = None
            await reader.close()

        a, b, reader = pair(tmp_path)
        a.fault = b.fault = StoreUnavailable("away")
        with pytest.raises(StoreUnavailable, match="no store answers"):
            await reader.open()
        a.fault = b.fault = None
        await reader.close()

    asyncio.run(main())


def test_a_reader_of_one_store_raises_what_the_store_raises(tmp_path: Path) -> None:
    async def main() -> None:
        a = Breakable(DuckDBHistoryStore(tmp_path / "a.duckdb"))
        reader = FailoverHistoryReader([a])  # type: ignore[list-item]
        await reader.open()
        try:
            a.fault = StoreUnavailable("a is away")
            with pytest.raises(StoreUnavailable, match="a is away"):
                await reader.orders(None, 0, 2**63)
            assert reader.stats()["unanswered"] == 1
        finally:
            a.fault = None
            await reader.close()

    asyncio.run(main())
    with pytest.raises(ValueError, match="at least one"):
        FailoverHistoryReader([])
