"""Small asyncio helpers shared by the bus and the nodes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

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


class LoopThread:
    """An event loop on a daemon thread of its own: what the blocking wrappers of the asyncio
    clients (``BlockingSubscriber``, ``BlockingOrderClient``) are built on."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop and wait for it; ``TimeoutError`` (and it is cancelled)
        after ``timeout`` seconds."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def run(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Call ``fn`` on the loop's thread (the asyncio objects are not thread-safe)."""
        async def wrapper() -> T:
            return fn()
        return self.call(wrapper(), timeout)

    def close(self, final: Coroutine[Any, Any, Any] | None = None, timeout: float = 5.0) -> None:
        """Run ``final`` (the client's close), then stop the loop and join the thread."""
        if self._loop.is_closed():
            if final is not None:
                final.close()
            return
        if final is not None:
            with contextlib.suppress(Exception):  # closing must not fail the caller's exit
                self.call(final, timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()
