"""The order lifecycle from tables: every legal transition, every illegal (state, event) pair,
the terminal states, property tests over random event sequences, the working-state names."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import (
    LocalProtocolError,
    OrderStateError,
)
from protocols.orders.lifecycle import (
    REPORT_EVENTS,
    TRANSITIONS,
    OrderEvent,
    OrderState,
    next_state,
)
from tests.protocols.orders.builders import (
    FAST,
    TERMINAL,
    E,
    S,
)

# --- the transition table ----------------------------------------------------------------------

# Written out by hand, not derived from TRANSITIONS: this is the specification.
LEGAL: list[tuple[OrderState, OrderEvent, OrderState]] = [
    (S.NEW, E.ACCEPT, S.ACCEPTED),
    (S.NEW, E.REJECT, S.REJECTED),
    (S.ACCEPTED, E.ROUTE, S.ROUTED),
    (S.ACCEPTED, E.CANCEL, S.CANCELLED),
    (S.ACCEPTED, E.EXPIRE, S.EXPIRED),
    (S.ACCEPTED, E.REPLACE, S.ACCEPTED),
    (S.ROUTED, E.PARTIAL_FILL, S.PARTIALLY_FILLED),
    (S.ROUTED, E.FILL, S.FILLED),
    (S.ROUTED, E.REJECT, S.REJECTED),
    (S.ROUTED, E.CANCEL, S.CANCELLED),
    (S.ROUTED, E.EXPIRE, S.EXPIRED),
    (S.ROUTED, E.REPLACE, S.ROUTED),
    (S.PARTIALLY_FILLED, E.PARTIAL_FILL, S.PARTIALLY_FILLED),
    (S.PARTIALLY_FILLED, E.FILL, S.FILLED),
    (S.PARTIALLY_FILLED, E.CANCEL, S.CANCELLED),
    (S.PARTIALLY_FILLED, E.EXPIRE, S.EXPIRED),
    (S.PARTIALLY_FILLED, E.REPLACE, S.PARTIALLY_FILLED),
]
ILLEGAL = [(s, e) for s, e in itertools.product(OrderState, OrderEvent)
           if (s, e) not in {(a, b) for a, b, _ in LEGAL}]


@pytest.mark.parametrize(("state", "event", "after"), LEGAL,
                         ids=[f"{s.name}-{e.name}" for s, e, _ in LEGAL])
def test_legal_transition(state: OrderState, event: OrderEvent, after: OrderState) -> None:
    assert next_state(state, event) is after


@pytest.mark.parametrize(("state", "event"), ILLEGAL,
                         ids=[f"{s.name}-{e.name}" for s, e in ILLEGAL])
def test_illegal_transition_raises_naming_state_and_event(state: OrderState,
                                                          event: OrderEvent) -> None:
    with pytest.raises(OrderStateError) as info:
        next_state(state, event)
    assert state.name in str(info.value) and event.name in str(info.value)
    assert (info.value.state, info.value.event) == (state, event)
    assert isinstance(info.value, LocalProtocolError)


def test_every_table_entry_is_in_the_legal_table_and_nothing_else() -> None:
    table = {(s, e, after) for s, row in TRANSITIONS.items() for e, after in row.items()}
    assert table == set(LEGAL)
    assert set(TRANSITIONS) == set(OrderState)
    assert len(ILLEGAL) == len(OrderState) * len(OrderEvent) - len(LEGAL)


@pytest.mark.parametrize("state", list(OrderState), ids=[s.name for s in OrderState])
def test_terminal_states_take_no_event(state: OrderState) -> None:
    assert state.terminal == (state in TERMINAL)
    if state.terminal:
        for event in OrderEvent:
            with pytest.raises(OrderStateError):
                next_state(state, event)


def test_report_events_cover_every_state_but_new_and_are_legal_somewhere() -> None:
    assert set(REPORT_EVENTS) == set(OrderState) - {S.NEW}
    for state, event in REPORT_EVENTS.items():
        assert any(TRANSITIONS[s].get(event) is state for s in OrderState), state


@FAST
@given(st.sampled_from(list(OrderState)), st.lists(st.sampled_from(list(OrderEvent)),
                                                   max_size=30))
def test_any_event_sequence_stays_in_the_table(start: OrderState,
                                               events: list[OrderEvent]) -> None:
    state = start
    for event in events:
        before = state
        try:
            state = next_state(state, event)
        except OrderStateError as exc:
            assert event not in TRANSITIONS[before]
            assert (exc.state, exc.event) == (before, event)
            continue
        assert not before.terminal, "a terminal state changed"
        assert state is TRANSITIONS[before][event]


# --- one vocabulary of working states ----------------------------------------------------------

STATE_NAMES = [
    # (state, terminal, replaceable, at_executor, unrouted)
    (S.NEW, False, False, False, True),
    (S.ACCEPTED, False, True, False, True),
    (S.ROUTED, False, True, True, False),
    (S.PARTIALLY_FILLED, False, True, True, False),
    (S.FILLED, True, False, False, False),
    (S.REJECTED, True, False, False, False),
    (S.CANCELLED, True, False, False, False),
    (S.EXPIRED, True, False, False, False),
]


@pytest.mark.parametrize(("state", "terminal", "replaceable", "at_executor", "unrouted"),
                         STATE_NAMES)
def test_state_names(state: OrderState, terminal: bool, replaceable: bool, at_executor: bool,
                     unrouted: bool) -> None:
    assert (state.terminal, state.replaceable, state.at_executor, state.unrouted) == (
        terminal, replaceable, at_executor, unrouted)
    # replaceable is what the lifecycle table allows a cancel and a replace in
    assert state.replaceable is (E.REPLACE in TRANSITIONS[state]) is (
        E.CANCEL in TRANSITIONS[state])
