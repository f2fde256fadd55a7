"""The order client against fake backends: real ZeroMQ ROUTERs on free loopback ports, each run
on its own thread, that record every request and answer with the order codec as told."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import zmq

from bus.orders.client import BlockingOrderClient, OrderClient, OrderClientOptions
from nodes.drills.ports import bind_loopback, free_port
from protocols.backoff import Backoff
from protocols.errors import (
    OrderClientClosed,
    OrderRejected,
    OrderTimeout,
    SlowConsumer,
    TooManyInFlight,
)
from protocols.orders.codec import decode_order_request, encode_order
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    PENDING_AFTER_S,
    PENDING_HOLD_S,
    PENDING_INTERVAL_S,
    CancelOrder,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderPending,
    OrderReject,
    OrderReply,
    OrderRequest,
    OrderType,
    RejectReason,
    ReplaceOrder,
    Side,
)
from tests.support import scaled, wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(30)

Answer = Callable[[OrderRequest], list[OrderReply]]


def ack(req: OrderRequest) -> list[OrderReply]:
    return [OrderAck(req.client_order_id, f"o-{req.client_order_id}", OrderState.ACCEPTED, 1)]


def ack_twice(req: OrderRequest) -> list[OrderReply]:
    return ack(req) * 2


def silent(req: OrderRequest) -> list[OrderReply]:
    return []


def reject(reason: RejectReason) -> Answer:
    def answer(req: OrderRequest) -> list[OrderReply]:
        return [OrderReject(req.client_order_id, reason, "from the fake backend")]
    return answer


def busy_first(hint_ms: int, times: int = 1) -> Answer:
    """BUSY with ``hint_ms`` to the first ``times`` copies of each request, then an ack."""
    seen: dict[str, int] = {}

    def answer(req: OrderRequest) -> list[OrderReply]:
        seen[req.client_order_id] = seen.get(req.client_order_id, 0) + 1
        if seen[req.client_order_id] <= times:
            return [OrderReject(req.client_order_id, RejectReason.BUSY, "at the bound",
                                hint_ms)]
        return ack(req)
    return answer


class FakeBackend:
    """A backend's client ROUTER: records ``(routing id, request)`` (and in ``received_at``
    when, on the monotonic clock) and answers with ``answer(request)``; :meth:`push` sends
    frames to a client (retried until it is connected, as ROUTER_MANDATORY refuses an unknown
    routing id)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[tuple[bytes, OrderRequest]] = []
        self.received_at: list[float] = []
        self._outbox: queue.Queue[list[bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.endpoint = bind_loopback(self._sock)
        self._thread = threading.Thread(target=self._run, name="fake-backend", daemon=True)
        self._thread.start()

    def requests(self) -> list[OrderRequest]:
        return [req for _ident, req in list(self.received)]

    def push(self, ident: bytes, frames: list[bytes]) -> None:
        self._outbox.put([ident, *frames])

    def _run(self) -> None:
        unsent: list[list[bytes]] = []
        while not self._stop.is_set():
            if self._sock.poll(2, zmq.POLLIN):
                ident, *body = self._sock.recv_multipart()
                req = decode_order_request(body)
                self.received_at.append(time.monotonic())
                self.received.append((ident, req))
                for reply in self.answer(req):
                    self._sock.send_multipart([ident, *encode_order(reply)])
            while not self._outbox.empty():
                unsent.append(self._outbox.get())
            for frames in list(unsent):
                try:
                    self._sock.send_multipart(frames, zmq.NOBLOCK)
                    unsent.remove(frames)
                except zmq.ZMQError:  # EHOSTUNREACH: the client is not connected yet
                    pass
        self._sock.close(linger=0)
        self._ctx.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


MakeBackend = Callable[[Answer], FakeBackend]


@pytest.fixture
def backend() -> Iterator[MakeBackend]:
    made: list[FakeBackend] = []

    def make(answer: Answer) -> FakeBackend:
        made.append(FakeBackend(answer))
        return made[-1]

    yield make
    for b in made:
        b.close()


def dead_endpoint() -> str:
    """An endpoint nobody listens on: a port that was free a moment ago (nothing here binds
    it, so the check-then-use race of ``free_port`` can only make it live by accident)."""
    return f"tcp://127.0.0.1:{free_port()}"


def new_order(cid: str = "c-1") -> NewOrder:
    return NewOrder("acct", cid, "EURUSD", Side.BUY, OrderType.LIMIT, 1.0, 1.1, 123)


def report(cid: str, exec_id: str) -> ExecutionReport:
    return ExecutionReport(f"o-{cid}", cid, "acct", "EURUSD", Side.BUY, OrderState.FILLED,
                           1.0, 1.0, 1.1, 1.1, 1, exec_id)


def options(*endpoints: str, **kw: object) -> OrderClientOptions:
    return OrderClientOptions(endpoints=endpoints, **kw)  # type: ignore[arg-type]


async def connected(client: OrderClient) -> None:
    await wait_until(lambda: all(client.connected()), 2, "the client connected to every backend")


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_ack_from_the_first_backend_and_late_duplicate_ignored(backend: MakeBackend) -> None:
    a, b = backend(ack_twice), backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, b.endpoint)) as client:
            await connected(client)
            got = await client.place(new_order())
            assert got == OrderAck("c-1", "o-c-1", OrderState.ACCEPTED, 1)
            await wait_until(lambda: client.stats()["late_replies"] == 1, 2, "the duplicate")
            assert a.requests() == [new_order()] and b.requests() == []
            s = client.stats()
            assert (s["sent"], s["retries"], s["switches"], s["acks"], s["in_flight"]) == \
                (1, 0, 0, 2, 0)
            cancel = CancelOrder("acct", "c-2", "c-1")
            replace = ReplaceOrder("acct", "c-3", "c-1", 2.0, 1.2)
            assert (await client.cancel(cancel)).client_order_id == "c-2"
            assert (await client.replace(replace)).client_order_id == "c-3"
            assert a.requests()[1:] == [cancel, replace]
    run(scenario)


