"""Fixtures: real Redis servers on free loopback ports: one per test, and one HA topology
(two master-replica groups, three Sentinels) shared by the tests that only use it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from nodes.servers.clickhouse_server import ClickHouseProcess
from nodes.servers.redis_ha import RedisHA
from nodes.servers.redis_server import RedisProcess
from tests.support import scaled

# The store contracts are test classes in modules pytest does not collect by name: rewrite
# their asserts too, so a failing one shows its values.
pytest.register_assert_rewrite("tests.bus.store.contract_ticks",
                               "tests.bus.store.contract_orders")

# Property tests explore new random examples on developers' machines; in CI the examples are
# derandomized, so a submission is never failed by a case that a different draw would skip.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh redis-server (AOF on, everysec) in this test's temporary directory."""
    server = RedisProcess(data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHA]:
    """The RTS and RTSS groups behind three Sentinels, with a password, started once (about
    2 s) for every test that reads it or keeps its data under its own key prefix; a test that
    kills or restarts a server makes its own ``RedisHA``."""
    topology = RedisHA(tmp_path_factory.mktemp("redis-ha"), password="ha s3cret")
    topology.start(timeout=scaled(20))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseProcess]:
    """One clickhouse-server (Debian's 18.16) for the session: each test that uses it works in
    a database of its own; a test that kills or restarts a server starts its own."""
    server = ClickHouseProcess(data_dir=tmp_path_factory.mktemp("clickhouse"))
    server.start(timeout=scaled(20))
    try:
        yield server
    finally:
        server.stop()
