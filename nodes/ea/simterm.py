"""The simulated MetaTrader 5 terminal: a process that plays one account's terminal and trade
server (``tickmesh sim-terminal``, docs/PROTOCOL.md section 19).

A ROUTER at ``[terminal] bind`` answers the requests of ``protocols.ea.simwire``, one at a
time in arrival order. That order is part of the contract: the last ``order_send`` of an EA
that died is in the record before a new instance's first read, because that read is served
after it.

* **Quotes** come from ``nodes.ticks.sources``' Simulator or Replay. Each tick is stamped with
  the terminal's clock (``time_msc``, like a live terminal stamping what the server sends: a
  replay file's own times are not kept; never decreasing, but not strictly increasing, as
  MT5's is not) and kept in a per-symbol ring of ``tick_history`` ticks.
* **Trading** (:class:`SimBook`): market orders fill at ask (buy) or bid (sell); pending
  limit orders rest and fill at their price when a tick makes them marketable; with
  ``partial_lots`` every deal is at most that many lots and the rest fills on later ticks.
  Refusals carry MT5's retcodes; requotes and rejects are drawn from a RNG seeded by
  ``seed``. A netting account: one position per symbol.
* **History on disk** (:class:`Journal`): every change is appended to
  ``data_dir/journal.msgpack`` and flushed before the reply that reveals it is sent, and
  replayed at start, so a killed terminal restarts with its orders, deals, positions and
  ticket counter.

All state lives in :class:`SimBook`, which only one worker thread touches (requests and tick
batches are queued to it in order): the event loop never blocks on the journal's writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import msgpack
import zmq
import zmq.asyncio

from bus.config import MeshConfig, TerminalSection
from bus.ea.terminal import now_msc
from bus.logutil import RateLimitedLog
from bus.sockets import TERMINAL_REPLY_BYTES, TERMINAL_SERVER, open_socket
from nodes.common import run_node, stats_writer, supervise_tasks, write_json_atomic
from nodes.ticks.sources import RawTick, Replay, Simulator, Source
from protocols.ea.mt5 import (
    Action,
    DealEntry,
    DealType,
    OrderSendResult,
    OrderStateMt5,
    OrderType,
    Retcode,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
    retcode_name,
)
from protocols.ea.simwire import (
    REQUEST_KINDS,
    CopyTicksFrom,
    ErrorReply,
    HistoryDealsGet,
    HistoryOrdersGet,
    Initialize,
    OrderSend,
    OrdersGet,
    PositionsGet,
    Reply,
    Result,
    Shutdown,
    SimRequest,
    SymbolInfoTick,
    Symbols,
    decode_sim,
    encode_sim,
    pack_record,
    request_id_of,
    unpack_record,
)
from protocols.errors import RemoteProtocolError, ServerError

log = logging.getLogger(__name__)

# Finished orders and deals kept (each): past this the oldest tenth is dropped from memory,
# and from the journal at its next compaction. A real account's history is the broker's, and
# unbounded; a simulated one that runs for weeks must not be.
HISTORY_CAP = 1_000_000
JOURNAL_NAME = "journal.msgpack"
# The journal is compacted at start once it holds more than twice the live records and this
# many more (a restart should not rewrite a small file for a few superseded entries).
COMPACT_SLACK = 10_000
_EPS = 1e-9  # volumes are rounded to 8 decimals; below this a volume is nothing


class Refusal(Exception):
    """A request the terminal cannot serve (answered ERROR; the client raises
    ``TerminalError``)."""


# --- ticks -----------------------------------------------------------------------------------

class TickRing:
    """The newest ``capacity`` ticks of one symbol, oldest first, in five flat arrays (40
    bytes a tick: 200,000 ticks of four symbols are 32 MB, where as many Tick objects would
    take five times that)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._time = array("q")
        self._cols = tuple(array("d") for _ in range(4))  # bid, ask, last, volume
        self._head = 0  # the oldest tick's slot once the ring is full

    def __len__(self) -> int:
        return len(self._time)

    def _slot(self, i: int) -> int:
        return (self._head + i) % self.capacity

    def append(self, tick: Tick) -> None:
        values = (tick.bid, tick.ask, tick.last, tick.volume)
        if len(self._time) < self.capacity:
            self._time.append(tick.time_msc)
            for col, v in zip(self._cols, values, strict=True):
                col.append(v)
            return
        slot = self._head
        self._time[slot] = tick.time_msc
        for col, v in zip(self._cols, values, strict=True):
            col[slot] = v
        self._head = (slot + 1) % self.capacity

    def _tick(self, i: int) -> Tick:
        s = self._slot(i)
        bid, ask, last, volume = (col[s] for col in self._cols)
        return Tick(self._time[s], bid, ask, last, volume)

    def last(self) -> Tick | None:
        return self._tick(len(self) - 1) if len(self) else None

    def since(self, from_msc: int, count: int) -> list[Tick]:
        """At most ``count`` ticks from ``from_msc`` on, oldest first. A binary search: the
        clock may step back a little, which then moves where the answer starts, no more."""
        times = _LogicalTimes(self)
        start = bisect_left(times, from_msc)
        return [self._tick(i) for i in range(start, min(len(self), start + count))]