def test_silent_backend_retried_on_the_other_with_the_same_order(backend: MakeBackend) -> None:
    a, b = backend(silent), backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, b.endpoint)) as client:
            await connected(client)
            got = await client.place(new_order())
            assert got.client_order_id == "c-1"
            assert a.received == b.received == [(client.client_id.encode(), new_order())]
            s = client.stats()
            assert (s["sent"], s["retries"], s["switches"], s["timeouts"]) == (2, 1, 1, 1)
            await client.place(new_order("c-2"))  # starts where the last answer came from
            assert len(a.received) == 1 and b.requests()[-1] == new_order("c-2")
    run(scenario)


def test_a_slow_pair_is_not_buried_under_retries(backend: MakeBackend) -> None:
    """The active backend holds a request (e.g. its store is failing over), the other says
    NOT_ACTIVE: each unanswered attempt doubles the wait, so the held request is re-sent a
    handful of times, not every 50 ms. A fast answer afterwards brings the wait back down."""
    a, b = backend(silent), backend(reject(RejectReason.NOT_ACTIVE))

    async def scenario() -> None:
        opts = options(a.endpoint, b.endpoint, deadline_s=1.5,
                       backoff=Backoff(base_s=0.001, cap_s=0.001))
        async with OrderClient(opts) as client:
            await connected(client)
            with pytest.raises(OrderTimeout):
                await client.place(new_order())
            # 50, 100, 200, 400, 800 ms: at most 5-6 attempts at the silent one in 1.5 s
            # (a fixed 50 ms timeout would have made about 28).
            assert 3 <= len(a.received) <= 6, len(a.received)
            assert client.stats()["request_timeout_us"] >= 400_000
    run(scenario)


def test_a_backend_that_says_it_is_working_is_waited_for_not_retried(
        backend: MakeBackend) -> None:
    """OrderPending notices (the backend holds the request, e.g. through a store failover)
    keep the client waiting on that backend without a single resend, however long the wait;
    the answer ends it."""
    a, b = backend(silent), backend(reject(RejectReason.NOT_ACTIVE))

    async def scenario() -> None:
        # A first timeout of 200 ms: the first notice lands inside it even on a loaded machine.
        opts = options(a.endpoint, b.endpoint, deadline_s=5.0, request_timeout_s=0.2)
        async with OrderClient(opts) as client:
            await connected(client)
            placing = asyncio.create_task(client.place(new_order()))
            await wait_until(lambda: len(a.received) == 1, 3, "the request at a")
            ident = a.received[0][0]
            for _ in range(40):  # 1 s of notices, far beyond the client's 50 ms timeout
                a.push(ident, encode_order(OrderPending(1)))
                await asyncio.sleep(PENDING_INTERVAL_S)
            a.push(ident, encode_order(ack(new_order())[0]))
            got = await placing
            assert got.client_order_id == "c-1"
            s = client.stats()
            assert (s["sent"], s["retries"], s["timeouts"]) == (1, 0, 0), s
            assert len(a.received) == 1 and b.received == []
            assert s["pending_notices"] >= 10 and s["held"] >= 1
    run(scenario)


