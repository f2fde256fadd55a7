"""The contract of :class:`bus.store.ticks.TickStore`: what feeds and recovery services rely on,
whatever keeps the ticks.

* A feed session starts each stream above every number an earlier session may have used: new
  streams at 1, after a clean end right after the last checkpoint, after a crash above the
  reservation. The numbers between the last checkpoint and that reservation are reported as
  *unknown*: the killed feed may have published some of them (issue 9), so a receiver that did
  not see one counts it, never skips it. *Void* is only for numbers proven unused.
* A fill of a stream no feed ever opened is settled over the whole range with nothing in it
  (``known_stream`` False), so a client stops asking.
* A write persists runs of ticks, the last value and the checkpointed sequence of each stream,
  and may extend the stream's reservation; a retried write is harmless.
* ``fill`` speaks only for what is checkpointed (``settled_to``), returns ticks exactly as
  written with the session that published them, and pages a large range honestly.
* Any client of the store sees what another wrote (recovery services are stateless).

An implementation runs it with one fixture named ``tick_store``: an async function that opens
a store on this test's own empty data (each call opens another client on the same data); see
``tests/bus/store/test_contracts.py``. What only one implementation does (Redis keys, the
capped stream, faults of the server) is tested beside it, in ``test_ticks.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bus.store.ticks import CheckpointRun, FillResult, TickStore
from protocols.ticks.messages import Row, SeqRange
from tests.support import run_with

OpenTickStore = Callable[[], Awaitable[TickStore]]


def row(seq: int) -> Row:
    return (1.0 + seq / 1000, 1.0 + seq / 1000 + 0.0001, 0.0, 1.0, seq, seq + 1)


def rows(a: int, b: int) -> list[Row]:
    return [row(s) for s in range(a, b + 1)]


def filled_seqs(result: FillResult) -> list[int]:
    return [b.first_seq + i for b in result.batches for i in range(len(b.rows))]


class TickStoreContract:
    """Every test takes ``tick_store``; a subclass in a test module runs them all."""

    def test_new_streams_start_at_one_with_nothing_checkpointed(
            self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            assert await store.start_session("f", 1, ["A", "B"], 1000) == {"A": 1, "B": 1}
            assert await store.checkpointed(["A", "B"]) == {"A": 0, "B": 0}
            assert await store.last("A") is None
            assert await store.snapshot([""]) == []
        run_with(tick_store, body)

    def test_write_then_snapshot_last_and_fill(self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 7, ["EURUSD", "GBPUSD"], 1000)
            await store.write([CheckpointRun("EURUSD", 7, 1, rows(1, 10)),
                               CheckpointRun("GBPUSD", 7, 1, rows(1, 3))], 10_000)
            await store.write([CheckpointRun("EURUSD", 7, 11, rows(11, 20))], 10_000)
            snap = await store.snapshot(["EUR"])
            assert [(e.stream, e.session, e.seq, e.row) for e in snap] == [
                ("EURUSD", 7, 20, row(20))]
            assert [e.stream for e in await store.snapshot([""])] == ["EURUSD", "GBPUSD"]
            # Any of several prefixes, as a symbol's start (ZeroMQ's topic rule), sorted.
            assert [e.stream for e in await store.snapshot(["GBP", "EUR"])] == [
                "EURUSD", "GBPUSD"]
            assert await store.snapshot(["USD"]) == []
            last = await store.last("GBPUSD")
            assert last is not None and (last.session, last.seq, last.row) == (7, 3, row(3))
            assert await store.checkpointed(["EURUSD", "GBPUSD"]) == {"EURUSD": 20, "GBPUSD": 3}
            res = await store.fill("EURUSD", 5, 15, 1000)
            assert res.settled_to == 15
            assert filled_seqs(res) == list(range(5, 16))
            assert [r for b in res.batches for r in b.rows] == rows(5, 15)
            assert all(b.session == 7 and b.stream == "EURUSD" for b in res.batches)
            assert res.void == ()
        run_with(tick_store, body)

    def test_fill_speaks_only_for_what_is_checkpointed(self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 1000)
            await store.write([CheckpointRun("X", 1, 1, rows(1, 10))], 10_000)
            res = await store.fill("X", 8, 30, 1000)
            assert res.settled_to == 10
            assert filled_seqs(res) == [8, 9, 10]
            nothing = await store.fill("X", 11, 30, 1000)
            assert nothing.settled_to == 10 and not nothing.batches
        run_with(tick_store, body)

    def test_a_session_never_ended_is_resumed_above_its_reservation_with_an_unknown_range(
            self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 100)
            await store.write([CheckpointRun("X", 1, 1, rows(1, 10))], 10_000)
            # No end_session: the feed was killed. Numbers 11..100 may have been published.
            starts = await store.start_session("f", 2, ["X"], 100)
            assert starts == {"X": 101}
            res = await store.fill("X", 5, 101, 1000)
            assert filled_seqs(res) == list(range(5, 11))
            # Not void (proven unused): the killed feed may have published there.
            assert res.unknown == (SeqRange(11, 100),) and res.void == ()
            assert res.settled_to == 100
            part = await store.fill("X", 50, 60, 1000)
            assert part.unknown == (SeqRange(50, 60),) and part.settled_to == 60
        run_with(tick_store, body)

    def test_a_write_extends_the_reservation(self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 100)
            await store.write([CheckpointRun("X", 1, 1, rows(1, 10), reserve_to=500)], 10_000)
            assert await store.start_session("f", 2, ["X"], 100) == {"X": 501}  # killed
            res = await store.fill("X", 1, 600, 1000)
            assert filled_seqs(res) == list(range(1, 11))
            assert (res.unknown, res.void, res.settled_to) == ((SeqRange(11, 500),), (), 500)
        run_with(tick_store, body)

    def test_a_clean_end_releases_the_reservation(self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 100)
            await store.write([CheckpointRun("X", 1, 1, rows(1, 10))], 10_000)
            await store.end_session("f", {"X": 10})
            assert await store.start_session("f", 2, ["X"], 100) == {"X": 11}
            res = await store.fill("X", 1, 10, 100)
            assert res.void == () and res.unknown == ()
        run_with(tick_store, body)

    def test_a_stream_no_feed_opened_is_settled_with_nothing(
            self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 100)
            res = await store.fill("NOPE", 5, 20, 1000)
            assert (res.settled_to, res.batches, res.void, res.unknown) == (20, (), (), ())
            assert not res.known_stream
            # A stream a feed opened but has not checkpointed yet: nothing settled, ask again.
            opened = await store.fill("X", 1, 20, 1000)
            assert opened.settled_to == 0 and opened.known_stream
        run_with(tick_store, body)

    def test_each_batch_carries_the_session_that_published_it(
            self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 100)
            await store.write([CheckpointRun("X", 1, 1, rows(1, 10))], 10_000)
            await store.end_session("f", {"X": 10})
            assert await store.start_session("f", 2, ["X"], 100) == {"X": 11}
            await store.write([CheckpointRun("X", 2, 11, rows(11, 20))], 10_000)
            res = await store.fill("X", 1, 20, 100)
            assert filled_seqs(res) == list(range(1, 21))
            sessions = [b.session for b in res.batches for _ in b.rows]
            assert sessions == [1] * 10 + [2] * 10
            last = await store.last("X")
            assert last is not None and (last.session, last.seq) == (2, 20)
            assert [e.session for e in await store.snapshot(["X"])] == [2]
        run_with(tick_store, body)

    def test_a_retried_write_is_idempotent(self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 100)
            run = CheckpointRun("X", 1, 1, rows(1, 10))
            await store.write([run], 10_000)
            await store.write([run], 10_000)  # the first reply was lost; the retry must not fail
            assert filled_seqs(await store.fill("X", 1, 10, 100)) == list(range(1, 11))
        run_with(tick_store, body)

    def test_fill_pages_large_ranges(self, tick_store: OpenTickStore) -> None:
        async def body(store: TickStore) -> None:
            await store.start_session("f", 1, ["X"], 10_000)
            await store.write([CheckpointRun("X", 1, f, rows(f, f + 9))
                               for f in range(1, 1001, 10)], 10_000)
            res = await store.fill("X", 1, 1000, 100)
            assert 100 <= res.settled_to < 1000
            assert filled_seqs(res)[: res.settled_to] == list(range(1, res.settled_to + 1))
        run_with(tick_store, body)

    def test_another_client_sees_what_one_wrote(self, tick_store: OpenTickStore) -> None:
        async def write(store: TickStore) -> None:
            await store.start_session("f", 3, ["X"], 100)
            await store.write([CheckpointRun("X", 3, 1, rows(1, 5))], 10_000)

        async def read(store: TickStore) -> None:  # a recovery service, say
            assert await store.checkpointed(["X"]) == {"X": 5}
            assert filled_seqs(await store.fill("X", 1, 5, 100)) == [1, 2, 3, 4, 5]
            assert [e.seq for e in await store.snapshot(["X"])] == [5]
        run_with(tick_store, write)
        run_with(tick_store, read)
