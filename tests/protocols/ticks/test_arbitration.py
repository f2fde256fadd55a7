"""Table-driven tests of the per-stream arbiter: every transition, every (state, event) pair of
the table, every rule, and a property.

Each case is a script of inputs; the expectations are what the consumer got (sequence numbers
in order), the effects that ask the outside world for something (fills, losses, skips, resets),
and the final state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import IllegalTransition, RemoteProtocolError
from protocols.machines import HISTORY_SIZE, Kind
from protocols.ticks.arbitration import (
    IGNORED,
    MACHINE,
    TRANSITIONS,
    ArbiterConfig,
    Deliver,
    DeliverSnapshot,
    Event,
    Lost,
    RequestFill,
    Reset,
    Skipped,
    StreamArbiter,
    StreamState,
)
from protocols.ticks.messages import Row, SeqRange, SnapshotEntry

CFG = ArbiterConfig(grace_s=0.003, fill_timeout_s=0.25, retry_s=0.01, give_up_s=3.0,
                    max_pending=50, max_fill=1000)
S = StreamState


def row(seq: int) -> Row:
    return (1.0 + seq, 1.0 + seq + 0.5, 0.0, 1.0, seq, seq)


def rows(a: int, b: int) -> tuple[Row, ...]:
    return tuple(row(s) for s in range(a, b + 1))


# Script steps: each is a tuple whose first item names the input.
def batch(a: int, b: int, now: float = 0.0, session: int = 1) -> tuple[Any, ...]:
    return ("batch", session, a, b, now)


def hb(next_seq: int, now: float = 0.0, session: int = 1) -> tuple[Any, ...]:
    return ("hb", session, next_seq, now)


def timer(now: float) -> tuple[Any, ...]:
    return ("timer", now)


def fill(lo: int, settled: int, have: list[tuple[int, int]],
         void: list[tuple[int, int]] | tuple[()] = (), now: float = 0.0) -> tuple[Any, ...]:
    return ("fill", lo, settled, have, list(void), now)


def snap(seq: int | None, now: float = 0.0, session: int = 1) -> tuple[Any, ...]:
    return ("snap", session, seq, now)


def rewind(seq: int, now: float = 0.0) -> tuple[Any, ...]:
    return ("rewind", seq, now)


@dataclass
class Run:
    arb: StreamArbiter
    delivered: list[int] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)
    fills: list[tuple[int, int]] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)
    resets: list[tuple[int, int]] = field(default_factory=list)


def play(steps: list[tuple[Any, ...]], await_snapshot: bool = False,
         cfg: ArbiterConfig = CFG, arb: StreamArbiter | None = None) -> Run:
    """Feed ``steps`` to a new arbiter (or to ``arb``, to go on with one)."""
    run = Run(arb or StreamArbiter("EURUSD", cfg, await_snapshot=await_snapshot))
    arb = run.arb
    for step in steps:
        kind, *args = step
        if kind == "batch":
            session, a, b, now = args
            effects = arb.on_batch(session, a, rows(a, b), now)
        elif kind == "hb":
            session, nxt, now = args
            effects = arb.on_heartbeat(session, nxt, now)
        elif kind == "timer":
            effects = arb.on_timer(args[0])
        elif kind == "fill":
            lo, settled, have, void, now = args
            effects = arb.on_fill(lo, settled, tuple((1, a, rows(a, b)) for a, b in have),
                                  tuple(SeqRange(a, b) for a, b in void), now)
        elif kind == "snap":
            session, seq, now = args
            entry = None if seq is None else SnapshotEntry("EURUSD", session, seq, row(seq))
            effects = arb.on_snapshot(entry, now)
        elif kind == "rewind":
            effects = arb.rewind(args[0], args[1])
        else:  # pragma: no cover
            raise ValueError(kind)
        for e in effects:
            match e:
                case Deliver(_, session, first, rs):
                    assert rs == rows(first, first + len(rs) - 1), "rows out of place"
                    run.delivered.extend(range(first, first + len(rs)))
                    run.sessions.extend([session] * len(rs))
                case DeliverSnapshot(entry):
                    run.snapshots.append(entry.seq)
                case RequestFill(_, lo, hi):
                    run.fills.append((lo, hi))
                case Lost(_, lo, hi):
                    run.lost.append((lo, hi))
                case Skipped(_, lo, hi):
                    run.skipped.append((lo, hi))
                case Reset(_, _old, new, seq):
                    run.resets.append((new, seq))
    return run


def seqs(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


# name, steps, expected delivered, fills, lost, skipped, final state
CASES: list[tuple[str, list[tuple[Any, ...]], list[int], list[tuple[int, int]],
                  list[tuple[int, int]], list[tuple[int, int]], StreamState]] = [
    ("in_order", [batch(1, 5), batch(6, 10)], seqs(1, 10), [], [], [], S.LIVE),
    ("join_mid_stream", [batch(100, 104), batch(105, 105)], seqs(100, 105), [], [], [], S.LIVE),
    ("duplicate_dropped", [batch(1, 5), batch(1, 5), batch(6, 7), batch(6, 7)], seqs(1, 7),
     [], [], [], S.LIVE),
    ("overlap_delivers_tail", [batch(1, 5), batch(3, 8)], seqs(1, 8), [], [], [], S.LIVE),
    ("old_batch_ignored", [batch(1, 10), batch(2, 3)], seqs(1, 10), [], [], [], S.LIVE),
    ("gap_filled_by_other_path", [batch(1, 5), batch(11, 15, 0.001), batch(6, 10, 0.002)],
     seqs(1, 15), [], [], [], S.LIVE),
    ("gap_filled_in_pieces", [batch(1, 2), batch(9, 9), batch(5, 6), batch(3, 4),
                              batch(7, 8)], seqs(1, 9), [], [], [], S.LIVE),
    ("grace_expires_then_recovery", [batch(1, 5), batch(11, 15), timer(0.002), timer(0.003),
                                     fill(6, 15, [(6, 10)], now=0.004)],
     seqs(1, 15), [(6, 15)], [], [], S.LIVE),
    ("other_path_wins_during_recovery", [batch(1, 5), batch(11, 15), timer(0.003),
                                         batch(6, 10, 0.004), fill(6, 15, [(6, 10)], now=0.005)],
     seqs(1, 15), [(6, 15)], [], [], S.LIVE),
    ("reply_settles_missing_as_lost", [batch(1, 5), batch(11, 15), timer(0.003),
                                       fill(6, 15, [(8, 10)], now=0.004)],
     [*seqs(1, 5), *seqs(8, 15)], [(6, 15)], [(6, 7)], [], S.LIVE),
    ("reply_void_is_skipped", [batch(1, 5), batch(11, 15), timer(0.003),
                               fill(6, 15, [], [(6, 10)], now=0.004)],
     [*seqs(1, 5), *seqs(11, 15)], [(6, 15)], [], [(6, 10)], S.LIVE),
    ("void_and_lost_mixed", [batch(1, 5), batch(21, 21), timer(0.003),
                             fill(6, 21, [(6, 8)], [(12, 15)], now=0.004)],
     [*seqs(1, 8), 21], [(6, 21)], [(9, 11), (16, 20)], [(12, 15)], S.LIVE),
    ("reply_partly_settled_asks_again", [batch(1, 5), batch(11, 15), timer(0.003),
                                         fill(6, 7, [(6, 7)], now=0.004), timer(0.0141),
                                         fill(8, 10, [(8, 10)], now=0.015)],
     seqs(1, 15), [(6, 15), (8, 15)], [], [], S.LIVE),
    ("reply_nothing_settled_stays", [batch(1, 5), batch(11, 15), timer(0.003),
                                     fill(6, 5, [], now=0.004)],
     seqs(1, 5), [(6, 15)], [], [], S.RECOVERING),
    ("no_reply_asks_again", [batch(1, 5), batch(11, 15), timer(0.003), timer(0.1),
                             timer(0.254)],
     seqs(1, 5), [(6, 15), (6, 15)], [], [], S.RECOVERING),
    ("give_up_declares_lost", [batch(1, 5), batch(11, 15), timer(0.003), timer(0.253),
                               timer(3.1)],
     [*seqs(1, 5), *seqs(11, 15)], [(6, 15), (6, 15)], [(6, 10)], [], S.LIVE),
    ("late_reply_in_live_ignored", [batch(1, 5), batch(11, 15), timer(0.003),
                                    batch(6, 10, 0.004), fill(6, 15, [(6, 15)], now=0.005)],
     seqs(1, 15), [(6, 15)], [], [], S.LIVE),
    ("heartbeat_reveals_lost_tail", [batch(1, 5), hb(9, 0.1), timer(0.2),
                                     fill(6, 8, [(6, 8)], now=0.21)],
     seqs(1, 8), [(6, 8)], [], [], S.LIVE),
    ("heartbeat_in_step_is_quiet", [batch(1, 5), hb(6, 0.1), timer(0.5)], seqs(1, 5), [], [],
     [], S.LIVE),
    ("heartbeat_sets_join_point", [hb(7, 0.0), batch(7, 8)], seqs(7, 8), [], [], [], S.LIVE),
    ("heartbeat_join_then_gap", [hb(7, 0.0), batch(9, 9), batch(7, 8)], seqs(7, 9), [], [], [],
     S.LIVE),
    ("stale_session_dropped", [batch(1, 5, session=2), batch(6, 9, session=1),
                               batch(6, 7, session=2)], seqs(1, 7), [], [], [], S.LIVE),
    ("restart_continues_sequence", [batch(1, 5, session=1), batch(6, 9, session=2)],
     seqs(1, 9), [], [], [], S.LIVE),
    ("restart_above_reservation_is_a_gap", [batch(1, 5, session=1),
                                            batch(101, 102, 0.0, session=2), timer(0.003),
                                            fill(6, 100, [], [(3, 100)], now=0.004)],
     [*seqs(1, 5), 101, 102], [(6, 102)], [], [(6, 100)], S.LIVE),
    ("pending_overflow_refetched", [batch(1, 1), batch(3, 40), batch(41, 80), timer(0.003),
                                    fill(2, 80, [(2, 80)], now=0.004)],
     seqs(1, 80), [(2, 80)], [], [], S.LIVE),
    ("rewind_refetches", [batch(1, 10), rewind(6, 0.0), timer(0.003),
                          fill(6, 10, [(6, 10)], now=0.004)],
     [*seqs(1, 10), *seqs(6, 10)], [(6, 10)], [], [], S.LIVE),
    ("rewind_while_gap_waiting", [batch(1, 5), batch(9, 10), batch(6, 7, 0.001),
                                  rewind(6, 0.001), timer(0.004),
                                  fill(6, 10, [(6, 10)], now=0.005)],
     [*seqs(1, 7), *seqs(6, 10)], [(6, 10)], [], [], S.LIVE),
    ("rewind_while_recovering", [batch(1, 5), batch(11, 15), timer(0.003),
                                 fill(6, 7, [(6, 7)], now=0.004), rewind(6, 0.004),
                                 timer(0.02), fill(6, 10, [(6, 10)], now=0.021)],
     [*seqs(1, 7), *seqs(6, 15)], [(6, 15), (6, 15)], [], [], S.LIVE),
    ("rewind_ahead_is_ignored", [batch(1, 10), rewind(11, 0.0)], seqs(1, 10), [], [], [],
     S.LIVE),
]


@pytest.mark.parametrize(("steps", "delivered", "fills", "lost", "skipped", "state"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_arbiter_script(steps: list[tuple[Any, ...]], delivered: list[int],
                        fills: list[tuple[int, int]], lost: list[tuple[int, int]],
                        skipped: list[tuple[int, int]], state: StreamState) -> None:
    run = play(steps)
    assert run.delivered == delivered
    assert run.fills == fills
    assert run.lost == lost
    assert run.skipped == skipped
    assert run.arb.state is state


SNAPSHOT_CASES = [
    # name, steps, snapshot ticks, delivered, state
    ("snapshot_then_queued_live", [batch(10, 12), snap(11)], [11], [12], S.LIVE),
    ("snapshot_ahead_of_queue", [batch(10, 12), snap(20), batch(21, 21)], [20], [21], S.LIVE),
    ("snapshot_behind_queue_opens_gap", [batch(15, 16), snap(11)], [11], [], S.GAP_WAIT),
    ("no_snapshot_starts_from_queue", [batch(10, 12), batch(13, 13), snap(None)], [],
     seqs(10, 13), S.LIVE),
    ("no_snapshot_no_data", [snap(None), batch(5, 6)], [], [5, 6], S.LIVE),
    ("snapshot_only", [snap(42), batch(43, 44)], [42], [43, 44], S.LIVE),
    ("second_snapshot_ignored", [snap(42), snap(50), batch(43, 43)], [42], [43], S.LIVE),
    ("live_reset_before_snapshot", [batch(10, 12, session=1), batch(3, 4, session=2)], [],
     [3, 4], S.LIVE),
]


@pytest.mark.parametrize(("steps", "snaps", "delivered", "state"),
                         [c[1:] for c in SNAPSHOT_CASES], ids=[c[0] for c in SNAPSHOT_CASES])
def test_late_joiner(steps: list[tuple[Any, ...]], snaps: list[int], delivered: list[int],
                     state: StreamState) -> None:
    run = play(steps, await_snapshot=True)
    assert run.snapshots == snaps
    assert run.delivered == delivered
    assert run.arb.state is state


def test_queued_until_snapshot() -> None:
    run = play([batch(10, 12), batch(13, 14)], await_snapshot=True)
    assert run.delivered == []
    assert run.arb.state is S.AWAIT_SNAPSHOT


def test_reset_when_sequence_goes_back_under_new_session() -> None:
    run = play([batch(1, 50, session=1), batch(1, 3, session=2), batch(4, 4, session=2)])
    assert run.resets == [(2, 1)]
    assert run.delivered == [*seqs(1, 50), *seqs(1, 4)]
    assert run.sessions[-4:] == [2, 2, 2, 2]
    assert run.arb.stats.resets == 1


def test_reset_cancels_recovery() -> None:
    run = play([batch(1, 5, session=1), batch(9, 9, session=1), timer(0.003),
                batch(1, 2, 0.004, session=2)])
    assert run.arb.state is S.LIVE
    assert run.arb.deadline() is None
    assert run.delivered == [*seqs(1, 5), 1, 2]


def test_late_data_of_a_dead_session_is_left_to_recovery() -> None:
    run = play([batch(1, 5, session=1), batch(8, 9, session=2), batch(6, 7, session=1),
                timer(0.003), fill(6, 7, [(6, 7)], now=0.004)])
    # 6..7 of session 1 arrive after session 2 began: dropped as stale, fetched from the store.
    assert run.arb.stats.stale == 1
    assert run.fills == [(6, 9)]
    assert run.delivered == seqs(1, 9)
    assert run.sessions == [1] * 7 + [2, 2]


def test_stats_count_gap_outcomes() -> None:
    run = play([batch(1, 5), batch(11, 15), batch(6, 10),  # by path
                batch(21, 25, 0.01), timer(0.02), fill(16, 25, [(16, 20)], now=0.03),  # recovery
                batch(31, 35, 0.04), timer(0.05), fill(26, 35, [(26, 28)], now=0.06)])  # lost
    s = run.arb.stats
    assert (s.gaps, s.filled_by_path, s.filled_by_recovery, s.unrecoverable_gaps) == (3, 1, 1, 1)
    assert s.lost == 2
    assert s.fill_requests == 2


def test_pending_is_bounded_and_counted() -> None:
    run = play([batch(1, 1), batch(3, 100)])
    assert len(run.arb.pending) == CFG.max_pending
    assert run.arb.stats.pending_overflow == 98 - CFG.max_pending


def test_wants_filters_duplicates_by_header() -> None:
    arb = StreamArbiter("X", CFG)
    arb.on_batch(1, 1, rows(1, 10), 0.0)
    assert not arb.wants(1, 1, 10)
    assert not arb.wants(1, 5, 6)
    assert arb.wants(1, 5, 7)
    assert arb.wants(0, 1, 1)  # older session: on_batch counts it stale
    assert arb.wants(2, 1, 1)  # newer session: a possible reset


@pytest.mark.parametrize("state_steps", [
    [batch(1, 5), batch(9, 10), batch(6, 7, 0.001)],  # GAP_WAIT, hole at 8
    [batch(1, 5), batch(11, 15), timer(0.003), fill(6, 7, [(6, 7)], now=0.004)],  # RECOVERING
], ids=["gap_wait", "recovering"])
def test_rewind_in_a_gap_state_moves_the_hole_back(state_steps: list[tuple[Any, ...]]) -> None:
    run = play(state_steps)
    assert run.arb.state in (S.GAP_WAIT, S.RECOVERING)
    assert run.arb.next_seq == 8
    run.arb.rewind(6, 0.01)  # the consumer could not take 6 and 7
    assert run.arb.next_seq == 6


def test_fill_request_is_capped() -> None:
    cfg = ArbiterConfig(grace_s=0.001, max_fill=10)
    run = play([batch(1, 1), batch(100, 100), timer(0.002)], cfg=cfg)
    assert run.fills == [(2, 11)]


def test_deadline_follows_state() -> None:
    arb = StreamArbiter("X", CFG)
    arb.on_batch(1, 1, rows(1, 1), 0.0)
    assert arb.deadline() is None
    arb.on_batch(1, 5, rows(5, 5), 1.0)
    assert arb.deadline() == pytest.approx(1.0 + CFG.grace_s)
    arb.on_timer(1.0 + CFG.grace_s)
    assert arb.deadline() == pytest.approx(1.0 + CFG.grace_s + CFG.fill_timeout_s)


def test_illegal_transition_names_state_and_event() -> None:
    arb = StreamArbiter("X", CFG)
    with pytest.raises(IllegalTransition,
                       match="stream arbiter in state LIVE cannot take GRACE_EXPIRED") as info:
        arb._transition(Event.GRACE_EXPIRED)
    assert (info.value.state, info.value.event) == (S.LIVE, Event.GRACE_EXPIRED)
    assert arb.state is S.LIVE


PAIRS = [(s, e) for s in StreamState for e in Event]
# The no-ops, spelled out: a snapshot answer for a stream that is live already (from the start,
# or reset before the answer came), and a reply that settles part of a hole in its grace time.
NO_OPS = {(S.LIVE, Event.SNAPSHOT), (S.GAP_WAIT, Event.SNAPSHOT), (S.RECOVERING, Event.SNAPSHOT),
          (S.GAP_WAIT, Event.REPLY_PARTIAL)}


def test_every_pair_is_a_move_a_no_op_or_illegal() -> None:
    assert set(MACHINE.pairs(Kind.MOVE)) == {(s, e) for s, r in TRANSITIONS.items() for e in r}
    assert set(MACHINE.pairs(Kind.IGNORED)) == NO_OPS == {
        (s, e) for s, r in IGNORED.items() for e in r}
    assert MACHINE.pairs(Kind.FATAL) == []
    assert len(MACHINE.pairs(Kind.ILLEGAL)) == len(PAIRS) - len(NO_OPS) - sum(
        len(r) for r in TRANSITIONS.values())


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s.name}-{e.name}" for s, e in PAIRS])
def test_pair(state: StreamState, event: Event) -> None:
    arb = StreamArbiter("X", CFG)
    arb.state = state
    kind = MACHINE.kind(state, event)
    if kind is Kind.MOVE:
        assert arb._transition(event) is True
        assert arb.state is TRANSITIONS[state][event]
        assert list(arb.history) == [(state, event, TRANSITIONS[state][event])]
        return
    if kind is Kind.IGNORED:
        assert arb._transition(event) is False
    else:
        with pytest.raises(IllegalTransition) as info:
            arb._transition(event)
        assert (info.value.machine, info.value.state, info.value.event) == (
            "stream arbiter", state, event)
        assert f"state {state.name} cannot take {event.name}" in str(info.value)
    assert (arb.state, list(arb.history)) == (state, [])


@pytest.mark.parametrize(("steps", "state"), [
    ([batch(1, 5), snap(3)], S.LIVE),
    ([batch(1, 5), batch(9, 9), snap(3)], S.GAP_WAIT),
    ([batch(1, 5), batch(9, 9), timer(0.003), snap(3)], S.RECOVERING),
    ([batch(1, 5), batch(9, 9), fill(6, 6, [(6, 6)], now=0.001)], S.GAP_WAIT),
], ids=["snapshot-live", "snapshot-gap-wait", "snapshot-recovering", "partial-in-grace"])
def test_no_ops_through_the_inputs(steps: list[tuple[Any, ...]], state: StreamState) -> None:
    run = play(steps)
    assert run.arb.state is state
    assert run.snapshots == []
    moves = list(run.arb.history)
    assert all(e is not Event.SNAPSHOT for _a, e, _b in moves)
    assert (S.GAP_WAIT, Event.REPLY_PARTIAL, S.GAP_WAIT) not in moves


@pytest.mark.parametrize(("lo", "settled"), [(5, 3), (0, 0), (-1, 4), (10, 2)])
def test_inverted_reply_range_is_the_peers_fault(lo: int, settled: int) -> None:
    run = play([batch(1, 5), batch(9, 9), timer(0.003)])
    with pytest.raises(RemoteProtocolError, match=f"settles {lo} .. {settled}"):
        run.arb.on_fill(lo, settled, (), (), 0.004)
    assert (run.arb.state, run.arb.next_seq) == (S.RECOVERING, 6)


def test_reply_settles_only_the_range_it_speaks_for() -> None:
    """After a rewind, a reply for a later range must not declare the rewound ticks lost: it
    says nothing about the numbers below its ``from``."""
    run = play([batch(1, 10), batch(20, 20), timer(0.003)])
    assert run.fills == [(11, 20)]
    run.arb.rewind(5, 0.004)  # the consumer could not take 5..10
    run = play([fill(11, 19, [(11, 19)], now=0.005), timer(0.1)], arb=run.arb)
    assert run.lost == [] and run.arb.state is S.RECOVERING
    assert run.fills == [(5, 20)]  # asked again from the rewound sequence
    run = play([fill(5, 20, [(5, 10)], now=0.11)], arb=run.arb)
    assert run.delivered == list(range(5, 21)) and run.lost == []
    assert run.arb.state is S.LIVE


def test_history_is_bounded() -> None:
    arb = StreamArbiter("X", CFG)
    for i in range(HISTORY_SIZE):  # open and close a gap: two moves a round
        base = 10 * i + 1
        arb.on_batch(1, base, rows(base, base + 4), 0.0)
        arb.on_batch(1, base + 6, rows(base + 6, base + 9), 0.0)
        arb.on_batch(1, base + 5, rows(base + 5, base + 5), 0.0)
        assert arb.state is S.LIVE
    assert len(arb.history) == HISTORY_SIZE
    assert arb.history[-1] == (S.GAP_WAIT, Event.HOLE_FILLED, S.LIVE)


def test_every_table_transition_is_exercised() -> None:
    seen: set[tuple[StreamState, Event]] = set()

    def moves(run: Run) -> None:
        assert len(run.arb.history) < HISTORY_SIZE  # nothing fell out of the record
        seen.update((a, e) for a, e, _b in run.arb.history)

    for case in CASES:
        moves(play(case[1]))
    for snapshot_case in SNAPSHOT_CASES:
        moves(play(snapshot_case[1], await_snapshot=True))
    moves(play([batch(1, 5, session=1), batch(9, 9, session=1), timer(0.003),
                batch(1, 2, 0.004, session=2)]))  # reset while recovering
    moves(play([batch(1, 50, session=1), batch(1, 3, session=2)]))  # reset while live
    moves(play([batch(1, 5, session=1), batch(9, 9, session=1),
                batch(1, 2, session=2)]))  # in grace
    table = {(s, e) for s, row_ in TRANSITIONS.items() for e in row_}
    assert table - seen == set()


@settings(max_examples=150, deadline=None)
@given(n_batches=st.integers(1, 40), data=st.data())
def test_two_lossy_paths_and_recovery_deliver_everything_once_in_order(
        n_batches: int, data: st.DataObject) -> None:
    """Whatever each path loses, duplicates or reorders, the consumer sees 1..N exactly once."""
    sizes = data.draw(st.lists(st.integers(1, 5), min_size=n_batches, max_size=n_batches))
    batches, first = [], 1
    for n in sizes:
        batches.append((first, first + n - 1))
        first += n
    last = first - 1
    path_a = [b for b in batches if not data.draw(st.booleans(), label="drop on A")]
    path_b = [b for b in batches if data.draw(st.integers(0, 3), label="drop on B") != 0]
    arrivals = data.draw(st.permutations(path_a + path_b + path_b[:3]))
    arb = StreamArbiter("X", ArbiterConfig(grace_s=0.001, retry_s=0.001, max_pending=1000))
    arb.on_heartbeat(1, 1, 0.0)
    delivered: list[int] = []
    now = 0.0

    def apply(effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Deliver):
                delivered.extend(range(e.first_seq, e.first_seq + len(e.rows)))
            elif isinstance(e, RequestFill):
                # The recovery service holds every tick (the checkpoint caught up).
                hi = min(e.to_seq, last)
                apply(arb.on_fill(e.from_seq, hi, ((1, e.from_seq, rows(e.from_seq, hi)),),
                                  (), now))
            elif isinstance(e, Lost):  # pragma: no cover - would fail the test below
                raise AssertionError(f"lost {e}")

    for a, b in arrivals:
        now += 0.0005
        apply(arb.on_batch(1, a, rows(a, b), now))
        apply(arb.on_timer(now))
    now += 1.0
    apply(arb.on_heartbeat(1, last + 1, now))
    for _ in range(5):
        now += 0.01
        apply(arb.on_timer(now))
    assert delivered == list(range(1, last + 1))
    assert arb.state is StreamState.LIVE
