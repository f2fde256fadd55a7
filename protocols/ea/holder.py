"""An EA instance's side of the leases (sans-I/O; docs/PROTOCOL.md section 18.2).

The instance pings; the executor answers each ping ``n`` with a LEASE. A lease on a key runs
from the moment the instance *sent* ping ``n`` for ``valid_ms``, by the instance's own
monotonic clock (the executor counts from when it received the ping, later: the instance's
lease always ends first). :meth:`LeaseHolder.may_send` is the fence: no ``order_send`` for a key
without at least ``guard_s`` of lease left.

A grant under a higher epoch than the instance held (or a first one) makes it the key's new
holder: :meth:`on_lease` returns it, and the caller reconciles before it takes orders
(:meth:`synced` then marks the epoch ready). Times are seconds of any monotonic origin.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from protocols.ea.messages import Lease

MAX_PINGS = 64  # pings remembered while their answers are outstanding


@dataclass(slots=True)
class _Held:
    epoch: int
    until: float  # the lease ends (instance clock)
    synced: bool = False


class LeaseHolder:
    """The leases one instance holds, by key."""

    def __init__(self, keys: tuple[str, ...], guard_s: float) -> None:
        self.keys = keys
        self.guard_s = guard_s
        self._sent: OrderedDict[int, float] = OrderedDict()  # ping n -> when it was sent
        self._held: dict[str, _Held] = {}
        # The epoch each key was last reconciled under: a lease that lapsed on this clock and
        # comes back under the *same* epoch had no other holder in between (the executor
        # moves an epoch on at every change of holder), so it needs no new reconciliation.
        self._synced: dict[str, int] = {}
        self._n = 0

    def ping(self, now: float) -> int:
        """The number of the next ping, sent at ``now``."""
        self._n += 1
        self._sent[self._n] = now
        while len(self._sent) > MAX_PINGS:
            self._sent.popitem(last=False)
        return self._n

    def on_lease(self, lease: Lease, now: float) -> tuple[list[tuple[str, int]], list[str]]:
        """Take a LEASE: (keys newly held with their epoch: reconcile them; keys lost)."""
        sent = self._sent.get(lease.n)
        if sent is None:  # an answer to a ping forgotten: too old to extend anything
            return [], []
        for n in [k for k in self._sent if k <= lease.n]:
            del self._sent[n]
        until = sent + lease.valid_ms / 1000
        gained: list[tuple[str, int]] = []
        lost: list[str] = []
        for grant in lease.grants:
            held = self._held.get(grant.key)
            if not grant.active:
                if held is not None:
                    del self._held[grant.key]
                    lost.append(grant.key)
                continue
            if held is None or grant.epoch > held.epoch:
                again = self._synced.get(grant.key) == grant.epoch
                self._held[grant.key] = _Held(grant.epoch, until, synced=again)
                if not again:
                    gained.append((grant.key, grant.epoch))
            elif grant.epoch == held.epoch:
                held.until = max(held.until, until)
        return gained, lost

    def synced(self, key: str, epoch: int) -> None:
        held = self._held.get(key)
        if held is not None and held.epoch == epoch:
            held.synced = True
            self._synced[key] = epoch

    def lapsed(self, key: str, epoch: int) -> bool:
        """Whether ``key`` was reconciled under ``epoch`` and its lease ran out on this clock
        (it may come back under the same epoch at the next answer)."""
        return key not in self._held and self._synced.get(key) == epoch

    def epoch(self, key: str) -> int:
        """The epoch the instance holds ``key`` under (0: it does not)."""
        held = self._held.get(key)
        return 0 if held is None else held.epoch

    def live(self, key: str, now: float) -> bool:
        held = self._held.get(key)
        return held is not None and now < held.until

    def may_send(self, key: str, epoch: int, now: float) -> bool:
        """The fence: hold ``key`` under ``epoch``, reconciled, with ``guard_s`` left."""
        held = self._held.get(key)
        return (held is not None and held.epoch == epoch and held.synced
                and now + self.guard_s < held.until)

    def is_synced(self, key: str, epoch: int) -> bool:
        held = self._held.get(key)
        return held is not None and held.epoch == epoch and held.synced

    def expire(self, now: float) -> list[str]:
        """Drop leases that ran out (the executor may give them away): the keys lost."""
        gone = [k for k, h in self._held.items() if now >= h.until]
        for k in gone:
            del self._held[k]
        return gone

    @property
    def held(self) -> dict[str, int]:
        return {k: h.epoch for k, h in self._held.items()}


__all__ = ["LeaseHolder"]
