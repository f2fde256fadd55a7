"""protocols.stats: the nearest-rank percentile, from tables and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.stats import nearest_rank, percentile, percentiles


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5], 0.0, 5),
        ([5], 0.5, 5),
        ([5], 1.0, 5),
        ([1, 2, 3, 4], 0.0, 1),
        ([1, 2, 3, 4], 0.25, 1),
        ([1, 2, 3, 4], 0.26, 2),
        ([1, 2, 3, 4], 0.5, 2),
        ([1, 2, 3, 4], 0.75, 3),
        ([1, 2, 3, 4], 1.0, 4),
        ([4, 1, 3, 2], 0.5, 2),  # any order
        (list(range(1, 101)), 0.99, 99),
        (list(range(1, 101)), 0.07, 7),  # 0.07 * 100 is 7.000000000000001 in floating point
        (list(range(1, 1001)), 0.999, 999),
        (list(range(1, 11)), 0.99, 10),
        ([0.5, 0.25], 0.5, 0.25),
    ],
)
def test_percentile_table(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_no_values_no_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentiles([], (0.5, 0.99)) is None


@pytest.mark.parametrize(("n", "q"), [(0, 0.5), (3, -0.1), (3, 1.5), (3, math.nan)])
def test_bad_rank_arguments_raise(n: int, q: float) -> None:
    with pytest.raises(ValueError):
        nearest_rank(n, q)


def test_percentiles_sort_once_and_agree_with_percentile() -> None:
    values = [9, 3, 7, 1, 5]
    assert percentiles(values, (0.0, 0.5, 0.9, 1.0)) == [percentile(values, q)
                                                         for q in (0.0, 0.5, 0.9, 1.0)]


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=200),
       st.floats(0.0, 1.0))
def test_nearest_rank_is_the_smallest_value_covering_q(values: list[int], q: float) -> None:
    p = percentile(values, q)
    assert p is not None and p in values
    n = len(values)
    at_or_below = sum(1 for v in values if v <= p)
    below = sum(1 for v in values if v < p)
    # At least a share q of the values is <= p, and p is the smallest value for which that
    # holds (nearest rank), up to the rounding of q * n.
    assert at_or_below >= round(q * n, 9)
    assert below < max(1, math.ceil(round(q * n, 9)))
