"""The recovery node over a real ROUTER and Redis: what it answers to good and bad requests."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from bus.config import MeshConfig, MeshSection, RecoverySection, RedisSection
from bus.store.ticks import CheckpointRun, RedisTickStore
from nodes.servers.redis_server import RedisProcess
from nodes.ticks.recovery import RecoveryNode
from protocols.ticks.codec import decode_reply, encode_recovery
from protocols.ticks.messages import (
    ErrorCode,
    ErrorReply,
    GapFillReply,
    GapFillRequest,
    SeqRange,
)
from tests.support import scaled

pytestmark = [pytest.mark.timeout(30)]
PREFIX = "rectest"


def run_against(redis: RedisProcess, body: Any) -> Any:
    async def main() -> Any:
        cfg = MeshConfig(mesh=MeshSection(key_prefix=PREFIX), redis=RedisSection(url=redis.url))
        node = RecoveryNode(cfg, RecoverySection(bind="tcp://127.0.0.1:0"))
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        ctx = zmq.asyncio.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(node.endpoint)
        store = RedisTickStore(redis.url, PREFIX)

        async def ask(frames: list[bytes]) -> Any:
            await dealer.send_multipart(frames)
            return decode_reply(await asyncio.wait_for(dealer.recv_multipart(), scaled(5)))
        try:
            return await body(ask, store, node)
        finally:
            dealer.close(linger=0)
            ctx.term()
            await store.close()
            stop.set()
            assert await asyncio.wait_for(task, scaled(10)) == 0
    return asyncio.run(main())


def test_a_gap_fill_for_a_stream_no_feed_opened_settles_it_as_lost(
        redis_server: RedisProcess) -> None:
    """Issue 9: answered ``settled_to = from - 1`` ("not yet"), a client retried until it gave
    up; now the whole range is settled with nothing in it, and the node counts it."""
    async def body(ask: Any, store: RedisTickStore, node: RecoveryNode) -> None:
        await store.start_session("f", 1, ["OPEN"], 100)
        reply = await ask(encode_recovery(GapFillRequest(3, "NOPE", 10, 20)))
        assert reply == GapFillReply(3, "NOPE", 10, 20)
        assert node.stats.unknown_streams == 1
        # A stream a feed opened but did not checkpoint yet: nothing settled, ask again later.
        reply = await ask(encode_recovery(GapFillRequest(4, "OPEN", 1, 5)))
        assert reply == GapFillReply(4, "OPEN", 1, 0)
        assert node.stats.unknown_streams == 1
    run_against(redis_server, body)


def test_a_crashed_sessions_range_is_answered_unknown(redis_server: RedisProcess) -> None:
    async def body(ask: Any, store: RedisTickStore, node: RecoveryNode) -> None:
        await store.start_session("f", 1, ["X"], 100)
        row = (1.0, 1.1, 0.0, 0.0, 5, 6)
        await store.write([CheckpointRun("X", 1, 1, [row] * 10)], 10_000)
        await store.start_session("f", 2, ["X"], 100)  # the first session was killed
        reply = await ask(encode_recovery(GapFillRequest(5, "X", 9, 101)))
        assert isinstance(reply, GapFillReply)
        assert [(b.first_seq, len(b.rows)) for b in reply.batches] == [(9, 2)]
        assert (reply.settled_to, reply.void, reply.unknown) == (100, (), (SeqRange(11, 100),))
    run_against(redis_server, body)


@pytest.mark.parametrize("frames, rid", [
    pytest.param([b"TM\x02\x12", msgpack.packb({"id": 77})], 77, id="version-2"),
    pytest.param([b"TM\x01\x63", msgpack.packb({"id": 78})], 78, id="unknown-kind"),
    pytest.param([b"TM\x01\x12", msgpack.packb({"id": 79})], 79, id="missing-keys"),
    pytest.param([b"TM\x01\x13", msgpack.packb({"id": 80})], 80, id="reply-kind"),
    pytest.param([b"TM\x01\x12", b"\xc1"], 0, id="unreadable-body"),
    pytest.param([b"TM\x01\x12"], 0, id="one-frame"),
])
def test_an_error_reply_echoes_the_request_id_whenever_it_can_be_read(
        redis_server: RedisProcess, frames: list[bytes], rid: int) -> None:
    async def body(ask: Any, store: RedisTickStore, node: RecoveryNode) -> None:
        reply = await ask(frames)
        assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.BAD_REQUEST
        assert reply.request_id == rid
        assert node.stats.bad_requests == 1
        ok = await ask(encode_recovery(GapFillRequest(9, "X", 1, 1)))  # still serving
        assert isinstance(ok, GapFillReply)
    run_against(redis_server, body)

