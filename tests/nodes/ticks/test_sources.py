"""Tick sources: the EA bridge's message parsing, CSV replay, and the simulator."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from nodes.ticks.sources import REASONS, EaBridge, RawTick, Replay, Simulator
from protocols.errors import ConfigError
from protocols.ticks.messages import check_row
from tests.support import scaled, wait_until

SYMBOLS = ("EURUSD", "GBPUSD")
_endpoints = itertools.count()


@pytest.fixture
def bridge() -> Iterator[EaBridge]:
    ctx = zmq.asyncio.Context()
    src = EaBridge(ctx, f"inproc://ea-bridge-test-{next(_endpoints)}", SYMBOLS)
    try:
        yield src
    finally:
        src.close()
        ctx.term()


def tick_map(**changes: Any) -> dict[str, Any]:
    base = {"symbol": "EURUSD", "bid": 1.0841, "ask": 1.0842, "last": 1.08415, "volume": 2.0,
            "time_msc": 1_732_450_000_123}
    return {k: v for k, v in {**base, **changes}.items() if v is not ...}


EXPECTED: RawTick = ("EURUSD", 1.0841, 1.0842, 1.08415, 2.0, 1_732_450_000_123_000_000)


# --- EA bridge -------------------------------------------------------------------------------


def test_msgpack_map(bridge: EaBridge) -> None:
    assert bridge.parse([msgpack.packb(tick_map())]) == [EXPECTED]
    assert (bridge.stats.accepted, bridge.stats.rejected) == (1, 0)


def test_json_map(bridge: EaBridge) -> None:
    assert bridge.parse([json.dumps(tick_map()).encode()]) == [EXPECTED]
    assert (bridge.stats.accepted, bridge.stats.rejected) == (1, 0)


@pytest.mark.parametrize("encode", [
    pytest.param(lambda d: json.dumps(d).encode(), id="json"),
    pytest.param(lambda d: json.dumps(d, indent=1).encode(), id="json-indented"),
    pytest.param(lambda d: b" " + json.dumps(d).encode(), id="json-leading-space"),
    pytest.param(msgpack.packb, id="msgpack"),
])
def test_batch_array(bridge: EaBridge, encode: Any) -> None:
    batch = [tick_map(), tick_map(symbol="GBPUSD", bid=1.27, ask=1.2702, time_msc=5),
             tick_map(bid=1.0843, ask=1.0844, time_msc=1_732_450_000_124)]
    out = bridge.parse([encode(batch)])
    assert [t[0] for t in out] == ["EURUSD", "GBPUSD", "EURUSD"]
    assert out[1] == ("GBPUSD", 1.27, 1.2702, 1.08415, 2.0, 5_000_000)
    assert out[2][5] == 1_732_450_000_124_000_000
    assert (bridge.stats.accepted, bridge.stats.rejected) == (3, 0)


@pytest.mark.parametrize("fields, expected_ns", [
    pytest.param({"time_msc": 1_732_450_000_123}, 1_732_450_000_123_000_000, id="time_msc"),
    pytest.param({"time_msc": 0}, 0, id="time_msc-0"),
    pytest.param({"time_ns": 1_732_450_000_123_456_789}, 1_732_450_000_123_456_789,
                 id="time_ns"),
    pytest.param({"time_ns": 7, "time_msc": 1}, 7, id="time_ns-wins"),
])
def test_time_conversion(bridge: EaBridge, fields: dict[str, int], expected_ns: int) -> None:
    item = {**tick_map(time_msc=...), **fields}
    (tick,) = bridge.parse([msgpack.packb(item)])
    assert tick[5] == expected_ns


def test_defaults_last_volume_and_time_of_arrival(bridge: EaBridge) -> None:
    before = time.time_ns()
    (tick,) = bridge.parse([msgpack.packb({"symbol": "EURUSD", "bid": 1.0, "ask": 1.5})])
    after = time.time_ns()
    assert tick[:5] == ("EURUSD", 1.0, 1.5, 0.0, 0.0)
    assert before <= tick[5] <= after


def test_integer_prices_are_accepted_as_floats(bridge: EaBridge) -> None:
    (tick,) = bridge.parse([json.dumps(tick_map(bid=150, ask=151, last=0, volume=3)).encode()])
    assert tick[1:5] == (150.0, 151.0, 0.0, 3.0)
    assert all(isinstance(v, float) for v in tick[1:5])


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _msgpack(doc: Any) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


# Every kind of invalid tick, as (id, the tick, the reason it is counted under), each sent both
# as msgpack and as JSON (docs/PROTOCOL.md section 9 lists the reasons).
INVALID_TICKS: list[tuple[str, Any, str]] = [
    ("unknown-symbol", tick_map(symbol="USDCHF"), "unknown symbol"),
    ("no-symbol", tick_map(symbol=...), "unknown symbol"),
    ("null-symbol", tick_map(symbol=None), "unknown symbol"),
    ("number-symbol", tick_map(symbol=7), "unknown symbol"),
    ("list-symbol", tick_map(symbol=["EURUSD"]), "unknown symbol"),
    ("map-symbol", tick_map(symbol={"a": 1}), "unknown symbol"),
    ("missing-bid", tick_map(bid=...), "bad bid"),
    ("string-ask", tick_map(ask="1.1"), "bad ask"),
    ("null-ask", tick_map(ask=None), "bad ask"),
    ("bool-bid", tick_map(bid=True), "bad bid"),
    ("negative-price", tick_map(bid=-1.0), "bad bid"),
    ("nan-bid", tick_map(bid=float("nan")), "bad bid"),
    ("infinite-ask", tick_map(ask=float("inf")), "bad ask"),
    ("string-last", tick_map(last="x"), "bad last"),
    ("negative-last", tick_map(last=-0.5), "bad last"),
    ("nan-volume", tick_map(volume=float("nan")), "bad volume"),
    ("negative-volume", tick_map(volume=-1), "bad volume"),
    ("crossed-quote", tick_map(bid=1.2, ask=1.1), "crossed quote"),
    ("float-time-msc", tick_map(time_msc=1.5), "bad time"),
    ("bool-time-msc", tick_map(time_msc=True), "bad time"),
    ("null-time-msc", tick_map(time_msc=None), "bad time"),
    ("string-time-ns", tick_map(time_ns="1"), "bad time"),
    ("bool-time-ns", tick_map(time_ns=False), "bad time"),
    ("float-time-ns", tick_map(time_ns=1e18), "bad time"),
    ("negative-time", tick_map(time_msc=-1), "bad time"),
    ("time-msc-beyond-u64-ns", tick_map(time_msc=2**64 // 1_000_000 + 1), "bad time"),
    ("number-element", [42], "tick is not a map"),  # JSON is an object or an array
    ("string-element", ["EURUSD"], "tick is not a map"),
    ("null-element", [None], "tick is not a map"),
    ("nested-batch", [[tick_map()]], "tick is not a map"),
]

# Messages that only one encoding can carry, and messages that do not decode at all.
INVALID_MESSAGES: list[tuple[str, list[bytes], str]] = [
    ("bin-symbol", [_msgpack({**tick_map(), "symbol": b"EURUSD"})], "unknown symbol"),
    ("bin-keys", [msgpack.packb({b"symbol": b"EURUSD", b"bid": 1.0, b"ask": 1.1},
                                use_bin_type=True)], "unknown symbol"),
    ("timestamp-ext-time", [_msgpack({**tick_map(time_msc=...),
                                      "time_ns": msgpack.Timestamp(1, 0)})], "bad time"),
    ("json-nan-literal", [b'{"symbol": "EURUSD", "bid": NaN, "ask": 1.0}'], "bad bid"),
    ("json-infinity-literal", [b'{"symbol": "EURUSD", "bid": 1.0, "ask": Infinity}'],
     "bad ask"),
    ("json-integer-beyond-float", [_json(tick_map(bid=10**400))], "bad bid"),
    ("json-time-msc-beyond-u64", [_json(tick_map(time_msc=10**30))], "bad time"),
    ("json-time-ns-beyond-u64", [_json(tick_map(time_msc=..., time_ns=2**64))], "bad time"),
    ("msgpack-not-a-map", [_msgpack(42)], "tick is not a map"),
    ("undecodable-msgpack", [b"\xc1"], "undecodable message"),
    ("msgpack-trailing-bytes", [_msgpack(tick_map()) + b"\x00"], "undecodable message"),
    ("truncated-msgpack", [_msgpack(tick_map())[:-4]], "undecodable message"),
    ("msgpack-int-keys", [_msgpack({1: 2})], "undecodable message"),
    ("broken-json", [b'{"symbol": "EURUSD", "bid": '], "undecodable message"),
    ("json-trailing-bytes", [_json(tick_map()) + b"x"], "undecodable message"),
    ("json-not-utf8", [b'{"symbol": "\xff"}'], "undecodable message"),
    ("json-deeply-nested", [b"[" * 100_000], "undecodable message"),
    ("json-vertical-tab-first", [b"\x0b" + _json(tick_map())], "undecodable message"),
    ("empty-message", [b""], "undecodable message"),
    ("whitespace-only", [b" \t\r\n"], "undecodable message"),
    ("two-frames", [b"EURUSD", _msgpack(tick_map())], "wrong frame count"),
    ("no-frames", [], "wrong frame count"),
]

REJECTED: list[tuple[str, list[bytes], str]] = [
    *((f"{name}-{enc.__name__[1:]}", [enc(doc)], reason)
      for name, doc, reason in INVALID_TICKS
      for enc in (_msgpack, _json)),
    *INVALID_MESSAGES,
]


@pytest.mark.parametrize("frames, reason",
                         [pytest.param(f, r, id=i) for i, f, r in REJECTED])
def test_rejected_and_counted_by_reason(bridge: EaBridge, frames: list[bytes],
                                        reason: str) -> None:
    assert reason in REASONS
    assert bridge.parse(frames) == []
    assert (bridge.stats.accepted, bridge.stats.rejected) == (0, 1)
    assert bridge.stats.reasons == {reason: 1}
    assert json.loads(json.dumps(bridge.stats.as_dict()))["reasons"] == {reason: 1}


def test_every_reason_is_exercised_by_the_table() -> None:
    assert {r for _i, _f, r in REJECTED} | {"bad CSV row"} == set(REASONS)


@pytest.mark.parametrize("tick, reason", [
    pytest.param(tick_map(symbol="USDCHF", bid=-1, time_msc=1.5), "unknown symbol", id="symbol"),
    pytest.param(tick_map(bid=..., ask="x", time_msc=True), "bad bid", id="bid-before-ask"),
    pytest.param(tick_map(volume=-1, time_msc=-1), "bad volume", id="volume-before-time"),
    pytest.param(tick_map(bid=2.0, ask=1.0, time_msc=1.5), "bad time", id="time-before-crossed"),
])
def test_a_tick_breaking_several_rules_counts_under_the_first(bridge: EaBridge, tick: Any,
                                                               reason: str) -> None:
    assert bridge.parse([_msgpack(tick)]) == []
    assert bridge.stats.reasons == {reason: 1}


@pytest.mark.parametrize("encode", [_msgpack, _json], ids=["msgpack", "json"])
def test_a_time_at_the_u64_edge_is_accepted(bridge: EaBridge, encode: Any) -> None:
    (tick,) = bridge.parse([encode(tick_map(time_msc=..., time_ns=2**64 - 1))])
    assert tick[5] == 2**64 - 1


@pytest.mark.parametrize("data", [
    pytest.param(b"\t" + _json(tick_map()), id="tab"),
    pytest.param(b"\r\n" + _json(tick_map()), id="crlf"),
    pytest.param(b"\n  " + _json([tick_map()]), id="lf-array"),
])
def test_json_after_any_ascii_whitespace_is_read(bridge: EaBridge, data: bytes) -> None:
    assert bridge.parse([data]) == [EXPECTED]


def test_a_bad_tick_in_a_batch_does_not_spoil_the_rest(bridge: EaBridge) -> None:
    batch = [tick_map(), tick_map(symbol="USDCHF"), tick_map(bid=...), tick_map(symbol="GBPUSD"),
             tick_map(bid=2.0, ask=1.0), "junk"]
    out = bridge.parse([json.dumps(batch).encode()])
    assert [t[0] for t in out] == ["EURUSD", "GBPUSD"]
    assert (bridge.stats.accepted, bridge.stats.rejected) == (2, 4)
    assert sum(bridge.stats.reasons.values()) == 4
    assert bridge.stats.reasons["crossed quote"] == 1


def test_stats_accumulate_over_messages(bridge: EaBridge) -> None:
    for i in range(3):
        bridge.parse([msgpack.packb(tick_map(time_msc=1_000 + i))])
    for _ in range(2):
        bridge.parse([msgpack.packb(tick_map(symbol="USDCHF"))])
    bridge.parse([b"\xc1"])
    assert (bridge.stats.accepted, bridge.stats.rejected) == (3, 3)
    assert bridge.stats.reasons == {"unknown symbol": 2, "undecodable message": 1}


def test_two_producers_publish_each_tick_once(bridge: EaBridge) -> None:
    """Two EA instances quoting one broker: first copy wins, one stream (PROTOCOL.md 9)."""
    ticks = [tick_map(bid=1.08 + i / 1e4, ask=1.0801 + i / 1e4, time_msc=1_000 + i)
             for i in range(10)]
    out: list[RawTick] = []
    out += bridge.parse([msgpack.packb(ticks[:6])])  # the active instance
    out += bridge.parse([msgpack.packb(ticks[:4])])  # the standby, behind it: all copies
    out += bridge.parse([msgpack.packb(ticks[4:])])  # the standby alone: the active died
    assert [t[5] // 1_000_000 for t in out] == list(range(1_000, 1_010))
    # 1000-1003 are behind the newest (1005) and 1004 too; 1005 is a copy of the newest.
    assert (bridge.stats.duplicates, bridge.stats.late) == (1, 5)
    assert bridge.stats.as_dict()["late"] == 5
    untimed = tick_map(time_msc=...)
    assert len(bridge.parse([msgpack.packb([untimed, untimed])])) == 2  # stamped on arrival


def test_bridge_receives_from_a_push_socket() -> None:
    async def main() -> list[RawTick]:
        ctx = zmq.asyncio.Context()
        src = EaBridge(ctx, "tcp://127.0.0.1:0", SYMBOLS)
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        try:
            assert src.endpoint.startswith("tcp://127.0.0.1:")
            push.connect(src.endpoint)
            await push.send(msgpack.packb(tick_map()))
            await push.send(json.dumps([tick_map(symbol="GBPUSD"), tick_map(bid=...)]).encode())
            got: list[RawTick] = []
            batches = src.batches()

            async def both() -> bool:
                async with asyncio.timeout(scaled(5)):  # a batch that never comes
                    got.extend(await anext(batches))
                return len(got) >= 2
            await wait_until(both, 5, "both ticks")
            await batches.aclose()  # type: ignore[attr-defined]
            return got
        finally:
            push.close(linger=0)
            src.close()
            ctx.term()

    got = asyncio.run(main())
    assert [t[0] for t in got] == ["EURUSD", "GBPUSD"]


# --- CSV replay ------------------------------------------------------------------------------

CSV = """symbol,bid,ask,last,volume,time_msc
EURUSD,1.0841,1.0842,0,1,1732450000000
GBPUSD,1.2700,1.2702,,,1732450000010
EURUSD,oops,1.0843,0,1,1732450000020
EURUSD,1.0842,1.0843,1.08425,2.5,1732450000030
"""


def run_replay(src: Replay) -> list[list[RawTick]]:
    async def collect() -> list[list[RawTick]]:
        out: list[list[RawTick]] = []
        async with asyncio.timeout(scaled(10)):
            async for b in src.batches():
                out.append(b)
        return out

    return asyncio.run(collect())


def test_replay_csv_as_fast_as_possible(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(CSV, encoding="utf-8")
    src = Replay(path, SYMBOLS, speed=0)
    ticks = [t for b in run_replay(src) for t in b]
    assert ticks == [
        ("EURUSD", 1.0841, 1.0842, 0.0, 1.0, 1_732_450_000_000_000_000),
        ("GBPUSD", 1.27, 1.2702, 0.0, 0.0, 1_732_450_000_010_000_000),
        ("EURUSD", 1.0842, 1.0843, 1.08425, 2.5, 1_732_450_000_030_000_000),
    ]
    assert (src.stats.accepted, src.stats.rejected) == (3, 1)
    assert src.stats.reasons == {"bad CSV row": 1}


def test_replay_rejects_unknown_symbols_and_crossed_quotes(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text("symbol,bid,ask,time_ns\nUSDCHF,1,2,5\nEURUSD,2,1,6\nEURUSD,1,2,7\n",
                    encoding="utf-8")
    src = Replay(path, SYMBOLS, speed=0)
    ticks = [t for b in run_replay(src) for t in b]
    assert ticks == [("EURUSD", 1.0, 2.0, 0.0, 0.0, 7)]
    assert (src.stats.accepted, src.stats.rejected) == (1, 2)
    assert src.stats.reasons["crossed quote"] == 1


def test_replay_paces_by_recorded_time(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    # 1 s apart at speed 20: the second tick is due 50 ms after the first.
    path.write_text("symbol,bid,ask,time_msc\nEURUSD,1,2,1000\nEURUSD,1,2,2000\n",
                    encoding="utf-8")
    t0 = time.monotonic()
    batches = run_replay(Replay(path, SYMBOLS, speed=20))
    assert time.monotonic() - t0 >= 0.045
    assert [len(b) for b in batches] == [1, 1]


def test_replay_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Replay(tmp_path / "nope.csv", SYMBOLS)
    assert info.value.key == "feeds.file"
    assert "does not exist" in str(info.value)


def test_replay_csv_without_required_columns_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text("symbol,price\nEURUSD,1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        run_replay(Replay(path, SYMBOLS, speed=0))
    assert "['ask', 'bid']" in str(info.value)


# --- simulator -------------------------------------------------------------------------------


def test_simulator_rate_round_robin_and_valid_rows() -> None:
    symbols = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "NEWSYM"]
    rate, duration = 5000.0, 0.2

    async def run() -> tuple[list[RawTick], float]:
        sim = Simulator(symbols, rate=rate, seed=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out: list[RawTick] = []
        async with asyncio.timeout(scaled(5)):
            async for batch in sim.batches():
                out.extend(batch)
                if loop.time() - t0 >= duration:
                    sim.close()
        return out, loop.time() - t0

    ticks, elapsed = asyncio.run(run())
    expected = rate * elapsed
    assert 0.5 * expected <= len(ticks) <= expected + 2, (len(ticks), expected)
    assert [t[0] for t in ticks] == [symbols[i % len(symbols)] for i in range(len(ticks))]
    for sym, bid, ask, last, vol, t in ticks:
        check_row((bid, ask, last, vol, t, 0))
        assert 0 < bid < ask, (sym, bid, ask)
        assert bid <= last <= ask
    start = {t[0]: t[1] for t in reversed(ticks)}  # first bid of each symbol
    assert 1.0 < start["EURUSD"] < 1.2 and 2000 < start["XAUUSD"] < 3000
    assert 90 < start["NEWSYM"] < 110
