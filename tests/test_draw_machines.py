"""scripts/draw-machines draws the machines from the code, and docs/MACHINES.md is its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protocols.machines import Kind, machines

ROOT = Path(__file__).resolve().parent.parent


def draw(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "draw_machines.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(60)
def test_the_docs_page_is_the_scripts_output() -> None:
    docs = (ROOT / "docs" / "MACHINES.md").read_text()
    assert docs == draw("--markdown"), (
        "docs/MACHINES.md is stale: ./scripts/draw-machines --markdown > docs/MACHINES.md")


@pytest.mark.timeout(60)
def test_every_move_no_op_and_fatal_pair_is_drawn() -> None:
    mermaid, dot = draw(), draw("--dot")
    assert mermaid.count("stateDiagram-v2") == dot.count("digraph ") == len(machines())
    for m in machines():
        for state, event in m.pairs(Kind.MOVE):
            nxt = m.transitions[state][event].name
            assert any(line.startswith(f"    {state.name} --> {nxt} : ") and event.name in line
                       for line in mermaid.splitlines()), (m.name, state, event)
            assert any(line.startswith(f"    {state.name} -> {nxt} [label=")
                       and event.name in line for line in dot.splitlines()), (m.name, state)
        for kind in (Kind.IGNORED, Kind.FATAL):
            for state, event in m.pairs(kind):
                loops = [line for line in dot.splitlines()
                         if line.startswith(f"    {state.name} -> {state.name} ")
                         and ("dashed" if kind is Kind.IGNORED else "red") in line]
                assert any(event.name in line for line in loops), (m.name, state, event)


@pytest.mark.timeout(60)
def test_one_machine() -> None:
    out = draw("--machine", "stream arbiter")
    assert out.count("stateDiagram-v2") == 1 and "RECOVERING --> LIVE : HOLE_FILLED" in out
