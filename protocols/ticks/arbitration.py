"""Sequence arbitration and gap repair for one tick stream (sans-I/O).

Rules (after CME MDP 3.0 feed arbitration, MoldUDP64 re-requests and the ZeroMQ Clone pattern):

* Two paths (ZeroMQ and UDP) carry the same batches. The first copy of a sequence number wins;
  later copies are duplicates and are dropped.
* Ticks are delivered strictly in sequence. A batch that starts beyond the next expected
  sequence opens a *gap*: live data is queued (bounded) and the other path gets ``grace_s`` to
  fill the hole (GAP_WAIT). Then the recovery service is asked (RECOVERING) for everything from
  the hole to the newest sequence known; whatever arrives first, path or reply, fills it.
* A reply *settles* a range: a sequence there that the reply neither carries nor declares void
  or unknown is lost for good, and is reported as :class:`Lost`. Void ranges (proven never used)
  are skipped and reported as :class:`Skipped`. Unknown ranges (numbers a crashed feed reserved:
  it may have published ticks there, of which no copy is stored) are never skipped silently:
  a number this receiver knows was published (it saw it, or a heartbeat past it, under the old
  session) is :class:`Lost`, the rest is reported as :class:`Unknown`. An unsettled range (not
  checkpointed yet) is asked for again after ``retry_s``; a hole older than ``give_up_s`` is lost.
* A heartbeat tells the next sequence of an idle stream, so a lost tail is detected too.
* Sessions: a batch from an older session is stale and dropped. A newer session that continues
  the sequence is a feed restarted from the store; one whose sequence goes backwards is a
  *reset* (the store lost the stream) and the receiver starts over at the new sequence.
* A late joiner queues live data until the snapshot (the last value) arrives, delivers the
  snapshot tick, drops queued ticks at or below it, then goes on live.

The machine takes ``now`` (seconds, any monotonic origin) and returns effects for the caller to
carry out; :meth:`StreamArbiter.deadline` tells when :meth:`StreamArbiter.on_timer` is due.

The table (:data:`MACHINE`, the contract of ``protocols.machines``): :data:`TRANSITIONS` are the
moves; :data:`IGNORED` the events a state takes without moving (a snapshot answer for a stream
already live, a partial reply during the grace time). Inputs that are no event at all (a batch
in sequence, a duplicate, a stale batch, a late reply, a timer after the hole closed) are
handled without one. An event the table forbids raises
:class:`~protocols.errors.IllegalTransition`; a gap-fill reply whose range is inverted raises
:class:`~protocols.errors.RemoteProtocolError`, and a reply settles only the range it speaks
for (``from_seq .. settled_to``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from protocols.errors import RemoteProtocolError
from protocols.machines import Machine, new_history
from protocols.ticks.messages import Row, SeqRange, SnapshotEntry


class StreamState(Enum):
    AWAIT_SNAPSHOT = "await_snapshot"
    LIVE = "live"
    GAP_WAIT = "gap_wait"
    RECOVERING = "recovering"


class Event(Enum):
    """The inputs of the machine; the transition table is drawn over them."""

    BATCH_AHEAD = "batch_ahead"
    HEARTBEAT_AHEAD = "heartbeat_ahead"
    HOLE_FILLED = "hole_filled"
    SNAPSHOT = "snapshot"
    GRACE_EXPIRED = "grace_expired"
    REPLY_PARTIAL = "reply_partial"
    FILL_TIMEOUT = "fill_timeout"
    GIVE_UP = "give_up"
    RESET = "reset"
    CONSUMER_OVERFLOW = "consumer_overflow"


S = StreamState
E = Event
# state -> event -> next state. Inputs that are no event (a batch in sequence, a duplicate, a
# stale batch, a late reply) are handled without one; an event not listed here nor in IGNORED
# is illegal in that state.
TRANSITIONS: dict[StreamState, dict[Event, StreamState]] = {
    S.AWAIT_SNAPSHOT: {E.SNAPSHOT: S.LIVE, E.RESET: S.LIVE},
    S.LIVE: {E.BATCH_AHEAD: S.GAP_WAIT,
             E.HEARTBEAT_AHEAD: S.GAP_WAIT, E.CONSUMER_OVERFLOW: S.GAP_WAIT, E.RESET: S.LIVE},
    S.GAP_WAIT: {E.HOLE_FILLED: S.LIVE, E.GRACE_EXPIRED: S.RECOVERING, E.RESET: S.LIVE},
    S.RECOVERING: {E.HOLE_FILLED: S.LIVE, E.REPLY_PARTIAL: S.RECOVERING,
                   E.FILL_TIMEOUT: S.RECOVERING, E.GIVE_UP: S.RECOVERING, E.RESET: S.LIVE},
}
# state -> events it takes without moving: the snapshot answer comes for every stream, also
# those live from the start or reset before it came; a reply that arrives during the grace
# time of a newer hole fills what it can, and the other path still has its grace time.
IGNORED: dict[StreamState, frozenset[Event]] = {
    S.LIVE: frozenset({E.SNAPSHOT}),
    S.GAP_WAIT: frozenset({E.SNAPSHOT, E.REPLY_PARTIAL}),
    S.RECOVERING: frozenset({E.SNAPSHOT}),
}
MACHINE: Machine[StreamState, Event] = Machine("stream arbiter", StreamState, Event,
                                               TRANSITIONS, IGNORED,
                                               initial=(S.AWAIT_SNAPSHOT, S.LIVE),
                                               title="Stream arbiter (one tick stream at a "
                                                     "subscriber)")


@dataclass(frozen=True, slots=True)
class ArbiterConfig:
    grace_s: float = 0.003
    fill_timeout_s: float = 0.25
    retry_s: float = 0.01
    give_up_s: float = 3.0
    max_pending: int = 200_000
    max_fill: int = 50_000

    def __post_init__(self) -> None:
        for name in ("grace_s", "fill_timeout_s", "retry_s", "give_up_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_pending < 1 or self.max_fill < 1:
            raise ValueError("max_pending and max_fill must be >= 1")


# --- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand ``rows`` (sequences ``first_seq ..``) to the consumer, in this order."""

    stream: str
    session: int
    first_seq: int
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class DeliverSnapshot:
    entry: SnapshotEntry


