"""Replication inside the backend pair: what keeps an acknowledged order safe without Redis in
the acknowledgement (sans-I/O; the rules of docs/ORDERS.md "Replication").

* The active node gives every batch of order records it writes a sequence number ``seq``
  within its *term* (a random token per active period) and keeps it in its :class:`Backlog`
  until the store has it. It replicates the batch to the passive node, which keeps it in its
  own backlog and confirms it; confirmed, the batch survives the loss of either process, and
  the active acknowledges. The store (Redis) gets the same batches write-behind, in order;
  every batch carries how far that has gone (``flushed``), and the passive drops what the
  store has. When the passive node is away (no confirmation within the peer timeout, or a
  refusal), the active waits for the write-behind of the batch instead: today's fenced,
  ``WAIT``-confirmed store write before acknowledging.
* The passive node takes a batch only while it is PASSIVE (never while taking over or
  active: it then decides on its own data), only from an epoch not below the highest it knows
  (:class:`~protocols.orders.pair.RefuseReason` ``STALE_EPOCH``: the sender is deposed and
  steps down), and only as the next batch of the term it holds, or as a ``reset`` that starts
  a term (after a gap, the active sends everything the store may lack as one reset batch).
* Idempotency without the store: every node keeps a :class:`ClientIndex` of the client order
  ids of the orders written within a window (default 120 s), filled by its own writes, by
  replicated batches, and from the store's recent set (``P:recent``) at start, after a reset
  and at takeover. A client order id is unique within the window; past it, a reused id names
  a new order. While the index does not cover the whole window (a node just started), a miss
  is checked in the store.
* A node that takes over writes, under its new epoch and before it serves, every record of its
  backlog that is newer than the store's (:func:`newer`: later in the executor's log, or
  written later), then reloads the open orders from the store.

Times: ``now`` here is wall-clock seconds (``time.time()``): the recent set's scores are
compared across the two nodes' clocks, within :data:`CLOCK_MARGIN_S`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from protocols.orders.codec import EncodedEntry, EncodedOrder
from protocols.orders.pair import RefuseReason, ReplicaAck, ReplicaBatch, ReplicaRefused
from protocols.orders.record import Order

WINDOW_S = 120.0  # client order ids are de-duplicated without the store this far back
MAX_KEYS = 500_000  # ... and at most this many (about 200 bytes each)
MAX_BACKLOG = 20_000  # records a node holds that the store may lack
CLOCK_MARGIN_S = 1.0  # wall clocks of the pair's two hosts agree within this

Key = tuple[str, str]  # (account, client order id)


def client_key(order: Order) -> Key:
    return order.order.account, order.order.client_order_id


Held = EncodedOrder  # a record as a backlog holds it: encoded once, decoded only when read


def newer(record: Order, stored: Order | None) -> bool:
    """Whether ``record`` is a later version of its order than ``stored`` (None: the store has
    none): further in the executor's log, or at the same position written later (a record
    changes between log entries only from NEW to ACCEPTED to ROUTED)."""
    if stored is None:
        return True
    return (record.exec_seq, record.updated_ns) > (stored.exec_seq, stored.updated_ns)


class ClientIndex:
    """The order id of every client order id used within the last ``window_s``, by (account,
    client order id), in the order they were added; ``known_from``: every id used at or after
    this time is here (an id evicted for the count bound, or a gap, moves it on)."""

    def __init__(self, window_s: float = WINDOW_S, max_keys: int = MAX_KEYS,
                 known_from: float = float("inf")) -> None:
        if window_s <= 0 or max_keys < 1:
            raise ValueError("need window_s > 0 and max_keys >= 1")
        self.window_s = window_s
        self.max_keys = max_keys
        self.known_from = known_from  # inf: nothing known yet
        self._keys: OrderedDict[Key, tuple[str, float]] = OrderedDict()
        # order id -> its key: an order id written under another client order id is refused
        # (defence in depth, as the store's script does).
        self._owners: dict[str, Key] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def key_of(self, order_id: str) -> Key | None:
        return self._owners.get(order_id)

    def get(self, key: Key, now: float) -> str | None:
        self._expire(now)
        hit = self._keys.get(key)
        return None if hit is None else hit[0]

    def add(self, key: Key, order_id: str, now: float) -> None:
        """``key`` names ``order_id`` from ``now`` on (a later use of the key, past the window,
        names a new order: it moves to the end)."""
        old = self._keys.get(key)
        if old is not None and self._owners.get(old[0]) == key:
            del self._owners[old[0]]
        self._keys[key] = (order_id, now)
        self._keys.move_to_end(key)
        self._owners[order_id] = key
        self._expire(now)

    def load(self, entries: Iterable[tuple[Key, str, float]], since: float) -> None:
        """Merge what the store's recent set holds from ``since`` on (``(key, order id,
        when)``); the index then covers ``since`` onwards if it covered the time the load
        began (``known_from`` <= the newest loaded entry, or the load was started after)."""
        merged = sorted(((at, key, oid) for key, oid, at in entries if key not in self._keys),
                        key=lambda e: e[0])
        if merged:
            rest = self._keys
            self._keys = OrderedDict((key, (oid, at)) for at, key, oid in merged)
            self._keys.update(rest)
            for _at, key, oid in merged:
                self._owners.setdefault(oid, key)
        self.known_from = min(self.known_from, since)

    def gap(self, now: float) -> None:
        """Ids used before ``now`` may be missing (the peer's batches were lost)."""
        self.known_from = max(self.known_from, now) if self.known_from != float("inf") else now

    def complete(self, now: float) -> bool:
        """Whether a miss proves an id unused within the window."""
        return self.known_from <= now - self.window_s

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        keys = self._keys
        while keys:
            key, (oid, at) = next(iter(keys.items()))
            if at >= horizon and len(keys) <= self.max_keys:
                break
            del keys[key]
            if self._owners.get(oid) == key:
                del self._owners[oid]
            if at >= horizon:  # evicted for the count: ids from before `at` may be missing
                self.known_from = max(self.known_from, at)


class Backlog:
    """Batches of records the store may not have yet, by seq, in order; the newest record of
    each order in them, and the log entries they hold per order."""

    def __init__(self) -> None:
        self._batches: deque[tuple[int, tuple[Held, ...]]] = deque()
        self._latest: dict[str, tuple[int, Held]] = {}
        self._entries: dict[str, deque[tuple[int, EncodedEntry]]] = {}
        self.records = 0

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, seq: int, records: Sequence[Held]) -> None:
        if self._batches and seq <= self._batches[-1][0]:
            raise ValueError(f"batch {seq} after {self._batches[-1][0]}")
        self._batches.append((seq, tuple(records)))
        self.records += len(records)
        for record in records:
            self._latest[record.order_id] = (seq, record)
            if record.entries:
                held = self._entries.setdefault(record.order_id, deque())
                while held and held[-1][1].seq >= record.entries[0].seq:
                    held.pop()  # the same positions written again: one copy, the later
                held.extend((seq, entry) for entry in record.entries)

    def trim(self, flushed: int) -> None:
        """Drop the batches up to ``flushed``: the store has them."""
        while self._batches and self._batches[0][0] <= flushed:
            seq, records = self._batches.popleft()
            self.records -= len(records)
            for record in records:
                if self._latest.get(record.order_id, (0, None))[0] == seq:
                    del self._latest[record.order_id]
                held = self._entries.get(record.order_id)
                while held and held[0][0] <= seq:
                    held.popleft()
                if held is not None and not held:
                    del self._entries[record.order_id]

    def get(self, order_id: str) -> tuple[int, Held] | None:
        """The newest record of ``order_id`` held, with its batch's seq."""
        return self._latest.get(order_id)

    def last(self) -> tuple[int, tuple[Held, ...]]:
        return self._batches[-1]

    def batches(self, after: int = 0) -> Iterator[tuple[int, tuple[Held, ...]]]:
        """The batches after seq ``after``, oldest first (lazily: a caller stops early)."""
        return ((seq, records) for seq, records in self._batches if seq > after)

    def entries(self, order_id: str) -> list[EncodedEntry]:
        """The log entries of ``order_id`` held, in log order (consecutive positions)."""
        return [entry for _seq, entry in self._entries.get(order_id, ())]

    def newest(self) -> list[Held]:
        """The newest record of each order held, in the order they were written, with every
        log entry held of its order (what the store lacks of the log, if it lacks the
        record)."""
        return [replace(record, entries=tuple(self.entries(record.order_id)))
                if record.order_id in self._entries else record
                for _seq, record in sorted(self._latest.values(), key=lambda e: e[0])]

    def clear(self) -> None:
        self._batches.clear()
        self._latest.clear()
        self._entries.clear()
        self.records = 0


