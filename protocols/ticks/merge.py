"""First copy wins across tick *sources* (sans-I/O): two EA instances quoting the same symbols
from the same broker push the same ticks, and the feed must publish each once, in one sequence.

Rules (docs/PROTOCOL.md section 9, "Several producers"):

* A tick carrying its source time (``time_msc`` or ``time_ns``: an MT5 tick's own time, the
  same at every terminal of the broker) is admitted once: the first copy to arrive wins.
* Per symbol the merge keeps the newest source time admitted and the ticks admitted at exactly
  that time. A tick newer than it is admitted (and starts a new set); one at that time is
  admitted unless an equal tick was (symbol, time, bid, ask, last and volume all equal); one
  older is a late copy of what was published already, or of a moment the published stream has
  moved past, and is dropped.
* So a restarted instance may re-send what it sent before it died (it backfills from the
  terminal's tick history: the ticks of its downtime come through, the rest are dropped), and a
  standby's copies of the active's ticks are dropped while the active delivers first.
* The memory is one set per symbol, of the ticks of one millisecond (bounded by ``max_same``:
  a producer sending more distinct ticks in one instant than that has the rest admitted as
  new: it is never a reason to drop a tick).

Two genuinely identical ticks in one millisecond are indistinguishable from two copies of one:
the second is dropped. Ticks without a source time are admitted as they come (the feed stamps
them on arrival: nothing to compare).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[float, float, float, float]  # bid, ask, last, volume


@dataclass(slots=True)
class _Newest:
    time_ns: int
    seen: set[Key] = field(default_factory=set)


class SourceMerge:
    """Admit each tick once across producers (first copy wins)."""

    def __init__(self, max_same: int = 1024) -> None:
        self.max_same = max_same
        self._newest: dict[str, _Newest] = {}
        self.duplicates = 0  # copies dropped: the same tick again
        self.late = 0  # ticks older than the stream's newest: dropped

    def admit(self, symbol: str, time_ns: int, key: Key) -> bool:
        """Whether the tick is published (True) or dropped as a copy or a late tick."""
        newest = self._newest.get(symbol)
        if newest is None or time_ns > newest.time_ns:
            self._newest[symbol] = _Newest(time_ns, {key})
            return True
        if time_ns < newest.time_ns:
            self.late += 1
            return False
        if key in newest.seen:
            self.duplicates += 1
            return False
        if len(newest.seen) < self.max_same:
            newest.seen.add(key)
        return True


__all__ = ["SourceMerge"]
