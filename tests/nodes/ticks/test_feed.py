"""The feed node: bad input from its source is counted and logged, never takes the node down."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from bus.config import FeedSection, MeshConfig, MeshSection, RedisSection
from nodes.servers.redis_server import RedisProcess, free_port
from nodes.ticks.feed import FeedNode
from nodes.ticks.sources import EaBridge
from tests.nodes.ticks.test_sources import REJECTED, tick_map
from tests.support import scaled, wait_until

pytestmark = [pytest.mark.timeout(60)]


def ea_config(redis: RedisProcess) -> MeshConfig:
    # The node binds these from its config, which must name a port (bus.config refuses 0
    # and *): free ports (nodes.drills.ports, case 4). The test reads the PULL endpoint
    # back from the node (node.source.endpoint).
    return MeshConfig(
        mesh=MeshSection(key_prefix="feedtest"), redis=RedisSection(url=redis.url),
        feeds=(FeedSection(name="ea", source="ea", symbols=("EURUSD", "GBPUSD"),
                           pub=f"tcp://127.0.0.1:{free_port()}",
                           pull=f"tcp://127.0.0.1:{free_port()}",
                           udp_targets=(), heartbeat_ms=50),),
    ).validate()


def test_an_ea_feed_counts_every_kind_of_rejected_tick_and_keeps_running(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    """Issue 9, defect 1: the first rejected tick made the stats task die ~0.5 s later."""
    stats_path = tmp_path / "feed.json"
    sendable = [(frames, reason) for _id, frames, reason in REJECTED if frames]

    def read_stats() -> dict[str, Any]:
        try:
            return json.loads(stats_path.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    async def main() -> None:
        cfg = ea_config(redis_server)
        node = FeedNode(cfg, cfg.feeds[0], stats_path=stats_path)
        assert isinstance(node.source, EaBridge)
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        ctx = zmq.asyncio.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        try:
            await wait_until(lambda: node.ready.is_set() or task.done(), 10, "feed start")
            push.connect(node.source.endpoint)
            for frames, _reason in sendable:
                await push.send_multipart(frames)
            await push.send(msgpack.packb(tick_map()))
            await wait_until(lambda: read_stats().get("source", {}).get("accepted") == 1,
                             10, "the valid tick in the stats file")
            written = stats_path.stat().st_mtime_ns
            # Two more writes of the stats file (every 0.5 s): the task that died survives.
            for _ in range(2):
                await wait_until(lambda w=written: stats_path.stat().st_mtime_ns != w, 5,
                                 "the next stats write")
                written = stats_path.stat().st_mtime_ns
            assert not task.done(), "the feed stopped"
            source = read_stats()["source"]
            assert source["rejected"] == len(sendable)
            assert source["reasons"] == dict(Counter(reason for _f, reason in sendable))
            assert node.next_seq["EURUSD"] == 2  # the valid tick was published
        finally:
            push.close(linger=0)
            ctx.term()
            stop.set()
            rc = await asyncio.wait_for(task, scaled(10))
        assert rc == 0
        assert read_stats()["source"]["rejected"] == len(sendable)  # the final figures

    asyncio.run(main())
