"""How drills and benchmarks report: a console table, a markdown report, one JSON line.

A run ends the same way everywhere: :func:`conclude` (drills: verdict, markdown report,
console table, JSON line, exit status) or :func:`drive` (benchmarks: work directory, every
child stopped, the rendered table, JSON line). With ``--json`` the last line of stdout is
one JSON object, strict (a figure that could not be measured is ``null``, never ``NaN``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from nodes.drills.procs import Children, unwind_on_sigterm
from protocols.errors import DrillError

__all__ = [
    "aligned",
    "conclude",
    "dash",
    "drive",
    "fmt",
    "json_line",
    "machine",
    "machine_line",
    "markdown_table",
    "no_nan",
    "round1",
]

Summary = dict[str, Any]


def dash(v: Any) -> str:
    """A figure for a table: ``-`` when it could not be measured (None)."""
    return "-" if v is None else str(v)


def round1(v: float | None) -> float | None:
    """``v`` rounded to one decimal, None kept."""
    return None if v is None else round(v, 1)


def fmt(v: float | None, nd: int = 0) -> str:
    """A number with thousands separators and ``nd`` decimals; ``-`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{nd}f}"


def aligned(rows: list[tuple[str, str]]) -> str:
    """``name  value`` lines with the values in one column (a drill's console summary)."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a markdown table (``-`` for a None cell)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(dash(c) for c in row) + " |" for row in rows)]


def no_nan(obj: Any) -> Any:
    """The object with NaN (a measurement that could not be taken) as None: strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [no_nan(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One strict JSON line (NaN as null; anything else unknown as its ``str``)."""
    return json.dumps(no_nan(obj), allow_nan=False, default=str)


def machine() -> dict[str, Any]:
    """Cores, CPU model, load, Python, pyzmq/libzmq, msgpack and redis-server versions, date."""
    import msgpack
    import zmq

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        redis_version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                       timeout=5).stdout.split()[2].removeprefix("v=")
    return {"nproc": os.cpu_count(), "cpu": model, "loadavg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version)), "redis": redis_version,
            "date": _now()}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine_line() -> str:
    """One line for a report: architecture, CPUs, Python, load average."""
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def conclude(summary: Summary, *, ok: bool, run_dir: Path, report: Path,
             markdown: Callable[[Summary], str], human: Callable[[Summary], str],
             as_json: bool) -> int:
    """The end of a drill: stamp the summary (verdict, date, machine, where its files are),
    write the markdown report, print the console table and (``as_json``) the JSON line, and
    give the exit status (0: every target met, 1: not)."""
    summary["ok"] = ok
    summary["date"] = _now()
    summary["machine"] = machine_line()
    summary["run_dir"], summary["report"] = str(run_dir), str(report)
    report.write_text(markdown(summary))
    print(human(summary))
    print(f"report: {report}")
    print(f"logs:   {run_dir}")
    if as_json:
        print(json_line(summary))
    return 0 if ok else 1


def run_drill_main(name: str, argv: list[str] | None, run_dir: Path | None,
                   run: Callable[[Path], Coroutine[Any, Any, Summary]],
                   passed: Callable[[Summary], bool],
                   markdown: Callable[[Summary, str], str], human: Callable[[Summary], str],
                   *, report: Path | None, as_json: bool) -> int:
    """The main of a drill after its arguments: the run dir (a temp dir by default), the run,
    the exit status (2: the drill itself could not run, its error said with where the logs
    are), and :func:`conclude` with the command line in the report."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix=f"tickmesh-{name}-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    command = f"./scripts/{name} " + " ".join(argv if argv is not None else sys.argv[1:])
    unwind_on_sigterm()
    try:
        summary = asyncio.run(run(run_dir))
    except (DrillError, OSError) as exc:
        print(f"{name}: {exc} (logs in {run_dir})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted (logs in {run_dir})", file=sys.stderr)
        return 2
    return conclude(summary, ok=passed(summary), run_dir=run_dir,
                    report=report or run_dir / f"{name}.md",
                    markdown=lambda s: markdown(s, command.strip()), human=human,
                    as_json=as_json)


def drive(args: argparse.Namespace, prefix: str,
          profile: Callable[[argparse.Namespace, Children, Path], None],
          bench: Callable[[argparse.Namespace, Children, Path], Summary],
          render_result: Callable[[Summary], str], say: Callable[[str], None]) -> int:
    """The main of a benchmark: a work directory, the run (or, with ``args.profile``, the
    profile), every child process stopped whatever happens, the table, and with
    ``args.json`` the JSON line last (the summary, machine, steps, raw references)."""
    unwind_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    t0 = time.monotonic()
    with Children(workdir) as procs:
        try:
            if args.profile:
                profile(args, procs, workdir)
                return 0
            result = bench(args, procs, workdir)
        except DrillError as exc:
            say(f"failed: {exc} (logs in {workdir})")
            args.keep = True
            return 1
        except KeyboardInterrupt:
            say(f"interrupted (logs in {workdir})")
            args.keep = True
            return 130
        finally:
            procs.stop_all()
            if args.keep:
                say(f"work directory kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(render_result(result))
    print(f"\n(elapsed {result['elapsed_s']} s)")
    if args.json:
        print(json_line({**result["summary"], "machine": result["machine"],
                         "steps": result["steps"], "raw": result["raw"],
                         "elapsed_s": result["elapsed_s"]}))
    return 0
