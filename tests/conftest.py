"""Fixtures: real Redis servers on free loopback ports, started and stopped per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.servers import RedisProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh redis-server (AOF on, everysec) in this test's temporary directory."""
    server = RedisProcess(data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
