"""``tickmesh history``: the CLI against a real DuckDB file filled through the store.

The file holds what a historian writes: ticks, the closed bars that a BarBuilder made of
them, orders and executions. The expected output is computed by a BarBuilder that saw every
tick (its closed bars and its forming bar) and by the report functions.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bus.store.history import HistoryStore
from bus.store.history_ch import ClickHouseHistoryStore
from bus.store.history_duck import DuckDBHistoryStore
from nodes.cli import main
from nodes.history.cli import parse_time, read_bars
from nodes.servers.clickhouse_server import ClickHouseProcess, free_port
from protocols.history.bars import RES_SECONDS, Bar, BarBuilder, bars_to_columns
from protocols.history.report import performance_report
from protocols.history.schema import NS_PER_S, Table
from tests.history_support import batch, duckdb_file_held
from tests.protocols.history.test_report import EXECUTIONS, ORDERS

pytestmark = pytest.mark.timeout(30)

S = NS_PER_S
T = 1_796_133_600 * S  # 2026-12-01T14:00:00Z
# EURUSD: a tick every 10 s from 14:00:00 to 14:03:00, quote-only (the mid is the price)
TICKS = batch(Table.TICKS, *({"stream": "EURUSD", "seq": n, "ts_ns": T + (n - 1) * 10 * S,
                              "bid": 1.1 + n / 10_000, "ask": 1.1002 + n / 10_000,
                              "volume": 1.0} for n in range(1, 20)))


def replay() -> tuple[BarBuilder, list[Bar]]:
    """A builder that saw every tick, and the bars it closed (what the historian stores)."""
    builder, closed = BarBuilder("EURUSD"), []
    c = TICKS.data
    for i in range(len(TICKS)):
        closed.extend(builder.on_tick(c["seq"][i], c["ts_ns"][i], c["bid"][i], c["ask"][i],
                                      c["last"][i], c["volume"][i]))
    return builder, closed


async def fill(store: HistoryStore) -> None:
    """Store what a historian that saw TICKS, ORDERS and EXECUTIONS writes."""
    await store.open()
    try:
        for rows in (TICKS, bars_to_columns(replay()[1]), ORDERS, EXECUTIONS):
            await store.insert(rows)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mesh file whose [history] is a DuckDB file holding the test's history."""
    d = tmp_path_factory.mktemp("history-cli")
    path = d / "history.duckdb"

    asyncio.run(fill(DuckDBHistoryStore(path)))
    mesh = d / "mesh.toml"
    mesh.write_text(f'[history]\nduckdb_path = "{path}"\n', encoding="utf-8")
    return mesh


def run(capsys: pytest.CaptureFixture[str], mesh: Path, *argv: str) -> tuple[int, str, str]:
    rc = main(["history", *argv, "--config", str(mesh)])
    out, err = capsys.readouterr()
    return rc, out, err


def as_json(bar: Bar, forming: bool) -> dict[str, object]:
    return {"start_ns": bar.start_ns, "open": bar.open, "high": bar.high, "low": bar.low,
            "close": bar.close, "volume": bar.volume, "ticks": bar.ticks, "forming": forming}


def bars_json(out: str) -> list[dict[str, object]]:
    return [{k: v for k, v in b.items() if k != "time"} for b in json.loads(out)["bars"]]


@pytest.mark.parametrize("res", ["1", "5", "1S", "1D"])
def test_bars_are_the_closed_ones_plus_the_forming_one(
        capsys: pytest.CaptureFixture[str], mesh: Path, res: str) -> None:
    res_s = {"1": 60, "5": 300, "1S": 1, "1D": 86_400}[res]
    # from the day's start: a bar is in a range when its start is (the day bar's is 00:00)
    rc, out, err = run(capsys, mesh, "bars", "EURUSD", "--res", res, "--from",
                       "2026-12-01", "--to", "2026-12-01T15:00:00Z", "--json")
    assert (rc, err) == (0, "")
    whole, closed = replay()
    forming = whole.forming(res_s)
    assert forming is not None
    want = [as_json(b, False) for b in closed if b.res_s == res_s]
    assert bars_json(out) == [*want, as_json(forming, True)]


