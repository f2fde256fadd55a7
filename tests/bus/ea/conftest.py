"""Fixtures of the terminal tests: simulated terminals as child processes (``nodes.ea.simproc``),
each on a free loopback port with its journal in the test's temporary directory, stopped and
reaped at teardown. The EA node's tests and the drill start theirs the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bus.config import TerminalSection
from nodes.ea.simproc import TerminalProcess, start_terminal

SYMBOLS = ("EURUSD", "GBPUSD")
# Quotes fast enough that a test waiting for a tick waits milliseconds, slow enough to leave
# the two cores to the tests.
TEST_TERMINAL = TerminalSection(symbols=SYMBOLS, rate=400.0, seed=7, tick_history=5_000)

StartTerminal = Callable[..., TerminalProcess]


def _starter(root: Path) -> tuple[StartTerminal, list[TerminalProcess]]:
    started: list[TerminalProcess] = []

    def start(name: str = "terminal", **overrides: Any) -> TerminalProcess:
        proc = start_terminal(replace(TEST_TERMINAL, **overrides), root / name / "data",
                              name=name)
        started.append(proc)
        return proc

    return start, started


@pytest.fixture
def sim_terminal(tmp_path: Path) -> Iterator[StartTerminal]:
    """``sim_terminal(name="terminal", **[terminal] overrides)``: a running terminal process."""
    start, started = _starter(tmp_path)
    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture(scope="module")
def shared_terminal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TerminalProcess]:
    """One terminal for the tests of a module that only trade on it (each its own orders)."""
    start, started = _starter(tmp_path_factory.mktemp("terminal"))
    try:
        yield start()
    finally:
        for proc in started:
            proc.stop()
