"""Small asyncio helpers shared by the bus and the nodes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
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


class KeyedLocks:
    """One ``asyncio.Lock`` per key, kept only while someone holds or waits for it (so a
    stream of one-off keys, such as order ids, does not grow a dict for ever). Waiters on a
    key get it in the order they asked (asyncio.Lock is FIFO)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


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


class LoopWatchdog:
    """Reports stalls of an event loop, with the stack the loop's thread was in (a diagnostic
    for latency spikes: a stack inside Python names the work that held the loop; a stack in the
    selector's wait means the process was not scheduled at all).

    :meth:`run` (a task on the watched loop) stamps the time every ``tick_s``; a daemon thread
    checks the stamp and, once per stall longer than ``threshold_s``, logs the loop thread's
    stack. ``stalls`` and ``max_ms`` count what it saw. Enabled in the nodes by the environment
    variable ``TICKMESH_LOOP_WATCHDOG_MS`` (see :func:`watchdog_from_env`).
    """

    def __init__(self, name: str, threshold_s: float, tick_s: float = 0.001) -> None:
        self.name = name
        self.threshold_s = threshold_s
        self.tick_s = tick_s
        self.stalls = 0
        self.max_ms = 0.0
        self.gc_max_ms = 0.0  # the longest garbage collection seen (it holds the loop too)
        self._gc_started = 0.0
        self._stamp = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()

    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        thread = threading.Thread(target=self._watch, name=f"watchdog-{self.name}", daemon=True)
        thread.start()
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                self._stamp = time.monotonic()
                await asyncio.sleep(self.tick_s)
        finally:
            gc.callbacks.remove(self._on_gc)
            self._stop.set()
            await asyncio.to_thread(thread.join, 1.0)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Times each collection: a long one is a stall no stack sample can show."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = (time.perf_counter() - self._gc_started) * 1000
        self.gc_max_ms = max(self.gc_max_ms, took)
        if took > self.threshold_s * 1000:
            log.warning("%s: garbage collection of generation %d took %.1f ms (%d collected)",
                        self.name, info.get("generation", -1), took, info.get("collected", 0))

    def _watch(self) -> None:
        reported = False
        while not self._stop.wait(self.threshold_s / 4):
            lag = time.monotonic() - self._stamp
            if lag <= self.threshold_s:
                reported = False
                continue
            self.max_ms = max(self.max_ms, lag * 1000)
            if reported:
                continue
            reported = True
            self.stalls += 1
            frame = sys._current_frames().get(self._loop_thread)
            # The innermost frames: where the loop's thread is now.
            stack = "".join(traceback.format_stack(frame)[-8:]) if frame else "(gone)"
            log.warning("%s: event loop stalled > %.0f ms, in:\n%s", self.name, lag * 1000,
                        stack)


def watchdog_from_env(name: str) -> LoopWatchdog | None:
    """A :class:`LoopWatchdog` if ``TICKMESH_LOOP_WATCHDOG_MS`` is set (the stall threshold in
    milliseconds), else None."""
    value = os.environ.get("TICKMESH_LOOP_WATCHDOG_MS", "")
    if not value:
        return None
    try:
        threshold = float(value) / 1000
    except ValueError:
        log.warning("TICKMESH_LOOP_WATCHDOG_MS=%r is not a number: no watchdog", value)
        return None
    return LoopWatchdog(name, threshold) if threshold > 0 else None
