"""Binary Star (active/passive pair) with fencing, sans-I/O.

The ZeroMQ guide's machine (chapter 4, ``bstar.c``) plus what it lacks in production:

* **Fencing epoch.** Becoming active is never a local decision: the node first asks the store to
  raise the epoch by compare-and-swap (``AcquireEpoch(expected)``) and serves only once that
  succeeded (TAKING_OVER -> ACTIVE). Every state write carries the epoch and the store refuses a
  stale one, so an old active can never write; told so (``on_fenced``), it steps down.
* **Dual active resolved by epoch**: an active that hears an active peer with a higher epoch
  steps down; the guide aborts both processes (a total outage).
* **Cold start**: a backup started alone may serve after ``cold_start_s`` without hearing any
  peer, through the same epoch acquisition (the guide's lone backup never serves).
* **Failback only by operator**: ``on_handover`` makes the active step down and hold off; its
  peer, seeing it passive, takes over. Nothing fails back by itself: a restarted primary finds
  the backup active and stays passive.

Peers publish ``(state, epoch)`` every heartbeat; a heartbeat sets ``peer_expiry = now +
peer_timeout_s``. A passive node takes over only when a client asks *and* the peer has expired
(the guide's "client vote": a node cut off from both peer and clients stays passive).

Raw inputs are classified into :class:`Event` (guards such as "peer expired" are part of the
event) and looked up in :data:`MACHINE` (the contract of ``protocols.machines``):
:data:`TRANSITIONS` maps ``state -> event -> next state``; :data:`IGNORED` lists what a state
takes without moving (any heartbeat that changes nothing, a request while serving or taking
over, a store answer or a fencing refusal that arrives after the node moved on, a handover
asked of a node that is not active); :data:`FATAL` pairs are configuration errors (two
primaries, two backups) and raise :class:`~protocols.errors.PeerConflict`. Any other pair (a
store answer or a fencing refusal before the node ever asked or wrote) raises
:class:`~protocols.errors.IllegalTransition`. A heartbeat whose state or epoch is not one a
peer can hold raises :class:`~protocols.errors.RemoteProtocolError`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from protocols.errors import PeerConflict, RemoteProtocolError
from protocols.machines import Machine, new_history
from protocols.orders.fields import MAX_EPOCH


class Role(Enum):
    PRIMARY = "primary"
    BACKUP = "backup"


class State(Enum):
    PRIMARY = "primary"  # started as primary, peer state unknown
    BACKUP = "backup"  # started as backup, peer state unknown
    TAKING_OVER = "taking_over"  # asked the store for the next epoch; not serving yet
    ACTIVE = "active"
    PASSIVE = "passive"


class Event(Enum):
    PEER_PRIMARY = "peer_primary"
    PEER_BACKUP = "peer_backup"
    PEER_TAKING_OVER = "peer_taking_over"
    PEER_ACTIVE = "peer_active"  # ... with an epoch not above ours
    PEER_ACTIVE_NEWER = "peer_active_newer"  # ... with a higher epoch: it wins
    PEER_PASSIVE = "peer_passive"
    REQUEST_PEER_ALIVE = "request_peer_alive"
    REQUEST_PEER_EXPIRED = "request_peer_expired"  # includes "never heard, cold start over"
    EPOCH_ACQUIRED = "epoch_acquired"
    EPOCH_LOST = "epoch_lost"
    FENCED = "fenced"  # the store refused our epoch: someone newer is active
    HANDOVER = "handover"  # operator: hand the active role to the peer


S, E = State, Event
TRANSITIONS: dict[State, dict[Event, State]] = {
    S.PRIMARY: {E.PEER_BACKUP: S.TAKING_OVER, E.PEER_PASSIVE: S.TAKING_OVER,
                E.PEER_ACTIVE: S.PASSIVE, E.PEER_ACTIVE_NEWER: S.PASSIVE,
                E.PEER_TAKING_OVER: S.PASSIVE, E.REQUEST_PEER_EXPIRED: S.TAKING_OVER},
    S.BACKUP: {E.PEER_ACTIVE: S.PASSIVE, E.PEER_ACTIVE_NEWER: S.PASSIVE,
               E.PEER_TAKING_OVER: S.PASSIVE, E.PEER_PASSIVE: S.TAKING_OVER,
               E.REQUEST_PEER_EXPIRED: S.TAKING_OVER},
    S.TAKING_OVER: {E.EPOCH_ACQUIRED: S.ACTIVE, E.EPOCH_LOST: S.PASSIVE,
                    E.PEER_ACTIVE_NEWER: S.PASSIVE},
    S.ACTIVE: {E.PEER_ACTIVE_NEWER: S.PASSIVE, E.FENCED: S.PASSIVE, E.HANDOVER: S.PASSIVE},
    S.PASSIVE: {E.PEER_PRIMARY: S.TAKING_OVER, E.PEER_BACKUP: S.TAKING_OVER,
                E.PEER_PASSIVE: S.TAKING_OVER, E.REQUEST_PEER_EXPIRED: S.TAKING_OVER},
}
_PEER_EVENTS = frozenset({E.PEER_PRIMARY, E.PEER_BACKUP, E.PEER_TAKING_OVER, E.PEER_ACTIVE,
                          E.PEER_ACTIVE_NEWER, E.PEER_PASSIVE})
_REQUESTS = frozenset({E.REQUEST_PEER_ALIVE, E.REQUEST_PEER_EXPIRED})
_LATE = frozenset({E.EPOCH_ACQUIRED, E.EPOCH_LOST, E.FENCED})
# state -> events it takes without moving. A peer's heartbeat, a client request and an
# operator's handover are legal in every state. A store answer or a fencing refusal may come
# after the node moved on: an epoch acquisition still in flight when a heartbeat made it step
# aside, a write of its last active term answered late (a write can hang through a Redis
# failover). Only PRIMARY and BACKUP, where the node never asked nor wrote, forbid them.
IGNORED: dict[State, frozenset[Event]] = {
    S.PRIMARY: frozenset({E.REQUEST_PEER_ALIVE, E.HANDOVER}),
    S.BACKUP: frozenset({E.PEER_PRIMARY, E.REQUEST_PEER_ALIVE, E.HANDOVER}),  # primary decides
    S.TAKING_OVER: (_PEER_EVENTS - {E.PEER_ACTIVE_NEWER}) | _REQUESTS | {E.FENCED, E.HANDOVER},
    S.ACTIVE: (_PEER_EVENTS - {E.PEER_ACTIVE_NEWER}) | _REQUESTS | (_LATE - {E.FENCED}),
    S.PASSIVE: frozenset({E.PEER_TAKING_OVER, E.PEER_ACTIVE, E.PEER_ACTIVE_NEWER,
                          E.REQUEST_PEER_ALIVE, E.HANDOVER}) | _LATE,
}
FATAL: frozenset[tuple[State, Event]] = frozenset({
    (S.PRIMARY, E.PEER_PRIMARY), (S.BACKUP, E.PEER_BACKUP),
})
MACHINE: Machine[State, Event] = Machine("binary star", State, Event, TRANSITIONS, IGNORED,
                                         FATAL, initial=(S.PRIMARY, S.BACKUP),
                                         title="Binary star (the order backend pair)")

_NOT_SERVING = frozenset({S.PRIMARY, S.BACKUP, S.PASSIVE})  # peer states that start a takeover
_PEER_EVENT = {S.PRIMARY: E.PEER_PRIMARY, S.BACKUP: E.PEER_BACKUP,
               S.TAKING_OVER: E.PEER_TAKING_OVER, S.PASSIVE: E.PEER_PASSIVE}


@dataclass(frozen=True, slots=True)
class PairConfig:
    heartbeat_s: float = 0.02
    peer_timeout_s: float = 0.06  # three heartbeats: one late packet is not a death
    cold_start_s: float = 1.0  # a node that never heard its peer may serve after this
    # After stepping down (fenced, outvoted, handed over) or losing an epoch race, a node does
    # not take over on its own (client vote, passive peer) for this long: otherwise a node cut
    # off from its peer but not from clients and store would take the epoch back at once, a
    # handover would bounce back, and a starved pair would flap.
    holdoff_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.peer_timeout_s:
            raise ValueError("need 0 < heartbeat_s < peer_timeout_s")
        if self.cold_start_s < 0 or self.holdoff_s < 0:
            raise ValueError("cold_start_s and holdoff_s must be >= 0")


# --- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcquireEpoch:
    """Ask the store: set epoch to ``expected + 1`` if it is still ``expected``."""

    expected: int


@dataclass(frozen=True, slots=True)
class BecameActive:
    """Serve from now on: reload open orders from the store, re-drive unconfirmed ones."""

    epoch: int


@dataclass(frozen=True, slots=True)
class SteppedDown:
    """Stop serving at once (a newer active exists, or the operator handed over)."""

    reason: Event


Effect = AcquireEpoch | BecameActive | SteppedDown


@dataclass(slots=True)
class BinaryStar:
    """One node of the pair. Feed it heartbeats, client requests, store answers and time."""

    role: Role
    config: PairConfig = field(default_factory=PairConfig)
    started: float = 0.0
    state: State = State.PRIMARY
    epoch: int = 0  # the highest epoch this node knows of
    peer_state: State | None = None
    peer_expiry: float = 0.0
    holdoff_until: float = 0.0
    history: deque[tuple[State, Event, State]] = field(default_factory=new_history)

    def __post_init__(self) -> None:
        self.state = State.PRIMARY if self.role is Role.PRIMARY else State.BACKUP

    # -- queries ---------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self.state is State.ACTIVE

    def heartbeat(self) -> tuple[State, int]:
        """What to publish to the peer now."""
        return self.state, self.epoch

    def peer_passive(self, now: float) -> bool:
        """Whether the peer said it is passive within the peer timeout (it can hold a
        replicated batch)."""
        return self.peer_state is State.PASSIVE and now < self.peer_expiry

    def peer_expired(self, now: float) -> bool:
        if now < self.holdoff_until:
            return False
        if self.peer_state is None:  # never heard: alone until the cold-start wait is over
            return now >= self.started + self.config.cold_start_s
        return now >= self.peer_expiry

    # -- inputs ----------------------------------------------------------------------------

    def on_peer(self, peer_state: State, peer_epoch: int, now: float) -> list[Effect]:
        """A heartbeat from the peer; :class:`RemoteProtocolError` if no peer can send it."""
        if not isinstance(peer_state, State):
            raise RemoteProtocolError(f"peer heartbeat: state {peer_state!r} is not a State")
        if type(peer_epoch) is not int or not 0 <= peer_epoch <= MAX_EPOCH:
            raise RemoteProtocolError(f"peer heartbeat: epoch {peer_epoch!r} is not an integer "
                                      f"in 0 .. {MAX_EPOCH}")
        self.peer_state = peer_state
        self.peer_expiry = now + self.config.peer_timeout_s
        if peer_state in _NOT_SERVING and now < self.holdoff_until:
            # We just stepped down: the peer is the one to take over. A PRIMARY or BACKUP
            # heartbeat here is as often a stale one, sent before the peer heard us step down,
            # as a restarted peer: taking over on it bounced a handover straight back (seen in
            # test_operator_handover_moves_the_active_role). After the hold-off it counts again.
            self.epoch = max(self.epoch, peer_epoch)
            return []
        if peer_state is State.ACTIVE:
            event = E.PEER_ACTIVE_NEWER if peer_epoch > self.epoch else E.PEER_ACTIVE
        else:
            event = _PEER_EVENT[peer_state]
        self.epoch = max(self.epoch, peer_epoch)
        return self._fire(event, now)

    def on_request(self, now: float, *, peer_pending: bool = False
                   ) -> tuple[bool, list[Effect]]:
        """A client request arrived: serve it (True) or answer "not active, retry".

        ``peer_pending``: a heartbeat of the peer is waiting, not yet read. Then the silence
        is this node's own (it was off the CPU, its heartbeats queued up), not the peer's, and
        the request is no vote against the peer. Without it, a starved passive that read a
        client request before the heartbeats queued behind it took over from a live active
        (the Redis drill: 4-10 takeovers a run on a saturated machine)."""
        if self.state is State.ACTIVE:
            return True, []
        expired = not peer_pending and self.peer_expired(now)
        event = E.REQUEST_PEER_EXPIRED if expired else E.REQUEST_PEER_ALIVE
        return False, self._fire(event)

    def on_epoch_result(self, acquired: bool, epoch: int, now: float) -> list[Effect]:
        """The store's answer to :class:`AcquireEpoch` (``epoch``: the store's epoch now)."""
        event = E.EPOCH_ACQUIRED if acquired else E.EPOCH_LOST
        nxt = self._next(event)
        if nxt is None:
            return []  # a late answer after we already stepped aside
        self.epoch = max(self.epoch, epoch)
        if not acquired:
            # Someone holds a newer epoch, most likely a live active we have not heard yet.
            # Retrying at once (now knowing the epoch) would win and depose it.
            self.holdoff_until = now + self.config.holdoff_s
        return self._move(event, nxt, now)

    def on_fenced(self, store_epoch: int, now: float) -> list[Effect]:
        """A state write was refused: the store's epoch is newer than ours."""
        nxt = self._next(E.FENCED)
        self.epoch = max(self.epoch, store_epoch)
        return [] if nxt is None else self._move(E.FENCED, nxt, now)

    def on_handover(self, now: float) -> list[Effect]:
        """Operator command on the active node: give the active role to the peer (a no-op on
        a node that is not active)."""
        return self._fire(E.HANDOVER, now)

    # -- internals -------------------------------------------------------------------------

    def _fire(self, event: Event, now: float | None = None) -> list[Effect]:
        nxt = self._next(event)
        return [] if nxt is None else self._move(event, nxt, now)

    def _next(self, event: Event) -> State | None:
        """The state ``event`` leads to, None for a no-op; raises for a fatal or illegal one."""
        if (self.state, event) in FATAL:
            raise PeerConflict(f"{self.role.name} node in state {self.state.name} saw "
                               f"{event.name}: both nodes are configured as "
                               f"{self.role.name.lower()}")
        return MACHINE.step(self.state, event)

    def _move(self, event: Event, nxt: State, now: float | None) -> list[Effect]:
        prev, self.state = self.state, nxt
        self.history.append((prev, event, nxt))
        if nxt is State.TAKING_OVER:
            return [AcquireEpoch(self.epoch)]
        if nxt is State.ACTIVE:
            return [BecameActive(self.epoch)]
        if prev is State.ACTIVE:
            # Whatever made us step down (fenced, outvoted, handed over), do not take the role
            # back on our own for a while: under CPU starvation that is what made pairs flap.
            if now is not None:
                self.holdoff_until = now + self.config.holdoff_s
            return [SteppedDown(event)]
        return []
