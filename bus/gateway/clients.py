"""One WebSocket client of the gateway: its subscriptions (cursors), its pending control frames,
and how a flush writes to it without ever waiting for a slow one.

A flush builds each client's ``batch`` from its cursors (``protocols.gateway.streams``): nothing
is queued per client but control frames (acks, snapshots, errors), and those are bounded
(:data:`CONTROL_LIMIT`; past it the client is closed as a slow consumer, counted). A client
whose socket has more than :data:`FAST_WRITE_MAX` unsent, or a large write (a snapshot) still in
flight by a task of its own, is skipped by flushes (:meth:`Client.writable`): its cursors stay
where they are, so it gets the news later, newer and conflated, while every other client is
written on time; one that stays so for :data:`STUCK_S` is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from protocols.gateway.limits import TokenBucket
from protocols.gateway.streams import BarTrail, LatestValue
from protocols.gateway.wire import StreamKind, StreamName, batch_frame

__all__ = ["CLOSE_WAIT_S", "CONTROL_LIMIT", "FAST_WRITE_MAX", "Client", "ClientStats",
           "OrderItems", "SharedNews", "Subscription"]

log = logging.getLogger(__name__)

CONTROL_LIMIT = 512  # control frames waiting for one client; more: it is not reading
# A write this small to a socket with nothing unsent never waits: the transport pauses (and
# aiohttp's send waits for it) only past its 64 KiB high-water mark.
FAST_WRITE_MAX = 32 * 1024
STUCK_S = 10.0  # a client whose socket stays full this long is closed (a slow consumer)
CLOSE_WAIT_S = 1.0  # a close handshake a client does not answer in time: the socket is cut


# One flush's batch for a state of streams and cursors, and the cursors it leaves.
SharedNews = tuple[str | None, tuple[int, ...]]

# The order items of some accounts above a cursor, encoded, and the position they go up to
# (None: no longer held, a snapshot is due).
OrderItems = Callable[[int, frozenset[str]], tuple[list[str] | None, int]]


@dataclass(slots=True)
class Subscription:
    stream: StreamName
    cursor: int
    bars: BarTrail | None = None
    latest: LatestValue | None = None


@dataclass(slots=True)
class ClientStats:
    frames: int = 0
    bytes: int = 0
    slow_writes: int = 0  # writes handed to a task because the socket had bytes unsent
    skipped: int = 0  # flushes that found its socket full (its news conflated)
    resets: int = 0


@dataclass(slots=True, eq=False)  # eq=False: hashed by identity, kept in the gateway's set
class Client:
    """A connected, authenticated session."""

    ws: web.WebSocketResponse
    token: str
    session_id: str
    user: str
    accounts: frozenset[str]
    orders_bucket: TokenBucket
    subs: dict[str, Subscription] = field(default_factory=dict)
    opening: set[str] = field(default_factory=set)  # subscribes in service (a snapshot read)
    control: deque[str] = field(default_factory=deque)
    heard: float = field(default_factory=time.monotonic)
    touched: float = 0.0  # when its session's TTL renewal was last asked for
    said: float = field(default_factory=time.monotonic)
    writing: asyncio.Task[None] | None = None
    requests: set[asyncio.Task[None]] = field(default_factory=set)
    stats: ClientStats = field(default_factory=ClientStats)
    closing: bool = False
    stuck_since: float = 0.0  # when its socket was first found full (0: it is not)
    close_code: int = 1008  # policy violation: slow, silent, or a fatal error

    def say(self, text: str) -> bool:
        """Queue a control frame for the next flush; False (and the client closed) when the
        client has let :data:`CONTROL_LIMIT` of them pile up."""
        if len(self.control) >= CONTROL_LIMIT:
            self.closing = True
            return False
        self.control.append(text)
        return True

    def news(self, orders: OrderItems, t_ms: int, shared: dict[Any, SharedNews]) -> list[str]:
        """The frames a flush sends now: control frames first, then one ``batch``.

        Clients that hold the same streams at the same cursors (every client that keeps up,
        with the same subscriptions) get the same batch: ``shared`` holds, for one flush,
        each such state's batch and the cursors it moves to, so it is built once and sent to
        all of them."""
        frames = list(self.control)
        self.control.clear()
        subs = self.subs.values()
        key: Any = tuple((s.stream.name, s.cursor) for s in subs)
        if self._orders_key:
            key = (key, self.accounts)
        hit = shared.get(key)
        if hit is None:
            items: list[str] = []
            for sub in subs:
                self._items(sub, orders, items)
            hit = shared[key] = (batch_frame(t_ms, items) if items else None,
                                 tuple(s.cursor for s in subs))
        else:
            for sub, cursor in zip(subs, hit[1], strict=True):
                sub.cursor = cursor
        if hit[0] is not None:
            frames.append(hit[0])
        return frames

    @property
    def _orders_key(self) -> bool:
        return "orders" in self.subs

    def _items(self, sub: Subscription, orders: OrderItems, out: list[str]) -> None:
        kind = sub.stream.kind
        if sub.latest is not None:
            got = sub.latest.since(sub.cursor)
            if got is not None:
                out.append(got)
                sub.cursor = sub.latest.seq
        elif kind is StreamKind.BARS:
            assert sub.bars is not None
            items = sub.bars.since(sub.cursor)
            if items is None:  # fell behind the trail: the caller resends a snapshot
                sub.cursor = -1
            elif items:
                out.extend(items)
                sub.cursor = sub.bars.head
        elif kind is StreamKind.ORDERS:
            found, head = orders(sub.cursor, self.accounts)
            if found is None:
                sub.cursor = -1
            else:
                out.extend(found)
                sub.cursor = max(sub.cursor, head)

    def behind(self) -> list[Subscription]:
        """Subscriptions whose cursor fell off their trail (they need a snapshot)."""
        return [s for s in self.subs.values() if s.cursor < 0]

    def writable(self, now: float) -> bool:
        """True if a flush may write to this client now, without ever waiting for it.

        The socket's unsent bytes decide: up to :data:`FAST_WRITE_MAX` of them it is written
        (the transport cannot pause below its 64 KiB high-water mark, so a send returns at
        once); past it, or while a large write is in flight, it is not written this flush:
        its cursors stay, so it gets the news later, newer and conflated. One that stays so
        for :data:`STUCK_S` is closed. What a client costs is bounded by that buffer and one
        flush's frames."""
        transport = self.ws._req.transport if self.ws._req is not None else None
        if transport is None or transport.is_closing():
            self.closing = True
            return False
        if self.writing is None and transport.get_write_buffer_size() <= FAST_WRITE_MAX:
            self.stuck_since = 0.0
            return True
        self.stats.skipped += 1
        if self.stuck_since == 0.0:
            self.stuck_since = now
        elif now - self.stuck_since > STUCK_S:
            self.closing = True
        return False

    async def write(self, frames: list[str], spawn: Callable[[Client, list[str]], None]) -> None:
        """Send ``frames`` (the client was :meth:`writable`): small ones at once, a large one
        (a snapshot) by a task of the client's own."""
        if sum(map(len, frames)) <= FAST_WRITE_MAX:
            for text in frames:
                await self.ws.send_str(text)
                self._count(text)
            return
        self.stats.slow_writes += 1
        spawn(self, frames)

    async def write_slowly(self, frames: list[str]) -> None:
        try:
            for text in frames:
                await self.ws.send_str(text)
                self._count(text)
        except (ConnectionError, RuntimeError) as exc:  # closed under us
            log.debug("gateway: write to %s failed: %s", self.session_id, exc)
            self.closing = True
        finally:
            self.writing = None

    def end(self, code: int) -> None:
        """Close the connection at the next flush, with ``code``, after its control frames."""
        self.closing = True
        self.close_code = code

    async def close(self, code: int, why: str) -> None:
        """Send the control frames still queued (a fatal error says why), then close with
        ``code``; a client that does not take them within :data:`CLOSE_WAIT_S` (it stopped
        reading) has its socket cut instead."""
        self.closing = True
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                while self.control and not self.ws.closed:
                    await self.ws.send_str(self.control.popleft())
                await self.ws.close(code=code, message=why.encode()[:120])
        except TimeoutError:
            transport = self.ws._req.transport if self.ws._req is not None else None
            if transport is not None:
                transport.abort()

    def _count(self, text: str) -> None:
        self.stats.frames += 1
        self.stats.bytes += len(text)
        self.said = time.monotonic()
