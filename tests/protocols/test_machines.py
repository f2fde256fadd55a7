"""The one contract of the state machines: every machine's table, pair by pair, and the checks
that keep a table well formed."""

from __future__ import annotations

from enum import Enum
from typing import Any

import pytest

from protocols.errors import IllegalTransition, LocalProtocolError, OrderStateError
from protocols.machines import HISTORY_SIZE, Kind, Machine, machines, new_history
from protocols.orders.lifecycle import OrderEvent, OrderState, next_state

MACHINES = machines()
PAIRS = [(m, s, e) for m in MACHINES for s in m.states for e in m.events]


def pair_id(m: Machine[Enum, Enum], s: Enum, e: Enum) -> str:
    return f"{m.name}-{s.name}-{e.name}"


def test_the_machines() -> None:
    assert [m.name for m in MACHINES] == ["binary star", "stream arbiter", "order",
                                          "EA lease key"]
    assert [m.module for m in MACHINES] == ["protocols.orders.binary_star",
                                            "protocols.ticks.arbitration",
                                            "protocols.orders.lifecycle",
                                            "protocols.ea.lease"]


@pytest.mark.parametrize(("m", "state", "event"), PAIRS, ids=[pair_id(*p) for p in PAIRS])
def test_step(m: Machine[Enum, Enum], state: Enum, event: Enum) -> None:
    """A move gives the table's next state, a no-op None; an illegal or a fatal pair (which the
    machine checks before it steps) raises naming the machine, the state and the event."""
    kind = m.kind(state, event)
    if kind is Kind.MOVE:
        assert m.step(state, event) is m.transitions[state][event]
    elif kind is Kind.IGNORED:
        assert m.step(state, event) is None
    else:
        with pytest.raises(IllegalTransition) as info:
            m.step(state, event)
        err = info.value
        assert (err.machine, err.state, err.event) == (m.name, state, event)
        assert str(err) == f"{m.name} in state {state.name} cannot take {event.name}"
        assert isinstance(err, LocalProtocolError)


@pytest.mark.parametrize("m", MACHINES, ids=[m.name for m in MACHINES])
def test_every_state_is_reachable(m: Machine[Enum, Enum]) -> None:
    seen, todo = set(m.initial), list(m.initial)
    while todo:
        for nxt in m.transitions[todo.pop()].values():
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(m.states)


@pytest.mark.parametrize(("state", "event"), [(s, e) for s in OrderState for e in OrderEvent])
def test_the_lifecycle_table_is_the_one_next_state_uses(state: OrderState,
                                                        event: OrderEvent) -> None:
    lifecycle = MACHINES[2]
    try:
        expected: OrderState | Exception = next_state(state, event)
    except OrderStateError as exc:
        expected = exc
    if isinstance(expected, OrderStateError):
        with pytest.raises(OrderStateError) as info:
            lifecycle.step(state, event)
        assert str(info.value) == str(expected)
    else:
        assert lifecycle.step(state, event) is expected


def test_order_state_error_is_an_illegal_transition_of_the_order() -> None:
    err = OrderStateError(OrderState.FILLED, OrderEvent.CANCEL, "done")
    assert isinstance(err, IllegalTransition) and isinstance(err, LocalProtocolError)
    assert (err.machine, err.state, err.event, err.problem) == (
        "order", OrderState.FILLED, OrderEvent.CANCEL, "done")
    assert str(err) == "order in state FILLED cannot take CANCEL: done"


class St(Enum):
    A = "a"
    B = "b"


class Ev(Enum):
    GO = "go"
    STAY = "stay"


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"transitions": {St.A: {Ev.GO: St.B}}}, "every state"),
    ({"initial": ()}, "initial"),
    ({"ignored": {St.A: frozenset({Ev.GO})}}, "twice"),
    ({"fatal": frozenset({(St.A, Ev.GO)})}, "twice"),
    ({"fatal": frozenset({(St.B, Ev.STAY)}), "ignored": {St.B: frozenset({Ev.STAY})}},
     "twice"),
])
def test_a_malformed_table_is_refused(kwargs: dict[str, Any], problem: str) -> None:
    args: dict[str, Any] = {"transitions": {St.A: {Ev.GO: St.B}, St.B: {}},
                            "initial": (St.A,), **kwargs}
    with pytest.raises(ValueError, match=problem):
        Machine("toy", St, Ev, **args)


def test_kinds_of_a_toy_machine() -> None:
    toy = Machine("toy", St, Ev, {St.A: {Ev.GO: St.B}, St.B: {}},
                  {St.A: frozenset({Ev.STAY})}, frozenset({(St.B, Ev.GO)}), initial=(St.A,))
    assert {k: toy.pairs(k) for k in Kind} == {
        Kind.MOVE: [(St.A, Ev.GO)], Kind.IGNORED: [(St.A, Ev.STAY)],
        Kind.FATAL: [(St.B, Ev.GO)], Kind.ILLEGAL: [(St.B, Ev.STAY)]}
    with pytest.raises(IllegalTransition, match="toy in state B cannot take GO"):
        toy.step(St.B, Ev.GO)  # fatal pairs are the machine's to check first


def test_history_keeps_the_newest_moves() -> None:
    history = new_history()
    for i in range(HISTORY_SIZE + 10):
        history.append((i, i, i))
    assert len(history) == HISTORY_SIZE
    assert history[0] == (10, 10, 10) and history[-1] == (HISTORY_SIZE + 9,) * 3
