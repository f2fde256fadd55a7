"""An EA instance's pings and leases, on a thread of their own (docs/PROTOCOL.md 18.2).

Why a thread: a lease runs 100 ms from the ping it answers. The instance's event loop is
busy at exactly the moments the lease matters: a burst of EXECUTEs after a takeover, a
reconciliation's facts. On two cores shared with the whole mesh, pings from that loop came
late often enough that leases lapsed. Every lapse gave the account a new epoch, so a new
reconciliation, so another burst, and the drill saw leases flap for seconds. The pattern is
the backend pair's heartbeat thread (``bus.orders.beacon``): pings go on while the loop is
busy, but only while it still makes progress. A loop stuck longer than ``stall_budget_s``
stops the pings, and its lease then runs out as it should.

The thread owns a DEALER of its own (routing id ``{name}~beat``): the executor answers a
PING where it came from. HELLO, orders and facts stay on the trade socket. The fence itself
is unchanged: the loop checks :meth:`LeaseHolder.may_send` (under :attr:`LeaseBeat.lock`)
before every ``order_send``, and a lease still runs from the ping it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import zmq

from bus.logutil import RateLimitedLog
from bus.sockets import EA_TRADE, open_socket
from protocols.ea.holder import LeaseHolder
from protocols.ea.messages import Lease, Ping, decode_ea, encode_ea
from protocols.errors import RemoteProtocolError

log = logging.getLogger(__name__)

REHELLO_S = 0.5  # no LEASE this long: the executor may not know us (restarted): HELLO again

# (keys gained with their epochs, keys lost, the executor asks for a HELLO)
OnChange = Callable[[list[tuple[str, int]], list[str], bool], None]


class LeaseBeat:
    """Pings every ``heartbeat_s`` from a thread while the loop makes progress."""

    def __init__(self, endpoint: str, name: str, incarnation: str, holder: LeaseHolder, *,
                 heartbeat_s: float, stall_budget_s: float, on_change: OnChange,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint, self.name, self.incarnation = endpoint, name, incarnation
        self.holder = holder
        self.lock = threading.Lock()  # every use of ``holder``, on either thread
        self.heartbeat_s, self.stall_budget_s = heartbeat_s, stall_budget_s
        self.on_change, self.loop = on_change, loop
        self.pings = 0
        self.skipped = 0  # pings not sent: the loop had made no progress for the budget
        self.malformed = 0
        self._progress = time.monotonic()
        self._last_lease = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{name}", daemon=True)
        self._bad = RateLimitedLog(log, f"ea {name}: malformed lease")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def progress(self) -> None:
        """The loop is alive (called from it every heartbeat)."""
        self._progress = time.monotonic()

    def _notify(self, gained: list[tuple[str, int]], lost: list[str], hello: bool) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the node is stopping
            self.loop.call_soon_threadsafe(self.on_change, gained, lost, hello)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = open_socket(ctx, EA_TRADE, connect=(self.endpoint,),
                           routing_id=f"{self.name}~beat".encode())
        try:
            due = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= due:
                    self._beat(sock, now)
                    due = now + self.heartbeat_s
                if sock.poll(max(0, int((due - time.monotonic()) * 1000))):
                    self._take(sock.recv_multipart())
        finally:
            sock.close(linger=0)
            ctx.term()

    def _beat(self, sock: zmq.Socket[bytes], now: float) -> None:
        with self.lock:
            lost = self.holder.expire(now)
        if lost:
            log.warning("ea %s: lease on %s ran out", self.name, ", ".join(lost))
            self._notify([], lost, False)
        if now - self._last_lease > REHELLO_S:
            self._last_lease = now
            self._notify([], [], True)
        if now - self._progress > self.stall_budget_s:
            self.skipped += 1  # a stuck loop must lose its lease, not keep it by our pings
            return
        with self.lock:
            n = self.holder.ping(now)
        with contextlib.suppress(zmq.Again):
            sock.send_multipart(encode_ea(Ping(self.name, self.incarnation, n)), zmq.NOBLOCK)
            self.pings += 1

    def _take(self, frames: list[bytes]) -> None:
        try:
            msg = decode_ea(frames)
        except RemoteProtocolError as exc:
            self.malformed += 1
            self._bad.warning("%s", exc)
            return
        if not isinstance(msg, Lease):
            self.malformed += 1
            self._bad.warning("%s on the lease socket", type(msg).__name__)
            return
        now = time.monotonic()
        self._last_lease = now
        if not msg.grants:  # the executor does not know us (it restarted): HELLO again
            self._notify([], [], True)
            return
        with self.lock:
            gained, lost = self.holder.on_lease(msg, now)
        if gained or lost:
            self._notify(gained, lost, False)


__all__ = ["LeaseBeat"]