# A backend as its own process: it holds the first request, says so once (when the request is
# old enough for a notice to speak for it), and is then killed by the test.
HOLDING_BACKEND = """
import sys, time, zmq
from protocols.orders.codec import encode_order
from protocols.orders.messages import OrderPending
sock = zmq.Context().socket(zmq.ROUTER)
sock.linger = 0
print(sock.bind_to_random_port("tcp://127.0.0.1"), flush=True)
ident, *_ = sock.recv_multipart()
time.sleep(float(sys.argv[1]))
sock.send_multipart([ident, *encode_order(OrderPending(1))])
time.sleep(60)
"""


def test_a_backend_killed_while_holding_the_request_is_left_after_the_hold(
        backend: MakeBackend) -> None:
    """Notices stop because the backend died (SIGKILL of its process) while holding the
    request: the client goes on to the other backend about PENDING_HOLD_S after the last
    notice, not at its deadline."""
    b = backend(ack)
    holder = subprocess.Popen([sys.executable, "-c", HOLDING_BACKEND, str(PENDING_AFTER_S * 2)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        a_endpoint = f"tcp://127.0.0.1:{int(holder.stdout.readline())}"

        async def scenario() -> None:
            # A first timeout well beyond the notice, which speaks for requests 20 ms old or
            # more.
            opts = options(a_endpoint, b.endpoint, deadline_s=10.0, request_timeout_s=0.3)
            async with OrderClient(opts) as client:
                await connected(client)
                placing = asyncio.create_task(client.place(new_order()))
                await wait_until(lambda: client.stats()["pending_notices"] == 1, 3, "the notice")
                last_notice = time.monotonic()
                os.kill(holder.pid, signal.SIGKILL)
                got = await placing  # from b, after the hold ran out
                waited = time.monotonic() - last_notice
                assert got.client_order_id == "c-1" and len(b.received) == 1
                assert PENDING_HOLD_S * 0.8 <= waited <= scaled(PENDING_HOLD_S + 2.0), waited
                assert client.stats()["held"] >= 1
        run(scenario)
    finally:
        holder.kill()
        holder.wait()


def test_the_wait_comes_back_down_with_fast_answers(backend: MakeBackend) -> None:
    a = backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint)) as client:
            await connected(client)
            client._timer.timed_out()
            client._timer.timed_out()
            assert client.stats()["request_timeout_us"] == 200_000
            await client.place(new_order())  # answered at the first attempt: a sample
            assert client.stats()["request_timeout_us"] == 50_000
    run(scenario)


def test_not_active_switches_and_the_other_ack_wins(backend: MakeBackend) -> None:
    a, b = backend(reject(RejectReason.NOT_ACTIVE)), backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, b.endpoint, request_timeout_s=1.0)) as client:
            await connected(client)
            got = await client.place(new_order())
            assert got.order_id == "o-c-1"  # (timeouts == 0 below: switched without waiting)
            assert a.requests() == b.requests() == [new_order()]
            s = client.stats()
            assert (s["rejects"], s["acks"], s["timeouts"], s["retries"]) == (1, 1, 0, 1)
    run(scenario)


def test_final_reject_raises_without_retry(backend: MakeBackend) -> None:
    a, b = backend(reject(RejectReason.PRICE_BAND)), backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, b.endpoint)) as client:
            await connected(client)
            with pytest.raises(OrderRejected) as info:
                await client.place(new_order())
            assert info.value.reason is RejectReason.PRICE_BAND
            assert info.value.client_order_id == "c-1"
            assert "PRICE_BAND" in str(info.value)
            assert a.requests() == [new_order()] and b.requests() == []
            assert client.stats()["retries"] == 0
    run(scenario)


