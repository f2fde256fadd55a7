"""The mesh file: defaults, a full example, a table of mistakes (each names its key and fix),
reading files, and the ``check-config`` command.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import bus.config
from bus.config import (
    FeedSection,
    MeshConfig,
    OrdersSection,
    RecoverySection,
    default_config,
    load_config,
    parse_config,
    parse_hostport,
)
from protocols.errors import ConfigError
from protocols.orders.service import MAX_QUEUE_MS
from tests.support import scaled

REPO = Path(__file__).resolve().parents[2]

FULL_EXAMPLE = """
[mesh]
name = "lab"
key_prefix = "lab1"

[redis]
url = "redis://127.0.0.1:6390/2"
socket_timeout_ms = 250

[[feeds]]
name = "sim"
source = "simulator"
symbols = ["EURUSD", "GBPUSD"]
pub = "tcp://*:7100"
udp_targets = ["127.0.0.1:7200", "239.1.2.3:7201"]
rate = 2500
seed = 7
max_batch = 512
heartbeat_ms = 100

[[feeds]]
name = "tape"
source = "replay"
symbols = ["XAUUSD"]
pub = "tcp://127.0.0.1:7101"
udp_targets = []
file = "ticks.csv"
speed = 0
loop = true

[[feeds]]
name = "mt5"
source = "ea"
symbols = ["US500", "USDJPY"]
pub = "ipc:///tmp/tickmesh-mt5"
pull = "tcp://localhost:7150"

[[recovery]]
name = "r1"
bind = "tcp://127.0.0.1:7300"

[[recovery]]
name = "r2"
bind = "tcp://127.0.0.1:7301"
max_fill = 1000

