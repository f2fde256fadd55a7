"""The EA bridge's trade socket, without I/O: the messages between the executor and the EA
instances (docs/PROTOCOL.md section 18).

The executor binds a ROUTER (``[orders] ea_bind``); each EA instance connects a DEALER whose
routing id is its name. Every message is the two-frame envelope of ``protocols.wire`` with a
kind of :class:`EaKind` (100-119).

Leases (section 18.2): an instance asks with a PING every heartbeat; the executor answers with
a LEASE holding, for every lease key the instance serves (an account, or ``"*"``: every
account no other instance names), whether it is that key's active instance and under which
epoch. The instance's lease on a key runs from the moment *it sent* the ping the grant answers,
for ``valid_ms``; the executor counts it from the moment it *received* that ping, so the
instance always stops first. An instance sends to its terminal only under a live lease;
the executor grants a key to another instance only once the holder's lease has run out on its
own clock (plus ``guard_ms``), or the holder said BYE.

Orders (section 18.3): EXECUTE asks the active instance to make sure an order is at the
terminal: sent once if the terminal has never seen it (tagged, ``protocols.ea.mt5.magic_of``),
never again. Every answer is the terminal's whole picture of the order (:class:`OrderFacts`),
so an answer repeated, reordered or lost costs nothing: the executor turns facts into log
entries by what its log already holds (``protocols.ea.reconcile``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from protocols.errors import RemoteProtocolError
from protocols.wire import decode_envelope, encode_envelope

ANY_ACCOUNT = "*"  # the lease key of an instance that serves every account


class EaKind(IntEnum):
    HELLO = 100
    PING = 101
    LEASE = 102
    EXECUTE = 103
    CANCEL = 104
    MODIFY = 105
    FACTS = 106
    SYNCED = 107
    REFUSED = 108
    BYE = 109


class FactStatus(IntEnum):
    """What the terminal holds of an order, as the EA read it."""

    WORKING = 1  # a pending order at the terminal (it may have deals already)
    FILLED = 2  # executed in full
    CANCELLED = 3  # removed at the terminal (after any deals it has)
    REJECTED = 4  # the terminal refused it (``retcode``); nothing was executed
    MODIFY_REFUSED = 5  # a MODIFY was refused (``retcode``); the order is as it was


class RefusedWhy(IntEnum):
    """Why an instance did not act on an EXECUTE, CANCEL or MODIFY (the executor sends it again
    to whoever holds the lease then)."""

    NOT_ACTIVE = 1  # no live lease under that epoch (a standby, or a lapsed lease)
    SYNCING = 2  # the instance is reconciling with its terminal: it takes orders after SYNCED
    UNKNOWN_SYMBOL = 3  # the terminal does not quote the order's symbol (final: reject it)
    TERMINAL_DOWN = 4  # the terminal did not answer; nothing was sent
    UNKNOWN_ORDER = 5  # a CANCEL or MODIFY of an order the terminal has never seen


@dataclass(frozen=True, slots=True)
class Deal:
    """One execution at the terminal (``TradeDeal``): ``ticket`` orders them."""

    ticket: int
    volume: float
    price: float
    time_msc: int


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """The terminal's record of one tickmesh order: its status, the terminal order's ticket
    (0: none made), its pending price (0 for a market order), the retcode of the last request
    about it, and every deal it made so far."""

    order_id: str
    status: FactStatus
    ticket: int = 0
    price: float = 0.0
    retcode: int = 0
    deals: tuple[Deal, ...] = ()

    @property
    def filled(self) -> float:
        return sum(d.volume for d in self.deals)


@dataclass(frozen=True, slots=True)
class Hello:
    """An instance announces itself (again after every restart: a new ``incarnation``)."""

    instance: str
    incarnation: str
    keys: tuple[str, ...]  # lease keys it serves: accounts, or (ANY_ACCOUNT,)
    pid: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    instance: str
    incarnation: str
    n: int  # the instance's own counter: the LEASE answering it carries it back


@dataclass(frozen=True, slots=True)
class Grant:
    key: str
    epoch: int  # the key's epoch: +1 on every change of active instance
    active: bool  # False: a standby for this key (epoch names the holder's)


@dataclass(frozen=True, slots=True)
class Lease:
    n: int  # the ping it answers
    valid_ms: float
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class Execute:
    """Make sure ``order_id`` is at the terminal (send it once if it has never been)."""

    key: str
    epoch: int
    order_id: str
    symbol: str
    buy: bool
    quantity: float  # the order's total
    price: float  # the limit; 0 for a market order
    # No later than the order was first routed (ms since the epoch; 0: unknown): the EA reads
    # the terminal's history back to it before it decides the order was never sent.
    routed_ms: int = 0


@dataclass(frozen=True, slots=True)
class Cancel:
    key: str
    epoch: int
    order_id: str


@dataclass(frozen=True, slots=True)
class Modify:
    """A new limit for a pending order (MT5 cannot change a pending order's volume)."""

    key: str
    epoch: int
    order_id: str
    price: float


@dataclass(frozen=True, slots=True)
class Facts:
    """The terminal's picture of some orders; ``sync``: sent while reconciling."""

    instance: str
    key: str
    epoch: int
    orders: tuple[OrderFacts, ...]
    sync: bool = False


@dataclass(frozen=True, slots=True)
class Synced:
    """Reconciliation under ``epoch`` is done: every tagged order of the terminal's window was
    reported. ``foreign``: terminal orders not tickmesh's (left alone)."""

    instance: str
    key: str
    epoch: int
    orders: int
    foreign: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    instance: str
    order_id: str
    epoch: int
    why: RefusedWhy


@dataclass(frozen=True, slots=True)
class Bye:
    instance: str
    incarnation: str


EaMessage = (Hello | Ping | Lease | Execute | Cancel | Modify | Facts | Synced | Refused | Bye)


# --- codec -----------------------------------------------------------------------------------

def _facts_body(f: OrderFacts) -> list[Any]:
    return [f.order_id, int(f.status), f.ticket, f.price, f.retcode,
            [[d.ticket, d.volume, d.price, d.time_msc] for d in f.deals]]


def encode_ea(msg: EaMessage) -> list[bytes]:
    """The two frames of ``msg``."""
    body: dict[str, Any]
    match msg:
        case Hello():
            kind, body = EaKind.HELLO, {"instance": msg.instance, "incarnation": msg.incarnation,
                                        "keys": list(msg.keys), "pid": msg.pid}
        case Ping():
            kind, body = EaKind.PING, {"instance": msg.instance,
                                       "incarnation": msg.incarnation, "n": msg.n}
        case Lease():
            kind, body = EaKind.LEASE, {"n": msg.n, "valid_ms": msg.valid_ms, "grants": [
                [g.key, g.epoch, g.active] for g in msg.grants]}
        case Execute():
            kind, body = EaKind.EXECUTE, {"key": msg.key, "epoch": msg.epoch,
                                          "order_id": msg.order_id, "symbol": msg.symbol,
                                          "buy": msg.buy, "quantity": msg.quantity,
                                          "price": msg.price, "routed_ms": msg.routed_ms}
        case Cancel():
            kind, body = EaKind.CANCEL, {"key": msg.key, "epoch": msg.epoch,
                                         "order_id": msg.order_id}
        case Modify():
            kind, body = EaKind.MODIFY, {"key": msg.key, "epoch": msg.epoch,
                                         "order_id": msg.order_id, "price": msg.price}
        case Facts():
            kind, body = EaKind.FACTS, {"instance": msg.instance, "key": msg.key,
                                        "epoch": msg.epoch, "sync": msg.sync,
                                        "orders": [_facts_body(f) for f in msg.orders]}
        case Synced():
            kind, body = EaKind.SYNCED, {"instance": msg.instance, "key": msg.key,
                                         "epoch": msg.epoch, "orders": msg.orders,
                                         "foreign": msg.foreign}
        case Refused():
            kind, body = EaKind.REFUSED, {"instance": msg.instance, "order_id": msg.order_id,
                                          "epoch": msg.epoch, "why": int(msg.why)}
        case Bye():
            kind, body = EaKind.BYE, {"instance": msg.instance, "incarnation": msg.incarnation}
    return encode_envelope(kind, body)


def _str(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise RemoteProtocolError(f"EA message: {key} must be a non-empty string")
    return v


def _int(d: dict[str, Any] | list[Any], key: Any, what: str = "") -> int:
    v = d[key] if isinstance(d, list) else d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise RemoteProtocolError(f"EA message: {what or key} must be an integer >= 0")
    return v


def _num(d: dict[str, Any] | list[Any], key: Any, what: str = "") -> float:
    v = d[key] if isinstance(d, list) else d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 \
            or v == float("inf"):
        raise RemoteProtocolError(f"EA message: {what or key} must be a finite number >= 0")
    return float(v)


def _bool(d: dict[str, Any], key: str) -> bool:
    v = d.get(key)
    if not isinstance(v, bool):
        raise RemoteProtocolError(f"EA message: {key} must be true or false")
    return v


def _list(d: dict[str, Any] | list[Any], key: Any, what: str = "") -> list[Any]:
    v = d[key] if isinstance(d, list) else d.get(key)
    if not isinstance(v, list):
        raise RemoteProtocolError(f"EA message: {what or key} must be an array")
    return v


def _enum(kind: type[FactStatus] | type[RefusedWhy], value: int, what: str
          ) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise RemoteProtocolError(f"EA message: unknown {what} {value}") from None


def _facts(raw: Any) -> OrderFacts:
    if not isinstance(raw, list) or len(raw) != 6 or not isinstance(raw[0], str) or not raw[0]:
        raise RemoteProtocolError("EA message: an order's facts must be [order_id, status, "
                                  "ticket, price, retcode, deals]")
    deals = []
    for d in _list(raw, 5, "deals"):
        if not isinstance(d, list) or len(d) != 4:
            raise RemoteProtocolError("EA message: a deal must be [ticket, volume, price, "
                                      "time_msc]")
        deals.append(Deal(_int(d, 0, "deal ticket"), _num(d, 1, "deal volume"),
                          _num(d, 2, "deal price"), _int(d, 3, "deal time_msc")))
    return OrderFacts(raw[0], _enum(FactStatus, _int(raw, 1, "status"), "status"),
                      _int(raw, 2, "ticket"), _num(raw, 3, "price"), _int(raw, 4, "retcode"),
                      tuple(deals))


def _grant(raw: Any) -> Grant:
    if (not isinstance(raw, list) or len(raw) != 3 or not isinstance(raw[0], str)
            or not isinstance(raw[2], bool)):
        raise RemoteProtocolError("EA message: a grant must be [key, epoch, active]")
    return Grant(raw[0], _int(raw, 1, "grant epoch"), raw[2])


def decode_ea(frames: list[bytes] | tuple[bytes, ...]) -> EaMessage:
    """The message of ``frames``; :class:`RemoteProtocolError` naming what is wrong."""
    kind, d = decode_envelope(frames, EaKind, "EA", "EA ")
    try:
        return _decode(kind, d)
    except (KeyError, IndexError, TypeError) as exc:
        raise RemoteProtocolError(f"EA {kind.name}: missing or malformed field {exc}") from None


def _decode(kind: EaKind, d: dict[str, Any]) -> EaMessage:
    match kind:
        case EaKind.HELLO:
            keys = tuple(_list(d, "keys"))
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise RemoteProtocolError("EA message: keys must be non-empty strings")
            return Hello(_str(d, "instance"), _str(d, "incarnation"), keys, _int(d, "pid"))
        case EaKind.PING:
            return Ping(_str(d, "instance"), _str(d, "incarnation"), _int(d, "n"))
        case EaKind.LEASE:
            return Lease(_int(d, "n"), _num(d, "valid_ms"),
                         tuple(_grant(g) for g in _list(d, "grants")))
        case EaKind.EXECUTE:
            return Execute(_str(d, "key"), _int(d, "epoch"), _str(d, "order_id"),
                           _str(d, "symbol"), _bool(d, "buy"), _num(d, "quantity"),
                           _num(d, "price"), _int(d, "routed_ms") if "routed_ms" in d else 0)
        case EaKind.CANCEL:
            return Cancel(_str(d, "key"), _int(d, "epoch"), _str(d, "order_id"))
        case EaKind.MODIFY:
            return Modify(_str(d, "key"), _int(d, "epoch"), _str(d, "order_id"),
                          _num(d, "price"))
        case EaKind.FACTS:
            return Facts(_str(d, "instance"), _str(d, "key"), _int(d, "epoch"),
                         tuple(_facts(f) for f in _list(d, "orders")), _bool(d, "sync"))
        case EaKind.SYNCED:
            return Synced(_str(d, "instance"), _str(d, "key"), _int(d, "epoch"),
                          _int(d, "orders"), _int(d, "foreign"))
        case EaKind.REFUSED:
            return Refused(_str(d, "instance"), _str(d, "order_id"), _int(d, "epoch"),
                           _enum(RefusedWhy, _int(d, "why"), "refusal"))
        case EaKind.BYE:
            return Bye(_str(d, "instance"), _str(d, "incarnation"))
    raise AssertionError(f"no decoder for {kind.name}")  # pragma: no cover


__all__ = [
    "ANY_ACCOUNT",
    "Bye",
    "Cancel",
    "Deal",
    "EaKind",
    "EaMessage",
    "Execute",
    "FactStatus",
    "Facts",
    "Grant",
    "Hello",
    "Lease",
    "Modify",
    "OrderFacts",
    "Ping",
    "Refused",
    "RefusedWhy",
    "Synced",
    "decode_ea",
    "encode_ea",
]