class _LogicalTimes:
    """The ring's times in logical order, as a sequence ``bisect`` can search."""

    def __init__(self, ring: TickRing) -> None:
        self._ring = ring

    def __len__(self) -> int:
        return len(self._ring)

    def __getitem__(self, i: int) -> int:
        return self._ring._time[self._ring._slot(i)]


# --- the journal -----------------------------------------------------------------------------

class Journal:
    """An append-only file of msgpack entries: the terminal's history on disk.

    Why not sqlite3: the state is small and rebuilt whole at start anyway (active orders,
    positions, the history to answer from), so a log of changes replayed in order is all it
    needs; an append is one ``write`` of a few hundred bytes, where a sqlite transaction is
    several. ``flush`` hands the bytes to the kernel: a SIGKILLed terminal loses nothing that
    it replied about (there is no ``fsync``: a power cut may lose the tail, which no test or
    drill does). A torn last entry (killed mid-write, never replied about) is cut off at the
    next start. Entries::

        ["T", next_ticket]             the ticket counter (written when compacting)
        ["O", active, order]           an order placed or changed (active) or finished
        ["D", deal]                    a deal
        ["P", position] / ["X", symbol]  a position opened or changed / closed
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = 0  # entries in the file
        self._fh: IO[bytes] | None = None

    def replay(self) -> Iterator[list[Any]]:
        """Every whole entry in the file, in order; a torn tail is truncated away."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=True,
                                        max_buffer_size=16 * 1024 * 1024)
            good = 0
            try:
                for entry in unpacker:
                    if not isinstance(entry, list) or not entry:
                        raise ServerError(f"{self.path}: entry at byte {good} is not an entry")
                    good = unpacker.tell()
                    self.records += 1
                    yield entry
            except (ValueError, msgpack.UnpackException) as exc:
                raise ServerError(f"{self.path}: corrupt at byte {good}: {exc}") from exc
        size = self.path.stat().st_size
        if good < size:
            log.warning("terminal journal: cutting a torn entry of %d bytes at byte %d",
                        size - good, good)
            with self.path.open("r+b") as fh:
                fh.truncate(good)

    def _file(self) -> IO[bytes]:
        if self._fh is None:
            self._fh = self.path.open("ab")
        return self._fh

    def append(self, entry: list[Any]) -> None:
        self._file().write(msgpack.packb(entry, use_bin_type=True))
        self.records += 1

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def rewrite(self, entries: Iterable[list[Any]]) -> None:
        """Replace the file by ``entries`` (compaction): written aside, then renamed over it,
        so a kill at any moment leaves the old file or the new one whole."""
        self.close()
        tmp = self.path.with_suffix(".tmp")
        n = 0
        with tmp.open("wb") as fh:
            for entry in entries:
                fh.write(msgpack.packb(entry, use_bin_type=True))
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.records = n

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --- the account -----------------------------------------------------------------------------

@dataclass(slots=True)
class BookStats:
    orders: int = 0  # terminal orders made (REJECTED ones too)
    deals: int = 0
    ticks: int = 0
    rejects: Counter[str] = field(default_factory=Counter)  # order_send refusals by retcode


