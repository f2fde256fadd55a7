"""nodes.drills.measure: CPU seconds between samples, and a count per CPU second by role."""

from __future__ import annotations

import math

import pytest

from nodes.drills.measure import CpuMeter, per_cpu_second

pytestmark = pytest.mark.timeout(10)

A = {"_wall": 10.0, "_busy": 100.0, "primary": 5.0, "backup": 1.0, "executor": 2.0,
     "bench": 3.0}
B = {"_wall": 12.0, "_busy": 104.0, "primary": 6.5, "backup": 1.1, "executor": 2.75,
     "bench": math.nan}  # bench: gone at the second sample


def test_seconds_are_per_process_and_leave_out_the_machine_keys() -> None:
    got = CpuMeter.seconds(A, B)
    assert set(got) == {"primary", "backup", "executor", "bench"}
    assert got["primary"] == pytest.approx(1.5) and got["executor"] == pytest.approx(0.75)
    assert math.isnan(got["bench"])


def test_percent_is_seconds_over_the_wall_time_and_other_is_the_rest() -> None:
    got = CpuMeter.percent(A, B)
    assert (got["primary"], got["backup"], got["executor"]) == (75.0, 5.0, 37.5)
    assert math.isnan(got["bench"])
    assert got["other"] == pytest.approx(200.0 - 75.0 - 5.0 - 37.5)
    assert CpuMeter.percent(A, A) == {}


@pytest.mark.parametrize(("count", "cpu", "want_cpu", "want_per"), [
    (3000, 1.5, 1.5, 2000.0),
    (1, 3.0, 3.0, 0.3),
    (0, 0.5, 0.5, 0.0),
    (100, 0.0, 0.0, math.nan),  # no CPU used: not measurable, not infinite
    (100, math.nan, math.nan, math.nan),  # the process was gone
])
def test_per_cpu_second_table(count: int, cpu: float, want_cpu: float, want_per: float) -> None:
    got = per_cpu_second(count, {"primary": cpu}, {"active": "primary"})
    for key, want in (("cpu_s", want_cpu), ("orders_per_cpu_s", want_per)):
        value = got[key]["active"]
        assert value == want or (math.isnan(value) and math.isnan(want))


def test_per_cpu_second_maps_roles_to_processes() -> None:
    roles = {"active": "backup", "passive": "primary", "executor": "executor",
             "client": "bench", "unknown": ""}
    got = per_cpu_second(1500, CpuMeter.seconds(A, B), roles)
    assert got["cpu_s"]["active"] == 0.1 and got["orders_per_cpu_s"]["active"] == 15000.0
    assert got["orders_per_cpu_s"]["passive"] == 1000.0
    assert got["orders_per_cpu_s"]["executor"] == 2000.0
    assert math.isnan(got["orders_per_cpu_s"]["client"])
    assert math.isnan(got["cpu_s"]["unknown"]) and math.isnan(got["orders_per_cpu_s"]["unknown"])
