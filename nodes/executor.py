"""The executor node: the EA's trade side, simulated against the last tick of the tick store.

Rules (the "Execute" flow of docs/ORDERS.md):

* One DEALER per backend endpoint (``ROUTING_ID`` = the node's name), connected to that
  backend's "executor" ROUTER; a report goes back on the socket its order came from. A
  restarted executor reconnects under the same routing id, so the backend's ROUTER needs
  ``ROUTER_HANDOVER`` (without it the new connection is refused while the old one lingers).
* An :class:`~protocols.orders.Order` in state ROUTED is executed once per ``order_id``, however
  often it arrives (a backend re-drives its open orders after a failover; the executor may have
  restarted). The executor's *decision* about an order (a full fill, or a reject) is one
  :class:`~protocols.orders.ExecutionReport` with a deterministic ``exec_id`` (``{order_id}:1``
  for the full fill, ``{order_id}:rej`` for a reject). It is made final in two steps:

  1. the report is written first-writer-wins to the fill log (:class:`FillLog`; on Redis the
     hash ``{key_prefix}:fills:{order_id}``, field ``report``, value the order codec's frames
     joined; kept like ``{key_prefix}:executed:*``, no expiry), so every later arrival answers
     with the very same report, price and ``transact_ns`` included;
  2. ``OrderStore.record_execution(order_id, exec_id)``: True the first time (counted as a fill
     or a reject), False for a replay (counted as a replay).

  A crash between the two steps leaves the decision in the log and the next arrival completes
  step 2. A replay is answered from an in-memory LRU of recent reports, else from the fill log.
* MARKET: the whole working quantity fills at the last ask (BUY) or bid (SELL) of the symbol's
  last tick; no usable two-sided quote -> REJECTED. LIMIT: fills at the limit price if
  marketable (BUY limit >= ask, SELL limit <= bid), else rests in memory and is re-checked every
  ``poll_s`` against the latest tick. Resting orders are bounded (``max_resting``): one more is
  REJECTED, never dropped. A cancel request (a CANCELLED report from the backend) is one more
  candidate decision: written first, the order is cancelled (and leaves the resting set);
  otherwise the fill that won is answered again.
  Resting orders live in memory only: after an executor restart they come back only when a
  backend re-drives them.
* A frame that does not decode, or a message that is not an ``Order``, is counted as malformed
  and logged rate-limited; an ``Order`` in another state than ROUTED with no recorded decision
  is counted as ignored. The node keeps serving either way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
import zmq
import zmq.asyncio
from redis.exceptions import RedisError

from bus.config import MeshConfig
from bus.logutil import RateLimitedLog
from bus.order_store import OrderStore, RedisOrderStore
from bus.store import RedisTickStore, TickStore, store_error
from protocols.errors import InvalidOrder, RemoteProtocolError, StoreError
from protocols.order_codec import decode_order, encode_order
from protocols.orders import ExecutionReport, Order, OrderState, OrderType, Side, check_id

from .common import stats_writer, supervise_tasks, write_json_atomic

log = logging.getLogger(__name__)

QUOTE_TTL_S = 0.005  # fills price at the last tick: re-read it at most every 5 ms
RECENT_REPORTS = 10_000  # replays answered from memory; older ones are read from the fill log
MAX_RESTING = 10_000
_HEADER = 4  # the order codec's header frame: "TM", version, kind

Quote = tuple[float, float]  # (bid, ask) of a usable two-sided tick


# --- the decision (no I/O) -------------------------------------------------------------------


def fill_exec_id(order_id: str) -> str:
    return f"{order_id}:1"


def reject_exec_id(order_id: str) -> str:
    return f"{order_id}:rej"


def usable_quote(bid: float, ask: float) -> Quote | None:
    """``(bid, ask)`` if both are finite prices with ``0 < bid <= ask``, else None."""
    if math.isfinite(bid) and math.isfinite(ask) and 0 < bid <= ask:
        return bid, ask
    return None


def fill_report(order: Order, price: float, now_ns: int) -> ExecutionReport:
    """The report filling everything ``order`` still has to fill at ``price``."""
    o = order.order
    leaves = order.quantity - order.filled_quantity
    avg = (order.avg_price * order.filled_quantity + price * leaves) / order.quantity
    return ExecutionReport(order.order_id, o.client_order_id, o.account, o.symbol, o.side,
                           OrderState.FILLED, order.quantity, leaves, price, avg, order.epoch,
                           fill_exec_id(order.order_id), now_ns)


def reject_report(order: Order, now_ns: int) -> ExecutionReport:
    return order.status_report(OrderState.REJECTED, exec_id=reject_exec_id(order.order_id),
                               epoch=order.epoch, transact_ns=now_ns)


def decide(order: Order, quote: Quote | None, now_ns: int) -> ExecutionReport | None:
    """What to do with a ROUTED ``order`` given the last ``quote``: a fill, a reject, or None
    (a LIMIT order that is not marketable: let it rest)."""
    if order.order.type is OrderType.MARKET:
        if quote is None:
            return reject_report(order, now_ns)
        bid, ask = quote
        return fill_report(order, ask if order.order.side is Side.BUY else bid, now_ns)
    limit = order.price
    if quote is None or limit is None:
        return None
    bid, ask = quote
    marketable = limit >= ask if order.order.side is Side.BUY else limit <= bid
    return fill_report(order, limit, now_ns) if marketable else None


# --- the fill log ----------------------------------------------------------------------------


class FillLog(Protocol):
    """Where the executor's decision per order is made final (first writer wins)."""

    async def get(self, order_id: str) -> ExecutionReport | None:
        ...

    async def put_first(self, report: ExecutionReport) -> ExecutionReport:
        """Store ``report`` unless a decision for its order exists; return the stored one."""
        ...

    async def decide(self, report: ExecutionReport) -> tuple[bool, ExecutionReport]:
        """:meth:`put_first`, and, where the log can, record the execution in the same step.

        Returns ``(recorded, decision)``: ``recorded`` is True when the execution of the
        decision was recorded here (the caller records it otherwise).
        """
        ...


