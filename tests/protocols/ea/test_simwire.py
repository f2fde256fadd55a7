"""The simulated terminal's codec: every message round-trips, every malformed frame is refused
with a reason that names the problem."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.ea.mt5 import (
    Action,
    DealEntry,
    DealType,
    Filling,
    OrderSendResult,
    OrderStateMt5,
    OrderType,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)
from protocols.ea.simwire import (
    MAX_ID,
    MAX_TICKS,
    CopyTicksFrom,
    ErrorReply,
    HistoryDealsGet,
    HistoryOrdersGet,
    Initialize,
    OrderSend,
    OrdersGet,
    PositionsGet,
    Reply,
    Shutdown,
    SimKind,
    SimMessage,
    SymbolInfoTick,
    Symbols,
    decode_sim,
    encode_sim,
    pack_record,
    request_id_of,
    unpack_record,
)
from protocols.errors import RemoteProtocolError
from protocols.wire import encode_envelope

TICK = Tick(1_732_450_000_123, 1.0841, 1.0842, 1.08415, 2.0)
REQUEST = TradeRequest(Action.PENDING, "EURUSD", 0.5, OrderType.SELL_LIMIT, 1.1, 10,
                       Filling.RETURN, 2**63 - 1, "order-1", 0)
ORDER = TradeOrder(7, 1_732_450_000_000, OrderType.BUY_LIMIT, OrderStateMt5.PARTIAL, 42, 1.0,
                   0.4, 1.08, "EURUSD", "order-2", 0)
POSITION = TradePosition(7, "EURUSD", OrderType.BUY, 0.6, 1.08, 42)
DEAL = TradeDeal(8, 7, 1_732_450_000_001, DealType.BUY, DealEntry.IN, 42, 0.6, 1.08, "EURUSD",
                 "order-2")
RESULT = OrderSendResult(10010, 8, 7, 0.6, 1.08, 1.0841, 1.0842, "Request executed partially")

ROUND_TRIPS: list[SimMessage] = [
    Initialize(1), Shutdown(2), Symbols(3), SymbolInfoTick(4, "EURUSD"),
    CopyTicksFrom(5, "EURUSD", 1_732_450_000_000, MAX_TICKS), OrderSend(6, REQUEST),
    OrdersGet(7), PositionsGet(8), HistoryOrdersGet(9, 0, 2**63), HistoryDealsGet(MAX_ID, 5, 6),
    Reply(1, SimKind.INITIALIZE, None), Reply(2, SimKind.SHUTDOWN, None),
    Reply(3, SimKind.SYMBOLS, ("EURUSD", "XAUUSD")), Reply(4, SimKind.SYMBOL_INFO_TICK, TICK),
    Reply(4, SimKind.SYMBOL_INFO_TICK, None), Reply(5, SimKind.COPY_TICKS_FROM, (TICK, TICK)),
    Reply(5, SimKind.COPY_TICKS_FROM, ()), Reply(6, SimKind.ORDER_SEND, RESULT),
    Reply(7, SimKind.ORDERS_GET, (ORDER,)), Reply(8, SimKind.POSITIONS_GET, (POSITION,)),
    Reply(9, SimKind.HISTORY_ORDERS_GET, (ORDER, ORDER)),
    Reply(10, SimKind.HISTORY_DEALS_GET, (DEAL,)), ErrorReply(0, "bad magic b'XX'"),
    ErrorReply(11, "unknown symbol 'NOSUCH'"),
]


@pytest.mark.parametrize("msg", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: SimMessage) -> None:
    frames = encode_sim(msg)
    assert len(frames) == 2 and frames[0][:2] == b"TM"
    assert decode_sim(frames) == msg


def test_kinds_are_the_sections_range() -> None:
    assert all(120 <= k <= 139 for k in SimKind)


@pytest.mark.parametrize("record", [TICK, REQUEST, ORDER, POSITION, DEAL, RESULT],
                         ids=lambda r: type(r).__name__)
def test_records_travel_as_arrays_of_their_fields(record: Any) -> None:
    raw = pack_record(record)
    assert isinstance(raw, list) and all(not hasattr(v, "name") for v in raw)  # enums as ints
    assert unpack_record(type(record), raw) == record


def frames_of(kind: int, body: Any) -> list[bytes]:
    return [encode_envelope(kind, {})[0], msgpack.packb(body, use_bin_type=True)]


ORDER_RAW = pack_record(ORDER)
MALFORMED: list[tuple[str, list[bytes], str]] = [
    ("one frame", encode_sim(Symbols(1))[:1], "of 1 frames"),
    ("bad magic", [b"XX\x01\x7a", msgpack.packb({"id": 1})], "bad magic"),
    ("unknown kind", frames_of(130, {"id": 1}), "unknown terminal kind 130"),
    ("not msgpack", [encode_sim(Symbols(1))[0], b"\xc1"], "not msgpack"),
    ("no id", frames_of(SimKind.SYMBOLS, {}), "id must be"),
    ("id 0 of a request", frames_of(SimKind.SYMBOLS, {"id": 0}), "id must be"),
    ("id too large", frames_of(SimKind.SYMBOLS, {"id": 2**63}), "id must be"),
    ("bool id", frames_of(SimKind.ORDERS_GET, {"id": True}), "id must be"),
    ("symbol not a string", frames_of(SimKind.SYMBOL_INFO_TICK, {"id": 1, "symbol": 3}),
     "symbol must be a string"),
    ("negative from", frames_of(SimKind.COPY_TICKS_FROM,
                                {"id": 1, "symbol": "A", "from_msc": -1, "count": 1}),
     "from_msc must be an integer"),
    ("count too large", frames_of(SimKind.COPY_TICKS_FROM, {"id": 1, "symbol": "A",
                                                            "from_msc": 0,
                                                            "count": MAX_TICKS + 1}),
     "count 100001 above"),
    ("request not an array", frames_of(SimKind.ORDER_SEND, {"id": 1, "request": {}}),
     "TradeRequest must be an array of 10 fields"),
    ("request short", frames_of(SimKind.ORDER_SEND, {"id": 1,
                                                     "request": pack_record(REQUEST)[:9]}),
     "TradeRequest must be an array of 10 fields"),
    ("unknown action", frames_of(SimKind.ORDER_SEND,
                                 {"id": 1, "request": [99, *pack_record(REQUEST)[1:]]}),
     "unknown TradeRequest.action 99"),
    ("volume a string", frames_of(SimKind.ORDER_SEND, {"id": 1, "request": [
        5, "EURUSD", "1", *pack_record(REQUEST)[3:]]}), "TradeRequest.volume must be a finite"),
    ("volume NaN", frames_of(SimKind.ORDER_SEND, {"id": 1, "request": [
        5, "EURUSD", float("nan"), *pack_record(REQUEST)[3:]]}), "volume must be a finite"),
    ("history without to", frames_of(SimKind.HISTORY_DEALS_GET, {"id": 1, "from_msc": 0}),
     "to_msc must be"),
    ("reply of an unknown kind", frames_of(SimKind.REPLY, {"id": 1, "of": 99, "result": None}),
     "unknown of 99"),
    ("reply of a reply", frames_of(SimKind.REPLY, {"id": 1, "of": int(SimKind.REPLY),
                                                   "result": None}),
     "cannot answer REPLY"),
    ("INITIALIZE result not nil", frames_of(SimKind.REPLY, {"id": 1, "of": 120, "result": 1}),
     "must be nil"),
    ("SYMBOLS result a map", frames_of(SimKind.REPLY, {"id": 1, "of": 122, "result": {}}),
     "must be an array"),
    ("an order's state unknown", frames_of(SimKind.REPLY, {"id": 1, "of": 126, "result": [
        [*ORDER_RAW[:3], 9, *ORDER_RAW[4:]]]}), "unknown TradeOrder.state 9"),
    ("a deal array too long", frames_of(SimKind.REPLY, {"id": 1, "of": 129,
                                                        "result": [[*pack_record(DEAL), 0]]}),
     "TradeDeal must be an array of 10"),
    ("ticket negative", frames_of(SimKind.REPLY, {"id": 1, "of": 126, "result": [
        [-1, *ORDER_RAW[1:]]]}), "TradeOrder.ticket must be an integer >= 0"),
    ("error without message", frames_of(SimKind.ERROR, {"id": 0}), "message must be"),
]


@pytest.mark.parametrize(("frames", "reason"), [(f, r) for _, f, r in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_frames_raise_naming_the_problem(frames: list[bytes], reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason.replace("(", r"\(")):
        decode_sim(frames)


@pytest.mark.parametrize(("frames", "expected"), [
    ([*encode_sim(OrderSend(77, REQUEST))[:1], msgpack.packb({"id": 77, "request": 1})], 77),
    (frames_of(SimKind.SYMBOLS, {"id": "x"}), 0),
    ([b"junk"], 0),
])
def test_the_id_of_a_malformed_request_is_read_when_it_can_be(frames: list[bytes],
                                                               expected: int) -> None:
    assert request_id_of(frames) == expected


_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
            | st.text(max_size=6))
_arrays = st.lists(_scalars, max_size=12)  # as long as a record, so field checks are reached
_values = _scalars | _arrays | st.lists(_arrays, max_size=3) | st.dictionaries(
    st.text(max_size=4), _scalars, max_size=2)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([*SimKind, 0, 200]), body=st.dictionaries(
    st.sampled_from(["id", "of", "result", "symbol", "from_msc", "to_msc", "count", "request",
                     "message"]), _values, max_size=5))
def test_any_body_decodes_or_raises_remote_protocol_error(kind: int, body: dict[str, Any]
                                                          ) -> None:
    # The terminal answers whatever arrives; any other exception would end its serve task.
    frames = frames_of(kind, body)
    with contextlib.suppress(RemoteProtocolError):
        decode_sim(frames)
    assert isinstance(request_id_of(frames), int)
