"""The order lifecycle: states, events and the transition table (sans-I/O).

The lifecycle is the table :data:`TRANSITIONS` (``state -> event -> next state``)::

    NEW --ACCEPT--> ACCEPTED --ROUTE--> ROUTED --PARTIAL_FILL--> PARTIALLY_FILLED --FILL--> FILLED
    NEW --REJECT--> REJECTED            ROUTED --FILL--> FILLED
                                        ROUTED --REJECT--> REJECTED   (the executor refused)
    ACCEPTED / ROUTED / PARTIALLY_FILLED --CANCEL--> CANCELLED, --EXPIRE--> EXPIRED,
                                         --REPLACE--> (same state, new quantity or price)

FILLED, REJECTED, CANCELLED and EXPIRED are terminal: they take no event. An event the table
does not list raises :class:`OrderStateError` naming state and event; nothing changes silently.
Working-state names: :attr:`OrderState.replaceable` (a cancel or replace may act),
:attr:`OrderState.at_executor` (the executor works it), :attr:`OrderState.unrouted`.
The record that moves through it is ``protocols.orders.record.Order``.
"""

from __future__ import annotations

from enum import Enum, IntEnum

from protocols.errors import InvalidOrder, OrderStateError
from protocols.machines import Machine
from protocols.orders.fields import not_negative


class OrderState(IntEnum):
    NEW = 1
    ACCEPTED = 2
    ROUTED = 3
    PARTIALLY_FILLED = 4
    FILLED = 5
    REJECTED = 6
    CANCELLED = 7
    EXPIRED = 8

    @property
    def terminal(self) -> bool:
        """True if the order is done: no event can change it any more."""
        return not TRANSITIONS[self]

    @property
    def replaceable(self) -> bool:
        """True if the order is working: a cancel or a replace may still act on it
        (ACCEPTED, ROUTED, PARTIALLY_FILLED)."""
        return self in _REPLACEABLE

    @property
    def at_executor(self) -> bool:
        """True if the executor works the order: routed and not done (ROUTED,
        PARTIALLY_FILLED). The backend re-drives these; the executor takes only these."""
        return self in _AT_EXECUTOR

    @property
    def unrouted(self) -> bool:
        """True if the order was never sent to the executor (NEW, ACCEPTED): the executor has
        nothing to decide about it."""
        return self in _UNROUTED


class OrderEvent(Enum):
    """The inputs of the lifecycle; the transition table is drawn over them."""

    ACCEPT = "accept"
    REJECT = "reject"
    ROUTE = "route"
    PARTIAL_FILL = "partial_fill"
    FILL = "fill"
    CANCEL = "cancel"
    EXPIRE = "expire"
    REPLACE = "replace"

S = OrderState
E = OrderEvent
_WORKING = {E.CANCEL: S.CANCELLED, E.EXPIRE: S.EXPIRED}
# state -> event -> next state. An event not listed for a state is illegal there.
TRANSITIONS: dict[OrderState, dict[OrderEvent, OrderState]] = {
    S.NEW: {E.ACCEPT: S.ACCEPTED, E.REJECT: S.REJECTED},
    S.ACCEPTED: {E.ROUTE: S.ROUTED, E.REPLACE: S.ACCEPTED, **_WORKING},
    S.ROUTED: {E.PARTIAL_FILL: S.PARTIALLY_FILLED, E.FILL: S.FILLED, E.REJECT: S.REJECTED,
               E.REPLACE: S.ROUTED, **_WORKING},
    S.PARTIALLY_FILLED: {E.PARTIAL_FILL: S.PARTIALLY_FILLED, E.FILL: S.FILLED,
                         E.REPLACE: S.PARTIALLY_FILLED, **_WORKING},
    S.FILLED: {},
    S.REJECTED: {},
    S.CANCELLED: {},
    S.EXPIRED: {},
}

# The event an execution report in a given state stands for (NEW is never reported).
REPORT_EVENTS: dict[OrderState, OrderEvent] = {
    S.ACCEPTED: E.ACCEPT, S.ROUTED: E.ROUTE, S.PARTIALLY_FILLED: E.PARTIAL_FILL,
    S.FILLED: E.FILL, S.REJECTED: E.REJECT, S.CANCELLED: E.CANCEL, S.EXPIRED: E.EXPIRE,
}
_FILL_STATES = frozenset({S.PARTIALLY_FILLED, S.FILLED})
FILL_EVENTS = frozenset({E.PARTIAL_FILL, E.FILL})
_REPLACEABLE = frozenset(s for s, events in TRANSITIONS.items() if E.REPLACE in events)
_AT_EXECUTOR = frozenset({S.ROUTED, S.PARTIALLY_FILLED})
_UNROUTED = frozenset({S.NEW, S.ACCEPTED})
_UNFILLED_STATES = frozenset({S.NEW, S.ACCEPTED, S.ROUTED, S.REJECTED})

# The lifecycle under the machine contract of ``protocols.machines`` (drawn in docs/MACHINES.md).
MACHINE: Machine[OrderState, OrderEvent] = Machine(
    "order", OrderState, OrderEvent, TRANSITIONS, initial=(OrderState.NEW,),
    error=OrderStateError, title="Order lifecycle")


def next_state(state: OrderState, event: OrderEvent) -> OrderState:
    """The state after ``event``; raises :class:`OrderStateError` if the table forbids it."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise OrderStateError(state, event) from None


def check_progress(state: OrderState, filled: float, avg_price: float) -> None:
    """Fill invariants that hold for an order record and a report alike."""
    not_negative("filled_quantity", filled)
    not_negative("avg_price", avg_price)
    if (filled > 0) != (avg_price > 0):
        raise InvalidOrder("avg_price", f"{avg_price!r} with filled_quantity {filled!r}: "
                                        "both are 0 or both are > 0")
    if state in _UNFILLED_STATES and filled != 0:
        raise InvalidOrder("filled_quantity", f"must be 0 in state {state.name}, got {filled!r}")
    if state in _FILL_STATES and filled <= 0:
        raise InvalidOrder("filled_quantity", f"must be > 0 in state {state.name}")


__all__ = [
    "FILL_EVENTS",
    "MACHINE",
    "REPORT_EVENTS",
    "TRANSITIONS",
    "OrderEvent",
    "OrderState",
    "check_progress",
    "next_state",
]
