"""scripts/bench_orders.py's summary and table, from synthetic steps: the issue 10 figures
(orders per CPU-second per process, the overload step) land in the JSON and the table, and the
overload step never counts as a step of the search."""

from __future__ import annotations

import json
import math
from types import ModuleType
from typing import Any

import pytest

from nodes.drills.measure import latency_us, per_cpu_second
from nodes.drills.report import json_line
from tests.support import load_script

pytestmark = pytest.mark.timeout(30)

@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_orders")


ROLES = {"active": "primary", "passive": "backup", "executor": "executor", "client": "bench"}
CPU = {"primary": 1.0, "backup": 0.05, "executor": 0.5, "bench": 0.4}


def step(rate: int, sustained: bool, rtt_ms: float, **extra: Any) -> dict[str, Any]:
    n = rate * 2
    return {"rate": rate, "placed": n, "placed_per_s": rate, "acked": n, "filled": n,
            "errors": {}, "other_reports": {}, "rtt_us": latency_us([int(rtt_ms * 1e6)] * n),
            "ack_us": latency_us([int(rtt_ms * 5e5)] * n), "retries": 0,
            "cpu_pct": {"bench": 20.0, "primary": 50.0, "backup": 2.5, "executor": 25.0,
                        "redis": 10.0, "other": 0.0},
            "acked_in_window": n, "cpu_roles": ROLES, **per_cpu_second(n, CPU, ROLES),
            "sustained": sustained, "active": "primary", "busy": 0, "busy_client": 0,
            "busy_us": latency_us([]), "attempt_timeouts": 0, **extra}


def result(bench: ModuleType, overload: dict[str, Any] | None) -> dict[str, Any]:
    raw = {"zmq": {"p50": 100.0, "p99": 300.0, "max": 900.0},
           "redis": {"p50": 80.0, "p99": 150.0, "max": 400.0}}
    steps = [step(1000, True, 2.0), step(2000, True, 2.5), step(4000, False, 30.0)]
    return {"machine": {"date": "today", "nproc": 2, "cpu": "x", "python": "3", "pyzmq": "27",
                        "redis": "7"}, "raw": raw, "steps": steps, "overload": overload,
            "summary": bench.summarize(raw, steps, {"primary": 40.0}, overload)}


def overload(bench: ModuleType, *, busy_ms: list[float], takeovers: int = 0) -> dict[str, Any]:
    s = step(4000, False, 12.0, busy=len(busy_ms), busy_client=len(busy_ms),
             busy_us=latency_us([int(b * 1e6) for b in busy_ms]))
    s.update(bench.overload_of(s, 2000, 2.0, 100, 3, 3 + takeovers))
    return s


def test_orders_per_cpu_second_at_1k_and_at_the_highest_sustained_rate(
        bench: ModuleType) -> None:
    sm = result(bench, None)["summary"]
    assert sm["max_rate_step"] == 2000 and sm["sustained_1k"]
    assert sm["orders_per_cpu_s_1k"] == {"active": 2000.0, "passive": 40000.0,
                                         "executor": 4000.0, "client": 5000.0}
    assert sm["orders_per_cpu_s_max"]["active"] == 4000.0 and sm["cpu_s_max"]["active"] == 1.0
    assert sm["ratio_p99_rtt_1k_vs_raw_zmq_p99"] == pytest.approx(2000 / 300)
    assert sm["pass_p99_1k_vs_raw_zmq"] is True
    assert sm["overload"] is None and sm["overload_step"] is None


def test_the_overload_step_is_reported_apart_with_its_targets(bench: ModuleType) -> None:
    o = overload(bench, busy_ms=[0.5, 1.0, 7.0])
    res = result(bench, o)
    sm = res["summary"]
    assert sm["max_rate_step"] == 2000 and len(res["steps"]) == 3  # not a search step
    got = sm["overload"]
    assert (got["rate"], got["of_rate"], got["factor"]) == (4000, 2000, 2.0)
    assert (got["busy"], got["busy_p50_us"], got["busy_p99_us"]) == (3, 1000.0, 7000.0)
    assert (got["epoch_before"], got["epoch_after"], got["takeovers"]) == (3, 3, 0)
    assert got["targets"] == {"rtt_p99": True, "busy_p99": False, "no_timeout": True,
                              "no_takeover": True}
    assert "BusyTap" in got["busy_latency_source"]
    assert json.loads(json_line(sm))["overload"]["busy"] == 3  # strict JSON
    table = bench.render(res)
    assert "overload step at 2 x 2,000 = 4,000 orders/s" in table
    assert "busy_p99 FAIL" in table and "(overload step)" in table
    assert "2,000 (1.00 s primary)" in table  # orders per CPU-second of the active backend


def test_no_busy_reads_as_not_measured_and_a_takeover_fails(bench: ModuleType) -> None:
    o = overload(bench, busy_ms=[], takeovers=1)
    got = bench.overload_summary(o)
    assert got["busy"] == 0 and math.isnan(got["busy_p99_us"])
    assert got["targets"]["busy_p99"] is None and got["targets"]["no_takeover"] is False
    assert "busy_p99 -" in bench.render(result(bench, o))
