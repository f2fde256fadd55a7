"""bus.sockets over real ZeroMQ sockets: every role's options read back as specified (and as
each site set them by hand before), the write-only ROUTER options by their behaviour, every
socket site built through the factory, and the frame limits: a frame of the limit arrives, a
larger one is dropped with its peer disconnected while the receiver keeps serving the others;
each limit holds the largest message its protocol allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import select
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

import bus.sockets as sockets
from bus.config import RecoverySection, load_config
from bus.orders.client import OrderClient, OrderClientOptions
from bus.sockets import (
    EXECUTOR,
    FEED_FRAME_BYTES,
    HANDSHAKE_BYTES,
    HEARTBEAT_BYTES,
    ORDER_FRAME_BYTES,
    PEER_SUB,
    RECOVERY_REPLY_BYTES,
    RECOVERY_REQUEST_BYTES,
    RECOVERY_SERVER,
    SUBSCRIPTION_BYTES,
    TICK_BODY_MAX,
    Sender,
    SocketSpec,
    open_socket,
    recv_batch,
)
from bus.ticks.publisher import Publisher
from bus.ticks.recovery_client import RecoveryClient
from bus.ticks.subscriber import Subscriber, SubscriberOptions
from nodes.ticks.recovery import RecoveryNode
from nodes.ticks.sources import EaBridge
from protocols.orders.binary_star import State
from protocols.orders.codec import encode_order
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import NewOrder, OrderType, Side
from protocols.orders.pair import PeerHeartbeat, encode_heartbeat
from protocols.orders.record import Order
from protocols.ticks.codec import encode_recovery, encode_rows
from protocols.ticks.messages import (
    MAX_BATCH,
    MAX_STREAM_BYTES,
    GapFillReply,
    SnapshotRequest,
    TickBatch,
)
from tests.support import scaled

Ctx = zmq.Context[zmq.Socket[bytes]]
ANY_PORT = "tcp://127.0.0.1:*"
SPECS = {name: value for name, value in vars(sockets).items() if isinstance(value, SocketSpec)}

# What each role sets: libzmq's defaults (LIBZMQ) except what each site set by hand before
# bus.sockets, plus the new MAXMSGSIZE.
LIBZMQ = dict(SNDHWM=1000, RCVHWM=1000, RECONNECT_IVL=100, RECONNECT_IVL_MAX=0, IMMEDIATE=0)
KiB, MiB = 2**10, 2**20
EXPECTED: dict[str, dict[str, int]] = {name: LIBZMQ | row for name, row in {
    "FEED_PUB": dict(TYPE=zmq.PUB, SNDHWM=200_000, MAXMSGSIZE=KiB),
    "FEED_SUB": dict(TYPE=zmq.SUB, RCVHWM=200_000, RECONNECT_IVL=20, RECONNECT_IVL_MAX=500,
                     MAXMSGSIZE=4 * MiB),
    "RECOVERY_SERVER": dict(TYPE=zmq.ROUTER, MAXMSGSIZE=128 * KiB),
    "RECOVERY_CLIENT": dict(TYPE=zmq.DEALER, IMMEDIATE=1, RECONNECT_IVL=50,
                            RECONNECT_IVL_MAX=1000, MAXMSGSIZE=16 * MiB),
    "HISTORY_QUERY_SERVER": dict(TYPE=zmq.ROUTER, MAXMSGSIZE=MiB),
    "HISTORY_QUERY_CLIENT": dict(TYPE=zmq.DEALER, IMMEDIATE=1, RECONNECT_IVL=50,
                                 RECONNECT_IVL_MAX=1000, MAXMSGSIZE=16 * MiB),
    "EA_BRIDGE": dict(TYPE=zmq.PULL, RCVHWM=100_000, MAXMSGSIZE=MiB),
    "EA_DESK": dict(TYPE=zmq.ROUTER, MAXMSGSIZE=MiB),
    "EA_TICKS": dict(TYPE=zmq.PUSH, SNDHWM=100_000, MAXMSGSIZE=KiB),
    "EA_TRADE": dict(TYPE=zmq.DEALER, RECONNECT_IVL=10, RECONNECT_IVL_MAX=200,
                     MAXMSGSIZE=MiB),
    "ORDER_CLIENT": dict(TYPE=zmq.DEALER, IMMEDIATE=1, RECONNECT_IVL=10, RECONNECT_IVL_MAX=200,
                         MAXMSGSIZE=64 * KiB),
    "BACKEND_CLIENTS": dict(TYPE=zmq.ROUTER, MAXMSGSIZE=64 * KiB),
    "BACKEND_EXECUTOR": dict(TYPE=zmq.ROUTER, MAXMSGSIZE=64 * KiB),
    "BACKEND_UPDATES": dict(TYPE=zmq.PUB, MAXMSGSIZE=KiB),
    "EXECUTOR": dict(TYPE=zmq.DEALER, RECONNECT_IVL=10, RECONNECT_IVL_MAX=200,
                     MAXMSGSIZE=64 * KiB),
    "PEER_PUB": dict(TYPE=zmq.PUB, MAXMSGSIZE=KiB),
    "PEER_SUB": dict(TYPE=zmq.SUB, MAXMSGSIZE=KiB),
    "REPLICA_SERVER": dict(TYPE=zmq.ROUTER, MAXMSGSIZE=16 * MiB),
    "REPLICA_CLIENT": dict(TYPE=zmq.DEALER, IMMEDIATE=1, RECONNECT_IVL=10,
                           RECONNECT_IVL_MAX=200, MAXMSGSIZE=KiB),
    "TERMINAL_SERVER": dict(TYPE=zmq.ROUTER, MAXMSGSIZE=64 * KiB),
    "TERMINAL_CLIENT": dict(TYPE=zmq.DEALER, RECONNECT_IVL=10, RECONNECT_IVL_MAX=200,
                            MAXMSGSIZE=64 * MiB),
}.items()}
# ROUTER_HANDOVER and ROUTER_MANDATORY are write-only: checked by behaviour below.
ROUTERS = {"RECOVERY_SERVER": (False, False), "BACKEND_CLIENTS": (True, False),
           "BACKEND_EXECUTOR": (True, True), "REPLICA_SERVER": (False, False),
           "HISTORY_QUERY_SERVER": (False, False), "EA_DESK": (True, True),
           "TERMINAL_SERVER": (False, False)}


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    context: Ctx = zmq.Context()
    yield context
    context.destroy(linger=0)  # closes whatever a failed test left open


def read_back(sock: zmq.Socket[Any]) -> dict[str, int]:
    return {name: int(sock.getsockopt(getattr(zmq, name))) for name in
            ("TYPE", "SNDHWM", "RCVHWM", "RECONNECT_IVL", "RECONNECT_IVL_MAX", "IMMEDIATE",
             "MAXMSGSIZE")} | {"LINGER": int(sock.getsockopt(zmq.LINGER))}


def configured_as(sock: zmq.Socket[Any], role: str) -> bool:
    return read_back(sock) == EXPECTED[role] | {"LINGER": 0}


# --- options -------------------------------------------------------------------------------


def test_every_role_has_a_row() -> None:
    assert set(SPECS) == set(EXPECTED)
    assert {name for name, spec in SPECS.items() if spec.kind == zmq.ROUTER} == set(ROUTERS)


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_options_read_back_as_specified(ctx: Ctx, role: str) -> None:
    sock = open_socket(ctx, SPECS[role], bind=ANY_PORT)
    try:
        assert read_back(sock) == EXPECTED[role] | {"LINGER": 0}
    finally:
        sock.close()


def test_routing_id_and_subscriptions_are_applied(ctx: Ctx) -> None:
    pub = ctx.socket(zmq.PUB)
    pub.bind(ANY_PORT)
    dealer = open_socket(ctx, EXECUTOR, connect=(ANY_PORT.replace("*", "1"),),
                         routing_id=b"executor")
    sub = open_socket(ctx, PEER_SUB, connect=(pub.getsockopt_string(zmq.LAST_ENDPOINT),),
                      subscribe=[b"A"])
    try:
        assert dealer.getsockopt(zmq.ROUTING_ID) == b"executor"
        got = []
        for _ in range(int(scaled(200))):  # a slow joiner: send until a message arrives
            pub.send_multipart([b"B", b"no"])
            pub.send_multipart([b"A", b"yes"])
            if sub.poll(10):
                got.append(sub.recv_multipart())
                break
        assert got == [[b"A", b"yes"]]
    finally:
        for s in (pub, dealer, sub):
            s.close(linger=0)


@pytest.mark.parametrize("role", sorted(ROUTERS))
def test_router_handover_and_mandatory_behave_as_specified(ctx: Ctx, role: str) -> None:
    handover, mandatory = ROUTERS[role]
    router = open_socket(ctx, SPECS[role], bind=ANY_PORT)
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    first = open_socket(ctx, EXECUTOR, connect=(endpoint,), routing_id=b"peer")
    second: zmq.Socket[bytes] | None = None
    try:
        first.send(b"hello")
        assert router.poll(int(scaled(2000))) and router.recv_multipart() == [b"peer", b"hello"]
        # A restarted peer with the same routing id: with handover it takes the route over.
        second = open_socket(ctx, EXECUTOR, connect=(endpoint,), routing_id=b"peer")
        second.send(b"again")
        arrived = router.poll(int(scaled(300)))
        assert arrived == handover
        if handover:
            assert router.recv_multipart() == [b"peer", b"again"]
        router.send_multipart([b"peer", b"reply"])
        owner, other = (second, first) if handover else (first, second)
        assert owner.poll(int(scaled(2000))) and owner.recv() == b"reply"
        assert not other.poll(50)
        # A routing id nobody has: mandatory raises, otherwise the message is dropped.
        if mandatory:
            with pytest.raises(zmq.ZMQError) as info:
                router.send_multipart([b"nobody", b"x"])
            assert info.value.errno == zmq.EHOSTUNREACH
        else:
            router.send_multipart([b"nobody", b"x"])
    finally:
        for s in (router, first, second):
            if s is not None:
                s.close(linger=0)


def test_a_spec_refuses_a_limit_below_the_handshake_and_router_options_elsewhere() -> None:
    with pytest.raises(ValueError, match="handshake"):
        SocketSpec("t", zmq.DEALER, HANDSHAKE_BYTES - 1)
    with pytest.raises(ValueError, match="ROUTER"):
        SocketSpec("t", zmq.DEALER, HANDSHAKE_BYTES, handover=True)
    with pytest.raises(ValueError, match="ROUTER"):
        SocketSpec("t", zmq.PUB, HANDSHAKE_BYTES, mandatory=True)


def test_a_failed_bind_closes_the_socket(ctx: Ctx) -> None:
    first = open_socket(ctx, RECOVERY_SERVER, bind=ANY_PORT)
    try:
        with pytest.raises(zmq.ZMQError):
            open_socket(ctx, RECOVERY_SERVER, bind=first.getsockopt_string(zmq.LAST_ENDPOINT))
    finally:
        first.close()
    ctx.term()  # hangs if the failed socket were left open


# --- every site uses its role --------------------------------------------------------------


def test_the_tick_sites_build_their_sockets_from_their_roles(ctx: Ctx) -> None:
    actx = zmq.asyncio.Context()
    publisher = Publisher(ctx, ANY_PORT, [])
    recovery_client = RecoveryClient(actx, ("tcp://127.0.0.1:1",), lambda _r: None)
    bridge = EaBridge(actx, ANY_PORT, ["EURUSD"])
    cfg = load_config(None)
    node = RecoveryNode(cfg, RecoverySection(bind=ANY_PORT), store=object())  # type: ignore[arg-type]
    try:
        assert configured_as(publisher._pub, "FEED_PUB")
        assert configured_as(recovery_client._sock, "RECOVERY_CLIENT")
        assert configured_as(bridge._sock, "EA_BRIDGE")
        assert configured_as(node.sock, "RECOVERY_SERVER")
    finally:
        publisher.close()
        recovery_client.close()
        bridge.close()
        node.sock.close(linger=0)
        node.ctx.term()
        actx.term()


def test_the_client_sites_build_their_sockets_from_their_roles() -> None:
    async def scenario() -> None:
        sub = Subscriber(SubscriberOptions(feeds=("tcp://127.0.0.1:1",), snapshot=False))
        client = OrderClient(OrderClientOptions(endpoints=("tcp://127.0.0.1:1",
                                                           "tcp://127.0.0.1:2"),
                                                client_id="c-1"))
        await sub.start()
        await client.start()
        try:
            assert sub._sub is not None and configured_as(sub._sub, "FEED_SUB")
            assert len(client._socks) == 2
            for sock in client._socks:
                assert configured_as(sock, "ORDER_CLIENT")
                assert sock.getsockopt(zmq.ROUTING_ID) == b"c-1"
        finally:
            await client.close()
            await sub.close()

    asyncio.run(scenario())


# --- raw sends (Sender) ----------------------------------------------------------------------


def test_a_sender_to_no_peer_raises_again_at_once_and_nothing_waits() -> None:
    """IMMEDIATE with nobody connected: EAGAIN, raised by the call itself (the site counts
    it); the loop goes on and the socket is still usable."""
    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        sock = open_socket(ctx, sockets.ORDER_CLIENT, connect=("tcp://127.0.0.1:1",))
        try:
            out = Sender(sock)
            for _ in range(3):
                with pytest.raises(zmq.Again):
                    out.send([b"x"])
            await asyncio.sleep(0)  # the nudge of that iteration runs, once
            assert out.batches == 1
        finally:
            sock.close(linger=0)
            ctx.term()

    asyncio.run(scenario())


def test_a_sender_to_an_unknown_routing_id_of_a_mandatory_router_raises_ehostunreach() -> None:
    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        router = open_socket(ctx, sockets.BACKEND_EXECUTOR, bind=ANY_PORT)
        try:
            with pytest.raises(zmq.ZMQError) as info:
                Sender(router).send([b"nobody", b"x"])
            assert info.value.errno == zmq.EHOSTUNREACH
        finally:
            router.close(linger=0)
            ctx.term()

    asyncio.run(scenario())


def test_a_raw_send_leaves_no_message_unseen_by_the_readers_awaiting_either_side() -> None:
    """A message sent raw reaches the peer's awaiting reader; and a message queued at the
    sender while the edge of its FD was consumed outside the asyncio layer (what a raw send
    does when it processes libzmq's commands) still wakes the sender's own awaiting reader:
    the sender's EVENTS nudge makes that layer look again."""
    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        router = open_socket(ctx, sockets.BACKEND_CLIENTS, bind=ANY_PORT)
        dealer = open_socket(ctx, sockets.EXECUTOR, routing_id=b"d",
                             connect=(router.getsockopt_string(zmq.LAST_ENDPOINT),))
        try:
            out = Sender(dealer)
            at_router = asyncio.ensure_future(router.recv_multipart())
            at_dealer = asyncio.ensure_future(dealer.recv_multipart())
            await asyncio.sleep(0)  # both readers wait on their FDs now
            out.send([b"ping"])
            async with asyncio.timeout(scaled(5)):
                assert await at_router == [b"d", b"ping"]
            Sender(router).send([b"d", b"pong"])
            # Without yielding to the loop: wait until the pong is queued at the dealer and
            # every edge of its FD is consumed, as a raw send consumes them.
            raw, fd = out.raw, dealer.getsockopt(zmq.FD)
            assert raw.poll(int(scaled(5000)), zmq.POLLIN)
            while select.select([fd], [], [], 0)[0]:
                raw.getsockopt(zmq.EVENTS)
            assert not at_dealer.done()
            out.send([b"more"])
            async with asyncio.timeout(scaled(5)):
                assert await at_dealer == [b"pong"]
                assert await router.recv_multipart() == [b"d", b"more"]
        finally:
            dealer.close(linger=0)
            router.close(linger=0)
            ctx.term()

    asyncio.run(scenario())


def test_a_batch_is_what_is_queued_up_to_its_limit_and_the_rest_comes_with_the_next() -> None:
    """recv_batch waits for one message and takes the others queued (raw receives), at most
    ``limit``; what it left is the next batch at once, and after a drain to EAGAIN a new
    message still wakes the awaited receive."""
    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        pull = open_socket(ctx, sockets.EA_BRIDGE, bind="inproc://batches")
        push = ctx.socket(zmq.PUSH)
        push.connect("inproc://batches")
        try:
            for i in range(5):  # inproc: in the pull's queue once the send returns
                Sender(push).send([b"%d" % i])
            async with asyncio.timeout(scaled(5)):
                assert await recv_batch(pull, 3) == [[b"0"], [b"1"], [b"2"]]
                assert await recv_batch(pull, 10) == [[b"3"], [b"4"]]
                later = asyncio.ensure_future(recv_batch(pull, 10))
                await asyncio.sleep(0)
                assert not later.done()
                await push.send(b"5")
                assert await later == [[b"5"]]
        finally:
            push.close(linger=0)
            pull.close(linger=0)
            ctx.term()

    asyncio.run(scenario())


# --- frame limits --------------------------------------------------------------------------


class Receiver:
    """A socket of ``spec`` with a monitor counting its disconnects: bound on a loopback port,
    or for a SUB connected to the given publishers."""

    def __init__(self, ctx: Ctx, spec: SocketSpec, connect: tuple[str, ...] = ()) -> None:
        if connect:
            self.sock = open_socket(ctx, spec, connect=connect, subscribe=[b""])
        else:
            self.sock = open_socket(ctx, spec, bind=ANY_PORT)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.disconnects = 0

    def count_disconnects(self, wait_ms: int) -> int:
        while self._monitor.poll(wait_ms):
            recv_monitor_message(self._monitor)
            self.disconnects += 1
            wait_ms = 0
        return self.disconnects

    def frames(self, wait_ms: int) -> list[list[bytes]]:
        out = []
        while self.sock.poll(wait_ms):
            out.append(self.sock.recv_multipart())
            wait_ms = 50
        return out

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)


