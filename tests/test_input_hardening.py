"""Failing tests for product bugs found while writing the suites (not committed)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import zmq.asyncio

from bus.config import parse_config
from nodes.ticks.sources import EaBridge
from protocols.errors import ConfigError
from protocols.ticks.messages import GapFillReply, Tick


# nodes/ticks/sources.py:73 (_Validator.check) and :262 (EaBridge.parse)
@pytest.mark.parametrize("data", [
    pytest.param(json.dumps({"symbol": ["EURUSD"], "bid": 1.0, "ask": 1.1}).encode(),
                 id="list-symbol"),
    pytest.param(json.dumps({"symbol": {"a": 1}, "bid": 1.0, "ask": 1.1}).encode(),
                 id="map-symbol"),
    pytest.param(b"[" * 100_000, id="deeply-nested-json"),
])
def test_ea_bridge_never_raises_on_bad_input(data: bytes) -> None:
    ctx = zmq.asyncio.Context()
    src = EaBridge(ctx, "inproc://bug-ea", ["EURUSD"])
    try:
        try:
            out = src.parse([data])
        except Exception as exc:
            raise AssertionError(
                f"EaBridge.parse must reject and count bad input, but raised "
                f"{type(exc).__name__}: {str(exc)[:60]} (this ends EaBridge.batches() and "
                f"with it the feed's pump task)") from exc
        assert out == [] and src.stats.rejected == 1
    finally:
        src.close()
        ctx.term()


# protocols/ticks/messages.py:93 (Tick.__post_init__)
@pytest.mark.parametrize("kw", [
    pytest.param({"session": -1}, id="negative-session"),
    pytest.param({"session": 2**64}, id="session-above-u64"),
    pytest.param({"seq": 1.5}, id="float-seq"),
    pytest.param({"seq": True}, id="bool-seq"),
    pytest.param({"seq": "1"}, id="string-seq"),
])
def test_tick_validates_seq_and_session(kw: dict[str, Any]) -> None:
    try:
        t = Tick("EURUSD", 1.0, 1.1, 0.0, 0.0, 1, **kw)
    except ValueError:
        return
    except Exception as exc:
        raise AssertionError(f"Tick(**{kw}) must raise ValueError, raised "
                             f"{type(exc).__name__}") from exc
    raise AssertionError(f"Tick(**{kw}) must raise ValueError like TickBatch does, built {t}")


# protocols/ticks/messages.py:298 (GapFillReply.__post_init__)
@pytest.mark.parametrize("settled", [5.5, "7"], ids=["float", "string"])
def test_gap_fill_reply_settled_to_must_be_an_int(settled: Any) -> None:
    with pytest.raises(ValueError):
        GapFillReply(1, "EURUSD", 5, settled)


# bus/config.py:129, :167 (NaN passes "< 0"), :118 (inf passes "> 0"), :80, :91 (no checks)
@pytest.mark.parametrize("doc, key", [
    pytest.param({"feeds": [{"speed": math.nan}]}, "feeds[0].speed", id="nan-speed"),
    pytest.param({"subscriber": {"grace_ms": math.nan}}, "subscriber.grace_ms", id="nan-grace"),
    pytest.param({"feeds": [{"rate": math.inf}]}, "feeds[0].rate", id="inf-rate"),
    pytest.param({"redis": {"socket_timeout_ms": -5}}, "redis.socket_timeout_ms",
                 id="negative-socket-timeout"),
    pytest.param({"feeds": [{"multicast_ttl": 256}]}, "feeds[0].multicast_ttl",
                 id="ttl-above-255"),
])
def test_config_rejects_non_finite_and_out_of_range(doc: dict[str, Any], key: str) -> None:
    try:
        parse_config(doc)
    except ConfigError as exc:
        assert exc.key == key
        return
    raise AssertionError(f"parse_config({doc}) accepted a value that breaks a node at run "
                         f"time; expected ConfigError for {key!r}")


# bus/config.py:68 (_check_endpoint replaces every "*", the port's too)
def test_wildcard_port_error_message_is_not_garbled() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"feeds": [{"pub": "tcp://127.0.0.1:*"}]})
    assert "0.0.0.0" not in str(info.value), \
        f"message shows a rewritten endpoint the user never wrote: {info.value}"
