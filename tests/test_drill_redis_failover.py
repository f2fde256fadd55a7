"""The Redis failover drill, small: one SIGKILL of the RTSS master under light load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("kills", "switch_ms_p50", "switch_ms_max", "resume_after_switch_ms_p50",
        "resume_after_switch_ms_p99", "tick_latency_max_ms", "ticks_lost",
        "order_p99_ms_failover", "sent", "acked", "lost", "duplicated", "targets", "per_kill",
        "ok", "realtime_priority", "sched")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_drill_one_rtss_kill_reports_every_figure(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "drill_redis_failover.py"), "--kills", "1",
         "--tick-rate", "1000", "--rate", "50", "--clients", "2", "--warmup", "1",
         "--settle", "0.5", "--drain-timeout", "5", "--json", "--run-dir",
         str(tmp_path / "run"), "--report", str(tmp_path / "drill.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert proc.returncode in (0, 1), f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(k in summary for k in KEYS), sorted(set(KEYS) - summary.keys())
    assert summary["ok"] is (proc.returncode == 0)
    assert (tmp_path / "drill.md").read_text().startswith("# Redis failover drill")
    assert summary["kills"] == 1 and summary["per_kill"][0]["role"] == "rtss"
    assert summary["switch_ms_max"] is not None and summary["acked"] > 0
    assert summary["lost"] == 0 and summary["duplicated"] == 0, summary["lost_detail"]
    # The tick path ran as reported: real-time where permitted, on one CPU of several.
    sched = summary["sched"]
    assert set(sched) == {"feed", "recovery", "subscriber"}
    if summary["realtime_priority"]:
        assert sched["feed"].startswith("fifo:40") and sched["subscriber"].startswith("fifo:40")
        assert sched["recovery"].startswith("other")
