"""The order store of a backend pair node: acknowledged once the pair holds it, Redis behind.

:class:`PairStore` is an :class:`~bus.store.orders.OrderStore` over the fenced Redis store. While
its node is active (:meth:`activate`), a batch of records it writes is numbered, kept in memory,
replicated to the passive node over the pair's own link and answered once the passive node
confirms it (or, with no passive node to hold it, once the write-behind has put it in Redis,
fenced and ``WAIT``-confirmed: today's write). Redis gets every batch write-behind, in order,
by one task. While its node is passive, the store holds what the active node replicates
(:meth:`serve_replica`) and gives it back at takeover, written to Redis under the new epoch
where it is newer than Redis's, before the node serves. The rules are
``protocols.orders.replication``'s; this module adds the sockets, the timers and Redis.

Reads (:meth:`get`, :meth:`by_client_id`) see the records Redis does not have yet, and answer
from memory only what is durable: a record whose batch is neither confirmed nor in Redis is
waited for (its order is not acknowledged yet either). The executor's log travels with the
records: the entries a record applied are replicated and written behind with it
(:meth:`write_batch` ``entries``), so a decision of the executor is final when the pair holds
it, as an acknowledgement is; :meth:`executions` reads Redis's log and what this term holds
after it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import zmq
import zmq.asyncio

from bus.aio import wait_event
from bus.logutil import RateLimitedLog
from bus.sockets import REPLICA_CLIENT, REPLICA_SERVER, Sender, open_socket, recv_batch
from bus.store.orders import RedisOrderStore, WriteOutcome, raise_for, with_entries
from protocols.backoff import Backoff
from protocols.errors import Fenced, RemoteProtocolError, StoreError
from protocols.orders.codec import EncodedOrder
from protocols.orders.messages import ExecutionReport
from protocols.orders.pair import (
    RefuseReason,
    ReplicaAck,
    ReplicaBatch,
    ReplicaRefused,
    decode_pair,
    encode_pair,
)
from protocols.orders.record import Order
from protocols.orders.replication import (
    CLOCK_MARGIN_S,
    MAX_BACKLOG,
    WINDOW_S,
    ClientIndex,
    Replica,
    Replicator,
    client_key,
    newer,
)

log = logging.getLogger(__name__)

FLUSH_RECORDS = 512  # records per write-behind script call
FLUSH_DELAY_S = 0.005  # the write-behind gathers this long when no acknowledgement waits for it
REPLICA_DRAIN = 256  # messages of the pair's link taken per wake-up (batches, confirmations)
OPEN_READS = 5  # reads of the open orders while the write-behind keeps moving on
# How long a batch waits for its confirmation while the peer's heartbeats still say PASSIVE
# (one peer timeout without them, and it gives up at once).
MAX_ACK_WAIT_S = 0.5
RESYNC_LOOK_S = 0.1  # a batch waiting for Redis looks at the peer this often


class PairView(Protocol):
    """What the store needs to know of its node's pair state."""

    def pair_state(self) -> tuple[bool, int]:
        """(passive now, the highest epoch known)."""
        ...

    def peer_ready(self) -> bool:
        """Whether the peer is alive and passive (it can hold a batch)."""
        ...


@dataclass(slots=True)
class PairStoreStats:
    replicated: int = 0  # batches acknowledged on the passive node's confirmation
    written_through: int = 0  # batches acknowledged once in Redis (no passive node to hold them)
    resets: int = 0  # reset batches sent (the passive node re-synced)
    unconfirmed: int = 0  # batches the passive node did not confirm in time
    resynced: int = 0  # ... then confirmed by the empty batch sent after them
    refused: int = 0  # batches it refused
    flushes: int = 0  # write-behind script calls
    flush_errors: int = 0
    held: int = 0  # (passive) batches taken
    refusals: int = 0  # (passive) batches refused
    store_checks: int = 0  # client order ids looked up in Redis (the index did not cover them)
    index_loads: int = 0
    reconciled: int = 0  # records written at takeover: newer in memory than in Redis


