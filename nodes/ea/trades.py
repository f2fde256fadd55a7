"""The EA's trade half: hold leases, reconcile with the terminal, execute the executor's
orders there once (docs/PROTOCOL.md section 18).

All terminal calls run on the instance's one terminal thread (``call``); the sync helpers
here (``_read_*``, ``_send``) are what runs there, each a short sequence of terminal calls, so
an ``order_send`` and the price it is sent at are one step.

Order of work: one request at a time, in arrival order (the terminal serves one call at a
time anyway). An EXECUTE is answered from the tag index when the terminal has seen the order;
else, under a live lease with ``ea_guard_ms`` to spare, it is marked as being sent *before*
``order_send`` is called (so nothing sends it again while the call is out) and sent. A transient
refusal (a requote) is sent again, at most ``send_retries`` times. A call that raises
``TerminalError`` leaves the order in doubt: seen, not sent again, until a later read of the
terminal shows it was taken (or, at least ``DOUBT_S`` later, that it was not).

Fault points for the drill (``TICKMESH_EA_FAULTS`` = a directory): a file ``{name}.after_send``
there kills the process right after the next ``order_send`` returns (before its report); a file
``{name}.reconcile`` kills it half way through the next reconciliation. Each is removed first,
so the restarted process runs clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from bus.config import EaSection, MeshConfig
from bus.ea.terminal import Terminal, now_msc
from bus.logutil import RateLimitedLog
from bus.sockets import EA_TRADE, Sender, open_socket
from nodes.ea.beat import LeaseBeat
from protocols.ea.holder import LeaseHolder
from protocols.ea.index import TagIndex
from protocols.ea.messages import (
    ANY_ACCOUNT,
    Bye,
    Cancel,
    EaMessage,
    Execute,
    Facts,
    FactStatus,
    Hello,
    Modify,
    OrderFacts,
    Refused,
    RefusedWhy,
    Synced,
    decode_ea,
    encode_ea,
)
from protocols.ea.mt5 import (
    Action,
    Filling,
    OrderSendResult,
    OrderType,
    Retcode,
    TradeRequest,
    comment_of,
    magic_of,
    retcode_name,
)
from protocols.errors import RemoteProtocolError, TerminalError

log = logging.getLogger(__name__)

Call = Callable[..., Awaitable[Any]]

FACTS_PER_MESSAGE = 256
MAX_INBOX = 20_000  # requests waiting for the terminal; beyond, refused (the executor resends)
DOUBT_S = 2.0  # an unanswered send is settled as "not taken" only this long after
WATCH_S = 0.005  # working orders are checked this often for deals and status changes
OVERLAP_MS = 1_000  # deal reads overlap the previous one by this much (clock granularity)
YIELD_EVERY = 32  # requests served between two looks at the rest of the loop
LAPSE_POLL_S = 0.002  # a lapsed lease is looked at this often while an order waits for it


@dataclass(slots=True)
class TradeStats:
    sent: int = 0  # order_send calls for new orders (retries included)
    taken: int = 0  # ... that the terminal took (DONE, DONE_PARTIAL, PLACED)
    retcodes: Counter[str] = field(default_factory=Counter)
    unknown_retcodes: int = 0
    facts: int = 0  # order facts reported
    refused: Counter[str] = field(default_factory=Counter)
    reconciliations: int = 0
    reconcile_ms_last: float = 0.0
    reconcile_ms_max: float = 0.0
    history_reads: int = 0  # coverage extended for an older order
    in_doubt: int = 0  # sends the terminal did not answer
    terminal_errors: int = 0
    malformed: int = 0
    dropped: int = 0  # requests refused for a full inbox
    synced_at_ns: int = 0  # when the last reconciliation ended (restart measurements)

    def as_dict(self) -> dict[str, Any]:
        return {name: (dict(v) if isinstance(v, Counter) else v)
                for name in self.__slots__ for v in (getattr(self, name),)}


@dataclass(frozen=True, slots=True)
class _Reconcile:
    """Work item: reconcile ``key`` under ``epoch`` (queued first, before any order)."""

    key: str
    epoch: int


Work = Execute | Cancel | Modify | _Reconcile


class TradeSide:
    """One instance's trades: its DEALER to the executor, leases, the tag index."""

    def __init__(self, cfg: MeshConfig, section: EaSection, terminal: Terminal, call: Call,
                 ctx: zmq.asyncio.Context) -> None:
        self.cfg, self.section, self.terminal, self.call = cfg, section, terminal, call
        self.name = section.name
        self.keys = section.accounts or (ANY_ACCOUNT,)
        self.incarnation = os.urandom(8).hex()
        orders = cfg.orders
        self.heartbeat_s = orders.ea_heartbeat_ms / 1000
        self.lease_s = orders.ea_lease_ms / 1000
        self.holder = LeaseHolder(self.keys, orders.ea_guard_ms / 1000)
        self.index = TagIndex()
        self.stats = TradeStats()
        self.symbols: frozenset[str] = frozenset()
        self._endpoint = orders.ea_bind.replace("*", "127.0.0.1")
        self.sock = open_socket(ctx, EA_TRADE, connect=(self._endpoint,),
                                routing_id=self.name.encode())
        self.beat: LeaseBeat | None = None  # the pings' thread, from start()
        self.out = Sender(self.sock)
        self._inbox: deque[Work] = deque()
        self._pending: dict[tuple[str, int], list[OrderFacts]] = {}  # answers to flush
        self._ready = asyncio.Event()
        # One reconciliation, request or working-order check at a time: each reads and changes
        # the tag index from the terminal thread, and they must not interleave.
        self._busy = asyncio.Lock()
        self._working = 0  # orders working at the terminal (for stats; read off the loop)
        self._doubt: dict[str, float] = {}  # order id -> when its send went unanswered
        self._deal_from_msc = 0
        faults = os.environ.get("TICKMESH_EA_FAULTS")
        self._faults = Path(faults) if faults else None
        self._bad = RateLimitedLog(log, f"ea {self.name}: malformed message")
        self._term_log = RateLimitedLog(log, f"ea {self.name}: terminal")
        self._odd = RateLimitedLog(log, f"ea {self.name}: terminal record")

    # --- tasks -----------------------------------------------------------------------------

    def tasks(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._alive(), name="ea progress"),
                asyncio.create_task(self._reader(), name="ea reader"),
                asyncio.create_task(self._worker(), name="ea orders"),
                asyncio.create_task(self._watcher(), name="ea working orders")]

    async def start(self) -> None:
        self.symbols = frozenset(await self.call(self.terminal.symbols))
        self._deal_from_msc = now_msc() - int(self.section.sync_window_s * 1000)
        self._hello()
        self.beat = LeaseBeat(self._endpoint, self.name, self.incarnation, self.holder,
                              heartbeat_s=self.heartbeat_s,
                              stall_budget_s=self.cfg.orders.stall_budget_ms / 1000,
                              on_change=self._on_lease, loop=asyncio.get_running_loop())
        self.beat.start()

    def close(self) -> None:
        """A clean stop: BYE hands the leases over at once."""
        if self.beat is not None:
            self.beat.stop()
        self._send(Bye(self.name, self.incarnation))
        self.sock.close(linger=100)

    def _hello(self) -> None:
        self._send(Hello(self.name, self.incarnation, self.keys, os.getpid()))

    def _send(self, msg: EaMessage) -> None:
        # The executor away: the next ping, or the executor's resend, covers what is lost.
        with contextlib.suppress(zmq.Again):
            self.out.send(encode_ea(msg))

    async def _alive(self) -> None:
        """Tell the pings' thread the loop makes progress (a stuck loop loses its lease)."""
        while True:
            if self.beat is not None:
                self.beat.progress()
            await asyncio.sleep(self.heartbeat_s)

    async def _reader(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                msg = decode_ea(frames)
            except RemoteProtocolError as exc:
                self.stats.malformed += 1
                self._bad.warning("%s", exc)
                continue
            if isinstance(msg, (Execute, Cancel, Modify)):
                if len(self._inbox) >= MAX_INBOX:
                    self.stats.dropped += 1
                    self._refuse(msg.order_id, msg.epoch, RefusedWhy.TERMINAL_DOWN)
                else:
                    self._inbox.append(msg)
                    self._ready.set()
            else:
                self.stats.malformed += 1
                self._bad.warning("%s is not for an EA instance", type(msg).__name__)

    def _on_lease(self, gained: list[tuple[str, int]], lost: list[str], hello: bool) -> None:
        """(the loop) What the pings' thread saw: keys gained (reconcile them first), lost,
        or the executor asking for a HELLO."""
        if hello:
            self._hello()
        for key in lost:
            log.warning("ea %s: %s is not ours now", self.name, key)
        for key, epoch in gained:
            log.info("ea %s: active for %s under epoch %d: reconciling", self.name, key, epoch)
            self._inbox.appendleft(_Reconcile(key, epoch))
            self._ready.set()

    async def _worker(self) -> None:
        served = 0
        while True:
            await self._ready.wait()
            while self._inbox:
                item = self._inbox.popleft()
                served += 1
                if served % YIELD_EVERY == 0:
                    # An EXECUTE of an order the terminal has is answered without a terminal
                    # call: thousands after a takeover held the loop for 100+ ms at a time.
                    self._flush()
                    await asyncio.sleep(0)
                try:
                    async with self._busy:
                        await self._serve(item)
                        self._working = len(self.index.working())
                except TerminalError as exc:
                    self.stats.terminal_errors += 1
                    self._term_log.warning("%s", exc)
                    if isinstance(item, _Reconcile):
                        await asyncio.sleep(0.05)  # the terminal is away: try again
                        self._inbox.appendleft(item)
                    else:
                        self._refuse(item.order_id, item.epoch, RefusedWhy.TERMINAL_DOWN)
            self._flush()
            self._ready.clear()

    async def _serve(self, item: Work) -> None:
        if isinstance(item, _Reconcile):
            await self._reconcile(item.key, item.epoch)
        elif isinstance(item, Execute):
            await self._execute(item)
        else:
            await self._amend(item)

    # --- reconciliation --------------------------------------------------------------------

    async def _reconcile(self, key: str, epoch: int) -> None:
        if self._epoch(key) != epoch:
            return  # lost again before it started
        started = time.monotonic()
        to_msc = now_msc()
        from_msc = to_msc - int(self.section.sync_window_s * 1000)
        # What the window holds is reported (older orders were reported by whoever held the
        # key then; an EXECUTE for one reads it back on demand).
        ids = sorted(await self.call(self._read_history, from_msc, to_msc))
        for i in range(0, len(ids), FACTS_PER_MESSAGE):
            if i and self._fault("reconcile"):
                return
            chunk = tuple(self.index.facts(oid) for oid in ids[i:i + FACTS_PER_MESSAGE])
            self._report(chunk, key, epoch, sync=True)
        if self._fault("reconcile"):
            return
        with self._lock:
            self.holder.synced(key, epoch)
        self._send(Synced(self.name, key, epoch, len(ids), self.index.foreign))
        elapsed = (time.monotonic() - started) * 1000
        self.stats.reconciliations += 1
        self.stats.reconcile_ms_last = elapsed
        self.stats.reconcile_ms_max = max(self.stats.reconcile_ms_max, elapsed)
        self.stats.synced_at_ns = time.time_ns()
        log.info("ea %s: %s reconciled under epoch %d: %d orders in %.0f ms (%d foreign)",
                 self.name, key, epoch, len(ids), elapsed, self.index.foreign)

    def _read_history(self, from_msc: int, to_msc: int) -> set[str]:
        """(terminal thread) Read orders and deals of ``from_msc .. to_msc`` into the index,
        active orders too; the index then covers from ``from_msc``. The tickmesh order ids
        the read found."""
        t, index = self.terminal, self.index
        found: set[str] = set()
        for o in t.history_orders_get(from_msc, to_msc):
            index.on_order(o, active=False)
            found.add(index.id_of(o.ticket, o.magic, o.comment) or "")
        for o in t.orders_get():
            index.on_order(o, active=True)
            found.add(index.id_of(o.ticket, o.magic, o.comment) or "")
        for d in t.history_deals_get(from_msc, to_msc + OVERLAP_MS):
            found.add(index.on_deal(d) or index.id_of(d.order, d.magic, d.comment) or "")
        index.covered(from_msc)
        t.positions_get()  # read as the terminal's state; positions follow from the deals
        found.discard("")
        return found

    # --- orders ----------------------------------------------------------------------------

    async def _execute(self, msg: Execute) -> None:
        why = await self._not_ready(msg.key, msg.epoch)
        if why is not None:
            self._refuse(msg.order_id, msg.epoch, why)
            return
        if not self.index.covers(msg.routed_ms):
            await self._extend(msg.routed_ms)
        if msg.order_id in self._doubt and not await self._settled(msg.order_id):
            self._refuse(msg.order_id, msg.epoch, RefusedWhy.TERMINAL_DOWN)
            return
        if self.index.seen(msg.order_id):
            self._report_one(msg.order_id, msg.key, msg.epoch)
            return
        if msg.symbol not in self.symbols:
            self._refuse(msg.order_id, msg.epoch, RefusedWhy.UNKNOWN_SYMBOL)
            return
        await self._send_new(msg)

    async def _not_ready(self, key: str, epoch: int) -> RefusedWhy | None:
        """Why an order for ``key`` under ``epoch`` cannot be served now (None: it can). A
        lease that lapsed under that same epoch (a late answer) is waited for, one lease at
        most: refusing would send the order round again, and under load refusals of every
        order at each lapse were what kept the loops too busy to renew in time."""
        deadline = time.monotonic() + self.lease_s
        while True:
            with self._lock:
                if self.holder.is_synced(key, epoch):
                    return None
                if self.holder.epoch(key) == epoch:
                    return RefusedWhy.SYNCING
                lapsed = self.holder.lapsed(key, epoch)
            if not lapsed or time.monotonic() >= deadline:
                return RefusedWhy.NOT_ACTIVE
            await asyncio.sleep(LAPSE_POLL_S)

    def _epoch(self, key: str) -> int:
        with self._lock:
            return self.holder.epoch(key)

    def _may_send(self, key: str, epoch: int) -> bool:
        """The fence, checked right before every ``order_send``."""
        with self._lock:
            return self.holder.may_send(key, epoch, time.monotonic())

    @property
    def _lock(self) -> threading.Lock | contextlib.nullcontext[None]:
        return self.beat.lock if self.beat is not None else contextlib.nullcontext()

    async def _extend(self, routed_ms: int) -> None:
        """Read the terminal's history back to before ``routed_ms`` (0: the whole window)."""
        covers = self.index.covers_from_msc or now_msc()
        oldest = now_msc() - int(self.section.history_window_s * 1000)
        from_msc = max(oldest, routed_ms - 1000) if routed_ms else oldest
        if from_msc < covers:
            self.stats.history_reads += 1
            await self.call(self._read_history, from_msc, covers)

    async def _settled(self, order_id: str) -> bool:
        """Settle an order whose send went unanswered: True once a read of the terminal at
        least ``DOUBT_S`` later decided it (taken: in the index; never taken: forgotten, free
        to send), False while it is still in doubt."""
        if time.monotonic() - self._doubt[order_id] < DOUBT_S:
            return False
        await self.call(self._read_history, now_msc() - int(DOUBT_S * 2000) - 1000, now_msc())
        self.index.settle(order_id)
        del self._doubt[order_id]
        return True

    async def _send_new(self, msg: Execute) -> None:
        request = self._request(msg)
        result: OrderSendResult | None = None
        for attempt in range(self.section.send_retries + 1):
            if not self._may_send(msg.key, msg.epoch):
                self._refuse(msg.order_id, msg.epoch, RefusedWhy.NOT_ACTIVE)
                return
            self.index.sending(msg.order_id, request.magic, msg.price, now_msc())
            self.stats.sent += 1
            try:
                result = await self.call(self._price_and_send, request)
            except TerminalError:
                self.stats.in_doubt += 1
                self._doubt[msg.order_id] = time.monotonic()
                raise
            self._fault("after_send")
            code = self._retcode(result)
            last = attempt == self.section.send_retries
            transient = code is not None and code.transient and not last
            self.index.sent(msg.order_id, result, time_msc=now_msc(),
                            final_reject=not transient)
            if not transient:
                break
        self._report_one(msg.order_id, msg.key, msg.epoch)

    def _request(self, msg: Execute) -> TradeRequest:
        limit = msg.price > 0
        kind = ((OrderType.BUY_LIMIT if msg.buy else OrderType.SELL_LIMIT) if limit
                else (OrderType.BUY if msg.buy else OrderType.SELL))
        return TradeRequest(Action.PENDING if limit else Action.DEAL, msg.symbol,
                            volume=msg.quantity, type=kind, price=msg.price,
                            deviation=0, type_filling=Filling.RETURN,
                            magic=magic_of(msg.order_id), comment=comment_of(msg.order_id))

    def _price_and_send(self, request: TradeRequest) -> OrderSendResult:
        """(terminal thread) A market order goes at the current price of its side."""
        if request.action is Action.DEAL:
            tick = self.terminal.symbol_info_tick(request.symbol)
            if tick is not None:
                request = replace(request, price=tick.ask if request.type.buy else tick.bid)
        return self.terminal.order_send(request)

    def _retcode(self, result: OrderSendResult) -> Retcode | None:
        self.stats.retcodes[retcode_name(result.retcode)] += 1
        try:
            code = Retcode(result.retcode)
        except ValueError:
            self.stats.unknown_retcodes += 1
            self._odd.warning("order_send answered %d, a retcode this EA does not know: "
                              "taken as a refusal", result.retcode)
            return None
        if code.accepted:
            self.stats.taken += 1
        return code

    async def _amend(self, msg: Cancel | Modify) -> None:
        why = await self._not_ready(msg.key, msg.epoch)
        if why is None and not self.index.seen(msg.order_id):
            why = RefusedWhy.UNKNOWN_ORDER
        if why is not None:
            self._refuse(msg.order_id, msg.epoch, why)
            return
        tagged = self.index.orders[msg.order_id]
        if tagged.status is not FactStatus.WORKING or not tagged.ticket:
            self._report_one(msg.order_id, msg.key, msg.epoch)  # finished: its facts say so
            return
        if not self._may_send(msg.key, msg.epoch):
            self._refuse(msg.order_id, msg.epoch, RefusedWhy.NOT_ACTIVE)
            return
        request = (TradeRequest(Action.REMOVE, "", order=tagged.ticket, magic=magic_of(
            msg.order_id), comment=comment_of(msg.order_id)) if isinstance(msg, Cancel)
            else TradeRequest(Action.MODIFY, "", price=msg.price, order=tagged.ticket,
                              magic=magic_of(msg.order_id), comment=comment_of(msg.order_id)))
        result = await self.call(self._amend_and_read, request, self._since(tagged.setup_msc))
        self.stats.retcodes[retcode_name(result.retcode)] += 1
        facts = self.index.facts(msg.order_id)
        if isinstance(msg, Modify) and result.retcode != Retcode.DONE:
            facts = OrderFacts(facts.order_id, FactStatus.MODIFY_REFUSED, facts.ticket,
                               facts.price, result.retcode, facts.deals)
        self._report((facts,), msg.key, msg.epoch)

    def _since(self, setup_msc: int) -> int:
        """Where a read of an order's record starts: its setup time, or (unknown) the window
        a reconciliation reads; never the whole history."""
        return setup_msc or now_msc() - int(self.section.sync_window_s * 1000)

    def _amend_and_read(self, request: TradeRequest, setup_msc: int) -> OrderSendResult:
        """(terminal thread) Send a REMOVE or MODIFY, then read the order's record back: its
        deals up to now go with the answer, so a CANCELLED never precedes a fill."""
        result = self.terminal.order_send(request)
        self._read_history(max(0, setup_msc - OVERLAP_MS), now_msc())
        return result

    # --- working orders -------------------------------------------------------------------------

    async def _watcher(self) -> None:
        """Report deals and status changes of working orders as the terminal makes them."""
        while True:
            await asyncio.sleep(max(WATCH_S, self.section.poll_ms / 1000))
            if not self._working or self._busy.locked():
                continue  # nothing to watch, or a request reads the terminal anyway
            async with self._busy:
                try:
                    changed = await self.call(self._read_working)
                except TerminalError as exc:
                    self.stats.terminal_errors += 1
                    self._term_log.warning("%s", exc)
                    continue
                self._working = len(self.index.working())
            if changed:
                with self._lock:
                    key = next(iter(self.holder.held), self.keys[0])
                self._report(tuple(self.index.facts(o) for o in sorted(changed)), key,
                             self._epoch(key))

    def _read_working(self) -> set[str]:
        """(terminal thread) The ids whose record changed: new deals, orders finished."""
        t = self.terminal
        now = now_msc()
        changed: set[str] = set()
        active = {o.ticket for o in t.orders_get()}
        for d in t.history_deals_get(self._deal_from_msc - OVERLAP_MS, now + OVERLAP_MS):
            oid = self.index.on_deal(d)
            if oid is not None:
                changed.add(oid)
        self._deal_from_msc = now
        gone = [w for w in self.index.working() if w.ticket and w.ticket not in active]
        if gone:
            since = self._since(min(w.setup_msc for w in gone)) - OVERLAP_MS
            for o in t.history_orders_get(max(0, since), now + OVERLAP_MS):
                oid = self.index.on_order(o, active=False)
                if oid is not None:
                    changed.add(oid)
        return changed

    # --- reports ---------------------------------------------------------------------------

    def _report_one(self, order_id: str, key: str, epoch: int) -> None:
        """An answer to one request: joins the facts sent together at the next flush."""
        pending = self._pending.setdefault((key, epoch), [])
        pending.append(self.index.facts(order_id))
        if len(pending) >= FACTS_PER_MESSAGE:
            self._flush()

    def _flush(self) -> None:
        for (key, epoch), facts in self._pending.items():
            self._report(tuple(facts), key, epoch)
        self._pending.clear()

    def _report(self, facts: tuple[OrderFacts, ...], key: str, epoch: int, *,
                sync: bool = False) -> None:
        self.stats.facts += len(facts)
        self._send(Facts(self.name, key, epoch, facts, sync))

    def _refuse(self, order_id: str, epoch: int, why: RefusedWhy) -> None:
        self.stats.refused[why.name] += 1
        self._send(Refused(self.name, order_id, epoch, why))

    def _fault(self, point: str) -> bool:
        """Die here if the drill asked for it (see the module docstring)."""
        if self._faults is None:
            return False
        marker = self._faults / f"{self.name}.{point}"
        try:
            marker.unlink()
        except FileNotFoundError:
            return False
        log.warning("ea %s: fault point %s: killing myself", self.name, point)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # (Windows: TERM)
        return True  # pragma: no cover - not reached

    def collect(self) -> dict[str, Any]:
        with self._lock:
            holding = self.holder.held
        beat = self.beat
        return {**self.stats.as_dict(), "deals": self.index.deals, "holding": holding,
                "pings": beat.pings if beat else 0, "pings_skipped": beat.skipped if beat else 0,
                "orders_known": len(self.index.orders), "foreign": self.index.foreign,
                "unknown_deals": self.index.unknown_deals, "twice": len(self.index.twice),
                "working": self._working}


__all__ = ["TradeSide", "TradeStats"]
