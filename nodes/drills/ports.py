"""Ports for a drill's processes, race-free where the binder allows it.

In order of preference:

1. The binder is in this process: bind ``tcp://127.0.0.1:*`` and read the port back
   (:func:`bind_loopback`). Nothing can take the port in between.
2. The binder is a child that can report what it bound: let it bind ``*`` and send the
   endpoint on its ready line (the raw references of the benchmarks do this).
3. A server that cannot bind port 0 (redis-server, redis-sentinel): start it on a chosen port
   and start again on another when the bind fails (``RedisProcess.start`` does this).
4. Nothing better: a mesh file must name every endpoint before the nodes that bind them start.
   :func:`tcp_endpoint` / :func:`udp_address` hand out a port that was free a moment ago
   (check-then-use; see ``nodes.servers.redis_server.free_port``), and the drill's start-up
   check (a node that exits at once) reports the rare collision.
"""

from __future__ import annotations

import socket
from typing import Any

from nodes.servers.redis_server import free_port

__all__ = ["bind_loopback", "free_port", "free_udp_port", "tcp_endpoint", "udp_address"]

HOST = "127.0.0.1"


def bind_loopback(sock: Any, host: str = HOST) -> str:
    """Bind a ZeroMQ socket to a port the kernel picks on ``host`` and return the endpoint
    it got (``LAST_ENDPOINT``), e.g. ``tcp://127.0.0.1:40123``."""
    import zmq

    sock.bind(f"tcp://{host}:*")
    endpoint: bytes = sock.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode()


def tcp_endpoint(host: str = HOST) -> str:
    """``tcp://host:PORT`` on a port that was free a moment ago, for a mesh file (case 4 of
    the module docstring)."""
    return f"tcp://{host}:{free_port(host)}"


def free_udp_port(host: str = HOST) -> int:
    """A UDP port the kernel called free a moment ago (case 4 of the module docstring)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def udp_address(host: str = HOST) -> str:
    """``host:PORT`` for a UDP target or bind in a mesh file."""
    return f"{host}:{free_udp_port(host)}"
