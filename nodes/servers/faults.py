"""Fault injection for tests and drills: wrappers that break links on command.

Put a :class:`TcpProxy` between a ZeroMQ or Redis client and its server, or a
:class:`UdpRelay` between a tick sender and its receivers, then break the path when the test
says so: ``cut()`` drops every TCP connection and turns new ones away until ``restore()``;
the relay drops a seeded, reproducible share of datagrams, or all of them during a blackout.
Counters on each wrapper let a test wait for the fault to have happened instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

__all__ = ["TcpProxy", "UdpRelay"]

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024


class _Link:
    """One proxied connection: the client's side and the target's side."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        # abort(), not close(): a cut link must not flush what it still buffers.
        self.client.transport.abort()
        self.upstream.transport.abort()


class TcpProxy:
    """Forward TCP connections from a loopback port to ``target``; cut them on command.

    ``connections`` counts connections forwarded, ``refused`` those turned away while cut,
    ``bytes_forwarded`` the payload bytes carried in both directions.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._target = target
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False
        self._closed = False
        self.connections = 0
        self.refused = 0
        self.bytes_forwarded = 0

    @property
    def listen_port(self) -> int:
        """The port clients connect to (the one picked, once started with port 0)."""
        return self._listen_port

    @property
    def target(self) -> tuple[str, int]:
        return self._target

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def active_connections(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        """Start listening on ``listen_host:listen_port``."""
        if self._server is not None:
            raise RuntimeError("TcpProxy already started")
        self._server = await asyncio.start_server(
            self._on_accept, self._listen_host, self._listen_port
        )
        self._listen_port = self._server.sockets[0].getsockname()[1]
        log.info(
            "tcp proxy %s:%d -> %s:%d listening",
            self._listen_host,
            self._listen_port,
            *self._target,
        )

    def cut(self) -> None:
        """Close every live connection on both sides; close new ones as soon as accepted."""
        self._cut = True
        links = list(self._links)
        for link in links:
            link.abort()
        log.info("tcp proxy :%d cut (%d live connections closed)", self._listen_port, len(links))

    def restore(self) -> None:
        """Forward new connections again."""
        self._cut = False
        log.info("tcp proxy :%d restored", self._listen_port)

    async def close(self) -> None:
        """Stop listening, close every connection, cancel and await every task."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("tcp proxy :%d closed", self._listen_port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("tcp proxy :%d task failed", self._listen_port, exc_info=exc)

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine, so that the task serving the connection is one
        # this proxy owns (asyncio would otherwise create and own it).
        if self._cut or self._closed:
            self.refused += 1
            writer.transport.abort()
            return
        self._spawn(self._serve(reader, writer))

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError as exc:
            log.warning(
                "tcp proxy :%d cannot reach %s:%d: %s", self._listen_port, *self._target, exc
            )
            client_writer.transport.abort()
            return
        link = _Link(client_writer, upstream_writer)
        if self._cut or self._closed:
            # Cut while we were connecting to the target.
            self.refused += 1
            link.abort()
            return
        self.connections += 1
        self._links.add(link)
        try:
            await asyncio.gather(
                self._spawn(self._pump(client_reader, upstream_writer, link)),
                self._spawn(self._pump(upstream_reader, client_writer, link)),
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await reader.read(_READ_CHUNK):
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)
            # Pass the half-close on: the peer may still be sending the other way.
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError) as exc:
            log.debug("tcp proxy :%d link ended: %r", self._listen_port, exc)
            link.abort()


class _RelayInbound(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self._relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._relay._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp relay receive error: %r", exc)


class _RelayOutbound(asyncio.DatagramProtocol):
    """The forwarding side; ``paused`` while the transport's buffer is over its high mark."""

    def __init__(self) -> None:
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def error_received(self, exc: Exception) -> None:
        # A connected UDP socket reports ICMP port-unreachable here when the target is not
        # listening yet; that is the same as a datagram lost on the way.
        log.debug("udp relay send error: %r", exc)


class UdpRelay:
    """Forward datagrams from a loopback port to ``target``, dropping some on purpose.

    Each received datagram draws one number from ``random.Random(seed)``, whatever the
    settings, so datagram *n* of a run meets the same fate in every run with the same seed and
    drop rate. ``received``, ``forwarded`` and ``dropped`` count datagrams.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        drop_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self._target = target
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._drop_rate = _check_rate(drop_rate)
        self._rng = random.Random(seed)
        self._blackout = False
        self._inbound: asyncio.DatagramTransport | None = None
        self._outbound: asyncio.DatagramTransport | None = None
        self._outbound_protocol: _RelayOutbound | None = None
        self.received = 0
        self.forwarded = 0
        self.dropped = 0

    @property
    def listen_port(self) -> int:
        """The port senders send to (the one picked, once started with port 0)."""
        return self._listen_port

    @property
    def target(self) -> tuple[str, int]:
        return self._target

    @property
    def drop_rate(self) -> float:
        return self._drop_rate

    @property
    def in_blackout(self) -> bool:
        return self._blackout

    async def start(self) -> None:
        """Bind the listening port and connect the forwarding socket to the target."""
        if self._inbound is not None:
            raise RuntimeError("UdpRelay already started")
        loop = asyncio.get_running_loop()
        # Forward from a socket of its own, so that anything the target sends back never
        # reaches the listening socket and loops round to the target again.
        self._outbound, self._outbound_protocol = await loop.create_datagram_endpoint(
            _RelayOutbound, remote_addr=self._target
        )
        try:
            self._inbound, _ = await loop.create_datagram_endpoint(
                lambda: _RelayInbound(self), local_addr=(self._listen_host, self._listen_port)
            )
        except BaseException:
            self.close()
            raise
        self._listen_port = self._inbound.get_extra_info("sockname")[1]
        log.info(
            "udp relay %s:%d -> %s:%d drop_rate=%.3f",
            self._listen_host,
            self._listen_port,
            *self._target,
            self._drop_rate,
        )

    def close(self) -> None:
        """Stop relaying and release both sockets."""
        for transport in (self._inbound, self._outbound):
            if transport is not None:
                transport.close()
        self._inbound = None
        self._outbound = None
        self._outbound_protocol = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def set_drop_rate(self, rate: float) -> None:
        """Drop this share of datagrams from now on (0 keeps all, 1 drops all)."""
        self._drop_rate = _check_rate(rate)
        log.info("udp relay :%d drop_rate=%.3f", self._listen_port, self._drop_rate)

    def blackout(self, on: bool) -> None:
        """Drop every datagram while ``on``; the drop rate applies again once off."""
        self._blackout = on
        log.info("udp relay :%d blackout %s", self._listen_port, "on" if on else "off")

    def _on_datagram(self, data: bytes) -> None:
        self.received += 1
        draw = self._rng.random()
        outbound, protocol = self._outbound, self._outbound_protocol
        # A paused transport means the kernel is pushing back: drop (and count) rather than
        # let the transport queue datagrams without bound.
        if (
            self._blackout
            or draw < self._drop_rate
            or outbound is None
            or protocol is None
            or protocol.paused
        ):
            self.dropped += 1
            return
        outbound.sendto(data)
        self.forwarded += 1


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"drop_rate must be within [0, 1], got {rate!r}")
    return float(rate)
