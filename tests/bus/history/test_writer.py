"""HistoryWriter over real DuckDB files standing in for the two servers of a pair, with a
fault wrapper of our own in front of each (down; or an insert applied whose reply is lost): no
row lost or doubled on either, whatever the order of failures. The same writer against real
ClickHouse servers is the drill's and test_history_pair's business."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from bus.history.writer import HistoryWriter
from bus.store.history import HistoryStore
from bus.store.history_duck import DuckDBHistoryStore
from protocols.errors import StoreError, StoreUnavailable
from protocols.history.pair import Link
from protocols.history.schema import END_OF_TIME, Columns, Table
from tests.support import FakeClock

pytestmark = pytest.mark.timeout(30)
END = END_OF_TIME


class Flaky:
    """A history store that is down when told, or applies an insert and then 'loses' the
    reply (the unknown outcome of an interrupted INSERT)."""

    def __init__(self, inner: DuckDBHistoryStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = False
        self.lose_next_reply = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable(f"{self.name} is down (test)")

    async def open(self) -> None:
        self._check()
        await self.inner.open()

    async def ping(self) -> None:
        self._check()

    async def insert(self, batch: Columns) -> None:
        self._check()
        await self.inner.insert(batch)
        if self.lose_next_reply:
            self.lose_next_reply = False
            self.down = True
            raise StoreUnavailable(f"{self.name}: reply lost (test)")

    async def watermarks(self, table: Table) -> dict[str, int]:
        self._check()
        return await self.inner.watermarks(table)

    async def read_above(self, table: Table, marks: Mapping[str, int], limit: int) -> Columns:
        self._check()
        return await self.inner.read_above(table, marks, limit)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def ticks(stream: str, lo: int, hi: int) -> Columns:
    c = Columns(Table.TICKS)
    for seq in range(lo, hi + 1):
        c.append((stream, seq, 1, seq * 1_000_000, seq, 1.0, 1.1, 0.0, 0.0))
    return c


async def seqs(store: HistoryStore, stream: str) -> list[int]:
    return list((await store.ticks(stream, 0, END, 10**6)).column("seq"))


def pair(tmp: Path, clock: FakeClock) -> tuple[HistoryWriter, Flaky, Flaky, DuckDBHistoryStore]:
    a, b = (Flaky(DuckDBHistoryStore(tmp / f"{n}.duckdb")) for n in "ab")
    spool = DuckDBHistoryStore(tmp / "spool.duckdb")
    return HistoryWriter([a, b], spool, clock=clock, resync_chunk=250), a, b, spool


async def settle(w: HistoryWriter, clock: FakeClock, rounds: int = 20) -> None:
    for _ in range(rounds):
        clock.advance(1.0)
        await w.maintain()


def test_a_server_down_for_a_while_is_resynced_from_the_spool_exactly(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(100.0)
        w, a, b, spool = pair(tmp_path, clock)
        await w.open()
        await w.write([ticks("X", 1, 100)])
        b.down = True
        await w.write([ticks("X", 101, 200), ticks("Y", 1, 50)])  # b fails: spooled
        assert w.servers[1].link.state is Link.DOWN
        await w.write([ticks("X", 201, 1000)])  # spool first, then a
        await w.maintain()  # not due yet, and still down
        b.down = False
        await settle(w, clock)
        assert w.servers[1].link.state is Link.LIVE
        for s in (a, b):
            assert await seqs(s, "X") == list(range(1, 1001))
            assert await seqs(s, "Y") == list(range(1, 51))
        # Both hold everything: the spool is emptied.
        assert await spool.watermarks(Table.TICKS) == {}
        assert w.stats()["servers"][b.name]["resynced"] == 950
        await w.close()
    asyncio.run(main())


def test_an_insert_applied_but_unanswered_is_not_written_twice(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(100.0)
        w, _a, b, _ = pair(tmp_path, clock)
        await w.open()
        b.lose_next_reply = True
        await w.write([ticks("X", 1, 300)])  # b applied it, the writer does not know
        await w.write([ticks("X", 301, 400)])
        b.down = False
        await settle(w, clock)
        assert await seqs(b, "X") == list(range(1, 401))  # read back: each row once
        assert (await b.inner.watermarks(Table.TICKS)) == {"X": 400}
        assert w.servers[1].stats.resynced == 100  # only what b lacked
        await w.close()
    asyncio.run(main())


def test_both_down_then_back_in_turn_lose_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(100.0)
        w, a, b, spool = pair(tmp_path, clock)
        await w.open()
        a.down = b.down = True
        await w.write([ticks("X", 1, 100)])
        await w.write([ticks("X", 101, 200)])
        assert w.reader() is spool and await w.resume_marks(Table.TICKS) == {"X": 200}
        a.down = False
        await settle(w, clock)
        await w.write([ticks("X", 201, 300)])  # a live, b still down: spool + a
        b.down = False
        await settle(w, clock)
        for s in (a, b):
            assert await seqs(s, "X") == list(range(1, 301))
        await w.close()
    asyncio.run(main())


def test_a_restarted_writer_resumes_from_the_lower_server_and_fills_only_its_gap(
        tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(100.0)
        w, a, _b, _ = pair(tmp_path, clock)
        await w.open()
        await w.write([ticks("X", 1, 100)])
        # Killed between the two inserts of the next batch: a has it, b does not.
        await a.inner.insert(ticks("X", 101, 150))
        await w.close()
        w2, a2, b2, _ = pair(tmp_path, clock)
        await w2.open()
        assert await w2.resume_marks(Table.TICKS) == {"X": 100}
        await w2.write([ticks("X", 101, 200)])  # the replay from Redis
        for s in (a2, b2):
            assert await seqs(s, "X") == list(range(1, 201))
        await w2.close()
    asyncio.run(main())


def test_a_lone_store_that_fails_raises_to_the_caller(tmp_path: Path) -> None:
    async def main() -> None:
        a = Flaky(DuckDBHistoryStore(tmp_path / "a.duckdb"))
        w = HistoryWriter([a])
        await w.open()
        a.down = True
        with pytest.raises(StoreError):
            await w.write([ticks("X", 1, 10)])
        a.down = False
        await w.write([ticks("X", 1, 10)])
        assert await seqs(a, "X") == list(range(1, 11))
        await w.close()
    asyncio.run(main())


def test_a_pair_needs_a_spool() -> None:
    with pytest.raises(ValueError, match="spool"):
        HistoryWriter([Flaky(DuckDBHistoryStore("x")), Flaky(DuckDBHistoryStore("y"))])


class SlowInsert(Flaky):
    """A store whose inserts take ``delay`` seconds of the fake clock."""

    def __init__(self, inner: DuckDBHistoryStore, clock: FakeClock) -> None:
        super().__init__(inner)
        self.clock = clock
        self.delay = 0.0

    async def insert(self, batch: Columns) -> None:
        self.clock.advance(self.delay)
        await super().insert(batch)


def test_write_recent_max_is_the_longest_write_of_the_last_seconds(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(100.0)
        store = SlowInsert(DuckDBHistoryStore(tmp_path / "a.duckdb"), clock)
        w = HistoryWriter([store], clock=clock)
        await w.open()
        store.delay = 0.3
        await w.write([ticks("X", 1, 10)])
        store.delay = 0.1
        await w.write([ticks("X", 11, 20)])
        assert w.stats()["write_recent_max_ms"] == 300.0
        clock.advance(1.8)  # the 0.3 s write ended 1.9 s ago, the 0.1 s one 1.8 s ago
        assert w.stats()["write_recent_max_ms"] == 300.0
        clock.advance(0.15)
        assert w.stats()["write_recent_max_ms"] == 100.0
        clock.advance(1.0)
        assert w.stats()["write_recent_max_ms"] == 0.0
        assert w.stats()["write_max_ms"] == 300.0  # since the start
        await w.close()
    asyncio.run(main())


def test_a_returning_server_goes_live_while_every_write_spools_a_batch(tmp_path: Path) -> None:
    # The historian's flusher writes a batch, then maintains: under load each re-sync step
    # finds the batch spooled just before it, so "live once a step finds nothing" never came.
    async def main() -> None:
        clock = FakeClock(100.0)
        w, a, b, spool = pair(tmp_path, clock)
        await w.open()
        await w.write([ticks("X", 1, 100)])
        b.down = True
        await w.write([ticks("X", 101, 1000)])  # b fails: spooled
        b.down = False
        seq = 1000
        for _ in range(20):
            await w.write([ticks("X", seq + 1, seq + 100)])
            seq += 100
            clock.advance(1.0)
            await w.maintain()
            if w.servers[1].link.state is Link.LIVE:
                break
        assert w.servers[1].link.state is Link.LIVE  # 900 spooled rows: 4 chunks of 250
        await w.write([ticks("X", seq + 1, seq + 100)])  # straight to b now
        seq += 100
        for s in (a, b):
            assert await seqs(s, "X") == list(range(1, seq + 1))
        assert await spool.watermarks(Table.TICKS) == {}  # both hold it all: emptied
        await w.close()
    asyncio.run(main())
