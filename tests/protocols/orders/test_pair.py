"""The pair heartbeat codec: round trips of every state, the byte layout, fixed codes, a table
of malformed frames with the reason each names, and junk that raises only RemoteProtocolError.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import RemoteProtocolError
from protocols.orders.binary_star import State
from protocols.orders.codec import EncodedEntry, EncodedOrder, OrderKind
from protocols.orders.lifecycle import OrderState as S
from protocols.orders.pair import (
    STATE_CODES,
    PairKind,
    PairMessage,
    PeerHeartbeat,
    RefuseReason,
    ReplicaAck,
    ReplicaBatch,
    ReplicaRefused,
    decode_heartbeat,
    decode_pair,
    encode_heartbeat,
    encode_pair,
)
from protocols.ticks.messages import Kind
from tests.protocols.orders import builders


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.name)
@pytest.mark.parametrize("epoch", [0, 1, 2**63 - 1])
def test_round_trip(state: State, epoch: int) -> None:
    beat = PeerHeartbeat(state, epoch)
    frames = encode_heartbeat(beat)
    assert decode_heartbeat(frames) == beat
    assert decode_heartbeat(tuple(frames)) == beat


def test_layout_is_the_envelope_with_kind_64_and_a_two_key_map() -> None:
    assert encode_heartbeat(PeerHeartbeat(State.ACTIVE, 7)) == [
        b"TM\x01\x40", b"\x82\xa5state\x04\xa5epoch\x07"]


def test_state_codes_are_fixed_and_cover_every_state() -> None:
    assert {s.name: c for s, c in STATE_CODES.items()} == {
        "PRIMARY": 1, "BACKUP": 2, "TAKING_OVER": 3, "ACTIVE": 4, "PASSIVE": 5}
    assert set(STATE_CODES) == set(State)


def test_pair_kinds_never_collide_with_tick_or_order_kinds() -> None:
    assert {k.name: int(k) for k in PairKind} == {"PEER_HEARTBEAT": 64, "REPLICA_BATCH": 65,
                                                  "REPLICA_ACK": 66, "REPLICA_REFUSED": 67}
    assert all(64 <= k <= 71 for k in PairKind)
    assert not {int(k) for k in PairKind} & ({int(k) for k in Kind} | {int(k) for k in OrderKind})


def test_unknown_keys_are_ignored() -> None:
    body = msgpack.packb({"state": 5, "epoch": 3, "later": [1, 2]})
    assert decode_heartbeat([b"TM\x01\x40", body]) == PeerHeartbeat(State.PASSIVE, 3)


def _beat(**body: Any) -> list[bytes]:
    return [b"TM\x01\x40", msgpack.packb(body)]


MALFORMED: list[Any] = [
    pytest.param([b"active", b"1"], "pair header of 6 bytes", id="legacy-text-frames"),
    pytest.param([b"TM\x01\x40"], "pair message of 1 frames, need 2", id="one-frame"),
    pytest.param([b"TM\x02\x40", msgpack.packb({"state": 4, "epoch": 1})],
                 "unsupported protocol version 2", id="version-2"),
    pytest.param([b"TM\x01\x20", msgpack.packb({"state": 4, "epoch": 1})],
                 "unknown pair kind 32", id="an-order-kind"),
    pytest.param([b"TM\x01\x40", b"\xc1"], "body is not msgpack", id="not-msgpack"),
    pytest.param(_beat(epoch=1), "KeyError 'state'", id="no-state"),
    pytest.param(_beat(state=4), "KeyError 'epoch'", id="no-epoch"),
    pytest.param(_beat(state=0, epoch=1), "unknown state code 0", id="state-0"),
    pytest.param(_beat(state=6, epoch=1), "unknown state code 6", id="state-6"),
    pytest.param(_beat(state="active", epoch=1), "unknown state code 'active'",
                 id="state-as-name"),
    pytest.param(_beat(state=True, epoch=1), "unknown state code True", id="state-bool"),
    pytest.param(_beat(state=4, epoch=-1), "epoch must be an integer", id="epoch-negative"),
    pytest.param(_beat(state=4, epoch=2**63), "epoch must be an integer", id="epoch-2^63"),
    pytest.param(_beat(state=4, epoch=1.0), "epoch must be an integer", id="epoch-float"),
    pytest.param(_beat(state=4, epoch="1"), "epoch must be an integer", id="epoch-text"),
    pytest.param(_beat(state=4, epoch=None), "epoch must be an integer", id="epoch-nil"),
]


@pytest.mark.parametrize("frames, reason", MALFORMED)
def test_malformed_heartbeats_name_the_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_heartbeat(frames)
    assert reason in info.value.reason


@pytest.mark.parametrize("state, epoch", [("active", 1), (State.ACTIVE, -1),
                                          (State.ACTIVE, True)])
def test_a_heartbeat_validates_on_construction(state: Any, epoch: Any) -> None:
    with pytest.raises(ValueError):
        PeerHeartbeat(state, epoch)


@given(st.lists(st.binary(max_size=24), max_size=3))
def test_junk_raises_only_remote_protocol_errors(frames: list[bytes]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_heartbeat(frames)


@given(st.dictionaries(st.sampled_from(["state", "epoch", "x"]),
                       st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                       | st.floats() | st.text()))
def test_any_map_decodes_or_names_its_fault(body: dict[str, Any]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_heartbeat([b"TM\x01\x40", msgpack.packb(body)])


# --- replication messages ---------------------------------------------------------------------


def _record(order_id: str = "o-1", coid: str = "c-1", entries: int = 0) -> EncodedOrder:
    """A record; with ``entries``, filled that many times, carrying those log entries."""
    rec = replace(builders.order(), order_id=order_id,
                  order=replace(builders.new(), client_order_id=coid), state=S.ROUTED)
    log: list[EncodedEntry] = []
    for seq in range(1, entries + 1):
        entry = rec.fill_report(0.01, 1.1, seq=seq, exec_id=f"{order_id}:{seq}")
        rec = rec.apply(entry, epoch=rec.epoch, now_ns=seq)
        log.append(EncodedEntry.of(entry))
    return EncodedOrder.of(rec, tuple(log))


REPLICATION_MESSAGES = [
    ReplicaBatch(3, "t1", 1, 0, ()),
    ReplicaBatch(3, "t1", 7, 5, (_record("a"), _record("b", "c-2", entries=2)), reset=True),
    ReplicaAck(3, "t1", 7),
    *(ReplicaRefused(9, "t1", 2, reason) for reason in RefuseReason),
]


@pytest.mark.parametrize("msg", REPLICATION_MESSAGES, ids=lambda m: type(m).__name__)
def test_replication_messages_round_trip(msg: PairMessage) -> None:
    got = decode_pair(encode_pair(msg))
    assert got == msg
    if isinstance(msg, ReplicaBatch):  # the records decode to what was encoded
        assert isinstance(got, ReplicaBatch)
        assert [r.decode() for r in got.records] == [r.decode() for r in msg.records]
        assert [[e.decode() for e in r.entries] for r in got.records] == [
            [e.decode() for e in r.entries] for r in msg.records]


def test_an_encoded_record_that_names_other_keys_does_not_decode() -> None:
    r = _record("o-1", "c-1")
    forged = EncodedOrder("o-2", r.account, r.client_order_id, False, r.blob)
    with pytest.raises(RemoteProtocolError, match="names other keys"):
        forged.decode()


def test_a_heartbeat_is_a_pair_message_and_a_batch_is_no_heartbeat() -> None:
    beat = PeerHeartbeat(State.PASSIVE, 4)
    assert decode_pair(encode_pair(beat)) == beat
    with pytest.raises(RemoteProtocolError, match="where a heartbeat belongs"):
        decode_heartbeat(encode_pair(ReplicaAck(1, "t", 1)))


def _batch_body(**changes: Any) -> list[bytes]:
    r = _record()
    body: dict[str, Any] = {"epoch": 1, "term": "t", "seq": 2, "flushed": 1, "reset": False,
                            "records": [[r.order_id, r.account, r.client_order_id, False,
                                         r.blob, []]]}
    body.update(changes)
    return [b"TM\x01\x41", msgpack.packb(body)]


@pytest.mark.parametrize(("changes", "reason"), [
    ({"seq": 0}, "flushed < seq"),
    ({"flushed": 2}, "flushed < seq"),
    ({"epoch": -1}, "epoch must be"),
    ({"term": ""}, "term"),
    ({"reset": 1}, "reset must be a boolean"),
    ({"records": "x"}, "records must be a list"),
    ({"records": [b"junk"]}, "a record must be"),
    ({"records": [["o", "a", "c", False, b"x"]]}, "a record must be"),
    ({"records": [["o", "a", "c", 1, b"x", []]]}, "terminal must be a boolean"),
    ({"records": [["o", "a", "", False, b"x", []]]}, "client_order_id"),
    ({"records": [["o", "a", "c", False, b"x", "e"]]}, "entries must be a list"),
    ({"records": [["o", "a", "c", False, b"x", [[1, b"e"]]]]}, "an entry must be"),
    ({"records": [["o", "a", "c", False, b"x", [[0, b"e", ""]]]]}, "consecutive from 1"),
    ({"records": [["o", "a", "c", False, b"x", [[2, b"e", ""], [4, b"e", ""]]]]},
     "consecutive from 1"),
    ({"records": [["o", "a", "c", False, b"x", [[1, "e", ""]]]]}, "bin must be bytes"),
])
def test_malformed_batches_name_their_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_pair(_batch_body(**changes))


def test_a_refusal_with_an_unknown_reason_is_malformed() -> None:
    body = msgpack.packb({"epoch": 1, "term": "t", "seq": 1, "reason": 99})
    with pytest.raises(RemoteProtocolError, match="REPLICA_REFUSED"):
        decode_pair([b"TM\x01\x43", body])