def test_the_forming_minute_is_the_stored_seconds_and_ticks(
        capsys: pytest.CaptureFixture[str], mesh: Path) -> None:
    rc, out, _ = run(capsys, mesh, "bars", "EURUSD", "--res", "1", "--from", str(T // S),
                     "--to", str(T + 3600 * S), "--json")
    bars = json.loads(out)["bars"]
    assert rc == 0
    # 14:00, 14:01 and 14:02 closed (six ticks each); 14:03 forming with the one tick at
    # 14:03:00 (seq 19: its bid 1.1019, ask 1.1021)
    assert [(b["time"], b["ticks"], b["forming"]) for b in bars] == [
        ("2026-12-01T14:00:00Z", 6, False), ("2026-12-01T14:01:00Z", 6, False),
        ("2026-12-01T14:02:00Z", 6, False), ("2026-12-01T14:03:00Z", 1, True)]
    assert bars[-1]["open"] == pytest.approx(1.102)


def test_countback_counts_the_forming_bar(capsys: pytest.CaptureFixture[str],
                                          mesh: Path) -> None:
    rc, out, _ = run(capsys, mesh, "bars", "EURUSD", "--countback", "2", "--to",
                     "2026-12-01T15:00:00Z", "--json")
    assert rc == 0
    assert [(b["time"], b["forming"]) for b in json.loads(out)["bars"]] == [
        ("2026-12-01T14:02:00Z", False), ("2026-12-01T14:03:00Z", True)]


def test_a_range_in_the_past_has_no_forming_bar(capsys: pytest.CaptureFixture[str],
                                                mesh: Path) -> None:
    # --to inside 14:01: the 14:00 and 14:01 bars are closed in the store, nothing forms
    rc, out, _ = run(capsys, mesh, "bars", "EURUSD", "--from", "2026-12-01T14:00:00",
                     "--to", "2026-12-01T14:01:30", "--csv")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "time,open,high,low,close,volume,ticks,forming"
    assert [line.split(",")[0] for line in lines[1:]] == ["2026-12-01T14:00:00Z",
                                                          "2026-12-01T14:01:00Z"]
    assert all(line.endswith(",False") for line in lines[1:])


def test_the_text_table_is_aligned_and_marks_the_forming_bar(
        capsys: pytest.CaptureFixture[str], mesh: Path) -> None:
    rc, out, _ = run(capsys, mesh, "bars", "EURUSD", "--from", "2026-12-01T14:00:00Z",
                     "--to", "2026-12-01T15:00:00Z")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 5
    assert lines[0].split() == ["time", "open", "high", "low", "close", "volume", "ticks",
                                "forming"]
    assert lines[-1].endswith("yes") and not lines[1].endswith("yes")
    # every row puts its columns at the header's right edges (numbers right-aligned)
    edge = lines[0].index("close") + len("close")
    assert {line[edge - 1] for line in lines[1:]} != {" "}
    assert all(line[edge:edge + 2] == "  " for line in lines)


def test_ticks_in_a_half_open_range(capsys: pytest.CaptureFixture[str], mesh: Path) -> None:
    rc, out, _ = run(capsys, mesh, "ticks", "EURUSD", "--from", str(T), "--to",
                     str(T + 30 * S), "--json")
    ticks = json.loads(out)["ticks"]
    assert rc == 0
    assert [t["seq"] for t in ticks] == [1, 2, 3]
    assert ticks[0]["time"] == "2026-12-01T14:00:00Z"
    rc, out, _ = run(capsys, mesh, "ticks", "EURUSD", "--from", str(T), "--to",
                     str(T + 3600 * S), "--limit", "4", "--csv")
    assert [line.split(",")[1] for line in out.splitlines()] == ["seq", "1", "2", "3", "4"]


def test_report_per_account_and_symbol(capsys: pytest.CaptureFixture[str],
                                       mesh: Path) -> None:
    rc, out, err = run(capsys, mesh, "report", "--from", "2026-12-01T00:00:00Z", "--to",
                       "2026-12-02T00:00:00Z", "--mark", "EURUSD=1.1", "--mark",
                       "XAUUSD=2010", "--json")
    assert (rc, err) == (0, "")
    want = performance_report(ORDERS, EXECUTIONS, {"EURUSD": 1.1, "XAUUSD": 2010.0})
    got = json.loads(out)["positions"]
    assert [{k: v for k, v in p.items() if k != "mark"} for p in got] == \
        [w.as_dict() for w in want]
    rc, out, _ = run(capsys, mesh, "report", "--account", "acc-2", "--from",
                     "2026-12-01T00:00:00Z", "--to", "2026-12-02T00:00:00Z", "--csv")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 2 and lines[1].startswith("acc-2,EURUSD,1,")
    # no --mark: the last stored price before --to (the 14:03:00 tick's mid)
    assert float(lines[1].split(",")[7]) == pytest.approx(1.102)


def test_report_latency_per_hour(capsys: pytest.CaptureFixture[str], mesh: Path) -> None:
    rc, out, _ = run(capsys, mesh, "report", "--latency", "--from", "2026-12-01T14:00:00Z",
                     "--to", "2026-12-01T16:00:00Z", "--json")
    rows = json.loads(out)["latency"]
    assert rc == 0
    assert [(r["hour"], r["acks"], r["fills"], r["fill_p90_ms"]) for r in rows] == [
        ("2026-12-01T14:00:00Z", 2, 3, 30.0), ("2026-12-01T15:00:00Z", 1, 1, 3.0),
        ("all", 3, 4, 30.0)]


def test_an_unknown_symbol_is_an_empty_result_with_a_message(
        capsys: pytest.CaptureFixture[str], mesh: Path) -> None:
    rc, out, err = run(capsys, mesh, "bars", "NOPE", "--to", "2026-12-01T15:00:00Z", "--json")
    assert rc == 0
    assert json.loads(out)["bars"] == []
    assert "no 60 s bars of 'NOPE'" in err and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["bars", "EURUSD", "--res", "2"], "use one of 1S, 1, 5, 15, 60, 1D"),
    (["bars", "EURUSD", "--from", "2026-12-02", "--to", "2026-12-01"], "is after --to"),
    (["ticks", "EURUSD", "--from", "yesterday"], "bad time 'yesterday'"),
    (["ticks", "EURUSD", "--limit", "0"], "--limit must be 1 or more"),
    (["report", "--mark", "EURUSD"], "bad --mark 'EURUSD'"),
])
def test_bad_usage_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], mesh: Path,
                                          argv: list[str], says: str) -> None:
    rc, out, err = run(capsys, mesh, *argv)
    assert (rc, out) == (2, "")
    assert says in err and err.count("\n") == 1


