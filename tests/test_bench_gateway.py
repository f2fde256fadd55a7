"""scripts/bench-gateway at a tiny size, and the pieces it is built from: real runs (Redis,
the recovery node, the feed at 10,000 ticks/s and the historian; rawcast or the gateway;
client processes) whose JSON line holds the issue 12 keys, a staleness for every step and a
resume time for every client of a killed rawcast or gateway (with the order path trading:
nothing missing or doubled); rawcast's batches (one encode per
subscription set, docs/GATEWAY.md's tick item); the clients' stream checks, from tables."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bus.config import default_config
from nodes.drills.rawcast import RawCast, _Client
from nodes.drills.wsclients import StreamCheck, bar_seconds, split
from protocols.ticks.messages import Tick

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("clients_max_p99_50ms", "p99_ms_500", "raw_p99_ms_500", "resume_ms_p99")


def test_clients_are_spread_over_the_processes() -> None:
    assert split(10, 4) == [3, 3, 2, 2]
    assert split(3, 4) == [1, 1, 1, 0]
    assert sum(split(1000, 7)) == 1000


@pytest.mark.parametrize(("stream", "seconds"), [
    ("bars:EURUSD:1S", 1), ("bars:EURUSD:1", 60), ("bars:EURUSD:60", 3600),
    ("bars:EURUSD:1D", 86_400)])
def test_a_resolution_is_its_bucket_width(stream: str, seconds: int) -> None:
    assert bar_seconds(stream) == seconds


def bar(seq: int, time: int, epoch: int = 7) -> dict[str, Any]:
    return {"stream": "bars:EURUSD:1", "epoch": epoch, "seq": seq, "kind": "bar", "time": time}


# (what comes after holding bar seq 10 at 600 s, counts it must give)
CASES = [
    ("the next state of the same bar", [bar(12, 600)], {"duplicates": 0, "missing": 0}),
    ("a bar sent again", [bar(10, 600)], {"duplicates": 1, "missing": 0}),
    ("an older state again", [bar(9, 600)], {"duplicates": 1, "missing": 0}),
    ("the next bucket", [bar(20, 660)], {"duplicates": 0, "missing": 0}),
    ("two buckets skipped", [bar(30, 780)], {"duplicates": 0, "missing": 2}),
    ("a new epoch is no duplicate", [bar(3, 600, epoch=8)], {"duplicates": 0}),
]


@pytest.mark.parametrize(("what", "items", "counts"), CASES, ids=[c[0] for c in CASES])
def test_the_stream_check_counts_duplicates_and_missing(
        what: str, items: list[dict[str, Any]], counts: dict[str, int]) -> None:
    check = StreamCheck("bars:EURUSD:1")
    check.on_subscribed({"stream": check.stream, "epoch": 7, "seq": 0, "mode": "snapshot"},
                        resuming=False)
    check.on_item(bar(10, 600))
    for item in items:
        check.on_item(item)
    for key, n in counts.items():
        assert getattr(check, key) == n, what


def test_a_consecutive_stream_counts_the_positions_it_skipped() -> None:
    check = StreamCheck("orders", consecutive=True)
    check.on_subscribed({"epoch": 1, "seq": 40, "mode": "recovered"}, resuming=False)
    for seq in (41, 42, 45, 45, 46):
        check.on_item({"epoch": 1, "seq": seq, "kind": "order"})
    assert (check.missing, check.duplicates, check.held) == (2, 1, [1, 46])


def test_a_resume_that_resets_is_counted_and_held_is_what_hello_sends() -> None:
    check = StreamCheck("orders")
    check.on_subscribed({"epoch": 1, "seq": 0, "mode": "snapshot"}, resuming=False)
    check.on_item({"epoch": 1, "seq": "1700-3", "kind": "order"})
    assert check.held == [1, "1700-3"]
    check.on_subscribed({"epoch": 1, "seq": "1700-3", "mode": "recovered"}, resuming=True)
    check.on_item({"epoch": 1, "seq": "1700-3", "kind": "order"})  # the last one, again
    assert (check.resets, check.snapshots, check.duplicates) == (0, 0, 1)
    check.on_subscribed({"epoch": 2, "seq": 0, "mode": "snapshot", "reset": True},
                        resuming=True)
    assert (check.resets, check.snapshots) == (1, 1)


class FakeWs:
    closed = False

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(text)


def test_rawcast_encodes_once_per_subscription_set_and_sends_the_tick_items() -> None:
    cast = RawCast(default_config(), 20.0)
    sets = [{"ticks:EURUSD", "ticks:GBPUSD"}, {"ticks:EURUSD", "ticks:GBPUSD"},
            {"ticks:XAUUSD"}]
    socks = [FakeWs() for _ in sets]
    clients = [_Client(ws, frozenset(s)) for ws, s in zip(socks, sets, strict=True)]  # type: ignore[arg-type]
    cast.clients.update(clients)
    for seq, sym in enumerate(["EURUSD", "EURUSD", "GBPUSD", "USDJPY"], start=1):
        tick = Tick(sym, 1.1, 1.2, 0.0, 0.0, 1_000_000_000 * seq, 2_000_123_456 * seq, seq=seq)
        cast.latest[sym] = tick
        cast.folded[sym] = cast.folded.get(sym, 0) + 1
    asyncio.run(cast.flush())
    assert cast.counters.encodes == 1  # XAUUSD did not tick: its set gets nothing
    assert socks[0].sent == socks[1].sent and not socks[2].sent
    frame = json.loads(socks[0].sent[0])
    assert frame["op"] == "batch" and isinstance(frame["t"], int)
    eur = next(i for i in frame["items"] if i["stream"] == "ticks:EURUSD")
    assert eur == {"stream": "ticks:EURUSD", "epoch": 1, "seq": 2, "kind": "tick", "bid": 1.1,
                   "ask": 1.2, "last": 0.0, "volume": 0.0, "ts": 2000, "ft": 4_000_246,
                   "n": 2}
    assert {i["stream"] for i in frame["items"]} == {"ticks:EURUSD", "ticks:GBPUSD"}
    asyncio.run(cast.flush())  # nothing new since: nothing sent
    assert len(socks[0].sent) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One tiny run on both servers (one mesh for both: its start is most of the cost): its
    JSON line and its markdown report."""
    report = tmp_path_factory.mktemp("bench-gateway") / "bench-gateway.md"
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gateway.py"), "--steps", "4",
         "--servers", "raw,gateway", "--procs", "2", "--warmup", "0.5", "--window", "1",
         "--resume-clients", "3", "--resume-kills", "1", "--resume-modes", "raw,restart",
         "--json", "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), report.read_text()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_tiny_run_reports_staleness_frames_and_cpu_for_every_step(
        tiny_run: tuple[dict[str, Any], str]) -> None:
    out, report = tiny_run
    assert all(k in out for k in KEYS), sorted(set(KEYS) - set(out))
    assert [s["clients"] for s in out["steps"]] == [4]
    for step in out["steps"]:
        for name in ("raw", "gateway"):
            r = step[name]
            assert r["connect_failures"] == 0 and r["live"] == step["clients"], name
            assert r["samples"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], name
            assert r["cpu_pct"] > 0 and r["rss_mb"] > 10 and r["bytes_per_s"] > 0, name
        # 4 symbols at 2,500 ticks/s each: every 20 ms flush has news of each
        assert 10 < step["raw"]["frames_per_s"] <= 60
        assert 0 < step["gateway"]["frames_per_s"] <= 60
    assert out["raw"]["p99_ms"]["4"] == out["steps"][0]["raw"]["p99_ms"]
    assert out["clients_max_p99_50ms"] in (None, 4)
    assert out["p99_ms_500"] is None and out["raw_p99_ms_500"] is None  # no such step here
    assert "| 4 | raw |" in report and "| 4 | gateway |" in report


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_client_resumes_after_a_kill_with_nothing_missing_or_doubled(
        tiny_run: tuple[dict[str, Any], str]) -> None:
    out, _ = tiny_run
    # rawcast SIGKILLed and restarted: every client came back to it (nothing to resume)
    assert out["raw_resume_not_resumed"] == 0 and out["raw_resume_ms_p99"] > 0
    assert out["resumes"]["raw"]["kills"][0]["resumed"] == 3
    # the gateway SIGKILLed under 3 clients on bars and orders, with the trader trading:
    # each came back, and its streams went on where they were
    resume = out["resumes"]["restart"]
    assert resume["kills"][0]["resumed"] == 3 and out["resume_not_resumed"] == 0
    assert out["resume_ms_p99"] > 0
    assert out["resume_duplicates"] == 0 and out["resume_missing"] == 0
    assert resume["checks"]["orders"]["items"] > 0 and resume["checks"]["bars"]["items"] > 0
