"""scripts/bench-history at tiny sizes: a real run against two ClickHouse servers and DuckDB
files that it starts itself, whose JSON line holds the issue 11 keys with sane values and
whose every tick is held by each store; and the replay it feeds, the same ticks as runs (the
historian's input) and as batches (the raw references')."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import load_script

ROOT = Path(__file__).resolve().parent.parent
TICKS = 20_000
KEYS = ("ch_rows_per_s", "ch_raw_rows_per_s", "duck_rows_per_s", "duck_raw_rows_per_s",
        "bars_p99_ms", "bars_raw_p99_ms", "duck_bars_p99_ms", "duck_bars_raw_p99_ms",
        "historian_cpu_s_per_m_ticks", "historian_peak_rss_mb", "live_lag_ms_p99")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_history")


@pytest.mark.timeout(10)
def test_the_runs_and_the_batches_are_the_same_ticks(bench: ModuleType) -> None:
    runs = list(bench.tick_runs(1_050, 100, 3))
    assert sum(len(rows) for *_, rows in runs) == 1_050
    assert [r[0] for r in runs[:5]] == [*bench.SYMBOLS, "EURUSD"]  # the symbols in turn
    flat = [(s, first + i, *row) for s, _, first, rows in runs for i, row in enumerate(rows)]
    batches = list(bench.tick_batches(1_050, 100, 3, 400))
    assert [len(b) for b in batches] == [400, 400, 250]
    cols = [(s, q, bid, ask, last, vol, ts, feed) for b in batches for s, q, _, ts, feed, bid,
            ask, last, vol in b.rows()]
    assert cols == flat
    for stream in bench.SYMBOLS:  # each stream consecutive from 1, its times rising
        mine = [t for t in flat if t[0] == stream]
        assert [t[1] for t in mine] == list(range(1, len(mine) + 1))
        times = [t[6] for t in mine]
        assert times == sorted(times) and times[0] >= bench.START_NS
        assert all(t[2] < t[3] for t in mine)  # bid below ask


@pytest.mark.timeout(60)
def test_a_tiny_run_reports_every_figure_and_every_row_held(tmp_path: Path) -> None:
    report = tmp_path / "bench-history.md"
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_history.py"), "--ticks", str(TICKS),
         "--live-seconds", "0", "--queries", "20", "--warmup", "2", "--json",
         "--report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=55)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert all(k in out for k in KEYS), sorted(set(KEYS) - set(out))
    for key in ("ch", "duck"):
        assert out[f"{key}_rows_held"] == TICKS  # on both ClickHouse servers / in the file
        assert out[f"{key}_rows_per_s"] > 0 and out[f"{key}_raw_rows_per_s"] > 0
        assert out[f"{key}_ratio"] == pytest.approx(
            out[f"{key}_rows_per_s"] / out[f"{key}_raw_rows_per_s"], rel=1e-2)
        assert out[f"{key}_spooled"] == 0
        assert out[f"{key}_bars_returned_min"] > 0
        assert out[f"{key}_historian_cpu_s_per_m_ticks"] > 0
        assert out[f"{key}_historian_peak_rss_mb"] > 10
    for prefix in ("bars", "bars_raw", "bars_agg", "duck_bars", "duck_bars_raw",
                   "duck_bars_agg"):
        assert 0 < out[f"{prefix}_p50_ms"] <= out[f"{prefix}_p99_ms"]
    raw_ch = out["raw"]["clickhouse"]
    assert raw_ch["threads"] == 2 and [h["distinct"] for h in raw_ch["held"]] == [TICKS] * 2
    hist = out["steps"][0]
    assert hist["clickhouse"]["stats"]["ticks"] == TICKS and hist["clickhouse"]["stats"]["bars"]
    assert hist["clickhouse"]["writer"]["servers"] and all(
        s["failures"] == 0 for s in hist["clickhouse"]["writer"]["servers"].values())
    assert out["live_lag_ms_p99"] is None and out["targets"]["live_lag_p99"] is None
    assert out["targets"]["ch_every_row_held"] and out["targets"]["duck_every_row_held"]
    assert out["machine"]["clickhouse"].startswith("18.")
    text = report.read_text()
    assert "ingest, ClickHouse pair" in text and '"ch_rows_per_s"' in text
