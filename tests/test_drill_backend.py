"""The backend failover drill, small: two SIGKILLs of the active under load, nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("kills", "failover_ms_p50", "failover_ms_p99", "failover_ms_max", "sent", "acked",
        "executed", "lost", "duplicated")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_drill_two_kills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "drill_backend_crash.py"), "--kills", "2",
         "--rate", "100", "--interval", "0.7", "--json", "--run-dir", str(tmp_path / "run"),
         "--report", str(tmp_path / "drill.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(k in summary for k in KEYS), summary
    assert (tmp_path / "drill.md").read_text().startswith("# Backend failover drill")
    assert summary["kills"] == 2
    assert summary["acked"] > 0
    assert summary["failover_ms_max"] is not None
    assert summary["duplicated"] == 0 and summary["ack_mismatch"] == 0, summary
    assert summary["lost"] == 0, summary["lost_detail"]