# The peer of each kind of receiving socket. A SUB connects to its publishers, as in the mesh
# (XPUBs here, which tell when its subscription has arrived); the others are connected to.
PEERS: dict[int, int] = {zmq.ROUTER: zmq.DEALER, zmq.DEALER: zmq.DEALER, zmq.PULL: zmq.PUSH,
                         zmq.SUB: zmq.XPUB}


def receiver_and_peers(ctx: Ctx, spec: SocketSpec
                       ) -> tuple[Receiver, zmq.Socket[bytes], zmq.Socket[bytes]]:
    peers = [ctx.socket(PEERS[spec.kind]) for _ in range(2)]
    for peer in peers:
        peer.setsockopt(zmq.LINGER, 0)
    if spec.kind != zmq.SUB:
        receiver = Receiver(ctx, spec)
        for peer in peers:
            peer.connect(receiver.endpoint)
        return receiver, peers[0], peers[1]
    for peer in peers:
        peer.bind(ANY_PORT)
    receiver = Receiver(ctx, spec, connect=tuple(
        p.getsockopt_string(zmq.LAST_ENDPOINT) for p in peers))
    for peer in peers:  # nothing is sent before the subscription is there
        assert peer.poll(int(scaled(2000))), "no subscription arrived"
        peer.recv()
    return receiver, peers[0], peers[1]