def test_a_missing_store_is_exit_1(capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.toml"
    mesh.write_text(f'[history]\nduckdb_path = "{tmp_path / "none.duckdb"}"\n',
                    encoding="utf-8")
    rc, out, err = run(capsys, mesh, "ticks", "EURUSD")
    assert (rc, out) == (1, "")
    assert "cannot read history: no history at" in err and err.count("\n") == 1
    assert not (tmp_path / "none.duckdb").exists()


def test_the_entry_point_never_prints_a_traceback(mesh: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nodes.cli", "history", "bars", "EURUSD",
                           "--res", "3", "--config", str(mesh)],
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tickmesh history: unknown resolution '3': use one of 1S, 1, 5, 15, 60, 1D"]


@pytest.mark.parametrize(("text", "ns"), [
    ("2026-12-01T14:00:00Z", T), ("2026-12-01T14:00:00", T), ("2026-12-01 15:00:00+01:00", T),
    ("2026-12-01T14:00:00.5Z", T + S // 2), ("1796133600", T), ("1796133600.25", T + S // 4),
    (str(T), T), ("now", 42),
])
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time(text, now_ns=42) == ns


def test_a_forming_bar_that_starts_before_the_range_is_left_out(
        capsys: pytest.CaptureFixture[str], mesh: Path) -> None:
    rc, out, err = run(capsys, mesh, "bars", "EURUSD", "--res", "1D", "--from",
                       "2026-12-01T14:00:00Z", "--to", "2026-12-01T15:00:00Z", "--json")
    assert rc == 0 and json.loads(out)["bars"] == []
    assert "no 86400 s bars" in err


def test_a_file_another_process_holds_is_exit_1(capsys: pytest.CaptureFixture[str],
                                                mesh: Path) -> None:
    with duckdb_file_held(mesh.parent / "history.duckdb"):
        rc, out, err = run(capsys, mesh, "ticks", "EURUSD")
    assert (rc, out) == (1, "")
    assert "open in another process" in err and err.count("\n") == 1


# ticks every 7 s from 23:58:01 across midnight, one of them late (its clock 20 s back)
MIDNIGHT = T + 10 * 3600 * S  # 2026-12-02T00:00:00Z
CROSSING = [(n, MIDNIGHT - 119 * S + n * 7 * S - (20 * S if n == 9 else 0)) for n in range(1, 40)]
CUTS = [1, 2, 9, 10, 17, 18, 25, 39]


def test_read_bars_rebuilds_the_forming_bar_at_any_point(tmp_path: Path) -> None:
    """For a historian stopped after any tick (its ticks and closed bars stored), the forming
    bar read_bars rebuilds at every resolution is the one the historian held in memory."""
    async def body() -> None:
        store = DuckDBHistoryStore(tmp_path / "h.duckdb")
        await store.open()
        try:
            builders = {}
            for cut in CUTS:
                stream, builder, closed = f"EUR{cut}", BarBuilder(f"EUR{cut}"), []
                ticks = batch(Table.TICKS, *({"stream": stream, "seq": n, "ts_ns": ts,
                                              "last": 1.0 + n / 100, "volume": n}
                                             for n, ts in CROSSING[:cut]))
                for n, ts in CROSSING[:cut]:
                    closed.extend(builder.on_tick(n, ts, 0.0, 0.0, 1.0 + n / 100, n))
                await store.insert(ticks)
                await store.insert(bars_to_columns(closed))
                builders[stream] = builder
            for stream, builder in builders.items():
                for res_s in RES_SECONDS:
                    _, forming = await read_bars(store, stream, res_s, 0, MIDNIGHT + 3600 * S)
                    assert forming == builder.forming(res_s), (stream, res_s)
        finally:
            await store.close()
    asyncio.run(body())


def clickhouse_mesh(tmp_path: Path, ports: list[int], database: str) -> Path:
    mesh = tmp_path / "mesh.toml"
    servers = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    mesh.write_text(f'[history]\nstore = "clickhouse"\nclickhouse = [{servers}]\n'
                    f'database = "{database}"\n', encoding="utf-8")
    return mesh


def test_clickhouse_reads_go_to_the_server_that_answers(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, mesh: Path,
        clickhouse_server: ClickHouseProcess) -> None:
    """The first server is dead: the failover reader reads the second, and the output is
    the same as from the DuckDB file holding the same history."""
    database = f"cli_{uuid.uuid4().hex[:12]}"
    assert clickhouse_server.port is not None
    asyncio.run(fill(ClickHouseHistoryStore("127.0.0.1", clickhouse_server.port, database)))
    ch = clickhouse_mesh(tmp_path, [free_port(), clickhouse_server.port], database)
    for argv in (["bars", "EURUSD", "--res", "1", "--from", "2026-12-01", "--to",
                  "2026-12-01T15:00:00Z", "--json"],
                 ["report", "--from", "2026-12-01", "--to", "2026-12-02", "--json"]):
        rc, out, err = run(capsys, ch, *argv)
        assert (rc, err) == (0, "")
        assert out == run(capsys, mesh, *argv)[1]


def test_clickhouse_servers_all_down_is_exit_1(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    rc, out, err = run(capsys, clickhouse_mesh(tmp_path, [free_port(), free_port()], "x"),
                       "ticks", "EURUSD")
    assert (rc, out) == (1, "")
    assert "cannot read history" in err and err.count("\n") == 1