@pytest.mark.parametrize("kind", ["dead", "silent"])
def test_no_backend_answers_times_out_after_the_deadline(backend: MakeBackend, kind: str) -> None:
    if kind == "dead":
        endpoints = (dead_endpoint(), dead_endpoint())
    else:
        endpoints = (backend(silent).endpoint, backend(silent).endpoint)

    async def scenario() -> None:
        async with OrderClient(options(*endpoints, deadline_s=0.3)) as client:
            if kind == "silent":
                await connected(client)
            t0 = time.monotonic()
            with pytest.raises(OrderTimeout) as info:
                await client.place(new_order())
            elapsed = time.monotonic() - t0
            assert isinstance(info.value, TimeoutError)
            assert info.value.attempts > 2
            assert 0.3 <= info.value.elapsed <= elapsed  # the deadline is honoured
            assert client.stats()["in_flight"] == 0
    run(scenario)


def test_reports_arrive_from_either_backend(backend: MakeBackend) -> None:
    a, b = backend(ack), backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, b.endpoint)) as client:
            await connected(client)
            await client.place(new_order())
            ident = client.client_id.encode()
            a.push(ident, encode_order(report("c-1", "e-1")))
            b.push(ident, encode_order(report("c-1", "e-2")))  # the backend it never used
            async with asyncio.timeout(scaled(2)):
                got = {(await client.next_update()).exec_id for _ in range(2)}
            assert got == {"e-1", "e-2"}
            assert client.stats()["updates"] == 2
    run(scenario)


def test_a_report_sent_again_reaches_the_caller_once(backend: MakeBackend) -> None:
    """A backend that took over sends again the last entry of its predecessor's last orders
    (it may never have been relayed): the same exec id is delivered once."""
    a, b = backend(ack), backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, b.endpoint)) as client:
            ident = client.client_id.encode()
            a.push(ident, encode_order(report("c-1", "e-1")))
            await wait_until(lambda: client.stats()["updates"] == 1, 2, "the report")
            b.push(ident, encode_order(report("c-1", "e-1")))  # again, from the new active
            b.push(ident, encode_order(report("c-1", "e-2")))
            await wait_until(lambda: client.stats()["updates"] == 2, 2, "the next report")
            assert client.stats()["updates_repeated"] == 1
            async with asyncio.timeout(scaled(2)):
                got = [(await client.next_update()).exec_id for _ in range(2)]
            assert got == ["e-1", "e-2"]
    run(scenario)


def test_full_update_queue_drops_the_oldest(backend: MakeBackend) -> None:
    a = backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, updates_queue=2)) as client:
            for i in range(3):
                a.push(client.client_id.encode(), encode_order(report("c-1", f"e-{i}")))
            await wait_until(lambda: client.stats()["updates"] == 3, 2, "three reports")
            assert client.stats()["updates_dropped"] == 1
            got = []
            async for r in client.updates():
                got.append(r.exec_id)
                if len(got) == 2:
                    break
            assert got == ["e-1", "e-2"]
    run(scenario)


def test_malformed_replies_are_counted_and_the_client_carries_on(backend: MakeBackend) -> None:
    a = backend(ack)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint)) as client:
            ident = client.client_id.encode()
            a.push(ident, [b"junk"])
            a.push(ident, [encode_order(new_order())[0][:-1] + b"\xff", b"\x80"])
            a.push(ident, encode_order(new_order()))  # a request is no reply
            await wait_until(lambda: client.stats()["malformed"] == 3, 2, "3 malformed")
            await connected(client)
            assert (await client.place(new_order())).order_id == "o-c-1"
    run(scenario)


def test_one_request_beyond_max_in_flight_is_refused(backend: MakeBackend) -> None:
    a = backend(silent)

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, max_in_flight=2)) as client:
            await connected(client)
            tasks = [asyncio.create_task(client.place(new_order(f"c-{i}"))) for i in range(2)]
            await wait_until(lambda: client.stats()["in_flight"] == 2, 2, "2 in flight")
            with pytest.raises(TooManyInFlight) as info:
                await client.place(new_order("c-9"))
            assert isinstance(info.value, SlowConsumer)
            assert (info.value.in_flight, info.value.limit) == (2, 2)
            assert "2 requests in flight, limit 2" in str(info.value)
        for t in tasks:  # closing the client failed them
            with pytest.raises(OrderClientClosed):
                await t
    run(scenario)


def test_close_fails_a_pending_request_and_leaves_no_task(backend: MakeBackend) -> None:
    a = backend(silent)

    async def scenario() -> None:
        client = OrderClient(options(a.endpoint, deadline_s=10.0))
        await client.start()
        await connected(client)
        task = asyncio.create_task(client.place(new_order()))
        await wait_until(lambda: len(a.received) >= 1, 2, "the request sent")
        await client.close()
        with pytest.raises(OrderClientClosed) as info:
            await task
        assert info.value.client_order_id == "c-1"
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert client.stats()["in_flight"] == 0
        with pytest.raises(OrderClientClosed):
            await client.place(new_order("c-2"))
        with pytest.raises(OrderClientClosed):
            await client.next_update()
    run(scenario)


