"""Backoff.compute: exponential growth, the cap, the jitter share, parameter checks;
RetryAfter.compute: the busy server's hint, spread and floored; the adaptive request timer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.backoff import Backoff, RequestTimer, RetryAfter

ALMOST_1 = 1 - 2**-53  # the largest value random.random() can return

# (id, policy, failures, rand, expected delay)
CASES: list[tuple[str, Backoff, int, float, float]] = [
    ("first-retry-is-base", Backoff(0.01, 1.0, 0.0), 0, 0.0, 0.01),
    ("doubles-1", Backoff(0.01, 1.0, 0.0), 1, 0.0, 0.02),
    ("doubles-2", Backoff(0.01, 1.0, 0.0), 2, 0.0, 0.04),
    ("doubles-6", Backoff(0.01, 1.0, 0.0), 6, 0.0, 0.64),
    ("capped-7", Backoff(0.01, 1.0, 0.0), 7, 0.0, 1.0),
    ("capped-huge-count", Backoff(0.01, 1.0, 0.0), 10_000, 0.0, 1.0),
    ("base-equals-cap", Backoff(0.5, 0.5, 0.0), 3, 0.0, 0.5),
    ("no-jitter-ignores-rand", Backoff(0.01, 1.0, 0.0), 2, 0.9, 0.04),
    ("jitter-rand-0-is-full-delay", Backoff(0.01, 1.0, 0.5), 3, 0.0, 0.08),
    ("jitter-rand-1-is-half-delay", Backoff(0.01, 1.0, 0.5), 3, ALMOST_1, 0.04),
    ("jitter-rand-half", Backoff(0.01, 1.0, 0.5), 3, 0.5, 0.06),
    ("jitter-on-the-cap", Backoff(0.01, 1.0, 0.5), 20, ALMOST_1, 0.5),
    ("full-jitter-rand-1-is-0", Backoff(0.01, 1.0, 1.0), 4, ALMOST_1, 0.0),
    ("full-jitter-rand-0", Backoff(0.01, 1.0, 1.0), 4, 0.0, 0.16),
    ("defaults", Backoff(), 0, 0.0, 0.01),
    ("feed-store-wait", Backoff(base_s=0.05, cap_s=2.0), 5, 0.0, 1.6),
]


@pytest.mark.parametrize("policy, failures, rand, expected",
                         [pytest.param(p, f, r, e, id=i) for i, p, f, r, e in CASES])
def test_compute(policy: Backoff, failures: int, rand: float, expected: float) -> None:
    assert policy.compute(failures, rand) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kwargs, fragment", [
    pytest.param({"base_s": 0.0}, "0 < base_s <= cap_s", id="base-0"),
    pytest.param({"base_s": -0.1}, "0 < base_s <= cap_s", id="base-negative"),
    pytest.param({"base_s": 2.0, "cap_s": 1.0}, "0 < base_s <= cap_s", id="base-above-cap"),
    pytest.param({"base_s": float("nan")}, "0 < base_s <= cap_s", id="base-nan"),
    pytest.param({"jitter": -0.1}, "jitter must be in [0, 1]", id="jitter-negative"),
    pytest.param({"jitter": 1.5}, "jitter must be in [0, 1]", id="jitter-above-1"),
    pytest.param({"jitter": float("nan")}, "jitter must be in [0, 1]", id="jitter-nan"),
])
def test_invalid_parameters_raise(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        Backoff(**kwargs)


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-6, 10), st.floats(1, 100), st.floats(0, 1), st.integers(0, 200),
       st.floats(0, 1, exclude_max=True))
def test_delay_is_within_jitter_bounds_and_never_above_cap(base: float, cap_factor: float,
                                                           jitter: float, failures: int,
                                                           rand: float) -> None:
    policy = Backoff(base, base * cap_factor, jitter)
    raw = min(policy.cap_s, base * 2.0**failures)
    delay = policy.compute(failures, rand)
    assert raw * (1 - jitter) - 1e-12 <= delay <= raw + 1e-12
    assert delay <= policy.cap_s
    # Without jitter the delay never shrinks as failures pile up.
    assert Backoff(base, base * cap_factor, 0).compute(failures + 1, rand) >= \
        Backoff(base, base * cap_factor, 0).compute(failures, rand)


# --- the resend delay after a BUSY's retry-after hint ------------------------------------------

# (id, policy, hint ms, rand, no-hint delay, expected delay)
RETRY_AFTER: list[tuple[str, RetryAfter, int, float, float, float]] = [
    ("hint-at-rand-0-is-the-hint", RetryAfter(), 20, 0.0, 0.5, 0.020),
    ("hint-at-rand-half", RetryAfter(), 20, 0.5, 0.5, 0.025),
    ("hint-at-rand-1-is-1.5x", RetryAfter(), 20, ALMOST_1, 0.5, 0.030),
    ("no-spread-is-the-hint", RetryAfter(spread=0.0), 20, 0.9, 0.5, 0.020),
    ("full-spread-doubles", RetryAfter(spread=1.0), 20, ALMOST_1, 0.5, 0.040),
    ("1-ms-hint-spread", RetryAfter(), 1, ALMOST_1, 0.5, 0.0015),
    ("floor-above-a-tiny-result", RetryAfter(floor_s=0.005), 2, 0.5, 0.5, 0.005),
    ("no-hint-is-the-back-off", RetryAfter(), 0, 0.9, 0.04, 0.04),
    ("no-hint-floored", RetryAfter(), 0, 0.9, 0.0, 0.001),
    ("longest-hint", RetryAfter(), 60_000, ALMOST_1, 0.5, 90.0),
]


@pytest.mark.parametrize("policy, hint_ms, rand, no_hint_s, expected",
                         [pytest.param(p, h, r, n, e, id=i) for i, p, h, r, n, e in RETRY_AFTER])
def test_retry_after(policy: RetryAfter, hint_ms: int, rand: float, no_hint_s: float,
                     expected: float) -> None:
    assert policy.compute(hint_ms, rand, no_hint_s) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60_000), st.floats(0, 1), st.floats(0, 1, exclude_max=True))
def test_a_resend_never_comes_before_the_hint(hint_ms: int, spread: float, rand: float) -> None:
    delay = RetryAfter(spread=spread).compute(hint_ms, rand, 0.0)
    assert max(0.001, hint_ms / 1000) <= delay <= hint_ms / 1000 * (1 + spread) + 1e-12


@pytest.mark.parametrize("kwargs, fragment", [
    pytest.param({"spread": -0.1}, "spread", id="spread-negative"),
    pytest.param({"spread": 1.5}, "spread", id="spread-above-1"),
    pytest.param({"floor_s": 0.0}, "floor_s", id="floor-0"),
])
def test_retry_after_refuses_bad_parameters(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        RetryAfter(**kwargs)


# --- the adaptive request timeout ---------------------------------------------------------------

def test_request_timer_starts_at_the_floor_and_follows_the_answers() -> None:
    t = RequestTimer(floor_s=0.05, ceiling_s=1.0)
    assert t.timeout() == 0.05
    t.observe(0.002)  # fast answers: the floor holds
    assert t.timeout() == 0.05
    for _ in range(20):
        t.observe(0.2)  # a slow server: srtt + 4 rttvar, above the floor
    assert 0.2 < t.timeout() < 0.4
    t.observe(5.0)
    assert t.timeout() == 1.0  # never above the ceiling


# (id, timeouts in a row, expected timeout)
BACKING_OFF = [("none", 0, 0.05), ("one", 1, 0.1), ("two", 2, 0.2), ("three", 3, 0.4),
               ("capped", 10, 1.0)]


@pytest.mark.parametrize(("timeouts", "expected"), [b[1:] for b in BACKING_OFF],
                         ids=[b[0] for b in BACKING_OFF])
def test_request_timer_doubles_on_timeouts(timeouts: int, expected: float) -> None:
    t = RequestTimer(floor_s=0.05, ceiling_s=1.0)
    for _ in range(timeouts):
        t.timed_out()
    assert t.timeout() == pytest.approx(expected)


def test_a_sample_ends_the_back_off() -> None:
    t = RequestTimer(floor_s=0.05, ceiling_s=1.0)
    t.timed_out()
    t.timed_out()
    t.observe(0.001)
    assert t.timeout() == 0.05


def test_request_timer_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError):
        RequestTimer(floor_s=0.0, ceiling_s=1.0)
    with pytest.raises(ValueError):
        RequestTimer(floor_s=2.0, ceiling_s=1.0)
