"""Order load for the drills, and the count of what became of every acknowledged order.

A drill places paced market orders with unique client order ids through ``OrderClient``
instances in its own process (:class:`Load`, :func:`client_load`), keeping per order the send
time, the ack (order id, epoch, state) or how it ended instead. At the end
:func:`count_orders` waits (bounded) until every acked order has an execution record
(``{prefix}:executed:{order_id}``) and counts:

* **lost**: acknowledged, never executed;
* **duplicated**: client orders executed more than once: one client order id behind two
  executed order ids, or fills in the order's execution log adding up to more than the
  order's quantity (an order may fill in several slices);
* ``ack_mismatch``: an ack whose order id is not the one the store maps its client order id
  to.

:class:`BusyTap` sees the ``BUSY`` rejects that reach an ``OrderClient`` in this process, also
those the client answers itself by trying again, and when each arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any, Self

import bus.orders.client
from bus.orders.client import OrderClient
from bus.store.orders import OrderStore
from nodes.drills.procs import Node
from protocols.errors import DrillError, OrderClientClosed, OrderRejected, OrderTimeout
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import NewOrder, OrderReject, OrderType, RejectReason, Side
from protocols.orders.record import Order

__all__ = [
    "ACCOUNT",
    "PREFIX",
    "SYMBOL",
    "BusyTap",
    "Load",
    "Placed",
    "client_load",
    "close_load",
    "count_orders",
    "find_active",
    "seed_tick",
]

SYMBOL = "EURUSD"  # the drills' one traded symbol (a last tick is seeded for it)
PREFIX = "drill"  # the drills' Redis key prefix ([mesh] key_prefix)
ACCOUNT = "drill"

_BATCH = 50  # store reads in flight at once: the client's connection pool is bounded


@dataclass(slots=True)
class Placed:
    """One order a drill placed, and how it ended."""

    client: int
    client_order_id: str
    sent: float  # time.monotonic()
    outcome: str = "pending"  # acked | rejected:REASON | timeout | closed | error:TYPE
    done: float = 0.0
    order_id: str = ""
    epoch: int = 0
    ack_state: str = ""


@dataclass(slots=True)
class Load:
    """The clients placing orders, every order placed, and the tasks still waiting."""

    clients: list[OrderClient]
    records: list[Placed] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acked(self) -> list[Placed]:
        """The orders acknowledged so far, in the order they were placed."""
        return [r for r in self.records if r.outcome == "acked"]


class BusyTap:
    """Counts the ``BUSY`` rejects an ``OrderClient`` of this process decodes, and the time
    (``time.perf_counter_ns``) the first one for each client order id arrived.

    The client may answer a BUSY itself (wait and send again) and never raise it, so the tap
    sits where every reply passes: while installed (``with BusyTap():``) it wraps the decoders
    the client module imported (``decode_order``, ``decode_order_reply``) and hands every
    message on unchanged. ``decoded`` counts the messages it saw: 0 after replies came means
    the client decodes some other way, and the tap saw nothing.
    """

    DECODERS = ("decode_order", "decode_order_reply")

    def __init__(self, module: ModuleType = bus.orders.client) -> None:
        self.module = module
        self.decoded = 0
        self.busy = 0
        self.first_busy_ns: dict[str, int] = {}
        self._real: dict[str, Callable[..., Any]] = {}

    def _tap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def decode(frames: Any) -> Any:
            msg = real(frames)
            self.decoded += 1
            if isinstance(msg, OrderReject) and msg.reason is RejectReason.BUSY:
                self.busy += 1
                self.first_busy_ns.setdefault(msg.client_order_id, time.perf_counter_ns())
            return msg

        return decode

    def __enter__(self) -> Self:
        for name in self.DECODERS:
            real = getattr(self.module, name, None)
            if real is not None:
                self._real[name] = real
                setattr(self.module, name, self._tap(real))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for name, real in self._real.items():
            setattr(self.module, name, real)
        self._real.clear()


async def _place(load: Load, client: OrderClient, rec: Placed) -> None:
    order = NewOrder(ACCOUNT, rec.client_order_id, SYMBOL, Side.BUY if len(load.records) % 2
                     else Side.SELL, OrderType.MARKET, 1.0, None, time.time_ns())
    try:
        ack = await client.place(order)
    except OrderRejected as exc:
        rec.outcome = f"rejected:{exc.reason.name}"
    except OrderTimeout:
        rec.outcome = "timeout"
    except OrderClientClosed:
        rec.outcome = "closed"
    except Exception as exc:  # counted and shown: the drill reports, it does not hide
        rec.outcome = f"error:{type(exc).__name__}"
    else:
        rec.outcome, rec.order_id, rec.epoch = "acked", ack.order_id, ack.epoch
        rec.ack_state = ack.state.name
    rec.done = time.monotonic()


async def client_load(load: Load, idx: int, rate: float, run_id: str) -> None:
    """Place market orders at ``rate`` per second on client ``idx`` until ``load.stop``,
    paced in small batches, each order its own task."""
    client = load.clients[idx]
    start = time.monotonic()
    placed = 0
    while not load.stop.is_set():
        due = int((time.monotonic() - start) * rate) - placed
        for _ in range(max(0, due)):
            placed += 1
            rec = Placed(idx, f"{run_id}-c{idx}-{placed}", time.monotonic())
            load.records.append(rec)
            task = asyncio.create_task(_place(load, client, rec))
            load.tasks.add(task)
            task.add_done_callback(load.tasks.discard)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.02, 1 / rate)):
                await load.stop.wait()


async def close_load(load: Load | None) -> None:
    """Stop placing, cancel what is in flight, close every client (a drill's cleanup)."""
    if load is None:
        return
    load.stop.set()
    for task in list(load.tasks):
        task.cancel()
    for c in load.clients:
        with contextlib.suppress(Exception):
            await c.close()


async def find_active(backends: Mapping[str, Node], redis: Any, timeout: float,
                      prefix: str = PREFIX) -> tuple[Node, Node, int]:
    """The active backend (its stats say active at the store's epoch), its passive peer and
    the epoch; DrillError when the pair does not settle within ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple[bool, dict[str, Any] | None]] = {}
    while time.monotonic() < deadline:
        epoch = int(await redis.get(f"{prefix}:epoch") or 0)
        seen = {name: (n.alive(), n.stats()) for name, n in backends.items()}
        active = [n for n in backends.values() if n.alive() and (s := n.stats())
                  and s.get("state") == "active" and s.get("epoch") == epoch]
        passive = [n for n in backends.values() if n.alive() and (s := n.stats())
                   and s.get("state") == "passive"]
        if len(active) == 1 and len(passive) == 1 and epoch > 0:
            return active[0], passive[0], epoch
        await asyncio.sleep(0.02)
    states = {name: (alive, s and s.get("state"), s and s.get("epoch"))
              for name, (alive, s) in seen.items()}
    raise DrillError(f"no settled pair within {timeout:.0f} s (alive, state, epoch): {states}")


async def seed_tick(url: str, prefix: str = PREFIX, symbol: str = SYMBOL) -> None:
    """A last tick for ``symbol``, so market orders can be priced and filled."""
    from bus.store.ticks import CheckpointRun, RedisTickStore

    ticks = RedisTickStore(url, prefix)
    try:
        await ticks.start_session("drill-seed", 1, [symbol], 100)
        await ticks.write([CheckpointRun(symbol, 1, 1, [(1.08, 1.0802, 0.0, 1.0, 1, 1)])], 100)
    finally:
        await ticks.close()


async def count_orders(load: Load, redis: Any, store: OrderStore, *, drain_timeout: float,
                       prefix: str = PREFIX) -> dict[str, Any]:
    """Wait up to ``drain_timeout`` for every acked order to be executed, then count what
    became of every order placed (see the module docstring for the figures)."""
    acked = load.acked()
    waiting = {r.order_id for r in acked}
    deadline = time.monotonic() + drain_timeout
    while waiting and time.monotonic() < deadline:
        ids = sorted(waiting)
        pipe = redis.pipeline(transaction=False)
        for oid in ids:
            pipe.scard(f"{prefix}:executed:{oid}")
        for oid, n in zip(ids, await pipe.execute(), strict=True):
            if n:
                waiting.discard(oid)
        if waiting:
            await asyncio.sleep(0.1)
    drain_left = len(waiting)
    # Every execution record in the store, and the order each belongs to.
    executed_sets: dict[str, set[bytes]] = {}
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:executed:*", count=1000)]
    pipe = redis.pipeline(transaction=False)
    for k in keys:
        pipe.smembers(k)
    for k, members in zip(keys, await pipe.execute(), strict=True):
        executed_sets[k.decode().split(":", 2)[2]] = set(members)
    orders: dict[str, Order | None] = {}
    ids = sorted(executed_sets.keys() | {r.order_id for r in acked})
    for i in range(0, len(ids), _BATCH):
        chunk = ids[i:i + _BATCH]
        for oid, order in zip(chunk, await asyncio.gather(*(store.get(o) for o in chunk)),
                              strict=True):
            orders[oid] = order
    executed = sorted(executed_sets)
    lots: dict[str, float] = {}
    for i in range(0, len(executed), _BATCH):
        chunk = executed[i:i + _BATCH]
        logs = await asyncio.gather(*(store.executions(o) for o in chunk))
        for oid, entries in zip(chunk, logs, strict=True):
            lots[oid] = sum(e.last_quantity for e in entries if e.is_fill)
    by_coid: dict[str, list[tuple[str, Order]]] = defaultdict(list)
    for oid in executed_sets:
        order = orders.get(oid)
        if order is not None:
            by_coid[order.order.client_order_id].append((oid, order))
    duplicated = sum(1 for found in by_coid.values()
                     if len(found) > 1 or lots[found[0][0]] > found[0][1].quantity * (1 + 1e-9))
    ack_mismatch = 0
    for r in acked:
        order = orders.get(r.order_id)
        if order is None or order.order.client_order_id != r.client_order_id:
            ack_mismatch += 1
    filled = {oid for oid, o in orders.items() if o is not None and o.state is OrderState.FILLED}
    lost = [r for r in acked if r.order_id not in executed_sets]

    def stored(oid: str) -> tuple[str | None, int | None]:
        o = orders.get(oid)
        return (o.state.name, o.epoch) if o is not None else (None, None)

    lost_detail = [{"order_id": r.order_id, "client_order_id": r.client_order_id,
                    "ack_state": r.ack_state, "ack_epoch": r.epoch,
                    "stored_state": stored(r.order_id)[0],
                    "stored_epoch": stored(r.order_id)[1]} for r in lost[:20]]
    not_filled = [r.order_id for r in acked if r.order_id in executed_sets
                  and r.order_id not in filled]
    outcomes = Counter(r.outcome.split(":")[0] for r in load.records)
    reasons = Counter(r.outcome.split(":", 1)[1] for r in load.records
                      if r.outcome.startswith(("rejected:", "error:")))
    return {
        "sent": len(load.records), "acked": len(acked),
        "rejected": outcomes["rejected"], "timed_out": outcomes["timeout"],
        "other_errors": outcomes["error"] + outcomes["closed"] + outcomes["pending"],
        "reject_reasons": dict(reasons),
        "executed": len(executed_sets),
        "executed_unacked": len(executed_sets.keys() - {r.order_id for r in acked}),
        "lost": len(lost), "duplicated": duplicated, "ack_mismatch": ack_mismatch,
        "acked_not_filled": len(not_filled), "drain_unfinished": drain_left,
        "acked_by_state": dict(Counter(r.ack_state for r in acked)),
        "lost_by_stored_state": dict(Counter(stored(r.order_id)[0] for r in lost)),
        "lost_detail": lost_detail, "acked_not_filled_ids": not_filled[:20],
        # Per order, for a drill that compares them with another record (not for reports):
        # the stored state, and the lots its execution log filled.
        "states": {oid: stored(oid)[0] for oid in orders}, "logged_lots": lots,
    }