READERS = sorted(name for name, spec in SPECS.items() if spec.kind in PEERS)


@pytest.mark.parametrize("role", READERS)
def test_a_frame_over_the_limit_disconnects_its_peer_and_the_others_are_served(
        ctx: Ctx, role: str) -> None:
    spec = SPECS[role]
    receiver, big, good = receiver_and_peers(ctx, spec)
    try:
        good.send(b"x" * spec.maxmsgsize)  # exactly the limit: read
        big.send(b"y" * (spec.maxmsgsize + 1))  # one byte more: never read
        good.send(b"after")
        got = [frames[-1] for frames in receiver.frames(int(scaled(5000)))]
        assert [len(f) for f in got] == [spec.maxmsgsize, 5]
        assert receiver.count_disconnects(int(scaled(2000))) >= 1
        if spec.kind != zmq.SUB:  # the cut peer reconnects and is served again
            big.send(b"small")
            assert [f[-1] for f in receiver.frames(int(scaled(5000)))] == [b"small"]
    finally:
        for s in (big, good):
            s.close(linger=0)
        receiver.close()


@pytest.mark.parametrize("role", sorted(n for n, s in SPECS.items() if s.kind == zmq.PUB))
def test_a_publisher_reads_stream_subscriptions_and_drops_an_oversize_one(
        ctx: Ctx, role: str) -> None:
    pub = open_socket(ctx, SPECS[role], bind=ANY_PORT)
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    longest = b"S" * MAX_STREAM_BYTES + b"\x00"  # an exact stream subscription
    monitor = pub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    subs = [open_socket(ctx, PEER_SUB, connect=(endpoint,), subscribe=[topic])
            for topic in (longest, b"S" * SUBSCRIPTION_BYTES)]
    try:
        received = False
        for _ in range(int(scaled(200))):  # a slow joiner: send until the first arrives
            pub.send(longest + b"tick")
            if subs[0].poll(10):
                received = subs[0].recv() == longest + b"tick"
                break
        assert received
        assert monitor.poll(int(scaled(2000))), "the oversize subscriber was not cut"
        assert not subs[1].poll(50)
    finally:
        pub.disable_monitor()
        monitor.close(linger=0)
        for s in (pub, *subs):
            s.close(linger=0)


