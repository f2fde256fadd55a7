"""nodes.drills.report and nodes.drills.measure: tables, strict JSON, latency summaries."""

from __future__ import annotations

import json
import math

import zmq

from nodes.drills.measure import latency_ms, latency_us
from nodes.drills.ports import bind_loopback
from nodes.drills.report import aligned, dash, fmt, json_line, markdown_table, no_nan


def test_markdown_table_and_dash() -> None:
    assert markdown_table(["a", "b"], [[1, None], ["x", 2.5]]) == [
        "| a | b |", "|---|---|", "| 1 | - |", "| x | 2.5 |"]
    assert dash(None) == "-" and dash(0) == "0"


def test_aligned_puts_values_in_one_column() -> None:
    assert aligned([("a", "1"), ("long", "2")]) == "a     1\nlong  2"


def test_fmt() -> None:
    assert fmt(1234567.8) == "1,234,568"
    assert fmt(math.nan) == "-" and fmt(None) == "-"
    assert fmt(1.25, 1) == "1.2"


def test_json_line_is_strict() -> None:
    obj = {"a": math.nan, "b": [1.0, math.nan], "c": (2, 3)}
    assert no_nan(obj) == {"a": None, "b": [1.0, None], "c": [2, 3]}
    assert json.loads(json_line(obj)) == {"a": None, "b": [1.0, None], "c": [2, 3]}


def test_latency_summaries_use_nearest_rank() -> None:
    ns = [i * 1000 for i in range(1, 101)]  # 1..100 us
    us = latency_us(ns)
    assert (us["n"], us["p50"], us["p90"], us["p99"], us["p999"], us["max"]) == (
        100, 50.0, 90.0, 99.0, 100.0, 100.0)
    assert latency_ms(ns) == {"p50": 0.05, "p99": 0.099, "p999": 0.1, "max": 0.1}
    empty = latency_us([])
    assert empty["n"] == 0 and math.isnan(empty["p99"])
    assert latency_ms([]) == {"p50": None, "p99": None, "p999": None, "max": None}


def test_bind_loopback_reads_the_port_back() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    try:
        endpoint = bind_loopback(sock)
        assert endpoint.startswith("tcp://127.0.0.1:")
        assert int(endpoint.rsplit(":", 1)[1]) > 0
    finally:
        sock.close(linger=0)
        ctx.term()
