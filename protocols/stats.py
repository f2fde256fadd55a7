"""Percentiles: one definition for every figure tickmesh reports.

The rule is *nearest rank*: the ``q`` percentile of ``n`` sorted values is the value at rank
``ceil(q * n)`` (1-based), and the value at rank 1 for ``q == 0``. It always returns one of
the measured values, never an interpolation, so a p99 over 100 samples is the 99th smallest
and "p100" is the maximum. The subscriber's statistics, the benchmarks and the drills all
call this module, so a p99 in a drill report and in ``Subscriber.stats()`` mean the same.

Pure: no clock, no I/O. ``q`` is a fraction (0.99 for p99), not a percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

__all__ = ["nearest_rank", "percentile", "percentiles"]

V = TypeVar("V", int, float)

# q * n in floating point can land just above an integer (0.07 * 100 == 7.000000000000001),
# which would move ceil() one rank up; rounding to this many digits first removes that.
_RANK_DIGITS = 9


def nearest_rank(n: int, q: float) -> int:
    """The 0-based index of the ``q`` percentile among ``n`` sorted values (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"no rank among {n} values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a percentile is a fraction in [0, 1], not {q!r}")
    return max(0, math.ceil(round(q * n, _RANK_DIGITS)) - 1)


def percentile(values: Iterable[V], q: float) -> V | None:
    """The nearest-rank ``q`` percentile of ``values`` (in any order); None when empty."""
    data = sorted(values)
    if not data:
        return None
    return data[nearest_rank(len(data), q)]


def percentiles(values: Iterable[V], qs: Sequence[float]) -> list[V] | None:
    """The nearest-rank percentile of ``values`` for each fraction in ``qs`` (one sort for
    all of them); None when ``values`` is empty."""
    data = sorted(values)
    if not data:
        return None
    return [data[nearest_rank(len(data), q)] for q in qs]
