"""The launcher (`tickmesh up`): a bounded run, restart of a dead node, Ctrl-C cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bus.config import (
    FeedSection,
    GatewaySection,
    HistorySection,
    MeshConfig,
    OrdersSection,
    RecoverySection,
    RedisSection,
    SubscriberSection,
    TerminalSection,
    dump_toml,
)
from nodes.servers.redis_server import free_port
from tests.support import scaled, wait_until_sync

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def write_mesh(tmp_path: Path, feeds: int = 1) -> Path:
    # Child processes bind every endpoint of this mesh file: free ports (nodes.drills.ports,
    # case 4).
    udp = f"127.0.0.1:{free_port()}"
    symbols = [("EURUSD", "GBPUSD", "USDJPY", "XAUUSD"), ("US500", "BTCUSD")]
    cfg = MeshConfig(
        redis=RedisSection(url=f"redis://127.0.0.1:{free_port()}/0"),
        feeds=tuple(FeedSection(name=f"sim{i}" if i else "sim", symbols=symbols[i],
                                pub=f"tcp://127.0.0.1:{free_port()}", udp_targets=(udp,),
                                pull=f"tcp://127.0.0.1:{free_port()}", rate=2000,
                                heartbeat_ms=100) for i in range(feeds)),
        recovery=(RecoverySection(bind=f"tcp://127.0.0.1:{free_port()}"),),
        subscriber=SubscriberSection(udp_bind=udp),
        orders=OrdersSection(**{name: (f"tcp://127.0.0.1:{free_port()}",
                                       f"tcp://127.0.0.1:{free_port()}")
                                for name in ("clients", "peers", "updates", "executor",
                                             "replicas")},
                            ea_bind=f"tcp://127.0.0.1:{free_port()}"),
        # up puts the first feed on the EA path, its terminal listening here (--no-ea: not)
        terminal=TerminalSection(bind=f"tcp://127.0.0.1:{free_port()}"),
        history=HistorySection(query_bind=f"tcp://127.0.0.1:{free_port()}"),
        gateway=GatewaySection(listen=(f"127.0.0.1:{free_port()}",)),
    ).validate()
    path = tmp_path / "mesh.toml"
    path.write_text(dump_toml(cfg))
    return path


def up(tmp_path: Path, *args: str, feeds: int = 1) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "nodes.cli", "up", "--config",
           str(write_mesh(tmp_path, feeds)),
           "--run-dir", str(tmp_path / "run"), "--json", "--log-level", "WARNING", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def stop_all(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    """After a failed test, ``up`` still running: kill it and every node it started
    (SIGKILLed, ``up`` cannot stop them, and they would run on beside the next tests). A
    finished ``up`` stopped its nodes itself (and their pids may be reused by now)."""
    if proc.poll() is not None:
        return
    proc.kill()
    for pid in pids(tmp_path).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def pids(tmp_path: Path) -> dict[str, int]:
    try:
        data: dict[str, int] = json.loads((tmp_path / "run" / "pids.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def monitor_delivered(tmp_path: Path, path: str = "") -> int:
    """Ticks the monitor delivered (``path`` "tcp"/"udp": ticks it received on that path)."""
    try:
        stats = json.loads((tmp_path / "run" / "stats" / "monitor.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(stats.get(path, {}).get("ticks", 0) if path else stats.get("delivered", 0))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, dict[str, object]]:
    try:
        out, err = proc.communicate(timeout=scaled(timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert out.strip(), f"no output; stderr: {err[-2000:]}"
    return proc.returncode, json.loads(out.strip().splitlines()[-1])


def test_bounded_run_delivers_on_both_paths(tmp_path: Path) -> None:
    # 8 s: nine processes start on two cores, and the historian must have written by the end.
    rc, s = finish(up(tmp_path, "--for", "8"))
    assert rc == 0, json.dumps(s)
    assert s["received_tcp"] > 1000 and s["received_udp"] > 1000  # type: ignore[operator]
    assert s["unrecoverable"] == 0 and s["order_errors"] == 0
    # The order path ran too: the trader's orders were acked and filled by the executor.
    assert s["orders_filled"] > 20 and s["orders_timed_out"] == 0  # type: ignore[operator]
    assert s["executions"] >= s["orders_filled"]  # type: ignore[operator]
    assert set(pids(tmp_path)) == {"recovery-recovery", "backend-primary", "backend-backup",
                                   "executor", "feed-sim", "monitor", "trader", "historian",
                                   "gateway-1", "terminal", "ea-1", "ea-1.spare"}
    # On the EA path by default: the feed published what the EA pushed from the simulated
    # terminal, and the trader's orders were sent to the terminal and filled there (its own
    # deal count, not tickmesh's logs).
    assert s["ea_ticks"] >= s["published"] > 1000  # type: ignore[operator]
    assert s["ea_orders_sent"] >= s["orders_filled"]  # type: ignore[operator]
    assert s["terminal_deals"] >= s["orders_filled"]  # type: ignore[operator]
    assert s["ea_restarts"] == 0 and s["ea_restart_ms_max"] is None
    # One chart gateway by default, at the mesh file's first address.
    assert len(s["gateway_urls"]) == 1  # type: ignore[arg-type]
    # The historian recorded the run on the embedded DuckDB store: every tick the monitor
    # got (it records the TCP path, the monitor counts the first copy of either path), and
    # the orders with their fills.
    assert s["history_store"] == "duckdb" and s["history_holes"] == 0
    assert s["history_ticks"] == s["published"] and s["history_bars"] > 0
    assert s["history_orders"] >= 2 * s["orders_filled"]  # type: ignore[operator]
    assert s["history_executions"] >= s["orders_filled"]  # type: ignore[operator]
    assert all(not alive(p) for p in pids(tmp_path).values())


def test_bounded_run_on_a_clickhouse_pair_records_every_tick_on_it(tmp_path: Path) -> None:
    """``up --clickhouse``: two local clickhouse-servers, the historian writing both."""
    rc, s = finish(up(tmp_path, "--for", "8", "--clickhouse"), timeout=90)
    assert rc == 0, json.dumps(s)
    assert s["history_store"] == "clickhouse" and s["history_holes"] == 0
    assert s["history_ticks"] == s["published"] and s["history_orders"] > 0
    mesh = (tmp_path / "run" / "mesh.toml").read_text()
    assert 'store = "clickhouse"' in mesh
    # Both servers were stopped with the mesh (their command lines name their data dirs).
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "run" / "clickhouse-")],
                          capture_output=True, text=True, check=False)
    assert left.stdout.strip() == ""


def test_dead_feed_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    proc = up(tmp_path, "--for", "8")
    try:
        wait_until_sync(lambda: "feed-sim" in pids(tmp_path), 20, "the feed to start")
        first = pids(tmp_path)["feed-sim"]
        wait_until_sync(lambda: monitor_delivered(tmp_path) > 0, 20, "ticks at the monitor")
        os.kill(first, signal.SIGKILL)
        wait_until_sync(lambda: pids(tmp_path).get("feed-sim", first) != first, 5,
                        "the supervisor to restart the feed")
    finally:
        rc, s = finish(proc)
    assert s["restarts"] == {"feed-sim": 1}
    assert rc == 0, json.dumps(s)
    assert s["unrecoverable"] == 0 and s["order_errors"] == 0


def test_interrupt_stops_every_node(tmp_path: Path) -> None:
    proc = up(tmp_path)
    try:
        wait_until_sync(lambda: len(pids(tmp_path)) == 12, 20,
                        "twelve processes (the historian, the gateway, the terminal, the EA "
                        "and its spare too)")
        # On both paths: the run's exit status says whether both delivered (a TCP subscriber
        # joins later than the UDP one, and on a loaded machine that can take a while).
        wait_until_sync(lambda: min(monitor_delivered(tmp_path, "tcp"),
                                    monitor_delivered(tmp_path, "udp")) > 0, 20,
                        "ticks at the monitor on both paths")
        children = list(pids(tmp_path).values())
        proc.send_signal(signal.SIGINT)
        rc, s = finish(proc, 30)
    finally:
        stop_all(proc, tmp_path)
    assert rc == 0, json.dumps(s)
    assert all(not alive(p) for p in children)


def test_two_feeds_each_with_its_own_symbols(tmp_path: Path) -> None:
    """Also the mesh without the EA path (``--no-ea``): both feeds simulate their ticks."""
    rc, s = finish(up(tmp_path, "--for", "5", "--no-ea", feeds=2))
    assert rc == 0, json.dumps(s)
    assert "ea_ticks" not in s and not {"terminal", "ea-1"} & set(pids(tmp_path))
    monitor = json.loads((tmp_path / "run" / "stats" / "monitor.json").read_text())
    assert set(monitor["per_symbol"]) == {"EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "US500",
                                          "BTCUSD"}
    assert min(monitor["per_symbol"].values()) > 500
    assert monitor["lost"] == 0 and monitor["order_errors"] == 0


def ea_stats(tmp_path: Path, name: str = "ea-1") -> dict[str, int]:
    try:
        data: dict[str, int] = json.loads((tmp_path / "run" / "stats" / f"{name}.json")
                                          .read_text())
        return data
    except (OSError, ValueError):
        return {}


def trader_filled(tmp_path: Path) -> int:
    try:
        return int(json.loads((tmp_path / "run" / "stats" / "trader.json").read_text())["filled"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_ea_is_taken_over_by_its_warm_spare(tmp_path: Path) -> None:
    """SIGKILL the running EA under ``up --ea-standby``: its spare (started warm, waiting on
    stdin) becomes ea-1 at once, a new spare follows, ticks and fills go on, the run is
    clean."""
    proc = up(tmp_path, "--ea-standby")  # until SIGINT: the kill is not raced by a deadline
    try:
        wait_until_sync(lambda: {"ea-1.spare", "ea-2"} <= set(pids(tmp_path)), 20,
                        "ea-1's spare and the standby ea-2")
        wait_until_sync(lambda: ea_stats(tmp_path).get("pushed", 0) > 0
                        and trader_filled(tmp_path) > 10, 20, "ticks and fills through ea-1")
        first, spare = pids(tmp_path)["ea-1"], pids(tmp_path)["ea-1.spare"]
        started = ea_stats(tmp_path)["started_ns"]
        os.kill(first, signal.SIGKILL)
        wait_until_sync(lambda: pids(tmp_path).get("ea-1") == spare, 5,
                        "the spare to take over as ea-1")
        # The spare runs: it writes ea-1's stats file, pushes ticks, and a new spare is up.
        wait_until_sync(lambda: ea_stats(tmp_path).get("started_ns", started) != started
                        and ea_stats(tmp_path).get("pushed", 0) > 0, 10,
                        "ticks from the new ea-1")
        wait_until_sync(lambda: pids(tmp_path).get("ea-1.spare", spare) not in (spare, first),
                        10, "the next spare")
        before = trader_filled(tmp_path)
        wait_until_sync(lambda: trader_filled(tmp_path) > before + 20, 20,
                        "orders filled after the kill")
        proc.send_signal(signal.SIGINT)
        rc, s = finish(proc, 30)
    finally:
        stop_all(proc, tmp_path)
    assert rc == 0, json.dumps(s)
    assert s["restarts"] == {"ea-1": 1}
    assert s["ea_restarts"] == 1 and s["ea_cold_restarts"] == 0
    assert isinstance(s["ea_restart_ms_max"], float)
    assert s["unrecoverable"] == 0 and s["orders_timed_out"] == 0
    assert all(not alive(p) for p in pids(tmp_path).values())


def test_killed_active_backend_is_restarted_and_orders_keep_flowing(tmp_path: Path) -> None:
    proc = up(tmp_path, "--for", "8")
    try:
        wait_until_sync(lambda: "backend-primary" in pids(tmp_path), 20, "the backend pair")
        stats = tmp_path / "run" / "stats"

        def filled() -> int:
            try:
                return int(json.loads((stats / "trader.json").read_text())["filled"])
            except (OSError, ValueError, KeyError):
                return 0
        wait_until_sync(lambda: filled() > 10, 20, "orders filled before the kill")
        before = filled()
        os.kill(pids(tmp_path)["backend-primary"], signal.SIGKILL)
        wait_until_sync(lambda: filled() > before + 20, 20, "orders filled after the kill")
    finally:
        rc, s = finish(proc)
    assert rc == 0, json.dumps(s)
    assert s["restarts"] == {"backend-primary": 1}
    assert s["orders_timed_out"] == 0 and s["orders_filled"] == s["orders_acked"]
    backup = json.loads((tmp_path / "run" / "stats" / "backend-backup.json").read_text())
    assert backup["state"] == "active" and backup["takeovers"] == 1  # it took over, once


def test_ha_mesh_rides_through_a_killed_order_store_master(tmp_path: Path) -> None:
    """`up --ha`: the mesh finds both masters through the Sentinels; the RTSS master is
    SIGKILLed under load, Sentinel promotes its replica, and the run stays clean: every
    acknowledged order filled, none timed out, no tick lost."""
    from bus.config import load_config
    from nodes.servers.redis_server import command

    proc = up(tmp_path, "--ha", "--for", "14")
    try:
        wait_until_sync(lambda: (tmp_path / "run" / "mesh.toml").exists()
                        and "backend-primary" in pids(tmp_path), 30, "the mesh on HA Redis")
        cfg = load_config(tmp_path / "run" / "mesh.toml")
        assert len(cfg.redis.sentinels) == 3 and cfg.redis.orders_master == "tickmesh-rtss"
        host, port = cfg.redis.sentinels[0].split(":")
        stats = tmp_path / "run" / "stats"

        def filled() -> int:
            try:
                return int(json.loads((stats / "trader.json").read_text())["filled"])
            except (OSError, ValueError, KeyError):
                return 0
        wait_until_sync(lambda: filled() > 10, 20, "orders filled before the kill")
        reply = command((host, int(port)), "SENTINEL", "get-master-addr-by-name",
                        "tickmesh-rtss")
        assert isinstance(reply, list)
        master = (str(reply[0]), int(str(reply[1])))
        info = command(master, "INFO", "server")
        assert isinstance(info, str)
        pid = int(info.split("process_id:")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        before = filled()
        wait_until_sync(lambda: filled() > before + 20, 30, "orders filled after the switch")
    finally:
        rc, s = finish(proc, 60)
    assert rc == 0, json.dumps(s)
    assert s["orders_timed_out"] == 0 and s["orders_filled"] == s["orders_acked"]
    assert s["unrecoverable"] == 0
