"""The backend pair's own link: heartbeats, and the replication of order records.

Each backend publishes a :class:`PeerHeartbeat` (its :class:`~protocols.orders.binary_star.State`
and the highest epoch it knows) every ``heartbeat_ms`` on its "peer" PUB socket; the other node
hands it to ``BinaryStar.on_peer``. On the wire it is the envelope of :mod:`protocols.wire`
(docs/PROTOCOL.md section 15)::

    [magic "TM" | version 1 | kind 64, msgpack map {"state": int, "epoch": int}]

States travel as the fixed codes of :data:`STATE_CODES`, not as the enum's names, so renaming
a state in the code never changes the wire. Decoding is strict: anything malformed raises
:class:`RemoteProtocolError` naming the reason; unknown keys are ignored.

Replication (``protocols.orders.replication``: the rules) runs on a DEALER of the active
node connected to the passive node's "replica" ROUTER (docs/PROTOCOL.md section 15)::

    REPLICA_BATCH   (65) {"epoch", "term", "seq", "flushed", "reset",
                          "records": [[order_id, account, client_order_id, terminal, bin,
                                       [[seq, entry_bin, executed], ...]], ...]}
    REPLICA_ACK     (66) {"epoch", "term", "seq"}
    REPLICA_REFUSED (67) {"epoch", "term", "seq", "reason": int}

A record's ``bin`` is an order-codec ``Order`` message, its two frames joined
(``codec.EncodedOrder``); its keys travel beside it, so the passive node never decodes it
unless it takes over. After it, the executor's log entries that version of the record applied
(``codec.EncodedEntry``: position, an ``ExecutionReport`` joined, its exec id if an execution
else ""): a decision of the executor is final once the pair holds it with its record.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from protocols.errors import RemoteProtocolError
from protocols.orders.binary_star import State
from protocols.orders.codec import EncodedEntry, EncodedOrder
from protocols.orders.fields import check_id
from protocols.wire import decode_envelope, encode_envelope

MAX_EPOCH = 2**63 - 1  # a Redis integer


class PairKind(IntEnum):
    """Kinds of the backend pair's own socket (64..71: never a tick or an order kind)."""

    PEER_HEARTBEAT = 64
    REPLICA_BATCH = 65
    REPLICA_ACK = 66
    REPLICA_REFUSED = 67


STATE_CODES: dict[State, int] = {
    State.PRIMARY: 1,
    State.BACKUP: 2,
    State.TAKING_OVER: 3,
    State.ACTIVE: 4,
    State.PASSIVE: 5,
}
_STATES = {code: state for state, code in STATE_CODES.items()}


@dataclass(frozen=True, slots=True)
class PeerHeartbeat:
    """One beat: the sender's pair state and the highest fencing epoch it knows."""

    state: State
    epoch: int

    def __post_init__(self) -> None:
        if not isinstance(self.state, State):
            raise ValueError(f"state must be a State, got {self.state!r:.40}")
        if (not isinstance(self.epoch, int) or isinstance(self.epoch, bool)
                or not 0 <= self.epoch <= MAX_EPOCH):
            raise ValueError(f"epoch must be an integer in 0..2^63-1, got {self.epoch!r:.40}")


def _check_count(field: str, value: object) -> None:
    """An epoch or a batch number: an integer in 0..2^63-1 (a Redis integer)."""
    if type(value) is not int or not 0 <= value <= MAX_EPOCH:
        raise ValueError(f"{field} must be an integer in 0..2^63-1, got {value!r:.40}")


class RefuseReason(IntEnum):
    """Why a passive node did not take a replicated batch (the wire's codes)."""

    STALE_EPOCH = 1  # it knows a newer epoch: the sender is no longer the active node
    NOT_PASSIVE = 2  # it is taking over or active: it holds no other node's writes now
    OUT_OF_SYNC = 3  # not the next batch of the term it holds: send a reset first
    FULL = 4  # the batch would take it past its bound on records held


@dataclass(frozen=True, slots=True)
class ReplicaBatch:
    """Order records the active node replicates (``term``: the sender's active term, a random
    token; ``seq``: 1, 2, ... within it). ``flushed``: every batch of the term up to this seq
    is in the store (the passive drops those). ``reset``: the passive drops what it holds of
    any term and takes this batch as the start of ``term`` (it then carries every record the
    store may lack)."""

    epoch: int
    term: str
    seq: int
    flushed: int
    records: tuple[EncodedOrder, ...]
    reset: bool = False

    def __post_init__(self) -> None:
        _check_count("epoch", self.epoch)
        check_id("term", self.term)
        _check_count("seq", self.seq)
        _check_count("flushed", self.flushed)
        if self.seq < 1 or self.flushed >= self.seq:
            raise ValueError(f"need 0 <= flushed < seq, 1 <= seq; got flushed {self.flushed}, "
                             f"seq {self.seq}")
        if not all(isinstance(r, EncodedOrder) for r in self.records):
            raise ValueError("records must be EncodedOrder records")


@dataclass(frozen=True, slots=True)
class ReplicaAck:
    """The passive node holds batch ``seq`` of ``term`` (and every one before it)."""

    epoch: int
    term: str
    seq: int

    def __post_init__(self) -> None:
        _check_count("epoch", self.epoch)
        check_id("term", self.term)
        _check_count("seq", self.seq)


