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

A rejected tick is counted under one of :data:`REASONS` (a fixed set, so a peer sending junk
cannot grow the counter; the detail goes to the log).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
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
from protocols.ticks.merge import SourceMerge
from protocols.ticks.messages import check_price, check_row, check_time

log = logging.getLogger(__name__)

RawTick = tuple[str, float, float, float, float, int]


# The reasons a rejected tick is counted under (docs/PROTOCOL.md section 9).
REASONS = ("wrong frame count", "undecodable message", "tick is not a map", "unknown symbol",
           "bad bid", "bad ask", "bad last", "bad volume", "crossed quote", "bad time",
           "bad CSV row")


def invalid(reason: str, detail: str) -> InvalidTick:
    """An :class:`InvalidTick` counted under ``reason`` (one of :data:`REASONS`)."""
    assert reason in REASONS, reason
    return InvalidTick(f"{reason}: {detail}")


@dataclass(slots=True)
class SourceStats:
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # EA bridge: copies of a tick another producer delivered first
    late: int = 0  # EA bridge: ticks older than what the stream has published

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from its (key, count) pairs, counting
        # the pairs, and the tuple keys then broke the feed's JSON stats file.
        return {"accepted": self.accepted, "rejected": self.rejected,
                "reasons": dict(self.reasons), "duplicates": self.duplicates,
                "late": self.late}


class Source(Protocol):
    stats: SourceStats

    def batches(self) -> AsyncIterator[list[RawTick]]:
        ...

    def close(self) -> None:
        ...


def _row_reason(bid: object, ask: object, last: object, volume: object, time_ns: object) -> str:
    """The reason a row that ``check_row`` refused is counted under (the rejection path only)."""
    for name, value in (("bid", bid), ("ask", ask), ("last", last), ("volume", volume)):
        try:
            check_price(name, value)
        except ValueError:
            return f"bad {name}"
    try:
        check_time("time", time_ns)
    except ValueError:
        return "bad time"
    return "crossed quote"


class _Validator:
    """Shared validation and rejection accounting of every source."""

    def __init__(self, symbols: Iterable[str], name: str) -> None:
        self.symbols = frozenset(symbols)
        self.stats = SourceStats()
        self._log = RateLimitedLog(log, f"{name}: rejected tick")

    def check(self, symbol: object, bid: object, ask: object, last: object, volume: object,
              time_ns: object) -> RawTick:
        if not isinstance(symbol, str) or symbol not in self.symbols:
            raise invalid("unknown symbol", f"{symbol!r:.40}")
        try:
            row = check_row((bid, ask, last, volume, time_ns, 0))
        except ValueError as exc:
            raise invalid(_row_reason(bid, ask, last, volume, time_ns), str(exc)) from None
        return (symbol, row[0], row[1], row[2], row[3], row[4])

    def reject(self, exc: InvalidTick) -> None:
        reason = str(exc).partition(":")[0]
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
            raise invalid("bad CSV row", str(exc)) from None

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
    """A ZeroMQ PULL socket that MT5 Expert Advisors (or any producers) push ticks to. Several
    producers may quote the same symbols: each tick is published once, first copy wins
    (:class:`~protocols.ticks.merge.SourceMerge`)."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, symbols: Iterable[str]) -> None:
        self._v = _Validator(symbols, "ea bridge")
        self.stats = self._v.stats
        self._merge = SourceMerge()
        self._sock = open_socket(ctx, EA_BRIDGE, bind=endpoint)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def parse(self, frames: list[bytes]) -> list[RawTick]:
        """Decode one message into valid ticks; invalid ones are rejected and counted."""
        if len(frames) != 1:
            self._v.reject(invalid("wrong frame count", f"{len(frames)} frames, need 1"))
            return []
        data = frames[0]
        try:
            # JSON is sniffed after ASCII whitespace; a msgpack value starting with those bytes
            # or with { or [ is a small integer, never a tick.
            doc: Any = (json.loads(data) if data.lstrip()[:1] in (b"{", b"[")
                        else msgpack.unpackb(data, raw=False))
        except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            self._v.reject(invalid("undecodable message", str(exc)))
            return []
        items = doc if isinstance(doc, list) else [doc]
        out: list[RawTick] = []
        now = time.time_ns()
        merge = self._merge
        for item in items:
            try:
                tick = self._tick(item, now)
            except InvalidTick as exc:
                self._v.reject(exc)
                continue
            # A tick stamped on arrival (no source time) has nothing to compare.
            timed = "time_ns" in item or "time_msc" in item
            if not timed or merge.admit(tick[0], tick[5], tick[1:5]):
                out.append(tick)
        self.stats.accepted += len(out)
        self.stats.duplicates, self.stats.late = merge.duplicates, merge.late
        return out

    def _tick(self, item: Any, now: int) -> RawTick:
        if not isinstance(item, dict):
            raise invalid("tick is not a map", f"{item!r:.60}")
        t: Any = now
        if "time_ns" in item:
            t = item["time_ns"]
        elif "time_msc" in item:
            msc = item["time_msc"]
            # Not an integer: the validator rejects the None as "bad time" in its turn.
            t = msc * 1_000_000 if isinstance(msc, int) and not isinstance(msc, bool) else None
        return self._v.check(item.get("symbol"), item.get("bid"), item.get("ask"),
                             item.get("last", 0.0), item.get("volume", 0.0), t)

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

