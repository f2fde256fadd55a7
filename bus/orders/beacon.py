"""A heartbeat that keeps its beat while the event loop is busy, and stops when it is stuck.

Why: the binary-star pair declares its peer dead after ``peer_timeout_ms`` (60 ms) of silence.
Sent from the event loop, a heartbeat is late whenever one loop iteration runs long: in the
Redis failover drill each switch released about a thousand held orders at once, the active
backend's loop was busy for 60-145 ms, and its passive peer took over from a healthy active
(2-5 times a run). Liveness there meant "the loop is idle", not "the node is alive".

Here a thread of its own publishes the beat every ``interval_s``; the event loop only hands it
the current frames and a progress stamp (:meth:`HeartbeatThread.update`). The thread gets the
GIL within the interpreter's switch interval (5 ms) however busy the loop is, so the beat
stays on time through a burst. It is *withheld* once the loop has made no progress for
``stall_budget_s``: a loop that is stuck (a blocking call, an endless loop) must still lose
the active role, just ``stall_budget_s`` later than a dead process does.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from bus.sockets import PEER_PUB, open_socket

__all__ = ["HeartbeatThread"]

log = logging.getLogger(__name__)


class HeartbeatThread:
    """Binds a PUB socket at ``endpoint`` and publishes the latest frames every ``interval_s``
    while the loop's last :meth:`update` is at most ``stall_budget_s`` old.

    The socket is created, used and closed by the thread only (ZeroMQ sockets are not
    thread-safe), in the same libzmq context as the node's other sockets. The constructor
    returns once the socket is bound, and raises :class:`zmq.ZMQError` if it cannot be.
    ``close(linger=0)`` stops it (the name matches a socket's: a test silences a node by
    closing its heartbeat as it would close a socket).
    """

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, *,
                 interval_s: float, stall_budget_s: float, name: str) -> None:
        if not 0 < interval_s < stall_budget_s:
            raise ValueError("need 0 < interval_s < stall_budget_s")
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(ctx.underlying)
        self._endpoint = endpoint
        self.endpoint = endpoint  # once bound, the one it got (a port 0 or * bind: its port)
        self._interval_s = interval_s
        self._budget_s = stall_budget_s
        self._frames: list[bytes] | None = None
        self._progress = time.monotonic()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._error: zmq.ZMQError | None = None
        self.sent = 0
        self.withheld = 0  # beats not sent: the loop had made no progress for too long
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}",
                                        daemon=True)
        self._thread.start()
        self._bound.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def update(self, frames: list[bytes], now: float) -> None:
        """From the event loop: what to publish from now on, and proof that the loop runs.

        ``frames`` is the encoded heartbeat, ``protocols.orders.pair.encode_heartbeat``
        (docs/PROTOCOL.md section 15), encoded by the caller at each update, not at each beat
        here. One attribute each, replaced whole: the thread reads a consistent list."""
        self._frames = frames
        self._progress = now

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self, linger: int = 0) -> None:
        """Stop beating and close the socket (``linger`` is accepted for a socket's
        signature; the socket always closes at once)."""
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        try:
            sock = open_socket(self._ctx, PEER_PUB, bind=self._endpoint)
        except zmq.ZMQError as exc:
            self._error = exc
            self._bound.set()
            return
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._bound.set()
        try:
            while not self._stop.wait(self._interval_s):
                frames = self._frames
                if frames is None:
                    continue
                if time.monotonic() - self._progress > self._budget_s:
                    self.withheld += 1
                    continue
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:  # PUB never blocks; a full pipe drops, as a beat may
                    pass
        finally:
            sock.close()