@dataclass(frozen=True, slots=True)
class ReplicaRefused:
    """The passive node did not take batch ``seq``; ``epoch``: the highest it knows."""

    epoch: int
    term: str
    seq: int
    reason: RefuseReason

    def __post_init__(self) -> None:
        _check_count("epoch", self.epoch)
        check_id("term", self.term)
        _check_count("seq", self.seq)
        if not isinstance(self.reason, RefuseReason):
            raise ValueError(f"reason must be a RefuseReason, got {self.reason!r:.40}")


PairMessage = PeerHeartbeat | ReplicaBatch | ReplicaAck | ReplicaRefused


def encode_pair(msg: PairMessage) -> list[bytes]:
    """Frames ``[header, body]`` of any message of the pair's link."""
    match msg:
        case PeerHeartbeat():
            return encode_heartbeat(msg)
        case ReplicaBatch(epoch, term, seq, flushed, records, reset):
            return encode_envelope(PairKind.REPLICA_BATCH, {
                "epoch": epoch, "term": term, "seq": seq, "flushed": flushed, "reset": reset,
                "records": [[r.order_id, r.account, r.client_order_id, r.terminal, r.blob,
                             [[e.seq, e.blob, e.executed] for e in r.entries]]
                            for r in records]})
        case ReplicaAck(epoch, term, seq):
            return encode_envelope(PairKind.REPLICA_ACK,
                                   {"epoch": epoch, "term": term, "seq": seq})
        case ReplicaRefused(epoch, term, seq, reason):
            return encode_envelope(PairKind.REPLICA_REFUSED, {
                "epoch": epoch, "term": term, "seq": seq, "reason": int(reason)})


def decode_pair(frames: list[bytes] | tuple[bytes, ...]) -> PairMessage:
    """Decode any message of the pair's link; :class:`RemoteProtocolError` if malformed."""
    kind, d = decode_envelope(frames, PairKind, "pair", kind_label="pair ")
    try:
        return _decode(kind, d)
    except (KeyError, ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"bad {kind.name}: {type(exc).__name__} {exc}") from exc


def _decode(kind: PairKind, d: dict[str, Any]) -> PairMessage:
    if kind is PairKind.PEER_HEARTBEAT:
        return _heartbeat(d)
    if kind is PairKind.REPLICA_BATCH:
        records = _records(d["records"])
        reset = d["reset"]
        if not isinstance(reset, bool):
            raise ValueError(f"reset must be a boolean, got {reset!r:.40}")
        return ReplicaBatch(d["epoch"], d["term"], d["seq"], d["flushed"], records, reset)
    if kind is PairKind.REPLICA_ACK:
        return ReplicaAck(d["epoch"], d["term"], d["seq"])
    code = d["reason"]
    if type(code) is not int:
        raise ValueError(f"reason must be an integer, got {code!r:.40}")
    return ReplicaRefused(d["epoch"], d["term"], d["seq"], RefuseReason(code))


def _records(raw: object) -> tuple[EncodedOrder, ...]:
    """The records of a batch, checked but not decoded."""
    if not isinstance(raw, list):
        raise ValueError("records must be a list")
    out = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 6:
            raise ValueError("a record must be [order_id, account, client_order_id, terminal, "
                             "bin, entries]")
        order_id, account, coid, terminal, blob, entries = item
        for name, value in (("order_id", order_id), ("account", account),
                            ("client_order_id", coid)):
            check_id(name, value)
        if not isinstance(terminal, bool) or not isinstance(blob, bytes):
            raise ValueError("a record's terminal must be a boolean and its record bytes")
        out.append(EncodedOrder(order_id, account, coid, terminal, blob, _entries(entries)))
    return tuple(out)


def _entries(raw: object) -> tuple[EncodedEntry, ...]:
    """A record's log entries, checked but not decoded: consecutive positions from 1 up."""
    if not isinstance(raw, list):
        raise ValueError("a record's entries must be a list")
    out: list[EncodedEntry] = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            raise ValueError("an entry must be [seq, bin, executed]")
        seq, blob, executed = item
        if type(seq) is not int or seq < 1 or (out and seq != out[-1].seq + 1):
            raise ValueError(f"entry positions must be consecutive from 1 up, got {seq!r:.40}")
        if not isinstance(blob, bytes) or not isinstance(executed, str):
            raise ValueError("an entry's bin must be bytes and its exec id a string")
        out.append(EncodedEntry(seq, blob, executed))
    return tuple(out)


def encode_heartbeat(beat: PeerHeartbeat) -> list[bytes]:
    """Frames ``[header, body]`` of a heartbeat."""
    return encode_envelope(PairKind.PEER_HEARTBEAT,
                           {"state": STATE_CODES[beat.state], "epoch": beat.epoch})


def decode_heartbeat(frames: list[bytes] | tuple[bytes, ...]) -> PeerHeartbeat:
    """Decode a peer's heartbeat frames; :class:`RemoteProtocolError` if malformed."""
    msg = decode_pair(frames)
    if not isinstance(msg, PeerHeartbeat):
        raise RemoteProtocolError(f"a {type(msg).__name__} where a heartbeat belongs")
    return msg


def _heartbeat(d: dict[str, Any]) -> PeerHeartbeat:
    code = d["state"]
    if not isinstance(code, int) or isinstance(code, bool) or code not in _STATES:
        raise ValueError(f"unknown state code {code!r:.40}")
    return PeerHeartbeat(_STATES[code], d["epoch"])


__all__ = [
    "STATE_CODES",
    "PairKind",
    "PairMessage",
    "PeerHeartbeat",
    "RefuseReason",
    "ReplicaAck",
    "ReplicaBatch",
    "ReplicaRefused",
    "decode_heartbeat",
    "decode_pair",
    "encode_heartbeat",
    "encode_pair",
]
