"""The one exception tree of tickmesh.

Every error tickmesh raises on purpose derives from :class:`TickmeshError`, and mixes in the
builtin it resembles so callers can catch either::

    TickmeshError
    ├── ConfigError(ValueError)            a mesh file or option is wrong; names key and fix
    ├── ProtocolError                      a message broke the wire protocol
    │   ├── LocalProtocolError             ... and *we* were about to send it (a bug here)
    │   │   └── IllegalTransition          ... a state machine got an event its table forbids
    │   │       └── OrderStateError        ...   the order lifecycle (names state and event)
    │   └── RemoteProtocolError(ValueError) ... and a *peer* sent it (bad bytes, unknown kind)
    │       └── BadRequest                 ...   a gateway client's frame; carries the code
    ├── InvalidTick(ValueError)            a tick from a source failed validation
    ├── InvalidOrder(ValueError)           an order-path message failed validation; names field
    ├── StoreError                         the state store misbehaved
    │   ├── StoreUnavailable(ConnectionError)  ... it cannot be reached right now
    │   └── Fenced                         ... a write carried an epoch older than the store's
    ├── RecoveryError                      the recovery service could not serve a request
    │   └── RecoveryTimeout(TimeoutError)  ... no recovery service answered in time
    ├── SlowConsumer                       a bounded buffer overflowed (carries the counts)
    │   └── TooManyInFlight                ... the order client has its limit of open requests
    ├── OrderError                         an order request got no final acknowledgement
    │   ├── OrderRejected                  ... a backend refused it for good; carries the reject
    │   ├── OrderTimeout(TimeoutError)     ... no backend answered before the deadline
    │   └── OrderClientClosed(ConnectionError) ... the client closed while it was pending
    ├── ServerError(RuntimeError)          a helper server process (redis, ...) failed to run
    ├── TerminalError(ConnectionError)     a MetaTrader 5 terminal (real or simulated) did not
    │                                      serve a call (its retcodes are answers, not errors)
    ├── DrillError(RuntimeError)           a drill or benchmark could not run its system
    ├── AuthError(PermissionError)         credentials or a session token were refused
    │   └── NotYourAccount                 ... a session asked for an account its user lacks
    └── PeerConflict                       a binary-star pair is misconfigured (two primaries)

Split by fault as h11 does: a ``RemoteProtocolError`` is counted and logged by the receiving node,
which carries on; a ``LocalProtocolError`` means our own code is wrong.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # orders imports this module
    from protocols.orders.messages import OrderReject


class TickmeshError(Exception):
    """Root of every tickmesh error."""


class ConfigError(TickmeshError, ValueError):
    """A configuration value is wrong. The message names the key and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        text = f"config key {key!r}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class ProtocolError(TickmeshError):
    """A message violates the tickmesh wire protocol."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids: a bug on this side."""


class IllegalTransition(LocalProtocolError):
    """A state machine was fed an event its transition table forbids in its current state.

    The code that classified an input into ``event`` is wrong, not the peer: inputs that a peer
    can send in any state are legal everywhere (a move or a listed no-op), and bad values from a
    peer raise :class:`RemoteProtocolError` before they become an event. ``machine`` names the
    machine (``protocols.machines``), ``state`` and ``event`` are the enum members involved;
    ``problem`` says more when the event itself is legal but its content is not.
    """

    def __init__(self, machine: str, state: Enum, event: Enum, problem: str = "") -> None:
        self.machine = machine
        self.state = state
        self.event = event
        self.problem = problem
        text = f"{machine} in state {state.name} cannot take {event.name}"
        if problem:
            text += f": {problem}"
        super().__init__(text)


