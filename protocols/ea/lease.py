"""The executor's lease table: which EA instance executes each lease key, under which epoch
(sans-I/O; docs/PROTOCOL.md section 18.2). ``now`` is the executor's monotonic clock, seconds.

Rules:

* A lease key is an account, or ``"*"`` (every account no instance names). An instance serves
  the keys of its HELLO; :meth:`Leases.key_for` says which key an account's orders go under.
* Each key has at most one holder, under an epoch that grows by one at every change of holder.
  The table does not invent epochs: :meth:`Leases.tick` *claims* a free key for a candidate,
  the caller makes the epoch durable (``INCR P:ea:epoch:{key}``: a restarted executor never
  reuses one) and :meth:`Leases.grant` makes the candidate the holder under it. Until then
  every instance is told ``active`` false.
* A holder keeps its key while it pings: each PING of the holding incarnation renews the lease
  to ``now + lease`` (counted from when the executor *received* the ping; the instance counts
  from when it sent it, so its lease ends first).
* A key is freed only when the holder's lease has run out on this clock and ``guard`` more has
  passed (the longest an ``order_send`` begun under the lease may take to reach the terminal's
  record), or at once on the holder's BYE. A holder that came back with a new incarnation (a
  restart) no longer renews the old lease: the key is freed once that lease and the guard have
  run out. Its new incarnation is a candidate like any other.
* Candidates for a free key are the live instances serving it (heard from within a lease);
  the one that has waited longest (its incarnation's HELLO first) wins.
* The holder is ``synced`` once it has sent SYNCED for the key's current epoch (it has
  reconciled with its terminal): only then does the executor send it orders.

A key's states and moves are the table :data:`TRANSITIONS` (:data:`MACHINE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from protocols.ea.messages import ANY_ACCOUNT, Grant
from protocols.machines import Machine


class KeyState(Enum):
    FREE = "free"  # no holder, no claim
    CLAIMED = "claimed"  # a candidate chosen; its epoch is being made durable
    HELD = "held"  # a holder, reconciling with its terminal
    SYNCED = "synced"  # a holder that reconciled under the key's epoch: it takes orders


class KeyEvent(Enum):
    CLAIM = "claim"  # tick: a free key and a live candidate
    GRANT = "grant"  # the caller made the claim's epoch durable
    DROP = "drop"  # the claimed candidate went away (silent, restarted, BYE) before the grant
    SYNCED = "synced"  # the holder's SYNCED for the key's epoch
    RENEW = "renew"  # a PING of the holding incarnation
    EXPIRE = "expire"  # the holder's lease and the guard ran out
    BYE = "bye"  # the holder stopped cleanly


K, KE = KeyState, KeyEvent
TRANSITIONS: dict[KeyState, dict[KeyEvent, KeyState]] = {
    K.FREE: {KE.CLAIM: K.CLAIMED},
    K.CLAIMED: {KE.GRANT: K.HELD, KE.DROP: K.FREE},
    K.HELD: {KE.SYNCED: K.SYNCED, KE.RENEW: K.HELD, KE.EXPIRE: K.FREE, KE.BYE: K.FREE},
    K.SYNCED: {KE.RENEW: K.SYNCED, KE.EXPIRE: K.FREE, KE.BYE: K.FREE},
}
IGNORED: dict[KeyState, frozenset[KeyEvent]] = {
    K.SYNCED: frozenset({KE.SYNCED}),  # a SYNCED sent again
}
MACHINE: Machine[KeyState, KeyEvent] = Machine("EA lease key", KeyState, KeyEvent, TRANSITIONS,
                                               IGNORED, initial=(K.FREE,),
                                               title="EA lease key (the executor's leases)")


class Holder(NamedTuple):
    instance: str
    epoch: int
    synced: bool


@dataclass(frozen=True, slots=True)
class Claim:
    """``tick``'s choice of ``instance`` for ``key``: grant it once the epoch is durable."""

    key: str
    instance: str
    incarnation: str