@dataclass(slots=True)
class Replica:
    """The passive side: the term it holds, how far, and the records the store may lack."""

    max_records: int = MAX_BACKLOG
    term: str | None = None
    seq: int = 0
    last_batch: float | None = None  # when the last batch in sequence arrived (wall clock)
    backlog: Backlog = field(default_factory=Backlog)

    def on_batch(self, batch: ReplicaBatch, *, passive: bool, epoch: int, now: float,
                 index: ClientIndex) -> ReplicaAck | ReplicaRefused:
        """Take ``batch`` (and add its client order ids to ``index``) or say why not.
        ``passive``/``epoch``: this node's pair state and the highest epoch it knows."""
        def refuse(reason: RefuseReason) -> ReplicaRefused:
            return ReplicaRefused(epoch, batch.term, batch.seq, reason)

        if not passive:
            return refuse(RefuseReason.NOT_PASSIVE)
        if batch.epoch < epoch:
            return refuse(RefuseReason.STALE_EPOCH)
        if not batch.reset and (batch.term != self.term or batch.seq != self.seq + 1):
            return refuse(RefuseReason.OUT_OF_SYNC)
        held = 0 if batch.reset else self.backlog.records
        if held + len(batch.records) > self.max_records:
            return refuse(RefuseReason.FULL)
        if batch.reset:
            self.backlog.clear()
            self.term = batch.term
            index.gap(now)  # what the active wrote to the store alone before: load it
        self.backlog.add(batch.seq, batch.records)
        self.backlog.trim(batch.flushed)
        self.seq = batch.seq
        self.last_batch = now
        for record in batch.records:
            index.add(record.key, record.order_id, now)
        return ReplicaAck(batch.epoch, batch.term, batch.seq)

    def release(self) -> None:
        """Taken over: this node holds nothing of any term any more (what it held is in the
        store now: ``backlog.newest()`` and ``last_batch`` were read before)."""
        self.backlog.clear()
        self.term, self.seq, self.last_batch = None, 0, None