def test_blocking_client_places_and_reads_reports(backend: MakeBackend) -> None:
    a, b = backend(silent), backend(ack)
    opts = options(a.endpoint, b.endpoint, client_id="desk-7")
    with BlockingOrderClient(opts) as client:
        assert client.client_id == "desk-7"
        wait_until_sync(lambda: all(client.connected()), 2, "connected")
        got = client.place(new_order(), timeout=scaled(2))
        assert got.client_order_id == "c-1"
        assert b.received == [(b"desk-7", new_order())]
        b.push(b"desk-7", encode_order(report("c-1", "e-1")))
        assert client.next_update(timeout=scaled(2)).exec_id == "e-1"
        with pytest.raises(TimeoutError):
            client.next_update(timeout=0.05)
        assert client.stats()["retries"] == 1
    with pytest.raises(OrderClientClosed):
        asyncio.run(OrderClient(opts).place(new_order()))  # never started


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="endpoints"):
        OrderClientOptions(endpoints=())
    with pytest.raises(ValueError, match="client_id"):
        options("tcp://127.0.0.1:1", client_id="\x00x")
    with pytest.raises(ValueError, match="max_in_flight"):
        options("tcp://127.0.0.1:1", max_in_flight=0)
    assert options("tcp://127.0.0.1:1").backoff == Backoff(0.01, 0.5)
    assert OrderClient(options("x")).client_id != OrderClient(options("x")).client_id


# --- BUSY: honoured on the same backend, after the hint, with jitter ----------------------------


def test_busy_is_resent_to_the_same_backend_after_the_hint(backend: MakeBackend) -> None:
    """BUSY means "active, overloaded": the same request goes to the same backend again after
    at least the hint, never to the other one, and it is no timeout for the adaptive wait."""
    a, b = backend(busy_first(100)), backend(ack)

    async def scenario() -> None:
        # A first timeout of 1 s: a BUSY late on a loaded machine is still an answer in time.
        opts = options(a.endpoint, b.endpoint, request_timeout_s=1.0, max_request_timeout_s=4.0)
        async with OrderClient(opts) as client:
            await connected(client)
            got = await client.place(new_order())
            assert got == ack(new_order())[0]
            assert a.requests() == [new_order(), new_order()] and b.received == []
            assert a.received_at[1] - a.received_at[0] >= 0.1  # the hint, at least
            s = client.stats()
            assert (s["busy"], s["retries"], s["switches"], s["timeouts"], s["sent"]) == \
                (1, 1, 0, 0, 2), s
            assert s["request_timeout_us"] == 1_000_000  # not backed off: BUSY is an answer
            await client.place(new_order("c-2"))  # the busy one is the active one
            assert b.received == []
    run(scenario)


def test_many_busy_requests_come_back_spread_out(backend: MakeBackend) -> None:
    """Twenty requests refused together with the same hint are resent over 1..1.5 x the hint,
    not in lockstep."""
    a = backend(busy_first(100))

    async def scenario() -> None:
        async with OrderClient(options(a.endpoint, request_timeout_s=1.0)) as client:
            await connected(client)
            acks = await asyncio.gather(*(client.place(new_order(f"c-{i}"))
                                          for i in range(20)))
            assert len(acks) == 20 and client.stats()["busy"] == 20
    run(scenario)
    first: dict[str, float] = {}
    delays: list[float] = []
    for (_ident, req), at in zip(list(a.received), list(a.received_at), strict=True):
        if req.client_order_id in first:
            delays.append(at - first[req.client_order_id])
        else:
            first[req.client_order_id] = at
    assert len(delays) == 20
    assert min(delays) >= 0.1, delays
    # 20 uniform draws over 50 ms: their range is under 15 ms with probability < 1e-9
    assert max(delays) - min(delays) >= 0.015, sorted(delays)


