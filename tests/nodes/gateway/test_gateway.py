"""The gateway end to end: a whole mesh under ``tickmesh up`` (Redis, historian, backend pair,
executor, feed, two gateways), spoken to over real HTTP and WebSocket.

What a chart and a trader rely on: login and sessions that survive a gateway's death, bars that
resume with nothing missing or repeated, orders that execute once and are seen only by their
owner, and bad input answered with a clear error on a connection that stays open.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from nodes.drills.mesh import UpMesh, free_mesh_config, http_json

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

SYMBOL = "EURUSD"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpMesh]:
    run_dir = tmp_path_factory.mktemp("gw-mesh")
    cfg = free_mesh_config(run_dir, rate=500.0, gateways=2, orders_per_s=50.0)
    with UpMesh(cfg, run_dir, gateways=2) as m:
        m.wait_gateways(timeout=90)
        yield m


def login(url: str, user: str = "alice") -> dict[str, Any]:
    got: dict[str, Any] = http_json(f"{url}/api/login", {"user": user, "password": user})
    return got


class Conn:
    """A protocol-v1 client that records every frame it gets."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.items: dict[str, list[dict[str, Any]]] = {}
        self._task = asyncio.create_task(self._read())
        self.closed = asyncio.Event()

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                f = json.loads(msg.data)
                self.frames.append(f)
                if f["op"] == "batch":
                    for it in f["items"]:
                        self.items.setdefault(it["stream"], []).append(it)
        finally:
            self.closed.set()

    async def send(self, **frame: Any) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        rid = next(_ids)
        await self.send(op=op, id=rid, **fields)
        return await self.answer(rid)

    async def answer(self, rid: int, timeout: float = 10.0) -> dict[str, Any]:
        return await self.first(lambda f: f.get("id") == rid and f["op"] != "batch", timeout)

    async def first(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for f in self.frames[seen:]:
                if pred(f):
                    return f
            seen = len(self.frames)
            if self.closed.is_set():
                break
            await asyncio.sleep(0.01)
        raise AssertionError(f"no such frame in {self.frames[-5:]}")

    def last_pos(self, stream: str) -> list[int]:
        it = self.items[stream][-1]
        return [it["epoch"], it["seq"]]


@asynccontextmanager
async def connected(url: str, token: str, streams: dict[str, list[int]] | None = None,
                    origin: str | None = None) -> AsyncIterator[Conn]:
    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(f"{url.replace('http', 'ws')}/ws", headers=headers) as ws:
        c = Conn(ws)
        await c.send(op="hello", v=1, token=token, streams=streams or {})
        await c.first(lambda f: f["op"] in ("welcome", "error"))
        try:
            yield c
        finally:
            c._task.cancel()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_login_refuses_wrong_credentials_and_tells_the_gateways(mesh: UpMesh) -> None:
    url = mesh.urls[0]
    with pytest.raises(Exception) as err:
        http_json(f"{url}/api/login", {"user": "alice", "password": "nope"})
    assert "401" in str(err.value)
    got = http_json(f"{url}/api/gateways")
    assert got["gateways"] == list(mesh.cfg.gateway.urls)
    assert login(url)["accounts"] == ["ACC-ALICE"]


def test_ticks_and_bars_stream_live_in_order(mesh: UpMesh) -> None:
    token = login(mesh.urls[0])["token"]

    async def main() -> None:
        async with connected(mesh.urls[0], token) as c:
            assert c.frames[0]["op"] == "welcome" and c.frames[0]["user"] == "alice"
            sub = await c.request("subscribe", stream=f"bars:{SYMBOL}:1S")
            assert sub["op"] == "subscribed" and sub["mode"] == "snapshot"
            tick = await c.request("subscribe", stream=f"ticks:{SYMBOL}")
            assert tick["op"] == "subscribed"
            await c.first(lambda f: len(c.items.get(f"bars:{SYMBOL}:1S", [])) > 5, 20)
            await c.first(lambda f: len(c.items.get(f"ticks:{SYMBOL}", [])) > 5, 20)
        bars = c.items[f"bars:{SYMBOL}:1S"]
        assert bars[0]["kind"] == "snapshot" and bars[0]["bars"]
        seqs = [b["seq"] for b in bars]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        times = [b["time"] for b in bars[1:]]
        assert times == sorted(times)  # never an older bar after a newer one
        ticks = [t["seq"] for t in c.items[f"ticks:{SYMBOL}"]]
        assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)

    run(main())


