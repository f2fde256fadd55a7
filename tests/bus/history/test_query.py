"""The history query service on real ZeroMQ loopback sockets, over a real DuckDB store in a
file of the test's own: answers equal the store's own, errors reach the reader as the right
exception while the server keeps serving, BUSY over the bound, a dead or silent endpoint is
StoreUnavailable after the timeout, failover to a second endpoint, late replies dropped.

Faults come from wrappers the test controls: a store that raises or holds its reads until
released, and a ROUTER of the test's that answers only when told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from bus.config import HistorySection, MeshConfig
from bus.history.query import HistoryQueryServer, RemoteHistoryStore
from bus.history.readers import open_history_reader
from bus.sockets import HISTORY_QUERY_SERVER, HISTORY_REQUEST_BYTES, open_socket
from bus.store.history import HistoryStore
from bus.store.history_duck import DuckDBHistoryStore
from bus.store.history_reader import FailoverHistoryReader
from nodes.servers.redis_server import free_port
from protocols.errors import StoreError, StoreUnavailable
from protocols.history.bars import Bar
from protocols.history.query import (
    MAX_MARKS,
    MAX_REPLY_ROWS,
    ErrorReply,
    PingQuery,
    Pong,
    QueryError,
    QueryKind,
    ReadAboveQuery,
    decode_query,
    decode_query_reply,
    encode_query,
)
from protocols.history.schema import END_OF_TIME, NS_PER_S, Table
from protocols.wire import pack_body, pack_header
from tests.history_support import T0, batch, rows_of, tick_batch
from tests.support import run_with, scaled, wait_until

pytestmark = pytest.mark.timeout(30)

END = END_OF_TIME
S = NS_PER_S
BAR = Bar("EUR", 60, T0 + 600 * S, 1.0, 1.5, 0.9, 1.2, 3.0, 4, 601, 604)


def forming(stream: str, res_s: int) -> Bar | None:
    return BAR if (stream, res_s) == ("EUR", 60) else None


class Faulty:
    """A store whose reads raise ``fail`` while it is set, or wait while ``held``."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.name = f"faulty {store.name}"
        self.fail: Exception | None = None
        self.released = asyncio.Event()
        self.released.set()
        self.waiting = 0

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.store, name)

        async def call(*args: Any) -> Any:
            if self.fail is not None:
                raise self.fail
            self.waiting += 1
            try:
                await self.released.wait()
            finally:
                self.waiting -= 1
            return await method(*args)
        return call


async def filled_store(path: Path) -> DuckDBHistoryStore:
    store = DuckDBHistoryStore(path)
    await store.open()
    await store.insert(tick_batch("EUR", range(1, 3001)))
    await store.insert(tick_batch("XAU", range(1, 11)))
    await store.insert(batch(Table.BARS, *({"stream": "EUR", "res_s": 60,
                                            "start_ns": T0 + i * 60 * S, "open": 1.0 + i,
                                            "close": 2.0, "ticks": 3, "first_seq": 3 * i + 1,
                                            "last_seq": 3 * i + 3} for i in range(10))))
    await store.insert(batch(Table.ORDERS, *({"order_id": f"o{i}", "updated_ns": T0 + i * S,
                                              "src": i, "account": f"acc{i % 2}",
                                              "blob": bytes([i, 0, 255])}
                                             for i in range(1, 9))))
    await store.insert(batch(Table.EXECUTIONS, *({"order_id": f"o{i}", "seq": 1, "src": 10 + i,
                                                  "account": f"acc{i % 2}",
                                                  "transact_ns": T0 + i * S, "blob": b"\x00e"}
                                                 for i in range(1, 5))))
    return store


def on_store(tmp_path: Path, body: Callable[[DuckDBHistoryStore], Awaitable[None]]) -> None:
    """Run ``body`` with a filled store in a file of the test's own, closed after it."""
    run_with(lambda: filled_store(tmp_path / "h.duckdb"), body)


