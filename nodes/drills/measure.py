"""What drills and benchmarks measure: latency summaries, CPU and memory of processes.

Every percentile here is the nearest-rank one of :mod:`protocols.stats`, the same rule as
``Subscriber.stats()``. psutil (the ``bench`` extra) is imported only where it is used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from protocols.stats import percentiles

__all__ = ["CpuMeter", "latency_ms", "latency_us", "peak_rss_mb", "per_cpu_second"]

_US_KEYS = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))
_MS_KEYS = (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))


def latency_us(lat_ns: Sequence[int]) -> dict[str, float]:
    """``n``, ``p50``, ``p90``, ``p99``, ``p999`` and ``max`` of nanosecond latencies, in
    microseconds (NaN for each when there are none: a figure that could not be measured)."""
    got = percentiles(lat_ns, [q for _, q in _US_KEYS] + [1.0])
    if got is None:
        return {"n": 0, **{k: math.nan for k, _ in _US_KEYS}, "max": math.nan}
    out: dict[str, float] = {"n": len(lat_ns)}
    for (k, _), v in zip(_US_KEYS, got, strict=False):
        out[k] = v / 1000
    out["max"] = got[-1] / 1000
    return out


def latency_ms(lat_ns: Sequence[int]) -> dict[str, float | None]:
    """``p50``, ``p99``, ``p999`` and ``max`` of nanosecond latencies in milliseconds,
    rounded to the microsecond (None for each when there are none)."""
    got = percentiles(lat_ns, [q for _, q in _MS_KEYS] + [1.0])
    keys = [k for k, _ in _MS_KEYS] + ["max"]
    if got is None:
        return dict.fromkeys(keys)
    return {k: round(v / 1e6, 3) for k, v in zip(keys, got, strict=True)}


def peak_rss_mb(pid: int | None) -> float:
    """VmHWM (the kernel's peak resident set) of a live process in MiB; NaN when unknown."""
    if pid is None:
        return math.nan
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def per_cpu_second(count: int, cpu_s: Mapping[str, float],
                   roles: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``count`` (e.g. orders acknowledged in a window) per CPU second of each role's process.

    ``cpu_s`` holds CPU seconds per process name (:meth:`CpuMeter.seconds`), ``roles`` the
    process name behind each role (``{"active": "primary", ...}``). The result holds per role
    ``cpu_s`` (rounded to the millisecond) and ``orders_per_cpu_s``: NaN when the process is
    unknown or used no CPU (a figure that could not be measured, not an infinite one).
    """
    cpu: dict[str, float] = {}
    per: dict[str, float] = {}
    for role, name in roles.items():
        sec = cpu_s.get(name, math.nan)
        cpu[role] = round(sec, 3)
        per[role] = round(count / sec, 1) if sec > 0 else math.nan  # NaN > 0 is False too
    return {"cpu_s": cpu, "orders_per_cpu_s": per}


class CpuMeter:
    """CPU seconds (user + system, all threads) of named processes between two samples."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.pids: dict[str, int] = {}

    def rss_mb(self) -> dict[str, float]:
        """The resident set of each named process now, in MiB (NaN for one that is gone)."""
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = round(self._psutil.Process(pid).memory_info().rss / 2**20, 1)
            except self._psutil.Error:
                out[name] = math.nan
        return out

    def sample(self) -> dict[str, float]:
        """CPU seconds so far of each named process, and of the whole machine (``_busy``)."""
        t = self._psutil.cpu_times()
        out = {"_wall": time.monotonic(), "_busy": sum(t) - t.idle - getattr(t, "iowait", 0.0)}
        for name, pid in self.pids.items():
            try:
                pt = self._psutil.Process(pid).cpu_times()
                out[name] = pt.user + pt.system
            except self._psutil.Error:
                out[name] = math.nan
        return out

    @staticmethod
    def seconds(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """CPU seconds (user + system) of each named process between samples ``a`` and ``b``
        (NaN for one that was gone at either)."""
        return {k: b[k] - a[k] for k in a if not k.startswith("_") and k in b}

    @staticmethod
    def percent(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """CPU % per process between samples ``a`` and ``b`` (100 = one core), and "other":
        everything else on the machine."""
        wall = b["_wall"] - a["_wall"]
        if wall <= 0:
            return {}
        out = {k: round(100 * v / wall, 1) for k, v in CpuMeter.seconds(a, b).items()}
        ours = sum(v for v in out.values() if not math.isnan(v))
        out["other"] = round(max(0.0, 100 * (b["_busy"] - a["_busy"]) / wall - ours), 1)
        return out
