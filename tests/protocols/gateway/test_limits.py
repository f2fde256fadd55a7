"""TokenBucket: a table of moves (allow, retry_after, tokens) including a clock that goes
backwards, parameter checks, and the properties: tokens stay in [0, burst], and a request
retried after retry_after() is allowed."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.gateway.limits import TokenBucket

# (id, rate, burst, moves); a move is (op, now, cost, expected): op "allow" -> bool,
# "retry" -> seconds, "tokens" -> tokens.
Move = tuple[str, float, float, float | bool]
CASES: list[tuple[str, float, float, list[Move]]] = [
    ("starts-full", 1.0, 3.0, [("tokens", 0.0, 1, 3.0), ("allow", 0.0, 3, True),
                               ("allow", 0.0, 1, False)]),
    ("burst-then-refused", 2.0, 2.0, [("allow", 10.0, 1, True), ("allow", 10.0, 1, True),
                                      ("allow", 10.0, 1, False), ("retry", 10.0, 1, 0.5)]),
    ("refill-at-rate", 2.0, 2.0, [("allow", 0.0, 2, True), ("allow", 0.25, 1, False),
                                  ("tokens", 0.25, 1, 0.5), ("allow", 0.5, 1, True)]),
    ("refused-takes-nothing", 1.0, 2.0, [("allow", 0.0, 2, True), ("allow", 0.5, 1, False),
                                         ("tokens", 0.5, 1, 0.5)]),
    ("refill-capped-at-burst", 10.0, 4.0, [("allow", 0.0, 4, True), ("tokens", 100.0, 1, 4.0),
                                           ("allow", 100.0, 4, True),
                                           ("allow", 100.0, 1, False)]),
    ("retry-zero-when-allowed", 1.0, 5.0, [("retry", 0.0, 5, 0.0), ("allow", 0.0, 5, True)]),
    ("retry-counts-the-cost", 4.0, 8.0, [("allow", 0.0, 8, True), ("retry", 0.0, 2, 0.5),
                                         ("retry", 0.0, 8, 2.0)]),
    ("retry-above-burst-is-never", 1.0, 2.0, [("retry", 0.0, 3, math.inf),
                                              ("allow", 1e9, 3, False)]),
    ("fractional-cost", 1.0, 1.0, [("allow", 0.0, 0.5, True), ("allow", 0.0, 0.5, True),
                                   ("allow", 0.0, 0.5, False)]),
    ("time-backwards-credits-nothing", 1.0, 2.0, [("allow", 10.0, 2, True),
                                                  ("tokens", 5.0, 1, 0.0),
                                                  ("allow", 5.0, 1, False),
                                                  ("tokens", 10.5, 1, 0.5),
                                                  ("allow", 11.0, 1, True)]),
    # A clock that jitters back and forth never earns the interval between twice.
    ("time-jitter-earns-once", 1.0, 10.0, [("allow", 0.0, 10, True), ("tokens", 4.0, 1, 4.0),
                                           ("tokens", 2.0, 1, 4.0), ("tokens", 4.0, 1, 4.0),
                                           ("tokens", 5.0, 1, 5.0)]),
    # Behind the latest time seen, the wait runs to that time and then on at the rate.
    ("retry-from-behind", 1.0, 1.0, [("allow", 10.0, 1, True), ("retry", 8.0, 1, 3.0)]),
    ("huge-clock-values", 20.0, 40.0, [("allow", 1e9, 40, True), ("allow", 1e9 + 1, 20, True),
                                       ("allow", 1e9 + 1, 1, False)]),
]


@pytest.mark.parametrize("rate, burst, moves",
                         [pytest.param(r, b, m, id=i) for i, r, b, m in CASES])
def test_moves(rate: float, burst: float, moves: list[Move]) -> None:
    bucket = TokenBucket(rate, burst)
    for step, (op, now, cost, expected) in enumerate(moves):
        if op == "allow":
            assert bucket.allow(now, cost) is expected, f"move {step}"
        elif op == "retry":
            assert bucket.retry_after(now, cost) == pytest.approx(expected, abs=1e-9), \
                f"move {step}"
        else:
            assert bucket.tokens(now) == pytest.approx(expected, abs=1e-9), f"move {step}"


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (math.inf, 1), (math.nan, 1),
                                         (1, 0), (1, -2), (1, math.inf)])
def test_bad_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        TokenBucket(rate, burst)


@pytest.mark.parametrize("cost", [0, -1, math.nan, math.inf])
def test_bad_cost(cost: float) -> None:
    bucket = TokenBucket(1, 1)
    with pytest.raises(ValueError, match="cost"):
        bucket.allow(0, cost)
    with pytest.raises(ValueError, match="cost"):
        bucket.retry_after(0, cost)


_steps = st.lists(st.tuples(st.floats(-50, 50), st.floats(0.01, 5.0)), min_size=1,
                  max_size=40)


@given(rate=st.floats(0.1, 1000), burst=st.floats(1, 100), start=st.floats(0, 1e7),
       steps=_steps)
def test_random_moves(rate: float, burst: float, start: float,
                      steps: list[tuple[float, float]]) -> None:
    """The tokens stay in [0, burst] whatever the clock does, and a request refused at
    ``now`` is allowed at ``now + retry_after(now)``."""
    bucket = TokenBucket(rate, burst)
    now = start
    for dt, cost in steps:
        now += dt  # backwards too
        cost = min(cost, burst)
        wait = bucket.retry_after(now, cost)
        if bucket.allow(now, cost):
            assert wait == 0.0
        else:
            assert 0.0 < wait < math.inf
            assert bucket.allow(now + wait, cost)
            now += wait
        assert 0.0 <= bucket.tokens(now) <= burst
