"""The history query service: the historian answers readers over ZeroMQ (ROUTER / DEALER).

A DuckDB file can be open in one process only (a second one, even read-only, fails to lock
it), and the historian holds it; it also holds every stream's forming bars in memory. So a
reader asks the historian (docs/PROTOCOL.md section 17, ``protocols.history.query``):

- :class:`HistoryQueryServer` answers on a ROUTER from a store (``Historian``: its writer's
  reader) and a function that gives a forming bar. Each request is served by a task of its
  own, at most ``max_in_flight`` at once; one more is refused with ``BUSY`` at once (never
  queued). A malformed request is answered ``BAD_REQUEST`` when its id can be read, else
  counted and dropped; a store that fails gives ``STORE_UNAVAILABLE``. It keeps serving.
- :class:`RemoteHistoryStore` is the read half of :class:`bus.store.history.HistoryStore`
  (a :class:`bus.store.history_reader.HistoryReader`) plus
  :meth:`~RemoteHistoryStore.forming`, over one DEALER per historian endpoint, tried in
  order (the one that answered last first): the next after a timeout, ``STORE_UNAVAILABLE``
  or ``BUSY``; when none answers, ``StoreUnavailable``. A refusal that another historian
  would repeat (``BAD_REQUEST``, ``INTERNAL``) is a :class:`~protocols.errors.StoreError`
  with the historian's message; on ``TOO_LARGE`` a time range is asked for in halves. A
  reply that comes after its request timed out is dropped and counted.
- ``bus.history.readers.open_history_reader`` gives the readers of a mesh's ``[history]``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from bus.aio import cancel_and_wait
from bus.logutil import RateLimitedLog
from bus.sockets import (
    HISTORY_QUERY_CLIENT,
    HISTORY_QUERY_SERVER,
    HISTORY_REPLY_BYTES,
    open_socket,
)
from bus.store.history_reader import HistoryReader
from protocols.errors import RemoteProtocolError, StoreError, StoreUnavailable
from protocols.history.bars import Bar
from protocols.history.query import (
    MAX_REPLY_ROWS,
    BarsQuery,
    ColumnsReply,
    ErrorReply,
    ExecutionsQuery,
    FormingBarReply,
    FormingQuery,
    MarksReply,
    OrdersQuery,
    Pending,
    PingQuery,
    Pong,
    Query,
    QueryError,
    QueryReply,
    ReadAboveQuery,
    TicksQuery,
    WatermarksQuery,
    decode_query,
    decode_query_reply,
    encode_columns,
    encode_query,
    query_id_of,
)
from protocols.history.schema import Columns, Table

__all__ = ["MAX_IN_FLIGHT", "HistoryQueryServer", "RemoteHistoryStore"]

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16  # requests served at once; each holds a store call and its reply
# How often a request in service says so (PENDING): well inside any reader's timeout.
PENDING_S = 0.25
FormingBars = Callable[[str, int], "Bar | None"]
R = TypeVar("R")


# --- the server ------------------------------------------------------------------------------

@dataclass(slots=True)
class QueryServerStats:
    requests: int = 0  # messages received
    answered: int = 0  # requests answered with their result
    dropped: int = 0  # malformed without a readable id: nothing to answer
    errors: Counter[str] = field(default_factory=Counter)  # ERROR replies by code name

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "answered": self.answered,
                "dropped": self.dropped, "errors": dict(self.errors)}


class HistoryQueryServer:
    """Answers history queries on a ROUTER bound at ``bind``.

    ``store`` is the store read, or a function that returns the one to read now (the
    historian's writer switches between servers and its spool); ``forming(stream, res_s)``
    the bar in progress. Run :meth:`serve` as a task; :meth:`close` ends it and every
    request task, and closes the socket.
    """

    def __init__(self, store: HistoryReader | Callable[[], HistoryReader],
                 forming: FormingBars, bind: str, ctx: zmq.asyncio.Context, *,
                 max_in_flight: int = MAX_IN_FLIGHT, max_frame: int = HISTORY_REPLY_BYTES,
                 max_rows: int = MAX_REPLY_ROWS, pending_s: float = PENDING_S) -> None:
        self._store = store
        self._forming = forming
        self.max_in_flight = max_in_flight
        self.max_frame = max_frame
        self.max_rows = max_rows
        self.pending_s = pending_s
        self.sock = open_socket(ctx, HISTORY_QUERY_SERVER, bind=bind)
        self.endpoint: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats = QueryServerStats()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._bad = RateLimitedLog(log, "history query: bad request")

    def store(self) -> HistoryReader:
        return self._store() if callable(self._store) else self._store

    async def serve(self) -> None:
        """Receive requests until cancelled; each is answered by a task of its own."""
        while True:
            msg = await self.sock.recv_multipart()
            self.stats.requests += 1
            if len(msg) < 2:
                self.stats.dropped += 1  # ROUTER always prefixes an identity
                continue
            identity, frames = msg[0], msg[1:]
            try:
                query = decode_query(frames)
            except RemoteProtocolError as exc:
                self._bad.warning("%s", exc.reason)
                rid = query_id_of(frames)
                if rid:
                    await self._error(identity, rid, QueryError.BAD_REQUEST, exc.reason)
                else:
                    self.stats.dropped += 1
                continue
            if self._slots.locked():
                await self._error(identity, query.request_id, QueryError.BUSY,
                                  f"{self.max_in_flight} requests in service")
                continue
            await self._slots.acquire()  # free: never waits
            task = asyncio.create_task(self._serve_one(identity, query),
                                       name=f"history query {query.request_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve_one(self, identity: bytes, query: Query) -> None:
        try:
            try:
                replies = await self._answer_pending(identity, query)
            except _TooLarge as exc:
                await self._error(identity, query.request_id, QueryError.TOO_LARGE, str(exc))
                return
            except StoreError as exc:  # StoreUnavailable, or the store failed a read
                log.warning("history query %s: %s", type(query).__name__, exc)
                await self._error(identity, query.request_id, QueryError.STORE_UNAVAILABLE,
                                  str(exc))
                return
            except ValueError as exc:  # a value the store refuses (valid on the wire)
                await self._error(identity, query.request_id, QueryError.BAD_REQUEST,
                                  str(exc))
                return
            except Exception as exc:  # a bug here: answer, log it, keep serving
                log.exception("history query %r failed", query)
                await self._error(identity, query.request_id, QueryError.INTERNAL,
                                  f"{type(exc).__name__}: {exc}")
                return
            for frames in replies:
                await self.sock.send_multipart([identity, *frames])
            self.stats.answered += 1
        finally:
            self._slots.release()

    async def _answer_pending(self, identity: bytes, query: Query) -> list[list[bytes]]:
        """:meth:`_answer`, with a PENDING to the reader every ``pending_s`` until it is
        ready: a long store read does not look like a historian gone."""
        work = asyncio.ensure_future(self._answer(query))
        try:
            while not (await asyncio.wait({work}, timeout=self.pending_s))[0]:
                await self.sock.send_multipart([identity,
                                                *encode_query(Pending(query.request_id))])
            return work.result()
        finally:
            if not work.done():  # this task was cancelled: so is its store read
                work.cancel()
                await asyncio.wait({work})

    async def _answer(self, query: Query) -> list[list[bytes]]:
        rid = query.request_id
        match query:
            case FormingQuery(_, stream, res_s):  # memory only: no store needed
                return [encode_query(FormingBarReply(rid, self._forming(stream, res_s)))]
            case TicksQuery(_, stream, start, end, limit):
                return self._columns(rid, await self.store().ticks(stream, start, end, limit))
            case BarsQuery(_, stream, res_s, start, end, countback):
                return self._columns(rid, await self.store().bars(stream, res_s, start, end,
                                                                  countback))
            case OrdersQuery(_, account, start, end):
                return self._columns(rid, await self.store().orders(account, start, end))
            case ExecutionsQuery(_, account, start, end):
                return self._columns(rid, await self.store().executions(account, start, end))
            case ReadAboveQuery(_, table, above, limit):
                return self._columns(rid, await self.store().read_above(table, dict(above),
                                                                        limit))
            case WatermarksQuery(_, table):
                marks = await self.store().watermarks(table)
                return [encode_query(MarksReply.of(rid, table, marks))]
            case PingQuery():
                await self.store().ping()
                return [encode_query(Pong(rid))]
        raise AssertionError(f"unhandled query {query!r}")  # pragma: no cover

    def _columns(self, rid: int, cols: Columns) -> list[list[bytes]]:
        if len(cols) > self.max_rows:
            raise _TooLarge(f"{len(cols)} {cols.table.value} rows exceed the reply limit of "
                            f"{self.max_rows}: ask for a narrower range")
        return encode_columns(rid, cols, self.max_frame)

    async def _error(self, identity: bytes, rid: int, code: QueryError, message: str) -> None:
        self.stats.errors[code.name] += 1
        await self.sock.send_multipart([identity, *encode_query(ErrorReply(rid, code,
                                                                           message))])

    def collect(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "in_service": len(self._tasks),
                **self.stats.as_dict()}

    async def close(self) -> None:
        """Cancel and await every request task, then close the socket."""
        await cancel_and_wait(self._tasks, what="history query server")
        self.sock.close(linger=0)


class _TooLarge(StoreError):
    """An answer above the reply's row limit: the server answers TOO_LARGE, and the client
    splits a time range in two on it (what it raises when it cannot)."""


# --- the client ------------------------------------------------------------------------------

_Result = Columns | FormingBarReply | MarksReply | Pong | ErrorReply  # Pending: never


class _Call:
    """One request in flight on one endpoint: the parts received so far, and its outcome."""

    __slots__ = ("future", "parts", "progress")

    def __init__(self, future: asyncio.Future[_Result]) -> None:
        self.future = future
        self.parts: list[ColumnsReply] = []
        self.progress = 0  # replies received: PENDINGs and parts

    def feed(self, reply: QueryReply) -> None:
        self.progress += 1
        if self.future.done() or isinstance(reply, Pending):
            return
        if not isinstance(reply, ColumnsReply):
            self.future.set_result(reply)
            return
        if reply.part != len(self.parts) or (self.parts
                                             and reply.table is not self.parts[0].table):
            self.future.set_exception(StoreError(
                f"history query: part {reply.part} of {reply.table.value} after "
                f"{len(self.parts)} parts"))
            return
        self.parts.append(reply)
        if reply.final:
            rows = self.parts[0].rows()
            for part in self.parts[1:]:
                rows.extend(part.rows())
            self.future.set_result(rows)


@dataclass(slots=True)
class ClientStats:
    requests: int = 0  # requests sent (each attempt on each endpoint)
    timeouts: int = 0  # attempts that got no reply in time
    unsent: int = 0  # attempts on an endpoint not connected within the timeout
    failovers: int = 0  # answers that came from another endpoint than the last answer
    late: int = 0  # replies to no request waiting (it timed out): dropped
    splits: int = 0  # time ranges asked for in two halves (TOO_LARGE)
    bad_replies: int = 0  # replies that did not decode: dropped
    errors: Counter[str] = field(default_factory=Counter)  # ERROR replies by code name

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "timeouts": self.timeouts, "unsent": self.unsent,
                "failovers": self.failovers, "late": self.late, "splits": self.splits,
                "bad_replies": self.bad_replies, "errors": dict(self.errors)}


class RemoteHistoryStore:
    """The history store of a historian, read through its query service.

    ``endpoints`` are historians' ``query_bind`` addresses, tried in order; ``timeout_s``
    how long an attempt waits for a connection and then for each part of the reply.
    The sockets are made by :meth:`open` (or the first request) and closed by :meth:`close`.
    """

    def __init__(self, endpoints: Sequence[str], timeout_s: float,
                 ctx: zmq.asyncio.Context | None = None) -> None:
        if not endpoints:
            raise ValueError("a RemoteHistoryStore needs at least one endpoint")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.endpoints = tuple(endpoints)
        self.timeout_s = timeout_s
        self.name = f"historian:{','.join(self.endpoints)}"
        self._ctx = ctx
        self._socks: list[zmq.asyncio.Socket] = []
        self._readers: list[asyncio.Task[None]] = []
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._preferred = 0  # the endpoint that answered last
        self.stats = ClientStats()
        self._bad = RateLimitedLog(log, "history query: bad reply")

    async def open(self) -> None:
        """Connect to every endpoint (a historian not up yet is connected to when it is)."""
        if self._socks:
            return
        ctx = self._ctx or zmq.asyncio.Context.instance()
        self._socks = [open_socket(ctx, HISTORY_QUERY_CLIENT, connect=[ep])
                       for ep in self.endpoints]
        self._readers = [asyncio.create_task(self._read(sock), name=f"history reader {ep}")
                         for sock, ep in zip(self._socks, self.endpoints, strict=True)]

    async def close(self) -> None:
        """Close the sockets; requests still waiting raise StoreUnavailable. Idempotent."""
        await cancel_and_wait(self._readers, what="history query client")
        self._readers = []
        for call in self._calls.values():
            if not call.future.done():
                call.future.set_exception(StoreUnavailable(f"{self.name}: closed"))
        for sock in self._socks:
            sock.close(linger=0)
        self._socks = []

    # -- the read half of HistoryStore ---------------------------------------------------

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a historian answers and its store does now."""
        await self._ask(PingQuery, Pong)

    async def ticks(self, stream: str, start_ns: int, end_ns: int, limit: int) -> Columns:
        """As ``HistoryStore.ticks``, at most MAX_REPLY_ROWS rows (page by time for more)."""
        return await self._rows(lambda rid: TicksQuery(rid, stream, start_ns, end_ns,
                                                       min(limit, MAX_REPLY_ROWS)))

    async def bars(self, stream: str, res_s: int, start_ns: int, end_ns: int,
                   countback: int = 0) -> Columns:
        """As ``HistoryStore.bars``; a range of more bars than a reply holds is read in
        parts (a ``countback`` is at most MAX_REPLY_ROWS)."""
        if countback > 0:
            return await self._rows(lambda rid: BarsQuery(rid, stream, res_s, start_ns, end_ns,
                                                          countback))
        return await self._ranged(lambda rid, lo, hi: BarsQuery(rid, stream, res_s, lo, hi),
                                  start_ns, end_ns)

    async def orders(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        """As ``HistoryStore.orders``, in parts when the range holds more than a reply."""
        return await self._ranged(lambda rid, lo, hi: OrdersQuery(rid, account, lo, hi),
                                  start_ns, end_ns)

    async def executions(self, account: str | None, start_ns: int, end_ns: int) -> Columns:
        """As ``HistoryStore.executions``, in parts when the range holds more than a reply."""
        return await self._ranged(lambda rid, lo, hi: ExecutionsQuery(rid, account, lo, hi),
                                  start_ns, end_ns)

    async def read_above(self, table: Table, marks: Mapping[str, int], limit: int) -> Columns:
        """As ``HistoryStore.read_above``, at most MAX_REPLY_ROWS rows (ask again above)."""
        return await self._rows(lambda rid: ReadAboveQuery.of(rid, table, marks,
                                                               min(limit, MAX_REPLY_ROWS)))

    async def watermarks(self, table: Table) -> dict[str, int]:
        reply = await self._ask(lambda rid: WatermarksQuery(rid, table), MarksReply)
        return dict(reply.marks)

    async def forming(self, stream: str, res_s: int) -> Bar | None:
        """The bar of ``stream`` at ``res_s`` in progress in the historian's memory."""
        reply = await self._ask(lambda rid: FormingQuery(rid, stream, res_s), FormingBarReply)
        return reply.bar

    def collect(self) -> dict[str, Any]:
        return {"endpoints": list(self.endpoints), **self.stats.as_dict()}

    # -- requests ------------------------------------------------------------------------

    async def _rows(self, make: Callable[[int], Query]) -> Columns:
        return await self._ask(make, Columns)

    async def _ranged(self, make: Callable[[int, int, int], Query], start_ns: int,
                      end_ns: int) -> Columns:
        """The rows of a time-range query; when the range holds more than one reply may,
        its halves are asked for in turn and the rows put back in key order, the order of
        the store's own answer (each row's key holds its time, so no row is in both)."""
        parts = await self._halves(make, start_ns, end_ns)
        if len(parts) == 1:
            return parts[0]
        rows = parts[0]
        for part in parts[1:]:
            rows.extend(part)
        keys = [rows.column(k) for k in rows.spec.key]
        return rows.take(sorted(range(len(rows)), key=lambda i: tuple(c[i] for c in keys)))

    async def _halves(self, make: Callable[[int, int, int], Query], start_ns: int,
                      end_ns: int) -> list[Columns]:
        try:
            return [await self._rows(lambda rid: make(rid, start_ns, end_ns))]
        except _TooLarge:
            if end_ns - start_ns < 2:
                raise
        mid = start_ns + (end_ns - start_ns) // 2
        self.stats.splits += 1
        return [*await self._halves(make, start_ns, mid), *await self._halves(make, mid, end_ns)]

    async def _ask(self, make: Callable[[int], Query], want: type[R]) -> R:
        make(1)  # a bad argument raises ValueError here, before anything is sent
        await self.open()
        n = len(self.endpoints)
        failures: list[str] = []
        for idx in [(self._preferred + i) % n for i in range(n)]:
            endpoint = self.endpoints[idx]
            try:
                result = await self._attempt(idx, make)
            except TimeoutError as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
            if isinstance(result, ErrorReply):
                self.stats.errors[result.code.name] += 1
                if result.code in (QueryError.STORE_UNAVAILABLE, QueryError.BUSY):
                    failures.append(f"{endpoint}: {result.code.name} {result.message}")
                    continue
                error = _TooLarge if result.code is QueryError.TOO_LARGE else StoreError
                raise error(f"{self.name}: {result.code.name}: {result.message}")
            if not isinstance(result, want):
                raise StoreError(f"{self.name}: answered {type(result).__name__}, "
                                 f"expected {want.__name__}")
            if idx != self._preferred:
                self.stats.failovers += 1
                log.info("history reader: %s answers now (was %s)", endpoint,
                         self.endpoints[self._preferred])
                self._preferred = idx
            return result
        raise StoreUnavailable(f"{self.name}: no historian answered ({'; '.join(failures)})")

    async def _attempt(self, idx: int, make: Callable[[int], Query]) -> _Result:
        sock = self._socks[idx]
        rid = next(self._ids)
        # IMMEDIATE: a send to an endpoint not connected would wait; wait for it only as long
        # as for a reply (a historian starting, a reconnect in progress).
        # (pyzmq's stub gives Socket.poll the Poller's signature: no flags)
        ready = sock.poll(int(self.timeout_s * 1000), zmq.POLLOUT)  # type: ignore[call-arg]
        if not await ready:
            self.stats.unsent += 1
            raise TimeoutError(f"not connected within {self.timeout_s} s")
        call = _Call(asyncio.get_running_loop().create_future())
        self._calls[rid] = call
        try:
            try:  # never blocks: a connection lost since the poll refuses the send
                await sock.send_multipart(encode_query(make(rid)), flags=zmq.NOBLOCK)
            except zmq.Again:
                self.stats.unsent += 1
                raise TimeoutError("not connected") from None
            self.stats.requests += 1
            return await self._wait(call)
        finally:
            self._calls.pop(rid, None)

    async def _wait(self, call: _Call) -> _Result:
        """The call's outcome; TimeoutError after ``timeout_s`` without a reply, a PENDING or
        a further part of the reply (a long answer takes as long as it needs)."""
        seen = -1
        while seen != call.progress:
            seen = call.progress
            done, _ = await asyncio.wait({call.future}, timeout=self.timeout_s)
            if done:
                return call.future.result()
        self.stats.timeouts += 1
        raise TimeoutError(f"no reply within {self.timeout_s} s")

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                reply = decode_query_reply(frames)
            except RemoteProtocolError as exc:
                self.stats.bad_replies += 1
                self._bad.warning("%s", exc.reason)
                continue
            call = self._calls.get(reply.request_id)
            if call is None:
                self.stats.late += 1
                continue
            call.feed(reply)
