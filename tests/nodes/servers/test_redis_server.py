"""Tests for nodes.servers.redis_server: real redis-server and redis-sentinel processes on
loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nodes.servers import redis_server as servers
from nodes.servers.redis_server import RedisProcess, SentinelProcess, ServerError, free_port
from protocols.errors import TickmeshError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    # appendfsync always: every acknowledged write is on disk, so a SIGKILL right after it
    # loses nothing and the restart test needs no waiting.
    with RedisProcess(data_dir=tmp_path / "redis", extra={"appendfsync": "always"}) as server:
        yield server


def client_for(server: RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_set_get_kill_restart_keeps_aof_data(redis_server: RedisProcess) -> None:
    client = client_for(redis_server)
    try:
        assert client.set("tick:last", "42.5")
        assert client.get("tick:last") == b"42.5"
    finally:
        client.close()

    pid = redis_server.pid
    port = redis_server.port
    assert pid is not None
    redis_server.kill()
    assert redis_server.pid is None
    assert not psutil.pid_exists(pid)

    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid not in (None, pid)
    client = client_for(redis_server)
    try:
        assert client.get("tick:last") == b"42.5"
    finally:
        client.close()


def test_redis_stop_is_clean_and_idempotent(tmp_path: Path) -> None:
    server = RedisProcess(data_dir=tmp_path)
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()
    assert server.pid is None
    assert not psutil.pid_exists(pid)
    assert not server.running


def test_redis_with_password_and_url(tmp_path: Path) -> None:
    with RedisProcess(data_dir=tmp_path, password="s3cret/pw") as server:
        assert server.url == f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/0"
        client = client_for(server)
        try:
            assert client.ping()
        finally:
            client.close()
        # No retries: redis-py would otherwise back off and retry the refused AUTH for seconds.
        anonymous = redis.Redis(
            host=server.host, port=server.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        try:
            with pytest.raises(redis.AuthenticationError):
                anonymous.get("x")
        finally:
            anonymous.close()


def test_redis_config_carries_the_requested_settings(tmp_path: Path) -> None:
    with RedisProcess(
        data_dir=tmp_path, maxmemory="64mb", maxmemory_policy="allkeys-lru", appendonly=False
    ) as server:
        client = client_for(server)
        try:
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
            assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("save") == {"save": ""}
        finally:
            client.close()


def test_redis_replica_follows_its_master(tmp_path: Path) -> None:
    with (
        RedisProcess(data_dir=tmp_path / "master") as master,
        RedisProcess(
            data_dir=tmp_path / "replica", replica_of=(master.host, master.port)
        ) as replica,
    ):
        client = client_for(replica)
        try:
            info = client.info("replication")
            assert info["role"] == "slave"
            assert info["master_port"] == master.port
        finally:
            client.close()


def test_sentinel_reports_the_master_it_monitors(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    with SentinelProcess(
        master_host=redis_server.host,
        master_port=redis_server.port,
        data_dir=tmp_path / "sentinel",
        master_name="tickmesh",
    ) as sentinel:
        assert sentinel.pid is not None
        client = redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=5)
        try:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", "tickmesh")
        finally:
            client.close()
        assert [part.decode() if isinstance(part, bytes) else part for part in reply] == [
            redis_server.host,
            str(redis_server.port),
        ]
        sentinel.kill()
        assert sentinel.pid is None


def test_bad_config_fails_with_the_log_tail(tmp_path: Path) -> None:
    server = RedisProcess(data_dir=tmp_path, extra={"no-such-directive": "1"})
    with pytest.raises(ServerError, match="no-such-directive"):
        server.start(timeout=5)
    assert server.pid is None


@pytest.mark.parametrize(
    ("make", "binary"),
    [
        (lambda d: RedisProcess(data_dir=d), "redis-server"),
        (
            lambda d: SentinelProcess(master_host="127.0.0.1", master_port=1, data_dir=d),
            "redis-sentinel",
        ),
    ],
)
def test_missing_binary_says_how_to_install_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path], RedisProcess | SentinelProcess],
    binary: str,
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(servers, "_FALLBACK_DIRS", ())
    server = make(tmp_path / "data")
    with pytest.raises(ServerError) as raised:
        server.start()
    assert str(raised.value) == (
        f"{binary} not found on PATH: install it with `apt-get install {binary}`"
    )
    assert isinstance(raised.value, TickmeshError)
    assert isinstance(raised.value, RuntimeError)
    assert server.pid is None


def test_no_server_outlives_the_python_that_started_it(tmp_path: Path) -> None:
    # A script that starts a server and exits without stopping it: the atexit guard must
    # kill it.
    script = (
        "import pathlib, sys\n"
        "from nodes.servers.redis_server import RedisProcess\n"
        f"server = RedisProcess(data_dir=pathlib.Path({str(tmp_path)!r}))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
    )
    repo_root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    pid = int(done.stdout.split()[0])
    assert not psutil.pid_exists(pid)


def test_free_port_never_hands_out_a_port_twice() -> None:
    from nodes.servers.redis_server import free_port
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < 32000 for p in ports)  # below the kernel's ephemeral range
