"""The feed's two outbound paths: ZeroMQ PUB over TCP and UDP datagrams.

Both sends are non-blocking by design: a PUB socket drops for a subscriber whose queue is full,
and a UDP send that finds the kernel buffer full drops the datagram. Either loss is repaired by
the other path or by the recovery service, and is counted here.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass

import zmq

from bus.sockets import FEED_PUB, open_socket
from protocols.ticks.codec import (
    encode_datagrams,
    encode_feed,
    encode_header,
    encode_rows,
    tick_datagrams,
    topic,
)
from protocols.ticks.messages import EndOfSession, FeedMessage, Heartbeat, Kind, Row, TickBatch

UDP_SNDBUF = 4 * 1024 * 1024


@dataclass(slots=True)
class PublisherStats:
    batches: int = 0
    ticks: int = 0
    heartbeats: int = 0
    datagrams: int = 0
    udp_dropped: int = 0  # datagrams the kernel refused (buffer full)
    udp_errors: int = 0


class Publisher:
    """Owns the PUB socket and the UDP socket of one feed."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], pub_endpoint: str,
                 udp_targets: list[tuple[str, int]], *, max_datagram: int = 1472,
                 multicast_ttl: int = 1, multicast_interface: str = "127.0.0.1") -> None:
        self.stats = PublisherStats()
        self._pub = open_socket(ctx, FEED_PUB, bind=pub_endpoint)
        self.endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._targets = udp_targets
        self._max_datagram = max_datagram
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setblocking(False)
        with contextlib.suppress(OSError):
            self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_SNDBUF)
        if any(ipaddress.IPv4Address(h).is_multicast for h, _ in udp_targets):
            self._udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, multicast_ttl)
            self._udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            # Without an explicit interface the kernel picks the default route's, which on a
            # host without one (or the wrong one) never reaches local receivers.
            self._udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                 socket.inet_aton(multicast_interface))

    def publish_batch(self, stream: str, session: int, first_seq: int, rows: list[Row]) -> None:
        """Send one batch on both paths (the hot path: one encode, no validation)."""
        header = encode_header(Kind.TICKS, stream, session, first_seq, len(rows))
        body = encode_rows(rows)
        self._pub.send_multipart((topic(stream), header, body), copy=True)
        if self._targets:
            if len(header) + len(body) <= self._max_datagram:
                self._send_udp((header + body,))
            else:
                self._send_udp(tick_datagrams(stream, session, first_seq, rows,
                                              self._max_datagram))
        self.stats.batches += 1
        self.stats.ticks += len(rows)

    def publish(self, msg: FeedMessage) -> None:
        """Send a heartbeat or end-of-session (or a batch) on both paths."""
        if isinstance(msg, TickBatch):
            self.publish_batch(msg.stream, msg.session, msg.first_seq, list(msg.rows))
            return
        self._pub.send_multipart(encode_feed(msg), copy=True)
        self._send_udp(encode_datagrams(msg, self._max_datagram))
        if isinstance(msg, (Heartbeat, EndOfSession)):
            self.stats.heartbeats += 1

    def _send_udp(self, datagrams: tuple[bytes, ...] | list[bytes]) -> None:
        for data in datagrams:
            for target in self._targets:
                try:
                    self._udp.sendto(data, target)
                    self.stats.datagrams += 1
                except BlockingIOError:
                    self.stats.udp_dropped += 1
                except OSError as exc:
                    # ECONNREFUSED comes back from an earlier send to a closed port; the
                    # receiver may come up later, so it is counted, not fatal.
                    if exc.errno not in (errno.ECONNREFUSED, errno.ENOBUFS):
                        raise
                    self.stats.udp_errors += 1

    def close(self) -> None:
        self._pub.close(linger=0)
        self._udp.close()
