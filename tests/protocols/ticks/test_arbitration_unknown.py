"""The arbiter and *unknown* ranges (issue 9): numbers a crashed feed reserved, that may have
carried ticks no store holds, are never skipped silently.

Kept apart from test_arbitration.py (the machine's contract and transition tables), as the
void/unknown rule is a separate concern of the same machine. Also here: where a stream absent
from the snapshot starts (docs/PROTOCOL.md section 10 rule 8, which was silent on it).
"""

from __future__ import annotations

from typing import Any

import pytest

from protocols.ticks.arbitration import (
    ArbiterConfig,
    Deliver,
    Lost,
    Skipped,
    StreamArbiter,
    StreamState,
    Unknown,
)
from protocols.ticks.messages import Row, SeqRange

CFG = ArbiterConfig(grace_s=0.003, fill_timeout_s=0.25, retry_s=0.01, give_up_s=3.0,
                    max_pending=1000, max_fill=1000)


def rows(a: int, b: int) -> tuple[Row, ...]:
    return tuple((1.0 + s, 1.5 + s, 0.0, 1.0, s, s) for s in range(a, b + 1))


def r(a: int, b: int) -> SeqRange:
    return SeqRange(a, b)


def outcome(effects: list[Any]) -> list[tuple[str, int, int]]:
    """The effects that account for numbers, as (what, first, last)."""
    out = []
    for e in effects:
        match e:
            case Deliver(_s, _ses, first, batch_rows):
                out.append(("delivered", first, first + len(batch_rows) - 1))
            case Lost(_s, a, b):
                out.append(("lost", a, b))
            case Skipped(_s, a, b):
                out.append(("skipped", a, b))
            case Unknown(_s, a, b):
                out.append(("unknown", a, b))
    return out


def crash_restart(seen_to: int, heartbeat: int = 0) -> StreamArbiter:
    """A receiver that got 1..seen_to of session 1 (and a heartbeat announcing ``heartbeat``,
    if given), then the first batch of session 2 at 101 (the feed reserved up to 100)."""
    arb = StreamArbiter("X", CFG)
    arb.on_batch(1, 1, rows(1, seen_to), 0.0)
    if heartbeat:
        arb.on_heartbeat(1, heartbeat, 0.0)
        arb.on_timer(1.0)  # the tail hole: asked for, no answer yet
    arb.on_batch(2, 101, rows(101, 105), 2.0)
    arb.on_timer(2.01)
    return arb


# name, receiver, the reply (from, settled_to, carried, void, unknown), the effects, stats
CASES: list[tuple[str, Any, tuple[Any, ...], list[tuple[str, int, int]], dict[str, int]]] = [
    ("unknown-range-counted-not-skipped", lambda: crash_restart(10),
     (11, 100, [], [], [r(11, 100)]),
     [("unknown", 11, 100), ("delivered", 101, 105)], {"unknown": 90, "lost": 0, "skipped": 0}),
    ("heartbeat-proves-ticks-were-published", lambda: crash_restart(10, heartbeat=16),
     (11, 100, [], [], [r(11, 100)]),
     [("lost", 11, 15), ("unknown", 16, 100), ("delivered", 101, 105)],
     {"unknown": 85, "lost": 5, "skipped": 0}),
    ("checkpointed-part-delivered", lambda: crash_restart(10),
     (11, 100, [(11, 20)], [], [r(21, 100)]),
     [("delivered", 11, 20), ("unknown", 21, 100), ("delivered", 101, 105)],
     {"unknown": 80, "lost": 0}),
    ("void-from-an-older-service-still-skipped", lambda: crash_restart(10),
     (11, 100, [], [r(11, 100)], []),
     [("skipped", 11, 100), ("delivered", 101, 105)], {"skipped": 90, "unknown": 0}),
    ("old-service-neither-void-nor-unknown-is-lost", lambda: crash_restart(10),
     (11, 100, [], [], []),
     [("lost", 11, 100), ("delivered", 101, 105)], {"lost": 90, "unknown": 0}),
]


@pytest.mark.parametrize("make, reply, effects, stats",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_an_unknown_range_is_reported_never_skipped(make: Any, reply: tuple[Any, ...],
                                                     effects: list[tuple[str, int, int]],
                                                     stats: dict[str, int]) -> None:
    arb: StreamArbiter = make()
    lo, settled, carried, void, unknown = reply
    got = arb.on_fill(lo, settled, tuple((1, a, rows(a, b)) for a, b in carried),
                      tuple(void), 2.02, tuple(unknown))
    assert outcome(got) == effects
    assert {k: getattr(arb.stats, k) for k in stats} == stats
    assert arb.state is StreamState.LIVE and arb.next_seq == 106


def test_two_restarts_inside_one_hole_each_range_by_its_own_session() -> None:
    """Session 1 announced up to 15 and reserved to 100; session 2 published 101..150 (the
    receiver got 101 and a heartbeat announcing 151) and reserved to 300; session 3 starts at
    301. What the receiver knew of session 2 says nothing about session 1's range."""
    arb = StreamArbiter("X", CFG)
    arb.on_batch(1, 1, rows(1, 10), 0.0)
    arb.on_heartbeat(1, 16, 0.0)
    arb.on_batch(2, 101, rows(101, 101), 0.1)
    arb.on_heartbeat(2, 151, 0.2)
    arb.on_batch(3, 301, rows(301, 301), 0.3)
    arb.on_timer(0.31)
    got = arb.on_fill(11, 300, ((2, 102, rows(102, 120)),), (), 0.32, (r(11, 100), r(121, 300)))
    assert outcome(got) == [("lost", 11, 15), ("unknown", 16, 100), ("delivered", 101, 120),
                            ("lost", 121, 150), ("unknown", 151, 300), ("delivered", 301, 301)]
    assert (arb.stats.lost, arb.stats.unknown) == (5 + 30, 85 + 150)


def test_a_reset_forgets_what_older_sessions_announced() -> None:
    arb = StreamArbiter("X", CFG)
    arb.on_batch(1, 1, rows(1, 50), 0.0)
    arb.on_batch(2, 5, rows(5, 5), 0.1)  # a newer session going backwards: a reset
    assert arb.restart_ends == [] and arb.next_seq == 6


def test_a_stream_absent_from_the_snapshot_starts_at_its_lowest_queued_sequence() -> None:
    arb = StreamArbiter("X", CFG, await_snapshot=True)
    arb.on_batch(1, 20, rows(20, 21), 0.0)
    arb.on_batch(1, 10, rows(10, 12), 0.0)
    got = arb.on_snapshot(None, 0.1)
    # From 10 (nothing below it is asked for); the hole 13..19 between queued batches is a gap.
    assert outcome(got) == [("delivered", 10, 12)]
    assert arb.state is StreamState.GAP_WAIT and arb.next_seq == 13
    assert outcome(arb.on_batch(1, 13, rows(13, 19), 0.101)) == [("delivered", 13, 19),
                                                                  ("delivered", 20, 21)]


def test_a_stream_absent_from_the_snapshot_with_nothing_queued_starts_with_what_follows(
) -> None:
    arb = StreamArbiter("X", CFG, await_snapshot=True)
    arb.on_heartbeat(1, 50, 0.0)  # while waiting: not a start
    assert arb.on_snapshot(None, 0.1) == [] and arb.next_seq == 0
    arb.on_heartbeat(1, 60, 0.2)  # the first after the reply: the stream starts at 60
    assert arb.state is StreamState.LIVE and arb.next_seq == 60
    assert outcome(arb.on_batch(1, 60, rows(60, 61), 0.3)) == [("delivered", 60, 61)]
