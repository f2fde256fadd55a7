"""Client side of the recovery service: one DEALER connected to every recovery node.

DEALER spreads requests over the connected nodes; ``IMMEDIATE`` keeps it from queueing a request
for a node that is not connected, so a dead node costs nothing and a retry goes to a live one.
Snapshot requests are awaited with a timeout and retried; gap-fill requests are fire-and-forget,
because the arbiter that asked has its own timer and asks again if no reply comes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from bus.logutil import RateLimitedLog
from bus.sockets import RECOVERY_CLIENT, open_socket
from protocols.errors import RecoveryError, RecoveryTimeout, RemoteProtocolError
from protocols.ticks.codec import decode_reply, encode_recovery
from protocols.ticks.messages import (
    ErrorReply,
    GapFillReply,
    GapFillRequest,
    RecoveryReply,
    SnapshotReply,
    SnapshotRequest,
)

log = logging.getLogger(__name__)

CONNECT_POLL_S = 0.02


class RecoveryClient:
    def __init__(self, ctx: zmq.asyncio.Context, endpoints: tuple[str, ...],
                 on_fill: Callable[[GapFillReply], None]) -> None:
        self._sock = open_socket(ctx, RECOVERY_CLIENT, connect=endpoints)
        self._on_fill = on_fill
        self._ids = itertools.count(random.randrange(1, 2**40))
        self._waiters: dict[int, asyncio.Future[RecoveryReply]] = {}
        self._bad = RateLimitedLog(log, "recovery reply")
        self.unsent = 0  # sends refused because no recovery node was connected
        self.errors = 0  # error replies

    def send_fill(self, stream: str, from_seq: int, to_seq: int) -> bool:
        """Ask for a range; False if no recovery node is connected right now."""
        req = GapFillRequest(next(self._ids), stream, from_seq, to_seq)
        return self._send(encode_recovery(req))

    def _send(self, frames: list[bytes]) -> bool:
        fut: asyncio.Future[Any] = self._sock.send_multipart(  # type: ignore[assignment]
            frames, flags=zmq.NOBLOCK)
        if fut.done() and fut.exception() is not None:
            self.unsent += 1
            return False
        return True

    async def snapshot(self, prefixes: tuple[str, ...], timeout_s: float,
                       attempts: int) -> SnapshotReply:
        """The last value of every stream matching ``prefixes``, from whichever node answers.

        Each attempt waits ``timeout_s`` for a reply; while no node is connected yet (start-up,
        reconnect) the request is retried every ``CONNECT_POLL_S`` without using an attempt.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + attempts * timeout_s
        tried = 0
        while tried < attempts and loop.time() < deadline:
            rid = next(self._ids)
            fut: asyncio.Future[RecoveryReply] = loop.create_future()
            self._waiters[rid] = fut
            try:
                if not self._send(encode_recovery(SnapshotRequest(rid, prefixes))):
                    await asyncio.sleep(CONNECT_POLL_S)
                    continue
                tried += 1
                async with asyncio.timeout(timeout_s):  # not wait_for: see bus.aio
                    reply = await fut
                if isinstance(reply, ErrorReply):
                    raise RecoveryError(f"snapshot refused: {reply.message}")
                assert isinstance(reply, SnapshotReply)
                return reply
            except (TimeoutError, RecoveryError) as exc:
                log.info("snapshot attempt %d failed: %s", tried, exc or "timeout")
            finally:
                self._waiters.pop(rid, None)
        raise RecoveryTimeout("snapshot", tried, timeout_s)

    async def run(self) -> None:
        """Read replies until cancelled, routing each to its waiter or the fill handler."""
        while True:
            frames = await self._sock.recv_multipart()
            try:
                reply = decode_reply(frames)
            except RemoteProtocolError as exc:
                self._bad.warning("%s", exc.reason)
                continue
            waiter = self._waiters.pop(reply.request_id, None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(reply)
            elif isinstance(reply, GapFillReply):
                self._on_fill(reply)
            elif isinstance(reply, ErrorReply):
                self.errors += 1
                self._bad.warning("error reply %s: %s", reply.code.name, reply.message)

    def close(self) -> None:
        for fut in self._waiters.values():
            fut.cancel()
        self._sock.close(linger=0)
