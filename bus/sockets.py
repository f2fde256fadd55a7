"""Every ZeroMQ socket of the mesh is made here: :func:`open_socket` with a role's spec.

    sock = open_socket(ctx, FEED_SUB, connect=feeds, subscribe=[b"EUR"])

A :class:`SocketSpec` is the whole configuration of one socket role, frozen: its type,
high-water marks, reconnect intervals, ``IMMEDIATE``, ``ROUTER_HANDOVER`` and
``ROUTER_MANDATORY``, and the largest frame it accepts from a peer (``MAXMSGSIZE``). Every
socket gets ``LINGER`` 0: a node that stops drops what it has not sent (the peers' retries and
the recovery service cover it) instead of hanging in ``ctx.term()``. The values are the ones
each site set by hand before this module, so behaviour is unchanged except for ``MAXMSGSIZE``,
which no socket had.

**Frame limits.** libzmq checks ``MAXMSGSIZE`` against every *frame* a peer sends, including
the handshake's commands, and disconnects a peer whose frame is larger: that frame is never
read into memory, the socket goes on serving its other peers, and the peer reconnects. Each
limit is the largest frame the role's protocol allows, rounded up (docs/PROTOCOL.md section 16):

* ``HANDSHAKE_BYTES`` 1 KiB, the floor of every limit: a READY command naming a 255-byte
  routing id is about 300 bytes, CURVE's INITIATE about as much.
* ``SUBSCRIPTION_BYTES`` 1 KiB: a PUB reads only SUBSCRIBE commands (10 bytes and a topic of at
  most 65).
* ``FEED_FRAME_BYTES`` 4 MiB: a TICKS body of ``MAX_BATCH`` rows with every number 9 bytes wide
  is 3.6 MB (``TICK_BODY_MAX``); the rest leaves rows room for later fields.
* ``RECOVERY_REQUEST_BYTES`` 128 KiB: a snapshot request of 1,024 prefixes of 64 bytes is 68 KB.
* ``RECOVERY_REPLY_BYTES`` 16 MiB: a gap fill of 200,000 ticks even at one tick per batch (15
  MB; a recovery node's ``max_fill`` is 50,000 by default), or a snapshot of 100,000 streams
  with 64-byte names (14 MB).
* ``ORDER_FRAME_BYTES`` 64 KiB: the largest order message, an ORDER record (five ids of at most
  64 bytes, a dozen numbers), is under 1 KiB; the rest leaves a reject's free-text ``message``
  room.
* ``EA_FRAME_BYTES`` 1 MiB: an EA bridge message, one tick or a batch of thousands.
* ``HEARTBEAT_BYTES`` 1 KiB: a PEER_HEARTBEAT is about 20 bytes.
* ``HISTORY_REQUEST_BYTES`` 1 MiB: the largest history query, a READ_ABOVE naming
  ``MAX_MARKS`` (10,000) groups of 64 bytes, is about 740 KB; the others are under 200 bytes.
* ``HISTORY_REPLY_BYTES`` 16 MiB: the historian splits an answer into COLUMNS parts of at most
  this many bytes each (``protocols.history.query.encode_columns``).
* ``TERMINAL_REQUEST_BYTES`` 64 KiB: the largest request to the simulated terminal, an
  ORDER_SEND (a symbol, a 31-character comment, a dozen numbers), is under 200 bytes.
* ``TERMINAL_REPLY_BYTES`` 64 MiB: a day's history of 200 orders/s is 17 million orders; the
  terminal answers ERROR rather than send a reply above this (ask for a narrower range), and
  ``copy_ticks_from``'s 100,000 ticks are 4.6 MB.

**Security.** :func:`open_socket` is the one place that configures a socket before it binds
or connects; the security issue adds CURVE there, once for every role (the marked line).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq
import zmq.asyncio
import zmq.backend

from protocols.ticks.messages import MAX_BATCH, ROW_FIELDS

__all__ = [
    "BACKEND_CLIENTS",
    "BACKEND_EXECUTOR",
    "BACKEND_UPDATES",
    "EA_BRIDGE",
    "EA_DESK",
    "EA_TICKS",
    "EA_TRADE",
    "EXECUTOR",
    "FEED_PUB",
    "FEED_SUB",
    "HISTORY_QUERY_CLIENT",
    "HISTORY_QUERY_SERVER",
    "ORDER_CLIENT",
    "PEER_PUB",
    "PEER_SUB",
    "RECOVERY_CLIENT",
    "RECOVERY_SERVER",
    "REPLICA_CLIENT",
    "REPLICA_SERVER",
    "TERMINAL_CLIENT",
    "TERMINAL_SERVER",
    "Sender",
    "SocketSpec",
    "drain_queued",
    "open_socket",
    "raw_socket",
    "recv_batch",
    "recv_queued",
]

KiB = 1024
MiB = 1024 * KiB

# The widest msgpack number (a float64, a u64) with its type byte, and the array headers.
_NUMBER = 9
TICK_BODY_MAX = 3 + MAX_BATCH * (1 + ROW_FIELDS * _NUMBER)  # 3,604,373 bytes

HANDSHAKE_BYTES = 1 * KiB
SUBSCRIPTION_BYTES = HANDSHAKE_BYTES
FEED_FRAME_BYTES = 4 * MiB
RECOVERY_REQUEST_BYTES = 128 * KiB
RECOVERY_REPLY_BYTES = 16 * MiB
ORDER_FRAME_BYTES = 64 * KiB
EA_FRAME_BYTES = 1 * MiB
HEARTBEAT_BYTES = HANDSHAKE_BYTES
HISTORY_REQUEST_BYTES = 1 * MiB
HISTORY_REPLY_BYTES = 16 * MiB
TERMINAL_REQUEST_BYTES = 64 * KiB
TERMINAL_REPLY_BYTES = 64 * MiB
# A reset batch of the pair's replication carries up to MAX_BACKLOG records of a few hundred
# bytes each.
REPLICA_BATCH_BYTES = 16 * MiB

# libzmq's defaults, named so that every spec states each value.
DEFAULT_HWM = 1000
DEFAULT_RECONNECT_IVL_MS = 100
DEFAULT_RECONNECT_IVL_MAX_MS = 0  # 0: no backoff, every retry after RECONNECT_IVL

_S = TypeVar("_S", bound="zmq.Socket[Any]")


@dataclass(frozen=True, slots=True)
class SocketSpec:
    """How one socket role is configured; :func:`open_socket` applies it."""

    role: str  # for errors and logs
    kind: int  # zmq.PUB, zmq.SUB, ...
    maxmsgsize: int  # the largest frame read from a peer (MAXMSGSIZE)
    sndhwm: int = DEFAULT_HWM
    rcvhwm: int = DEFAULT_HWM
    reconnect_ivl_ms: int = DEFAULT_RECONNECT_IVL_MS
    reconnect_ivl_max_ms: int = DEFAULT_RECONNECT_IVL_MAX_MS
    immediate: bool = False  # queue only for connected peers: a send to none fails at once
    handover: bool = False  # ROUTER: a peer reconnecting with its routing id takes the route
    mandatory: bool = False  # ROUTER: a send to an unknown routing id raises (else dropped)

    def __post_init__(self) -> None:
        if self.maxmsgsize < HANDSHAKE_BYTES:
            raise ValueError(f"{self.role}: maxmsgsize {self.maxmsgsize} is below the "
                             f"handshake's {HANDSHAKE_BYTES} bytes")
        if (self.handover or self.mandatory) and self.kind != zmq.ROUTER:
            raise ValueError(f"{self.role}: handover and mandatory are ROUTER options")

    def options(self) -> list[tuple[int, int]]:
        """The (option, value) pairs set on the socket, in order."""
        opts: list[tuple[int, int]] = [
            (zmq.LINGER, 0), (zmq.SNDHWM, self.sndhwm), (zmq.RCVHWM, self.rcvhwm),
            (zmq.RECONNECT_IVL, self.reconnect_ivl_ms),
            (zmq.RECONNECT_IVL_MAX, self.reconnect_ivl_max_ms),
            (zmq.MAXMSGSIZE, self.maxmsgsize), (zmq.IMMEDIATE, int(self.immediate))]
        if self.kind == zmq.ROUTER:
            opts += [(zmq.ROUTER_HANDOVER, int(self.handover)),
                     (zmq.ROUTER_MANDATORY, int(self.mandatory))]
        return opts


def open_socket(ctx: zmq.Context[_S], spec: SocketSpec, *, bind: str | None = None,
                connect: Iterable[str] = (), routing_id: bytes | None = None,
                subscribe: Iterable[bytes] = ()) -> _S:
    """A new socket of ``ctx`` configured by ``spec``, then bound and/or connected.

    ``routing_id`` is the identity a ROUTER peer sees; ``subscribe`` the topic prefixes of a
    SUB. The options are all set before the first bind or connect (most apply only to
    connections made after them). If binding or connecting fails the socket is closed and
    the :class:`zmq.ZMQError` raised."""
    sock = ctx.socket(spec.kind)
    try:
        for option, value in spec.options():
            sock.setsockopt(option, value)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        # Security: CURVE keys (CURVE_SERVER and the node's key pair where it binds,
        # CURVE_SERVERKEY where it connects) and the ZAP domain are set here, for every role.
        for prefix in subscribe:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
        if bind is not None:
            sock.bind(bind)
        for endpoint in connect:
            sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


# --- the roles ------------------------------------------------------------------------------

# Ticks. The feed's PUB queues enough batches per subscriber to ride through a GC pause: PUB's
# default of 1,000 loses 30-65 % at full speed (REFERENCES.md, section 6).
FEED_PUB = SocketSpec("feed pub", zmq.PUB, SUBSCRIPTION_BYTES, sndhwm=200_000)
FEED_SUB = SocketSpec("feed sub", zmq.SUB, FEED_FRAME_BYTES, rcvhwm=200_000,
                      reconnect_ivl_ms=20, reconnect_ivl_max_ms=500)
# A client gone: drop its reply (not mandatory). Clients use random routing ids: no handover.
RECOVERY_SERVER = SocketSpec("recovery", zmq.ROUTER, RECOVERY_REQUEST_BYTES)
# IMMEDIATE: a request never queues for a recovery node that is not connected.
RECOVERY_CLIENT = SocketSpec("recovery client", zmq.DEALER, RECOVERY_REPLY_BYTES,
                             immediate=True, reconnect_ivl_ms=50, reconnect_ivl_max_ms=1000)
# History queries (bus.history.query): readers' DEALERs to the historian's ROUTER, as for
# recovery: a reply to a reader gone is dropped; IMMEDIATE, a request never queues for a
# historian that is not connected (the reader tries its next endpoint).
HISTORY_QUERY_SERVER = SocketSpec("history query", zmq.ROUTER, HISTORY_REQUEST_BYTES)
HISTORY_QUERY_CLIENT = SocketSpec("history query client", zmq.DEALER, HISTORY_REPLY_BYTES,
                                  immediate=True, reconnect_ivl_ms=50,
                                  reconnect_ivl_max_ms=1000)
EA_BRIDGE = SocketSpec("ea bridge", zmq.PULL, EA_FRAME_BYTES, rcvhwm=100_000)
# The EA instance (nodes.ea): ticks to its feed's EA bridge (section 9: never block the
# terminal side; a large queue rides out a feed restart), trades with the executor's ROUTER
# (section 18; FACTS of 256 orders with their deals fit in a megabyte).
EA_TICKS = SocketSpec("ea ticks", zmq.PUSH, HANDSHAKE_BYTES, sndhwm=100_000)
EA_TRADE = SocketSpec("ea trade", zmq.DEALER, EA_FRAME_BYTES, reconnect_ivl_ms=10,
                      reconnect_ivl_max_ms=200)
# The executor's EA trade socket (bus.ea.desk): instances keep their routing id (their name)
# across restarts, so a restarted one takes the route over; mandatory, a send to an instance
# not connected raises and the order is held instead of vanishing.
EA_DESK = SocketSpec("ea desk", zmq.ROUTER, EA_FRAME_BYTES, handover=True, mandatory=True)

# Orders. Clients and executors keep their routing id across reconnects and restarts: the
# backend's ROUTERs hand the route to the newest connection instead of refusing it.
ORDER_CLIENT = SocketSpec("order client", zmq.DEALER, ORDER_FRAME_BYTES, immediate=True,
                          reconnect_ivl_ms=10, reconnect_ivl_max_ms=200)
BACKEND_CLIENTS = SocketSpec("backend clients", zmq.ROUTER, ORDER_FRAME_BYTES, handover=True)
# The executor is addressed by its configured routing id; mandatory, an absent one raises
# instead of the order vanishing (the backend's re-drive sends it again later).
BACKEND_EXECUTOR = SocketSpec("backend executor", zmq.ROUTER, ORDER_FRAME_BYTES,
                              handover=True, mandatory=True)
BACKEND_UPDATES = SocketSpec("backend updates", zmq.PUB, SUBSCRIPTION_BYTES)
EXECUTOR = SocketSpec("executor", zmq.DEALER, ORDER_FRAME_BYTES, reconnect_ivl_ms=10,
                      reconnect_ivl_max_ms=200)
# The backend pair's heartbeats (bus.orders.beacon publishes, the other node subscribes).
PEER_PUB = SocketSpec("peer pub", zmq.PUB, SUBSCRIPTION_BYTES)
PEER_SUB = SocketSpec("peer sub", zmq.SUB, HEARTBEAT_BYTES)
# Replication (bus.orders.pair_store): the active's DEALER to the passive's ROUTER. IMMEDIATE:
# a batch for a peer that is not connected fails at once, and the active waits for the store
# instead of for a confirmation that cannot come. The passive drops an answer to a sender gone.
REPLICA_SERVER = SocketSpec("replica", zmq.ROUTER, REPLICA_BATCH_BYTES)
REPLICA_CLIENT = SocketSpec("replica client", zmq.DEALER, HEARTBEAT_BYTES, immediate=True,
                            reconnect_ivl_ms=10, reconnect_ivl_max_ms=200)
# The simulated MT5 terminal (nodes.ea.simterm): the EA's DEALER to its ROUTER. A reply to a
# client gone is dropped. Not IMMEDIATE: the client renews its socket after every timeout
# (lazy pirate), and a request on a fresh socket must wait for the connection, not fail.
TERMINAL_SERVER = SocketSpec("terminal", zmq.ROUTER, TERMINAL_REQUEST_BYTES)
TERMINAL_CLIENT = SocketSpec("terminal client", zmq.DEALER, TERMINAL_REPLY_BYTES,
                             reconnect_ivl_ms=10, reconnect_ivl_max_ms=200)


# libzmq's send of one frame, below pyzmq's Python layers (``zmq.Socket.send_multipart`` checks
# every frame's buffer and goes through two more calls per frame: about half the cost of a
# small message's send here). Frames are bytes, the site's own encoding.
_send_frame = zmq.backend.Socket.send
_recv_frame = zmq.backend.Socket.recv
_get_option = zmq.backend.Socket.get
_MORE = zmq.NOBLOCK | zmq.SNDMORE

# The shadow of each asyncio socket, made once (a shadow costs microseconds to make, and
# lives as long as its socket).
_RAW: weakref.WeakKeyDictionary[zmq.asyncio.Socket, zmq.Socket[bytes]] = \
    weakref.WeakKeyDictionary()


def raw_socket(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """The same libzmq socket as ``sock`` without the asyncio layer: a send or a receive on
    it costs no Future. What it leaves to its user: a send or a receive processes libzmq's
    commands and may consume the edge of the socket's edge-triggered FD, so a reader awaiting
    that edge through ``sock`` could sleep on a queued message. Receive until ``zmq.Again``
    (``drain_queued``), or send through a :class:`Sender`, which makes up for it."""
    raw = _RAW.get(sock)
    if raw is None:
        raw = _RAW[sock] = zmq.Socket.shadow(sock.underlying)
    return raw


def recv_queued(raw: zmq.Socket[bytes]) -> list[bytes]:
    """The next message queued on ``raw`` (a ``raw_socket``), frames as bytes, without
    pyzmq's Python layers; ``zmq.Again`` if none is queued."""
    frames: list[bytes] = [_recv_frame(raw, zmq.NOBLOCK)]
    while _get_option(raw, zmq.RCVMORE):
        frames.append(_recv_frame(raw, zmq.NOBLOCK))
    return frames


