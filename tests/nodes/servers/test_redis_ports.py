"""RedisProcess / SentinelProcess start on a chosen port and move to another one when the
bind fails ("Address already in use"), never mistaking another server for their own."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodes.servers import redis_server as servers
from nodes.servers.redis_server import RedisProcess, SentinelProcess, ServerError

pytestmark = pytest.mark.timeout(30)


def first_pick(monkeypatch: pytest.MonkeyPatch, port: int) -> list[int]:
    """Make ``free_port`` hand out ``port`` first (as if it was free a moment ago), then
    real free ports; returns the ports handed out."""
    real: Callable[[str], int] = servers.free_port
    handed: list[int] = []

    def pick(host: str = "127.0.0.1") -> int:
        handed.append(port if not handed else real(host))
        return handed[-1]

    monkeypatch.setattr(servers, "free_port", pick)
    return handed


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the test's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_redis_moves_to_another_port_when_its_port_is_taken(
        tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    handed = first_pick(monkeypatch, taken_port)
    with RedisProcess(data_dir=tmp_path / "redis", appendonly=False) as server:
        assert server.port != taken_port
        assert handed[0] == taken_port and server.port == handed[-1]
        assert server.answers()
        assert server.url.endswith(f":{server.port}/0")
    assert servers._ADDRESS_IN_USE in server.log_path.read_text()


def test_another_redis_on_the_port_is_not_taken_for_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with RedisProcess(data_dir=tmp_path / "a", appendonly=False) as other:
        # The other server answers PING on that port while ours fails to bind it.
        first_pick(monkeypatch, other.port)
        with RedisProcess(data_dir=tmp_path / "b", appendonly=False) as ours:
            assert ours.port != other.port
            assert ours._answering_pid() == ours.pid
            assert other.running and other._answering_pid() == other.pid


def test_sentinel_moves_too(tmp_path: Path, taken_port: int,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    with RedisProcess(data_dir=tmp_path / "master", appendonly=False) as master:
        first_pick(monkeypatch, taken_port)
        with SentinelProcess(master_host=master.host, master_port=master.port,
                             data_dir=tmp_path / "sentinel") as sentinel:
            assert sentinel.port != taken_port
            assert sentinel.answers()


def test_a_port_given_by_the_caller_never_moves(tmp_path: Path, taken_port: int) -> None:
    server = RedisProcess(port=taken_port, data_dir=tmp_path / "redis", appendonly=False)
    with pytest.raises(ServerError, match="exited"):
        server.start()
    assert server.port == taken_port and not server.running
