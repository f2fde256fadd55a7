"""The feed node: source -> sequence numbers -> ZeroMQ PUB + UDP, checkpointed to Redis.

Start-up asks the store where each stream resumes (waiting, with back-off, while Redis is
unreachable: publishing without knowing the sequence would make every subscriber reset). Then
the hot path runs without any store I/O: sequence, publish on both paths, hand to the
write-behind checkpointer. Idle streams send heartbeats so receivers notice a lost tail. On
SIGTERM the feed sends end-of-session, flushes its checkpoints and releases its reservation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from bus.aio import wait_event, watchdog_from_env
from bus.config import FeedSection, MeshConfig, parse_hostport
from bus.store.ticks import RedisTickStore, TickStore
from bus.ticks.checkpoint import Checkpointer
from bus.ticks.publisher import Publisher
from nodes.common import stats_writer, supervise_tasks, write_json_atomic
from nodes.ticks.sources import EaBridge, RawTick, Replay, Simulator, Source
from protocols.backoff import Backoff
from protocols.errors import StoreError
from protocols.ticks.messages import EndOfSession, Heartbeat, Row

log = logging.getLogger(__name__)


def make_source(feed: FeedSection, actx: zmq.asyncio.Context) -> Source:
    if feed.source == "simulator":
        return Simulator(feed.symbols, feed.rate, feed.seed)
    if feed.source == "replay":
        return Replay(feed.file, feed.symbols, feed.speed, feed.loop)
    return EaBridge(actx, feed.pull, feed.symbols)


class FeedNode:
    def __init__(self, cfg: MeshConfig, feed: FeedSection, *, store: TickStore | None = None,
                 source: Source | None = None, stats_path: Path | None = None) -> None:
        self.cfg = cfg
        self.feed = feed
        self.store: TickStore = store or RedisTickStore.from_config(cfg)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.actx = zmq.asyncio.Context.shadow(self.ctx.underlying)
        self.source = source or make_source(feed, self.actx)
        self.stats_path = stats_path
        self.session = time.time_ns() // 1000  # microseconds: grows across restarts
        self.next_seq: dict[str, int] = {}
        self.last_sent: dict[str, float] = {}
        self.unreserved = 0  # ticks published beyond a confirmed reservation (store away)
        self.publisher: Publisher | None = None
        self.checkpointer: Checkpointer | None = None
        self.ready = asyncio.Event()

    async def _open_session(self, stop: asyncio.Event) -> dict[str, int]:
        backoff, failures = Backoff(base_s=0.05, cap_s=2.0), 0
        while True:
            try:
                return await self.store.start_session(self.feed.name, self.session,
                                                      self.feed.symbols,
                                                      self.feed.reserve_block)
            except StoreError as exc:
                if failures == 0:
                    log.warning("feed %s: waiting for the store to learn where sequences "
                                "resume: %s", self.feed.name, exc)
                failures += 1
                if await wait_event(stop, backoff.compute(failures, random.random())):
                    raise

    async def run(self, stop: asyncio.Event) -> int:
        try:
            starts = await self._open_session(stop)
        except StoreError:
            return 1
        self.next_seq = dict(starts)
        targets = [parse_hostport("udp_targets", t) for t in self.feed.udp_targets]
        self.publisher = Publisher(self.ctx, self.feed.pub, targets,
                                   max_datagram=self.feed.udp_max_datagram,
                                   multicast_ttl=self.feed.multicast_ttl,
                                   multicast_interface=self.feed.multicast_interface)
        self.checkpointer = Checkpointer(
            self.store, interval_s=self.feed.checkpoint_ms / 1000,
            capacity=self.feed.checkpoint_buffer, stream_cap=self.feed.stream_cap,
            reserve_block=self.feed.reserve_block,
            reserved={s: v - 1 + self.feed.reserve_block for s, v in starts.items()})
        log.info("feed %s session %d: %s on %s, UDP to %s, resuming at %s", self.feed.name,
                 self.session, self.feed.source, self.publisher.endpoint,
                 self.feed.udp_targets, starts)
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.last_sent = {s: now - 1.0 for s in self.feed.symbols}
        tasks = [asyncio.create_task(self.checkpointer.run(), name="checkpoint"),
                 asyncio.create_task(self._heartbeats(), name="heartbeat"),
                 asyncio.create_task(self._pump(), name="pump")]
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.stats),
                                             name="stats"))
        watchdog = watchdog_from_env(f"feed {self.feed.name}")
        if watchdog is not None:
            tasks.append(asyncio.create_task(watchdog.run(), name="watchdog"))
        self.ready.set()
        try:
            return await supervise_tasks(f"feed {self.feed.name}", stop, tasks)
        finally:
            await self._shutdown()
            if self.stats_path is not None:  # the final figures, for the launcher's summary
                write_json_atomic(self.stats_path, self.stats())

    def _publish(self, raw: list[RawTick], now: float) -> None:
        assert self.publisher is not None and self.checkpointer is not None
        feed_ns = time.time_ns()
        by_stream: dict[str, list[Row]] = {}
        for s, bid, ask, last, vol, src in raw:
            rows = by_stream.get(s)
            if rows is None:
                rows = by_stream[s] = []
            rows.append((bid, ask, last, vol, src, feed_ns))
        max_batch = self.feed.max_batch
        for stream, rows in by_stream.items():
            for i in range(0, len(rows), max_batch):
                chunk = rows[i:i + max_batch] if len(rows) > max_batch else rows
                first = self.next_seq[stream]
                self.next_seq[stream] = first + len(chunk)
                self.publisher.publish_batch(stream, self.session, first, chunk)
                self.checkpointer.add(stream, self.session, first, chunk)
                if first + len(chunk) - 1 > self.checkpointer.reserved(stream):
                    self.unreserved += len(chunk)
                    self.checkpointer.kick()
            self.last_sent[stream] = now

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        async for raw in self.source.batches():
            if raw:
                self._publish(raw, loop.time())
        log.info("feed %s: source ended", self.feed.name)
        await asyncio.Event().wait()  # keep serving heartbeats and checkpoints until stopped

    async def _heartbeats(self) -> None:
        assert self.publisher is not None
        loop = asyncio.get_running_loop()
        interval = self.feed.heartbeat_ms / 1000
        while True:
            await asyncio.sleep(interval / 2)
            now = loop.time()
            for stream, t in self.last_sent.items():
                if now - t >= interval:
                    self.publisher.publish(Heartbeat(stream, self.session,
                                                     self.next_seq[stream]))
                    self.last_sent[stream] = now

    async def _shutdown(self) -> None:
        try:
            if self.publisher is not None:
                for stream, nxt in self.next_seq.items():
                    self.publisher.publish(EndOfSession(stream, self.session, nxt))
            if self.checkpointer is not None and await self.checkpointer.flush():
                # Everything published is checkpointed: give back the unused reservation so
                # the next session continues without an unknown range.
                await self.store.end_session(self.feed.name,
                                             {s: n - 1 for s, n in self.next_seq.items()})
        except StoreError as exc:
            log.warning("feed %s: final checkpoint failed: %s", self.feed.name, exc)
        finally:
            self.source.close()
            if self.publisher is not None:
                self.publisher.close()
            await self.store.close()
            self.ctx.destroy(linger=0)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": "feed", "name": self.feed.name, "session": self.session,
                               "source": self.source.stats.as_dict(),
                               "unreserved": self.unreserved,
                               "next_seq": dict(self.next_seq)}
        if self.publisher is not None:
            out["publisher"] = asdict(self.publisher.stats)
        if self.checkpointer is not None:
            out["checkpoint"] = asdict(self.checkpointer.stats)
        return out
