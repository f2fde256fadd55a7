"""Binary Star with fencing: scenarios through the public inputs, every transition covered,
every (state, event) pair of the table checked (move, no-op, fatal or illegal), and a property:
however heartbeats are lost and clients vote, at most one node can write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import IllegalTransition, PeerConflict, RemoteProtocolError
from protocols.machines import HISTORY_SIZE, Kind
from protocols.orders.binary_star import (
    FATAL,
    IGNORED,
    MACHINE,
    TRANSITIONS,
    AcquireEpoch,
    BecameActive,
    BinaryStar,
    Event,
    PairConfig,
    Role,
    State,
    SteppedDown,
)

CFG = PairConfig(heartbeat_s=0.02, peer_timeout_s=0.06, cold_start_s=1.0)
S, E = State, Event


def node(role: Role, state: State | None = None, epoch: int = 0) -> BinaryStar:
    n = BinaryStar(role, CFG)
    if state is not None:
        n.state = state
    n.epoch = epoch
    return n


# Each step: ("peer", state, epoch, now) | ("req", now) | ("req_pending", now): a request
#            read while a peer heartbeat waits unread | ("epoch", acquired, epoch, now)
#            | ("fenced", epoch, now) | ("handover", now)
def play(n: BinaryStar, steps: list[tuple[Any, ...]]) -> tuple[list[Any], list[bool]]:
    effects: list[Any] = []
    served: list[bool] = []
    for kind, *a in steps:
        if kind == "peer":
            effects += n.on_peer(a[0], a[1], a[2])
        elif kind in ("req", "req_pending"):
            ok, eff = n.on_request(a[0], peer_pending=kind == "req_pending")
            served.append(ok)
            effects += eff
        elif kind == "epoch":
            effects += n.on_epoch_result(a[0], a[1], a[2])
        elif kind == "fenced":
            effects += n.on_fenced(a[0], a[1])
        elif kind == "handover":
            effects += n.on_handover(a[0])
    return effects, served


SCENARIOS: list[tuple[str, Role, list[tuple[Any, ...]], State, int, list[Any], list[bool]]] = [
    # name, role, steps, final state, final epoch, effects, served
    ("primary_meets_backup_goes_active", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 1, 0.001), ("req", 0.002)],
     S.ACTIVE, 1, [AcquireEpoch(0), BecameActive(1)], [True]),
    ("backup_sees_primary_taking_over", Role.BACKUP,
     [("peer", S.PRIMARY, 0, 0.0), ("peer", S.TAKING_OVER, 0, 0.02),
      ("peer", S.ACTIVE, 1, 0.04), ("req", 0.05)],
     S.PASSIVE, 1, [], [False]),
    ("backup_sees_active_at_once", Role.BACKUP, [("peer", S.ACTIVE, 0, 0.0)], S.PASSIVE, 0,
     [], []),
    ("backup_sees_newer_active", Role.BACKUP, [("peer", S.ACTIVE, 4, 0.0)], S.PASSIVE, 4, [],
     []),
    ("passive_client_vote_waits_for_expiry", Role.BACKUP,
     [("peer", S.ACTIVE, 1, 0.0), ("req", 0.05), ("req", 0.061), ("epoch", True, 2, 0.062),
      ("req", 0.063)],
     S.ACTIVE, 2, [AcquireEpoch(1), BecameActive(2)], [False, False, True]),
    # The passive itself was off the CPU: the peer's heartbeats wait unread behind the
    # request. Its silence is ours: no vote against it, until a request finds none waiting.
    ("late_passive_does_not_vote_a_live_peer_out", Role.BACKUP,
     [("peer", S.ACTIVE, 1, 0.0), ("req_pending", 0.2), ("peer", S.ACTIVE, 1, 0.201),
      ("req", 0.21)],
     S.PASSIVE, 1, [], [False, False]),
    ("peer_pending_on_the_active_changes_nothing", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 1, 0.001), ("req_pending", 0.5)],
     S.ACTIVE, 1, [AcquireEpoch(0), BecameActive(1)], [True]),
    ("dead_peer_is_voted_out_once_nothing_waits", Role.BACKUP,
     [("peer", S.ACTIVE, 1, 0.0), ("req_pending", 0.2), ("req", 0.3)],
     S.TAKING_OVER, 1, [AcquireEpoch(1)], [False, False]),
    ("takeover_loses_the_epoch_race", Role.BACKUP,
     [("peer", S.ACTIVE, 1, 0.0), ("req", 0.1), ("epoch", False, 3, 0.101)],
     S.PASSIVE, 3, [AcquireEpoch(1)], [False]),
    ("restarted_primary_yields_to_active_backup", Role.PRIMARY,
     [("peer", S.ACTIVE, 2, 0.0), ("req", 0.01)], S.PASSIVE, 2, [], [False]),
    ("primary_yields_to_peer_taking_over", Role.PRIMARY, [("peer", S.TAKING_OVER, 0, 0.0)],
     S.PASSIVE, 0, [], []),
    ("primary_with_passive_peer_takes_over", Role.PRIMARY,
     [("peer", S.PASSIVE, 3, 0.0), ("epoch", True, 4, 0.001)],
     S.ACTIVE, 4, [AcquireEpoch(3), BecameActive(4)], []),
    ("backup_with_passive_peer_takes_over", Role.BACKUP,
     [("peer", S.PASSIVE, 3, 0.0)], S.TAKING_OVER, 3, [AcquireEpoch(3)], []),
    ("passive_takes_over_from_restarted_primary", Role.BACKUP,
     [("peer", S.ACTIVE, 1, 0.0), ("peer", S.PRIMARY, 1, 0.5)],
     S.TAKING_OVER, 1, [AcquireEpoch(1)], []),
    ("passive_takes_over_from_restarted_backup", Role.PRIMARY,
     [("peer", S.ACTIVE, 1, 0.0), ("peer", S.BACKUP, 1, 0.5), ("epoch", True, 2, 0.51)],
     S.ACTIVE, 2, [AcquireEpoch(1), BecameActive(2)], []),
    ("lone_backup_cold_start", Role.BACKUP,
     [("req", 0.5), ("req", 1.0), ("epoch", True, 1, 1.001), ("req", 1.002)],
     S.ACTIVE, 1, [AcquireEpoch(0), BecameActive(1)], [False, False, True]),
    ("lone_primary_cold_start", Role.PRIMARY,
     [("req", 0.2), ("req", 1.5), ("epoch", True, 8, 1.6)],
     S.ACTIVE, 8, [AcquireEpoch(0), BecameActive(8)], [False, False]),
    ("dual_active_lower_epoch_steps_down", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 2, 0.0), ("peer", S.ACTIVE, 3, 1.0)],
     S.PASSIVE, 3, [AcquireEpoch(0), BecameActive(2), SteppedDown(E.PEER_ACTIVE_NEWER)], []),
    ("dual_active_higher_epoch_stays", Role.BACKUP,
     [("req", 1.0), ("epoch", True, 3, 1.0), ("peer", S.ACTIVE, 2, 1.1), ("req", 1.2)],
     S.ACTIVE, 3, [AcquireEpoch(0), BecameActive(3)], [False, True]),
    ("taking_over_sees_newer_active", Role.BACKUP,
     [("req", 1.0), ("peer", S.ACTIVE, 5, 1.01)], S.PASSIVE, 5, [AcquireEpoch(0)], [False]),
    ("fenced_active_steps_down", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 1, 0.0), ("fenced", 2, 0.5), ("req", 0.51)],
     S.PASSIVE, 2, [AcquireEpoch(0), BecameActive(1), SteppedDown(E.FENCED)], [False]),
    ("fenced_node_takes_over_after_holdoff", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 1, 0.0), ("fenced", 2, 0.5), ("req", 1.4),
      ("req", 1.5), ("epoch", True, 3, 1.5)],
     S.ACTIVE, 3, [AcquireEpoch(0), BecameActive(1), SteppedDown(E.FENCED), AcquireEpoch(2),
                   BecameActive(3)], [False, False]),
    ("operator_handover_then_primary_fails_back", Role.PRIMARY,
     [("peer", S.ACTIVE, 2, 0.0), ("peer", S.PASSIVE, 2, 0.02), ("epoch", True, 3, 0.03)],
     S.ACTIVE, 3, [AcquireEpoch(2), BecameActive(3)], []),
    ("backup_takes_over_when_the_primary_hands_over", Role.BACKUP,
     [("peer", S.ACTIVE, 2, 0.0), ("peer", S.PASSIVE, 2, 0.02)], S.TAKING_OVER, 2,
     [AcquireEpoch(2)], []),
    ("restarted_primary_does_not_fail_back_by_itself", Role.PRIMARY,
     [("peer", S.ACTIVE, 3, 0.0), ("peer", S.ACTIVE, 3, 0.02), ("req", 0.03)], S.PASSIVE, 3,
     [], [False]),
    ("lost_epoch_race_holds_off", Role.PRIMARY,
     [("req", 1.0), ("epoch", False, 5, 1.0), ("req", 1.1), ("req", 2.1)],
     S.TAKING_OVER, 5, [AcquireEpoch(0), AcquireEpoch(5)], [False, False, False]),
    ("outvoted_active_holds_off", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 1, 0.0), ("peer", S.ACTIVE, 2, 0.5),
      ("req", 0.7), ("req", 1.6)],
     S.TAKING_OVER, 2, [AcquireEpoch(0), BecameActive(1), SteppedDown(E.PEER_ACTIVE_NEWER),
                        AcquireEpoch(2)], [False, False]),
    ("late_epoch_answer_ignored", Role.BACKUP,
     [("peer", S.ACTIVE, 1, 0.0), ("epoch", True, 9, 0.01)], S.PASSIVE, 1, [], []),
    ("handover_on_passive_ignored", Role.BACKUP,
     [("peer", S.ACTIVE, 1, 0.0), ("handover", 0.01)], S.PASSIVE, 1, [], []),
    # A heartbeat the backup sent before it heard the handover still says BACKUP: within the
    # hold-off it is no reason to take the role straight back (it bounced handovers back).
    ("handed_over_active_ignores_a_stale_backup_heartbeat", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 1, 0.0), ("handover", 0.5),
      ("peer", S.BACKUP, 1, 0.51), ("peer", S.PRIMARY, 1, 0.52)],
     S.PASSIVE, 1, [AcquireEpoch(0), BecameActive(1), SteppedDown(E.HANDOVER)], []),
    ("after_the_holdoff_a_restarted_backup_counts_again", Role.PRIMARY,
     [("peer", S.BACKUP, 0, 0.0), ("epoch", True, 1, 0.0), ("handover", 0.5),
      ("peer", S.BACKUP, 1, 0.51), ("peer", S.BACKUP, 1, 1.6)],
     S.TAKING_OVER, 1, [AcquireEpoch(0), BecameActive(1), SteppedDown(E.HANDOVER),
                        AcquireEpoch(1)], []),
]


@pytest.mark.parametrize(("role", "steps", "state", "epoch", "effects", "served"),
                         [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_scenario(role: Role, steps: list[tuple[Any, ...]], state: State, epoch: int,
                  effects: list[Any], served: list[bool]) -> None:
    n = node(role)
    got_effects, got_served = play(n, steps)
    assert (n.state, n.epoch) == (state, epoch)
    assert got_effects == effects
    assert got_served == served


def test_handover_steps_down_the_active_and_holds_off() -> None:
    n = node(Role.BACKUP, S.ACTIVE, 2)
    assert n.on_handover(0.0) == [SteppedDown(E.HANDOVER)]
    assert n.state is S.PASSIVE and not n.serving
    assert n.on_request(0.5) == (False, [])  # peer silent, but within the hold-off
    assert n.on_peer(S.PASSIVE, 2, 0.6) == []  # the peer takes over, not us
    assert n.state is S.PASSIVE
    assert n.on_peer(S.PASSIVE, 2, 1.1) == [AcquireEpoch(2)]  # hold-off over: nobody took it


def test_handover_moves_the_active_role_to_the_peer() -> None:
    store_epoch = 1
    a, b = node(Role.PRIMARY, S.ACTIVE, 1), node(Role.BACKUP, S.PASSIVE, 1)
    a.on_handover(0.0)
    effects = b.on_peer(*a.heartbeat(), 0.02)
    assert effects == [AcquireEpoch(1)]
    store_epoch += 1
    assert b.on_epoch_result(True, store_epoch, 0.021) == [BecameActive(2)]
    assert a.on_peer(*b.heartbeat(), 0.04) == [] and not a.serving and b.serving


@pytest.mark.parametrize(("role", "peer"), [(Role.PRIMARY, S.PRIMARY), (Role.BACKUP, S.BACKUP)])
def test_two_nodes_with_one_role_is_a_configuration_error(role: Role, peer: State) -> None:
    with pytest.raises(PeerConflict, match="both nodes are configured as"):
        node(role).on_peer(peer, 0, 0.0)
    assert {(s, e) for s, e in FATAL} == {(S.PRIMARY, E.PEER_PRIMARY), (S.BACKUP, E.PEER_BACKUP)}


def test_every_transition_is_exercised() -> None:
    seen: set[tuple[State, Event]] = set()
    for _name, role, steps, *_ in SCENARIOS:
        n = node(role)
        play(n, steps)
        seen |= {(a, e) for a, e, _b in n.history}
    handover = node(Role.BACKUP, S.ACTIVE, 2)
    handover.on_handover(0.0)
    primary = node(Role.PRIMARY, epoch=3)  # knows epoch 3 from the store; peer active at 3
    primary.on_peer(S.ACTIVE, 3, 0.0)
    assert primary.state is S.PASSIVE
    for n in (handover, primary):
        seen |= {(a, e) for a, e, _b in n.history}
    table = {(s, e) for s, row in TRANSITIONS.items() for e in row}
    assert table - seen == set()


# --- the table, pair by pair -----------------------------------------------------------------

# The only illegal pairs: a store answer or a fencing refusal before the node ever asked the
# store for an epoch or wrote (PRIMARY and BACKUP are the states a node starts in).
ILLEGAL = {(s, e) for s in (S.PRIMARY, S.BACKUP)
           for e in (E.EPOCH_ACQUIRED, E.EPOCH_LOST, E.FENCED)}
PAIRS = [(s, e) for s in State for e in Event]


def test_every_pair_is_exactly_one_kind() -> None:
    kinds = {k: set(MACHINE.pairs(k)) for k in Kind}
    assert kinds[Kind.MOVE] == {(s, e) for s, row in TRANSITIONS.items() for e in row}
    assert kinds[Kind.IGNORED] == {(s, e) for s, row in IGNORED.items() for e in row}
    assert kinds[Kind.FATAL] == set(FATAL)
    assert kinds[Kind.ILLEGAL] == ILLEGAL
    assert sum(len(v) for v in kinds.values()) == len(PAIRS)


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s.name}-{e.name}" for s, e in PAIRS])
def test_pair(state: State, event: Event) -> None:
    """Fed straight to the machine: a move records itself, a no-op changes nothing, a fatal
    pair is a PeerConflict and an illegal one raises naming the state and the event."""
    n = node(Role.PRIMARY if state is not S.BACKUP else Role.BACKUP, state, epoch=2)
    kind = MACHINE.kind(state, event)
    if kind is Kind.MOVE:
        n._fire(event, 0.0)
        assert n.state is TRANSITIONS[state][event]
        assert list(n.history) == [(state, event, TRANSITIONS[state][event])]
        return
    if kind is Kind.IGNORED:
        assert n._fire(event, 0.0) == []
    elif kind is Kind.FATAL:
        with pytest.raises(PeerConflict, match=f"state {state.name} saw {event.name}"):
            n._fire(event, 0.0)
    else:
        with pytest.raises(IllegalTransition) as info:
            n._fire(event, 0.0)
        assert (info.value.machine, info.value.state, info.value.event) == (
            "binary star", state, event)
        assert str(info.value) == f"binary star in state {state.name} cannot take {event.name}"
    assert (n.state, n.epoch, list(n.history)) == (state, 2, [])


PEER_SEES = [(s, peer, epoch) for s in State for peer in State for epoch in (1, 2, 3)]


@pytest.mark.parametrize(("state", "peer", "peer_epoch"), PEER_SEES,
                         ids=[f"{s.name}-sees-{p.name}-{e}" for s, p, e in PEER_SEES])
def test_any_heartbeat_is_legal_in_any_state(state: State, peer: State, peer_epoch: int) -> None:
    """A peer may send anything at any time: only two primaries or two backups raise."""
    n = node(Role.PRIMARY if state is not S.BACKUP else Role.BACKUP, state, epoch=2)
    if (state, peer) in ((S.PRIMARY, S.PRIMARY), (S.BACKUP, S.BACKUP)):
        with pytest.raises(PeerConflict):
            n.on_peer(peer, peer_epoch, 0.0)
        return
    n.on_peer(peer, peer_epoch, 0.0)
    assert n.epoch == max(2, peer_epoch)


@pytest.mark.parametrize("state", list(State), ids=[s.name for s in State])
def test_requests_and_handover_are_legal_in_any_state(state: State) -> None:
    for peer_pending in (False, True):
        n = node(Role.BACKUP, state, epoch=2)
        n.on_request(5.0, peer_pending=peer_pending)  # the peer never heard: expired
        n.on_handover(5.0)


@pytest.mark.parametrize(("state", "call"), [
    (state, call) for state in (S.PRIMARY, S.BACKUP) for call in ("won", "lost", "fenced")])
def test_store_answers_before_asking_are_bugs(state: State, call: str) -> None:
    """Through the public inputs: nothing changes, and the error names state and event."""
    n = node(Role.PRIMARY if state is S.PRIMARY else Role.BACKUP, state, epoch=2)
    event = {"won": E.EPOCH_ACQUIRED, "lost": E.EPOCH_LOST, "fenced": E.FENCED}[call]
    with pytest.raises(IllegalTransition, match=f"state {state.name} cannot take {event.name}"):
        if call == "fenced":
            n.on_fenced(7, 0.0)
        else:
            n.on_epoch_result(call == "won", 7, 0.0)
    assert (n.state, n.epoch, n.holdoff_until) == (state, 2, 0.0)


@pytest.mark.parametrize(("state", "call"), [
    (state, call) for state in (S.ACTIVE, S.PASSIVE) for call in ("won", "lost")
] + [(S.PASSIVE, "fenced"), (S.TAKING_OVER, "fenced")])
def test_late_store_answers_are_no_ops(state: State, call: str) -> None:
    n = node(Role.PRIMARY, state, epoch=2)
    if call == "fenced":
        assert n.on_fenced(7, 0.0) == []
        assert n.epoch == 7  # the store's epoch is known from now on
    else:
        assert n.on_epoch_result(call == "won", 7, 0.0) == []
        assert n.epoch == 2  # an answer to an old question: nothing learnt
    assert (n.state, n.holdoff_until, list(n.history)) == (state, 0.0, [])


@pytest.mark.parametrize(("peer_state", "epoch"), [
    ("active", 1), (None, 1), (S.ACTIVE, -1), (S.ACTIVE, 2**63), (S.ACTIVE, True),
    (S.ACTIVE, 1.0), (S.ACTIVE, "1"), (S.PASSIVE, None)])
def test_bad_heartbeat_values_are_the_peers_fault(peer_state: Any, epoch: Any) -> None:
    n = node(Role.BACKUP)
    with pytest.raises(RemoteProtocolError, match="peer heartbeat"):
        n.on_peer(peer_state, epoch, 0.0)
    assert (n.state, n.epoch, n.peer_state) == (S.BACKUP, 0, None)  # not a sign of life
    n.on_peer(S.ACTIVE, 2**63 - 1, 0.0)  # the largest epoch the store can hold is fine
    assert (n.state, n.epoch) == (S.PASSIVE, 2**63 - 1)


def test_history_is_bounded() -> None:
    n = node(Role.PRIMARY, S.ACTIVE, 1)
    for i in range(HISTORY_SIZE):  # step down and take over again: three moves a round
        n.on_fenced(n.epoch + 1, 10.0 * i)
        n.on_request(10.0 * i + 5.0)
        n.on_epoch_result(True, n.epoch + 1, 10.0 * i + 5.0)
        assert n.serving
    assert len(n.history) == HISTORY_SIZE
    assert n.history[-1] == (S.TAKING_OVER, E.EPOCH_ACQUIRED, S.ACTIVE)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        PairConfig(heartbeat_s=0.1, peer_timeout_s=0.05)


# --- the split-brain property ----------------------------------------------------------------


@dataclass
class Store:
    """The fencing register: compare-and-swap on the epoch, as the Redis script does."""

    epoch: int = 0
    writes: list[tuple[str, int]] = field(default_factory=list)

    def acquire(self, expected: int) -> tuple[bool, int]:
        if self.epoch == expected:
            self.epoch += 1
            return True, self.epoch
        return False, self.epoch

    def write(self, who: str, epoch: int) -> bool:
        if epoch != self.epoch:
            return False
        self.writes.append((who, epoch))
        return True


ACTIONS = st.sampled_from(["hb_ab", "hb_ba", "req_a", "req_b", "tick", "cut", "heal",
                           "write_a", "write_b"])


@settings(max_examples=300, deadline=None)
@given(actions=st.lists(ACTIONS, min_size=1, max_size=120))
def test_at_most_one_node_can_write_whatever_the_network_does(actions: list[str]) -> None:
    store = Store()
    nodes = {"a": BinaryStar(Role.PRIMARY, CFG), "b": BinaryStar(Role.BACKUP, CFG)}
    link_up, now = True, 0.0

    def run(name: str, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, AcquireEpoch):
                ok, epoch = store.acquire(e.expected)
                run(name, nodes[name].on_epoch_result(ok, epoch, now))

    for action in actions:
        if action == "tick":
            now += 0.03
        elif action in ("cut", "heal"):
            link_up = action == "heal"
        elif action.startswith("hb_") and link_up:
            src, dst = nodes[action[3]], action[4]
            state, epoch = src.heartbeat()
            run(dst, nodes[dst].on_peer(state, epoch, now))
        elif action.startswith("req_"):
            name = action[4]
            _ok, eff = nodes[name].on_request(now)
            run(name, eff)
        elif action.startswith("write_"):
            name = action[6]
            n = nodes[name]
            if n.serving and not store.write(name, n.epoch):
                run(name, n.on_fenced(store.epoch, now))
        holders = [k for k, n in nodes.items() if n.serving and n.epoch == store.epoch]
        assert len(holders) <= 1, "two nodes hold the fencing epoch"
    # Every write that landed was made under the epoch current at the time: epochs only grow.
    epochs = [e for _w, e in store.writes]
    assert epochs == sorted(epochs)


def test_after_the_partition_heals_exactly_one_stays_active() -> None:
    store = Store()
    a, b = BinaryStar(Role.PRIMARY, CFG), BinaryStar(Role.BACKUP, CFG)

    def take(n: BinaryStar, effects: list[Any], now: float) -> None:
        for e in effects:
            if isinstance(e, AcquireEpoch):
                ok, epoch = store.acquire(e.expected)
                take(n, n.on_epoch_result(ok, epoch, now), now)

    take(a, a.on_peer(*b.heartbeat(), 0.0), 0.0)
    take(b, b.on_peer(*a.heartbeat(), 0.0), 0.0)
    assert a.serving and not b.serving
    # Partition: b's clients vote once the peer has expired; b takes over with a newer epoch.
    take(b, b.on_request(0.2)[1], 0.2)
    assert a.serving and b.serving and b.epoch > a.epoch
    # Healed: the first heartbeat makes the older active step down.
    take(a, a.on_peer(*b.heartbeat(), 0.3), 0.3)
    take(b, b.on_peer(*a.heartbeat(), 0.3), 0.3)
    assert b.serving and not a.serving
