"""What a gateway keeps of each stream so that every client reads it by a cursor (sans-I/O).

Rules (docs/GATEWAY.md, sections 4 and 5):

* A client holds, per stream, a **cursor**: the ``seq`` of the last item it was sent. Each flush
  it gets the items above its cursor, and its cursor moves to the newest. A live client, a slow
  one and one resuming after a reconnect are the same case: a slow client simply gets fewer,
  newer frames (conflation by construction), and the gateway buffers nothing per client.
* A trail holds the items above its ``floor``, all of them: a cursor at or above the floor is
  served exactly (every item above it, once, in order); a cursor below it gets ``None``, and
  the caller sends a snapshot with ``reset``.
* :class:`BarTrail` keeps the closed bars of one bars stream (at most ``count``, none closed
  longer ago than ``keep_ns``) and the forming bar; an item is a bar's latest state, ``seq``
  its last tick's sequence number. Evicting a bar raises the floor to its ``last_seq``.
* Order writes are held by the gateway's order desk (``protocols.gateway.orders.RecentWrites``,
  seq = the order store's history-stream position); a cursor is served its accounts' items.
* :class:`LatestValue` is a stream whose item replaces the previous one (ticks, status).
* Items are JSON fragments encoded once (:mod:`protocols.gateway.wire`), shared by every client.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from protocols.history.bars import Bar

__all__ = ["BarTrail", "LatestValue"]


class BarTrail:
    """The recent states of one ``bars:{SYMBOL}:{RES}`` stream."""

    def __init__(self, encode: Callable[[Bar, bool], str], count: int, keep_ns: int) -> None:
        self._encode = encode
        self._count = count
        self._keep_ns = keep_ns
        self._closed: deque[tuple[int, Bar, str]] = deque()  # (closed at, bar, item)
        self.floor = 0  # every bar whose last_seq is above it is held (closed or forming)
        self._forming: Bar | None = None
        self._forming_item: str | None = None

    @property
    def head(self) -> int:
        """The seq of the newest item (the floor when there is none)."""
        if self._forming is not None:
            return self._forming.last_seq
        return self._closed[-1][1].last_seq if self._closed else self.floor

    def seed(self, closed: list[Bar], floor: int, now_ns: int) -> None:
        """Start from the store's bars: ``closed`` in time order, every bar above ``floor``."""
        self._closed.clear()
        self.floor = floor
        for bar in closed:
            self._closed.append((now_ns, bar, self._encode(bar, True)))
        self._trim(now_ns)

    def on_closed(self, bar: Bar, now_ns: int) -> None:
        if self._forming is not None and self._forming.start_ns == bar.start_ns:
            self._forming, self._forming_item = None, None
        self._closed.append((now_ns, bar, self._encode(bar, True)))
        self._trim(now_ns)

    def set_forming(self, bar: Bar | None) -> None:
        if bar is None or (self._forming is not None
                           and bar.last_seq == self._forming.last_seq
                           and bar.start_ns == self._forming.start_ns):
            return
        self._forming, self._forming_item = bar, None

    def forming(self) -> Bar | None:
        return self._forming

    def closed_bars(self) -> list[Bar]:
        """The closed bars held, oldest first."""
        return [bar for _, bar, _ in self._closed]

    def since(self, seq: int) -> list[str] | None:
        """The items above ``seq``, oldest first; None if the trail no longer holds them all."""
        if seq < self.floor:
            return None
        out: list[str] = []
        for _, bar, item in reversed(self._closed):
            if bar.last_seq <= seq:
                break
            out.append(item)
        out.reverse()
        if self._forming is not None and self._forming.last_seq > seq:
            out.append(self._forming_encoded(self._forming))
        return out

    def snapshot(self, count: int) -> list[str]:
        """The last ``count`` closed bars and the forming one: what a new chart loads."""
        items = [item for _, _, item in list(self._closed)[-count:]]
        if self._forming is not None:
            items.append(self._forming_encoded(self._forming))
        return items

    def _forming_encoded(self, bar: Bar) -> str:
        if self._forming_item is None:  # encoded once per state, when a client first needs it
            self._forming_item = self._encode(bar, False)
        return self._forming_item

    def _trim(self, now_ns: int) -> None:
        while self._closed and (len(self._closed) > self._count
                                or self._closed[0][0] < now_ns - self._keep_ns):
            self.floor = max(self.floor, self._closed.popleft()[1].last_seq)


class LatestValue:
    """A stream whose newest item is all a client needs (a tick, the mesh status)."""

    __slots__ = ("_item", "_make", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self._item: str | None = None
        self._make: Callable[[], str] | None = None

    def set(self, seq: int, make: Callable[[], str]) -> None:
        """The newest value is ``seq``; ``make`` encodes it when a client first needs it."""
        if seq > self.seq:
            self.seq, self._item, self._make = seq, None, make

    def since(self, seq: int) -> str | None:
        if self.seq <= seq or self._make is None:
            return None
        if self._item is None:
            self._item = self._make()
        return self._item
