"""bus.aio: waiting on events and cancelling tasks that swallow a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import pytest

from bus.aio import cancel_and_wait, wait_event
from tests.support import wait_until

pytestmark = pytest.mark.timeout(10)


def test_wait_event_true_when_set_false_on_timeout() -> None:
    async def main() -> None:
        ev = asyncio.Event()
        assert not await wait_event(ev, 0.01)
        asyncio.get_running_loop().call_later(0.01, ev.set)  # set while it waits
        assert await wait_event(ev, 1.0)
    asyncio.run(main())


def test_cancel_and_wait_recancels_a_task_that_swallowed_cancellation() -> None:
    swallowed = []
    running = []

    async def stubborn() -> None:
        running.append(True)
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:  # a library catching it mid-call
                if swallowed:
                    raise
                swallowed.append(True)

    async def main() -> None:
        task = asyncio.create_task(stubborn())
        await wait_until(lambda: running, 2, "the task running its loop")
        assert await cancel_and_wait([task], grace_s=2.0)
        assert task.cancelled() and swallowed == [True]
    asyncio.run(main())


def test_cancel_and_wait_gives_up_on_a_task_that_never_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    running = []

    async def immortal() -> None:
        running.append(True)
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    async def main() -> None:
        task = asyncio.create_task(immortal(), name="immortal")
        # Running its loop, not cancelled before it starts.
        await wait_until(lambda: running, 2, "the task running its loop")
        assert not await cancel_and_wait([task], grace_s=0.2, what="test")
        assert not task.done()
        release.set()  # the test's own escape hatch, so nothing is left running
        await task
    asyncio.run(main())
    assert "test: task immortal ignores cancellation" in caplog.text


def test_loop_watchdog_reports_a_stall_with_the_stack_that_held_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    from bus.aio import LoopWatchdog

    def hold_the_loop() -> None:
        time.sleep(0.3)  # blocking on purpose: the stall the watchdog must name

    async def main() -> LoopWatchdog:
        dog = LoopWatchdog("test", threshold_s=0.05)
        task = asyncio.create_task(dog.run())
        await wait_until(lambda: any(t.name == "watchdog-test" for t in threading.enumerate()),
                         2, "the watchdog's thread")
        hold_the_loop()
        await wait_until(lambda: dog.stalls, 2, "the stall reported")
        await cancel_and_wait([task])
        return dog

    with caplog.at_level(logging.WARNING, logger="bus.aio"):
        dog = asyncio.run(main())
    # (>= 1: a loaded machine may add stalls of its own; ours must be among them)
    assert dog.stalls >= 1 and dog.max_ms >= 50
    assert "event loop stalled" in caplog.text and "hold_the_loop" in caplog.text


def test_watchdog_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from bus.aio import watchdog_from_env

    monkeypatch.delenv("TICKMESH_LOOP_WATCHDOG_MS", raising=False)
    assert watchdog_from_env("x") is None
    monkeypatch.setenv("TICKMESH_LOOP_WATCHDOG_MS", "15")
    dog = watchdog_from_env("x")
    assert dog is not None and dog.threshold_s == 0.015
    monkeypatch.setenv("TICKMESH_LOOP_WATCHDOG_MS", "soon")
    assert watchdog_from_env("x") is None
