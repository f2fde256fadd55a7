"""The EA's tick half: read the terminal's ticks and push them to the feed's EA bridge.

The ``MetaTrader5`` package has no push of ticks: the instance polls ``copy_ticks_from`` every
``[[ea]] poll_ms`` for each symbol, from a cursor (the newest tick time it has read), and
pushes what is new as one batch (docs/PROTOCOL.md section 9). A start backfills: the cursor
begins ``backfill_ms`` back, so the ticks of a restart's downtime are read from the terminal's
history. The feed drops the ones it already published (first copy wins), so a restart costs
no ticks.

A tick the terminal gives that no feed would take (zero or negative prices, a crossed quote,
not a finite number) is counted by reason, logged rate-limited and not pushed; a symbol the
terminal does not quote is counted once per check and skipped.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bus.ea.terminal import Terminal
from bus.logutil import RateLimitedLog
from protocols.ea.mt5 import Tick

log = logging.getLogger(__name__)

MAX_COPY = 5_000  # ticks read per symbol and poll: a backlog is read over several polls
# A saved cursor is where ticks were handed to the socket, not where the feed had them: the
# last ones may have died in the dead process's queue. This much before it is read again
# (what the feed had already is dropped there as a copy).
SAVED_MARGIN_MS = 500


@dataclass(slots=True)
class _Cursor:
    time_msc: int
    seen: set[tuple[float, float, float, float]] = field(default_factory=set)


def bad_tick(t: Tick) -> str | None:
    """Why the terminal's tick ``t`` cannot be pushed, or None."""
    values = (t.bid, t.ask, t.last, t.volume)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return "not a number"
    if t.bid <= 0 or t.ask <= 0:
        return "zero quote"
    if t.bid > t.ask:
        return "crossed quote"
    if t.last < 0 or t.volume < 0:
        return "negative last or volume"
    return None


class TickReader:
    """Reads new ticks of ``symbols`` from a terminal. Called from the terminal's one thread
    only (:meth:`read` does the terminal calls)."""

    def __init__(self, terminal: Terminal, symbols: tuple[str, ...], backfill_ms: float,
                 name: str) -> None:
        self.terminal = terminal
        self.symbols = symbols
        self.backfill_ms = backfill_ms
        self.bad: Counter[str] = Counter()
        self.unknown: set[str] = set()
        self._cursors: dict[str, _Cursor] = {}
        self._log = RateLimitedLog(log, f"ea {name}: tick not pushed")

    def start(self, now_msc: int, saved: dict[str, int] | None = None) -> None:
        """Begin ``backfill_ms`` back (a restart reads its downtime from the history), or
        ``SAVED_MARGIN_MS`` before a cursor the previous process saved, if that is later: a
        restart then reads a few hundred ticks, not seconds of them (47 ms for 3 s at 1,000
        ticks/s here, all of it before the first tick goes out)."""
        start = now_msc - int(self.backfill_ms)
        known = set(self.terminal.symbols())
        self.unknown = {s for s in self.symbols if s not in known}
        for s in sorted(self.unknown):
            self.bad["unknown symbol"] += 1
            self._log.warning("the terminal does not quote %s: skipped", s)
        saved = saved or {}
        self._cursors = {s: _Cursor(max(start, saved.get(s, 0) - SAVED_MARGIN_MS))
                         for s in self.symbols if s not in self.unknown}

    def cursors(self) -> dict[str, int]:
        """The newest tick time read per symbol (saved for the next process's start)."""
        return {s: c.time_msc for s, c in self._cursors.items()}

    def read(self) -> list[dict[str, Any]]:
        """The ticks that are new since the last read, as EA bridge maps."""
        out: list[dict[str, Any]] = []
        for symbol, cur in self._cursors.items():
            for t in self.terminal.copy_ticks_from(symbol, cur.time_msc, MAX_COPY):
                key = (t.bid, t.ask, t.last, t.volume)
                if t.time_msc < cur.time_msc or (t.time_msc == cur.time_msc and key in cur.seen):
                    continue  # read already (the cursor's own millisecond comes again)
                if t.time_msc > cur.time_msc:
                    cur.time_msc, cur.seen = t.time_msc, set()
                cur.seen.add(key)
                why = bad_tick(t)
                if why is not None:
                    self.bad[why] += 1
                    self._log.warning("%s at %d: %s (bid %r ask %r)", symbol, t.time_msc, why,
                                      t.bid, t.ask)
                    continue
                out.append({"symbol": symbol, "bid": t.bid, "ask": t.ask, "last": t.last,
                            "volume": t.volume, "time_msc": t.time_msc})
        return out


__all__ = ["TickReader", "bad_tick"]
