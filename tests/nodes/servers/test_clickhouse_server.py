"""Tests for nodes.servers.clickhouse_server: real clickhouse-server (18.16) processes on
loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from nodes.servers import redis_server as servers
from nodes.servers.clickhouse_server import ClickHouseProcess
from tests.nodes.servers.test_redis_ports import first_pick
from tests.support import scaled

pytestmark = pytest.mark.timeout(60)


def query(server: ClickHouseProcess, sql: str,
          data: list[list[object]] | None = None) -> list[tuple[object, ...]]:
    client = server.client(timeout=scaled(5))
    try:
        rows: list[tuple[object, ...]] = client.execute(sql, data)
        return rows
    finally:
        client.disconnect()


def test_clickhouse_keeps_its_data_across_a_kill_and_a_restart(tmp_path: Path) -> None:
    server = ClickHouseProcess(data_dir=tmp_path / "ch")
    server.start(timeout=scaled(20))
    try:
        port = server.port
        query(server, "CREATE TABLE default.t (x UInt64) ENGINE = MergeTree ORDER BY x")
        query(server, "INSERT INTO default.t (x) VALUES", [[1], [2]])
        server.kill()
        assert server.pid is None and not server.answers()
        server.start(timeout=scaled(20))
        assert server.port == port
        assert query(server, "SELECT sum(x) FROM default.t") == [(3,)]
        server.restart(timeout=scaled(20))  # a clean stop, then the same again
        assert query(server, "SELECT count() FROM default.t") == [(2,)]
    finally:
        server.stop()
    assert not server.running
    server.stop()  # idempotent


def test_clickhouse_config_is_utc_loopback_and_http_only_when_asked(tmp_path: Path) -> None:
    http_port = servers.free_port()
    with ClickHouseProcess(data_dir=tmp_path / "ch", http_port=http_port) as server:
        # 2026-01-01T00:00:00Z read as a local time of the server: UTC.
        assert query(server, "SELECT toString(toDateTime(1767225600))") == [
            ("2026-01-01 00:00:00",)]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/?query=SELECT%2042",
                                    timeout=scaled(5)) as reply:
            assert reply.read() == b"42\n"
        listening = {c.laddr.port for c in psutil.Process(server.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {server.port, http_port}
        assert server.log_path.exists()
    plain = ClickHouseProcess(data_dir=tmp_path / "plain")
    assert plain.http_port is None
    plain.data_dir.mkdir()
    plain._write_config()
    assert "<http_port>" not in plain.config_path.read_text()


def test_clickhouse_moves_off_a_port_held_by_another_clickhouse(
        tmp_path: Path, clickhouse_server: ClickHouseProcess,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The session's server answers on the port ours is told is free: ours fails to bind it,
    # must not take the other's answers for its own, and moves to another port.
    first_pick(monkeypatch, clickhouse_server.port)
    with ClickHouseProcess(data_dir=tmp_path / "ch") as ours:
        assert ours.port != clickhouse_server.port
        assert ours._is_ours(timeout=scaled(5))
        assert not ClickHouseProcess(data_dir=tmp_path / "x", port=ours.port)._is_ours(
            timeout=scaled(5))
    assert clickhouse_server.answers() and clickhouse_server._is_ours(timeout=scaled(5))
    assert servers._ADDRESS_IN_USE in ours.log_path.read_text()


def test_a_port_given_for_clickhouse_never_moves(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        server = ClickHouseProcess(data_dir=tmp_path / "ch", port=taken)
        with pytest.raises(servers.ServerError, match="exited with code"):
            server.start(timeout=scaled(20))
        assert server.port == taken and server.pid is None


def test_no_clickhouse_outlives_the_python_that_started_it(tmp_path: Path) -> None:
    script = (
        "import pathlib\n"
        "from nodes.servers.clickhouse_server import ClickHouseProcess\n"
        f"server = ClickHouseProcess(data_dir=pathlib.Path({str(tmp_path)!r}))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
    )
    repo_root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True,
                          text=True, timeout=scaled(30), check=True)
    pid = int(done.stdout.split()[0])
    assert not psutil.pid_exists(pid)


def test_run_clickhouse_serves_in_the_foreground_until_sigterm(tmp_path: Path) -> None:
    port = servers.free_port()
    repo_root = Path(__file__).resolve().parents[3]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "nodes.servers.clickhouse_server", "--port", str(port),
         "--data", str(tmp_path / "ch"), "--log-level", "WARNING"],
        cwd=repo_root, stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        first = launcher.stdout.readline()
        assert first.startswith("clickhouse-server pid ")
        server_pid = int(first.split()[2])
        rest = [launcher.stdout.readline() for _ in range(3)]
        assert rest[-1] == f'clickhouse = ["127.0.0.1:{port}"]\n'
        assert ClickHouseProcess(data_dir=tmp_path / "probe", port=port).answers()
        launcher.terminate()
        assert launcher.wait(timeout=scaled(20)) == 0
        assert not psutil.pid_exists(server_pid)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