@dataclass(slots=True)
class _Instance:
    name: str
    incarnation: str
    keys: tuple[str, ...]
    since: float  # its incarnation's first HELLO: the longest waiting candidate wins
    seen: float  # its last HELLO or PING


@dataclass(slots=True)
class _Key:
    state: KeyState = KeyState.FREE
    epoch: int = 0  # the last epoch granted (0: never)
    instance: str = ""  # the holder, or the claimed candidate
    incarnation: str = ""
    expires: float = 0.0  # the holder's lease on this clock


class Leases:
    """The lease table of one executor (see the module's rules)."""

    def __init__(self, lease_ms: float, guard_ms: float,
                 epochs: Mapping[str, int] | None = None) -> None:
        if not lease_ms > 0 or guard_ms < 0:
            raise ValueError(f"lease_ms {lease_ms!r} must be > 0 and guard_ms {guard_ms!r} >= 0")
        self.lease_s = lease_ms / 1000
        self.guard_s = guard_ms / 1000
        self._instances: dict[str, _Instance] = {}
        self._keys: dict[str, _Key] = {k: _Key(epoch=e) for k, e in (epochs or {}).items()}
        self.takeovers = 0  # grants that moved a key from one instance to another
        self._last: dict[str, str] = {}  # key -> its previous holder (to count takeovers)

    # --- inputs ------------------------------------------------------------------------------

    def hello(self, instance: str, incarnation: str, keys: tuple[str, ...], now: float) -> None:
        """An instance (re)announced itself: a new incarnation is a restarted process."""
        known = self._instances.get(instance)
        if known is None or known.incarnation != incarnation:
            self._instances[instance] = _Instance(instance, incarnation, keys, now, now)
            for key in keys:
                k = self._keys.get(key)
                if k is not None and k.state is KeyState.CLAIMED and k.instance == instance:
                    self._step(k, KeyEvent.DROP)  # the claim was for the old process
        else:
            known.keys, known.seen = keys, now
        for key in keys:
            self._keys.setdefault(key, _Key())

    def ping(self, instance: str, incarnation: str, now: float) -> tuple[Grant, ...]:
        """The grants answering a PING (none for an instance not known under that
        incarnation: it must say HELLO first)."""
        inst = self._instances.get(instance)
        if inst is None or inst.incarnation != incarnation:
            return ()
        inst.seen = now
        grants = []
        for key in inst.keys:
            k = self._keys[key]
            mine = self._holds(k, instance, incarnation)
            if mine:
                k.expires = now + self.lease_s
                self._step(k, KeyEvent.RENEW)
            grants.append(Grant(key, k.epoch, mine))
        return tuple(grants)

    def bye(self, instance: str, incarnation: str, now: float) -> None:
        """A clean stop: the instance's keys are free at once."""
        inst = self._instances.get(instance)
        if inst is None or inst.incarnation != incarnation:
            return
        del self._instances[instance]
        for k in self._keys.values():
            if k.instance == instance and k.incarnation == incarnation:
                if self._holding(k):
                    self._step(k, KeyEvent.BYE)
                elif k.state is KeyState.CLAIMED:
                    self._step(k, KeyEvent.DROP)

    def synced(self, instance: str, key: str, epoch: int) -> bool:
        """The holder reconciled under ``epoch``; False (nothing changes) if it is not the
        key's holder under that epoch."""
        k = self._keys.get(key)
        if k is None or not self._holding(k) or k.instance != instance or k.epoch != epoch:
            return False
        self._step(k, KeyEvent.SYNCED)
        return True

    def tick(self, now: float) -> tuple[Claim, ...]:
        """Free the keys whose holder's lease and guard ran out, and claim every free key for
        its longest-waiting live candidate."""
        claims = []
        for key, k in self._keys.items():
            if self._holding(k) and now >= k.expires + self.guard_s:
                self._step(k, KeyEvent.EXPIRE)
            if k.state is KeyState.CLAIMED and not self._candidate(k.instance, k.incarnation,
                                                                   key, now):
                self._step(k, KeyEvent.DROP)
            if k.state is KeyState.FREE:
                live = [i for i in self._instances.values() if self._serves(i, key, now)]
                if live:
                    best = min(live, key=lambda i: (i.since, i.name))
                    k.instance, k.incarnation = best.name, best.incarnation
                    self._step(k, KeyEvent.CLAIM)
                    claims.append(Claim(key, best.name, best.incarnation))
        self._forget_silent(now)
        return tuple(claims)

    def grant(self, claim: Claim, epoch: int | None = None, now: float | None = None) -> int:
        """Make the claimed candidate the key's holder under ``epoch`` (the durable value;
        None: the last one + 1). Returns the epoch granted, 0 if the claim is void (another
        tick dropped it). The new holder's lease runs from its last ping (``now`` if given
        and later)."""
        k = self._keys.get(claim.key)
        inst = self._instances.get(claim.instance)
        if (k is None or k.state is not KeyState.CLAIMED or k.instance != claim.instance
                or k.incarnation != claim.incarnation or inst is None
                or inst.incarnation != claim.incarnation):
            return 0
        k.epoch = max(k.epoch + 1, epoch or 0)
        k.expires = max(inst.seen, now or 0.0) + self.lease_s
        if self._last.get(claim.key, claim.instance) != claim.instance:
            self.takeovers += 1
        self._last[claim.key] = claim.instance
        self._step(k, KeyEvent.GRANT)
        return k.epoch

    # --- queries -----------------------------------------------------------------------------

    def holder(self, key: str) -> Holder | None:
        k = self._keys.get(key)
        if k is None or not self._holding(k):
            return None
        return Holder(k.instance, k.epoch, k.state is KeyState.SYNCED)

    def key_for(self, account: str) -> str | None:
        """The lease key of ``account``'s orders: its own if an instance names it, else
        ``"*"`` if an instance serves every account, else None (no instance for it)."""
        named = any_account = False
        for inst in self._instances.values():
            named = named or account in inst.keys
            any_account = any_account or ANY_ACCOUNT in inst.keys
        if named:
            return account
        return ANY_ACCOUNT if any_account else None

    def state(self, key: str) -> KeyState:
        k = self._keys.get(key)
        return KeyState.FREE if k is None else k.state

    def epoch(self, key: str) -> int:
        k = self._keys.get(key)
        return 0 if k is None else k.epoch

    @property
    def instances(self) -> int:
        return len(self._instances)

    def holders(self) -> dict[str, str]:
        """Each held key's holder."""
        return {key: k.instance for key, k in self._keys.items() if self._holding(k)}

    def epochs(self) -> dict[str, int]:
        return {key: k.epoch for key, k in self._keys.items()}

    # --- inside ------------------------------------------------------------------------------

    @staticmethod
    def _holding(k: _Key) -> bool:
        return k.state in (KeyState.HELD, KeyState.SYNCED)

    def _holds(self, k: _Key, instance: str, incarnation: str) -> bool:
        return self._holding(k) and k.instance == instance and k.incarnation == incarnation

    def _serves(self, inst: _Instance, key: str, now: float) -> bool:
        return key in inst.keys and now < inst.seen + self.lease_s

    def _candidate(self, instance: str, incarnation: str, key: str, now: float) -> bool:
        inst = self._instances.get(instance)
        return inst is not None and inst.incarnation == incarnation and \
            self._serves(inst, key, now)

    def _forget_silent(self, now: float) -> None:
        """Drop instances silent for ten leases that hold and claim nothing (the table stays
        bounded by the instances alive, not by every process that ever said HELLO)."""
        busy = {k.instance for k in self._keys.values() if k.state is not KeyState.FREE}
        for name in [n for n, i in self._instances.items()
                     if now > i.seen + 10 * self.lease_s and n not in busy]:
            del self._instances[name]

    @staticmethod
    def _step(k: _Key, event: KeyEvent) -> None:
        nxt = MACHINE.step(k.state, event)
        if nxt is not None:
            k.state = nxt


__all__ = ["IGNORED", "MACHINE", "TRANSITIONS", "Claim", "Holder", "KeyEvent", "KeyState",
           "Leases"]
