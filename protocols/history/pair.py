"""The historian's view of one history server: live, down (its rows spool), or catching up.

ClickHouse has no primary/backup of its own: two servers with plain MergeTree tables are two
databases. The historian writes every batch to each server independently (REFERENCES.md
section 4, the kdb+ pattern), and this machine says, per server, where its rows go:

- **LIVE**: batches are inserted into the server directly.
- **DOWN**: an insert failed or the server stopped answering. Its batches go to the spool (a
  DuckDB file the historian owns) *before* anything else is written, so whatever the server
  misses is durable first. The server is probed with back-off.
- **RESYNC**: a probe answered. The server's own watermarks are read, and the spool's rows
  above them are copied a chunk at a time (atomic inserts), between live batches so the live
  server never waits for it. New batches keep going to the spool meanwhile; when a copy has
  taken everything the spool held above the server's marks, it is LIVE again.

An insert whose reply was lost has an unknown outcome; the server's watermarks, read again
when it returns, say what it holds, so a row is neither lost nor written twice.

Transitions (``state -> event -> next``)::

    LIVE    --failed-->    DOWN
    DOWN    --probed-->    RESYNC
    DOWN    --failed-->    DOWN      (a probe failed: back off)
    RESYNC  --caught_up--> LIVE
    RESYNC  --failed-->    DOWN
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocols.backoff import Backoff
from protocols.errors import IllegalTransition

__all__ = ["Link", "LinkEvent", "ServerLink"]


# Probes of a DOWN server: 50 ms doubling to 0.5 s, so a restarted server (ready in about
# 0.3 s here) is found within half a second of answering.
PROBE_BACKOFF = Backoff(base_s=0.05, cap_s=0.5)


class Link(Enum):
    LIVE = "live"
    DOWN = "down"
    RESYNC = "resync"


class LinkEvent(Enum):
    FAILED = "failed"
    PROBED = "probed"
    CAUGHT_UP = "caught_up"


TRANSITIONS: dict[Link, dict[LinkEvent, Link]] = {
    Link.LIVE: {LinkEvent.FAILED: Link.DOWN},
    Link.DOWN: {LinkEvent.PROBED: Link.RESYNC, LinkEvent.FAILED: Link.DOWN},
    Link.RESYNC: {LinkEvent.CAUGHT_UP: Link.LIVE, LinkEvent.FAILED: Link.DOWN},
}


@dataclass(slots=True)
class ServerLink:
    """One server's link state, when to probe it next, and what it cost (for the drill)."""

    name: str
    state: Link = Link.LIVE
    failures: int = 0  # consecutive failed probes (the back-off's input)
    next_probe: float = 0.0
    down_since: float = 0.0
    resync_since: float = 0.0
    downs: int = 0
    last_resync_s: float = 0.0  # how long its last catch-up took (RESYNC -> LIVE)
    backoff: Backoff = PROBE_BACKOFF

    @property
    def direct(self) -> bool:
        """True when live batches are inserted into the server itself (else spooled)."""
        return self.state is Link.LIVE

    def on(self, event: LinkEvent, now: float, rand: float = 0.0) -> Link:
        """Apply ``event`` at ``now`` and return the new state (``rand`` in [0, 1): the
        back-off's jitter draw)."""
        nxt = TRANSITIONS[self.state].get(event)
        if nxt is None:
            raise IllegalTransition("history server link", self.state, event)
        if event is LinkEvent.FAILED:
            if self.state is Link.DOWN:
                self.failures += 1
            else:
                self.failures = 0
                self.downs += 1
                self.down_since = now
            self.next_probe = now + self.backoff.compute(self.failures, rand)
        elif event is LinkEvent.PROBED:
            self.resync_since = now
        elif event is LinkEvent.CAUGHT_UP:
            self.last_resync_s = now - self.resync_since
            self.failures = 0
        self.state = nxt
        return nxt

    def probe_due(self, now: float) -> bool:
        return self.state is Link.DOWN and now >= self.next_probe
