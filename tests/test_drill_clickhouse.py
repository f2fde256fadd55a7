"""The ClickHouse failover drill, small: one SIGKILL of the active history server under light
load; every row on each server exactly once after the re-sync."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("kills", "read_switch_ms_p50", "read_switch_ms_p99", "write_stall_ms_max",
        "resync_s_p99", "rows_expected", "rows_lost", "rows_duplicated", "servers",
        "per_kill", "targets", "ok")
SERVER_KEYS = ("rows_expected", "rows_lost", "rows_duplicated", "ticks", "orders",
               "executions")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_drill_one_clickhouse_kill_loses_and_duplicates_no_row(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "drill_clickhouse_failover.py"), "--kills", "1",
         "--tick-rate", "500", "--symbols", "2", "--order-rate", "20", "--clients", "1",
         "--warmup", "1", "--down", "1", "--settle", "0.2", "--drain-timeout", "5", "--json",
         "--run-dir", str(tmp_path / "run"), "--report", str(tmp_path / "drill.md")],
        cwd=ROOT, capture_output=True, text=True, timeout=55)
    assert proc.returncode in (0, 1), f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(k in summary for k in KEYS), sorted(set(KEYS) - summary.keys())
    assert (tmp_path / "drill.md").read_text().startswith("# ClickHouse failover drill")
    assert summary["kills"] == 1 and summary["per_kill"][0]["error"] == "", summary["per_kill"]
    killed = summary["per_kill"][0]["killed"]
    assert len(summary["servers"]) == 2 and killed in summary["servers"]
    assert summary["read_switch_ms_p99"] is not None and summary["resync_s_p99"] is not None
    for name, server in summary["servers"].items():
        assert all(k in server for k in SERVER_KEYS), (name, server)
        assert server["rows_expected"] > 0
        assert server["rows_lost"] == 0 and server["rows_duplicated"] == 0, (name, server)
        assert server["orders"]["expected"] > 0 and server["acked_orders_missing"] == 0
    assert summary["acked"] > 0 and summary["lost"] == 0 and summary["duplicated"] == 0
    # The killed server came back through the spool: it re-synced rows it had missed.
    assert summary["per_kill"][0]["resynced_rows"] > 0
    assert summary["ok"] is (proc.returncode == 0)
