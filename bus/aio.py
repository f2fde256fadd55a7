"""Small asyncio helpers shared by the bus and the nodes."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


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


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], grace_s: float = 5.0,
                          what: str = "tasks") -> bool:
    """Cancel ``tasks`` and wait until every one has finished; True if all did in time.

    A cancellation can be consumed by library code that catches it mid-call (seen with a
    checkpoint write in flight at shutdown), leaving a task that loops on. So a task still
    running after a short wait is cancelled again, which raises a new CancelledError at its next
    await. After ``grace_s`` the stragglers are logged with their stacks and left behind.
    """
    pending = {t for t in tasks if not t.done()}
    deadline = asyncio.get_running_loop().time() + grace_s
    while pending:
        for t in pending:
            t.cancel()
        _done, pending = await asyncio.wait(pending, timeout=0.05)
        if pending and asyncio.get_running_loop().time() > deadline:
            for t in pending:
                out = io.StringIO()
                t.print_stack(limit=8, file=out)
                log.error("%s: task %s ignores cancellation:\n%s", what, t.get_name(),
                          out.getvalue())
            return False
    for t in tasks:  # retrieve outcomes so none is reported as "never retrieved"
        if t.done() and not t.cancelled():
            t.exception()
    return True
