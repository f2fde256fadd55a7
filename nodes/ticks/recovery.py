"""The recovery service node: a ZeroMQ ROUTER answering snapshot and gap-fill requests.

Stateless: every answer is read from the store, so any number of recovery nodes can run and a
client uses whichever answers. A malformed request gets an ``ErrorReply(BAD_REQUEST)`` (with its
id whenever the id can be read); a gap fill for a stream the store does not know settles the
whole range with nothing in it (the client reports it lost and stops asking); a store
that cannot be reached gets ``ErrorReply(STORE_UNAVAILABLE)``; the node keeps serving.
Requests are served concurrently up to ``MAX_IN_FLIGHT`` (each is one pipelined Redis call).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from bus.aio import cancel_and_wait
from bus.config import MeshConfig, RecoverySection
from bus.logutil import RateLimitedLog
from bus.sockets import RECOVERY_SERVER, open_socket
from bus.store.ticks import RedisTickStore, TickStore
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from protocols.errors import RemoteProtocolError, StoreError, StoreUnavailable
from protocols.ticks.codec import decode_request, encode_recovery, request_id_of
from protocols.ticks.messages import (
    ErrorCode,
    ErrorReply,
    GapFillReply,
    GapFillRequest,
    RecoveryReply,
    RecoveryRequest,
    SnapshotReply,
    SnapshotRequest,
)

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64


@dataclass(slots=True)
class RecoveryStats:
    snapshots: int = 0
    fills: int = 0
    ticks_served: int = 0
    bad_requests: int = 0
    store_errors: int = 0
    unknown_streams: int = 0  # gap fills for a stream no feed opened in the store (all lost)


class RecoveryNode:
    def __init__(self, cfg: MeshConfig, section: RecoverySection, *,
                 store: TickStore | None = None, stats_path: Path | None = None) -> None:
        self.section = section
        self.store: TickStore = store or RedisTickStore.from_config(cfg)
        self.ctx = zmq.asyncio.Context()
        self.sock = open_socket(self.ctx, RECOVERY_SERVER, bind=section.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats_path = stats_path
        self.stats = RecoveryStats()
        self._bad = RateLimitedLog(log, f"recovery {section.name}: bad request")
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def answer(self, req: RecoveryRequest) -> RecoveryReply:
        """Answer one decoded request from the store (never raises for store trouble)."""
        try:
            match req:
                case SnapshotRequest(rid, prefixes):
                    entries = await self.store.snapshot(prefixes)
                    self.stats.snapshots += 1
                    return SnapshotReply(rid, tuple(entries))
                case GapFillRequest(rid, stream, lo, hi):
                    res = await self.store.fill(stream, lo, hi, self.section.max_fill)
                    self.stats.fills += 1
                    self.stats.ticks_served += sum(len(b.rows) for b in res.batches)
                    if not res.known_stream:
                        self.stats.unknown_streams += 1
                    return GapFillReply(rid, stream, lo, res.settled_to, res.batches, res.void,
                                        res.unknown)
        except StoreError as exc:
            self.stats.store_errors += 1
            code = (ErrorCode.STORE_UNAVAILABLE if isinstance(exc, StoreUnavailable)
                    else ErrorCode.INTERNAL)
            log.warning("recovery %s: %s", self.section.name, exc)
            return ErrorReply(req.request_id, code, str(exc))
        raise AssertionError(f"unhandled request {req!r}")

    async def _serve_one(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            try:
                reply = await self.answer(decode_request(frames))
            except RemoteProtocolError as exc:
                self.stats.bad_requests += 1
                self._bad.warning("%s", exc.reason)
                reply = ErrorReply(request_id_of(frames), ErrorCode.BAD_REQUEST, exc.reason)
            await self.sock.send_multipart([identity, *encode_recovery(reply)])
        finally:
            self._slots.release()

    async def serve(self) -> None:
        while True:
            msg = await self.sock.recv_multipart()
            if len(msg) < 2:
                continue  # ROUTER always prefixes an identity; nothing to answer
            await self._slots.acquire()
            task = asyncio.create_task(self._serve_one(msg[0], msg[1:]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> int:
        log.info("recovery %s serving on %s", self.section.name, self.endpoint)
        tasks = [asyncio.create_task(self.serve(), name="serve")]
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.collect),
                                             name="stats"))
        try:
            return await supervise_tasks(f"recovery {self.section.name}", stop, tasks)
        finally:
            await cancel_and_wait(self._tasks, what=f"recovery {self.section.name}")
            self.sock.close(linger=0)
            await self.store.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
            self.ctx.term()

    def collect(self) -> dict[str, Any]:
        return {"node": "recovery", "name": self.section.name, **asdict(self.stats)}