_RESULT_TEXT = {Retcode.DONE: "Request executed", Retcode.DONE_PARTIAL: "Request executed "
                "partially", Retcode.PLACED: "Order placed"}


def _result(code: Retcode, tick: Tick | None = None, **kw: Any) -> OrderSendResult:
    return OrderSendResult(int(code), bid=tick.bid if tick else 0.0,
                           ask=tick.ask if tick else 0.0,
                           comment=_RESULT_TEXT.get(code, retcode_name(code)), **kw)


def _vol(v: float) -> float:
    return round(v, 8)


class SimBook:
    """One account's terminal and trade server, without I/O: quotes, orders, deals,
    positions, journalled. Every input takes ``now`` (epoch milliseconds)."""

    def __init__(self, section: TerminalSection, journal: Journal,
                 rng: random.Random | None = None) -> None:
        self.section = section
        self.journal = journal
        self.rng = rng or random.Random(section.seed)
        self.rings = {s: TickRing(section.tick_history) for s in section.symbols}
        self.active: dict[int, TradeOrder] = {}  # by ticket
        self._resting: dict[str, dict[int, None]] = {s: {} for s in section.symbols}
        self.history_orders: list[TradeOrder] = []  # finished, in time_done order
        self.history_deals: list[TradeDeal] = []  # in time order
        self.positions: dict[str, TradePosition] = {}
        self.next_ticket = 1
        self.stats = BookStats()

    # --- start ---------------------------------------------------------------------------

    def load(self) -> None:
        """Replay the journal, and compact it when most of it is superseded."""
        for entry in self.journal.replay():
            try:
                self._apply(entry)
            except (RemoteProtocolError, IndexError, TypeError, ValueError) as exc:
                raise ServerError(f"{self.journal.path}: bad entry {entry!r:.200}: {exc}") \
                    from exc
        live = len(self.history_orders) + len(self.active) + len(self.history_deals) + \
            len(self.positions) + 1
        if self.journal.records > 2 * live + COMPACT_SLACK:
            log.info("terminal journal: compacting %d entries to %d", self.journal.records,
                     live)
            self.journal.rewrite(self._snapshot())
        log.info("terminal: %d active orders, %d finished, %d deals, %d positions, next "
                 "ticket %d", len(self.active), len(self.history_orders),
                 len(self.history_deals), len(self.positions), self.next_ticket)

    def _apply(self, entry: list[Any]) -> None:
        match entry[0]:
            case "T":
                self.next_ticket = max(self.next_ticket, int(entry[1]))
            case "O":
                order = unpack_record(TradeOrder, entry[2])
                self._see(order.ticket)
                if entry[1]:
                    self._activate(order)
                else:
                    self._finish(order)
            case "D":
                deal = unpack_record(TradeDeal, entry[1])
                self._see(deal.ticket)
                self._add_deal(deal)
            case "P":
                pos = unpack_record(TradePosition, entry[1])
                self.positions[pos.symbol] = pos
            case "X":
                self.positions.pop(str(entry[1]), None)
            case other:
                raise ValueError(f"unknown entry type {other!r}")

    def _snapshot(self) -> Iterator[list[Any]]:
        yield ["T", self.next_ticket]
        for o in self.history_orders:
            yield ["O", False, pack_record(o)]
        for o in self.active.values():
            yield ["O", True, pack_record(o)]
        for d in self.history_deals:
            yield ["D", pack_record(d)]
        for p in self.positions.values():
            yield ["P", pack_record(p)]

    def _see(self, ticket: int) -> None:
        self.next_ticket = max(self.next_ticket, ticket + 1)

    def _ticket(self) -> int:
        t = self.next_ticket
        self.next_ticket += 1
        return t

    # --- state changes (each journalled by its caller's flush) --------------------------

    def _activate(self, order: TradeOrder) -> None:
        self.active[order.ticket] = order
        self._resting.setdefault(order.symbol, {})[order.ticket] = None

    def _finish(self, order: TradeOrder) -> None:
        if self.active.pop(order.ticket, None) is not None:
            self._resting[order.symbol].pop(order.ticket, None)
        self.history_orders.append(order)
        if len(self.history_orders) > HISTORY_CAP:
            del self.history_orders[:HISTORY_CAP // 10]

    def _add_deal(self, deal: TradeDeal) -> None:
        self.history_deals.append(deal)
        if len(self.history_deals) > HISTORY_CAP:
            del self.history_deals[:HISTORY_CAP // 10]

    def _put_order(self, order: TradeOrder, active: bool) -> None:
        if active:
            self._activate(order)
        else:
            self._finish(order)
        self.journal.append(["O", active, pack_record(order)])

    def _net(self, order: TradeOrder, volume: float, price: float) -> DealEntry:
        """Book a deal of ``order`` into the symbol's netting position."""
        buy = order.type.buy
        pos = self.positions.get(order.symbol)
        side = OrderType.BUY if buy else OrderType.SELL
        if pos is None:
            new: TradePosition | None = TradePosition(order.ticket, order.symbol, side, volume,
                                                      price, order.magic)
            entry = DealEntry.IN
        elif pos.type.buy == buy:
            total = _vol(pos.volume + volume)
            new = replace(pos, volume=total,
                          price_open=(pos.price_open * pos.volume + price * volume) / total)
            entry = DealEntry.IN
        else:
            left = _vol(pos.volume - volume)
            if left > _EPS:
                new, entry = replace(pos, volume=left), DealEntry.OUT
            elif left >= -_EPS:
                new, entry = None, DealEntry.OUT
            else:
                new = TradePosition(order.ticket, order.symbol, side, -left, price, order.magic)
                entry = DealEntry.INOUT
        if new is None:
            del self.positions[order.symbol]
            self.journal.append(["X", order.symbol])
        else:
            self.positions[order.symbol] = new
            self.journal.append(["P", pack_record(new)])
        return entry

    def _fill(self, order: TradeOrder, volume: float, price: float, now: int
              ) -> tuple[TradeOrder, TradeDeal]:
        """One deal of ``volume`` at ``price``: the deal, the position, the order's rest."""
        deal = TradeDeal(self._ticket(), order.ticket, now,
                         DealType.BUY if order.type.buy else DealType.SELL,
                         self._net(order, volume, price), order.magic, volume, price,
                         order.symbol, order.comment)
        self._add_deal(deal)
        self.journal.append(["D", pack_record(deal)])
        self.stats.deals += 1
        rest = _vol(order.volume_current - volume)
        if rest > _EPS:
            order = replace(order, volume_current=rest, state=OrderStateMt5.PARTIAL)
            self._put_order(order, True)
        else:
            order = replace(order, volume_current=0.0, state=OrderStateMt5.FILLED,
                            time_done_msc=now)
            self._put_order(order, False)
        return order, deal

    def _slice(self, volume: float) -> float:
        lots = self.section.partial_lots
        return volume if lots <= 0 else _vol(min(volume, lots))

    # --- inputs --------------------------------------------------------------------------

    def on_ticks(self, ticks: Iterable[tuple[str, Tick]]) -> None:
        """Take quotes: each goes into its ring and fills what it makes marketable."""
        changed = False
        for symbol, tick in ticks:
            ring = self.rings.get(symbol)
            if ring is None:
                continue
            ring.append(tick)
            self.stats.ticks += 1
            resting = self._resting.get(symbol)
            if resting:
                for ticket in list(resting):
                    changed |= self._try_fill(self.active[ticket], tick)
        if changed:
            self.journal.flush()

    def _try_fill(self, order: TradeOrder, tick: Tick) -> bool:
        buy = order.type.buy
        if order.type in (OrderType.BUY, OrderType.SELL):  # a market order's rest
            price = tick.ask if buy else tick.bid
        elif (tick.ask <= order.price_open) if buy else (tick.bid >= order.price_open):
            price = order.price_open
        else:
            return False
        if price <= 0:
            return False
        self._fill(order, self._slice(order.volume_current), price, tick.time_msc)
        return True

    def order_send(self, req: TradeRequest, now: int) -> OrderSendResult:
        """Serve one trade request; journalled (flushed) before it returns."""
        result = self._order_send(req, now)
        self.journal.flush()
        code = Retcode(result.retcode)
        if not code.accepted:
            self.stats.rejects[retcode_name(code)] += 1
        return result

    def _order_send(self, req: TradeRequest, now: int) -> OrderSendResult:
        match req.action:
            case Action.DEAL | Action.PENDING:
                return self._new_order(req, now)
            case Action.MODIFY:
                return self._modify(req, now)
            case Action.REMOVE:
                return self._remove(req, now)
        return _result(Retcode.INVALID)  # SLTP: tickmesh sets no stops

    def _new_order(self, req: TradeRequest, now: int) -> OrderSendResult:
        market = req.action is Action.DEAL
        ring = self.rings.get(req.symbol)
        if ring is None or market != (req.type in (OrderType.BUY, OrderType.SELL)):
            return _result(Retcode.INVALID)
        if not req.volume > _EPS:
            return _result(Retcode.INVALID_VOLUME)
        tick = ring.last()
        volume = _vol(req.volume)
        if market:
            if tick is None:
                return _result(Retcode.PRICE_OFF)
            price = tick.ask if req.type.buy else tick.bid
            dev = self.section.max_deviation
            if dev > 0 and req.price > 0 and abs(price - req.price) > dev:
                return _result(Retcode.REQUOTE, tick)
            if self._roll(self.section.requote_rate):
                return _result(Retcode.REQUOTE, tick)
        else:
            if not req.price > 0:
                return _result(Retcode.INVALID_PRICE, tick)
            price = req.price
        order = TradeOrder(self._ticket(), now, req.type, OrderStateMt5.STARTED, req.magic,
                           volume, volume, price, req.symbol, req.comment)
        self.stats.orders += 1
        if self._roll(self.section.reject_rate):
            self._put_order(replace(order, state=OrderStateMt5.REJECTED, time_done_msc=now),
                            False)
            return _result(Retcode.REJECT, tick, order=order.ticket)
        if not market:
            self._put_order(replace(order, state=OrderStateMt5.PLACED), True)
            return _result(Retcode.PLACED, tick, order=order.ticket, volume=volume,
                           price=price)
        first = self._slice(volume)
        order, deal = self._fill(order, first, price, now)
        code = Retcode.DONE if order.state is OrderStateMt5.FILLED else Retcode.DONE_PARTIAL
        return _result(code, tick, deal=deal.ticket, order=order.ticket, volume=first,
                       price=price)

    def _roll(self, rate: float) -> bool:
        # Drawn only when the rate is set, so that a test with rates of 0 or 1 is exact and
        # the other draws stay the same sequence for one seed.
        return rate > 0 and self.rng.random() < rate

    def _pending(self, req: TradeRequest) -> TradeOrder | None:
        order = self.active.get(req.order)
        if order is None or order.type in (OrderType.BUY, OrderType.SELL):
            return None
        return order

    def _modify(self, req: TradeRequest, now: int) -> OrderSendResult:
        order = self._pending(req)
        if order is None:
            return _result(Retcode.INVALID_ORDER)
        if not req.price > 0:
            return _result(Retcode.INVALID_PRICE, order=order.ticket)
        if req.price == order.price_open:
            return _result(Retcode.NO_CHANGES, order=order.ticket)
        self._put_order(replace(order, price_open=req.price), True)
        return _result(Retcode.DONE, order=order.ticket, volume=order.volume_current,
                       price=req.price)

    def _remove(self, req: TradeRequest, now: int) -> OrderSendResult:
        order = self._pending(req)
        if order is None:
            return _result(Retcode.INVALID_ORDER)
        self._put_order(replace(order, state=OrderStateMt5.CANCELED, time_done_msc=now), False)
        return _result(Retcode.DONE, order=order.ticket, volume=order.volume_current)

    # --- reads ---------------------------------------------------------------------------

    def orders_get(self) -> tuple[TradeOrder, ...]:
        # By ticket without a sort: an order enters ``active`` when it is made (pending) or
        # at once after its first deal (a market order's rest), before any later ticket, and
        # a dict keeps its keys in the order they first came.
        return tuple(self.active.values())

    def latest_msc(self) -> int:
        """The time of the newest change on record (0: none), where the clock resumes."""
        return max((self.history_orders[-1].time_done_msc if self.history_orders else 0),
                   (self.history_deals[-1].time_msc if self.history_deals else 0),
                   max((o.time_setup_msc for o in self.active.values()), default=0))

    def positions_get(self) -> tuple[TradePosition, ...]:
        return tuple(sorted(self.positions.values(), key=lambda p: p.ticket))

    def history_orders_get(self, lo: int, hi: int) -> tuple[TradeOrder, ...]:
        # Kept in time_done order; an order set up at or after lo was done at or after it.
        start = bisect_left(self.history_orders, lo, key=lambda o: o.time_done_msc)
        return tuple(o for o in self.history_orders[start:] if lo <= o.time_setup_msc <= hi)

    def history_deals_get(self, lo: int, hi: int) -> tuple[TradeDeal, ...]:
        start = bisect_left(self.history_deals, lo, key=lambda d: d.time_msc)
        out = []
        for d in self.history_deals[start:]:
            if d.time_msc > hi:
                break
            out.append(d)
        return tuple(out)

    def handle(self, req: SimRequest, now: int) -> Result:
        """The result of one decoded request; :class:`Refusal` when it cannot be served."""
        match req:
            case Initialize() | Shutdown():
                return None
            case Symbols():
                return tuple(self.section.symbols)
            case SymbolInfoTick(symbol=symbol):
                ring = self.rings.get(symbol)
                return ring.last() if ring is not None else None
            case CopyTicksFrom(symbol=symbol, from_msc=lo, count=count):
                ring = self.rings.get(symbol)
                if ring is None:
                    raise Refusal(f"unknown symbol {symbol!r}")
                return tuple(ring.since(lo, count))
            case OrderSend(request=request):
                return self.order_send(request, now)
            case OrdersGet():
                return self.orders_get()
            case PositionsGet():
                return self.positions_get()
            case HistoryOrdersGet(from_msc=lo, to_msc=hi):
                return self.history_orders_get(lo, hi)
            case HistoryDealsGet(from_msc=lo, to_msc=hi):
                return self.history_deals_get(lo, hi)
        raise AssertionError(f"unhandled request {req!r}")


# --- the process -----------------------------------------------------------------------------

# The simulator's batches come this often. Each is one hop to the book's thread: at 1,000
# ticks/s the terminal took 16 % of a core at 1 ms, 11 % at 2 ms, 7 % at 5 ms. 2 ms is the
# EA's poll interval (``[[ea]] poll_ms``), so it reads no coarser a stream than it polls.
QUOTE_PERIOD_S = 0.002


def make_quotes(section: TerminalSection) -> Source:
    if section.quotes == "replay":
        return Replay(section.file, section.symbols, section.speed, section.loop)
    return Simulator(section.symbols, section.rate, section.seed, period_s=QUOTE_PERIOD_S)


class TerminalNode:
    """The terminal process: the ROUTER, the quote source, the book's worker thread."""

    def __init__(self, cfg: MeshConfig, *, stats_path: Path | None = None) -> None:
        self.section = cfg.terminal
        self.stats_path = stats_path
        self.journal = Journal(Path(self.section.data_dir) / JOURNAL_NAME)
        self.book = SimBook(self.section, self.journal)
        self.requests: Counter[str] = Counter()
        self.bad = 0
        self._clock = 0
        self._bad_log = RateLimitedLog(log, "terminal: bad request")
        # One thread owns the book: requests and tick batches reach it in the order queued.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="simterm-book")
        self.ctx = zmq.asyncio.Context()
        self.sock = open_socket(self.ctx, TERMINAL_SERVER, bind=self.section.bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """The reply frames to one request's frames (on the book's thread)."""
        try:
            req = decode_sim(frames)
            if isinstance(req, (Reply, ErrorReply)):
                raise RemoteProtocolError(f"{type(req).__name__} is not a request")
        except RemoteProtocolError as exc:
            self.bad += 1
            self._bad_log.warning("%s", exc.reason)
            return encode_sim(ErrorReply(request_id_of(frames), exc.reason))
        kind = REQUEST_KINDS[type(req)]
        self.requests[kind.name] += 1
        try:
            out = encode_sim(Reply(req.id, kind, self.book.handle(req, self._now())))
        except Refusal as exc:
            return encode_sim(ErrorReply(req.id, str(exc)))
        if len(out[1]) > TERMINAL_REPLY_BYTES:
            return encode_sim(ErrorReply(req.id, f"reply of {len(out[1])} bytes exceeds "
                                                 f"{TERMINAL_REPLY_BYTES}: ask for a "
                                                 f"narrower range"))
        return out

    async def _on_worker(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def serve(self) -> None:
        # One request at a time, in arrival order (the module docstring says why).
        while True:
            msg = await self.sock.recv_multipart()
            if len(msg) < 2:
                self.bad += 1
                continue
            reply = await self._on_worker(self.answer, msg[1:])
            await self.sock.send_multipart([msg[0], *reply])

    def _now(self) -> int:
        # The terminal's clock never steps back (an NTP step of the wall clock would, and a
        # reader of "ticks from t on" would miss some): read on the book's thread only.
        self._clock = max(self._clock, now_msc())
        return self._clock

    def take_ticks(self, batch: list[RawTick]) -> None:
        """A batch of the quote source, stamped with the terminal's clock (on the book's
        thread)."""
        now = self._now()
        self.book.on_ticks((s, Tick(now, bid, ask, last, vol)) for s, bid, ask, last, vol, _
                           in batch)

    async def quotes(self) -> None:
        source = make_quotes(self.section)
        try:
            async for batch in source.batches():
                await self._on_worker(self.take_ticks, batch)
        finally:
            source.close()
        # A replay without loop has ended: the terminal serves on, its last quotes standing
        # (a market closed), until it is stopped.
        log.info("terminal: the quote source has ended; serving on without new ticks")
        await asyncio.Future()

    async def run(self, stop: asyncio.Event) -> int:
        try:
            await self._on_worker(self.book.load)
            # The clock resumes at the newest time on record, so that the history stays in
            # time order (the reads search it by time) even if the wall clock stepped back
            # while the terminal was down.
            self._clock = self.book.latest_msc()
            log.info("terminal serving on %s (journal %s)", self.endpoint, self.journal.path)
            tasks = [asyncio.create_task(self.serve(), name="serve"),
                     asyncio.create_task(self.quotes(), name="quotes")]
            if self.stats_path is not None:
                tasks.append(asyncio.create_task(
                    stats_writer(self.stats_path, 0.5, self.collect), name="stats"))
            return await supervise_tasks("terminal", stop, tasks)
        finally:
            self.sock.close(linger=0)
            self._worker.shutdown(wait=True)
            self.journal.close()
            if self.stats_path is not None:
                write_json_atomic(self.stats_path, self.collect())
            self.ctx.term()

    def collect(self) -> dict[str, Any]:
        # Read on the loop while the worker writes: every value is an int or a dict copied in
        # one step under the GIL, so a snapshot may be a tick old, never torn.
        s = self.book.stats
        return {"node": "terminal", "endpoint": self.endpoint, "pid": os.getpid(),
                "requests": dict(self.requests), "bad": self.bad, "orders": s.orders,
                "deals": s.deals, "rejects": dict(s.rejects), "ticks": s.ticks,
                "active_orders": len(self.book.active), "positions": len(self.book.positions),
                "journal_records": self.journal.records, "next_ticket": self.book.next_ticket}


def run_terminal(cfg: MeshConfig, stats: Path | None) -> int:
    """``tickmesh sim-terminal``: run the terminal of ``[terminal]`` until SIGINT/SIGTERM."""
    return run_node(lambda stop: TerminalNode(cfg, stats_path=stats).run(stop),
                    sched=cfg.sched, kind="terminal", what="the simulated terminal")


__all__ = [
    "HISTORY_CAP",
    "Journal",
    "Refusal",
    "SimBook",
    "TerminalNode",
    "TickRing",
    "make_quotes",
    "run_terminal",
]
