"""Tests for nodes.servers.redis_ha: the RTS/RTSS master-replica groups and three Sentinels,
for real."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import psutil
import pytest
import redis

from nodes.servers.redis_ha import MASTER_NAMES, HAPorts, RedisHA, Role, mesh_redis_section
from nodes.servers.redis_server import RedisProcess, SentinelProcess, ServerError, command
from tests.support import scaled, wait_until_sync

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "ha s3cret"


def client_for(server: RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


@pytest.fixture
def ha(redis_ha: RedisHA) -> RedisHA:
    # The shared topology (tests/conftest.py), for the checks that only read it.
    assert redis_ha.password == PASSWORD
    return redis_ha


def test_sentinels_agree_on_both_masters(ha: RedisHA) -> None:
    assert ha.master_names == {Role.RTS: "tickmesh-rts", Role.RTSS: "tickmesh-rtss"}
    for role in Role:
        first, second = ha.servers(role)
        assert ha.master_address(role) == first.address
        for sentinel in ha.sentinels:
            assert command(
                sentinel, "SENTINEL", "get-master-addr-by-name", MASTER_NAMES[role]
            ) == [first.host, str(first.port)]
            replicas = command(sentinel, "SENTINEL", "replicas", MASTER_NAMES[role])
            assert isinstance(replicas, list) and len(replicas) == 1
            assert ha.info(second)["role"] == "slave"
    assert len({port for _, port in ha.sentinels}) == 3


def test_per_role_eviction_and_aof_settings(ha: RedisHA) -> None:
    expected_policy = {Role.RTS: "allkeys-lru", Role.RTSS: "noeviction"}
    for role in Role:
        for server in ha.servers(role):
            client = client_for(server)
            try:
                assert client.config_get("maxmemory-policy") == {
                    "maxmemory-policy": expected_policy[role]
                }
                assert client.config_get("appendonly") == {"appendonly": "yes"}
                assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
                maxmemory = client.config_get("maxmemory")["maxmemory"]
                if role is Role.RTS:
                    assert maxmemory == str(256 * 1024 * 1024)
                assert client.config_get("masterauth") == {"masterauth": PASSWORD}
            finally:
                client.close()


def test_mesh_section_parses_as_toml(ha: RedisHA) -> None:
    section = tomllib.loads(mesh_redis_section(ha))["redis"]
    assert section == {
        "sentinels": [f"{host}:{port}" for host, port in ha.sentinels],
        "master": "tickmesh-rts",
        "orders_master": "tickmesh-rtss",
        "password": PASSWORD,
    }


def test_rtss_master_crash_fails_over_and_the_old_master_rejoins(tmp_path: Path) -> None:
    with RedisHA(tmp_path, password=PASSWORD) as ha:
        _crash_rtss_master_and_rejoin(ha)


def _crash_rtss_master_and_rejoin(ha: RedisHA) -> None:
    old_master = ha.process_at(ha.master_address(Role.RTSS))
    client = client_for(old_master)
    try:
        client.hset("order:1", mapping={"state": "acked", "qty": "5"})
        # The write is on the replica before the crash: nothing acknowledged may be lost.
        assert client.execute_command("WAIT", 1, 2000) == 1
    finally:
        client.close()

    killed_at = time.monotonic()
    old = ha.kill_master(Role.RTSS)
    assert old == old_master.address
    assert not old_master.running
    new, seconds = ha.wait_switch(Role.RTSS, old, timeout=scaled(15), since=killed_at)
    print(f"\nRTSS switch after SIGKILL: {seconds:.2f} s (down-after-milliseconds 1500)")
    assert new != old
    new_master = ha.process_at(new)
    assert new_master is not old_master
    assert ha.info(new_master)["role"] == "master"
    client = client_for(new_master)
    try:
        assert client.hgetall("order:1") == {b"state": b"acked", b"qty": b"5"}
    finally:
        client.close()
    # The other group was not touched.
    assert ha.master_address(Role.RTS) == ha.servers(Role.RTS)[0].address

    started = time.monotonic()
    ha.restart(old_master, timeout=scaled(15))
    # Back as the new master's replica, linked, and electable again.
    assert ha.master_address(Role.RTSS) == new
    fields = ha.info(old_master)
    assert fields["role"] == "slave" and fields["master_link_status"] == "up"
    assert (fields["master_host"], int(fields["master_port"])) == new
    assert _replica_priority(old_master) == 100
    print(f"old master back as a replica in {time.monotonic() - started:.2f} s")
    for server in (old_master, new_master):
        client = client_for(server)
        try:
            assert client.hgetall("order:1") == {b"state": b"acked", b"qty": b"5"}
        finally:
            client.close()


def _replica_priority(server: RedisProcess) -> int:
    client = client_for(server)
    try:
        return int(client.config_get("replica-priority")["replica-priority"])
    finally:
        client.close()


def _sentinel_logs(ha: RedisHA) -> str:
    return "".join(s.log_path.read_text() for s in ha.sentinel_processes)


def test_a_rejoining_server_is_not_promoted_before_it_has_caught_up(tmp_path: Path) -> None:
    """The double failover that lost acknowledged orders in the Redis drill, made certain: the
    new master stops answering while the old one rejoins with its stale AOF. Sentinel must
    refuse to promote the stale server, and the acknowledged write must survive."""
    with RedisHA(tmp_path) as ha:
        first = ha.process_at(ha.master_address(Role.RTSS))
        killed_at = time.monotonic()
        old = ha.kill_master(Role.RTSS)
        new, _ = ha.wait_switch(Role.RTSS, old, timeout=scaled(15), since=killed_at)
        second = ha.process_at(new)
        client = client_for(second)
        try:  # acknowledged after the kill: the first master's AOF does not have it
            client.hset("order:after-kill", mapping={"state": "acked"})
        finally:
            client.close()
        assert second.pid is not None
        os.kill(second.pid, signal.SIGSTOP)  # alive, silent: Sentinel will call it down
        try:
            rejoin = threading.Thread(target=ha.restart, args=(first,),
                                      kwargs={"timeout": scaled(30)})
            rejoin.start()

            def refused_to_promote() -> bool:
                logs = _sentinel_logs(ha)
                assert f"+promoted-slave slave {first.host}:{first.port}" not in logs, \
                    "the stale server was promoted"
                return "-failover-abort-no-good-slave" in logs
            wait_until_sync(refused_to_promote, 15, "Sentinel to try a failover and refuse it",
                            interval=0.05)
            assert _replica_priority(first) == 0  # not electable while it has not synced
        finally:
            os.kill(second.pid, signal.SIGCONT)
        rejoin.join(scaled(30))
        assert not rejoin.is_alive()
        assert ha.master_address(Role.RTSS) == new
        assert _replica_priority(first) == 100  # caught up: electable again
        for server in (first, second):
            client = client_for(server)
            try:
                assert client.hgetall("order:after-kill") == {b"state": b"acked"}
            finally:
                client.close()


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    topology = RedisHA(tmp_path)
    with topology:
        pids = [process.pid for process in topology.processes]
        assert all(pid is not None for pid in pids)
    assert not any(process.running for process in topology.processes)
    assert not any(pid is not None and psutil.pid_exists(pid) for pid in pids)
    topology.stop()  # idempotent


def test_wrong_replication_password_fails_start_clearly(tmp_path: Path) -> None:
    topology = RedisHA(tmp_path, password="right", server_extra={"masterauth": "wrong"})
    started = time.monotonic()
    with pytest.raises(ServerError, match="cannot authenticate to its master") as raised:
        topology.start(timeout=scaled(10))
    assert "WRONGPASS" in str(raised.value)
    # Not a timeout: a refused password is reported as soon as the replica sees it.
    assert time.monotonic() - started < scaled(5)
    assert not any(process.running for process in topology.processes)


def test_sentinel_process_keeps_its_single_master_form(tmp_path: Path) -> None:
    single = SentinelProcess(master_host="127.0.0.1", master_port=1, data_dir=tmp_path / "a")
    assert single.master_names == ("tickmesh",)
    both = SentinelProcess(
        masters=[("a", "127.0.0.1", 1), ("b", "127.0.0.1", 2)], data_dir=tmp_path / "b"
    )
    assert both.master_names == ("a", "b")
    with pytest.raises(ValueError):
        SentinelProcess(data_dir=tmp_path / "c")
    with pytest.raises(ValueError):
        SentinelProcess(
            master_host="127.0.0.1", master_port=1, masters=[("a", "127.0.0.1", 1)],
            data_dir=tmp_path / "d",
        )


def test_ports_from_base_and_parse() -> None:
    assert HAPorts.from_base(6379) == HAPorts(
        rts=(6379, 6380), rtss=(6381, 6382), sentinels=(26379, 26380, 26381)
    )
    assert HAPorts.parse("1,2,3,4,5,6,7").sentinels == (5, 6, 7)
    with pytest.raises(ValueError):
        HAPorts.parse("1,2,3")
    with pytest.raises(ValueError):
        HAPorts.parse("1,1,3,4,5,6,7")


def _launcher(tmp_path: Path, *extra: str) -> tuple[list[str], HAPorts]:
    ports = HAPorts.free()
    spec = ",".join(str(p) for p in (*ports.rts, *ports.rtss, *ports.sentinels))
    argv = [
        str(REPO_ROOT / "scripts" / "run-redis-ha"),
        "--dir", str(tmp_path / "ha"), "--ports", spec, *extra,
    ]
    return argv, ports


def _children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _servers_in(directory: Path) -> list[psutil.Process]:
    """Processes whose command line names a config under ``directory``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(directory) in part for part in cmdline):
            found.append(proc)
    return found


def test_run_redis_ha_for_seconds_exits_zero_and_leaves_nothing(tmp_path: Path) -> None:
    argv, ports = _launcher(tmp_path, "--for", "3")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(40), check=False)
    assert done.returncode == 0, done.stderr
    section = tomllib.loads(done.stdout)["redis"]
    assert section == {
        "sentinels": [f"127.0.0.1:{port}" for port in ports.sentinels],
        "master": "tickmesh-rts",
        "orders_master": "tickmesh-rtss",
    }
    assert _servers_in(tmp_path / "ha") == []


def test_run_redis_ha_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    argv, _ = _launcher(tmp_path, "--password", "pw")
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
    try:
        assert proc.stdout is not None
        # The section is printed once the topology is up.
        section = "".join(proc.stdout.readline() for _ in range(5))
        assert section.startswith("[redis]\n"), stderr_path.read_text()
        assert tomllib.loads(section)["redis"]["password"] == "pw"
        assert len(_children_of(proc.pid)) == 7
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=scaled(20))
        assert proc.returncode == 0, stderr_path.read_text()
        assert _servers_in(tmp_path / "ha") == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