@dataclass(frozen=True, slots=True)
class RequestFill:
    stream: str
    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True)
class Lost:
    """Sequences ``first .. last`` are gone for good (unrecoverable)."""

    stream: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """Sequences ``first .. last`` never carried a tick (void range after a feed crash)."""

    stream: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Unknown:
    """Sequences ``first .. last`` may have carried ticks that this receiver did not get and no
    store holds (reserved by a feed that crashed): perhaps lost, perhaps never used."""

    stream: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The stream's sequence started over under ``new_session`` at ``new_seq``."""

    stream: str
    old_session: int
    new_session: int
    new_seq: int


Effect = Deliver | DeliverSnapshot | RequestFill | Lost | Skipped | Unknown | Reset


@dataclass(slots=True)
class ArbiterStats:
    gaps: int = 0  # holes opened
    filled_by_path: int = 0  # closed by the other path within the grace time
    filled_by_recovery: int = 0  # closed while recovering, nothing lost
    unrecoverable_gaps: int = 0  # closed with at least one tick lost
    lost: int = 0  # ticks lost
    skipped: int = 0  # void sequence numbers skipped
    unknown: int = 0  # numbers of unknown ranges not received: perhaps ticks, perhaps unused
    stale: int = 0  # messages from an older session
    resets: int = 0
    pending_overflow: int = 0  # queued ticks dropped because the queue was full (re-fetched)
    fill_requests: int = 0


def _split_ranges(first: int, last: int, void: tuple[SeqRange, ...],
                  unknown: tuple[SeqRange, ...] = ()) -> list[tuple[int, int, str]]:
    """Split ``first..last`` into pieces ``(a, b, kind)``, kind "void", "unknown" or "missing"."""
    pieces: list[tuple[int, int, str]] = []
    cur = first
    marked = [(r, "void") for r in void] + [(r, "unknown") for r in unknown]
    for r, kind in sorted(marked, key=lambda m: m[0].first):
        if r.last < cur or r.first > last:
            continue
        if r.first > cur:
            pieces.append((cur, r.first - 1, "missing"))
        hi = min(r.last, last)
        pieces.append((max(cur, r.first), hi, kind))
        cur = hi + 1
        if cur > last:
            break
    if cur <= last:
        pieces.append((cur, last, "missing"))
    return pieces


