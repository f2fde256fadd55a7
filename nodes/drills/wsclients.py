"""WebSocket chart clients for benchmarks and drills: many protocol-v1 clients per process.

A drill runs its clients in processes of their own (so their CPU is not the server's, and
one client process's event loop is not the bottleneck of all of them): :class:`ClientFleet`
starts ``processes`` children (``python -m nodes.drills.wsclients``), each an asyncio loop
(uvloop) with its share of the clients, every one an ``aiohttp`` ``ws_connect`` to ``/ws``
speaking docs/GATEWAY.md protocol v1:

* log in once per process (``POST /api/login`` with the spec's credentials; the gateway
  takes a few logins a second from one address, so the process's clients share the session
  as a user's browser tabs do) unless the spec has none (rawcast), then ``hello`` with
  ``streams: {}`` and one ``subscribe`` per stream;
* answer every ``heartbeat_ms`` with a ``ping`` (the server drops a silent client);
* per ``tick`` item of a ``batch``, while a measuring window is open, the **staleness** of
  that price: the wall clock when the frame was received minus the item's ``ft`` (feed time,
  epoch µs; the feed and the clients share this machine's clock), in µs; and per client the
  frames and bytes it received;
* when the socket closes and the spec says ``reconnect``: the next URL of the spec after a
  back-off (``protocols.backoff``, 10 ms doubling to 200 ms), ``hello`` with the same token
  and ``streams`` = the ``(epoch, seq)`` it holds per stream, and the **resume time**: from
  the moment the socket closed to the first ``batch`` after the new ``welcome`` and every
  stream's ``subscribed`` (the chart is live again);
* with ``check``, every item of every stream against what the client holds
  (:class:`StreamCheck`): duplicates (a ``seq`` at or below the one held, same epoch),
  resets and snapshots after a reconnect, and what is missing: for bars the buckets skipped
  (consecutive bar times more than one resolution apart; the bench's feed ticks every
  bucket), for a stream the spec names ``consecutive`` the positions skipped (``orders``,
  when the session's accounts are the only ones that trade).

The line protocol (``nodes.drills.procs``): ``connect`` (the spec and this child's share),
``window_start``, ``window_end`` (the staleness samples go to a file the parent names, as
int64 µs, not through the pipe), ``resume_arm``, ``resume_wait``, ``close``, ``quit``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodes.drills.measure import latency_ms
from nodes.drills.procs import Children, LineChild
from protocols.backoff import Backoff
from protocols.errors import DrillError

__all__ = [
    "ClientFleet",
    "FleetSpec",
    "StreamCheck",
    "WindowResult",
    "bar_seconds",
    "main",
    "split",
]

log = logging.getLogger(__name__)

RECONNECT = Backoff(base_s=0.01, cap_s=0.2, jitter=0.5)
CONNECTS_AT_ONCE = 32  # per process: a thousand simultaneous handshakes only time out
_RES_S = {"1S": 1, "1D": 86_400}
_BATCH = re.compile(r'"op":\s*"batch"')
_FT = re.compile(r'"ft":\s*(\d+)')


def bar_seconds(stream: str) -> int:
    """The bucket width of a ``bars:{SYMBOL}:{RES}`` stream (TradingView resolution names:
    ``1S`` a second, ``1`` / ``5`` / ``60`` minutes, ``1D`` a day)."""
    res = stream.rsplit(":", 1)[1]
    return _RES_S.get(res) or int(res) * 60


def split(n: int, parts: int) -> list[int]:
    """``n`` clients over ``parts`` processes, as evenly as whole clients go."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _seq_key(seq: Any) -> tuple[int, ...]:
    """A stream's ``seq`` as something ordered: an int, or a Redis stream id ``ms-n``."""
    if isinstance(seq, int):
        return (seq,)
    return tuple(int(p) for p in str(seq).split("-"))