class Replicator:
    """The active side of one term: batch numbers, the backlog, what the passive confirmed."""

    def __init__(self, term: str, epoch: int) -> None:
        self.term = term
        self.epoch = epoch
        self.seq = 0  # the last batch numbered
        self.flushed = 0  # every batch up to here is in the store
        self.acked = 0  # ... and up to here the passive holds (while in sync)
        self.in_sync = False  # the passive holds every batch of the term the store lacks
        self.synced_from = 0  # the reset that began the current sync
        self.backlog = Backlog()

    def append(self, records: Sequence[Held]) -> int:
        """Number a batch and keep it until the store has it; its seq."""
        self.seq += 1
        self.backlog.add(self.seq, records)
        return self.seq

    def batch(self, seq: int, *, peer_ready: bool) -> ReplicaBatch | None:
        """What to send the passive node for batch ``seq`` (just appended): the batch while in
        sync; out of sync with a peer ready, one reset carrying every batch the store lacks up
        to ``seq``; None when there is no peer to hold it (wait for the store)."""
        last, records = self.backlog.last()
        if seq != last:
            raise ValueError(f"batch {seq} is not the last appended ({last})")
        if self.in_sync:
            return ReplicaBatch(self.epoch, self.term, seq, min(self.flushed, seq - 1), records)
        if not peer_ready:
            return None
        self.in_sync = True  # until refused or unconfirmed: later batches follow the reset
        self.synced_from = seq
        everything = tuple(r for _seq, held in self.backlog.batches(self.flushed) for r in held)
        return ReplicaBatch(self.epoch, self.term, seq, min(self.flushed, seq - 1), everything,
                            reset=True)

    def on_ack(self, ack: ReplicaAck) -> bool:
        """A confirmation of this term: True if it is news. One from before the current
        sync's reset is not (the passive may have dropped what it confirmed then)."""
        if (ack.term != self.term or not self.in_sync or ack.seq <= self.acked
                or ack.seq < self.synced_from):
            return False
        self.acked = min(ack.seq, self.seq)
        return True

    def lost(self) -> None:
        """The passive did not confirm (or refused): it holds nothing we can count on."""
        self.in_sync = False
        self.acked = 0

    def durable(self, seq: int) -> bool:
        """Whether batch ``seq`` survives the loss of either node: in the store, or held by
        the passive node (confirmed while in sync)."""
        return seq <= self.flushed or (self.in_sync and seq <= self.acked)

    def to_flush(self, max_records: int) -> tuple[int, list[Held]]:
        """The next batches for the store (up to ``max_records`` records, whole batches, at
        least one): the last seq among them and their records; (flushed, []) if none."""
        last, out = self.flushed, list[Held]()
        for seq, records in self.backlog.batches(self.flushed):
            if out and len(out) + len(records) > max_records:
                break
            out.extend(records)
            last = seq
        return last, out

    def flushed_to(self, seq: int) -> None:
        self.flushed = max(self.flushed, seq)
        self.backlog.trim(self.flushed)


__all__ = [
    "CLOCK_MARGIN_S",
    "MAX_BACKLOG",
    "MAX_KEYS",
    "WINDOW_S",
    "Backlog",
    "ClientIndex",
    "Held",
    "Replica",
    "Replicator",
    "client_key",
    "newer",
]
