"""The gateway's order desk: order updates from the order store's history stream, snapshots
and resume, and place/cancel/replace through the order client (docs/GATEWAY.md, 4-6).

    desk = OrderDesk(RedisOrderStore.from_config(cfg), OrderClient(desk_client_options(cfg)),
                     reader)
    await desk.start()
    remove = desk.listen(lambda seq, account, item: route(account, seq, item))
    snap = await desk.snapshot(["ACC-ALICE"])        # then items with seq > snap.seq
    missed = await desk.missed(["ACC-ALICE"], after=1234)   # None: reset and snapshot
    answer = await desk.place(["ACC-ALICE"], frame["order"])  # {"ok": ..., ...}
    await desk.close()

Rules:

* The history stream ``P:history`` is the one source of order updates for every gateway:
  one entry per changed record write, its position the ``orders`` stream's ``seq``. The
  desk tails it from the position it finds at :meth:`OrderDesk.start` (``XREAD BLOCK``),
  decodes each entry once and hands it to every listener, in stream order. A listener that
  raises is counted and logged; the tail goes on.
* The desk holds, in memory and as of its position, the open orders (loaded at start, then
  each write applied) and the last ``resume_limit`` writes with their items (the last
  ``resume_limit`` positions at start, read from Redis): resumes and snapshots read those,
  and Redis or the history store only for what is older. Memory: the open orders (the
  backend pair holds them too) and ``resume_limit`` writes.
* The order client's own report queue (``OrderClient.updates()``) is not read: the reports
  it gets are only those of this gateway's own orders, while the stream has every write of
  every gateway. That queue is bounded and drops its oldest (:func:`desk_client_options`
  keeps it small), so nothing grows because it is not read.
* After :meth:`OrderDesk.snapshot` or :meth:`OrderDesk.missed` returns, the next listener
  call is for the position just above what it covered (``snapshot.seq``, or the last
  position it read): a caller that starts routing to a session right after the ``await``,
  without another ``await`` in between, sends every item once.
* Requests never raise for a bad request or a refused order: the answer is a dict, ``ok``
  True with the ack's fields, or False with the reject's (``protocols.gateway.orders``).
  The same ``(account, client_order_id)`` sent again while the first is in flight (a client
  that resends on reconnect) joins the first and gets its answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

from bus.aio import cancel_and_wait
from bus.config import MeshConfig
from bus.logutil import RateLimitedLog
from bus.orders.client import OrderClient, OrderClientOptions
from bus.store.history_reader import HistoryReader
from bus.store.orders import HistoryEntry, RedisOrderStore
from protocols.errors import (
    BadRequest,
    NotYourAccount,
    OrderClientClosed,
    RemoteProtocolError,
    StoreUnavailable,
)
from protocols.gateway.orders import (
    OpenOrders,
    OrdersSnapshot,
    RecentWrites,
    SnapshotBuilder,
    Write,
    ack_json,
    client_order_id_of,
    decode_entry,
    parse_cancel,
    parse_place,
    parse_replace,
    reject_for,
)
from protocols.history.schema import END_OF_TIME, Columns, Table
from protocols.orders.codec import from_blob
from protocols.orders.messages import (
    CancelOrder,
    ExecutionReport,
    NewOrder,
    OrderAck,
    ReplaceOrder,
    idempotency,
)
from protocols.orders.record import Order

__all__ = ["OrderDesk", "OrdersSnapshot", "desk_client_options"]

log = logging.getLogger(__name__)

R = TypeVar("R", NewOrder, CancelOrder, ReplaceOrder)
Listener = Callable[[int, str, dict[str, Any]], None]

TAIL_PAGE = 1_000  # history entries the tail reads per round trip
TAIL_BLOCK_MS = 200  # an idle tail's XREAD BLOCK: well inside the store's socket timeout
READ_PAGE = 1_000  # entries a snapshot or a resume reads per round trip (it yields between)
RESET_CHECK_ROUNDS = 10  # idle tail reads between checks for a wiped store
RETRY_S = 0.1  # pause after the store did not answer, before the tail reads again
# Entries of the Redis stream one snapshot reads at most (without a history store, a
# snapshot reads the stream from its start: decoding costs ~12 us an entry).
SCAN_LIMIT = 50_000
UPDATES_KEPT = 16  # the order client's unread report queue (see the module rules)


def desk_client_options(cfg: MeshConfig, **overrides: Any) -> OrderClientOptions:
    """Order client options for a desk: the mesh's backend pair, a small report queue."""
    return OrderClientOptions(**{"endpoints": tuple(cfg.orders.clients),
                                 "updates_queue": UPDATES_KEPT, **overrides})


