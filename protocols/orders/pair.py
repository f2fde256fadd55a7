"""The backend pair's heartbeat: what each node of the binary-star pair tells the other.

Each backend publishes a :class:`PeerHeartbeat` (its :class:`~protocols.orders.binary_star.State`
and the highest epoch it knows) every ``heartbeat_ms`` on its "peer" PUB socket; the other node
hands it to ``BinaryStar.on_peer``. On the wire it is the envelope of :mod:`protocols.wire`
(docs/PROTOCOL.md section 15)::

    [magic "TM" | version 1 | kind 64, msgpack map {"state": int, "epoch": int}]

States travel as the fixed codes of :data:`STATE_CODES`, not as the enum's names, so renaming
a state in the code never changes the wire. Decoding is strict: anything malformed raises
:class:`RemoteProtocolError` naming the reason; unknown keys are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from protocols.errors import RemoteProtocolError
from protocols.orders.binary_star import State
from protocols.wire import decode_envelope, encode_envelope

MAX_EPOCH = 2**63 - 1  # a Redis integer


class PairKind(IntEnum):
    """Kinds of the backend pair's own socket (64..71: never a tick or an order kind)."""

    PEER_HEARTBEAT = 64


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


def encode_heartbeat(beat: PeerHeartbeat) -> list[bytes]:
    """Frames ``[header, body]`` of a heartbeat."""
    return encode_envelope(PairKind.PEER_HEARTBEAT,
                           {"state": STATE_CODES[beat.state], "epoch": beat.epoch})


def decode_heartbeat(frames: list[bytes] | tuple[bytes, ...]) -> PeerHeartbeat:
    """Decode a peer's heartbeat frames; :class:`RemoteProtocolError` if malformed."""
    _kind, d = decode_envelope(frames, PairKind, "pair", kind_label="pair ")
    try:
        code = d["state"]
        if not isinstance(code, int) or isinstance(code, bool) or code not in _STATES:
            raise ValueError(f"unknown state code {code!r:.40}")
        return PeerHeartbeat(_STATES[code], d["epoch"])
    except (KeyError, ValueError) as exc:
        raise RemoteProtocolError(f"bad PEER_HEARTBEAT: {type(exc).__name__} {exc}") from exc


__all__ = [
    "STATE_CODES",
    "PairKind",
    "PeerHeartbeat",
    "decode_heartbeat",
    "encode_heartbeat",
]
