"""The shared envelope: its byte layout, a table of malformed envelopes with the reason each
names, junk that never raises anything but RemoteProtocolError, and proof that the tick, order
and pair codecs all open their headers with it.
"""

from __future__ import annotations

import contextlib
from enum import IntEnum
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import RemoteProtocolError
from protocols.orders.codec import OrderKind, encode_order
from protocols.orders.messages import OrderPending
from protocols.ticks.codec import encode_header, encode_recovery
from protocols.ticks.messages import GapFillRequest, Kind
from protocols.wire import (
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    check_prefix,
    decode_envelope,
    encode_envelope,
    pack_body,
    pack_header,
)


class Color(IntEnum):
    RED = 7
    BLUE = 200


def test_header_is_magic_version_kind_in_four_bytes() -> None:
    assert (MAGIC, PROTOCOL_VERSION, HEADER_SIZE) == (b"TM", 1, 4)
    assert pack_header(Color.BLUE) == b"TM\x01\xc8"
    assert encode_envelope(Color.RED, {"a": 1, "b": b"\x00", "c": "é"}) == [
        b"TM\x01\x07", b"\x83\xa1a\x01\xa1b\xc4\x01\x00\xa1c\xa2\xc3\xa9"]


def test_round_trip() -> None:
    body = {"id": 2**63 - 1, "s": "é", "raw": b"\xff", "none": None, "list": [1.5, [2]]}
    kind, data = decode_envelope(encode_envelope(Color.BLUE, body), Color, "test")
    assert kind is Color.BLUE
    assert data == body
    assert decode_envelope(tuple(encode_envelope(Color.RED, {})), Color, "test") == (
        Color.RED, {})


def test_every_codec_opens_its_headers_with_the_envelope() -> None:
    """One layout on every path: a feed header's first four bytes are the envelope's."""
    feed = encode_header(Kind.TICKS, "EURUSD", 1, 1, 1)
    assert feed[:HEADER_SIZE] == pack_header(Kind.TICKS)
    assert encode_recovery(GapFillRequest(1, "EURUSD", 1, 2))[0] == pack_header(
        Kind.GAP_FILL_REQUEST)
    assert encode_order(OrderPending(1))[0] == pack_header(OrderKind.ORDER_PENDING)


GOOD = pack_body({"k": 1})

MALFORMED: list[Any] = [
    pytest.param([pack_header(Color.RED)], "test message of 1 frames, need 2", id="one-frame"),
    pytest.param([pack_header(Color.RED), GOOD, b""], "test message of 3 frames, need 2",
                 id="three-frames"),
    pytest.param([b"TM\x01", GOOD], "test header of 3 bytes", id="header-3-bytes"),
    pytest.param([b"TM\x01\x07\x00", GOOD], "test header of 5 bytes", id="header-5-bytes"),
    pytest.param([b"MT\x01\x07", GOOD], "bad magic b'MT'", id="bad-magic"),
    pytest.param([b"TM\x02\x07", GOOD], "unsupported protocol version 2", id="version-2"),
    pytest.param([b"TM\x00\x07", GOOD], "unsupported protocol version 0", id="version-0"),
    pytest.param([b"TM\x01\x08", GOOD], "unknown color kind 8", id="unknown-kind"),
    pytest.param([pack_header(Color.RED), b"\xc1"], "body is not msgpack", id="not-msgpack"),
    pytest.param([pack_header(Color.RED), GOOD + b"\x00"], "body is not msgpack",
                 id="trailing-bytes"),
    pytest.param([pack_header(Color.RED), pack_body({1: 2})], "body is not msgpack",
                 id="integer-key"),
    pytest.param([pack_header(Color.RED), msgpack.packb([1])], "body is not a map",
                 id="array-body"),
    pytest.param([pack_header(Color.RED), b""], "body is not msgpack", id="empty-body"),
]


@pytest.mark.parametrize("frames, reason", MALFORMED)
def test_malformed_envelopes_name_the_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_envelope(frames, Color, "test", kind_label="color ")
    assert reason in info.value.reason


@pytest.mark.parametrize("magic, version, reason", [
    (b"TM", 1, None), (b"tm", 1, "bad magic b'tm'"), (b"TM", 255, "unsupported protocol "
                                                                 "version 255")])
def test_check_prefix(magic: bytes, version: int, reason: str | None) -> None:
    if reason is None:
        check_prefix(magic, version)
        return
    with pytest.raises(RemoteProtocolError, match=reason):
        check_prefix(magic, version)


@given(st.lists(st.binary(max_size=40), max_size=3))
def test_junk_raises_only_remote_protocol_errors(frames: list[bytes]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_envelope(frames, Color, "test")


@given(st.sampled_from(Color), st.dictionaries(st.text(max_size=8),
                                               st.integers(0, 2**64 - 1) | st.text(max_size=8)))
def test_any_map_round_trips(kind: Color, body: dict[str, Any]) -> None:
    assert decode_envelope(encode_envelope(kind, body), Color, "test") == (kind, body)
