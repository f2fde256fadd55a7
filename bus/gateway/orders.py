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

from bus.aio import cancel_and_wait, wait_event
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
    OrdersSnapshot,
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
CATCH_UP_S = 5.0  # a snapshot waits this long at most for the tail to reach its position
SCAN_LIMIT = 200_000  # entries of the Redis stream one snapshot reads at most
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
    ``resume_limit`` bounds the entries :meth:`missed` scans, ``recent`` the terminal orders
    and fills a snapshot holds per call.
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
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._tailed = asyncio.Event()  # set after each page the tail delivered
        self._inflight: dict[tuple[str, str], tuple[NewOrder | CancelOrder | ReplaceOrder,
                                                    asyncio.Task[dict[str, Any]]]] = {}
        self._bad = RateLimitedLog(log, "order desk: undecodable history entry")
        self._failing = RateLimitedLog(log, "order desk: a listener raised")
        self._counts = dict.fromkeys(
            ("tailed", "holes", "bad_entries", "listener_errors", "read_errors", "resets",
             "snapshots", "snapshots_incomplete", "history_errors", "resumed", "resume_refused",
             "requests", "joined", "rejected"), 0)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Tail the history stream from its current end."""
        if self._task is not None:
            return
        self._position = await self.store.history_position()
        self._task = asyncio.create_task(self._tail(), name="order-desk-tail")

    async def close(self) -> None:
        """Stop the tail and the requests in flight (their callers get a TIMEOUT answer)."""
        tasks: list[asyncio.Task[Any]] = [t for _, t in self._inflight.values()]
        if self._task is not None:
            tasks.append(self._task)
        await cancel_and_wait(tasks, what="order desk")
        self._tailed.set()

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
        not answer), ``resumed`` and ``resume_refused``, ``requests`` (``joined``: a resend
        that joined one in flight; ``rejected``: answered ``ok: False``); gauges ``position``
        and ``in_flight``."""
        return {**self._counts, "position": self._position, "in_flight": len(self._inflight)}

    # -- the tail --------------------------------------------------------------------------

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
                self._position = entry.position
                self._counts["tailed"] += 1
                write = self._decode(entry)
                if write is not None:
                    self._deliver(write)
            self._tailed.set()

    async def _check_reset(self) -> None:
        head = await self.store.history_position()
        if head < self._position:
            self._counts["resets"] += 1
            log.warning("order desk: the history stream is at %d, the tail at %d: the store "
                        "was wiped; tailing from %d", head, self._position, head)
            self._position = head

    def _decode(self, entry: HistoryEntry) -> Write | None:
        try:
            return decode_entry(entry.position, entry.record, entry.entries)
        except RemoteProtocolError as exc:
            self._counts["bad_entries"] += 1
            self._bad.warning("%d: %s", entry.position, exc.reason)
            return None

    def _deliver(self, write: Write) -> None:
        item = write.item()
        for fn in tuple(self._listeners):
            try:
                fn(write.position, write.account, item)
            except Exception as exc:  # one listener's bug must not stop the others' updates
                self._counts["listener_errors"] += 1
                self._failing.warning("%r at %d: %r", fn, write.position, exc)

    async def _until_tailed(self, position: int) -> None:
        """Wait (up to CATCH_UP_S) until the tail has passed ``position``."""
        deadline = asyncio.get_running_loop().time() + CATCH_UP_S
        while (self._position < position and self._task is not None
               and not self._task.done()):
            self._tailed.clear()
            if not await wait_event(self._tailed,
                                    deadline - asyncio.get_running_loop().time()):
                return

    # -- reading the stream ------------------------------------------------------------------

    async def _writes(self, after: int, upto: int, accounts: Collection[str]
                      ) -> tuple[list[Write], bool]:
        """The writes of ``accounts`` at positions (after, upto], in order, and whether the
        stream still held every one of those positions."""
        out: list[Write] = []
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
                write = self._decode(entry)
                if write is not None and write.account in accounts:
                    out.append(write)
        return out, whole

    async def _caught_up(self, after: int, accounts: Collection[str],
                         limit: int | None = None) -> tuple[list[Write], bool, int] | None:
        """The writes of ``accounts`` from ``after`` up to the tail's position *when this
        returns* (it reads again while the tail moves on during a read): (writes, whole,
        position); None past ``limit`` entries in all."""
        out: list[Write] = []
        whole, start = True, after
        while after < self._position:
            upto = self._position
            if limit is not None and upto - start > limit:
                return None
            writes, ok = await self._writes(after, upto, accounts)
            out += writes
            whole = whole and ok
            after = upto
        return out, whole, after

    # -- resume ----------------------------------------------------------------------------

    async def missed(self, accounts: Sequence[str], after: int
                     ) -> list[tuple[int, dict[str, Any]]] | None:
        """The items of ``accounts`` at positions (after, :attr:`position`], in order, once
        each; None when they cannot all be had: ``after`` below what the stream still holds
        (trimmed), above its head (the store was wiped, a sequence went back), or more than
        ``resume_limit`` entries to read. An ``after`` above this desk's position but not
        the store's (another gateway was ahead) gives [] and the caller drops the items it
        sent already."""
        head = await self.store.history_position()
        if after > head:
            self._refuse("above the stream's head %d", head, after)
            return None
        if self._position - after > self.resume_limit:
            self._refuse("more than %d entries back", self.resume_limit, after)
            return None
        if after < self._position:
            first = await self.store.history_first()
            if first == 0 or after < first - 1:
                self._refuse("below the stream's first entry %d", first, after)
                return None
        got = await self._caught_up(after, frozenset(accounts), self.resume_limit)
        if got is None:
            self._refuse("more than %d entries back", self.resume_limit, after)
            return None
        writes, whole, _ = got
        if not whole:
            self._refuse("trimmed while it was read (first held above %d)", after, after)
            return None
        self._counts["resumed"] += 1
        return [(w.position, w.item()) for w in writes]

    def _refuse(self, why: str, value: int, after: int) -> None:
        self._counts["resume_refused"] += 1
        log.info("order desk: no resume from %d: " + why, after, value)

    # -- snapshots -------------------------------------------------------------------------

    async def snapshot(self, accounts: Sequence[str]) -> OrdersSnapshot:
        """The orders of ``accounts`` as of a history position ``seq`` exactly (the tail's
        position when it returns; above it if the tail lags by more than CATCH_UP_S, and
        the caller drops the items at or below ``seq``): applying the items above ``seq``
        after it gives the state of a client that saw every item.

        Where it comes from: open orders from the store's records (read now, each taken as
        of the start unless a later write of it is read below), and every order version
        and fill at a known history position: from the history store up to its watermark
        (its ``src`` column is the position; every fill of the accounts, for positions from
        flat), then the Redis stream above it, up to ``seq``. Without a reader (or when it
        does not answer) the fills are those the capped stream still holds, and at most
        ``scan_limit`` entries back: ``complete`` says whether every fill of (0, seq] was
        there. A fill counts once whatever source had it (order id, log position).

        Cost: every open order of the store, and every order version and fill of these
        accounts the history store holds (positions need every fill from flat), per call.
        """
        self._counts["snapshots"] += 1
        mine = frozenset(accounts)
        builder = SnapshotBuilder(mine, self.recent)
        since = await self.store.history_position()
        for order in await self.store.open_orders():
            builder.add_current(order, since)
        marks = await self._recorded(builder, mine) if self.reader is not None else None
        head = await self.store.history_position()
        await self._until_tailed(head)
        head = max(head, self._position)
        # Fills are whole from the history store up to its executions watermark, so the
        # stream is read from the lower watermark on (orders too); without one, from 0.
        lo = min(head, *marks) if marks is not None else 0
        if head - lo > self.scan_limit:
            lo, builder.complete = head - self.scan_limit, False
        writes, whole = await self._writes(lo, head, mine)
        got = await self._caught_up(head, mine)  # what the tail passed meanwhile
        assert got is not None  # no limit
        more, caught, head = got
        builder.complete = builder.complete and whole and caught
        for w in (*writes, *more):
            builder.add_write(w)
        snapshot = builder.build(head)
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
                _add_fills(builder, await self.reader.executions(account, 0, END_OF_TIME),
                           w_exec)
                _add_versions(builder, await self.reader.orders(account, 0, END_OF_TIME),
                              w_orders)
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


def _add_fills(builder: SnapshotBuilder, cols: Columns, mark: int) -> None:
    """The fills among execution rows at positions up to ``mark`` (decoded from their
    blobs: the report as the stream carried it)."""
    c = cols.data
    for i, src in enumerate(c["src"]):
        if src <= mark and c["last_quantity"][i] > 0:
            report = from_blob(c["blob"][i])
            if isinstance(report, ExecutionReport):
                builder.add_fill(src, report)


def _add_versions(builder: SnapshotBuilder, cols: Columns, mark: int) -> None:
    """The last version (highest position up to ``mark``) of each order among order rows."""
    c = cols.data
    last: dict[str, int] = {}
    for i, (oid, src) in enumerate(zip(c["order_id"], c["src"], strict=True)):
        if src <= mark and (oid not in last or src > c["src"][last[oid]]):
            last[oid] = i
    for i in last.values():
        order = from_blob(c["blob"][i])
        if isinstance(order, Order):
            builder.add_version(c["src"][i], order)
