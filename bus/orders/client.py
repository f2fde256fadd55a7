"""The order client: requests to a binary-star backend pair, retried until a final answer.

    async with OrderClient(OrderClientOptions(endpoints=("tcp://a:7400", "tcp://b:7400"))) as c:
        ack = await c.place(NewOrder(...))
        async for report in c.updates():
            ...

Rules (docs/ORDERS.md, "Client retries"):

* One DEALER per backend, all with the same ``ROUTING_ID`` (given, or generated once per
  client), so the client picks the backend of each attempt and a backend's reports reach it
  whichever one is active. ``IMMEDIATE`` keeps a send from queueing for a backend that is not
  connected: such an attempt fails at once.
* A request is sent to the backend that last answered. No answer within the request timeout,
  or a retryable reject (NOT_ACTIVE, STORE_UNAVAILABLE, FENCED), moves it to the next backend
  at once; after a full round of failures the client backs off (``Backoff``, jittered) first.
  The timeout adapts (``protocols.backoff.RequestTimer``, RFC 6298): ``request_timeout_s`` while
  the backends answer fast, more when they are slow, doubled after each timeout up to
  ``max_request_timeout_s``, so a slow backend is not buried under retries.
  Every attempt sends the *same* message: the backend's idempotency check by
  ``(account, client_order_id)`` turns a retry into the stored state, never a second order.
* An ``OrderPending`` notice from a backend ("your requests are in service, answers follow")
  holds the requests sent there ``PENDING_AFTER_S`` ago or more: the client waits on without
  re-sending them, until ``PENDING_HOLD_S`` pass without a notice (then as a timeout).
* A BUSY reject ("active, at its admission bound") is honoured, not failed over: the client
  resends the same request *to the same backend* after the reject's ``retry_after_ms`` hint,
  drawn from 1..1.5 x the hint so that requests refused together come back spread out
  (``protocols.backoff.RetryAfter``; no hint: the ``backoff`` policy). It is no timeout and no
  sample for the adaptive timeout (Karn), and it does not count towards a round. If the
  deadline passes during such a wait, or after ``max_busy_resends`` resends, the request ends
  with :class:`OrderRejected` carrying the BUSY reject (``reason`` BUSY, retryable): an
  overload is told apart from a dead pair (:class:`OrderTimeout`). Other answers that arrive
  during the wait count as usual (an ack ends it), retryable ones are absorbed.
* An ack from any backend ends the request; so does a non-retryable reject
  (:class:`OrderRejected`). After ``deadline_s`` it ends with :class:`OrderTimeout`. A
  retryable reject from a backend the request has already left is stale and ignored.
* Batches: sends go out synchronously (no await between the requests started in one
  loop iteration), and each wake-up of a reader drains every reply already queued (up to
  ``READ_BATCH``) before it yields; at low load a batch is one message, so nothing waits to
  fill one.
* Requests in flight are bounded (``max_in_flight``): one more raises
  :class:`TooManyInFlight` at once. Execution reports go to a bounded queue; when it is full
  the oldest report is dropped and counted (``updates_dropped``). A report whose exec id was
  delivered lately (a backend that took over sends again what its predecessor may not have
  sent) is dropped and counted (``updates_repeated``).
* Malformed replies are counted and logged (rate-limited); the readers carry on.

:class:`BlockingOrderClient` runs the same client on its own event-loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import zmq
import zmq.asyncio

from bus.aio import LoopThread, cancel_and_wait
from bus.config import MeshConfig
from bus.logutil import RateLimitedLog
from bus.sockets import ORDER_CLIENT, Sender, open_socket, recv_queued
from protocols.backoff import Backoff, RequestTimer, RetryAfter
from protocols.errors import (
    ConfigError,
    InvalidOrder,
    OrderClientClosed,
    OrderRejected,
    OrderTimeout,
    RemoteProtocolError,
    TooManyInFlight,
)
from protocols.orders.codec import decode_order, encode_order
from protocols.orders.messages import (
    PENDING_AFTER_S,
    PENDING_HOLD_S,
    CancelOrder,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderPending,
    OrderReject,
    OrderReply,
    OrderRequest,
    RejectReason,
    ReplaceOrder,
)

log = logging.getLogger(__name__)

# Replies one reader wake-up takes at most before it yields to the loop (the requests it woke
# and the other reader run then): bounded so one busy backend cannot starve the rest.
READ_BATCH = 256


def _default_backoff() -> Backoff:
    return Backoff(base_s=0.01, cap_s=0.5)


@dataclass(frozen=True, slots=True)
class OrderClientOptions:
    endpoints: tuple[str, ...]  # the backends' client ROUTER endpoints, usually two
    client_id: str = ""  # ZeroMQ ROUTING_ID; "" = generated once per client
    request_timeout_s: float = 0.05  # wait at least this long for one backend's answer
    max_request_timeout_s: float = 1.0  # the adaptive wait never exceeds this
    backoff: Backoff = field(default_factory=_default_backoff)  # after a full failed round
    deadline_s: float = 5.0  # give a request up (OrderTimeout) after this
    retry_after: RetryAfter = field(default_factory=RetryAfter)  # resend delay after BUSY
    max_busy_resends: int | None = None  # resends after BUSY; None: until the deadline
    max_in_flight: int = 1000  # one more concurrent request raises TooManyInFlight
    updates_queue: int = 10_000  # execution reports kept for the consumer; oldest dropped

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("endpoints", "empty", "list the backends' client endpoints")
        if self.client_id:
            raw = self.client_id.encode()
            if len(raw) > 255 or raw[0] == 0:
                raise ConfigError("client_id", f"{self.client_id!r} is not a ZeroMQ routing id",
                                  "use 1..255 bytes that do not start with NUL")
        for name in ("request_timeout_s", "deadline_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)!r}")
        if self.max_request_timeout_s < self.request_timeout_s:
            raise ConfigError("max_request_timeout_s", "must be >= request_timeout_s",
                              f"e.g. {max(1.0, self.request_timeout_s)}")
        for name in ("max_in_flight", "updates_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)!r}")
        if self.max_busy_resends is not None and self.max_busy_resends < 0:
            raise ConfigError("max_busy_resends", f"must be >= 0 or None, got "
                                                  f"{self.max_busy_resends!r}")

    @classmethod
    def from_config(cls, cfg: MeshConfig, **overrides: Any) -> OrderClientOptions:
        """Options for the backend pair of the mesh file's [orders] section."""
        return cls(endpoints=tuple(cfg.orders.clients), **overrides)


