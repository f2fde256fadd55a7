"""Shared test helpers: one time scale for every deadline, waiting on conditions, a fake
clock, a store opened, used and closed in a fresh event loop, and a script of ``scripts/``
loaded as a module.

A test never sleeps to "wait for" something: it waits until a condition holds, with a
deadline (:func:`wait_until`, :func:`wait_until_sync`). A sleep is left only where the time
itself is under test ("nothing arrives within 50 ms"), with a comment that says so. Code with
a TTL takes a ``clock``; a test passes a :class:`FakeClock` and moves it past the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar

T = TypeVar("T")

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

# Every deadline in the suite is multiplied by this, so a slow CI machine can stretch them
# (TICKMESH_TIME_SCALE=3) without touching a test.
TIME_SCALE = float(os.environ.get("TICKMESH_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


async def wait_until(cond: Callable[[], T | Awaitable[T]], timeout: float, what: str,
                     interval: float = 0.005) -> T:
    """Poll ``cond`` until it returns something true, and return that; fail with ``what``
    after ``timeout`` (scaled) seconds. ``cond`` may be a coroutine function (e.g. a query to
    a server)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(cond: Callable[[], T], timeout: float, what: str,
                    interval: float = 0.01) -> T:
    """:func:`wait_until` for code without an event loop (blocking clients, processes)."""
    deadline = time.monotonic() + scaled(timeout)
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for {what}")
        time.sleep(interval)
    return value


class FakeClock:
    """A clock for code that takes one (``clock=time.monotonic`` by default): time moves only
    when the test says, so a TTL is passed without sleeping through it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def run_with(open_it: Callable[[], Awaitable[C]], body: Callable[[C], Awaitable[T]]) -> T:
    """Open a resource (a store, a client) in a fresh event loop, run ``body`` with it, close
    it whatever happens, and return what ``body`` returned."""
    return asyncio.run(_with_opened(open_it, 1, lambda opened: body(*opened)))


def run_with_two(open_it: Callable[[], Awaitable[C]],
                 body: Callable[[C, C], Awaitable[T]]) -> T:
    """:func:`run_with` for two clients of the same resource (two backends on one store)."""
    return asyncio.run(_with_opened(open_it, 2, lambda opened: body(*opened)))


async def _with_opened(open_it: Callable[[], Awaitable[C]], count: int,
                       body: Callable[[list[C]], Awaitable[T]]) -> T:
    async with contextlib.AsyncExitStack() as stack:
        opened: list[C] = []
        for _ in range(count):
            resource = await open_it()
            stack.push_async_callback(resource.close)
            opened.append(resource)
        return await body(opened)


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` imported as the module ``NAME`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
