"""Fixtures: real Redis servers on free loopback ports, started and stopped per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from nodes.servers.redis_server import RedisProcess

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
