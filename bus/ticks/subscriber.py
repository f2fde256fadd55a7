"""The subscriber client: ticks from both paths, first copy wins, gaps repaired, in order.

    async with Subscriber(SubscriberOptions.from_config(cfg, symbols=("EUR",))) as sub:
        async for tick in sub:
            print(tick.symbol, tick.seq, tick.bid, tick.ask)

It listens on ZeroMQ SUB (filtered by symbol prefix at the publisher) and on a UDP port, feeds
every batch header to the stream's :class:`~protocols.ticks.arbitration.StreamArbiter` (a duplicate
is dropped before its body is decoded), asks the recovery service for what both paths lost, and
hands ticks to the consumer through a bounded queue. A consumer too slow for the queue gets, by
option, *conflation* (the latest tick per symbol) or *drop-and-repair* (ticks that do not fit
are dropped and fetched again from the recovery service once there is room); both are counted.

:class:`BlockingSubscriber` runs the same client on a private event loop thread for code that is
not asynchronous (notebooks, scripts).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import zmq
import zmq.asyncio

from bus.aio import LoopThread, cancel_and_wait
from bus.config import MeshConfig, parse_hostport
from bus.logutil import RateLimitedLog
from bus.sockets import FEED_SUB, open_socket
from bus.ticks.recovery_client import RecoveryClient
from protocols.errors import ConfigError, RecoveryError, RemoteProtocolError
from protocols.stats import nearest_rank
from protocols.ticks.arbitration import (
    ArbiterConfig,
    ArbiterStats,
    Deliver,
    DeliverSnapshot,
    Effect,
    Lost,
    RequestFill,
    Reset,
    Skipped,
    StreamArbiter,
    Unknown,
)
from protocols.ticks.codec import FeedHeader, decode_header, decode_rows, topic
from protocols.ticks.messages import GapFillReply, Kind, Row, Tick

log = logging.getLogger(__name__)

UDP_RCVBUF = 4 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux: exceeds rmem_max as root
DRAIN_LIMIT = 2000  # messages handled per wake-up before yielding to the other path


@dataclass(frozen=True, slots=True)
class SubscriberOptions:
    feeds: tuple[str, ...]  # ZeroMQ PUB endpoints of the feeds
    recovery: tuple[str, ...] = ()  # ROUTER endpoints of recovery nodes
    symbols: tuple[str, ...] = ("",)  # symbol prefixes; "" = every symbol
    udp_bind: str = ""  # "host:port" to receive UDP copies on; "" = TCP only
    multicast_group: str = ""
    snapshot: bool = True  # late joiner: last value first, then live
    queue: int = 100_000
    slow_mode: Literal["drop", "conflate"] = "drop"
    arbiter: ArbiterConfig = field(default_factory=ArbiterConfig)
    recovery_timeout_s: float = 0.5
    snapshot_attempts: int = 3

    @classmethod
    def from_config(cls, cfg: MeshConfig, **overrides: Any) -> SubscriberOptions:
        s = cfg.subscriber
        opts = cls(feeds=cfg.feed_endpoints, recovery=cfg.recovery_endpoints,
                   symbols=s.symbols, udp_bind=s.udp_bind, multicast_group=s.multicast_group,
                   snapshot=s.snapshot, queue=s.queue, slow_mode=s.slow_mode,
                   arbiter=ArbiterConfig(grace_s=s.grace_ms / 1000,
                                         fill_timeout_s=s.fill_timeout_ms / 1000,
                                         give_up_s=s.give_up_ms / 1000),
                   recovery_timeout_s=s.recovery_timeout_ms / 1000)
        return replace(opts, **overrides)


class LatencyRecorder:
    """The most recent ``size`` one-way latencies in microseconds, for percentiles."""

    def __init__(self, size: int = 65536) -> None:
        self._buf = array("q", bytes(8 * size))
        self._size = size
        self.count = 0

    def add_rows(self, rows: tuple[Row, ...], now_ns: int) -> None:
        buf, size, i = self._buf, self._size, self.count
        for r in rows:
            buf[i % size] = (now_ns - r[5]) // 1000
            i += 1
        self.count = i

    def percentiles(self, *ps: float) -> list[float]:
        """The nearest-rank percentiles (``protocols.stats``) of the recorded latencies, each
        ``p`` in percent (50, 99); 0.0 for each while nothing is recorded."""
        n = min(self.count, self._size)
        if n == 0:
            return [0.0 for _ in ps]
        data = sorted(self._buf[:n])
        return [float(data[nearest_rank(n, p / 100)]) for p in ps]


@dataclass(slots=True)
class PathStats:
    messages: int = 0
    ticks: int = 0
    duplicates: int = 0  # ticks in copies that arrived second (dropped by header)
    won: int = 0  # ticks this path delivered first
    gaps: int = 0  # holes in this path's own sequence (filled by the other path or recovery)
    errors: int = 0  # malformed messages
    heartbeats: int = 0
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    next_seq: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = self.latency.percentiles(50, 99)
        return {"messages": self.messages, "ticks": self.ticks, "duplicates": self.duplicates,
                "won": self.won, "gaps": self.gaps, "errors": self.errors,
                "heartbeats": self.heartbeats, "latency_p50_us": p50, "latency_p99_us": p99}


class Subscriber:
    """Asyncio tick subscriber over ZeroMQ + UDP with sequence arbitration and gap repair."""

    def __init__(self, options: SubscriberOptions) -> None:
        if not options.feeds:
            raise ValueError("a subscriber needs at least one feed endpoint")
        self.options = options
        self._prefixes = options.symbols or ("",)
        self.tcp = PathStats()
        self.udp = PathStats()
        self._arbs: dict[str, StreamArbiter] = {}
        self._timed: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._snapshot_done = not options.snapshot
        self._queue: deque[Tick] = deque()
        self._latest: dict[str, Tick] = {}  # conflate mode: symbol -> newest unread tick
        self._ready = asyncio.Event()
        self.delivered = 0
        self.dropped_slow = 0
        self.conflated = 0
        self.lost_events: deque[Lost] = deque(maxlen=1000)
        self._bad = RateLimitedLog(log, "malformed feed message")
        self._lost_log = RateLimitedLog(log, "unrecoverable ticks")
        self._unknown_log = RateLimitedLog(log, "unknown sequence numbers")
        self._tasks: list[asyncio.Task[None]] = []
        self._ctx: zmq.asyncio.Context | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._udp_sock: socket.socket | None = None
        self._recovery: RecoveryClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.asyncio.Context()
        self._sub = open_socket(self._ctx, FEED_SUB, connect=self.options.feeds,
                                subscribe=[prefix.encode() for prefix in self._prefixes])
        if self.options.udp_bind:
            try:
                self._udp_sock = self._open_udp()
            except ConfigError:
                await self.close()
                raise
            self._loop.add_reader(self._udp_sock.fileno(), self._on_udp_readable)
        self._tasks.append(asyncio.create_task(self._zmq_reader(), name="zmq-reader"))
        if self.options.recovery:
            self._recovery = RecoveryClient(self._ctx, self.options.recovery, self._on_fill)
            self._tasks.append(asyncio.create_task(self._recovery.run(), name="recovery"))
        if self.options.snapshot:
            self._tasks.append(asyncio.create_task(self._snapshot(), name="snapshot"))

    def _open_udp(self) -> socket.socket:
        host, port = parse_hostport("udp_bind", self.options.udp_bind)
        group = self.options.multicast_group
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if group:  # several receivers of one group share the port; unicast must not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RCVBUF)
        except OSError:  # not root: the kernel caps it at rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        try:
            sock.bind(("" if group else host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError("subscriber.udp_bind", f"cannot bind {host}:{port}: "
                              f"{exc.strerror}", "give each subscriber its own udp_bind (and "
                              "list it in the feed's udp_targets), or udp_bind = \"\" for TCP "
                              "only") from None
        if group:
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(host))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
        return sock

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        await cancel_and_wait(self._tasks, what="subscriber")
        if self._udp_sock is not None and self._loop is not None:
            self._loop.remove_reader(self._udp_sock.fileno())
            self._udp_sock.close()
        if self._recovery is not None:
            self._recovery.close()
        if self._sub is not None:
            self._sub.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        self._ready.set()

    async def __aenter__(self) -> Subscriber:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- consumer API ----------------------------------------------------------------------

    async def get_many(self, max_items: int = 10_000) -> list[Tick]:
        """Wait for ticks and return up to ``max_items`` of them, in delivery order."""
        while not self._queue and not self._latest:
            if self._closed:
                raise RecoveryError("subscriber closed")
            self._ready.clear()
            await self._ready.wait()
        if self.options.slow_mode == "conflate":
            out = list(self._latest.values())[:max_items]
            for t in out:
                del self._latest[t.symbol]
            return out
        n = min(max_items, len(self._queue))
        return [self._queue.popleft() for _ in range(n)]

    async def get(self) -> Tick:
        return (await self.get_many(1))[0]

    async def __aiter__(self) -> AsyncIterator[Tick]:
        while True:
            for tick in await self.get_many():
                yield tick

    def pending(self) -> int:
        return len(self._queue) + len(self._latest)

    # -- receive paths ---------------------------------------------------------------------

    async def _zmq_reader(self) -> None:
        assert self._sub is not None
        sock: zmq.Socket[bytes] = zmq.Socket.shadow(self._sub.underlying)
        loop = asyncio.get_running_loop()
        while True:
            await self._sub.poll()
            for _ in range(DRAIN_LIMIT):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                # Per message: a drain can take milliseconds, and a stale clock made latencies
                # negative and gave the arbiter's timers a late `now`.
                now, now_ns = loop.time(), time.time_ns()
                try:
                    if len(frames) != 3:
                        raise RemoteProtocolError(f"{len(frames)} frames, need 3")
                    h = decode_header(frames[1])
                    if frames[0] != topic(h.stream):
                        raise RemoteProtocolError("topic does not match the stream")
                    self._on_message(self.tcp, h, frames[2], now, now_ns)
                except RemoteProtocolError as exc:
                    self.tcp.errors += 1
                    self._bad.warning("tcp: %s", exc.reason)
            await asyncio.sleep(0)  # let the UDP reader and timers run between drains

    def _on_udp_readable(self) -> None:
        assert self._udp_sock is not None and self._loop is not None
        sock, loop = self._udp_sock, self._loop
        for _ in range(DRAIN_LIMIT):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            now, now_ns = loop.time(), time.time_ns()
            try:
                h = decode_header(data)
                if h.stream.startswith(self._prefixes):
                    self._on_message(self.udp, h, memoryview(data)[h.body_offset:], now, now_ns)
            except RemoteProtocolError as exc:
                self.udp.errors += 1
                self._bad.warning("udp: %s", exc.reason)

    def _arbiter(self, stream: str) -> StreamArbiter:
        arb = self._arbs.get(stream)
        if arb is None:
            arb = self._arbs[stream] = StreamArbiter(
                stream, self.options.arbiter, await_snapshot=not self._snapshot_done)
        return arb

    def _on_message(self, path: PathStats, h: FeedHeader, body: bytes | memoryview,
                    now: float, now_ns: int) -> None:
        arb = self._arbiter(h.stream)
        if h.kind is not Kind.TICKS:
            if len(body):
                raise RemoteProtocolError(f"{h.kind.name} with a body")
            path.heartbeats += 1
            self._apply(arb, arb.on_heartbeat(h.session, h.first_seq, now), path)
            return
        path.messages += 1
        path.ticks += h.count
        expected = path.next_seq.get(h.stream)
        if expected is not None and h.first_seq > expected:
            path.gaps += 1
        path.next_seq[h.stream] = h.first_seq + h.count
        if not arb.wants(h.session, h.first_seq, h.count):
            path.duplicates += h.count
            return
        rows = decode_rows(body, h.count)
        path.latency.add_rows(rows, now_ns)
        self._apply(arb, arb.on_batch(h.session, h.first_seq, rows, now), path)

    # -- effects ---------------------------------------------------------------------------

    def _apply(self, arb: StreamArbiter, effects: list[Effect],
               path: PathStats | None = None) -> None:
        for e in effects:
            match e:
                case Deliver(stream, session, first, rows):
                    if path is not None:
                        path.won += len(rows)
                    self._deliver(arb, stream, session, first, rows)
                case DeliverSnapshot(entry):
                    self._push([entry.tick()])
                case RequestFill(stream, lo, hi):
                    if self._recovery is not None:
                        self._recovery.send_fill(stream, lo, hi)
                case Lost(stream, lo, hi):
                    self.lost_events.append(e)
                    self._lost_log.warning("%s %d..%d (%d ticks)", stream, lo, hi, hi - lo + 1)
                case Skipped(stream, lo, hi):
                    log.info("%s: skipped void sequences %d..%d after a feed restart",
                             stream, lo, hi)
                case Unknown(stream, lo, hi):
                    self._unknown_log.warning(
                        "%s %d..%d (%d numbers a crashed feed reserved; not received, not "
                        "stored: perhaps ticks, perhaps unused)", stream, lo, hi, hi - lo + 1)
                case Reset(stream, old, new, seq):
                    log.warning("%s: sequence reset by session %d (was %d), now at %d",
                                stream, new, old, seq)
        self._schedule(arb)

    def _deliver(self, arb: StreamArbiter, stream: str, session: int, first: int,
                 rows: tuple[Row, ...]) -> None:
        if self.options.slow_mode == "conflate":
            if stream in self._latest:
                self.conflated += 1
            self.conflated += len(rows) - 1
            self._latest[stream] = Tick.from_row(stream, first + len(rows) - 1, session,
                                                 rows[-1])
            self.delivered += len(rows)
            self._ready.set()
            return
        room = self.options.queue - len(self._queue)
        n = len(rows) if room >= len(rows) else max(room, 0)
        self._push([Tick.from_row(stream, first + i, session, rows[i]) for i in range(n)])
        if n < len(rows):
            self.dropped_slow += len(rows) - n
            assert self._loop is not None
            arb.rewind(first + n, self._loop.time())

    def _push(self, ticks: list[Tick]) -> None:
        if not ticks:
            return
        if self.options.slow_mode == "conflate":
            for t in ticks:
                self._latest[t.symbol] = t
        else:
            self._queue.extend(ticks)
        self.delivered += len(ticks)
        self._ready.set()

    def _on_fill(self, reply: GapFillReply) -> None:
        arb = self._arbs.get(reply.stream)
        if arb is None or self._loop is None:
            return
        batches = tuple((b.session, b.first_seq, b.rows) for b in reply.batches)
        self._apply(arb, arb.on_fill(reply.from_seq, reply.settled_to, batches, reply.void,
                                     self._loop.time(), reply.unknown))

    # -- timers ----------------------------------------------------------------------------

    def _schedule(self, arb: StreamArbiter) -> None:
        at = arb.deadline()
        if at is None:
            self._timed.discard(arb.stream)
            return
        self._timed.add(arb.stream)
        if self._timer is None or at < self._timer_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        now = self._loop.time()
        for stream in list(self._timed):
            arb = self._arbs[stream]
            self._apply(arb, arb.on_timer(now))
        due = [a for a in (self._arbs[s].deadline() for s in self._timed) if a is not None]
        if due and self._timer is None:
            self._arm(min(due))

    # -- snapshot --------------------------------------------------------------------------

    async def _snapshot(self) -> None:
        assert self._recovery is not None or not self.options.recovery
        entries = {}
        if self._recovery is not None:
            try:
                reply = await self._recovery.snapshot(self._prefixes,
                                                      self.options.recovery_timeout_s,
                                                      self.options.snapshot_attempts)
                entries = {e.stream: e for e in reply.entries}
            except RecoveryError as exc:
                log.warning("no snapshot (%s): starting from live data", exc)
        self._snapshot_done = True
        assert self._loop is not None
        now = self._loop.time()
        for stream in sorted(set(entries) | set(self._arbs)):
            arb = self._arbs.get(stream)
            if arb is None:  # known from the snapshot only: its last value comes first
                arb = self._arbs[stream] = StreamArbiter(stream, self.options.arbiter,
                                                         await_snapshot=True)
            self._apply(arb, arb.on_snapshot(entries.get(stream), now))

    # -- statistics ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        total = ArbiterStats()
        for arb in self._arbs.values():
            for k, v in asdict(arb.stats).items():
                setattr(total, k, getattr(total, k) + v)
        return {"delivered": self.delivered, "queued": self.pending(),
                "dropped_slow": self.dropped_slow, "conflated": self.conflated,
                "streams": len(self._arbs),
                "recovery_unsent": self._recovery.unsent if self._recovery else 0,
                "tcp": self.tcp.as_dict(), "udp": self.udp.as_dict(), **asdict(total)}


class BlockingSubscriber:
    """A :class:`Subscriber` for synchronous code: it runs on its own event-loop thread."""

    def __init__(self, options: SubscriberOptions, start_timeout_s: float = 10.0) -> None:
        self._thread = LoopThread("tickmesh-sub")
        self._sub = Subscriber(options)
        self._thread.call(self._sub.start(), start_timeout_s)

    def get_many(self, max_items: int = 10_000, timeout: float | None = None) -> list[Tick]:
        """Block until ticks arrive (``TimeoutError`` after ``timeout`` seconds)."""
        return self._thread.call(self._sub.get_many(max_items), timeout)

    def get(self, timeout: float | None = None) -> Tick:
        return self.get_many(1, timeout)[0]

    def __iter__(self) -> Iterator[Tick]:
        while True:
            yield from self.get_many()

    def stats(self) -> dict[str, Any]:
        return self._thread.run(self._sub.stats)

    def close(self) -> None:
        self._thread.close(self._sub.close())

    def __enter__(self) -> BlockingSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
