"""Profiling a benchmark's processes: py-spy command lines and a summary of their samples."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profile", "folded_summary"]


@dataclass(frozen=True)
class Profile:
    """Where and how to profile the processes of a benchmark."""

    dir: Path
    sampler: str  # "cprofile" (deterministic, slow), "py-spy" (sampling), "py-spy-native"

    def py_spy(self, name: str) -> list[str]:
        """The py-spy command line to put in front of process ``name``'s own."""
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        # --native (C frames too) must pause the process for each sample.
        mode = ["--native"] if self.sampler == "py-spy-native" else ["--nonblocking"]
        return [exe, "record", "--format", "raw", "--function", *mode, "--rate", "250",
                "-o", str(self.dir / f"{name}.folded"), "--"]


def folded_summary(path: Path, top: int = 25) -> str:
    """Own and inclusive share of the samples per function, from py-spy's raw output."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    out = [f"{total} samples (busy threads only)", "  own %  incl %  function"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * n / total:5.1f}  {100 * incl[f] / total:6.1f}  {f}")
    out.append("  -- by inclusive share --")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * own.get(f, 0) / total:5.1f}  {100 * n / total:6.1f}  {f}")
    return "\n".join(out)
