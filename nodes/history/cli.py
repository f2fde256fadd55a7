"""``tickmesh history bars|ticks|report``: read history from the mesh's store and print it.

    tickmesh history bars EURUSD --res 1 [--from T] [--to T] [--countback N]
    tickmesh history ticks EURUSD [--from T] [--to T] [--limit N]
    tickmesh history report [--account A] [--from T] [--to T] [--mark SYM=PRICE] [--latency]

Times are ISO-8601 (UTC unless an offset is given), epoch seconds, or epoch nanoseconds (an
integer of 16 digits or more); ``--to`` defaults to now and ``--from`` to an hour before
``--to``. Output is an aligned table, or ``--csv`` / ``--json`` (one JSON document) for
scripts. The store comes from ``[history]`` of ``--config``: the DuckDB file, or the
ClickHouse servers through the failover reader. Exit codes: 0 (an empty result included,
with a message on stderr), 2 bad usage, 1 the store cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from bus.config import HistorySection, MeshConfig, parse_hostport
from bus.history.bars import resumed_builder
from bus.store.history_reader import FailoverHistoryReader, HistoryReader
from protocols.errors import StoreError
from protocols.history.bars import (
    RESOLUTIONS,
    Bar,
    bars_from_columns,
    format_resolution,
    parse_resolution,
)
from protocols.history.report import latency_report, performance_report
from protocols.history.schema import NS_PER_S

__all__ = ["add_history_parser", "parse_time", "read_bars", "run_history"]

_HOUR_NS = 3600 * NS_PER_S
_NS_DIGITS = 16  # an integer time of this many digits or more is nanoseconds, else seconds


class UsageError(ValueError):
    """The command line asks for something impossible (exit code 2)."""


def add_history_parser(sub: Any) -> None:
    """Register ``history`` and its commands on the ``tickmesh`` subparsers."""
    # Not the nodes' common options: a command whose output scripts read logs only errors
    # by default (a warning that one ClickHouse server is down while the other answers would
    # be a second line on stderr), and it writes no statistics.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="mesh file (TOML); default: the local mesh")
    common.add_argument("--log-level", default="ERROR")
    h = sub.add_parser("history", help="print bars, ticks or performance reports from history",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hs = h.add_subparsers(dest="history_command", required=True)
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--from", dest="start", help="start time (default: an hour before --to)")
    out.add_argument("--to", dest="end", help="end time, exclusive (default: now)")
    fmt = out.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    fmt.add_argument("--json", action="store_true", help="print one JSON document")
    b = hs.add_parser("bars", parents=[common, out], help="OHLCV bars, with the forming bar")
    b.add_argument("symbol")
    b.add_argument("--res", default="1", help=f"resolution: {', '.join(RESOLUTIONS)} "
                                              "(TradingView names; default 1 = one minute)")
    b.add_argument("--countback", type=int, default=0,
                   help="the N bars before --to, whatever --from says")
    t = hs.add_parser("ticks", parents=[common, out], help="ticks in a time range")
    t.add_argument("symbol")
    t.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    r = hs.add_parser("report", parents=[common, out],
                      help="fills, volume, P&L and slippage per account and symbol")
    r.add_argument("--account", help="one account (default: all)")
    r.add_argument("--mark", action="append", default=[], metavar="SYMBOL=PRICE",
                   help="value open positions at this price (default: the symbol's last "
                        "stored price before --to)")
    r.add_argument("--latency", action="store_true",
                   help="order latency percentiles per hour instead of P&L")


def parse_time(text: str, now_ns: int) -> int:
    """Epoch ns of an ISO-8601 time (UTC unless it has an offset), epoch seconds (may have a
    fraction), epoch ns (an integer of 16 digits or more) or ``now``."""
    s = text.strip()
    if s.lower() == "now":
        return now_ns
    if s.isdigit():
        return int(s) if len(s) >= _NS_DIGITS else int(s) * NS_PER_S
    try:
        return int(Decimal(s) * NS_PER_S)  # exact: a float has no nanoseconds left at 1e9 s
    except InvalidOperation:
        pass
    try:
        when = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad time {text!r}: use ISO-8601 (2026-12-01T14:00:00Z), epoch "
                         "seconds or epoch nanoseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


def _time_range(args: argparse.Namespace, now_ns: int) -> tuple[int, int]:
    end = parse_time(args.end, now_ns) if args.end else now_ns
    start = parse_time(args.start, now_ns) if args.start else end - _HOUR_NS
    if start > end:
        raise UsageError(f"--from {_iso(start)} is after --to {_iso(end)}")
    return start, end


def _iso(ts_ns: int) -> str:
    when = datetime.fromtimestamp(ts_ns // NS_PER_S, tz=UTC)
    frac = ts_ns % NS_PER_S
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac // 1000:06d}Z" if frac else f"{base}Z"


async def read_bars(store: HistoryReader, stream: str, res_s: int, start_ns: int, end_ns: int,
                    countback: int = 0) -> tuple[list[Bar], Bar | None]:
    """The closed bars of the range (``countback``: the last N before ``end_ns``, the forming
    bar included in N) and the forming bar, or None.

    The forming bar is rebuilt from the store alone (no live process), as a restarted
    historian rebuilds it (:meth:`BarBuilder.resume`): the last closed bar of each resolution
    up to ``res_s``, the closed bars of the next finer resolution after it, and the ticks
    after the last closed 1 s bar (a late one among them is read if its time is at most a
    minute before that bar's; an older one is in the bar once the historian closes it).
    """
    closed = bars_from_columns(await store.bars(stream, res_s, start_ns, end_ns, countback))
    builder = await resumed_builder(store, stream, top_res_s=res_s, end_ns=end_ns)
    forming = builder.forming(res_s)
    if forming is not None and (forming.start_ns >= end_ns
                                or (not countback and forming.start_ns < start_ns)):
        forming = None
    if countback and forming is not None:
        closed = closed[-(countback - 1):] if countback > 1 else []
    return closed, forming


# --- output -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Table:
    """Rows to print: ``columns`` name the keys of each row, in order."""

    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _text(table: _Table) -> str:
    cells = [[_cell(r[c]) for c in table.columns] for r in table.rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(table.columns)]
    numeric = [all(isinstance(r[c], int | float) and not isinstance(r[c], bool)
                   for r in table.rows if r[c] is not None) for c in table.columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()
    return "\n".join([line(table.columns)] + [line(row) for row in cells]) + "\n"


def _csv(table: _Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    for r in table.rows:
        w.writerow(["" if r[c] is None else r[c] for c in table.columns])
    return buf.getvalue()


def _emit(args: argparse.Namespace, table: _Table, document: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(document) + "\n")
    elif args.csv:
        sys.stdout.write(_csv(table))
    else:
        sys.stdout.write(_text(table))


def _bar_row(bar: Bar, forming: bool) -> dict[str, Any]:
    return {"time": _iso(bar.start_ns), "start_ns": bar.start_ns, "open": bar.open,
            "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume,
            "ticks": bar.ticks, "forming": forming}


# --- the commands ------------------------------------------------------------------------

async def _bars(store: HistoryReader, args: argparse.Namespace) -> int:
    res_s, start, end = args.res_s, args.start_ns, args.end_ns
    closed, forming = await read_bars(store, args.symbol, res_s, start, end, args.countback)
    rows = [_bar_row(b, False) for b in closed] + ([_bar_row(forming, True)] if forming else [])
    if not rows:
        _note(f"no {res_s} s bars of {args.symbol!r} from {_iso(start)} to "
              f"{_iso(end)} (is the symbol right?)")
    table = _Table(("time", "open", "high", "low", "close", "volume", "ticks", "forming"), rows)
    _emit(args, table, {"symbol": args.symbol, "resolution": format_resolution(res_s),
                        "from_ns": start, "to_ns": end, "bars": rows})
    return 0


async def _ticks(store: HistoryReader, args: argparse.Namespace) -> int:
    start, end = args.start_ns, args.end_ns
    ticks = await store.ticks(args.symbol, start, end, args.limit)
    c = ticks.data
    rows = [{"time": _iso(c["ts_ns"][i]), "ts_ns": c["ts_ns"][i], "seq": c["seq"][i],
             "bid": c["bid"][i], "ask": c["ask"][i], "last": c["last"][i],
             "volume": c["volume"][i]} for i in range(len(ticks))]
    if not rows:
        _note(f"no ticks of {args.symbol!r} from {_iso(start)} to {_iso(end)} "
              "(is the symbol right?)")
    table = _Table(("time", "seq", "bid", "ask", "last", "volume"), rows)
    _emit(args, table, {"symbol": args.symbol, "from_ns": start, "to_ns": end, "ticks": rows})
    return 0


def _marks(given: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in given:
        symbol, _, price = item.partition("=")
        try:
            if not symbol.strip():
                raise ValueError(item)
            out[symbol.strip()] = float(price)
        except ValueError:
            raise UsageError(f"bad --mark {item!r}: use SYMBOL=PRICE") from None
    return out


async def _report(store: HistoryReader, args: argparse.Namespace) -> int:
    marks, start, end = dict(args.marks), args.start_ns, args.end_ns
    orders = await store.orders(args.account, start, end)
    executions = await store.executions(args.account, start, end)
    window = f"from {_iso(start)} to {_iso(end)}" + (f" for {args.account!r}"
                                                     if args.account else "")
    if args.latency:
        rows = [{"hour": "all" if r.hour_ns is None else _iso(r.hour_ns),
                 "acks": r.ack.count, "ack_p50_ms": r.ack.p50, "ack_p90_ms": r.ack.p90,
                 "ack_p99_ms": r.ack.p99, "ack_max_ms": r.ack.max,
                 "fills": r.fill.count, "fill_p50_ms": r.fill.p50, "fill_p90_ms": r.fill.p90,
                 "fill_p99_ms": r.fill.p99, "fill_max_ms": r.fill.max}
                for r in latency_report(orders, executions)]
        if rows[-1]["acks"] == 0:
            _note(f"no orders {window}")
        _emit(args, _Table(tuple(rows[0]), rows),
              {"from_ns": start, "to_ns": end, "account": args.account, "latency": rows})
        return 0
    reports = performance_report(orders, executions)
    for rep in reports:
        if rep.symbol not in marks:  # the last price before --to: the latest 1 s bar's close
            closed, forming = await read_bars(store, rep.symbol, 1, 0, end, countback=1)
            latest = forming or (closed[-1] if closed else None)
            if latest is not None:
                marks[rep.symbol] = latest.close
        rep.mark(marks.get(rep.symbol))
    rows = [rep.as_dict() | {"mark": marks.get(rep.symbol)} for rep in reports]
    if not rows:
        _note(f"no fills {window}")
    columns = ("account", "symbol", "fills", "volume", "position", "avg_price", "realized_pnl",
               "mark", "unrealized_pnl", "slippage_avg", "slippage_fills", "no_quote")
    _emit(args, _Table(columns, rows),
          {"from_ns": start, "to_ns": end, "account": args.account, "positions": rows})
    return 0


_COMMANDS = {"bars": _bars, "ticks": _ticks, "report": _report}


class _Reader(HistoryReader, Protocol):
    """A reader the command opens and closes (a store, or the failover pair of them)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


def open_reader(section: HistorySection) -> _Reader:
    """The store that readers of the mesh use: the DuckDB file, or the ClickHouse servers
    behind the failover reader (the first is the active one)."""
    if section.store == "duckdb":
        from bus.store.history_duck import DuckDBHistoryStore

        if not Path(section.duckdb_path).exists():
            raise StoreError(f"no history at {section.duckdb_path} (history.duckdb_path; is "
                             "the historian writing there?)")
        return DuckDBHistoryStore(section.duckdb_path)
    from bus.store.history_ch import ClickHouseHistoryStore

    servers = []
    for i, hp in enumerate(section.clickhouse):
        host, port = parse_hostport(f"history.clickhouse[{i}]", hp)
        servers.append(ClickHouseHistoryStore(host, port, section.database,
                                              section.connect_timeout_s,
                                              section.receive_timeout_s))
    return FailoverHistoryReader(servers)


def _check(args: argparse.Namespace, now_ns: int) -> None:
    """Parse and check the arguments before any store is opened (UsageError)."""
    args.start_ns, args.end_ns = _time_range(args, now_ns)
    if args.history_command == "bars":
        try:
            args.res_s = parse_resolution(args.res)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.countback < 0:
            raise UsageError(f"--countback must be 0 or more, not {args.countback}")
    elif args.history_command == "ticks":
        if args.limit < 1:
            raise UsageError(f"--limit must be 1 or more, not {args.limit}")
    else:
        args.marks = _marks(args.mark)


async def _run(cfg: MeshConfig, args: argparse.Namespace) -> int:
    store = open_reader(cfg.history)
    await store.open()
    try:
        return await _COMMANDS[args.history_command](store, args)
    finally:
        await store.close()


def run_history(cfg: MeshConfig, args: argparse.Namespace) -> int:
    """Run one ``tickmesh history`` command; its exit code."""
    try:
        _check(args, time.time_ns())
        return asyncio.run(_run(cfg, args))
    except UsageError as exc:
        print(f"tickmesh history: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"tickmesh history: cannot read history: {exc}", file=sys.stderr)
        return 1


def _note(text: str) -> None:
    print(f"tickmesh history: {text}", file=sys.stderr)
