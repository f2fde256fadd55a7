"""The EA crash drill, small: a standby phase with two kills (one right after order_send),
every order executed once by the simulated terminal's own record, no tick lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("kills", "restart_ms_p99", "takeover_ms_p99", "ticks_lost", "acked", "executed", "lost",
        "duplicated")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_drill_two_kills_with_a_standby_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "drill_ea_crash.py"), "--standby", "yes",
         "--kills", "2", "--rate", "50", "--tick-rate", "200", "--interval", "1.0", "--json",
         "--run-dir", str(tmp_path / "run"), "--report", str(tmp_path / "drill.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=130)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(k in summary for k in KEYS), summary
    assert (tmp_path / "drill.md").read_text().startswith("# drill-ea-crash")
    assert summary["kills"] == 2 and summary["acked"] > 0
    assert summary["takeover_ms_p99"] is not None  # measured from the terminal's deals
    assert summary["executed"] == summary["acked"]
    assert (summary["lost"], summary["duplicated"], summary["log_mismatch"]) == (0, 0, 0)
    assert summary["ticks_lost"] == 0 and summary["ticks_made"] > 0