@dataclass(slots=True)
class _Pending:
    """One request awaiting its final answer: where its current attempt went, and the future
    the readers resolve (replaced after a retryable reject has consumed it)."""

    endpoint: int
    future: asyncio.Future[tuple[int, OrderReply]]
    held_until: float = 0.0  # its backend said "in service" (OrderPending): wait, do not resend
    sent_at: float = 0.0  # when its current attempt was sent


class OrderClient:
    """Asyncio client of the backend pair: place, cancel and replace with failover retries,
    and the stream of execution reports for this client."""

    def __init__(self, options: OrderClientOptions) -> None:
        self.options = options
        self.client_id = options.client_id or f"oc-{uuid.uuid4().hex}"
        self._ctx: zmq.asyncio.Context | None = None
        self._socks: list[zmq.asyncio.Socket] = []
        # The same sockets without the asyncio layer: a send or a drain of one message costs no
        # Future (bus.sockets.Sender, and _read, handle the FD edge this leaves).
        self._out: list[Sender] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, _Pending] = {}
        self._preferred = 0  # the backend that last gave a final answer
        self._timer = RequestTimer(options.request_timeout_s, options.max_request_timeout_s)
        self._updates: deque[ExecutionReport] = deque()
        # The exec ids of the latest reports: a backend that took over sends again the last
        # entry of the orders its predecessor may not have reported (the report is the
        # executor's log entry; its exec id names the position), and the caller sees it once.
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (order id, exec id)
        self._updates_ready = asyncio.Event()
        self._bad = RateLimitedLog(log, "malformed order reply")
        self._started = False
        self._closed = False
        self._counts = dict.fromkeys(
            ("sent", "unsent", "retries", "switches", "acks", "rejects", "timeouts",
             "late_replies", "updates", "updates_dropped", "updates_repeated", "malformed",
             "pending_notices",
             "held", "busy", "busy_deadline", "read_batches",
             "read_messages", "read_batch_max"), 0)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._ctx = zmq.asyncio.Context()
        for i, ep in enumerate(self.options.endpoints):
            sock = open_socket(self._ctx, ORDER_CLIENT, connect=(ep,),
                               routing_id=self.client_id.encode())
            self._socks.append(sock)
            self._out.append(Sender(sock))
            self._tasks.append(asyncio.create_task(self._read(i), name=f"order-reader-{i}"))

    async def close(self) -> None:
        """Stop the readers, fail every pending request with :class:`OrderClientClosed`, close
        the sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._tasks, what="order client")
        for cid, pending in self._pending.items():
            if not pending.future.done():
                pending.future.set_exception(OrderClientClosed(cid))
        for sock in self._socks:
            sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        self._updates_ready.set()

    async def __aenter__(self) -> OrderClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def connected(self) -> tuple[bool, ...]:
        """Per endpoint: True if a send would go out now (connected, queue not full)."""
        return tuple(not self._closed and bool(cast(int, s.getsockopt(zmq.EVENTS)) & zmq.POLLOUT)
                     for s in self._socks)

    @property
    def preferred_endpoint(self) -> str:
        """The backend that gave the last final answer: the active one, as far as this client
        knows (a status display's "active backend")."""
        return self.options.endpoints[self._preferred]

    # -- requests --------------------------------------------------------------------------

    async def place(self, order: NewOrder) -> OrderAck:
        """Send a new order until a backend acknowledges it (``OrderAck.state`` ACCEPTED, or
        the state a duplicate has reached). Raises :class:`OrderRejected`,
        :class:`OrderTimeout`, :class:`TooManyInFlight` or :class:`OrderClientClosed`."""
        return await self._request(order)

    async def cancel(self, req: CancelOrder) -> OrderAck:
        """Cancel an order; the ack carries the target's state. Raises as :meth:`place`."""
        return await self._request(req)

    async def replace(self, req: ReplaceOrder) -> OrderAck:
        """Change an order's quantity and price; raises as :meth:`place`."""
        return await self._request(req)

    async def _request(self, msg: OrderRequest) -> OrderAck:
        if self._closed or not self._started:
            raise OrderClientClosed(msg.client_order_id)
        cid = msg.client_order_id
        if cid in self._pending:
            raise InvalidOrder("client_order_id", f"{cid!r} is already in flight on this client")
        if len(self._pending) >= self.options.max_in_flight:
            raise TooManyInFlight(len(self._pending), self.options.max_in_flight)
        loop = asyncio.get_running_loop()
        pending = _Pending(self._preferred, loop.create_future())
        self._pending[cid] = pending
        try:
            return await self._attempts(msg, pending, loop)
        finally:
            del self._pending[cid]
            if pending.future.done() and not pending.future.cancelled():
                pending.future.exception()  # retrieved: never "exception never retrieved"

    async def _attempts(self, msg: OrderRequest, pending: _Pending,
                        loop: asyncio.AbstractEventLoop) -> OrderAck:
        opts, n = self.options, len(self._socks)
        frames = encode_order(msg)
        started = loop.time()
        deadline = started + opts.deadline_s
        attempts = failed_in_round = rounds = busy_resends = 0
        busy: OrderReject | None = None  # the last answer, when BUSY: wait before resending
        # The last BUSY answered, until an attempt times out: a deadline that cuts short the
        # wait for a resend's answer to a backend that keeps saying BUSY is an overload
        # (OrderRejected with BUSY), not a dead pair (OrderTimeout).
        last_busy: OrderReject | None = None
        while True:
            if busy is not None:
                ack = await self._busy_pause(msg, busy, busy_resends, pending, deadline, loop)
                if ack is not None:
                    return ack
                busy, busy_resends = None, busy_resends + 1
            left = deadline - loop.time()
            if left <= 0:
                raise OrderTimeout(msg.client_order_id, attempts, loop.time() - started)
            if self._closed:
                raise OrderClientClosed(msg.client_order_id)
            idx = pending.endpoint
            attempts += 1
            if attempts > 1:
                self._counts["retries"] += 1
            sent = self._send(idx, frames)
            sent_at = pending.sent_at = loop.time()
            # not sent (not connected): no wait, but a late answer may already be here
            answer = await self._await(pending, min(self._timer.timeout(), left) if sent else 0)
            held = False
            while (answer is None and sent and loop.time() < deadline
                   and loop.time() < pending.held_until):
                # The backend has it in service and says so: a resend would only join it.
                held = True
                self._counts["held"] += 1
                answer = await self._await(pending, min(pending.held_until, deadline)
                                           - loop.time())
            if answer is None and sent and last_busy is not None and loop.time() >= deadline:
                self._counts["busy_deadline"] += 1
                raise OrderRejected(last_busy)
            if answer is None and sent:
                last_busy = None
                self._counts["timeouts"] += 1
                self._timer.timed_out()
            elif answer is not None and attempts == 1 and not held and not (
                    isinstance(answer[1], OrderReject) and answer[1].retryable):
                # Karn: first attempts only; and not a held one, whose time is the hold's
                self._timer.observe(loop.time() - sent_at)
            ack = self._settle(msg, answer, pending, loop)
            if ack is not None:
                return ack
            if (busy := _busy(answer)) is not None:
                # Active, at its bound: the same backend again after its hint; no switch, and
                # no failure of the round (the passive one would only say NOT_ACTIVE).
                last_busy = busy
                self._preferred = idx
                continue
            pending.endpoint = (idx + 1) % n
            if n > 1:
                self._counts["switches"] += 1
            failed_in_round += 1
            if failed_in_round >= n:  # every backend failed once: back off before the next
                failed_in_round = 0
                pause = opts.backoff.compute(rounds, random.random())
                rounds += 1
                answer = await self._await(pending, min(pause, deadline - loop.time()))
                ack = self._settle(msg, answer, pending, loop)  # a late answer ends the pause
                if ack is not None:
                    return ack
                busy = _busy(answer)  # a late BUSY from the next attempt's backend: honoured
                last_busy = busy or last_busy

    async def _busy_pause(self, msg: OrderRequest, busy: OrderReject, resends: int,
                          pending: _Pending, deadline: float,
                          loop: asyncio.AbstractEventLoop) -> OrderAck | None:
        """Wait out a BUSY reject's hint before the request goes to the same backend again
        (None: resend now). An answer to an earlier attempt that arrives meanwhile counts: an
        ack ends the request, a final reject raises, a retryable one is absorbed. Raises
        :class:`OrderRejected` with ``busy`` when the deadline passes first or the resends
        are used up."""
        opts = self.options
        if opts.max_busy_resends is not None and resends >= opts.max_busy_resends:
            raise OrderRejected(busy)
        rand = random.random()
        pause = opts.retry_after.compute(busy.retry_after_ms, rand,
                                         opts.backoff.compute(resends, rand))
        resend_at = loop.time() + pause
        while (left := min(resend_at, deadline) - loop.time()) > 0:
            answer = await self._await(pending, left)
            if answer is None:
                break
            ack = self._settle(msg, answer, pending, loop)
            if ack is not None:
                return ack
        if loop.time() >= deadline:
            self._counts["busy_deadline"] += 1
            raise OrderRejected(busy)
        return None

    def _settle(self, msg: OrderRequest, answer: tuple[int, OrderReply] | None,
                pending: _Pending, loop: asyncio.AbstractEventLoop) -> OrderAck | None:
        """The ack that ends the request, or None to try again; raises for a final reject."""
        if answer is None:
            return None
        src, reply = answer
        if isinstance(reply, OrderAck):
            self._preferred = src
            return reply
        if not reply.retryable:
            self._preferred = src  # it answered for real: it is the active one
            raise OrderRejected(reply)
        # BUSY is routine under load (counted in stats): not a line per refusal
        (log.debug if _busy(answer) else log.info)(
            "order %r: %s from %s, retrying", msg.client_order_id, reply.reason.name,
            self.options.endpoints[src])
        pending.future = loop.create_future()  # the reject consumed the previous one
        return None

    async def _await(self, pending: _Pending,
                     timeout_s: float) -> tuple[int, OrderReply] | None:
        """The answer to ``pending`` if one arrives within ``timeout_s``, else None. The future
        is shielded: a timeout leaves it armed for a late answer."""
        fut = pending.future
        if fut.done():
            return fut.result()
        if timeout_s <= 0:
            return None
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: see bus.aio
                return await asyncio.shield(fut)
        except TimeoutError:
            return None

    def _send(self, idx: int, frames: list[bytes]) -> bool:
        """Queue ``frames`` on backend ``idx``; False if it is not connected (IMMEDIATE).

        The send itself is synchronous, without the asyncio layer (``Sender``): the requests
        started in one loop iteration go out back to back, and libzmq's I/O thread writes them
        as one batch."""
        try:
            self._out[idx].send(frames)
        except zmq.ZMQError:  # EAGAIN: not connected, or its queue is full
            self._counts["unsent"] += 1
            return False
        self._counts["sent"] += 1
        return True

    # -- replies and reports ---------------------------------------------------------------

    async def _read(self, idx: int) -> None:
        """Each wake-up drains what is queued (up to READ_BATCH) with non-blocking receives on
        the raw socket, then yields: the requests it answered run after the drain, together.
        Draining until EAGAIN leaves no FD edge unseen; ``poll`` looks at EVENTS first."""
        sock, raw, counts = self._socks[idx], self._out[idx].raw, self._counts
        while True:
            await sock.poll()
            n = 0
            while n < READ_BATCH:
                try:
                    frames = recv_queued(raw)
                except zmq.Again:
                    break
                n += 1
                self._on_frames(idx, frames)
            if n:
                counts["read_batches"] += 1
                counts["read_messages"] += n
                counts["read_batch_max"] = max(counts["read_batch_max"], n)

    def _on_frames(self, idx: int, frames: list[bytes]) -> None:
        try:
            msg = decode_order(frames)
        except RemoteProtocolError as exc:
            self._counts["malformed"] += 1
            self._bad.warning("%s: %s", self.options.endpoints[idx], exc.reason)
            return
        match msg:
            case OrderAck() | OrderReject():
                self._on_reply(idx, msg)
            case OrderPending():
                self._on_pending(idx)
            case ExecutionReport():
                self._on_report(msg)
            case _:
                self._counts["malformed"] += 1
                self._bad.warning("%s: unexpected %s", self.options.endpoints[idx],
                                  type(msg).__name__)

    def _on_reply(self, idx: int, reply: OrderReply) -> None:
        if isinstance(reply, OrderAck):
            self._counts["acks"] += 1
        else:
            self._counts["rejects"] += 1
            if _busy((idx, reply)):
                self._counts["busy"] += 1
        pending = self._pending.get(reply.client_order_id)
        stale = (pending is None or pending.future.done()
                 or (isinstance(reply, OrderReject) and reply.retryable
                     and idx != pending.endpoint))
        if stale:  # a duplicate answer, or a retry-me from a backend the request has left
            self._counts["late_replies"] += 1
            return
        assert pending is not None
        pending.future.set_result((idx, reply))

    def _on_pending(self, idx: int) -> None:
        """Backend ``idx`` has this client's requests in service (those sent PENDING_AFTER_S
        ago or more): they wait on, without resending, up to PENDING_HOLD_S after this
        notice."""
        self._counts["pending_notices"] += 1
        now = asyncio.get_running_loop().time()
        for pending in self._pending.values():
            if pending.endpoint == idx and now - pending.sent_at >= PENDING_AFTER_S:
                pending.held_until = now + PENDING_HOLD_S

    def _on_report(self, report: ExecutionReport) -> None:
        key = (report.order_id, report.exec_id)  # the backend's own exec ids repeat per order
        if key in self._seen:
            self._counts["updates_repeated"] += 1
            return
        self._seen[key] = None
        if len(self._seen) > self.options.updates_queue:
            self._seen.popitem(last=False)
        self._counts["updates"] += 1
        if len(self._updates) >= self.options.updates_queue:
            self._updates.popleft()
            self._counts["updates_dropped"] += 1
        self._updates.append(report)
        self._updates_ready.set()

    async def next_update(self) -> ExecutionReport:
        """The oldest unread execution report, waiting for one if needed."""
        while not self._updates:
            if self._closed:
                raise OrderClientClosed()
            self._updates_ready.clear()
            await self._updates_ready.wait()
        return self._updates.popleft()

    async def updates(self) -> AsyncIterator[ExecutionReport]:
        """Execution reports for this client, in arrival order, until the client closes."""
        while True:
            try:
                yield await self.next_update()
            except OrderClientClosed:
                return

    def stats(self) -> dict[str, int]:
        """Counters: messages ``sent`` (``unsent``: backend not connected), ``retries`` (attempts
        after the first), endpoint ``switches``, ``timeouts`` (attempts unanswered in time),
        ``acks`` and ``rejects`` received (``late_replies``: answers nobody waited for any
        more; ``busy``: BUSY rejects among them, ``busy_deadline``: requests given up during a
        BUSY wait), ``updates`` received, ``updates_dropped`` (queue full), ``malformed``
        replies, ``pending_notices`` and ``held`` waits; batches: ``send_batches`` (loop
        iterations that sent or tried to, per backend), ``read_batches`` (reader wake-ups
        that drained ``read_messages`` in all, ``read_batch_max`` at most); and gauges
        ``in_flight``, ``updates_queued`` and ``request_timeout_us`` (the adaptive wait for
        an answer now)."""
        return {**self._counts, "send_batches": sum(out.batches for out in self._out),
                "in_flight": len(self._pending),
                "updates_queued": len(self._updates),
                "request_timeout_us": round(self._timer.timeout() * 1e6)}


def _busy(answer: tuple[int, OrderReply] | None) -> OrderReject | None:
    """The reply of ``answer`` if it is a BUSY reject, else None."""
    if answer is not None and isinstance(reply := answer[1], OrderReject) \
            and reply.reason is RejectReason.BUSY:
        return reply
    return None


class BlockingOrderClient:
    """An :class:`OrderClient` for synchronous code: it runs on its own event-loop thread."""

    def __init__(self, options: OrderClientOptions, start_timeout_s: float = 10.0) -> None:
        self._thread = LoopThread("tickmesh-orders")
        self._client = OrderClient(options)
        self.client_id = self._client.client_id
        self._thread.call(self._client.start(), start_timeout_s)

    def place(self, order: NewOrder, timeout: float | None = None) -> OrderAck:
        """As :meth:`OrderClient.place`; ``TimeoutError`` after ``timeout`` seconds (the
        client's own ``deadline_s`` applies too)."""
        return self._thread.call(self._client.place(order), timeout)

    def cancel(self, req: CancelOrder, timeout: float | None = None) -> OrderAck:
        return self._thread.call(self._client.cancel(req), timeout)

    def replace(self, req: ReplaceOrder, timeout: float | None = None) -> OrderAck:
        return self._thread.call(self._client.replace(req), timeout)

    def next_update(self, timeout: float | None = None) -> ExecutionReport:
        """Block until an execution report arrives (``TimeoutError`` after ``timeout``)."""
        return self._thread.call(self._client.next_update(), timeout)

    def connected(self) -> tuple[bool, ...]:
        return self._thread.run(self._client.connected)

    def stats(self) -> dict[str, int]:
        return self._thread.run(self._client.stats)

    def close(self) -> None:
        self._thread.close(self._client.close())

    def __enter__(self) -> BlockingOrderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
