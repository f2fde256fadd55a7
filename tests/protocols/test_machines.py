"""The one contract of the state machines: the checks that keep a table well formed, and what
each kind of pair does."""

from __future__ import annotations

from enum import Enum
from typing import Any

import pytest

from protocols.errors import IllegalTransition, LocalProtocolError, OrderStateError
from protocols.machines import HISTORY_SIZE, Kind, Machine, new_history
from protocols.orders.messages import OrderEvent, OrderState


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
