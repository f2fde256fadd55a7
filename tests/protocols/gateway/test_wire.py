"""The gateway's WebSocket protocol: client frames, stream names, server frames (tables)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import BadRequest, RemoteProtocolError
from protocols.gateway.wire import (
    Cancel,
    Hello,
    Ping,
    Place,
    Position,
    Replace,
    StreamKind,
    StreamName,
    Subscribe,
    Unsubscribe,
    bar_item,
    batch_frame,
    decode_client,
    frame,
    parse_stream,
    tick_item,
)
from protocols.history.bars import Bar

SYMBOLS = ("EURUSD", "USDJPY")
MAX = 65_536


@pytest.mark.parametrize(("name", "kind", "symbol", "res_s"), [
    ("ticks:EURUSD", StreamKind.TICKS, "EURUSD", 0),
    ("bars:EURUSD:1", StreamKind.BARS, "EURUSD", 60),
    ("bars:USDJPY:1S", StreamKind.BARS, "USDJPY", 1),
    ("bars:USDJPY:1d", StreamKind.BARS, "USDJPY", 86_400),
    ("orders", StreamKind.ORDERS, "", 0),
    ("status", StreamKind.STATUS, "", 0),
])
def test_stream_names_parse_and_print(name: str, kind: StreamKind, symbol: str,
                                      res_s: int) -> None:
    s = parse_stream(name, SYMBOLS)
    assert s == StreamName(kind, symbol, res_s)
    assert parse_stream(s.name, SYMBOLS) == s


@pytest.mark.parametrize(("name", "code"), [
    ("ticks:GBPUSD", "unknown_stream"),
    ("bars:EURUSD:7", "unknown_stream"),
    ("bars:GBPUSD:1", "unknown_stream"),
    ("bars:EURUSD", "unknown_stream"),
    ("ticks:", "unknown_stream"),
    ("orders:x", "unknown_stream"),
    ("quotes:EURUSD", "unknown_stream"),
    ("", "bad_request"),
    (7, "bad_request"),
    ("x" * 200, "bad_request"),
])
def test_unknown_streams_are_named_errors(name: object, code: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_stream(name, SYMBOLS)
    assert err.value.code == code
    assert not err.value.fatal


@pytest.mark.parametrize(("frame_", "expected"), [
    ({"op": "hello", "v": 1, "token": "t", "streams": {"orders": [3, 9]}},
     Hello("t", {"orders": Position(3, 9)})),
    ({"op": "hello", "v": 1, "token": "t", "client": "page"}, Hello("t", {}, "page")),
    ({"op": "subscribe", "id": 1, "stream": "ticks:EURUSD"}, Subscribe(1, "ticks:EURUSD")),
    ({"op": "subscribe", "id": 2, "stream": "orders", "from": [1, 5]},
     Subscribe(2, "orders", Position(1, 5))),
    ({"op": "unsubscribe", "id": 3, "stream": "orders"}, Unsubscribe(3, "orders")),
    ({"op": "place", "id": 4, "order": {"symbol": "EURUSD"}}, Place(4, {"symbol": "EURUSD"})),
    ({"op": "ping", "t": 12.5}, Ping(12.5)),
])
def test_client_frames_decode(frame_: dict[str, object], expected: object) -> None:
    assert decode_client(json.dumps(frame_), MAX) == expected


def test_cancel_and_replace_keep_their_whole_body() -> None:
    body = {"op": "cancel", "id": 5, "account": "A", "client_order_id": "c2", "target": "c1"}
    msg = decode_client(json.dumps(body), MAX)
    assert isinstance(msg, Cancel) and msg.body["target"] == "c1"
    body["op"] = "replace"
    assert isinstance(decode_client(json.dumps(body), MAX), Replace)


@pytest.mark.parametrize(("text", "code", "fatal"), [
    ("{", "bad_json", False),
    ("[" * 100_000, "too_big", True),
    ("[1]", "bad_request", False),
    ('{"op": "dance"}', "bad_request", False),
    ('{"op": "subscribe", "stream": "orders"}', "bad_request", False),
    ('{"op": "subscribe", "id": -1, "stream": "orders"}', "bad_request", False),
    ('{"op": "subscribe", "id": true, "stream": "orders"}', "bad_request", False),
    ('{"op": "subscribe", "id": 1, "stream": "orders", "from": [1]}', "bad_request", False),
    ('{"op": "subscribe", "id": 1, "stream": "orders", "from": [1, -2]}', "bad_request",
     False),
    ('{"op": "place", "id": 1, "order": "buy"}', "bad_request", False),
    ('{"op": "ping", "t": "now"}', "bad_request", False),
    ('{"op": "hello", "v": 2, "token": "t"}', "bad_hello", True),
    ('{"op": "hello", "v": 1}', "auth", True),
    ('{"op": "hello", "v": 1, "token": "t", "streams": []}', "bad_hello", True),
])
def test_bad_frames_are_named_errors(text: str, code: str, fatal: bool) -> None:
    with pytest.raises(BadRequest) as err:
        decode_client(text, MAX)
    assert (err.value.code, err.value.fatal) == (code, fatal)
    assert isinstance(err.value, RemoteProtocolError)  # the peer's fault: counted, not a crash


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    with pytest.raises(BadRequest) as err:
        decode_client("[" * 60_000 + "]" * 60_000, 10**6)
    assert err.value.code == "bad_json"


@given(st.text(max_size=200))
def test_any_text_decodes_or_is_a_bad_request(text: str) -> None:
    with contextlib.suppress(BadRequest):
        decode_client(text, MAX)


def test_items_and_batches_are_json() -> None:
    bar = Bar("EURUSD", 60, 120 * 10**9, 1.1, 1.2, 1.0, 1.15, 3.0, 4, 10, 13)
    items = [tick_item("ticks:EURUSD", 7, 13, 1.1, 1.2, 0.0, 0.0, 5_000_000, 6_000, 2),
             bar_item("bars:EURUSD:1", 7, bar, False)]
    got = json.loads(batch_frame(99, items))
    assert got["op"] == "batch" and got["t"] == 99
    tick, b = got["items"]
    assert tick == {"stream": "ticks:EURUSD", "epoch": 7, "seq": 13, "kind": "tick",
                    "bid": 1.1, "ask": 1.2, "last": 0.0, "volume": 0.0, "ts": 5, "ft": 6,
                    "n": 2}
    assert b["time"] == 120 and b["seq"] == 13 and b["closed"] is False
    assert json.loads(frame("pong", t=1)) == {"op": "pong", "t": 1}