@dataclass(slots=True)
class StreamArbiter:
    """Arbitration and gap-repair state of one stream at one receiver."""

    stream: str
    config: ArbiterConfig = field(default_factory=ArbiterConfig)
    await_snapshot: bool = False
    state: StreamState = StreamState.LIVE
    session: int = 0
    next_seq: int = 0  # 0: position unknown, set by the first batch or heartbeat
    known_end: int = 0  # highest sequence known to exist
    pending: dict[int, tuple[int, Row]] = field(default_factory=dict)  # seq -> (session, row)
    timer_at: float | None = None
    hole_since: float = 0.0
    hole_at: int = 0  # next_seq when the current hole was first seen
    # known_end when each newer session took over: the numbers up to it were published, so
    # those of an unknown range that never arrived are lost (kept while a hole may reach them)
    restart_ends: list[int] = field(default_factory=list)
    stats: ArbiterStats = field(default_factory=ArbiterStats)
    history: deque[tuple[StreamState, Event, StreamState]] = field(default_factory=new_history)
    _lost_in_gap: bool = False

    def __post_init__(self) -> None:
        if self.await_snapshot:
            self.state = StreamState.AWAIT_SNAPSHOT

    # -- queries ---------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When :meth:`on_timer` must run next, or None."""
        return self.timer_at

    def wants(self, session: int, first_seq: int, count: int) -> bool:
        """Cheap check on a header: False if the whole batch is surely a duplicate or stale."""
        if session < self.session:
            return True  # let on_batch count it as stale
        return not (session == self.session and first_seq + count <= self.next_seq)

    # -- inputs ----------------------------------------------------------------------------

    def on_batch(self, session: int, first_seq: int, rows: tuple[Row, ...],
                 now: float) -> list[Effect]:
        eff: list[Effect] = []
        if not self._admit(session, first_seq, now, eff):
            return eff
        last = first_seq + len(rows) - 1
        if last > self.known_end:
            self.known_end = last
        if self.state is StreamState.LIVE:
            nxt = self.next_seq or first_seq
            if first_seq <= nxt:
                if last >= nxt:  # else: a duplicate
                    off = nxt - first_seq
                    eff.append(Deliver(self.stream, session, nxt, rows[off:] if off else rows))
                    self.next_seq = last + 1
                return eff
            self._store(session, first_seq, rows)
            self._open_gap(now, Event.BATCH_AHEAD)
            return eff
        if self.state is StreamState.AWAIT_SNAPSHOT:
            self._store(session, first_seq, rows)
        else:
            self._take(session, first_seq, rows, eff)
            self._maybe_close(now)
        return eff

    def on_heartbeat(self, session: int, next_seq: int, now: float) -> list[Effect]:
        eff: list[Effect] = []
        if not self._admit(session, next_seq, now, eff):
            return eff
        if next_seq - 1 > self.known_end:
            self.known_end = next_seq - 1
        if self.state is StreamState.LIVE:
            if self.next_seq == 0:
                self.next_seq = next_seq
            elif next_seq > self.next_seq:
                self._open_gap(now, Event.HEARTBEAT_AHEAD)
        return eff

    def on_snapshot(self, entry: SnapshotEntry | None, now: float) -> list[Effect]:
        """The snapshot answer for this stream (None: the store has no value, or no answer)."""
        eff: list[Effect] = []
        if not self._transition(Event.SNAPSHOT):
            return eff
        if entry is not None and entry.session >= self.session:
            eff.append(DeliverSnapshot(entry))
            self.session = max(self.session, entry.session)
            self.next_seq = entry.seq + 1
            self.known_end = max(self.known_end, entry.seq)
            for s in [s for s in self.pending if s <= entry.seq]:
                del self.pending[s]
        elif self.pending:
            self.next_seq = min(self.pending)
        self._drain(eff)
        if self.next_seq and self.known_end >= self.next_seq:
            self._open_gap(now, Event.BATCH_AHEAD)
        return eff

    def on_fill(self, from_seq: int, settled_to: int, batches: tuple[tuple[int, int,
                tuple[Row, ...]], ...], void: tuple[SeqRange, ...], now: float,
                unknown: tuple[SeqRange, ...] = ()) -> list[Effect]:
        """A gap-fill reply: ``batches`` are ``(session, first_seq, rows)``; it speaks for
        ``from_seq .. settled_to`` (``from_seq - 1``: nothing settled yet)."""
        if not 1 <= from_seq <= settled_to + 1:
            raise RemoteProtocolError(f"gap-fill reply for {self.stream!r} settles "
                                      f"{from_seq} .. {settled_to}")
        eff: list[Effect] = []
        if self.state not in (StreamState.GAP_WAIT, StreamState.RECOVERING):
            return eff  # late or duplicate reply: everything it could fill is delivered
        limit = settled_to
        for session, first, rows in sorted(batches, key=lambda b: b[1]):
            if first + len(rows) - 1 > self.known_end:
                self.known_end = first + len(rows) - 1
            dropped = self._take(session, first, rows, eff)
            if dropped is not None:  # carried but not kept (queue full): ask again, not lost
                limit = min(limit, dropped - 1)
        # The reply says nothing about numbers below its from_seq (a rewind may have moved
        # next_seq back since it was asked for): only a reply that covers next_seq settles.
        if from_seq <= self.next_seq <= limit:
            # Queued sequences in order, computed once: settling walks holes between them.
            queued = iter(sorted(s for s in self.pending if s > self.next_seq))
            while self.next_seq <= limit:
                above = next((s for s in queued if s > self.next_seq), None)
                stop = limit if above is None else min(limit, above - 1)
                self._settle_missing(self.next_seq, stop, void, eff, unknown)
                self.next_seq = stop + 1
                self._drain(eff)
        if not self._maybe_close(now):
            if self.next_seq != self.hole_at:  # progress: a new hole, its own clock
                self.hole_at, self.hole_since = self.next_seq, now
            self._transition(Event.REPLY_PARTIAL)
            self.timer_at = now + self.config.retry_s
        return eff

    def on_timer(self, now: float) -> list[Effect]:
        eff: list[Effect] = []
        if self.timer_at is None or now < self.timer_at:
            return eff
        if self.state is StreamState.GAP_WAIT:
            self._transition(Event.GRACE_EXPIRED)
        elif self.state is StreamState.RECOVERING:
            if now - self.hole_since >= self.config.give_up_s:
                self._transition(Event.GIVE_UP)
                end = self._hole_end()
                self._settle_missing(self.next_seq, end, (), eff)
                self.next_seq = end + 1
                self._drain(eff)
                if self._maybe_close(now):
                    return eff
                self.hole_at, self.hole_since = self.next_seq, now
            else:
                self._transition(Event.FILL_TIMEOUT)
        else:
            self.timer_at = None
            return eff
        to = min(self.known_end, self.next_seq + self.config.max_fill - 1)
        eff.append(RequestFill(self.stream, self.next_seq, to))
        self.stats.fill_requests += 1
        self.timer_at = now + self.config.fill_timeout_s
        return eff

    def rewind(self, seq: int, now: float) -> list[Effect]:
        """The consumer could not take ticks from ``seq`` on: fetch them again later.

        Works in every state but AWAIT_SNAPSHOT (which delivers nothing): ticks released from
        the queue while a gap is being repaired can overflow the consumer too, and must not
        vanish. Queued ticks are all above the old next sequence, so none is lost by this.
        """
        if self.state is StreamState.AWAIT_SNAPSHOT or not 0 < seq < self.next_seq:
            return []
        self.known_end = max(self.known_end, self.next_seq - 1)
        self.next_seq = seq
        if self.state is StreamState.LIVE:
            self._open_gap(now, Event.CONSUMER_OVERFLOW)
        return []

    # -- internals -------------------------------------------------------------------------

    def _transition(self, event: Event) -> bool:
        """Take ``event``: True if the state moved, False for a no-op; raises if illegal."""
        nxt = MACHINE.step(self.state, event)
        if nxt is None:
            return False
        self.history.append((self.state, event, nxt))
        self.state = nxt
        return True

    def _admit(self, session: int, seq: int, now: float, eff: list[Effect]) -> bool:
        """Session check: False for a stale message; handles a restart or a reset."""
        if session == self.session or self.session == 0:
            self.session = session
            return True
        if session < self.session:
            self.stats.stale += 1
            return False
        ref = self.next_seq or (min(self.pending) if self.pending else 0)
        if ref and seq < ref:  # newer session, sequence went backwards
            eff.append(Reset(self.stream, self.session, session, seq))
            self.stats.resets += 1
            self.pending.clear()
            self._transition(Event.RESET)
            self.next_seq, self.known_end, self.timer_at = seq, seq - 1, None
            self.restart_ends.clear()
        else:  # a newer session continuing the sequence: the feed restarted
            ends = [e for e in self.restart_ends if e >= self.next_seq]
            if self.known_end >= max(self.next_seq, 1):
                ends.append(self.known_end)
            self.restart_ends = ends
        self.session = session
        return True

    def _take(self, session: int, first_seq: int, rows: tuple[Row, ...],
              eff: list[Effect]) -> int | None:
        """Deliver a batch that reaches the next sequence at once, else queue it.

        Delivering the front directly means a full queue can never block the very ticks that
        would drain it. Returns the first sequence that could not be kept, if any.
        """
        nxt = self.next_seq
        if first_seq <= nxt <= first_seq + len(rows) - 1:
            off = nxt - first_seq
            eff.append(Deliver(self.stream, session, nxt, rows[off:] if off else rows))
            self.next_seq = first_seq + len(rows)
            pending = self.pending
            if pending:  # superseded: the same sequences just went out (cost: batch size)
                for seq in range(nxt, self.next_seq):
                    pending.pop(seq, None)
            self._drain(eff)
            return None
        dropped = self._store(session, first_seq, rows)
        self._drain(eff)
        return dropped

    def _store(self, session: int, first_seq: int, rows: tuple[Row, ...]) -> int | None:
        """Queue rows at or above the next sequence; return the first one dropped, if any."""
        pending, base = self.pending, self.next_seq
        room = self.config.max_pending - len(pending)
        for i, row in enumerate(rows):
            seq = first_seq + i
            if seq >= base and seq not in pending:
                if room <= 0:
                    # Dropping the newest keeps the queue bounded; the hole it leaves is
                    # fetched from the recovery service like any other.
                    self.stats.pending_overflow += len(rows) - i
                    return seq
                pending[seq] = (session, row)
                room -= 1
        return None

    def _drain(self, eff: list[Effect]) -> None:
        pending, seq = self.pending, self.next_seq
        if seq not in pending:
            return
        start, run_session = seq, pending[seq][0]
        run: list[Row] = []
        while seq in pending:
            session, row = pending.pop(seq)
            if session != run_session:
                eff.append(Deliver(self.stream, run_session, start, tuple(run)))
                start, run_session, run = seq, session, []
            run.append(row)
            seq += 1
        eff.append(Deliver(self.stream, run_session, start, tuple(run)))
        self.next_seq = seq

    def _hole_end(self) -> int:
        return min(self.pending) - 1 if self.pending else self.known_end

    def _open_gap(self, now: float, event: Event) -> None:
        self._transition(event)
        self.stats.gaps += 1
        self._lost_in_gap = False
        self.hole_at, self.hole_since = self.next_seq, now
        self.timer_at = now + self.config.grace_s

    def _maybe_close(self, now: float) -> bool:
        """Back to LIVE if nothing is missing any more; True if so."""
        if self.pending or self.next_seq <= self.known_end:
            return False
        if self.state is StreamState.GAP_WAIT:
            self.stats.filled_by_path += 1
        elif self._lost_in_gap:
            self.stats.unrecoverable_gaps += 1
        else:
            self.stats.filled_by_recovery += 1
        self._transition(Event.HOLE_FILLED)
        self.timer_at = None
        return True

    def _settle_missing(self, first: int, last: int, void: tuple[SeqRange, ...],
                        eff: list[Effect], unknown: tuple[SeqRange, ...] = ()) -> None:
        if first > last:
            return
        for a, b, kind in _split_ranges(first, last, void, unknown):
            if kind == "void":
                eff.append(Skipped(self.stream, a, b))
                self.stats.skipped += b - a + 1
            elif kind == "unknown":
                # The end known before the session that followed this range took over: ends
                # of earlier restarts lie below the range, of later ones above it.
                published = max((e for e in self.restart_ends if e <= b), default=0)
                if published >= a:
                    self._lose(a, published, eff)
                if b > published:
                    lo = max(a, published + 1)
                    eff.append(Unknown(self.stream, lo, b))
                    self.stats.unknown += b - lo + 1
            else:
                self._lose(a, b, eff)

    def _lose(self, first: int, last: int, eff: list[Effect]) -> None:
        eff.append(Lost(self.stream, first, last))
        self.stats.lost += last - first + 1
        self._lost_in_gap = True
