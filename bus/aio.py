"""Small asyncio helpers shared by the bus and the nodes."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 a cancellation that races its timeout can be lost
    (CPython gh-86296), which left a node's shutdown waiting forever on a cancelled task.
    ``asyncio.timeout`` counts cancellations and re-raises the caller's.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