@dataclass(slots=True)
class StreamCheck:
    """What one client holds of one stream and what was wrong with what came.

    ``held`` is ``(epoch, seq)`` of the last item applied (what ``hello.streams`` sends back).
    Within an epoch an item at or below ``held`` is a duplicate; a ``subscribed`` with a new
    epoch, ``reset`` or ``mode: snapshot`` after a reconnect starts over (counted).
    ``missing``: bar buckets skipped, or with ``consecutive`` the ``seq`` numbers skipped."""

    stream: str
    consecutive: bool = False
    epoch: int | None = None
    seq: Any = None
    bar_time: int | None = None  # bars: the bucket of the last bar item
    items: int = 0
    duplicates: int = 0
    missing: int = 0
    resets: int = 0
    snapshots: int = 0

    @property
    def held(self) -> list[Any] | None:
        return None if self.epoch is None else [self.epoch, self.seq]

    def on_subscribed(self, frame: dict[str, Any], resuming: bool) -> None:
        if resuming and (frame.get("reset") or frame.get("epoch") != self.epoch):
            self.resets += 1
            self.bar_time = None
        if resuming and frame.get("mode") == "snapshot":
            self.snapshots += 1
        self.epoch = frame.get("epoch")
        if frame.get("mode") == "snapshot" or self.seq is None:
            self.seq = frame.get("seq")

    def on_item(self, item: dict[str, Any]) -> None:
        self.items += 1
        kind = item.get("kind")
        if kind == "snapshot":  # replaces what is held
            self.epoch, self.seq = item.get("epoch"), item.get("seq")
            bars = [b for b in item.get("bars") or () if isinstance(b, dict)]
            self.bar_time = bars[-1].get("time") if bars else self.bar_time
            return
        epoch, seq = item.get("epoch"), item.get("seq")
        if epoch == self.epoch and self.seq is not None and _seq_key(seq) <= _seq_key(self.seq):
            self.duplicates += 1  # a bar is sent once per state, each above the last
            return
        if self.consecutive and epoch == self.epoch and isinstance(seq, int) \
                and isinstance(self.seq, int):
            self.missing += seq - self.seq - 1
        if kind == "bar":
            t = item.get("time")
            if isinstance(t, int):
                if self.bar_time is not None and t > self.bar_time:
                    self.missing += max(0, (t - self.bar_time) // bar_seconds(self.stream)
                                             - 1)
                self.bar_time = t if self.bar_time is None else max(self.bar_time, t)
        self.epoch, self.seq = epoch, seq


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What every client of a fleet does (JSON on the way to the child processes)."""

    urls: tuple[str, ...]  # base URLs (``http://host:port``); a reconnect takes the next
    streams: tuple[str, ...]
    login: dict[str, str] | None = None  # the body of POST /api/login; None: no login
    reconnect: bool = False
    check: bool = False  # StreamCheck every item (resume drills)
    consecutive: tuple[str, ...] = ()  # streams whose every seq the client must see
    connect_timeout_s: float = 30.0
    client: str = "bench"

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FleetSpec:
        return cls(**{**obj, **{k: tuple(obj[k]) for k in ("urls", "streams", "consecutive")}})


# --- the child: one process, many clients ---------------------------------------------------


class _Client:
    """One chart connection and its reconnect loop."""

    def __init__(self, swarm: _Swarm, index: int) -> None:
        self.swarm, self.index = swarm, index
        self.checks = {s: StreamCheck(s, s in swarm.spec.consecutive)
                       for s in swarm.spec.streams}
        self.ws: Any = None
        self.live = asyncio.Event()
        self.failed: str | None = None
        self.connects = 0
        self.frames = 0
        self.bytes = 0
        self.down_ns: int | None = None  # when the socket closed (monotonic), until resumed
        self.pending: set[str] = set()  # streams still to be `subscribed` after a welcome
        self.heartbeat_s = 5.0
        self.last_sent = 0.0

    async def run(self) -> None:
        spec = self.swarm.spec
        failures = 0
        attempt = 0
        while True:
            url = spec.urls[attempt % len(spec.urls)]  # the first, then the next
            attempt += 1
            try:
                await self._session(url)
                failures = 0
            except Exception as exc:  # OSError, aiohttp's ClientError, a timeout, bad JSON
                failures += 1
                self.swarm.failed(exc)
                if not spec.reconnect:
                    self.failed = type(exc).__name__
                    self.live.set()  # connect() waits on this: the attempt is over
                    return
            if not spec.reconnect:
                if not self.live.is_set():
                    self.failed = "closed"
                    self.live.set()
                return
            if self.down_ns is None:
                self.down_ns = time.monotonic_ns()
            await asyncio.sleep(RECONNECT.compute(failures, random.random()))

    async def _session(self, url: str) -> None:
        spec = self.swarm.spec
        async with self.swarm.gate:
            token = await self.swarm.token(url)
            ws = await self.swarm.http.ws_connect(f"{url}/ws", compress=0, autoping=True,
                                                  max_msg_size=0, timeout=_ws_timeout())
        self.ws = ws
        self.connects += 1
        resuming = self.connects > 1
        held = {s: c.held for s, c in self.checks.items() if c.held is not None}
        try:
            await self._send({"op": "hello", "v": 1, "token": token, "streams": held,
                              "client": f"{spec.client}-{os.getpid()}-{self.index}"})
            self.pending = set(spec.streams)
            for i, s in enumerate(spec.streams):
                if s not in held:
                    await self._send({"op": "subscribe", "id": i + 1, "stream": s})
            async for msg in ws:
                if msg.type != 1:  # aiohttp.WSMsgType.TEXT
                    break
                now_ns = time.time_ns()
                self._on_frame(msg.data, now_ns, resuming)
        finally:
            self.ws = None
            if self.down_ns is None and self.live.is_set():
                self.down_ns = time.monotonic_ns()
            self.swarm.closes[str(ws.close_code)] += 1
            await ws.close()

    async def _send(self, obj: dict[str, Any]) -> None:
        assert self.ws is not None
        self.last_sent = time.monotonic()
        await self.ws.send_str(json.dumps(obj))

    def _on_frame(self, data: str, now_ns: int, resuming: bool) -> None:
        sw = self.swarm
        if not sw.spec.check and _BATCH.search(data, 0, 64):
            # The hot path of a thousand clients on two cores: only the feed times, found
            # without decoding the frame (5 x cheaper than json.loads here; only a tick item
            # has an "ft").
            if sw.window:
                self._count(data, now_ns, (int(ft) for ft in _FT.findall(data)))
            self._resumed()
            return
        frame = json.loads(data)
        op = frame.get("op")
        if op == "batch":
            if sw.window:
                self._count(data, now_ns, (i["ft"] for i in frame["items"]
                                           if i.get("kind") == "tick"))
            for item in frame["items"]:
                check = self.checks.get(item.get("stream"))
                if check is not None:
                    check.on_item(item)
            self._resumed()
        elif op == "subscribed":
            stream = frame.get("stream")
            if stream in self.checks:
                self.checks[stream].on_subscribed(frame, resuming)
            self.pending.discard(stream)
            if not self.pending:
                if not self.live.is_set():
                    self.down_ns = None  # the first connection is not a resume
                self.live.set()
        elif op == "welcome":
            self.heartbeat_s = float(frame.get("heartbeat_ms") or 5000) / 1000
        elif op == "error":
            sw.errors[f"error:{frame.get('code')}"] += 1
            if frame.get("code") == "auth":
                self.swarm.session_token = None  # expired: the next attempt logs in again

    def _count(self, data: str, now_ns: int, feed_times_us: Iterable[int]) -> None:
        """A batch in the window: its frame and bytes, and the staleness of each tick in it."""
        self.frames += 1
        self.bytes += len(data)
        now_us = now_ns // 1000
        self.swarm.samples.extend([now_us - ft for ft in feed_times_us])

    def _resumed(self) -> None:
        """A batch came: after a reconnect's welcome and subscribed, the chart is live again."""
        if not self.pending and self.down_ns is not None and self.live.is_set():
            self.swarm.resumes.append(time.monotonic_ns() - self.down_ns)
            self.down_ns = None

    async def ping(self) -> None:
        if self.ws is not None and time.monotonic() - self.last_sent > self.heartbeat_s / 2:
            with contextlib.suppress(Exception):  # a closing socket: the reader notices
                await self._send({"op": "ping", "t": time.time_ns() // 1_000_000})


def _ws_timeout() -> Any:
    import aiohttp

    return aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)


class _Swarm:
    """This process's clients, their counters and the window."""

    def __init__(self, spec: FleetSpec, n: int) -> None:
        import aiohttp

        self.spec = spec
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          timeout=aiohttp.ClientTimeout(total=None,
                                                                        sock_connect=10))
        self.gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        self.login_lock = asyncio.Lock()
        self.session_token: str | None = None
        self.clients = [_Client(self, i) for i in range(n)]
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: Counter[str] = Counter()
        self.first_errors: dict[str, str] = {}
        self.closes: Counter[str] = Counter()
        self.window = False
        self.samples = array.array("q")
        self.resumes: list[int] = []
        self.window_t0 = 0.0
        self.cpu_t0 = 0.0

    async def token(self, url: str) -> str:
        """The session token of this process's clients: one login for all of them (a gateway
        allows a few logins per second from one address, and a session may have many
        connections, as a user's browser tabs share one), made by the first that asks."""
        spec = self.spec
        if spec.login is None:
            return "none"  # rawcast ignores it
        async with self.login_lock:
            if self.session_token is None:
                async with self.http.post(f"{url}/api/login", json=spec.login) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise ValueError(f"login: HTTP {resp.status} {body}")
                    self.session_token = str(body["token"])
            return self.session_token

    def failed(self, exc: BaseException) -> None:
        """Count a failed attempt by kind, and keep the first message of each kind."""
        kind = type(exc).__name__
        self.errors[kind] += 1
        self.first_errors.setdefault(kind, str(exc)[:300])

    async def connect(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.tasks = [asyncio.create_task(c.run(), name=f"client-{c.index}") for c in self.clients]
        self.tasks.append(asyncio.create_task(self._pinger(), name="pinger"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.spec.connect_timeout_s):
                await asyncio.gather(*(c.live.wait() for c in self.clients))
        live = sum(1 for c in self.clients if c.live.is_set() and c.failed is None)
        return {"live": live, "failed": len(self.clients) - live,
                "connect_s": round(time.monotonic() - t0, 3), "errors": dict(self.errors),
                "first_errors": self.first_errors}

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for c in self.clients:
                await c.ping()

    def window_start(self) -> dict[str, Any]:
        for c in self.clients:
            c.frames = c.bytes = 0
        self.samples = array.array("q")
        self.window, self.window_t0, self.cpu_t0 = True, time.monotonic(), time.process_time()
        return {"ok": True}

    def window_end(self, path: str) -> dict[str, Any]:
        self.window = False
        seconds = time.monotonic() - self.window_t0
        cpu = time.process_time() - self.cpu_t0
        with open(path, "wb") as f:
            self.samples.tofile(f)
        frames = [c.frames for c in self.clients]
        return {"seconds": seconds, "clients": len(self.clients),
                "live": sum(1 for c in self.clients if c.ws is not None),
                "frames": sum(frames), "bytes": sum(c.bytes for c in self.clients),
                "frames_min": min(frames, default=0), "frames_max": max(frames, default=0),
                "samples": len(self.samples), "cpu_pct": round(100 * cpu / seconds, 1),
                "errors": dict(self.errors), "closes": dict(self.closes)}

    def resume_arm(self) -> dict[str, Any]:
        self.resumes = []
        for c in self.clients:
            c.checks = {s: StreamCheck(s, k.consecutive, epoch=k.epoch, seq=k.seq,
                                       bar_time=k.bar_time) for s, k in c.checks.items()}
        return {"ok": True, "live": sum(1 for c in self.clients if c.ws is not None)}

    async def resume_wait(self, timeout: float) -> dict[str, Any]:
        """Until every client that was live has resumed once since ``resume_arm`` (or
        ``timeout``): the resume times and what the checks counted."""
        deadline = time.monotonic() + timeout
        while len(self.resumes) < len(self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        per_stream: dict[str, dict[str, int]] = {}
        for c in self.clients:
            for s, k in c.checks.items():
                kind = s.split(":", 1)[0]
                agg = per_stream.setdefault(kind, Counter())
                agg.update({"items": k.items, "duplicates": k.duplicates,
                            "missing": k.missing, "resets": k.resets,
                            "snapshots": k.snapshots})
        return {"resume_ns": list(self.resumes),
                "not_resumed": len(self.clients) - len(self.resumes),
                "streams": {k: dict(v) for k, v in per_stream.items()},
                "errors": dict(self.errors), "closes": dict(self.closes)}

    async def close(self) -> dict[str, Any]:
        from bus.aio import cancel_and_wait

        await cancel_and_wait(self.tasks, what="clients")
        for c in self.clients:
            if c.ws is not None:
                with contextlib.suppress(Exception):
                    await c.ws.close()
        await self.http.close()
        return {"closed": len(self.clients)}


async def _serve(reply: Any) -> int:
    from nodes.drills.procs import read_command, stdin_lines

    reader = await stdin_lines()
    swarm: _Swarm | None = None
    reply({"ready": True, "pid": os.getpid()})
    try:
        while (cmd := await read_command(reader)) is not None:
            name = cmd.pop("cmd")
            if name == "quit":
                break
            if name == "connect":
                if swarm is not None:
                    await swarm.close()
                swarm = _Swarm(FleetSpec.from_json(cmd["spec"]), int(cmd["n"]))
                reply(await swarm.connect())
                continue
            if swarm is None:
                reply({"error": f"{name} before connect"})
                continue
            if name == "window_start":
                reply(swarm.window_start())
            elif name == "window_end":
                reply(swarm.window_end(cmd["path"]))
            elif name == "resume_arm":
                reply(swarm.resume_arm())
            elif name == "resume_wait":
                reply(await swarm.resume_wait(float(cmd["timeout"])))
            elif name == "close":
                reply(await swarm.close())
                swarm = None
            else:
                reply({"error": f"unknown command {name!r}"})
    finally:
        if swarm is not None:
            await swarm.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """The child process: clients driven by the parent's commands on stdin."""
    from nodes.common import setup_logging

    p = argparse.ArgumentParser(prog="wsclients")
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args(argv)
    setup_logging(a.log_level)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_serve(reply))
    return uvloop.run(_serve(reply))


# --- the parent: processes of clients -------------------------------------------------------


@dataclass(slots=True)
class WindowResult:
    """One measuring window over every client of a fleet."""

    clients: int
    live: int
    seconds: float
    staleness_ms: dict[str, float | None]
    samples: int
    frames_per_s: float  # per client
    bytes_per_s: float  # per client
    frames_per_s_min: float  # the slowest client's
    client_cpu_pct: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


class ClientFleet:
    """``processes`` client processes under a drill's :class:`Children`; commands go to every
    process at once and the answers are merged."""

    def __init__(self, procs: Children, workdir: Path, processes: int = 4,
                 name: str = "wsclients") -> None:
        if processes < 1:
            raise ValueError("a fleet needs at least one process")
        self.procs, self.workdir, self.name = procs, workdir, name
        self.children: list[LineChild] = []
        self.pids: list[int] = []
        self.shares: list[int] = []
        self.processes = processes

    def start(self, timeout: float = 30.0) -> None:
        """Start the client processes and wait for each to be ready."""
        for i in range(self.processes):
            name = f"{self.name}-{i}"
            proc = self.procs.start(name, [sys.executable, "-m", "nodes.drills.wsclients"],
                                    pipes=True)
            child = LineChild(proc, name)
            self.children.append(child)
        for child in self.children:
            self.pids.append(int(child.read(timeout)["pid"]))

    def _all(self, cmd: str, wait_s: float, per_child: Sequence[dict[str, Any]] | None = None,
             **kw: Any) -> list[dict[str, Any]]:
        targets = self.children[:len(per_child)] if per_child is not None else self.children
        for i, child in enumerate(targets):
            child.send(cmd, **kw, **(per_child[i] if per_child is not None else {}))
        out = []
        for child in targets:
            try:
                got = child.read(wait_s)
            except DrillError as exc:
                raise DrillError(f"{exc}:\n{self.procs.log_tail(child.name)}") from None
            if "error" in got:
                raise DrillError(f"{child.name}: {got['error']}")
            out.append(got)
        return out

    def connect(self, spec: FleetSpec, n: int) -> dict[str, Any]:
        """``n`` clients over the processes; live and failed counts, the slowest process's
        connect time, errors by kind."""
        self.shares = [k for k in split(n, self.processes) if k > 0]
        got = self._all("connect", spec.connect_timeout_s + 30,
                        per_child=[{"n": k, "spec": asdict(spec)} for k in self.shares])
        errors: Counter[str] = Counter()
        first: dict[str, str] = {}
        for g in got:
            errors.update(g["errors"])
            first = {**g["first_errors"], **first}
        return {"clients": n, "live": sum(g["live"] for g in got),
                "failed": sum(g["failed"] for g in got),
                "connect_s": max(g["connect_s"] for g in got), "errors": dict(errors),
                "first_errors": first}

    def _active(self) -> list[dict[str, Any]]:
        return [{} for _ in self.shares]

    def window(self, seconds: float) -> WindowResult:
        """Measure for ``seconds``: staleness over every client and sample, frames and bytes
        per client per second."""
        self._all("window_start", 10, per_child=self._active())
        time.sleep(seconds)
        paths = [self.workdir / f"{self.name}-{i}.staleness" for i in range(len(self.shares))]
        got = self._all("window_end", 30, per_child=[{"path": str(p)} for p in paths])
        samples = array.array("q")
        for p in paths:
            with p.open("rb") as f:
                samples.frombytes(f.read())
            p.unlink()
        clients = sum(g["clients"] for g in got)
        errors: Counter[str] = Counter()
        for g in got:
            errors.update(g["errors"])
        per_s = [g["frames"] / g["seconds"] for g in got]
        return WindowResult(
            clients=clients, live=sum(g["live"] for g in got),
            seconds=round(max(g["seconds"] for g in got), 3),
            staleness_ms=latency_ms([us * 1000 for us in samples]), samples=len(samples),
            frames_per_s=round(sum(per_s) / clients, 2) if clients else 0.0,
            bytes_per_s=round(sum(g["bytes"] / g["seconds"] for g in got) / clients)
            if clients else 0.0,
            frames_per_s_min=round(min(g["frames_min"] / g["seconds"] for g in got), 2),
            client_cpu_pct=[g["cpu_pct"] for g in got], errors=dict(errors))

    def resume_arm(self) -> int:
        """Start counting resumes and checks afresh; the clients live now."""
        return sum(g["live"] for g in self._all("resume_arm", 10, per_child=self._active()))

    def resume_wait(self, timeout: float) -> dict[str, Any]:
        """Every client's resume time since :meth:`resume_arm` (p50/p99/max ms), the clients
        not resumed within ``timeout``, and the checks' counts per kind of stream; the times
        themselves in ``resume_ns``, to merge with other kills'."""
        got = self._all("resume_wait", timeout + 30, per_child=self._active(), timeout=timeout)
        ns = [v for g in got for v in g["resume_ns"]]
        streams: dict[str, Counter[str]] = {}
        for g in got:
            for kind, counts in g["streams"].items():
                streams.setdefault(kind, Counter()).update(counts)
        return {"resumed": len(ns), "not_resumed": sum(g["not_resumed"] for g in got),
                "resume_ms": latency_ms(ns), "resume_ns": ns,
                "streams": {k: dict(v) for k, v in streams.items()}}

    def close(self) -> None:
        """Close every client (the processes stay for the next connect)."""
        if self.shares:
            self._all("close", 30, per_child=self._active())
            self.shares = []

    def stop(self) -> None:
        """Close the clients and end the processes."""
        with contextlib.suppress(DrillError, OSError):
            self.close()
        for child in self.children:
            with contextlib.suppress(OSError):
                child.send("quit")
        for child in self.children:
            self.procs.stop(child.proc)
        self.children.clear()


if __name__ == "__main__":
    sys.exit(main())