class Sender:
    """Non-blocking sends on an asyncio socket, without its asyncio layer.

        out = Sender(sock)
        out.send([identity, *frames])  # raises zmq.Again, EHOSTUNREACH (ROUTER_MANDATORY)

    An awaited ``send_multipart`` of ``zmq.asyncio`` builds a Future and runs the layer's
    bookkeeping for every message, although a non-blocking send completes (or fails) at once.
    :meth:`send` calls libzmq directly on a shadow of the same socket and raises what libzmq
    raises, so every call site keeps its own meaning of a failure (count, log, re-drive); it
    never waits, so it never blocks the loop.

    The one thing it must make up for: a send processes libzmq's pending commands and may
    consume the edge of the socket's edge-triggered FD (a message that arrived meanwhile
    among them) without the asyncio layer seeing it, and a reader of the same socket
    awaiting that edge would sleep on a queued message. Once per loop iteration that sent,
    the sender reads ``EVENTS`` through the asyncio socket, which makes that layer look again
    and wake its waiting readers.
    """

    __slots__ = ("_nudge_due", "batches", "raw", "sock")

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock
        self.raw = raw_socket(sock)
        self.batches = 0  # loop iterations that sent (or tried to)
        self._nudge_due = False

    def send(self, frames: Sequence[bytes]) -> None:
        """Queue one message now or raise :class:`zmq.ZMQError` (``zmq.Again``: not
        connected with ``IMMEDIATE``, or the queue is full; ``EHOSTUNREACH``: an unknown
        routing id on a ``ROUTER_MANDATORY`` socket)."""
        if not self._nudge_due:  # a failed send may have processed commands too
            self._nudge_due = True
            asyncio.get_running_loop().call_soon(self._nudge)
        # All or nothing, as send_multipart: libzmq refuses a message (EAGAIN, EHOSTUNREACH)
        # at its first frame, and once that is taken the rest of the message is.
        raw, last = self.raw, len(frames) - 1
        for i in range(last):
            _send_frame(raw, frames[i], _MORE)
        _send_frame(raw, frames[last], zmq.NOBLOCK)

    def _nudge(self) -> None:
        self._nudge_due = False
        self.batches += 1
        if not self.sock.closed:
            self.sock.get(zmq.EVENTS)


async def drain_queued(sock: zmq.asyncio.Socket, batch: list[list[bytes]], limit: int) -> None:
    """Append to ``batch`` every message already queued on ``sock``, up to ``limit`` in all:
    non-blocking receives until none is left (never a wait to fill a batch).

    The receives are raw (``raw_socket``: no Future per message). Ending at ``zmq.Again``
    leaves no FD edge unseen; ending at ``limit`` leaves messages queued, which the next
    awaited receive finds at once (the asyncio layer reads EVENTS before it waits)."""
    raw = raw_socket(sock)
    while len(batch) < limit:
        try:
            batch.append(recv_queued(raw))
        except zmq.Again:
            return


async def recv_batch(sock: zmq.asyncio.Socket, limit: int) -> list[list[bytes]]:
    """The messages of one wake-up: wait for one, then take what else is queued (at most
    ``limit``). Batches form under load by themselves; idle, a batch is one message."""
    batch = [await sock.recv_multipart()]
    await drain_queued(sock, batch, limit)
    return batch