class OrderDesk:
    """One gateway's orders: the history tail, snapshots, resume and requests.

    ``store`` is the order store (its history stream and open orders), ``client`` the order
    client (started and closed by its owner, not the desk), ``reader`` the history store
    that snapshots read fills and terminal orders from (None: the Redis stream only).
    ``resume_limit`` is how far back :meth:`missed` goes (and the writes held in memory),
    ``recent`` the terminal orders and fills a snapshot holds, ``scan_limit`` the Redis
    entries a snapshot reads at most.
    """

    def __init__(self, store: RedisOrderStore, client: OrderClient,
                 reader: HistoryReader | None, *, resume_limit: int = 10_000,
                 recent: int = 200, scan_limit: int = SCAN_LIMIT) -> None:
        self.store = store
        self.client = client
        self.reader = reader
        self.resume_limit = resume_limit
        self.recent = recent
        self.scan_limit = scan_limit
        self._position = 0
        self._recent = RecentWrites(resume_limit)  # what missed() and snapshots read first
        self._open = OpenOrders()  # as of _position
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[tuple[str, str], tuple[NewOrder | CancelOrder | ReplaceOrder,
                                                    asyncio.Task[dict[str, Any]]]] = {}
        self._bad = RateLimitedLog(log, "order desk: undecodable history entry")
        self._failing = RateLimitedLog(log, "order desk: a listener raised")
        self._counts = dict.fromkeys(
            ("tailed", "holes", "bad_entries", "listener_errors", "read_errors", "resets",
             "snapshots", "snapshots_incomplete", "history_errors", "resumed",
             "resumed_from_redis", "resume_refused",
             "requests", "joined", "rejected"), 0)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the open orders and the last ``resume_limit`` writes, then tail the history
        stream from its end."""
        if self._task is not None:
            return
        await self._load()
        self._task = asyncio.create_task(self._tail(), name="order-desk-tail")

    async def close(self) -> None:
        """Stop the tail and the requests in flight (their callers get a TIMEOUT answer)."""
        tasks: list[asyncio.Task[Any]] = [t for _, t in self._inflight.values()]
        if self._task is not None:
            tasks.append(self._task)
        await cancel_and_wait(tasks, what="order desk")

    def listen(self, fn: Listener) -> Callable[[], None]:
        """Call ``fn(seq, account, item)`` for every order write from now on, in stream order
        (``item``: ``{"order": ..., "fills": [...]}``, shared by every listener: read it, do
        not change it). Returns the function that stops it."""
        self._listeners.append(fn)

        def remove() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)
        return remove

    @property
    def position(self) -> int:
        """The history position of the last entry tailed (0: none yet)."""
        return self._position

    def stats(self) -> dict[str, int]:
        """Counters: entries ``tailed``, ``holes`` (entries trimmed before the tail read
        them), ``bad_entries``, ``listener_errors``, ``read_errors`` (the store did not
        answer the tail), ``resets`` (the stream went back: a wiped store), ``snapshots``
        (``snapshots_incomplete``: fills missing; ``history_errors``: the history store did
        not answer), ``resumed`` (``resumed_from_redis``: older than the writes held) and
        ``resume_refused``, ``requests`` (``joined``: a resend that joined one in flight;
        ``rejected``: answered ``ok: False``); gauges ``position``, ``held`` (recent writes
        in memory), ``open_orders`` and ``in_flight``."""
        return {**self._counts, "position": self._position, "held": len(self._recent),
                "open_orders": len(self._open), "in_flight": len(self._inflight)}

    # -- the tail --------------------------------------------------------------------------

    async def _load(self) -> None:
        """The open orders as of the stream's head, and the writes of its last
        ``resume_limit`` positions (without calling the listeners)."""
        since = await self.store.history_position()
        opened = await self.store.open_orders()
        head = await self.store.history_position()
        low = max(0, head - self.resume_limit)
        entries, _ = await self._read(low, head)
        self._open.load(opened)
        self._recent.restart(low)
        # The records were read after ``since``: the writes above it are newer than some.
        for entry in entries:
            self._take(entry, since)
        self._position = head
        self._recent.passed(head)

    def _take(self, entry: HistoryEntry, since: int = -1) -> tuple[Write, dict[str, Any]] | None:
        """Entry read: the desk is at its position, holds it, and (above ``since``) the open
        orders follow it. The write and its item, or None if it does not decode."""
        self._position = entry.position
        self._recent.passed(entry.position)
        write = self._decode(entry)
        if write is None:
            return None
        item = write.item()
        self._recent.add(write, item)
        if entry.position > since:
            self._open.apply(write.order)
        return write, item

    async def _tail(self) -> None:
        idle = 0
        while True:
            try:
                entries = await self.store.history(self._position, TAIL_PAGE,
                                                   block_ms=TAIL_BLOCK_MS)
                if not entries:
                    idle += 1
                    if idle % RESET_CHECK_ROUNDS == 0:
                        await self._check_reset()
                    continue
            except StoreUnavailable as exc:
                # A Redis switch, or this process off the CPU past the socket timeout: the
                # read is positional, so reading again loses and doubles nothing.
                self._counts["read_errors"] += 1
                log.warning("order desk: the history stream did not answer, reading again: %s",
                            exc)
                await asyncio.sleep(RETRY_S)
                continue
            idle = 0
            if entries[0].position > self._position + 1:
                missing = entries[0].position - self._position - 1
                self._counts["holes"] += missing
                log.warning("order desk: history %d..%d was trimmed before the tail read it "
                            "(%d entries)", self._position + 1, entries[0].position - 1, missing)
            for entry in entries:
                self._counts["tailed"] += 1
                got = self._take(entry)
                if got is not None:
                    self._deliver(*got)

    async def _check_reset(self) -> None:
        head = await self.store.history_position()
        if head < self._position:
            self._counts["resets"] += 1
            log.warning("order desk: the history stream is at %d, the tail at %d: the store "
                        "was wiped; loading it again", head, self._position)
            await self._load()

    def _decode(self, entry: HistoryEntry) -> Write | None:
        try:
            return decode_entry(entry.position, entry.record, entry.entries)
        except RemoteProtocolError as exc:
            self._counts["bad_entries"] += 1
            self._bad.warning("%d: %s", entry.position, exc.reason)
            return None

    def _deliver(self, write: Write, item: dict[str, Any]) -> None:
        for fn in tuple(self._listeners):
            try:
                fn(write.position, write.account, item)
            except Exception as exc:  # one listener's bug must not stop the others' updates
                self._counts["listener_errors"] += 1
                self._failing.warning("%r at %d: %r", fn, write.position, exc)

    # -- reading the stream ------------------------------------------------------------------

    async def _read(self, after: int, upto: int) -> tuple[list[HistoryEntry], bool]:
        """The entries at positions (after, upto], in order, and whether the stream still
        held every one of those positions."""
        out: list[HistoryEntry] = []
        pos, whole = after, True
        while pos < upto:
            page = await self.store.history(pos, min(READ_PAGE, upto - pos))
            if not page:
                return out, False  # the stream ends below upto: wiped
            if page[0].position != pos + 1:
                whole = False  # trimmed: the cap drops the oldest entries only
            for entry in page:
                if entry.position > upto:
                    pos = upto
                    break
                pos = entry.position
                out.append(entry)
        return out, whole

    async def _writes(self, after: int, upto: int, accounts: Collection[str]
                      ) -> tuple[list[Write], bool]:
        """:meth:`_read`, decoded, of ``accounts`` only."""
        entries, whole = await self._read(after, upto)
        writes = (self._decode(e) for e in entries)
        return [w for w in writes if w is not None and w.account in accounts], whole

    async def _caught_up(self, after: int, accounts: Collection[str], limit: int
                         ) -> tuple[list[Write], bool] | None:
        """The writes of ``accounts`` from ``after`` up to the tail's position *when this
        returns* (it reads again while the tail moves on during a read), and whether the
        stream held them all; None past ``limit`` entries."""
        out: list[Write] = []
        whole, start = True, after
        while after < self._position:
            upto = self._position
            if upto - start > limit:
                return None
            writes, ok = await self._writes(after, upto, accounts)
            out += writes
            whole = whole and ok
            after = upto
        return out, whole

    # -- resume ----------------------------------------------------------------------------

    def held_since(self, after: int, accounts: Collection[str]
                   ) -> list[tuple[int, dict[str, Any]]] | None:
        """The items of ``accounts`` above ``after`` from the writes the desk holds, without
        I/O (what a gateway's flush sends); None when it does not hold them all (then
        :meth:`missed` reads Redis)."""
        if after >= self._position:
            return []
        if not self._recent.covers(after):
            return None
        return [(w.position, item) for w, item in self._recent.since(after, frozenset(accounts))]

    async def missed(self, accounts: Sequence[str], after: int
                     ) -> list[tuple[int, dict[str, Any]]] | None:
        """The items of ``accounts`` at positions (after, :attr:`position`], in order, once
        each; None when they cannot all be had: ``after`` below what the stream still holds
        (trimmed), above its head (the store was wiped, a sequence went back), or more than
        ``resume_limit`` entries to read. An ``after`` above this desk's position but not
        the store's (another gateway was ahead) gives [] and the caller drops the items it
        sent already. Served from the writes the desk holds (the last ``resume_limit``
        positions), from Redis when a hole made it hold fewer."""
        head = await self.store.history_position()
        if after > head:
            self._refuse("above the stream's head %d", head, after)
            return None
        if self._position - after > self.resume_limit:
            self._refuse("more than %d entries back", self.resume_limit, after)
            return None
        held = self.held_since(after, accounts)
        if held is not None:
            self._counts["resumed"] += 1
            return held
        mine = frozenset(accounts)
        first = await self.store.history_first()
        if first == 0 or after < first - 1:
            self._refuse("below the stream's first entry %d", first, after)
            return None
        got = await self._caught_up(after, mine, self.resume_limit)
        if got is None:
            self._refuse("more than %d entries back", self.resume_limit, after)
            return None
        writes, whole = got
        if not whole:
            self._refuse("trimmed while it was read (first held above %d)", after, after)
            return None
        self._counts["resumed_from_redis"] += 1
        return [(w.position, w.item()) for w in writes]

    def _refuse(self, why: str, value: int, after: int) -> None:
        self._counts["resume_refused"] += 1
        log.info("order desk: no resume from %d: " + why, after, value)

    # -- snapshots -------------------------------------------------------------------------

    async def snapshot(self, accounts: Sequence[str]) -> OrdersSnapshot:
        """The orders of ``accounts`` as of history position ``seq``, the tail's position
        when it returns: applying the items above ``seq`` after it gives the state of a
        client that saw every item.

        Where it comes from: the open orders the desk keeps (loaded at start, then every
        write applied: exact at its position); every order version and fill at a known
        position from the history store up to its watermarks (its ``src`` column is the
        position; every fill of the accounts, for positions from flat), then the writes
        above it: from Redis what the desk does not hold, then the last ``resume_limit``
        writes it holds. Without a reader (or when it does not answer) the fills are those
        the capped stream still holds, at most ``scan_limit`` entries back: ``complete``
        says whether every fill of (0, seq] was there. A fill counts once whatever source
        had it (order id, log position).

        Cost: every order version and fill of these accounts the history store holds per
        call (positions need every fill from flat), and the Redis entries below what the
        desk holds.
        """
        self._counts["snapshots"] += 1
        mine = frozenset(accounts)
        builder = SnapshotBuilder(mine, self.recent)
        marks = await self._recorded(builder, mine) if self.reader is not None else None
        # Fills are whole in the history store up to its executions watermark, so the
        # writes are read from the lower watermark on (orders too); without one, from 0.
        low = min(self._position, *marks) if marks is not None else 0
        if self._position - low > self.scan_limit:
            low, builder.complete = self._position - self.scan_limit, False
        while low < self._recent.start:  # what the desk does not hold, from Redis
            upto = self._recent.start
            writes, whole = await self._writes(low, upto, mine)
            builder.complete = builder.complete and whole
            for w in writes:
                builder.add_write(w)
            low = upto
        # No await from here: the writes held up to the tail's position, the open orders
        # as of it.
        for w, _ in self._recent.since(low, mine):
            builder.add_write(w)
        for order in self._open.of(mine):
            builder.add_current(order, self._position)
        snapshot = builder.build(self._position)
        if not snapshot.complete:
            self._counts["snapshots_incomplete"] += 1
        return snapshot

    async def _recorded(self, builder: SnapshotBuilder, accounts: frozenset[str]
                        ) -> tuple[int, int] | None:
        """Add what the history store holds of ``accounts`` (fills, and each order's last
        version) up to its watermarks; those watermarks (executions, orders), or None when
        it did not answer."""
        assert self.reader is not None
        try:
            w_exec = (await self.reader.watermarks(Table.EXECUTIONS)).get("", 0)
            w_orders = (await self.reader.watermarks(Table.ORDERS)).get("", 0)
            for account in sorted(accounts):
                bad = _add_fills(builder, await self.reader.executions(account, 0,
                                                                       END_OF_TIME), w_exec)
                bad += _add_versions(builder, await self.reader.orders(account, 0,
                                                                       END_OF_TIME), w_orders)
                if bad:
                    self._counts["bad_entries"] += bad
                    self._bad.warning("%d history rows of %s", bad, account)
        except StoreUnavailable as exc:
            self._counts["history_errors"] += 1
            log.warning("order desk: the history store did not answer; the snapshot reads "
                        "the Redis stream only: %s", exc)
            return None
        return w_exec, w_orders

    # -- requests ----------------------------------------------------------------------------

    async def place(self, accounts: Collection[str], obj: object) -> dict[str, Any]:
        """Place the order of a ``place`` frame's ``order`` object for a session owning
        ``accounts``: ``{"ok": True, client_order_id, order_id, state}`` or ``{"ok": False,
        client_order_id, reason, message, retryable}``."""
        return await self._request(obj, lambda: parse_place(obj, accounts, time.time_ns()),
                                   self.client.place)

    async def cancel(self, accounts: Collection[str], obj: object) -> dict[str, Any]:
        """Cancel as a ``cancel`` frame asks; answers as :meth:`place`."""
        return await self._request(obj, lambda: parse_cancel(obj, accounts), self.client.cancel)

    async def replace(self, accounts: Collection[str], obj: object) -> dict[str, Any]:
        """Replace as a ``replace`` frame asks; answers as :meth:`place`."""
        return await self._request(obj, lambda: parse_replace(obj, accounts),
                                   self.client.replace)

    async def _request(self, obj: object, parse: Callable[[], R],
                       send: Callable[[R], Awaitable[OrderAck]]) -> dict[str, Any]:
        self._counts["requests"] += 1
        try:
            req = parse()
        except (BadRequest, NotYourAccount) as exc:
            return self._answer_error(client_order_id_of(obj), exc)
        key = (req.account, req.client_order_id)
        joined = self._inflight.get(key)
        if joined is not None and idempotency(joined[0], req) == "duplicate":
            self._counts["joined"] += 1
            return await asyncio.shield(joined[1])
        task = asyncio.ensure_future(self._send(send, req))
        if joined is None:
            self._inflight[key] = (req, task)
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _send(self, send: Callable[[R], Awaitable[OrderAck]], req: R) -> dict[str, Any]:
        try:
            ack = await send(req)
        except asyncio.CancelledError:  # the desk closes: "send it again" to every caller
            return self._answer_error(req.client_order_id,
                                      OrderClientClosed(req.client_order_id))
        except Exception as exc:
            if reject_for(exc) is None:
                raise
            return self._answer_error(req.client_order_id, exc)
        return {"ok": True, **ack_json(ack)}

    def _answer_error(self, client_order_id: str, exc: Exception) -> dict[str, Any]:
        self._counts["rejected"] += 1
        reason = reject_for(exc)
        assert reason is not None, exc
        return {"ok": False, "client_order_id": client_order_id, **reason}


def _add_fills(builder: SnapshotBuilder, cols: Columns, mark: int) -> int:
    """The fills among execution rows at positions up to ``mark`` (decoded from their
    blobs: the report as the stream carried it); the rows that did not decode."""
    c = cols.data
    bad = 0
    for i, src in enumerate(c["src"]):
        if src <= mark and c["last_quantity"][i] > 0:
            report = _message(c["blob"][i])
            if isinstance(report, ExecutionReport):
                builder.add_fill(src, report)
            else:
                bad += 1
    return bad


def _add_versions(builder: SnapshotBuilder, cols: Columns, mark: int) -> int:
    """The last version (highest position up to ``mark``) of each order among order rows;
    the rows that did not decode."""
    c = cols.data
    last: dict[str, int] = {}
    for i, (oid, src) in enumerate(zip(c["order_id"], c["src"], strict=True)):
        if src <= mark and (oid not in last or src > c["src"][last[oid]]):
            last[oid] = i
    bad = 0
    for i in last.values():
        order = _message(c["blob"][i])
        if isinstance(order, Order):
            builder.add_version(c["src"][i], order)
        else:
            bad += 1
    return bad


def _message(blob: bytes) -> object:
    try:
        return from_blob(blob)
    except RemoteProtocolError:
        return None