class PairStore:
    """An order store acknowledged by the pair, with Redis written behind."""

    def __init__(self, backing: RedisOrderStore, ctx: zmq.asyncio.Context, node: PairView, *,
                 bind: str, peer: str, ack_timeout_s: float, window_s: float = WINDOW_S,
                 max_backlog: int = MAX_BACKLOG,
                 on_fenced: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.backing = backing
        self.node = node
        self.ack_timeout_s = ack_timeout_s
        self.max_backlog = max_backlog
        self.on_fenced = on_fenced
        self.index = ClientIndex(window_s)
        # The passive's bound leaves the active room for the records of reports applied while its
        # own backlog is full (only new orders are refused then).
        self.replica = Replica(2 * max_backlog)
        self.replicator: Replicator | None = None  # while active
        self.stats = PairStoreStats()
        self.server = open_socket(ctx, REPLICA_SERVER, bind=bind)
        self.client = open_socket(ctx, REPLICA_CLIENT, connect=(peer,))
        # Batches and confirmations go out without the asyncio layer (no Future per message).
        self._to_peer = Sender(self.client)
        self._to_active = Sender(self.server)
        self._acks: dict[int, asyncio.Future[bool]] = {}
        self._ack_timers: dict[int, asyncio.TimerHandle] = {}
        self._resync_after = 0.0  # loop time before which no re-sync is tried
        self._flush_wanted = asyncio.Event()
        self._progress = asyncio.Event()  # replaced after every write-behind attempt
        self._flush_error: StoreError | None = None
        self._catch_up = asyncio.Event()  # the index lacks part of the window: load it
        self._catch_up.set()
        self._bad = RateLimitedLog(log, "pair store: malformed message")
        self._flush_log = RateLimitedLog(log, "pair store: write-behind failed")

    # -- the OrderStore seam ---------------------------------------------------------------

    async def current_epoch(self) -> int:
        return await self.backing.current_epoch()

    async def acquire_epoch(self, expected: int) -> tuple[bool, int]:
        return await self.backing.acquire_epoch(expected)

    async def write(self, order: Order, epoch: int) -> None:
        [outcome] = await self.write_batch([order], epoch)
        raise_for(outcome, order, self.index.get(client_key(order), time.time()))

    async def write_batch(self, orders: Sequence[Order], epoch: int,
                          entries: Sequence[ExecutionReport] = ()) -> list[WriteOutcome]:
        rep = self.replicator
        if rep is None or rep.epoch != epoch:
            # Not this node's term: Redis decides (fenced), as a node stepped down expects.
            return await self.backing.write_batch(orders, epoch, entries)
        records = with_entries(orders, entries)
        outcomes = await self._claim(orders)
        written = [r for r, out in zip(records, outcomes, strict=True)
                   if out is WriteOutcome.WRITTEN]
        if written:
            await self._durable(rep, rep.append(written))
        return outcomes

    async def get(self, order_id: str) -> Order | None:
        rep = self.replicator
        if rep is not None:
            held = rep.backlog.get(order_id)
            if held is not None:
                seq, record = held
                await self._wait_durable(rep, seq)  # never answer what may still be lost
                return record.decode()
        return await self.backing.get(order_id)

    async def by_client_id(self, account: str, client_order_id: str) -> Order | None:
        order_id = self.index.get((account, client_order_id), time.time())
        if order_id is not None:
            found = await self.get(order_id)
            if found is not None:
                return found
        return await self.backing.by_client_id(account, client_order_id)

    async def open_orders(self) -> list[Order]:
        rep = self.replicator
        for _ in range(OPEN_READS):
            # Read again if the write-behind moved on meanwhile: a record it took from the
            # backlog during the read may have reached Redis after it (seen nowhere).
            flushed = rep.flushed if rep is not None else 0
            stored = {o.order_id: o for o in await self.backing.open_orders()}
            if rep is None or rep.flushed == flushed:
                break
        if rep is not None:  # newer records of this term the store may lack
            for record in rep.backlog.newest():
                if record.terminal:
                    stored.pop(record.order_id, None)
                else:
                    stored[record.order_id] = record.decode()
        return list(stored.values())

    def held(self, order_id: str) -> Order | None:
        """The newest record of ``order_id`` this term holds that Redis may lack (None: none),
        durable or not yet: what the next write of the order builds on."""
        rep = self.replicator
        found = rep.backlog.get(order_id) if rep is not None else None
        return found[1].decode() if found is not None else None

    async def executions(self, order_id: str, after: int = 0) -> list[ExecutionReport]:
        """The log from Redis and, after it, what this term holds that Redis may lack (once
        durable, as :meth:`get`; from memory alone when it holds every entry asked for). The
        held entries are read first: one the write-behind moves
        to Redis meanwhile is then in both (the positions say which), never in neither."""
        rep = self.replicator
        held = rep.backlog.entries(order_id) if rep is not None else []
        newest = rep.backlog.get(order_id) if rep is not None else None
        if rep is not None and newest is not None:
            await self._wait_durable(rep, newest[0])
        if held and held[0].seq <= after + 1:  # memory has it all: no Redis (it may be away)
            return [e.decode() for e in held if e.seq > after]
        stored = await self.backing.executions(order_id, after)
        end = after + len(stored)
        return stored + [e.decode() for e in held if e.seq > end]

    async def close(self) -> None:
        self._fail_acks(False)
        self.server.close(linger=0)
        self.client.close(linger=0)
        await self.backing.close()

    # -- the active side -------------------------------------------------------------------

    def backlog(self) -> int:
        """Records this node holds that Redis may lack (active: its own; passive: the peer's)."""
        rep = self.replicator
        return rep.backlog.records if rep is not None else self.replica.backlog.records

    def full(self) -> bool:
        """Whether the write-behind backlog is at its bound (new orders wait: BUSY)."""
        return self.backlog() >= self.max_backlog

    async def _claim(self, orders: Sequence[Order]) -> list[WriteOutcome]:
        """The idempotency check of a batch, in turn, against the client index (and Redis for
        what the index cannot answer); a written order's client order id names it from now."""
        now = time.time()
        unknown = [client_key(o) for o in orders if self.index.get(client_key(o), now) is None]
        owners: dict[tuple[str, str], str] = {}
        if unknown and not self.index.complete(now):
            self.stats.store_checks += len(unknown)
            owners = await self.backing.client_owners(unknown)
        outcomes: list[WriteOutcome] = []
        for order in orders:
            key = client_key(order)
            owner = self.index.get(key, now) or owners.get(key)
            if owner is not None and owner != order.order_id:
                outcomes.append(WriteOutcome.CLIENT_ID_TAKEN)
                if self.index.get(key, now) is None:
                    self.index.add(key, owner, now)
                continue
            named = self.index.key_of(order.order_id)
            if owner is None and named is not None and named != key:
                outcomes.append(WriteOutcome.ORDER_ID_TAKEN)  # never overwrite another's
                continue
            self.index.add(key, order.order_id, now)
            outcomes.append(WriteOutcome.WRITTEN)
        return outcomes

    async def _durable(self, rep: Replicator, seq: int) -> None:
        """Return once batch ``seq`` survives the loss of either node: confirmed by the passive
        node, else in Redis. ``Fenced`` if the passive node knows a newer epoch or Redis
        does; ``StoreError`` if Redis is away and no passive node holds it."""
        self._flush_wanted.set()
        batch = rep.batch(seq, peer_ready=self.node.peer_ready())
        if batch is not None and await self._replicate(rep, batch):
            self.stats.replicated += 1
            return
        self.stats.written_through += 1
        await self._wait_durable(rep, seq)

    async def _resync(self, rep: Replicator) -> bool:
        """While batches wait for Redis and the peer beats as PASSIVE (it missed a
        confirmation, or is back from a stall): an empty batch numbered after them, a reset
        out of sync, whose confirmation covers every one of them. True if confirmed. At
        most one try a peer timeout, whoever waits (a refusal comes back at once)."""
        now = asyncio.get_running_loop().time()
        if (not self.node.peer_ready() or rep.in_sync or self.replicator is not rep
                or now < self._resync_after):
            return False
        self._resync_after = now + self.ack_timeout_s
        again = rep.batch(rep.append(()), peer_ready=True)
        if again is not None and await self._replicate(rep, again):
            self.stats.resynced += 1
            return True
        return False

    async def _replicate(self, rep: Replicator, batch: ReplicaBatch) -> bool:
        """Send ``batch`` and wait for the passive node's confirmation (False: none came)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks[batch.seq] = done
        if batch.reset:
            self.stats.resets += 1
        try:
            self._to_peer.send(encode_pair(batch))
        except zmq.Again:  # not connected (IMMEDIATE): nobody to hold it
            self._lost(rep)
        # A timer, not wait_for: that is a task per batch.
        self._ack_timers[batch.seq] = asyncio.get_running_loop().call_later(
            self.ack_timeout_s, self._unconfirmed, rep, batch.seq, done, self.ack_timeout_s)
        try:
            return await done
        finally:
            timer = self._ack_timers.pop(batch.seq, None)
            if timer is not None:
                timer.cancel()
            self._acks.pop(batch.seq, None)

    def _unconfirmed(self, rep: Replicator, seq: int, done: asyncio.Future[bool],
                     waited: float) -> None:
        if done.done():
            return
        if rep.flushed >= seq:  # in Redis meanwhile: durable without the peer's word
            done.set_result(False)
            return
        if self.node.peer_ready() and waited < MAX_ACK_WAIT_S and self.replicator is rep:
            # No confirmation in a peer timeout, yet the peer still beats as PASSIVE (its
            # heartbeats come from a thread, withheld once its loop is stuck): a late
            # confirmation of a busy node, not a dead one. Giving up now would make the batch
            # wait for Redis instead, seconds in a Sentinel switch, and everything queued
            # behind it with it (the drill saw order p99 3.2 s from one such batch).
            self._ack_timers[seq] = asyncio.get_running_loop().call_later(
                self.ack_timeout_s, self._unconfirmed, rep, seq, done,
                waited + self.ack_timeout_s)
            return
        self.stats.unconfirmed += 1
        log.warning("pair store: batch %d not confirmed within %g ms; Redis decides", seq,
                    waited * 1000)
        self._lost(rep)

    def _lost(self, rep: Replicator) -> None:
        """The passive node holds nothing to count on: every batch waiting for it waits for
        Redis instead; the next batch is a reset."""
        rep.lost()
        self._fail_acks(False)

    def _fail_acks(self, value: bool | BaseException) -> None:
        for seq, done in list(self._acks.items()):
            if not done.done():
                if isinstance(value, BaseException):
                    done.set_exception(value)
                else:
                    done.set_result(value)
            self._acks.pop(seq, None)

    async def _wait_durable(self, rep: Replicator, seq: int) -> None:
        """Return once batch ``seq`` is durable: in Redis, or held by a passive node that
        is back (:meth:`_resync`: a batch waiting for Redis through a Sentinel switch held
        everything queued behind it for the switch). The write-behind's failure raises."""
        while not rep.durable(seq):
            if self.replicator is not rep:
                raise Fenced(rep.epoch, self.node.pair_state()[1])
            if await self._resync(rep):
                continue
            progress = self._progress
            self._flush_wanted.set()
            # Woken by the write-behind's next attempt, or after a while to look at the peer
            # again (an attempt rides through Redis's failover for seconds).
            if not await wait_event(progress, RESYNC_LOOK_S):
                continue
            error = self._flush_error
            if error is not None and not rep.durable(seq):
                raise error

    async def acks(self) -> None:
        """Task: read the passive node's confirmations and refusals; each wake-up takes every
        one already queued."""
        while True:
            for frames in await recv_batch(self.client, REPLICA_DRAIN):
                try:
                    msg = decode_pair(frames)
                except RemoteProtocolError as exc:
                    self._bad.warning("from the passive node: %s", exc.reason)
                    continue
                await self._answer(msg)

    async def _answer(self, msg: object) -> None:
        """A confirmation or a refusal from the passive node."""
        rep = self.replicator
        if rep is None or not isinstance(msg, (ReplicaAck, ReplicaRefused)):
            return
        if isinstance(msg, ReplicaAck):
            if rep.on_ack(msg):
                for seq, done in list(self._acks.items()):
                    if seq <= rep.acked and not done.done():
                        done.set_result(True)
        elif msg.term == rep.term:
            await self._refused(rep, msg)

    async def _refused(self, rep: Replicator, refusal: ReplicaRefused) -> None:
        self.stats.refused += 1
        log.warning("pair store: the passive node refused batch %d (%s, its epoch %d)",
                    refusal.seq, refusal.reason.name, refusal.epoch)
        if refusal.reason is RefuseReason.STALE_EPOCH or refusal.epoch > rep.epoch:
            fenced = Fenced(rep.epoch, refusal.epoch)
            self._fail_acks(fenced)
            self._fenced(rep, fenced)
            if self.on_fenced is not None:
                await self.on_fenced(refusal.epoch)
            return
        self._lost(rep)

    async def flusher(self) -> None:
        """Task: write every batch of the term to Redis, in order, behind the acknowledgement."""
        backoff, failures = Backoff(base_s=0.01, cap_s=0.5), 0
        while True:
            rep = self.replicator
            if rep is None or rep.flushed >= rep.seq:
                self._flush_wanted.clear()
                await self._flush_wanted.wait()
                continue
            if rep.in_sync:
                # Nobody waits for the write-behind while the passive node confirms: let the
                # batches of a few milliseconds gather into one script call (a Redis round
                # trip costs this process more than the records in it).
                await asyncio.sleep(FLUSH_DELAY_S)
            seq, records = rep.to_flush(FLUSH_RECORDS)
            try:
                await self._flush(rep, seq, records)
                self._flush_error = None
                failures = 0
            except Fenced as exc:
                self._fenced(rep, exc)
                if self.on_fenced is not None:
                    await self.on_fenced(exc.current)
                continue
            except StoreError as exc:
                self.stats.flush_errors += 1
                self._flush_error = exc
                self._flush_log.warning("%d records not yet in Redis: %s", rep.backlog.records,
                                        exc)
                self._signal()
                failures += 1
                await asyncio.sleep(backoff.compute(failures, random.random()))
                continue
            self._signal()

    async def _flush(self, rep: Replicator, seq: int, records: list[EncodedOrder]) -> None:
        self.stats.flushes += 1
        outcomes = await self.backing.write_behind(records, rep.epoch)
        for record, outcome in zip(records, outcomes, strict=True):
            if outcome is not WriteOutcome.WRITTEN:  # pragma: no cover - ids are unique
                log.error("pair store: Redis refused %s in the write-behind (%s)",
                          record.order_id, outcome.name)
        rep.flushed_to(seq)

    def _fenced(self, rep: Replicator, exc: Fenced) -> None:
        """A newer epoch exists: this term can never write again (whatever the node does
        about it), so it ends here; whoever waits for it is told."""
        self._flush_error = exc
        if self.replicator is rep:
            self.deactivate()
        self._signal()

    def _signal(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    # -- roles -----------------------------------------------------------------------------

    async def activate(self, epoch: int) -> list[Order]:
        """This node won ``epoch``: write what it holds of the old active that Redis lacks
        (fenced under ``epoch``), bring the client index up to date, start a term. Returns the
        records it held (the old active's last writes: their reports may not have been sent).
        Raises ``Fenced``/``StoreError`` (the node then does not serve yet)."""
        held, last_batch = self.replica.backlog.newest(), self.replica.last_batch
        # What the old active wrote to Redis alone after the last batch this node saw.
        since = (last_batch if last_batch is not None else time.time() - self.index.window_s)
        # The two are independent (the held records' client ids are in the index already),
        # so they share the wait: the node serves nobody until both are done. Both run to
        # their end (no write left running unowned); the first failure raises.
        for outcome in await asyncio.gather(self._reconcile(held, epoch),
                                            self._load_index(since - CLOCK_MARGIN_S),
                                            return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        self.replica.release()  # only now: until Redis has them, a retry starts over from them
        self.replicator = Replicator(secrets.token_hex(8), epoch)
        return [r.decode() for r in held]

    async def _reconcile(self, held: list[EncodedOrder], epoch: int) -> None:
        """Write the ``held`` records that are newer than Redis's, under ``epoch``."""
        if not held:
            return
        stored = await self.backing.get_many([r.order_id for r in held])
        newest = [r for r in held if newer(r.decode(), stored.get(r.order_id))]
        if newest:
            # Under the new epoch: the Lua fence checks the writer's, not the record's.
            await self.backing.write_behind(newest, epoch)
            self.stats.reconciled += len(newest)
            log.info("backend store: %d records of the old active written to Redis "
                     "(%d held, the rest Redis had)", len(newest), len(held))

    def deactivate(self) -> None:
        """Stepped down: this term's batches are the new active's business now (it holds
        every confirmed one; the others were never acknowledged)."""
        rep, self.replicator = self.replicator, None
        if rep is not None:
            self._fail_acks(False)
            self._signal()

    async def _load_index(self, since: float) -> None:
        now = time.time()
        since = max(since, now - self.index.window_s)
        self.index.load(await self.backing.recent_clients(since), since)
        self.stats.index_loads += 1

    async def catch_up(self) -> None:
        """Task: whenever the client index lacks part of the window (at start, after a gap
        in the replication), load the window from Redis's recent set."""
        backoff, failures = Backoff(base_s=0.1, cap_s=2.0), 0
        while True:
            await self._catch_up.wait()
            if self.index.complete(time.time()):
                self._catch_up.clear()
                continue
            try:
                await self._load_index(time.time() - self.index.window_s)
                failures = 0
            except StoreError as exc:
                log.warning("pair store: client index not loaded yet: %s", exc)
                failures += 1
                await asyncio.sleep(backoff.compute(failures, random.random()))

    # -- the passive side ------------------------------------------------------------------

    async def serve_replica(self) -> None:
        """Task: take the active node's batches (while passive) and answer them. Each
        wake-up takes every batch already queued; a confirmation covers every batch before
        it, so only the last one of a run is confirmed (one send, not one per batch)."""
        while True:
            msgs = await recv_batch(self.server, REPLICA_DRAIN)
            answers: list[tuple[bytes, ReplicaAck | ReplicaRefused]] = []
            for identity, *frames in msgs:
                reply = self._take(frames)
                if reply is None:
                    continue
                if answers and isinstance(reply, ReplicaAck) and answers[-1][0] == identity \
                        and isinstance(answers[-1][1], ReplicaAck):
                    answers[-1] = (identity, reply)  # the later confirmation covers it
                else:
                    answers.append((identity, reply))
            for identity, reply in answers:
                self._to_active.send([identity, *encode_pair(reply)])

    def _take(self, frames: list[bytes]) -> ReplicaAck | ReplicaRefused | None:
        """One batch from the active node: held, or why not (None: malformed, dropped)."""
        try:
            msg = decode_pair(frames)
            if not isinstance(msg, ReplicaBatch):
                raise RemoteProtocolError(f"a {type(msg).__name__} on the replica socket")
        except RemoteProtocolError as exc:
            self._bad.warning("from the active node: %s", exc.reason)
            return None
        passive, epoch = self.node.pair_state()
        known = self.index.known_from
        reply = self.replica.on_batch(msg, passive=passive, epoch=epoch, now=time.time(),
                                      index=self.index)
        if isinstance(reply, ReplicaAck):
            self.stats.held += 1
            if self.index.known_from != known:
                self._catch_up.set()
        else:
            self.stats.refusals += 1
        return reply


__all__ = ["PairStore", "PairStoreStats", "PairView"]
