"""bus.orders.beacon.HeartbeatThread over real ZeroMQ sockets: on time while the loop is busy,
withheld once it is stuck, a clear error when it cannot bind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from bus.orders.beacon import HeartbeatThread
from tests.support import wait_until_sync


class Receiver:
    """A SUB socket on its own thread, keeping the arrival time of every beat."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.setsockopt(zmq.RCVTIMEO, 20)
        self._sock.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sock.recv_multipart()
            except zmq.Again:
                continue
            self.arrivals.append(time.monotonic())

    def between(self, start: float, end: float) -> list[float]:
        return [t for t in self.arrivals if start <= t <= end]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()


def _wait_for_beats(receiver: Receiver, count: int, timeout: float = 5.0) -> None:
    wait_until_sync(lambda: len(receiver.arrivals) >= count, timeout, f"{count} heartbeats")


def test_beats_keep_time_while_the_loop_is_busy_and_stop_once_it_is_stuck(
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    beacon = HeartbeatThread(ctx, "tcp://127.0.0.1:*", interval_s=0.02, stall_budget_s=0.3,
                             name="t")
    receiver = Receiver(ctx, beacon.endpoint)
    try:
        beacon.update([b"active", b"1"], time.monotonic())
        _wait_for_beats(receiver, 3)  # the subscription is up
        # The loop is busy: no update for 200 ms, within the budget. The beat goes on.
        busy_from = time.monotonic()
        time.sleep(0.2)  # the time under test: a busy loop that stamps nothing for 200 ms
        busy = receiver.between(busy_from, time.monotonic())
        assert len(busy) >= 3, busy  # about ten at 20 ms
        # Now stuck past the budget: beats stop about 0.3 s after the last stamp (a margin
        # for a late receiver thread on a loaded machine).
        time.sleep(0.8)  # the time under test: no beat may arrive in it
        stuck_from = busy_from + 0.3 + 0.2
        assert receiver.between(stuck_from, time.monotonic()) == []
        assert beacon.withheld > 0
        # Progress again: beats resume.
        beacon.update([b"active", b"1"], time.monotonic())
        resumed = len(receiver.arrivals)
        _wait_for_beats(receiver, resumed + 2)
    finally:
        receiver.close()
        beacon.close()
    assert beacon.closed and beacon.sent >= 5


def test_an_endpoint_in_use_is_a_bind_error_at_once(
        ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    first = HeartbeatThread(ctx, "tcp://127.0.0.1:*", interval_s=0.02, stall_budget_s=0.3,
                            name="a")
    try:
        with pytest.raises(zmq.ZMQError):
            HeartbeatThread(ctx, first.endpoint, interval_s=0.02, stall_budget_s=0.3, name="b")
    finally:
        first.close()


def test_the_budget_must_exceed_the_interval(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    with pytest.raises(ValueError, match="stall_budget_s"):
        HeartbeatThread(ctx, "tcp://127.0.0.1:1", interval_s=0.3, stall_budget_s=0.2,
                        name="c")
