"""A whole local mesh as ``tickmesh up`` runs it, on free loopback ports, for tests, benchmarks
and drills that need every node (the gateway's browser tests, bench-gateway).

    cfg = free_mesh_config(run_dir, gateways=2)
    with UpMesh(cfg, run_dir, gateways=2) as mesh:
        mesh.wait_gateways()
        mesh.kill("gateway-1")          # SIGKILL; the supervisor restarts it
        ...

The supervisor (``nodes.supervisor``) starts Redis on the mesh file's port, the historian on a
DuckDB file in the run dir, the backend pair, the executor, the feed, the monitor and the
gateways, and restarts any that dies: a drill kills a node by its pid and the mesh heals itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from bus.config import (
    FeedSection,
    GatewaySection,
    HistorySection,
    MeshConfig,
    MeshSection,
    OrdersSection,
    RecoverySection,
    RedisSection,
    SubscriberSection,
    TerminalSection,
    dump_toml,
)
from nodes.drills.ports import free_port, tcp_endpoint, udp_address
from nodes.drills.procs import stop_process
from protocols.errors import DrillError

__all__ = ["UpMesh", "free_mesh_config", "http_json"]

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")


def free_mesh_config(run_dir: Path, *, rate: float = 1000.0, trader_rate: float = 0.0,
                     gateways: int = 1, symbols: tuple[str, ...] = SYMBOLS,
                     prefix: str = "gw", **gateway: Any) -> MeshConfig:
    """A mesh whose every endpoint is a free loopback port, its files in ``run_dir``."""
    def eps() -> tuple[str, str]:
        return tcp_endpoint(), tcp_endpoint()

    udp = udp_address()
    return MeshConfig(
        mesh=MeshSection(name=prefix, key_prefix=prefix),
        redis=RedisSection(url=f"redis://127.0.0.1:{free_port()}/0"),
        feeds=(FeedSection(name="sim", symbols=symbols, rate=rate, pub=tcp_endpoint(),
                           udp_targets=(udp,), pull=tcp_endpoint()),),
        recovery=(RecoverySection(bind=tcp_endpoint()),),
        subscriber=SubscriberSection(udp_bind=udp),
        orders=OrdersSection(trader_rate=trader_rate, clients=eps(), peers=eps(),
                             updates=eps(), executor=eps(), replicas=eps(),
                             ea_bind=tcp_endpoint()),
        terminal=TerminalSection(bind=tcp_endpoint(), data_dir=str(run_dir / "terminal")),
        history=HistorySection(duckdb_path=str(run_dir / "history.duckdb"),
                               spool_path=str(run_dir / "history-spool.duckdb"),
                               query_bind=tcp_endpoint()),
        gateway=replace(GatewaySection(), listen=tuple(f"127.0.0.1:{free_port()}"
                                                       for _ in range(max(1, gateways))),
                        users_file=str(run_dir / "users.toml"), **gateway),
    ).validate()


def http_json(url: str, body: Any = None, timeout: float = 5.0) -> Any:
    """GET (or POST ``body`` as JSON) and decode the JSON answer; HTTP errors raise."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class UpMesh:
    """``tickmesh up`` on a mesh file, as a child process group."""

    def __init__(self, cfg: MeshConfig, run_dir: Path, *, gateways: int = 1) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.gateways = gateways
        self.urls = cfg.gateway.urls[:gateways]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> UpMesh:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "mesh-in.toml"
        path.write_text(dump_toml(self.cfg))
        log = (self.run_dir / "up.log").open("ab")
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", "up", "--config", str(path), "--run-dir",
             str(self.run_dir), "--gateways", str(self.gateways)],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
        log.close()
        return self

    def pids(self) -> dict[str, int]:
        try:
            data: dict[str, int] = json.loads((self.run_dir / "pids.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Kill node ``name`` (e.g. ``gateway-1``); the supervisor restarts it. Its pid."""
        pid = self.pids()[name]
        os.kill(pid, sig)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pids().get(name)
            if pid is not None and pid != old_pid:
                return pid
            time.sleep(0.02)
        raise DrillError(f"{name} was not restarted within {timeout:g} s")

    def wait_gateways(self, timeout: float = 60.0, symbol: str = SYMBOLS[0]) -> None:
        """Until every gateway answers and serves bars of ``symbol`` (history and live)."""
        for url in self.urls:
            self.wait_gateway(url, timeout, symbol)

    def wait_gateway(self, url: str, timeout: float = 60.0, symbol: str = SYMBOLS[0]) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DrillError(f"tickmesh up exited with {self.proc.returncode}: see "
                                 f"{self.run_dir / 'up.log'}")
            try:
                got = http_json(f"{url}/udf/history?symbol={symbol}&resolution=1S&countback=1"
                                f"&to={int(time.time()) + 5}", timeout=2.0)
                if got.get("s") == "ok":
                    return
            except (OSError, ValueError, urllib.error.URLError) as exc:
                last = exc
            time.sleep(0.1)
        raise DrillError(f"gateway {url} not serving bars within {timeout:g} s ({last}); "
                         f"logs in {self.run_dir / 'logs'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, timeout=30.0)

    def __enter__(self) -> UpMesh:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