@contextlib.asynccontextmanager
async def serving(store: Any, *, bind: str = "tcp://127.0.0.1:*",
                  **kw: Any) -> AsyncIterator[HistoryQueryServer]:
    server = HistoryQueryServer(store, forming, bind, zmq.asyncio.Context.instance(), **kw)
    task = asyncio.create_task(server.serve())
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()


@contextlib.asynccontextmanager
async def reading(*endpoints: str, timeout_s: float = 2.0) -> AsyncIterator[RemoteHistoryStore]:
    client = RemoteHistoryStore(endpoints, scaled(timeout_s), zmq.asyncio.Context.instance())
    await client.open()
    try:
        yield client
    finally:
        await client.close()


# -- answers ---------------------------------------------------------------------------------

def test_answers_equal_the_stores_own(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        async with serving(store) as server, reading(server.endpoint) as remote:
            await remote.ping()
            for args in [("EUR", T0, END, 100_000), ("EUR", T0 + 10 * S, T0 + 20 * S, 5),
                         ("XAU", 0, END, 3), ("GBP", 0, END, 10)]:
                assert rows_of(await remote.ticks(*args)) == rows_of(await store.ticks(*args))
            for bars in [("EUR", 60, T0, END, 0), ("EUR", 60, 0, END, 4),
                         ("EUR", 60, T0 + 120 * S, T0 + 300 * S, 0), ("EUR", 300, 0, END, 0)]:
                assert rows_of(await remote.bars(*bars)) == rows_of(await store.bars(*bars))
            for account in (None, "acc0", "acc1", "nobody"):
                assert rows_of(await remote.orders(account, T0, END)) == \
                    rows_of(await store.orders(account, T0, END))
                assert rows_of(await remote.executions(account, T0 + 2 * S, END)) == \
                    rows_of(await store.executions(account, T0 + 2 * S, END))
            for table in Table:
                assert await remote.watermarks(table) == await store.watermarks(table)
            assert await remote.forming("EUR", 60) == BAR
            assert await remote.forming("EUR", 300) is None
            assert server.stats.errors == {}
            assert server.stats.answered == server.stats.requests
    on_store(tmp_path, body)


def test_an_answer_larger_than_a_frame_comes_in_parts(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        async with serving(store, max_frame=8 * 1024) as server, \
                reading(server.endpoint) as remote:
            got = await remote.ticks("EUR", 0, END, 10_000)
            assert len(got) == 3000
            assert rows_of(got) == rows_of(await store.ticks("EUR", 0, END, 10_000))
            assert server.stats.answered == 1
    on_store(tmp_path, body)


def test_a_range_with_more_rows_than_a_reply_is_read_in_halves(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        async with serving(store, max_rows=3) as server, reading(server.endpoint) as remote:
            for account in (None, "acc1"):
                assert rows_of(await remote.orders(account, 0, END)) == \
                    rows_of(await store.orders(account, 0, END))
            assert rows_of(await remote.executions(None, 0, END)) == \
                rows_of(await store.executions(None, 0, END))
            assert rows_of(await remote.bars("EUR", 60, 0, END)) == \
                rows_of(await store.bars("EUR", 60, 0, END))
            assert remote.stats.splits > 0
            # A limit is not a range: more ticks than a reply may hold is the caller's error.
            with pytest.raises(StoreError, match="TOO_LARGE") as info:
                await remote.ticks("EUR", 0, END, 4)
            assert not isinstance(info.value, StoreUnavailable)
    on_store(tmp_path, body)


def test_the_largest_request_fits_the_servers_frame_limit() -> None:
    marks = {f"{'s' * 60}{i:04}": 2**64 - 1 for i in range(MAX_MARKS)}
    frames = encode_query(ReadAboveQuery.of(2**63 - 1, Table.TICKS, marks, MAX_REPLY_ROWS))
    assert max(map(len, frames)) <= HISTORY_REQUEST_BYTES


# -- errors ----------------------------------------------------------------------------------

def test_store_errors_reach_the_reader_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        faulty = Faulty(store)
        async with serving(faulty) as server, reading(server.endpoint) as remote:
            faulty.fail = StoreUnavailable("duckdb: gone")
            with pytest.raises(StoreUnavailable, match="STORE_UNAVAILABLE duckdb: gone"):
                await remote.ticks("EUR", 0, END, 10)
            faulty.fail = ValueError("limit must be at least 1")
            with pytest.raises(StoreError, match="BAD_REQUEST: limit must be") as info:
                await remote.bars("EUR", 60, 0, END)
            assert not isinstance(info.value, StoreUnavailable)
            faulty.fail = RuntimeError("a bug")
            with pytest.raises(StoreError, match="INTERNAL: RuntimeError: a bug"):
                await remote.orders(None, 0, END)
            faulty.fail = None
            assert len(await remote.ticks("EUR", 0, END, 10)) == 10
            assert dict(server.stats.errors) == {"STORE_UNAVAILABLE": 1, "BAD_REQUEST": 1,
                                                 "INTERNAL": 1}
            assert dict(remote.stats.errors) == dict(server.stats.errors)
    on_store(tmp_path, body)


def test_malformed_requests_are_answered_or_dropped(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        ctx = zmq.asyncio.Context.instance()
        async with serving(store) as server:
            peer = ctx.socket(zmq.DEALER)
            peer.connect(server.endpoint)
            try:
                async def ask(frames: list[bytes]) -> Any:
                    await peer.send_multipart(frames)
                    async with asyncio.timeout(scaled(5)):
                        return decode_query_reply(await peer.recv_multipart())

                # an unknown table: a reply naming it, to the request's id
                reply = await ask([pack_header(QueryKind.WATERMARKS),
                                   pack_body({"id": 41, "table": "quotes"})])
                assert reply == ErrorReply(41, QueryError.BAD_REQUEST,
                                           "bad WATERMARKS: unknown table 'quotes': use "
                                           "one of ticks, bars, orders, executions")
                # a reply kind sent as a request, with an id: answered
                reply = await ask(encode_query(Pong(42)))
                assert isinstance(reply, ErrorReply) and reply.request_id == 42
                # no readable id: nothing to answer, counted
                await peer.send_multipart([b"junk", b"\xc1"])
                await wait_until(lambda: server.stats.dropped == 1, 5, "the drop")
                assert await ask(encode_query(PingQuery(43))) == Pong(43)
                assert server.stats.errors == {"BAD_REQUEST": 2}
            finally:
                peer.close(linger=0)
    on_store(tmp_path, body)


def test_over_the_bound_a_request_is_refused_busy(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        faulty = Faulty(store)
        async with serving(faulty, max_in_flight=2) as server, \
                reading(server.endpoint, timeout_s=10) as remote:
            faulty.released.clear()
            held = [asyncio.create_task(remote.ticks("EUR", 0, END, n)) for n in (5, 6)]
            await wait_until(lambda: faulty.waiting == 2, 5, "two reads in the store")
            with pytest.raises(StoreUnavailable, match="BUSY 2 requests in service"):
                await remote.ticks("EUR", 0, END, 7)
            assert server.stats.errors == {"BUSY": 1}
            faulty.released.set()
            assert [len(c) for c in await asyncio.gather(*held)] == [5, 6]
            assert len(await remote.ticks("EUR", 0, END, 7)) == 7  # room again
    on_store(tmp_path, body)


def test_a_read_longer_than_the_readers_timeout_is_waited_for_while_pending(
        tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        faulty = Faulty(store)
        async with serving(faulty, pending_s=scaled(0.05)) as server, \
                reading(server.endpoint, timeout_s=0.3) as remote:
            faulty.released.clear()
            read = asyncio.create_task(remote.ticks("XAU", 0, END, 100))
            await wait_until(lambda: faulty.waiting == 1, 5, "the read in the store")
            # The time itself is under test: the store holds the read for 3 reader timeouts.
            await asyncio.sleep(scaled(0.9))
            assert not read.done()
            faulty.released.set()
            assert len(await read) == 10
            assert remote.stats.timeouts == 0 and server.stats.answered == 1
    on_store(tmp_path, body)


# -- endpoints -------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def silent_router() -> AsyncIterator[tuple[str, zmq.asyncio.Socket]]:
    """A ROUTER that receives requests and answers only when the test sends."""
    sock = open_socket(zmq.asyncio.Context.instance(), HISTORY_QUERY_SERVER,
                       bind="tcp://127.0.0.1:*")
    try:
        yield sock.getsockopt_string(zmq.LAST_ENDPOINT), sock
    finally:
        sock.close(linger=0)


def test_a_dead_or_silent_endpoint_is_unavailable_after_the_timeout() -> None:
    async def body() -> None:
        dead = f"tcp://127.0.0.1:{free_port()}"
        async with reading(dead, timeout_s=0.2) as remote:
            with pytest.raises(StoreUnavailable, match="not connected within"):
                await remote.ping()
            assert remote.stats.unsent == 1
        async with silent_router() as (endpoint, router), \
                reading(endpoint, timeout_s=0.2) as remote:
            with pytest.raises(StoreUnavailable, match="no reply within"):
                await remote.ping()
            assert remote.stats.timeouts == 1
            # the answer comes after the request gave up: dropped and counted
            identity, *frames = await router.recv_multipart()
            request = decode_query(frames)
            await router.send_multipart([identity, *encode_query(Pong(request.request_id))])
            await wait_until(lambda: remote.stats.late == 1, 5, "the late reply counted")
    asyncio.run(body())


def test_failover_to_the_next_endpoint_and_back_after_a_restart(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        async with silent_router() as (silent, _router), serving(store) as server, \
                reading(silent, server.endpoint, timeout_s=0.3) as remote:
            assert len(await remote.ticks("XAU", 0, END, 100)) == 10
            assert (remote.stats.timeouts, remote.stats.failovers) == (1, 1)
            await remote.ping()  # straight to the one that answered
            assert remote.stats.timeouts == 1
        # A historian restarted on the same address is found again by the same reader.
        port = free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        async with reading(endpoint, timeout_s=2) as remote:
            async with serving(store, bind=endpoint):
                await remote.ping()
            with pytest.raises(StoreUnavailable):
                await remote.ping()
            async with serving(store, bind=endpoint):
                assert await remote.forming("EUR", 60) == BAR
    on_store(tmp_path, body)


def test_open_history_reader_reads_the_historian_of_a_mesh(tmp_path: Path) -> None:
    async def body(store: DuckDBHistoryStore) -> None:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg = MeshConfig(history=HistorySection(query_bind=endpoint.replace("127.0.0.1", "*")))
        async with serving(store, bind=endpoint):
            readers = open_history_reader(cfg)
            await readers.open()
            reader, bars = readers
            try:
                assert len(await reader.ticks("EUR", 0, END, 5)) == 5
                assert await bars.forming("EUR", 60) == BAR
            finally:
                await readers.close()
    on_store(tmp_path, body)


def test_on_clickhouse_the_forming_bar_is_none_while_the_historian_is_away() -> None:
    async def body() -> None:
        cfg = MeshConfig(history=HistorySection(
            store="clickhouse", query_bind=f"tcp://127.0.0.1:{free_port()}",
            receive_timeout_s=scaled(0.2)))
        readers = open_history_reader(cfg)
        assert isinstance(readers.reader, FailoverHistoryReader)
        await readers.forming.open()  # the servers are not needed for this
        try:
            assert await readers.forming.forming("EUR", 60) is None
        finally:
            await readers.close()
    asyncio.run(body())
