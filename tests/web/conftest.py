"""Fixtures of the browser tests: one headless Chromium (Debian's, driven by Playwright) and
one whole mesh (``tickmesh up`` with two supervised gateways) for the session; a gateway of
the tests' own that they kill and start again; a page per test in its own browser context (its
own localStorage: its own session)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from nodes.drills.mesh import UpMesh, free_mesh_config
from nodes.drills.ports import free_port
from nodes.drills.procs import Node
from tests.support import scaled


@pytest.fixture(scope="package")  # ended with tests/web: Playwright's loop must not outlive it
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")  # ended with tests/web: Playwright's loop must not outlive it
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is missing: apt-get install -y chromium"
    # Never `playwright install` (it downloads a browser): Debian's is what runs here.
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                         args=["--no-sandbox"])
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="package")  # ended with tests/web: Playwright's loop must not outlive it
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpMesh]:
    """The whole mesh with gateway-1 and gateway-2 (the supervisor restarts a killed one)."""
    run_dir = tmp_path_factory.mktemp("web-mesh")
    cfg = free_mesh_config(run_dir, rate=500.0, gateways=2, orders_per_s=50.0)
    with UpMesh(cfg, run_dir, gateways=2) as m:
        m.wait_gateways(timeout=scaled(90))
        yield m


class OwnGateway:
    """A gateway of the mesh that no supervisor restarts: killed, it stays down until
    :meth:`start` (the same port, so a page pinned to it comes back to it)."""

    def __init__(self, mesh: UpMesh, workdir: Path) -> None:
        self.mesh = mesh
        self.url = f"http://127.0.0.1:{free_port()}"
        config = mesh.run_dir / "mesh.toml"  # up's own, with the users file it made
        self.stats = workdir / "gw.json"
        self.node = Node("gw-own", [sys.executable, "-m", "nodes.cli", "gateway", "--config",
                                    str(config), "--listen", self.url.removeprefix("http://"),
                                    "--name", "gw-own", "--stats", str(workdir / "gw.json")],
                         workdir / "gw.json", workdir / "gw-own.log")

    def start(self) -> None:
        self.node.start()
        self.mesh.wait_gateway(self.url, timeout=scaled(60))

    def kill(self) -> None:
        self.node.kill()

    def stop(self) -> None:
        self.node.stop()


@pytest.fixture
def own_gateway(mesh: UpMesh, tmp_path: Path) -> Iterator[OwnGateway]:
    gateway = OwnGateway(mesh, tmp_path)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