def test_bad_input_gets_a_clear_error_and_the_connection_stays_open(mesh: UpMesh) -> None:
    token = login(mesh.urls[0])["token"]

    async def main() -> None:
        async with connected(mesh.urls[0], token) as c:
            await c.ws.send_str("{not json")
            bad = await c.first(lambda f: f["op"] == "error")
            assert bad["code"] == "bad_json" and not bad["fatal"]
            unknown = await c.request("subscribe", stream="ticks:NOPE")
            assert unknown["op"] == "error" and unknown["code"] == "unknown_stream"
            reject = await c.request("place", order={"account": "ACC-BOB", "client_order_id":
                                                     "x1", "symbol": SYMBOL, "side": "buy",
                                                     "type": "market", "quantity": 1})
            assert reject["op"] == "order_reject" and reject["reason"] == "NOT_YOUR_ACCOUNT"
            status = await c.request("subscribe", stream="status")
            assert status["op"] == "subscribed"
            await c.first(lambda f: "status" in c.items)
            s = c.items["status"][-1]["status"]
            assert s["backend"] in mesh.cfg.orders.clients and s["history_store"] == "duckdb"
            assert s["tick_rate"] > 0 and s["gaps_filled"] >= 0
            assert not c.closed.is_set()

    run(main())


def test_a_foreign_origin_and_a_bad_token_are_refused(mesh: UpMesh) -> None:
    url = mesh.urls[0]

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(f"{url.replace('http', 'ws')}/ws",
                                      headers={"Origin": "http://evil.example"})
            assert err.value.status == 403
        async with connected(url, "not-a-token") as c:
            await c.closed.wait()
            assert c.frames[0]["code"] == "auth" and c.frames[0]["fatal"]

    run(main())


def _order(coid: str, account: str = "ACC-ALICE") -> dict[str, Any]:
    return {"account": account, "client_order_id": coid, "symbol": SYMBOL, "side": "buy",
            "type": "market", "quantity": 1}


def test_an_order_is_acknowledged_filled_and_seen_by_its_owner_only(mesh: UpMesh) -> None:
    alice = login(mesh.urls[0])["token"]
    bob = login(mesh.urls[1], "bob")["token"]
    coid = f"t-{time.time_ns()}"

    async def main() -> None:
        async with connected(mesh.urls[0], alice) as a, connected(mesh.urls[1], bob) as b:
            await a.request("subscribe", stream="orders")
            await b.request("subscribe", stream="orders")
            ack = await a.request("place", order=_order(coid))
            assert ack["op"] == "order_ack", ack
            again = await a.request("place", order=_order(coid))  # a resend: the same order
            assert again["op"] == "order_ack" and again["order_id"] == ack["order_id"]
            await a.first(lambda f: any(it.get("order", {}).get("client_order_id") == coid
                                        and it["order"]["state"] == "FILLED"
                                        for it in a.items.get("orders", [])), 20)
            await asyncio.sleep(0.5)
        mine = [it for it in a.items["orders"] if it["kind"] == "order"]
        fills = [f for it in mine if it["order"]["client_order_id"] == coid
                 for f in it["fills"]]
        assert sum(f["quantity"] for f in fills) == 1.0  # executed once
        theirs = [it for it in b.items.get("orders", []) if it["kind"] == "order"]
        assert all(it["order"]["account"] == "ACC-BOB" for it in theirs)
        seqs = [it["seq"] for it in mine]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    run(main())


def test_a_killed_gateway_resumes_every_stream_exactly_on_the_other_one(mesh: UpMesh) -> None:
    token = login(mesh.urls[0])["token"]
    bars = f"bars:{SYMBOL}:1S"

    async def main() -> None:
        async with connected(mesh.urls[0], token) as c:
            await c.request("subscribe", stream=bars)
            await c.request("subscribe", stream="orders")
            await c.first(lambda f: len(c.items.get(bars, [])) > 3, 20)
            held = {bars: c.last_pos(bars), "orders": c.last_pos("orders")}
            before = list(c.items[bars])
            pid = mesh.kill("gateway-1")
            await asyncio.wait_for(c.closed.wait(), 10)
        # While it is away, an order: it must reach the resumed stream once.
        async with connected(mesh.urls[1], token, held) as r:
            acks = [f for f in r.frames if f["op"] == "subscribed"]
            await r.first(lambda f: sum(1 for x in r.frames if x["op"] == "subscribed") == 2)
            acks = {f["stream"]: f for f in r.frames if f["op"] == "subscribed"}
            assert acks[bars]["mode"] == "recovered" and not acks[bars]["reset"]
            assert acks["orders"]["mode"] == "recovered"
            coid = f"r-{time.time_ns()}"
            assert (await r.request("place", order=_order(coid)))["op"] == "order_ack"
            await r.first(lambda f: len(r.items.get(bars, [])) > 3, 20)
            await r.first(lambda f: any(it.get("order", {}).get("client_order_id") == coid
                                        for it in r.items.get("orders", [])), 20)
        after = r.items[bars]
        assert after[0]["seq"] > held[bars][1]  # nothing repeated
        merged = {b["time"]: b for b in before if b["kind"] == "bar"}
        for b in after:
            assert b["time"] >= max(merged)  # never older than what the chart holds
            merged[b["time"]] = b
        times = sorted(merged)
        # Every second with ticks has its bar (a 500 ticks/s feed ticks every second).
        assert times == list(range(times[0], times[-1] + 1))
        mesh.wait_restarted("gateway-1", pid)

    run(main())