def _blob(report: ExecutionReport) -> bytes:
    header, body = encode_order(report)
    return header + body


def _report(blob: bytes | str) -> ExecutionReport:
    if not isinstance(blob, bytes):
        raise StoreError("a fill log entry is text, not the order codec's frames")
    msg = decode_order([blob[:_HEADER], blob[_HEADER:]])
    if not isinstance(msg, ExecutionReport):
        raise StoreError(f"a fill log entry holds a {type(msg).__name__}, not a report")
    return msg


# KEYS: the fill log hash, the order's executed set. ARGV: the report, its exec id.
# The decision and its execution record in one round trip, atomically: a won decision is
# recorded at once (no crash window between the two), a lost one returns the winner.
_DECIDE = """
if redis.call('HSETNX', KEYS[1], 'report', ARGV[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  return {1}
end
return {0, redis.call('HGET', KEYS[1], 'report')}
"""


class RedisFillLog:
    """:class:`FillLog` in the hash ``{prefix}:fills:{order_id}``, field ``report``."""

    def __init__(self, client: aioredis.Redis, prefix: str,
                 executed_key: Callable[[str], str] | None = None) -> None:
        self.redis = client
        self.prefix = prefix
        self._executed_key = executed_key or (lambda oid: f"{prefix}:executed:{oid}")
        self._decide = client.register_script(_DECIDE)

    def _key(self, order_id: str) -> str:
        return f"{self.prefix}:fills:{order_id}"

    async def get(self, order_id: str) -> ExecutionReport | None:
        try:
            blob = await self.redis.hget(self._key(order_id), "report")
        except RedisError as exc:
            raise store_error(exc) from exc
        return None if blob is None else _report(blob)

    async def put_first(self, report: ExecutionReport) -> ExecutionReport:
        key = self._key(report.order_id)
        try:
            if await self.redis.hsetnx(key, "report", _blob(report)):
                return report
            blob = await self.redis.hget(key, "report")
        except RedisError as exc:
            raise store_error(exc) from exc
        if blob is None:  # pragma: no cover - the field is never deleted
            raise StoreError(f"fill log entry {key} vanished")
        return _report(blob)

    async def decide(self, report: ExecutionReport) -> tuple[bool, ExecutionReport]:
        keys = [self._key(report.order_id), self._executed_key(report.order_id)]
        try:
            result = await self._decide(keys=keys, args=[_blob(report), report.exec_id])
        except RedisError as exc:
            raise store_error(exc) from exc
        return (True, report) if result[0] == 1 else (False, _report(result[1]))


