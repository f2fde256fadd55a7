"""The one contract of tickmesh's state machines: binary star, stream arbiter, order lifecycle,
EA lease key.

Each machine turns a raw input into an *event* (guards such as "the peer has expired" are part
of the event) and looks ``(state, event)`` up in its :class:`Machine`. Every pair is exactly one
of:

* a **move**: ``transitions[state][event]`` is the next state (possibly the same one, for a
  move that re-arms something: RECOVERING --REPLY_PARTIAL--> RECOVERING asks again);
* a **no-op**: ``event in ignored[state]``, an input that is legal there and changes nothing
  (a late answer, a heartbeat that tells the node what it knows already);
* **fatal**: ``(state, event) in fatal``, a legal input that proves a misconfiguration; the
  machine checks these first and raises its own error (the binary star's ``PeerConflict``);
* **illegal**: anything else. :meth:`Machine.step` raises
  :class:`~protocols.errors.IllegalTransition` (a ``LocalProtocolError``) naming the machine,
  the state and the event: the code that classified the input is wrong.

Whatever a peer may send in any state is therefore a move, a no-op or fatal, never illegal. A
peer's bad *values* (an epoch out of range, a gap-fill reply whose range is inverted) raise
:class:`~protocols.errors.RemoteProtocolError` before they become an event. A machine object
keeps its last :data:`HISTORY_SIZE` moves as ``(before, event, after)`` in ``history``.

:func:`machines` lists every machine; ``scripts/draw-machines`` draws them (docs/MACHINES.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from protocols.errors import IllegalTransition

# Moves kept per machine object: every test scenario fits, and so do the moves that led to a
# failure; a node that runs for weeks and flaps keeps this many, not one per flap.
HISTORY_SIZE = 64

StateT = TypeVar("StateT", bound=Enum)
EventT = TypeVar("EventT", bound=Enum)


class Kind(Enum):
    """What a ``(state, event)`` pair is to a machine."""

    MOVE = "move"
    IGNORED = "ignored"
    FATAL = "fatal"
    ILLEGAL = "illegal"


@dataclass(frozen=True, slots=True)
class Machine(Generic[StateT, EventT]):
    """A machine's transition table as data: what it does with every ``(state, event)``.

    ``name`` is used in errors ("binary star in state PRIMARY cannot take FENCED"), ``title``
    in docs (default: ``name``); ``initial`` lists the states an object may start in; ``error``
    builds the exception for an illegal pair (default :class:`IllegalTransition` with ``name``).
    """

    name: str
    states: type[StateT]
    events: type[EventT]
    transitions: Mapping[StateT, Mapping[EventT, StateT]]
    ignored: Mapping[StateT, frozenset[EventT]] = field(default_factory=dict)
    fatal: frozenset[tuple[StateT, EventT]] = frozenset()
    initial: tuple[StateT, ...] = ()
    error: Callable[[StateT, EventT], IllegalTransition] | None = None
    title: str = ""

    def __post_init__(self) -> None:
        states = set(self.states)
        if set(self.transitions) != states:
            raise ValueError(f"{self.name}: the table must list every state")
        if not set(self.ignored) <= states or not set(self.initial) <= states or \
                not self.initial:
            raise ValueError(f"{self.name}: ignored and initial must name states")
        for state, row in self.transitions.items():
            ignored = self.ignored.get(state, frozenset())
            both = set(row) & ignored
            fatal = {e for s, e in self.fatal if s is state} & (set(row) | ignored)
            if both or fatal:
                raise ValueError(f"{self.name}: {state.name} lists {both | fatal} twice")

    @property
    def module(self) -> str:
        """The module that defines the machine (where its states are)."""
        return self.states.__module__

    def kind(self, state: StateT, event: EventT) -> Kind:
        if event in self.transitions[state]:
            return Kind.MOVE
        if event in self.ignored.get(state, ()):
            return Kind.IGNORED
        return Kind.FATAL if (state, event) in self.fatal else Kind.ILLEGAL

    def step(self, state: StateT, event: EventT) -> StateT | None:
        """The state after ``event``, or None for a no-op; raises for an illegal pair (and for
        a fatal one the machine failed to check first)."""
        nxt = self.transitions[state].get(event)
        if nxt is not None:
            return nxt
        if event in self.ignored.get(state, ()):
            return None
        raise self.illegal(state, event)

    def illegal(self, state: StateT, event: EventT) -> IllegalTransition:
        """The error for ``event`` in ``state``."""
        if self.error is not None:
            return self.error(state, event)
        return IllegalTransition(self.name, state, event)

    def pairs(self, kind: Kind) -> list[tuple[StateT, EventT]]:
        """Every pair of ``kind``, in the order the enums define states and events."""
        return [(s, e) for s in self.states for e in self.events if self.kind(s, e) is kind]


def new_history() -> deque[tuple[Any, Any, Any]]:
    """An empty ``history`` of :data:`HISTORY_SIZE` moves (oldest dropped first)."""
    return deque(maxlen=HISTORY_SIZE)


def machines() -> tuple[Machine[Any, Any], ...]:
    """Every state machine of tickmesh, in the order docs/MACHINES.md shows them."""
    # Imported here: the machines' modules import this one for Machine.
    from protocols.ea import lease
    from protocols.orders import binary_star, lifecycle
    from protocols.ticks import arbitration

    return binary_star.MACHINE, arbitration.MACHINE, lifecycle.MACHINE, lease.MACHINE


__all__ = ["HISTORY_SIZE", "Kind", "Machine", "machines", "new_history"]
