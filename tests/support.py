"""Shared test helpers: one time scale for every deadline, and waiting on conditions."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

# Every deadline in the suite is multiplied by this, so a slow CI machine can stretch them
# (TICKMESH_TIME_SCALE=3) without touching a test.
TIME_SCALE = float(os.environ.get("TICKMESH_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


async def wait_until(cond: Callable[[], bool], timeout: float, what: str,
                     interval: float = 0.005) -> None:
    """Poll ``cond`` until it holds; fail with ``what`` after ``timeout`` (scaled) seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(cond: Callable[[], bool], timeout: float, what: str,
                    interval: float = 0.01) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}")
        time.sleep(interval)
