"""The raw broadcast reference of ``scripts/bench-gateway``: the least a chart server can do.

    python -m nodes.drills.rawcast MESH.toml [--listen 127.0.0.1:0] [--flush-ms 20]

It runs on the gateway's own library (aiohttp, one port, ``/ws``), subscribes to the mesh's
feeds with the subscriber library (``bus.ticks.subscriber``: both paths, gap repair, the
same options the mesh file gives every subscriber), and every ``flush_ms`` sends each client
the frame the gateway would send it: one ``batch`` (docs/GATEWAY.md section 3) holding, per
``ticks:{SYMBOL}`` stream it subscribed to, the latest ``tick`` item if the symbol ticked
since the last flush (section 4's item: ``stream``, ``epoch``, ``seq``, ``kind``, ``bid``,
``ask``, ``last``, ``volume``, ``ts``, ``ft``, ``n``).

What it leaves out, on purpose, so the difference to the gateway is what those cost:
no login or session (``hello``'s token is ignored), no resume, no limits, no heartbeats, no
per-client conflation or queue: each stream's item is encoded once per flush (by the gateway's
own ``protocols.gateway.wire.tick_item``), joined into one ``batch`` per distinct
subscription set, and that text is ``send_str`` to every client of the set in turn. It
understands ``hello`` (answered with a ``welcome``), ``subscribe`` / ``unsubscribe`` of
``ticks:*`` streams and ``ping``.

Ports (``nodes.drills.ports``, case 2): it binds ``--listen`` (port 0 by default) and its
first line on stdout, ``{"ready": true, "port": P, "pid": PID}``, says what it got. SIGTERM
(or SIGINT) stops it; its counters go to stderr as one JSON line on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bus.config import MeshConfig, load_config
from bus.ticks.subscriber import Subscriber, SubscriberOptions
from protocols.gateway.wire import batch_frame, frame, tick_item
from protocols.ticks.messages import Tick

__all__ = ["EPOCH", "RawCast", "encode_tick", "main"]

log = logging.getLogger(__name__)

EPOCH = 1  # one sequence space: rawcast never resumes anything
TICKS = "ticks:"


def encode_tick(stream: str, tick: Tick, folded: int) -> str:
    """The ``tick`` item of a tick, encoded as the gateway encodes it (a JSON fragment)."""
    return tick_item(stream, EPOCH, tick.seq, tick.bid, tick.ask, tick.last, tick.volume,
                     tick.source_time_ns, tick.feed_time_ns, folded)


@dataclass(slots=True, eq=False)  # hashed by identity: a member of the clients set
class _Client:
    ws: web.WebSocketResponse
    streams: frozenset[str] = frozenset()


@dataclass(slots=True)
class Counters:
    """What rawcast did, for its exit line."""

    clients: int = 0
    ticks: int = 0
    flushes: int = 0
    encodes: int = 0
    frames: int = 0
    bytes: int = 0
    send_errors: int = 0
    bad_frames: int = 0
    flush_late_ms_max: float = 0.0
    by_close: dict[str, int] = field(default_factory=dict)


class RawCast:
    """The server: a subscriber task, a flush task and the ``/ws`` handler."""

    def __init__(self, cfg: MeshConfig, flush_ms: float) -> None:
        self.cfg = cfg
        self.flush_s = flush_ms / 1000
        self.symbols = tuple(s for f in cfg.feeds for s in f.symbols)
        self.streams = frozenset(TICKS + s for s in self.symbols)
        self.clients: set[_Client] = set()
        self.latest: dict[str, Tick] = {}
        self.folded: dict[str, int] = {}  # symbol -> ticks since its last item went out
        self.counters = Counters()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/healthz", self._health)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "gateway": "rawcast"})

    async def run_subscriber(self) -> None:
        opts = SubscriberOptions.from_config(self.cfg, symbols=self.symbols)
        async with Subscriber(opts) as sub:
            while True:
                for tick in await sub.get_many():
                    self.latest[tick.symbol] = tick
                    self.folded[tick.symbol] = self.folded.get(tick.symbol, 0) + 1
                    self.counters.ticks += 1

    async def run_flusher(self) -> None:
        """Every ``flush_s`` on a fixed schedule (a late flush is not made up twice)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.flush_s
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            late = loop.time() - due
            self.counters.flush_late_ms_max = max(self.counters.flush_late_ms_max, late * 1000)
            due = max(due + self.flush_s, loop.time())
            await self.flush()

    async def flush(self) -> None:
        changed = {TICKS + s: n for s, n in self.folded.items() if n}
        self.folded = dict.fromkeys(self.folded, 0)
        self.counters.flushes += 1
        if not changed or not self.clients:
            return
        groups: dict[frozenset[str], list[_Client]] = {}
        for c in self.clients:
            groups.setdefault(c.streams, []).append(c)
        now_ms = time.time_ns() // 1_000_000
        fragments = {s: encode_tick(s, self.latest[s[len(TICKS):]], n) for s, n in changed.items()}
        for streams, members in groups.items():
            items = [f for s, f in fragments.items() if s in streams]
            if not items:
                continue
            text = batch_frame(now_ms, items)
            self.counters.encodes += 1
            await self._send_all(members, text)

    async def _send_all(self, members: Iterable[_Client], text: str) -> None:
        for c in members:
            if c.ws.closed:
                continue
            try:
                await c.ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:  # closing under us
                self.counters.send_errors += 1
                log.debug("send failed: %s", exc)
                continue
            self.counters.frames += 1
            self.counters.bytes += len(text)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=self.cfg.gateway.max_message_bytes)
        await ws.prepare(request)
        client = _Client(ws)
        self.counters.clients += 1
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
                await self._on_frame(client, msg.data)
        finally:
            self.clients.discard(client)
        reason = str(ws.close_code)
        self.counters.by_close[reason] = self.counters.by_close.get(reason, 0) + 1
        return ws

    async def _on_frame(self, client: _Client, text: str) -> None:
        try:
            msg = json.loads(text)
            op = msg["op"]
        except (ValueError, KeyError, TypeError):
            self.counters.bad_frames += 1
            await client.ws.send_str(frame("error", id=None, code="bad_json",
                                           message="not a JSON frame with an op"))
            return
        match op:
            case "hello":
                await client.ws.send_str(frame(
                    "welcome", v=1, gateway="rawcast", session="raw", user="", accounts=[],
                    heartbeat_ms=self.cfg.gateway.heartbeat_ms, limits={}))
                self.clients.add(client)
                for stream in msg.get("streams") or {}:
                    await self._subscribe(client, None, stream)
            case "subscribe":
                await self._subscribe(client, msg.get("id"), msg.get("stream"))
            case "unsubscribe":
                client.streams = client.streams - {msg.get("stream")}
                await client.ws.send_str(frame("unsubscribed", id=msg.get("id"),
                                               stream=msg.get("stream")))
            case "ping":
                await client.ws.send_str(frame("pong", t=msg.get("t")))
            case _:
                self.counters.bad_frames += 1
                await client.ws.send_str(frame("error", id=msg.get("id"), code="bad_request",
                                               message=f"rawcast has no op {op!r}"))

    async def _subscribe(self, client: _Client, req_id: Any, stream: Any) -> None:
        if stream not in self.streams:
            await client.ws.send_str(frame("error", id=req_id, code="unknown_stream",
                                           message=f"rawcast has no {stream!r}"))
            return
        client.streams = client.streams | {stream}
        tick = self.latest.get(stream[len(TICKS):])
        await client.ws.send_str(frame("subscribed", id=req_id, stream=stream, epoch=EPOCH,
                                       seq=tick.seq if tick else 0, mode="snapshot",
                                       reset=False))