class RemoteProtocolError(ProtocolError, ValueError):
    """A peer sent bytes that do not decode; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BadRequest(RemoteProtocolError):
    """A gateway client sent a frame the WebSocket protocol refuses (docs/GATEWAY.md, 7):
    ``code`` is the ``error`` frame's code (``bad_json``, ``bad_request``, ``unknown_stream``,
    ...); ``fatal`` closes the connection after the error frame."""

    def __init__(self, code: str, reason: str, fatal: bool = False) -> None:
        self.code = code
        self.fatal = fatal
        super().__init__(reason)


class InvalidTick(TickmeshError, ValueError):
    """A tick offered by a source is not acceptable (unknown symbol, bad price, ...)."""


class StoreError(TickmeshError):
    """The state store returned an error."""


class StoreUnavailable(StoreError, ConnectionError):
    """The state store cannot be reached."""


class RecoveryError(TickmeshError):
    """The recovery service answered with an error."""


class RecoveryTimeout(RecoveryError, TimeoutError):
    """No recovery service answered within the deadline."""

    def __init__(self, what: str, attempts: int, timeout_s: float) -> None:
        self.attempts = attempts
        self.timeout_s = timeout_s
        super().__init__(f"{what}: no recovery service answered after {attempts} attempts "
                         f"of {timeout_s:.3f} s")


class SlowConsumer(TickmeshError):
    """A bounded buffer overflowed because its consumer is too slow."""

    def __init__(self, what: str, capacity: int, dropped: int) -> None:
        self.capacity = capacity
        self.dropped = dropped
        super().__init__(f"{what}: buffer of {capacity} full, {dropped} dropped so far")


class TooManyInFlight(SlowConsumer):
    """A request would exceed the order client's bound on requests awaiting an answer; orders
    are refused, never dropped."""

    def __init__(self, in_flight: int, limit: int) -> None:
        self.in_flight = in_flight
        self.limit = limit
        TickmeshError.__init__(self, f"order client: {in_flight} requests in flight, limit "
                                     f"{limit}: wait for answers or raise max_in_flight")
        self.capacity = limit
        self.dropped = 0


class OrderError(TickmeshError):
    """An order request (place, cancel, replace) did not get a final acknowledgement."""


class OrderRejected(OrderError):
    """A backend refused the request with a reason that a retry cannot change; ``reject`` is
    the backend's ``OrderReject``."""

    def __init__(self, reject: OrderReject) -> None:
        self.reject = reject
        self.reason = reject.reason
        self.client_order_id = reject.client_order_id
        super().__init__(f"order {self.client_order_id!r} rejected: {self.reason.name}"
                         + (f" ({reject.message})" if reject.message else ""))


class OrderTimeout(OrderError, TimeoutError):
    """No backend gave a final answer to ``client_order_id`` within the deadline."""

    def __init__(self, client_order_id: str, attempts: int, elapsed_s: float) -> None:
        self.client_order_id = client_order_id
        self.attempts = attempts
        self.elapsed = elapsed_s
        super().__init__(f"order {client_order_id!r}: no backend answered after {attempts} "
                         f"attempts in {elapsed_s:.3f} s")


class OrderClientClosed(OrderError, ConnectionError):
    """The order client was closed (or not started) while the request was pending; whether
    the backend recorded it is unknown: send it again with the same client order id."""

    def __init__(self, client_order_id: str = "") -> None:
        self.client_order_id = client_order_id
        what = f"order {client_order_id!r}" if client_order_id else "order client"
        super().__init__(f"{what}: the order client is closed")


class ServerError(TickmeshError, RuntimeError):
    """A server process that tickmesh manages (redis-server, ...) failed to start or run."""


class TerminalError(TickmeshError, ConnectionError):
    """A MetaTrader 5 terminal (the real one through the ``MetaTrader5`` package, or the
    simulated one) did not serve a call: not attached, gone, or no answer in time. A trade
    request it refuses is an answer (``order_send``'s retcode), not this."""

    def __init__(self, call: str, problem: str) -> None:
        self.call = call
        self.problem = problem
        super().__init__(f"terminal call {call}: {problem}")


class DrillError(TickmeshError, RuntimeError):
    """A drill or benchmark could not run: a process failed to start, answer or stop, or the
    system under test never reached the state the drill needs."""


class PeerConflict(TickmeshError):
    """Both nodes of a binary-star pair claim the same role: a configuration error."""


class OrderStateError(IllegalTransition):
    """An order was asked to take an event its lifecycle forbids in its current state.

    ``state`` and ``event`` are the enum members involved; ``problem`` says more when the event
    itself is legal but its content is not (a fill beyond the order quantity, ...).
    """

    def __init__(self, state: Enum, event: Enum, problem: str = "") -> None:
        super().__init__("order", state, event, problem)


class InvalidOrder(TickmeshError, ValueError):
    """An order-path message failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


class Fenced(StoreError):
    """A write carried fencing epoch ``epoch`` but the store holds ``current`` (newer): this
    process is no longer the active backend and must not write."""

    def __init__(self, epoch: int, current: int) -> None:
        self.epoch = epoch
        self.current = current
        super().__init__(f"fenced: write with epoch {epoch}, but epoch {current} is active")


class AuthError(TickmeshError, PermissionError):
    """Login or a session token was refused. ``reason`` is for logs; what a client is told is
    only that it failed (an unknown user and a wrong password look the same)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NotYourAccount(AuthError):
    """A session's request names ``account``, which is not one of its user's accounts
    (docs/GATEWAY.md, 6): the order is refused with reason :attr:`code`, the connection stays
    open."""

    code = "NOT_YOUR_ACCOUNT"

    def __init__(self, account: str) -> None:
        self.account = account
        super().__init__(f"account {account!r} is not one of this session's accounts")