# --- each limit holds its protocol's largest message -----------------------------------------

WIDE_ROW = (1.5, 2.5, 3.5, 4.5, 2**64 - 1, 2**64 - 1)  # every number 9 bytes wide


def test_the_feed_limit_holds_a_full_batch_of_the_widest_rows() -> None:
    assert len(encode_rows([WIDE_ROW] * MAX_BATCH)) == TICK_BODY_MAX <= FEED_FRAME_BYTES


def test_the_recovery_limits_hold_the_largest_request_and_a_large_fill() -> None:
    request = SnapshotRequest(2**63 - 1, tuple(f"{i:04d}".ljust(64, "x")
                                               for i in range(1024)))
    assert sum(map(len, encode_recovery(request))) <= RECOVERY_REQUEST_BYTES
    fill = GapFillReply(2**63 - 1, "S" * 64, 1, 200_000,
                        tuple(TickBatch("S" * 64, 2**64 - 1, i, (WIDE_ROW,))
                              for i in range(1, 200_001)), ())
    assert max(map(len, encode_recovery(fill))) <= RECOVERY_REPLY_BYTES


def test_the_order_and_heartbeat_limits_hold_their_largest_messages() -> None:
    new = NewOrder("a" * 64, "c" * 64, "S" * 64, Side.BUY, OrderType.LIMIT, 1e300, 1e300,
                   2**64 - 1)
    record = dataclasses.replace(Order.from_new("o" * 64, new, epoch=2**63 - 1, now_ns=1),
                                 state=OrderState.PARTIALLY_FILLED, filled_quantity=1e-300,
                                 avg_price=1e300, client_id="i" * 64)
    assert max(map(len, encode_order(record))) < 1024 < ORDER_FRAME_BYTES
    beat = encode_heartbeat(PeerHeartbeat(State.TAKING_OVER, 2**63 - 1))
    assert max(map(len, beat)) < 32 < HEARTBEAT_BYTES