async def serve(cfg: MeshConfig, host: str, port: int, flush_ms: float,
                stop: asyncio.Event) -> Counters:
    """Serve until ``stop``; print the ready line once bound."""
    cast = RawCast(cfg, flush_ms)
    runner = web.AppRunner(cast.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])  # the port the kernel gave ``port`` 0
    tasks = [asyncio.create_task(cast.run_subscriber(), name="subscriber"),
             asyncio.create_task(cast.run_flusher(), name="flusher")]
    sys.stdout.write(json.dumps({"ready": True, "port": bound, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    from nodes.common import supervise_tasks

    try:
        await supervise_tasks("rawcast", stop, tasks)
    finally:
        await runner.cleanup()
    return cast.counters


def main(argv: list[str] | None = None) -> int:
    from dataclasses import asdict

    from nodes.common import run_node, setup_logging

    p = argparse.ArgumentParser(prog="rawcast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the mesh file (its feeds and [subscriber])")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port (default 127.0.0.1:0)")
    p.add_argument("--flush-ms", type=float, default=None,
                   help="flush interval (default: the mesh's [gateway] flush_ms)")
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args(argv)
    setup_logging(a.log_level)
    cfg = load_config(a.config)
    host, _, port = a.listen.rpartition(":")
    if not host or not port.isdigit():
        p.error(f"--listen {a.listen!r} is not host:port")
    flush_ms = a.flush_ms if a.flush_ms is not None else cfg.gateway.flush_ms
    out: dict[str, Any] = {}

    async def run(stop: asyncio.Event) -> int:
        counters = await serve(cfg, host, int(port), flush_ms, stop)
        out.update(asdict(counters))
        return 0

    code = run_node(run, what="rawcast")
    sys.stderr.write(json.dumps({"rawcast": out}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
