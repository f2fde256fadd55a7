"""The gateway application in this process, on a real Redis (sessions) and real sockets, its
market data fed ticks directly (``MarketData.on_ticks``, the subscriber's output): limits,
slow and silent clients, heartbeats, UDF answers. The whole mesh is in tests/nodes/gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from bus.config import GatewaySection
from bus.gateway.clients import FAST_WRITE_MAX
from bus.gateway.market import MarketData
from bus.gateway.server import Gateway, GatewayOptions, GatewayParts
from bus.gateway.sessions import SessionStore
from bus.ticks.subscriber import SubscriberOptions
from nodes.servers.redis_server import RedisProcess, free_port
from protocols.gateway.auth import User, Users, hash_password
from protocols.ticks.messages import Tick
from tests.support import scaled, wait_until

pytestmark = pytest.mark.timeout(60)

SYMBOLS = ("EURUSD", "USDJPY")
S = 10**9


def users() -> Users:
    return Users([User(n, (f"ACC-{n.upper()}",), hash_password(n, n=16), ())
                  for n in ("alice", "bob")])


class Feed:
    """Ticks into the market data as the subscriber would hand them over."""

    def __init__(self, market: MarketData) -> None:
        self.market = market
        self.seq = dict.fromkeys(SYMBOLS, 0)
        self.t = 1_800_000_000 * S

    def ticks(self, n: int, symbol: str = "EURUSD", step_ns: int = S // 100) -> None:
        out = []
        for _ in range(n):
            self.seq[symbol] += 1
            self.t += step_ns
            out.append(Tick(symbol, 1.1, 1.1002, 0.0, 1.0, self.t, time.time_ns(),
                            self.seq[symbol], 1))
        self.market.on_ticks(out)


@contextlib.asynccontextmanager
async def gateway(redis: RedisProcess, **limits: Any) -> AsyncIterator[tuple[Gateway, Feed]]:
    port = free_port()
    section = replace(GatewaySection(), listen=(f"127.0.0.1:{port}",), **limits)
    sessions = SessionStore(redis.url, "t", 60.0)
    market = MarketData(SubscriberOptions(feeds=("tcp://127.0.0.1:1",)), SYMBOLS, None, 5,
                        retention_count=100, retention_s=60.0)
    gw = Gateway(GatewayParts(users(), sessions, market, None, None, 5),
                 GatewayOptions("gw-t", "127.0.0.1", port, section))
    await gw.start()
    feed = Feed(market)
    for s in SYMBOLS:
        feed.ticks(1, s)
        await market.wait_ready(s)
    try:
        yield gw, feed
    finally:
        await gw.close()
        await market.close()
        await sessions.close()


async def login(gw: Gateway, user: str = "alice") -> str:
    async with aiohttp.ClientSession() as http, \
            http.post(f"http://127.0.0.1:{gw.options.port}/api/login",
                      json={"user": user, "password": user}) as r:
        assert r.status == 200
        token: str = (await r.json())["token"]
        return token


@contextlib.asynccontextmanager
async def ws(gw: Gateway, token: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(f"ws://127.0.0.1:{gw.options.port}/ws") as w:
        await w.send_json({"op": "hello", "v": 1, "token": token})
        welcome = await w.receive_json(timeout=5)
        assert welcome["op"] in ("welcome", "error"), welcome
        yield w


async def until(w: aiohttp.ClientWebSocketResponse, pred: Any,
                timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(scaled(timeout)):
        while True:
            msg = await w.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return {"op": "closed", "code": w.close_code}
            f: dict[str, Any] = json.loads(msg.data)
            if pred(f):
                return f


def test_every_limit_answers_with_a_named_error_on_an_open_connection(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with gateway(redis_server, max_subscriptions=2, orders_per_s=1.0,
                           max_message_bytes=4096) as (gw, _):
            token = await login(gw)
            async with ws(gw, token) as w:
                for i, stream in enumerate(("ticks:EURUSD", "ticks:USDJPY", "status")):
                    await w.send_json({"op": "subscribe", "id": i, "stream": stream})
                got = await until(w, lambda f: f["op"] == "error")
                assert got["code"] == "too_many_subscriptions" and got["id"] == 2
                await w.send_json({"op": "place", "id": 9, "order": {}})
                got = await until(w, lambda f: f.get("id") == 9)
                assert got["op"] == "order_reject" and got["reason"] == "UNAVAILABLE"
                await w.send_str(json.dumps({"op": "ping", "t": 1, "pad": "x" * 5000}))
                got = await until(w, lambda f: f["op"] in ("error", "closed"))
                assert got.get("code") in ("too_big", 1009)

    asyncio.run(main())


def test_connections_per_user_are_bounded(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with gateway(redis_server, connections_per_user=1) as (gw, _):
            token = await login(gw)
            async with ws(gw, token), ws(gw, token) as second:
                got = await until(second, lambda f: f["op"] in ("error", "closed"))
                assert got["op"] == "closed" or got["code"] == "too_many_connections"

    asyncio.run(main())


def test_a_client_that_stops_reading_costs_one_pending_write_and_slows_no_one(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with gateway(redis_server, flush_ms=5.0) as (gw, feed):
            token = await login(gw)
            # The stuck client: a raw socket with a tiny receive buffer that never reads.
            port = gw.options.port
            stuck = socket.socket()
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(("127.0.0.1", port))
            stuck.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\n\r\n")
            for frame in ({"op": "hello", "v": 1, "token": token},
                          {"op": "subscribe", "id": 1, "stream": "ticks:EURUSD"},
                          {"op": "subscribe", "id": 2, "stream": "bars:EURUSD:1S"}):
                stuck.sendall(_masked(json.dumps(frame).encode()))
            await wait_until(lambda: len(gw.clients) == 1, 5, "the stuck client's session")
            stuck_client = next(iter(gw.clients))
            # The kernel would absorb megabytes first: shrink the gateway's send buffer for
            # this one connection, so that the test reaches "the socket is full" in a second.
            assert stuck_client.ws._req is not None and stuck_client.ws._req.transport
            stuck_client.ws._req.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            async with ws(gw, token) as live:
                await live.send_json({"op": "subscribe", "id": 1, "stream": "ticks:EURUSD"})
                await until(live, lambda f: f["op"] == "subscribed")
                seen = 0

                async def drain(timeout: float) -> None:
                    nonlocal seen
                    with contextlib.suppress(TimeoutError):
                        while True:
                            f = json.loads((await live.receive(timeout=timeout)).data)
                            if f["op"] == "batch":
                                seen = max(seen, *(i["seq"] for i in f["items"]))

                for _ in range(300):  # 30,000 ticks while the stuck client reads nothing
                    feed.ticks(100)
                    await drain(0.005)
                async def has_last() -> bool:
                    await drain(0.05)
                    return seen >= feed.seq["EURUSD"]

                # The live client kept up: it gets the newest tick.
                await wait_until(has_last, 5, "the live client to get the last tick")
            # Once its socket filled, flushes passed it by (its news conflated by cursor):
            # what waits for it is the socket's buffer up to FAST_WRITE_MAX and one flush's
            # frames, never a backlog of every tick.
            assert stuck_client.stats.skipped > 10 and stuck_client.stuck_since > 0
            assert stuck_client.ws._req.transport.get_write_buffer_size() <= \
                2 * FAST_WRITE_MAX
            assert len(stuck_client.control) < 10
            assert not stuck_client.closing  # not yet: it is closed after STUCK_S
            stuck.close()

    asyncio.run(main())


def _masked(payload: bytes) -> bytes:
    """One client-to-server text frame (clients must mask, RFC 6455 5.3)."""
    mask = b"\x01\x02\x03\x04"
    head = bytes([0x81])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_silent_client_is_closed_after_three_heartbeats(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with gateway(redis_server, heartbeat_ms=100.0) as (gw, _):
            token = await login(gw)
            async with ws(gw, token) as w:
                beat = await until(w, lambda f: f["op"] == "heartbeat")
                assert beat["t"] > 0
                # It answers heartbeats but never says anything: closed after 3 x 100 ms.
                got = await until(w, lambda f: False, timeout=5)
                assert got["op"] == "closed"
            assert gw.stats.slow_closed >= 1

    asyncio.run(main())


def test_udf_history_has_the_forming_bar_and_says_no_data_before_the_first(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with gateway(redis_server) as (gw, feed):
            feed.ticks(250)  # 2.5 s of ticks: closed one-second bars and a forming one
            gw.parts.market.refresh()
            base = f"http://127.0.0.1:{gw.options.port}/udf"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/history", params={
                        "symbol": "EURUSD", "resolution": "1S", "from": "0",
                        "to": str(feed.t // S + 10), "countback": "2"}) as r:
                    got = await r.json()
                assert got["s"] == "ok" and len(got["t"]) == 2
                assert got["t"][-1] == feed.t // S  # the forming bar is the last one
                async with http.get(f"{base}/history", params={
                        "symbol": "EURUSD", "resolution": "1S", "from": "10",
                        "to": "100"}) as r:
                    assert await r.json() == {"s": "no_data"}
                async with http.get(f"{base}/history", params={
                        "symbol": "EURUSD", "resolution": "1S", "from": str(feed.t // S + 5),
                        "to": str(feed.t // S + 10)}) as r:
                    assert await r.json() == {"s": "no_data", "nextTime": feed.t // S}
                async with http.get(f"{base}/history", params={
                        "symbol": "NOPE", "resolution": "1S"}) as r:
                    assert (await r.json())["s"] == "error"
                async with http.get(f"{base}/symbols", params={"symbol": "USDJPY"}) as r:
                    info = await r.json()
                assert info["pricescale"] == 1000 and info["timezone"] == "Etc/UTC"
                async with http.get(f"{base}/time") as r:
                    assert abs(int(await r.text()) - time.time()) < 5

    asyncio.run(main())


def test_api_answers_cors_to_the_other_gateways_pages_only(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with gateway(redis_server) as (gw, _):
            gw.limits = replace(gw.limits, listen=("127.0.0.1:1", "127.0.0.1:2"))
            url = f"http://127.0.0.1:{gw.options.port}/api/login"
            async with aiohttp.ClientSession() as http:
                async with http.options(url, headers={"Origin": "http://127.0.0.1:2"}) as r:
                    assert r.status == 204
                    assert r.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:2"
                async with http.post(url, json={"user": "alice", "password": "no"},
                                     headers={"Origin": "http://127.0.0.1:2"}) as r:
                    assert r.status == 401
                    assert r.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:2"
                async with http.post(url, json={"user": "alice", "password": "alice"},
                                     headers={"Origin": "http://evil.example"}) as r:
                    assert "Access-Control-Allow-Origin" not in r.headers

    asyncio.run(main())