class MemoryFillLog:
    """:class:`FillLog` in this process only (for an order store that is not on Redis): not
    durable across restarts; the oldest of more than ``capacity`` decisions are forgotten."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._reports: OrderedDict[str, ExecutionReport] = OrderedDict()

    async def get(self, order_id: str) -> ExecutionReport | None:
        return self._reports.get(order_id)

    async def put_first(self, report: ExecutionReport) -> ExecutionReport:
        existing = self._reports.get(report.order_id)
        if existing is not None:
            return existing
        self._reports[report.order_id] = report
        if len(self._reports) > self.capacity:
            self._reports.popitem(last=False)
        return report

    async def decide(self, report: ExecutionReport) -> tuple[bool, ExecutionReport]:
        return False, await self.put_first(report)  # the caller records the execution


# --- the node --------------------------------------------------------------------------------


@dataclass(slots=True)
class ExecutorStats:
    orders: int = 0  # Order messages received (replays included)
    fills: int = 0
    replays: int = 0  # orders already decided: the same report answered again
    rejects: int = 0
    cancels: int = 0  # cancel requests that won the race against a fill
    resting: int = 0  # limit orders waiting to become marketable (a gauge)
    malformed: int = 0
    ignored: int = 0  # undecided orders in another state than ROUTED
    store_errors: int = 0  # an order left unanswered: its backend re-drives it
    unsent: int = 0  # a report the socket would not take (backend gone): it re-drives


@dataclass(slots=True)
class _Resting:
    order: Order
    socket: int  # index of the socket to answer on: the last one the order came from


class ExecutorNode:
    """The simulated executor; connects to every backend's "executor" ROUTER endpoint."""

    def __init__(self, cfg: MeshConfig, *, name: str = "executor", backends: tuple[str, ...],
                 store: OrderStore | None = None, ticks: TickStore | None = None,
                 fills: FillLog | None = None, stats_path: Path | None = None,
                 poll_s: float = 0.05, max_resting: int = MAX_RESTING) -> None:
        if not backends:
            raise ValueError("an executor needs at least one backend endpoint")
        self.name = name
        timeout_s = cfg.redis.socket_timeout_ms / 1000
        self._owned: list[OrderStore | TickStore] = []
        if store is None:
            store = RedisOrderStore(cfg.redis.url, cfg.mesh.key_prefix, timeout_s)
            self._owned.append(store)
        if ticks is None:
            ticks = RedisTickStore(cfg.redis.url, cfg.mesh.key_prefix, timeout_s)
            self._owned.append(ticks)
        self.store: OrderStore = store
        self.ticks: TickStore = ticks
        if fills is None:
            fills = (RedisFillLog(store.redis, store.prefix, store.executed_key)
                     if isinstance(store, RedisOrderStore) else MemoryFillLog())
        self.fills: FillLog = fills
        self.poll_s = poll_s
        self.max_resting = max_resting
        self.stats_path = stats_path
        self.stats = ExecutorStats()
        self.backends = backends
        self.ctx = zmq.asyncio.Context()
        self.socks: list[zmq.asyncio.Socket] = []
        for endpoint in backends:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, name.encode())
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
            sock.connect(endpoint)
            self.socks.append(sock)
        self._recent: OrderedDict[str, ExecutionReport] = OrderedDict()
        self._resting: dict[str, _Resting] = {}
        self._quote_cache: dict[str, tuple[float, Quote | None]] = {}
        self._resting_changed = asyncio.Event()
        self._bad = RateLimitedLog(log, f"executor {name}: malformed message")
        self._store_log = RateLimitedLog(log, f"executor {name}: store error")
        self._ignored = RateLimitedLog(log, f"executor {name}: undecided order not ROUTED")

    # --- handling ----------------------------------------------------------------------------

    async def handle(self, frames: list[bytes], socket: int) -> None:
        """Handle one message from the backend behind ``self.socks[socket]``."""
        try:
            msg = decode_order(frames)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            self._bad.warning("%s", exc.reason)
            return
        if isinstance(msg, ExecutionReport) and msg.state is OrderState.CANCELLED:
            try:
                await self._on_cancel(msg, socket)
            except StoreError as exc:
                self.stats.store_errors += 1
                self._store_log.warning("cancel of %s left unanswered: %s", msg.order_id, exc)
            return
        if not isinstance(msg, Order):
            self.stats.malformed += 1
            self._bad.warning("%s is not an Order", type(msg).__name__)
            return
        self.stats.orders += 1
        try:
            await self._on_order(msg, socket)
        except StoreError as exc:
            self.stats.store_errors += 1
            self._store_log.warning("order %s left unanswered: %s", msg.order_id, exc)
        except InvalidOrder as exc:  # e.g. an order id too long to derive an exec id from
            self.stats.malformed += 1
            self._bad.warning("order %s: %s", msg.order_id, exc)

    async def _on_order(self, order: Order, socket: int) -> None:
        # A decision made earlier by this process is answered from memory. One made before a
        # restart needs no read here: the first-writer-wins write below returns it instead of
        # ours (one Redis round trip saved on the common path, a first-seen market order).
        known = self._recent.get(order.order_id)
        if known is not None:
            await self._commit(known, socket, decided=True)
            return
        if order.state is not OrderState.ROUTED:
            self.stats.ignored += 1
            self._ignored.warning("order %s is %s", order.order_id, order.state.name)
            return
        check_id("exec_id", reject_exec_id(order.order_id))  # the longest exec id it may need
        resting = self._resting.get(order.order_id)
        if resting is not None:  # re-driven while it rests: answer where it came from now
            resting.socket = socket
            return
        quote = await self._quote(order.order.symbol)
        report = decide(order, quote, time.time_ns())
        if report is None:
            known = await self.fills.get(order.order_id)  # about to rest: decided before?
            if known is not None:
                await self._commit(known, socket, decided=True)
                return
            if len(self._resting) >= self.max_resting:
                log.warning("executor %s: %d orders rest already: order %s rejected",
                            self.name, len(self._resting), order.order_id)
                report = reject_report(order, time.time_ns())
            else:
                self._resting[order.order_id] = _Resting(order, socket)
                self.stats.resting = len(self._resting)
                self._resting_changed.set()
                return
        await self._commit(report, socket, decided=False)

    async def _on_cancel(self, request: ExecutionReport, socket: int) -> None:
        """A cancel request (a CANCELLED report from the backend) races a fill through the
        decision log: whichever is written first is the order's outcome, and is answered."""
        known = self._recent.get(request.order_id) or await self.fills.get(request.order_id)
        if known is None:
            self._resting.pop(request.order_id, None)
            self.stats.resting = len(self._resting)
        await self._commit(known or request, socket, decided=known is not None)

    async def _commit(self, report: ExecutionReport, socket: int, *, decided: bool) -> None:
        """Make ``report`` the final decision for its order (unless ``decided`` already),
        record the execution, and answer it on ``socket``."""
        recorded = False
        if not decided:
            recorded, report = await self.fills.decide(report)
        if report.state is OrderState.CANCELLED:
            self._resting.pop(report.order_id, None)  # a fill attempt lost to a cancel
            self.stats.resting = len(self._resting)
        # Recorded with the decision (one round trip), or now: a replay, a decision logged by
        # a process that died before recording it, or a log that cannot record.
        if recorded or await self.store.record_execution(report.order_id, report.exec_id):
            if report.state is OrderState.REJECTED:
                self.stats.rejects += 1
            elif report.state is OrderState.CANCELLED:
                self.stats.cancels += 1
            else:
                self.stats.fills += 1
        else:
            self.stats.replays += 1
        self._remember(report)
        try:
            await self.socks[socket].send_multipart(encode_order(report), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.stats.unsent += 1
            log.warning("executor %s: report %s not sent to %s (not connected)", self.name,
                        report.exec_id, self.backends[socket])

    def _remember(self, report: ExecutionReport) -> None:
        self._recent[report.order_id] = report
        self._recent.move_to_end(report.order_id)
        if len(self._recent) > RECENT_REPORTS:
            self._recent.popitem(last=False)

    async def _quote(self, symbol: str) -> Quote | None:
        """The symbol's last usable quote; one HGET, cached for QUOTE_TTL_S."""
        now = time.monotonic()
        hit = self._quote_cache.get(symbol)
        if hit is not None and hit[0] > now:
            return hit[1]
        entry = await self.ticks.last(symbol)
        quote = usable_quote(entry.row[0], entry.row[1]) if entry is not None else None
        self._quote_cache[symbol] = (now + QUOTE_TTL_S, quote)
        return quote

    async def _quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        wanted = set(symbols)
        out: dict[str, Quote] = {}
        for entry in await self.ticks.snapshot(sorted(wanted)):
            if entry.stream in wanted:
                quote = usable_quote(entry.row[0], entry.row[1])
                if quote is not None:
                    out[entry.stream] = quote
        return out

    async def check_resting(self) -> None:
        """Fill every resting order that the latest ticks make marketable."""
        if not self._resting:
            return
        quotes = await self._quotes(sorted({r.order.order.symbol
                                            for r in self._resting.values()}))
        for order_id, resting in list(self._resting.items()):
            order = resting.order
            report = decide(order, quotes.get(order.order.symbol), time.time_ns())
            if report is None:
                continue
            await self._commit(report, resting.socket, decided=False)
            self._resting.pop(order_id, None)
            self.stats.resting = len(self._resting)

    # --- tasks -------------------------------------------------------------------------------

    async def _reader(self, socket: int) -> None:
        sock = self.socks[socket]
        while True:
            frames = await sock.recv_multipart()
            await self.handle(frames, socket)

    async def _poller(self) -> None:
        while True:
            if not self._resting:
                self._resting_changed.clear()
                await self._resting_changed.wait()
            try:
                await self.check_resting()
            except StoreError as exc:
                self.stats.store_errors += 1
                self._store_log.warning("resting orders not checked: %s", exc)
            await asyncio.sleep(self.poll_s)

    async def run(self, stop: asyncio.Event) -> int:
        log.info("executor %s connecting to %s", self.name, ", ".join(self.backends))
        tasks = [asyncio.create_task(self._reader(i), name=f"reader {endpoint}")
                 for i, endpoint in enumerate(self.backends)]
        tasks.append(asyncio.create_task(self._poller(), name="resting"))
        if self.stats_path is not None:
            tasks.append(asyncio.create_task(stats_writer(self.stats_path, 0.5, self.collect),
                                             name="stats"))
        try:
            return await supervise_tasks(f"executor {self.name}", stop, tasks)
        finally:
            for sock in self.socks:
                sock.close(linger=0)
            for owned in self._owned:
                await owned.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
            self.ctx.term()

    def collect(self) -> dict[str, Any]:
        return {"node": "executor", "name": self.name, **asdict(self.stats)}


__all__ = [
    "ExecutorNode",
    "ExecutorStats",
    "FillLog",
    "MemoryFillLog",
    "RedisFillLog",
    "decide",
    "fill_exec_id",
    "reject_exec_id",
    "usable_quote",
]