@pytest.mark.parametrize("max_busy_resends", [None, 0])
def test_busy_until_the_deadline_ends_with_the_busy_reject(
        backend: MakeBackend, max_busy_resends: int | None) -> None:
    """A backend BUSY to the end: the request ends in OrderRejected carrying the BUSY reject
    (retryable), at the deadline or once the resends are used up: an overload, told apart
    from a dead pair (OrderTimeout). The passive backend is never asked."""
    a, b = backend(busy_first(50, times=1_000)), backend(ack)

    async def scenario() -> None:
        opts = options(a.endpoint, b.endpoint, deadline_s=0.5, request_timeout_s=1.0,
                       max_busy_resends=max_busy_resends)
        async with OrderClient(opts) as client:
            await connected(client)
            t0 = time.monotonic()
            with pytest.raises(OrderRejected) as info:
                await client.place(new_order())
            elapsed = time.monotonic() - t0
            assert not isinstance(info.value, OrderTimeout)
            assert info.value.reason is RejectReason.BUSY and info.value.reject.retryable
            assert info.value.reject.retry_after_ms == 50
            assert b.received == []
            s = client.stats()
            assert s["timeouts"] == 0 and s["in_flight"] == 0
            if max_busy_resends is None:
                assert elapsed >= 0.5 and s["busy_deadline"] == 1
                # resent every 50-75 ms: 7-11 copies in 0.5 s, fewer on a slow machine
                assert 3 <= len(a.received) <= 11, len(a.received)
            else:
                assert elapsed < 0.5 and len(a.received) == 1 and s["busy_deadline"] == 0
    run(scenario)


def busy_then_silent(req: OrderRequest) -> list[OrderReply]:
    """BUSY to a request's first copy, then nothing (a backend at its bound that stays slow)."""
    first = req.client_order_id not in _seen_busy
    _seen_busy.add(req.client_order_id)
    return [OrderReject(req.client_order_id, RejectReason.BUSY, "at the bound", 20)] \
        if first else []


_seen_busy: set[str] = set()


@pytest.mark.parametrize(("request_timeout_s", "outcome"), [(1.0, "busy"), (0.05, "timeout")])
def test_a_deadline_that_cuts_the_wait_after_busy_is_busy_a_silence_after_it_a_timeout(
        backend: MakeBackend, request_timeout_s: float, outcome: str) -> None:
    """The resend after a BUSY is still unanswered when the deadline comes: still an overload
    (OrderRejected, BUSY), however late the machine is. A resend that timed out first (its
    own request timeout) leaves the request to the ordinary timeout (OrderTimeout)."""
    _seen_busy.clear()
    a, b = backend(busy_then_silent), backend(silent)

    async def scenario() -> None:
        opts = options(a.endpoint, b.endpoint, deadline_s=0.4,
                       request_timeout_s=request_timeout_s)
        async with OrderClient(opts) as client:
            await connected(client)
            with pytest.raises((OrderRejected, OrderTimeout)) as info:
                await client.place(new_order())
            if outcome == "busy":
                assert isinstance(info.value, OrderRejected)
                assert not isinstance(info.value, OrderTimeout)
                assert info.value.reason is RejectReason.BUSY
                assert client.stats()["busy_deadline"] == 1
            else:
                assert isinstance(info.value, OrderTimeout)
    run(scenario)


def test_busy_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_busy_resends"):
        options("tcp://127.0.0.1:1", max_busy_resends=-1)


# --- batches ----------------------------------------------------------------------------------


def test_a_burst_of_200_in_flight_is_sent_and_read_in_batches(backend: MakeBackend) -> None:
    """200 requests started together go out in one loop iteration; their answers, queued at
    the client together, are drained several per reader wake-up; every request is answered."""
    a = backend(silent)

    async def scenario() -> None:
        opts = options(a.endpoint, request_timeout_s=5.0, max_request_timeout_s=5.0,
                       deadline_s=10.0)
        async with OrderClient(opts) as client:
            await connected(client)
            placing = asyncio.gather(*(client.place(new_order(f"c-{i}")) for i in range(200)))
            await wait_until(lambda: len(a.received) == 200, 5, "200 requests at the backend")
            s = client.stats()
            assert (s["sent"], s["retries"]) == (200, 0) and s["send_batches"] <= 2, s
            ident = client.client_id.encode()
            for req in a.requests():
                a.push(ident, encode_order(ack(req)[0]))
            acks = await placing
            assert [x.client_order_id for x in acks] == [f"c-{i}" for i in range(200)]
            s = client.stats()
            assert s["acks"] == s["read_messages"] == 200, s
            assert s["read_batch_max"] > 1 and s["read_batches"] < 200, s
    run(scenario)