[subscriber]
symbols = ["EUR", "XAU"]
udp_bind = "127.0.0.1:7200"
snapshot = false
queue = 5000
slow_mode = "conflate"
grace_ms = 5
fill_timeout_ms = 100.5
"""


def test_default_config_validates() -> None:
    cfg = default_config()
    assert cfg.validate() is cfg
    assert cfg == MeshConfig()
    assert cfg.feeds[0].symbols == ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
    assert load_config(None) == cfg


def test_the_docstring_example_is_the_default() -> None:
    doc = bus.config.__doc__ or ""
    example = doc.split("these are the defaults)::", 1)[1]
    text = "\n".join(line[4:] for line in example.splitlines() if line.startswith("    "))
    assert parse_config(tomllib.loads(text)) == default_config()


def test_parse_full_example() -> None:
    cfg = parse_config(tomllib.loads(FULL_EXAMPLE))
    assert (cfg.mesh.name, cfg.mesh.key_prefix) == ("lab", "lab1")
    assert (cfg.redis.url, cfg.redis.socket_timeout_ms) == ("redis://127.0.0.1:6390/2", 250)
    sim, tape, mt5 = cfg.feeds
    assert sim == FeedSection(name="sim", symbols=("EURUSD", "GBPUSD"), pub="tcp://*:7100",
                              udp_targets=("127.0.0.1:7200", "239.1.2.3:7201"), rate=2500.0,
                              seed=7, max_batch=512, heartbeat_ms=100)
    assert isinstance(sim.rate, float)
    assert (tape.source, tape.file, tape.speed, tape.loop, tape.udp_targets) == (
        "replay", "ticks.csv", 0.0, True, ())
    assert (mt5.source, mt5.pull, mt5.symbols) == ("ea", "tcp://localhost:7150",
                                                   ("US500", "USDJPY"))
    assert cfg.recovery == (RecoverySection("r1", "tcp://127.0.0.1:7300"),
                            RecoverySection("r2", "tcp://127.0.0.1:7301", 1000))
    sub = cfg.subscriber
    assert (sub.symbols, sub.snapshot, sub.queue, sub.slow_mode, sub.grace_ms,
            sub.fill_timeout_ms) == (("EUR", "XAU"), False, 5000, "conflate", 5.0, 100.5)
    assert cfg.feed("tape") is tape
    assert cfg.recovery_node("r2").max_fill == 1000
    assert cfg.feed_endpoints == ("tcp://127.0.0.1:7100", "tcp://127.0.0.1:7101",
                                  "ipc:///tmp/tickmesh-mt5")
    assert cfg.recovery_endpoints == ("tcp://127.0.0.1:7300", "tcp://127.0.0.1:7301")


def test_unknown_node_names_raise_with_choices() -> None:
    cfg = parse_config(tomllib.loads(FULL_EXAMPLE))
    with pytest.raises(ConfigError) as info:
        cfg.feed("nope")
    assert info.value.key == "feeds" and "sim" in info.value.fix
    with pytest.raises(ConfigError) as info:
        cfg.recovery_node("nope")
    assert info.value.key == "recovery" and "r1" in info.value.fix


def feed(**kw: Any) -> dict[str, Any]:
    return {"feeds": [kw]}


TWO_FEEDS_SAME_SYMBOL = {"feeds": [
    {"name": "a", "symbols": ["EURUSD", "GBPUSD"], "pub": "tcp://127.0.0.1:7100"},
    {"name": "b", "symbols": ["USDJPY", "GBPUSD"], "pub": "tcp://127.0.0.1:7101"}]}
TWO_FEEDS_SAME_NAME = {"feeds": [
    {"name": "a", "symbols": ["EURUSD"], "pub": "tcp://127.0.0.1:7100"},
    {"name": "a", "symbols": ["GBPUSD"], "pub": "tcp://127.0.0.1:7101"}]}

# (id, document, expected key, substring of the message: the fix hint where there is one)
WRONG: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown-section-suggested", {"feed": [{}]}, "feed", "did you mean [feeds]?"),
    ("unknown-section-subscribers", {"subscribers": {}}, "subscribers",
     "did you mean [subscriber]?"),
    ("unknown-section-no-match", {"zzz": {}}, "zzz", "sections: mesh, redis, feeds"),
    ("unknown-key-suggested", feed(rat=5), "feeds[0].rat", "did you mean 'rate'?"),
    ("unknown-key-symbol", feed(symbol=["EURUSD"]), "feeds[0].symbol",
     "did you mean 'symbols'?"),
    ("unknown-key-no-match", {"mesh": {"qqqq": 1}}, "mesh.qqqq", "known keys: key_prefix, name"),
    ("unknown-key-in-subscriber", {"subscriber": {"udp_bnd": "x"}}, "subscriber.udp_bnd",
     "did you mean 'udp_bind'?"),
    ("wrong-type-string-for-number", feed(rate="fast"), "feeds[0].rate",
     "must be a number, got str 'fast'"),
    ("wrong-type-bool-for-int", feed(heartbeat_ms=True), "feeds[0].heartbeat_ms",
     "must be an integer, got bool"),
    ("wrong-type-bool-for-number", feed(rate=True), "feeds[0].rate", "must be a number"),
    ("wrong-type-float-for-int", feed(max_batch=1.5), "feeds[0].max_batch",
     "must be an integer"),
    ("wrong-type-int-for-bool", feed(loop=1), "feeds[0].loop", "must be true or false"),
    ("wrong-type-string-for-list", feed(symbols="EURUSD"), "feeds[0].symbols",
     "must be a list, got str"),
    ("wrong-type-in-list", feed(symbols=["EURUSD", 5]), "feeds[0].symbols[1]",
     "must be a string"),
    ("wrong-type-int-url", {"redis": {"url": 6379}}, "redis.url", "must be a string"),
    ("not-a-choice", feed(source="mt5"), "feeds[0].source",
     "use one of 'simulator' | 'replay' | 'ea'"),
    ("slow-mode-not-a-choice", {"subscriber": {"slow_mode": "block"}}, "subscriber.slow_mode",
     "use one of 'drop' | 'conflate'"),
    ("section-not-a-table", {"mesh": "local"}, "mesh", "write it as [mesh]"),
    ("array-entry-not-a-table", {"feeds": ["sim"]}, "feeds[0]", "write it as [feeds[0]]"),
    ("feeds-as-a-table", {"feeds": {"name": "sim"}}, "feeds", "write each entry as [[feeds]]"),
    ("feeds-empty", {"feeds": []}, "feeds", "write each entry as [[feeds]]"),
    ("recovery-as-a-table", {"recovery": {"bind": "tcp://127.0.0.1:1"}}, "recovery",
     "write each entry as [[recovery]]"),
    ("negative-rate", feed(rate=-5), "feeds[0].rate",
     "must be a finite number > 0, got -5.0 (fix: ticks per second, e.g. rate = 1000)"),
    ("zero-rate", feed(rate=0), "feeds[0].rate", "ticks per second"),
    ("nan-rate", feed(rate=float("nan")), "feeds[0].rate", "finite number > 0"),
    ("zero-heartbeat", feed(heartbeat_ms=0), "feeds[0].heartbeat_ms", "heartbeat_ms = 250"),
    ("negative-checkpoint", feed(checkpoint_ms=-1), "feeds[0].checkpoint_ms",
     "checkpoint_ms = 5"),
    ("zero-checkpoint-buffer", feed(checkpoint_buffer=0), "feeds[0].checkpoint_buffer",
     "500000"),
    ("zero-stream-cap", feed(stream_cap=0), "feeds[0].stream_cap", "1000000"),
    ("zero-reserve-block", feed(reserve_block=0), "feeds[0].reserve_block", "100000"),
    ("negative-speed", feed(speed=-1.0), "feeds[0].speed", "0 = max"),
    ("bad-endpoint-scheme", feed(pub="http://127.0.0.1:7100"), "feeds[0].pub",
     'use "tcp://127.0.0.1:PORT"'),
    ("bad-endpoint-no-port", feed(pub="tcp://127.0.0.1"), "feeds[0].pub",
     'e.g. "127.0.0.1:7200"'),
    ("bad-endpoint-hostname", feed(pub="tcp://example.com:7100"), "feeds[0].pub",
     "not an IPv4 address"),
    ("bad-pull-endpoint", feed(source="ea", pull="7150"), "feeds[0].pull",
     "is not a ZeroMQ endpoint"),
    ("bad-recovery-bind", {"recovery": [{"bind": "udp://127.0.0.1:7300"}]},
     "recovery[0].bind", 'use "tcp://127.0.0.1:PORT"'),
    ("zero-max-fill", {"recovery": [{"max_fill": 0}]}, "recovery[0].max_fill", "e.g. 50000"),
    ("max-fill-over-the-reply-limit", {"recovery": [{"max_fill": 200_001}]},
     "recovery[0].max_fill", "must be at most 200,000"),
    ("bad-hostport-no-colon", feed(udp_targets=["127.0.0.1"]), "feeds[0].udp_targets[0]",
     'is not host:port (fix: e.g. "127.0.0.1:7200")'),
    ("bad-hostport-port-0", feed(udp_targets=["127.0.0.1:0"]), "feeds[0].udp_targets[0]",
     "is not host:port"),
    ("bad-hostport-port-too-big", feed(udp_targets=["127.0.0.1:65536"]),
     "feeds[0].udp_targets[0]", "is not host:port"),
    ("bad-hostport-port-not-number", feed(udp_targets=["127.0.0.1:http"]),
     "feeds[0].udp_targets[0]", "is not host:port"),
    ("bad-hostport-host", feed(udp_targets=["127.0.0.1:7200", "myhost:7200"]),
     "feeds[0].udp_targets[1]", "'myhost' is not an IPv4 address"),
    ("bad-hostport-ipv6", feed(udp_targets=["::1:7200"]), "feeds[0].udp_targets[0]",
     "is not an IPv4 address"),
    ("bad-udp-bind", {"subscriber": {"udp_bind": "7200"}}, "subscriber.udp_bind",
     "is not host:port"),
    ("symbol-owned-by-two-feeds", TWO_FEEDS_SAME_SYMBOL, "feeds[1].symbols",
     "'GBPUSD' is already published by feed 'a' (fix: each symbol belongs to one feed)"),
    ("duplicate-feed-names", TWO_FEEDS_SAME_NAME, "feeds[1].name",
     "'a' is used twice (fix: name each node)"),
    ("replay-without-file", feed(source="replay"), "feeds[0].file",
     'is required for source = "replay" (fix: file = "ticks.csv")'),
    ("empty-symbols", feed(symbols=[]), "feeds[0].symbols",
     'is empty (fix: list the symbols, e.g. ["EURUSD"])'),
    ("symbol-listed-twice", feed(symbols=["EURUSD", "EURUSD"]), "feeds[0].symbols",
     "remove the duplicate"),
    ("symbol-with-control-char", feed(symbols=["EURUSD", "GBP\tUSD"]), "feeds[0].symbols[1]",
     "control character"),
    ("symbol-empty-string", feed(symbols=[""]), "feeds[0].symbols[0]", "non-empty string"),
    ("symbol-too-long", feed(symbols=["X" * 65]), "feeds[0].symbols[0]", "longer than 64"),
    ("max-batch-0", feed(max_batch=0), "feeds[0].max_batch", "must be in 1..65534, got 0"),
    ("max-batch-65535", feed(max_batch=65535), "feeds[0].max_batch", "got 65535"),
    ("datagram-too-small", feed(udp_max_datagram=100), "feeds[0].udp_max_datagram",
     "1472 fits an Ethernet MTU"),
    ("datagram-too-big", feed(udp_max_datagram=65508), "feeds[0].udp_max_datagram",
     "must be in 128..65507"),
    ("bad-redis-url", {"redis": {"url": "http://127.0.0.1:6379"}}, "redis.url",
     'e.g. "redis://127.0.0.1:6379/0"'),
    ("subscriber-zero-queue", {"subscriber": {"queue": 0}}, "subscriber.queue",
     "queue = 100000"),
    ("subscriber-negative-grace", {"subscriber": {"grace_ms": -1}}, "subscriber.grace_ms",
     "finite number >= 0"),
    ("subscriber-negative-give-up", {"subscriber": {"give_up_ms": -0.5}},
     "subscriber.give_up_ms", "finite number >= 0"),
    ("second-feed-checked", {"feeds": [{}, {"name": "b", "symbols": ["X"], "rate": 0}]},
     "feeds[1].rate", "ticks per second"),
]


@pytest.mark.parametrize("doc, key, fragment",
                         [pytest.param(d, k, f, id=i) for i, d, k, f in WRONG])
def test_wrong_config_names_key_and_fix(doc: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert info.value.key == key
    assert str(info.value).startswith(f"config key {key!r}: ")
    assert fragment in str(info.value)
    if info.value.fix:
        assert str(info.value).endswith(f" (fix: {info.value.fix})")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_config(feed(rate=-1))


@pytest.mark.parametrize("value, expected", [
    pytest.param("127.0.0.1:7200", ("127.0.0.1", 7200), id="ipv4"),
    pytest.param("localhost:1", ("127.0.0.1", 1), id="localhost"),
    pytest.param("0.0.0.0:65535", ("0.0.0.0", 65535), id="any-max-port"),
    pytest.param("239.1.2.3:7201", ("239.1.2.3", 7201), id="multicast"),
])
def test_parse_hostport(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport("k", value) == expected


def test_empty_udp_bind_disables_udp_and_validates() -> None:
    assert parse_config({"subscriber": {"udp_bind": ""}}).subscriber.udp_bind == ""


# --- files -----------------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(FULL_EXAMPLE, encoding="utf-8")
    assert load_config(path) == parse_config(tomllib.loads(FULL_EXAMPLE))
    assert load_config(str(path)) == load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == str(path)
    assert "cannot read the mesh file" in str(info.value)
    assert "check the path given with --config" in info.value.fix


def test_load_config_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[mesh\nname = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == str(path)
    assert "is not valid TOML" in str(info.value)


def test_load_config_bad_value_in_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[feeds]]\nrate = -5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "feeds[0].rate"


# --- check-config command --------------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodes.cli", "check-config", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=scaled(30))


def test_check_config_prints_json_for_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(FULL_EXAMPLE, encoding="utf-8")
    proc = check_config(path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [f["name"] for f in out["feeds"]] == ["sim", "tape", "mt5"]
    assert out["mesh"]["key_prefix"] == "lab1"
    assert out["subscriber"]["slow_mode"] == "conflate"


def test_check_config_exits_2_for_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[[feeds]]\nrat = 5\n', encoding="utf-8")
    proc = check_config(path)
    assert proc.returncode == 2
    assert "tickmesh: config key 'feeds[0].rat'" in proc.stderr
    assert "did you mean 'rate'?" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("orders", "key", "fragment"), [
    ({"clients": ["tcp://127.0.0.1:1"]}, "orders.clients", "needs 2 endpoints"),
    ({"peers": ["tcp://127.0.0.1:1", "udp://x"]}, "orders.peers[1]", "not a ZeroMQ endpoint"),
    ({"heartbeat_ms": 60, "peer_timeout_ms": 60}, "orders.peer_timeout_ms", "heartbeat_ms"),
    ({"price_band": -0.1}, "orders.price_band", ">= 0"),
    ({"max_exposure": 0}, "orders.max_exposure", "> 0"),
    ({"enable": True}, "orders.enable", "did you mean 'enabled'"),
    ({"max_queue_ms": 0}, "orders.max_queue_ms", "> 0"),
    ({"max_queue_ms": -5}, "orders.max_queue_ms", "> 0"),
    ({"max_queue_ms": math.inf}, "orders.max_queue_ms", "finite"),
    ({"max_queue_ms": math.nan}, "orders.max_queue_ms", "finite"),
    ({"max_queue_ms": "10ms"}, "orders.max_queue_ms", "must be a number"),
    ({"max_queue_ms": True}, "orders.max_queue_ms", "must be a number"),
    ({"max_queue": 10}, "orders.max_queue", "did you mean 'max_queue_ms'"),
], ids=["one-client-endpoint", "bad-peer", "heartbeat-not-below-timeout", "negative-band",
        "zero-exposure", "typo", "zero-queue-budget", "negative-queue-budget",
        "infinite-queue-budget", "nan-queue-budget", "queue-budget-string",
        "queue-budget-bool", "queue-budget-without-unit"])
def test_wrong_orders_section(orders: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"orders": orders})
    assert info.value.key == key and fragment in str(info.value)


def test_the_queue_budget_defaults_to_the_services_and_takes_an_integer() -> None:
    assert OrdersSection().max_queue_ms == MAX_QUEUE_MS == 1000.0
    cfg = parse_config({"orders": {"max_queue_ms": 5}})
    assert cfg.orders.max_queue_ms == 5.0 and isinstance(cfg.orders.max_queue_ms, float)
    assert parse_config({"orders": {"max_queue_ms": 2.5}}).orders.max_queue_ms == 2.5


def test_orders_section_round_trips_through_toml() -> None:
    import tomllib

    from bus.config import dump_toml
    cfg = parse_config({"orders": {"enabled": True, "max_quantity": 5}})
    assert parse_config(tomllib.loads(dump_toml(cfg))) == cfg
