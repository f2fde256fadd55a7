"""Where a feed's ticks come from: a simulator, a CSV replay, or an EA bridge socket.

Every source is an async iterator of lists of raw ticks ``(symbol, bid, ask, last, volume,
source_time_ns)``, already validated. Invalid input is rejected, counted by reason and logged
(rate-limited); the source carries on.

EA bridge wire format (docs/PROTOCOL.md, section "EA bridge"): the EA connects a ZeroMQ PUSH
socket to the feed's PULL endpoint and sends one message per tick or per batch, msgpack or JSON
(a message starting with ``{`` or ``[`` is JSON). A tick is a map::

    {"symbol": "EURUSD", "bid": 1.0841, "ask": 1.0842, "last": 0.0, "volume": 1.0,
     "time_msc": 1732450000123}

``last`` and ``volume`` default to 0; the time is ``time_msc`` (MT5's milliseconds) or
``time_ns``, and defaults to the time of arrival. A batch is an array of such maps.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack
import zmq
import zmq.asyncio

from bus.logutil import RateLimitedLog
from bus.sockets import EA_BRIDGE, open_socket
from protocols.errors import ConfigError, InvalidTick
from protocols.ticks.messages import check_row

log = logging.getLogger(__name__)

RawTick = tuple[str, float, float, float, float, int]


@dataclass(slots=True)
class SourceStats:
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


class Source(Protocol):
    stats: SourceStats

    def batches(self) -> AsyncIterator[list[RawTick]]:
        ...

    def close(self) -> None:
        ...


class _Validator:
    """Shared validation and rejection accounting of every source."""

    def __init__(self, symbols: Iterable[str], name: str) -> None:
        self.symbols = frozenset(symbols)
        self.stats = SourceStats()
        self._log = RateLimitedLog(log, f"{name}: rejected tick")

    def check(self, symbol: object, bid: object, ask: object, last: object, volume: object,
              time_ns: object) -> RawTick:
        if not isinstance(symbol, str) or symbol not in self.symbols:
            raise InvalidTick(f"unknown symbol {symbol!r:.40}")
        try:
            row = check_row((bid, ask, last, volume, time_ns, 0))
        except ValueError as exc:
            raise InvalidTick(str(exc)) from None
        return (symbol, row[0], row[1], row[2], row[3], row[4])

    def reject(self, exc: Exception) -> None:
        reason = str(exc).split(":")[0][:60]
        self.stats.rejected += 1
        self.stats.reasons[reason] += 1
        self._log.warning("%s", exc)


# --- simulator -------------------------------------------------------------------------------

_START_PRICES = {"EURUSD": 1.08, "GBPUSD": 1.27, "USDJPY": 151.0, "XAUUSD": 2650.0}


class Simulator:
    """A random walk per symbol at ``rate`` ticks per second over all symbols."""

    def __init__(self, symbols: Iterable[str], rate: float, seed: int = 0,
                 period_s: float = 0.001) -> None:
        self.symbols = list(symbols)
        self.rate = rate
        self.period_s = period_s
        self.stats = SourceStats()
        self._rnd = random.Random(seed)
        self._mid = {s: _START_PRICES.get(s, 100.0) for s in self.symbols}
        self._closed = False

    def _make(self, n: int, now_ns: int) -> list[RawTick]:
        rnd, mid, syms = self._rnd, self._mid, self.symbols
        out: list[RawTick] = []
        k = len(syms)
        start = self.stats.accepted
        for i in range(n):
            s = syms[(start + i) % k]
            m = mid[s] * (1.0 + (rnd.random() - 0.5) * 2e-5)
            mid[s] = m
            half = m * 5e-5
            out.append((s, m - half, m + half, m, float(1 + (i & 7)), now_ns))
        self.stats.accepted += n
        return out

    async def batches(self) -> AsyncIterator[list[RawTick]]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # After a stall, catch up at most 100 ms of ticks at once rather than a flood.
        max_burst = max(1, int(self.rate * 0.1))
        while not self._closed:
            due = int((loop.time() - t0) * self.rate) - self.stats.accepted
            if due > max_burst:
                t0 += (due - max_burst) / self.rate
                due = max_burst
            if due > 0:
                yield self._make(due, time.time_ns())
            await asyncio.sleep(self.period_s)

    def close(self) -> None:
        self._closed = True


# --- CSV replay ------------------------------------------------------------------------------


class Replay:
    """Replays a CSV file of ticks at its recorded pace times ``speed`` (0: as fast as possible).

    Columns (header row required): ``symbol,bid,ask,last,volume`` and one of ``time_ns``,
    ``time_msc`` or ``time_ms``. Rows that fail validation are skipped and counted.
    """

    CHUNK = 2000

    def __init__(self, path: str | Path, symbols: Iterable[str], speed: float = 1.0,
                 loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError("feeds.file", f"replay file {str(self.path)!r} does not exist",
                              "give the path of a CSV file of ticks")
        self.speed = speed
        self.loop = loop
        self._v = _Validator(symbols, f"replay {self.path.name}")
        self.stats = self._v.stats
        self._closed = False
        self._t0 = 0.0
        self._first_t: int | None = None

    def _read_chunks(self) -> Iterator[list[dict[str, str]]]:
        with self.path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"symbol", "bid", "ask"} - set(reader.fieldnames or ())
            if missing:
                raise ConfigError("feeds.file", f"CSV lacks columns {sorted(missing)}",
                                  "header: symbol,bid,ask,last,volume,time_msc")
            chunk: list[dict[str, str]] = []
            for row in reader:
                chunk.append(row)
                if len(chunk) >= self.CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    def _parse(self, row: dict[str, str]) -> RawTick:
        try:
            if row.get("time_ns"):
                t = int(row["time_ns"])
            elif row.get("time_msc") or row.get("time_ms"):
                t = int(row.get("time_msc") or row["time_ms"]) * 1_000_000
            else:
                t = time.time_ns()
            return self._v.check(row["symbol"], float(row["bid"]), float(row["ask"]),
                                 float(row.get("last") or 0), float(row.get("volume") or 0), t)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidTick):
                raise
            raise InvalidTick(f"bad CSV row: {exc}") from None

    async def batches(self) -> AsyncIterator[list[RawTick]]:
        loop = asyncio.get_running_loop()
        while not self._closed:
            chunks = self._read_chunks()
            # Pace by the recorded times: tick t is due at t0 + (t - first) / speed.
            self._t0, self._first_t = loop.time(), None
            while not self._closed:
                # File reads run in a thread: no blocking call on the event loop.
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                async for out in self._pace(chunk, loop):
                    yield out
            if not self.loop:
                return

    async def _pace(self, chunk: list[dict[str, str]], loop: asyncio.AbstractEventLoop
                    ) -> AsyncIterator[list[RawTick]]:
        out: list[RawTick] = []
        for row in chunk:
            try:
                tick = self._parse(row)
            except InvalidTick as exc:
                self._v.reject(exc)
                continue
            self.stats.accepted += 1
            if self._first_t is None:
                self._first_t = tick[5]
            if self.speed > 0:
                delay = self._t0 + (tick[5] - self._first_t) / 1e9 / self.speed - loop.time()
                if delay > 0:
                    if out:
                        yield out
                        out = []
                    await asyncio.sleep(delay)
            out.append(tick)
        if out:
            yield out

    def close(self) -> None:
        self._closed = True


# --- EA bridge -------------------------------------------------------------------------------


class EaBridge:
    """A ZeroMQ PULL socket that an MT5 Expert Advisor (or any producer) pushes ticks to."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, symbols: Iterable[str]) -> None:
        self._v = _Validator(symbols, "ea bridge")
        self.stats = self._v.stats
        self._sock = open_socket(ctx, EA_BRIDGE, bind=endpoint)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def parse(self, frames: list[bytes]) -> list[RawTick]:
        """Decode one message into valid ticks; invalid ones are rejected and counted."""
        if len(frames) != 1:
            self._v.reject(InvalidTick(f"message of {len(frames)} frames, need 1"))
            return []
        data = frames[0]
        try:
            doc: Any = (json.loads(data) if data.lstrip()[:1] in (b"{", b"[")
                        else msgpack.unpackb(data, raw=False))
        except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            self._v.reject(InvalidTick(f"undecodable message: {exc}"))
            return []
        items = doc if isinstance(doc, list) else [doc]
        out: list[RawTick] = []
        now = time.time_ns()
        for item in items:
            try:
                out.append(self._tick(item, now))
            except InvalidTick as exc:
                self._v.reject(exc)
        self.stats.accepted += len(out)
        return out

    def _tick(self, item: Any, now: int) -> RawTick:
        if not isinstance(item, dict):
            raise InvalidTick(f"tick is not a map: {item!r:.60}")
        t: Any = now
        if "time_ns" in item:
            t = item["time_ns"]
        elif "time_msc" in item:
            t = item["time_msc"] * 1_000_000 if isinstance(item["time_msc"], int) else None
        if not isinstance(t, int) or isinstance(t, bool):
            raise InvalidTick("time must be an integer (time_msc or time_ns)")
        last, volume = item.get("last", 0.0), item.get("volume", 0.0)
        if isinstance(volume, float) and math.isnan(volume):
            raise InvalidTick("volume is NaN")
        return self._v.check(item.get("symbol"), item.get("bid"), item.get("ask"), last,
                             volume, t)

    async def batches(self) -> AsyncIterator[list[RawTick]]:
        shadow: zmq.Socket[bytes] = zmq.Socket.shadow(self._sock.underlying)
        while True:
            await self._sock.poll()
            out: list[RawTick] = []
            for _ in range(1000):  # drain what is queued, bounded so the loop stays fair
                try:
                    frames = shadow.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                out.extend(self.parse(frames))
            if out:
                yield out

    def close(self) -> None:
        self._sock.close(linger=0)

