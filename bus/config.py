"""The mesh file: one TOML document describing every node, endpoint and store of a mesh.

``load_config(path)`` reads and validates it; ``default_config()`` is the local mesh that runs
with no file at all. Every mistake raises :class:`ConfigError` naming the key and the fix, e.g.
``config key 'feeds[0].rate': must be > 0, got -5 (fix: ticks per second, e.g. rate = 1000)``.

Example (all keys optional; these are the defaults)::

    [mesh]
    name = "local"
    key_prefix = "tm"                       # namespace of every Redis key

    [redis]
    url = "redis://127.0.0.1:6379/0"

    [[feeds]]
    name = "sim"
    source = "simulator"                    # simulator | replay | ea
    symbols = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"]
    pub = "tcp://127.0.0.1:7100"            # ZeroMQ PUB endpoint the feed binds
    udp_targets = ["127.0.0.1:7200"]        # where UDP copies go (unicast or multicast group)
    rate = 1000                             # simulator: ticks per second over all symbols

    [[recovery]]
    name = "recovery"
    bind = "tcp://127.0.0.1:7300"

    [subscriber]
    udp_bind = "127.0.0.1:7200"

    # EA instances (docs/PROTOCOL.md 18) are none by default; one looks like this:
    # [[ea]]
    # name = "ea-1"
    # feed = "sim"                          # a feed with source = "ea": it pushes its ticks there
    # terminal = "sim"                      # sim | mt5 (Windows: terminal_path, login, server)

    [terminal]                              # the simulated MT5 terminal (tests, demos, up)
    enabled = false
    bind = "tcp://127.0.0.1:7460"

    [sched]
    realtime_priority = 0                   # 1-99: SCHED_FIFO for the kinds below (needs root)
    realtime = ["feed", "subscriber"]
    cpus = []                               # pin those to these CPUs, e.g. [1]
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from protocols.errors import ConfigError
from protocols.orders.service import MAX_IN_SERVICE, MAX_QUEUE_MS
from protocols.ticks.messages import check_stream

SourceKind = Literal["simulator", "replay", "ea"]
ExecutionKind = Literal["simulated", "ea"]
TerminalKind = Literal["sim", "mt5"]
QuoteSource = Literal["simulator", "replay"]
SlowMode = Literal["drop", "conflate"]


def parse_hostport(key: str, value: str) -> tuple[str, int]:
    """Parse ``"host:port"`` (an IPv4 address or ``localhost``) into a tuple."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"{value!r} is not host:port", 'e.g. "127.0.0.1:7200"')
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(key, f"{host!r} is not an IPv4 address", 'e.g. "127.0.0.1:7200"') \
            from None
    return host, int(port)


def _check_endpoint(key: str, value: str) -> None:
    if not value.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(key, f"{value!r} is not a ZeroMQ endpoint",
                          'use "tcp://127.0.0.1:PORT" or "ipc:///path"')
    if value.startswith("tcp://"):
        host, sep, port = value[len("tcp://"):].rpartition(":")
        if port == "*":
            raise ConfigError(key, "a wildcard port cannot be published to peers",
                              "give a port number, e.g. tcp://127.0.0.1:7100")
        parse_hostport(key, ("0.0.0.0" if host == "*" else host) + sep + port)


@dataclass(frozen=True, slots=True)
class MeshSection:
    name: str = "local"
    key_prefix: str = "tm"


@dataclass(frozen=True, slots=True)
class RedisSection:
    """Where the two store roles live: RTS (tick checkpoints, last values; evictable) and RTSS
    (order and trade state; never evicted before settlement). Either plain URLs (``url`` for
    RTS, ``orders_url`` for RTSS, "" = the same server), or Sentinels: then ``master`` and
    ``orders_master`` name the two master groups ("" = the same group) and the URLs are unused.
    """

    url: str = "redis://127.0.0.1:6379/0"
    orders_url: str = ""
    sentinels: tuple[str, ...] = ()  # "host:port" of each Sentinel
    master: str = "tickmesh-rts"
    orders_master: str = "tickmesh-rtss"
    password: str = ""  # of the Redis servers found through Sentinels (a URL carries its own)
    sentinel_password: str = ""
    db: int = 0
    socket_timeout_ms: int = 1000
    deadline_ms: int = 5000  # an order waits this long for the store to come back
    wait_timeout_ms: int = 100  # WAIT for a replica before an order is acknowledged

    def validate(self, key: str) -> None:
        _positive(f"{key}.socket_timeout_ms", self.socket_timeout_ms,
                  "e.g. socket_timeout_ms = 1000")
        _non_negative(f"{key}.deadline_ms", self.deadline_ms, "e.g. deadline_ms = 5000")
        _positive(f"{key}.wait_timeout_ms", self.wait_timeout_ms, "e.g. wait_timeout_ms = 100")
        for name in ("url", "orders_url"):
            url = getattr(self, name)
            if name == "orders_url" and url == "":
                continue
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(f"{key}.{name}", f"{url!r} is not a Redis URL",
                                  'e.g. "redis://127.0.0.1:6379/0"')
        for i, address in enumerate(self.sentinels):
            parse_hostport(f"{key}.sentinels[{i}]", address)
        if self.sentinels and not self.master:
            raise ConfigError(f"{key}.master", "is empty while sentinels are set",
                              'the master group name, e.g. master = "tickmesh-rts"')
        if not 0 <= self.db <= 15:
            raise ConfigError(f"{key}.db", f"must be 0-15, got {self.db}", "e.g. db = 0")

    def orders_role(self) -> RedisSection:
        """This section as seen by the order store (the RTSS role)."""
        return dataclasses.replace(self, url=self.orders_url or self.url,
                                   master=self.orders_master or self.master)


@dataclass(frozen=True, slots=True)
class FeedSection:
    name: str = "sim"
    source: SourceKind = "simulator"
    symbols: tuple[str, ...] = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
    pub: str = "tcp://127.0.0.1:7100"
    udp_targets: tuple[str, ...] = ("127.0.0.1:7200",)
    udp_max_datagram: int = 1472
    multicast_ttl: int = 1
    multicast_interface: str = "127.0.0.1"  # local address multicast datagrams leave from
    rate: float = 1000.0
    seed: int = 0
    file: str = ""  # replay: CSV path
    speed: float = 1.0  # replay: 1.0 = recorded pace, 0 = as fast as possible
    loop: bool = False  # replay: start over at the end
    pull: str = "tcp://127.0.0.1:7150"  # ea: PULL endpoint the EA pushes to
    heartbeat_ms: int = 250
    checkpoint_ms: int = 5
    checkpoint_buffer: int = 500_000  # ticks waiting for Redis; overflow drops oldest (counted)
    stream_cap: int = 1_000_000  # ticks kept per symbol in Redis for gap fills
    reserve_block: int = 100_000  # sequence numbers reserved ahead in Redis (restart safety)
    max_batch: int = 1024  # ticks per published batch

    def validate(self, key: str) -> None:
        if not self.symbols:
            raise ConfigError(f"{key}.symbols", "is empty", 'list the symbols, e.g. ["EURUSD"]')
        for i, s in enumerate(self.symbols):
            try:
                check_stream(s)
            except ValueError as exc:
                raise ConfigError(f"{key}.symbols[{i}]", str(exc)) from None
        if len(set(self.symbols)) != len(self.symbols):
            raise ConfigError(f"{key}.symbols", "lists a symbol twice", "remove the duplicate")
        _check_endpoint(f"{key}.pub", self.pub)
        for i, t in enumerate(self.udp_targets):
            parse_hostport(f"{key}.udp_targets[{i}]", t)
        _positive(f"{key}.rate", self.rate, "ticks per second, e.g. rate = 1000")
        _positive(f"{key}.heartbeat_ms", self.heartbeat_ms, "e.g. heartbeat_ms = 250")
        _positive(f"{key}.checkpoint_ms", self.checkpoint_ms, "e.g. checkpoint_ms = 5")
        _positive(f"{key}.checkpoint_buffer", self.checkpoint_buffer, "e.g. 500000")
        _positive(f"{key}.stream_cap", self.stream_cap, "e.g. 1000000")
        _positive(f"{key}.reserve_block", self.reserve_block, "e.g. 100000")
        if not 1 <= self.max_batch <= 65534:
            raise ConfigError(f"{key}.max_batch", f"must be in 1..65534, got {self.max_batch}")
        if not 128 <= self.udp_max_datagram <= 65507:
            raise ConfigError(f"{key}.udp_max_datagram", "must be in 128..65507",
                              "1472 fits an Ethernet MTU")
        _non_negative(f"{key}.speed", self.speed, "1.0 = recorded pace, 0 = max")
        parse_hostport(f"{key}.multicast_interface", f"{self.multicast_interface}:1")
        if not 0 <= self.multicast_ttl <= 255:
            raise ConfigError(f"{key}.multicast_ttl", f"must be in 0..255, got "
                              f"{self.multicast_ttl}", "1 keeps multicast on the local subnet")
        if self.source == "replay" and not self.file:
            raise ConfigError(f"{key}.file", "is required for source = \"replay\"",
                              'file = "ticks.csv"')
        if self.source == "ea":
            _check_endpoint(f"{key}.pull", self.pull)


MAX_FILL = 200_000  # ticks in one gap-fill reply at most


@dataclass(frozen=True, slots=True)
class RecoverySection:
    name: str = "recovery"
    bind: str = "tcp://127.0.0.1:7300"
    max_fill: int = 50_000

    def validate(self, key: str) -> None:
        _check_endpoint(f"{key}.bind", self.bind)
        _positive(f"{key}.max_fill", self.max_fill, "e.g. 50000")
        # A reply must fit the recovery client's frame limit (bus.sockets.RECOVERY_REPLY_BYTES,
        # sized for 200,000 ticks): a larger one would cut the client off instead of filling.
        if self.max_fill > MAX_FILL:
            raise ConfigError(f"{key}.max_fill", f"must be at most {MAX_FILL:,}, got "
                              f"{self.max_fill!r}", "a client asks again for the rest")


@dataclass(frozen=True, slots=True)
class SubscriberSection:
    symbols: tuple[str, ...] = ("",)  # prefixes; "" = everything
    udp_bind: str = "127.0.0.1:7200"  # "" disables the UDP path
    multicast_group: str = ""
    snapshot: bool = True
    queue: int = 100_000
    slow_mode: SlowMode = "drop"
    grace_ms: float = 3.0
    fill_timeout_ms: float = 250.0
    give_up_ms: float = 3000.0
    recovery_timeout_ms: float = 500.0

    def validate(self, key: str) -> None:
        if self.udp_bind:
            parse_hostport(f"{key}.udp_bind", self.udp_bind)
        _positive(f"{key}.queue", self.queue, "e.g. queue = 100000")
        for name in ("grace_ms", "fill_timeout_ms", "give_up_ms", "recovery_timeout_ms"):
            _non_negative(f"{key}.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class OrdersSection:
    """The order path: a binary-star backend pair (primary, backup) and an executor."""

    enabled: bool = True
    trader_rate: float = 20.0  # orders/s the launcher's trader node places (0: no trader)
    clients: tuple[str, ...] = ("tcp://127.0.0.1:7400", "tcp://127.0.0.1:7401")
    peers: tuple[str, ...] = ("tcp://127.0.0.1:7410", "tcp://127.0.0.1:7411")
    updates: tuple[str, ...] = ("tcp://127.0.0.1:7420", "tcp://127.0.0.1:7421")
    executor: tuple[str, ...] = ("tcp://127.0.0.1:7430", "tcp://127.0.0.1:7431")
    # The pair's replication link (bus.orders.pair_store): each node binds its own.
    replicas: tuple[str, ...] = ("tcp://127.0.0.1:7440", "tcp://127.0.0.1:7441")
    # Acknowledge an order once the passive node holds it, Redis written behind; false: once
    # Redis has it (fenced, WAIT-confirmed), the pair replicating nothing.
    replicate: bool = True
    idempotency_window_s: float = 120.0  # client order ids de-duplicated in memory this far back
    max_write_behind: int = 20_000  # records not yet in Redis; past it new orders get BUSY
    executor_id: str = "executor"
    heartbeat_ms: float = 20.0
    peer_timeout_ms: float = 60.0
    # Heartbeats keep going while the backend's loop is busy, up to this long without
    # progress; a loop stuck longer loses the active role (bus.orders.beacon).
    stall_budget_ms: float = 250.0
    cold_start_ms: float = 1000.0
    symbols: tuple[str, ...] = ()  # tradable symbols; empty: every feed's symbols
    max_quantity: float = 100.0
    price_band: float = 0.05
    max_exposure: float = 1_000_000.0
    fill_lots: float = 2.0  # simulated liquidity: lots per fill (0: a whole order at once)
    amend_timeout_ms: float = 500.0  # a replace waits this long for the executor's decision
    # Requests the active backend has in service at once (new orders waiting for the store
    # included); one more is answered BUSY at once, with a retry-after hint, never queued.
    max_in_service: int = MAX_IN_SERVICE
    # The longest wait a request may face to be admitted: past it (the oldest new order in
    # service has waited longer, or the backlog takes longer at the measured service time)
    # a request is answered BUSY at once. 1,000 ms by default, a safety net: about 10 for the
    # 20 ms round trip under overload (protocols.orders.service.MAX_QUEUE_MS: why).
    max_queue_ms: float = MAX_QUEUE_MS
    # "simulated": the executor fills against the last tick itself; "ea": it forwards every
    # order to the EA instance holding the account's lease (docs/PROTOCOL.md section 18) and
    # logs what the terminal did. (``executor`` above names the executor's endpoints.)
    execution: ExecutionKind = "simulated"
    ea_bind: str = "tcp://127.0.0.1:7450"  # the executor's ROUTER the EA instances connect to
    ea_heartbeat_ms: float = 20.0  # an instance pings this often; each answer renews its lease
    ea_lease_ms: float = 100.0  # a lease runs this long from the ping it answers
    # After a lease ran out the executor waits this much more before another instance may
    # send: the longest an order_send begun under the old lease may take to be in the
    # terminal's record (raise it for a real terminal far from its trade server).
    ea_guard_ms: float = 20.0
    # An order held because no instance holds its account's lease is rejected this long after
    # it was routed (reason NO_EXECUTOR, retryable); one held by a reconciling instance waits.
    ea_hold_ms: float = 10_000.0

    def validate(self, key: str) -> None:
        _check_endpoint(f"{key}.ea_bind", self.ea_bind)
        if not 0 < self.ea_heartbeat_ms < self.ea_lease_ms:
            raise ConfigError(f"{key}.ea_lease_ms", "must exceed ea_heartbeat_ms > 0",
                              "several heartbeats, e.g. ea_heartbeat_ms = 20, ea_lease_ms = 100")
        _non_negative(f"{key}.ea_guard_ms", self.ea_guard_ms, "e.g. ea_guard_ms = 20")
        _positive(f"{key}.ea_hold_ms", self.ea_hold_ms, "e.g. ea_hold_ms = 10000")
        for name in ("clients", "peers", "updates", "executor", "replicas"):
            eps = getattr(self, name)
            if len(eps) != 2:
                raise ConfigError(f"{key}.{name}", f"needs 2 endpoints (primary, backup), got "
                                  f"{len(eps)}", f'{name} = ["tcp://…:A", "tcp://…:B"]')
            for i, ep in enumerate(eps):
                _check_endpoint(f"{key}.{name}[{i}]", ep)
        if not 0 < self.heartbeat_ms < self.peer_timeout_ms:
            raise ConfigError(f"{key}.peer_timeout_ms", "must exceed heartbeat_ms > 0",
                              "three heartbeats, e.g. heartbeat_ms = 20, peer_timeout_ms = 60")
        if self.stall_budget_ms <= self.heartbeat_ms:
            raise ConfigError(f"{key}.stall_budget_ms", "must exceed heartbeat_ms",
                              "e.g. stall_budget_ms = 250")
        _non_negative(f"{key}.cold_start_ms", self.cold_start_ms)
        _non_negative(f"{key}.trader_rate", self.trader_rate, "orders per second, 0: none")
        _positive(f"{key}.max_quantity", self.max_quantity, "e.g. max_quantity = 100")
        _non_negative(f"{key}.price_band", self.price_band, "a fraction, e.g. 0.05")
        _positive(f"{key}.max_exposure", self.max_exposure, "e.g. max_exposure = 1000000")
        _non_negative(f"{key}.fill_lots", self.fill_lots, "lots per fill, 0: whole orders")
        _positive(f"{key}.amend_timeout_ms", self.amend_timeout_ms, "e.g. 500")
        _positive(f"{key}.max_in_service", self.max_in_service, "e.g. max_in_service = 2000")
        _positive(f"{key}.idempotency_window_s", self.idempotency_window_s, "e.g. 120")
        _positive(f"{key}.max_write_behind", self.max_write_behind, "e.g. 20000")
        _positive(f"{key}.max_queue_ms", self.max_queue_ms, "e.g. max_queue_ms = 10")


HistoryStoreKind = Literal["duckdb", "clickhouse"]


@dataclass(frozen=True, slots=True)
class HistorySection:
    """History (docs/HISTORY.md): where the historian writes and readers read.

    ``store = "duckdb"`` (the embedded default) keeps everything in the file ``duckdb_path``;
    ``"clickhouse"`` writes every batch to each server of ``clickhouse`` (host:port of the
    native protocol; two make the active-passive pair, the first is the active reader) and
    spools what a dead server missed in the DuckDB file ``spool_path``. A batch is written
    once it holds ``batch_rows`` rows or is ``batch_ms`` old. ``stream_cap`` bounds the order
    store's history stream in Redis (the retention the historian backfills orders from).
    ``query_bind`` is where the historian answers history queries (ROUTER): a DuckDB file can
    be open in one process only, so readers of the embedded store ask the historian, which
    also serves the forming bars from its memory ("": no query service).
    """

    enabled: bool = True
    store: HistoryStoreKind = "duckdb"
    duckdb_path: str = "run/history.duckdb"
    clickhouse: tuple[str, ...] = ("127.0.0.1:9000", "127.0.0.1:9001")
    database: str = "tickmesh"
    spool_path: str = "run/history-spool.duckdb"
    batch_rows: int = 50_000
    batch_ms: float = 200.0
    connect_timeout_s: float = 0.25
    receive_timeout_s: float = 2.0
    stream_cap: int = 1_000_000
    query_bind: str = "tcp://127.0.0.1:7500"

    def validate(self, key: str) -> None:
        if self.query_bind:
            _check_endpoint(f"{key}.query_bind", self.query_bind)
        if self.store == "clickhouse":
            if not 1 <= len(self.clickhouse) <= 2:
                raise ConfigError(f"{key}.clickhouse",
                                  f"must name 1 or 2 servers, got {len(self.clickhouse)}",
                                  'e.g. clickhouse = ["127.0.0.1:9000", "127.0.0.1:9001"]')
            for i, hp in enumerate(self.clickhouse):
                parse_hostport(f"{key}.clickhouse[{i}]", hp)
            if not self.spool_path:
                raise ConfigError(f"{key}.spool_path", "must name a file",
                                  'e.g. spool_path = "run/history-spool.duckdb"')
        elif not self.duckdb_path:
            raise ConfigError(f"{key}.duckdb_path", "must name a file",
                              'e.g. duckdb_path = "run/history.duckdb"')
        _positive(f"{key}.batch_rows", self.batch_rows, "e.g. batch_rows = 50000")
        _positive(f"{key}.batch_ms", self.batch_ms, "e.g. batch_ms = 200")
        _positive(f"{key}.connect_timeout_s", self.connect_timeout_s, "e.g. 0.25")
        _positive(f"{key}.receive_timeout_s", self.receive_timeout_s, "e.g. 2.0")
        _positive(f"{key}.stream_cap", self.stream_cap, "e.g. stream_cap = 1000000")


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """The chart gateways (docs/GATEWAY.md): HTTP and WebSocket on one port each.

    ``listen`` has one ``host:port`` per gateway (``up --gateways N`` runs the first N; the page
    learns all of them to fail over). Sessions live in Redis for ``session_ttl_s``; a reconnect
    within ``retention_s`` (bounded by ``retention_count`` items per stream) gets exactly what
    it missed. ``flush_ms`` is the batching interval of a client's frames; a client more than
    ``retention_count`` items behind on a stream gets a snapshot of it. ``origins`` lists the
    ``Origin`` values a WebSocket upgrade may carry (empty: the gateways' own URLs).
    """

    enabled: bool = True
    listen: tuple[str, ...] = ("127.0.0.1:8080", "127.0.0.1:8081")
    users_file: str = "run/users.toml"
    session_ttl_s: float = 3600.0
    retention_s: float = 60.0
    retention_count: int = 10_000
    flush_ms: float = 20.0
    heartbeat_ms: float = 5000.0
    max_message_bytes: int = 65_536
    max_subscriptions: int = 64
    orders_per_s: float = 20.0
    connections_per_user: int = 8
    countback: int = 300  # bars in a snapshot of a bars stream
    origins: tuple[str, ...] = ()

    def validate(self, key: str) -> None:
        if not self.listen:
            raise ConfigError(f"{key}.listen", "is empty", 'e.g. listen = ["127.0.0.1:8080"]')
        for i, hp in enumerate(self.listen):
            parse_hostport(f"{key}.listen[{i}]", hp)
        if len(set(self.listen)) != len(self.listen):
            raise ConfigError(f"{key}.listen", "lists an address twice", "one per gateway")
        for name, fix in (("session_ttl_s", "e.g. 3600"), ("retention_s", "e.g. 60"),
                          ("retention_count", "e.g. 10000"), ("flush_ms", "e.g. 20"),
                          ("heartbeat_ms", "e.g. 5000"), ("max_message_bytes", "e.g. 65536"),
                          ("max_subscriptions", "e.g. 64"), ("orders_per_s", "e.g. 20"),
                          ("connections_per_user", "e.g. 8"),
                          ("countback", "e.g. 300")):
            _positive(f"{key}.{name}", getattr(self, name), fix)
        if not self.users_file:
            raise ConfigError(f"{key}.users_file", "must name a file",
                              'e.g. users_file = "run/users.toml"')
        for i, o in enumerate(self.origins):
            if not o.startswith(("http://", "https://")):
                raise ConfigError(f"{key}.origins[{i}]", f"{o!r} is not an origin",
                                  'e.g. "http://127.0.0.1:8080"')

    @property
    def urls(self) -> tuple[str, ...]:
        """The gateways' base URLs, as a browser reaches them."""
        return tuple(f"http://{hp}" for hp in self.listen)


@dataclass(frozen=True, slots=True)
class EaSection:
    """One EA instance (``[[ea]]``): the Python process beside a MetaTrader 5 terminal that
    pushes its ticks to a feed and executes the executor's orders there (docs/PROTOCOL.md
    sections 9 and 18). Two instances naming the same accounts are an active and a standby."""

    name: str = "ea-1"
    accounts: tuple[str, ...] = ()  # tickmesh accounts it trades; (): every account
    trades: bool = True  # take orders (false: a tick-only instance)
    feed: str = ""  # the feed (source = "ea") it pushes ticks to; "": no ticks
    symbols: tuple[str, ...] = ()  # ticks of these; (): the feed's symbols
    terminal: TerminalKind = "sim"  # "mt5": the MetaTrader5 package (Windows only)
    sim_endpoint: str = "tcp://127.0.0.1:7460"  # sim: the simulated terminal's endpoint
    terminal_path: str = ""  # mt5: terminal64.exe ("": the package finds it)
    login: int = 0  # mt5: the account to log in to (0: the terminal's current one)
    server: str = ""  # mt5: the trade server of ``login``
    poll_ms: float = 5.0  # ticks are read from the terminal this often
    backfill_ms: float = 3000.0  # after a start, ticks are read from this far back at most
    state_dir: str = ""  # the tick cursors are kept here: a restart reads from them ("": no)
    sync_window_s: float = 2.0  # a new holder reads this much of the terminal's history
    history_window_s: float = 86_400.0  # an old order's check reads back at most this far
    send_retries: int = 2  # a requote (or another transient retcode) is sent again this often

    def validate(self, key: str) -> None:
        try:
            check_stream(self.name)
        except ValueError as exc:
            raise ConfigError(f"{key}.name", str(exc)) from None
        for i, a in enumerate(self.accounts):
            if not a or a == "*":
                raise ConfigError(f"{key}.accounts[{i}]", f"{a!r} is not an account",
                                  "list accounts, or leave accounts out for every account")
        _check_endpoint(f"{key}.sim_endpoint", self.sim_endpoint)
        _positive(f"{key}.poll_ms", self.poll_ms, "e.g. poll_ms = 5")
        _non_negative(f"{key}.backfill_ms", self.backfill_ms, "e.g. backfill_ms = 2000")
        _positive(f"{key}.sync_window_s", self.sync_window_s, "e.g. sync_window_s = 30")
        _positive(f"{key}.history_window_s", self.history_window_s, "e.g. 86400")
        _non_negative(f"{key}.send_retries", self.send_retries, "e.g. send_retries = 2")
        if not self.trades and not self.feed:
            raise ConfigError(f"{key}.feed", "an instance that takes no orders must feed ticks",
                              'name its feed, e.g. feed = "sim", or set trades = true')


@dataclass(frozen=True, slots=True)
class TerminalSection:
    """The simulated MetaTrader 5 terminal (``[terminal]``, ``tickmesh sim-terminal``): a
    process of its own that quotes ``symbols`` and keeps an account's orders, positions and
    deals on disk, for tests, demos and ``./scripts/up`` (docs/PROTOCOL.md section 19)."""

    enabled: bool = False
    bind: str = "tcp://127.0.0.1:7460"
    symbols: tuple[str, ...] = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
    quotes: QuoteSource = "simulator"
    rate: float = 1000.0  # simulator: ticks per second over all symbols
    seed: int = 0
    file: str = ""  # replay: CSV path (docs/PROTOCOL.md section 9's columns)
    speed: float = 1.0
    loop: bool = True
    data_dir: str = "terminal"  # its journal (orders, deals) lives here, kept across restarts
    tick_history: int = 200_000  # ticks kept per symbol for copy_ticks_from
    partial_lots: float = 0.0  # a deal is at most this many lots, the rest follows (0: whole)
    requote_rate: float = 0.0  # a market order is answered REQUOTE this often (0..1)
    reject_rate: float = 0.0  # a request is answered REJECT this often (0..1)
    max_deviation: float = 0.0  # price moves a market order takes before a requote (0: any)

    def validate(self, key: str) -> None:
        _check_endpoint(f"{key}.bind", self.bind)
        if not self.symbols:
            raise ConfigError(f"{key}.symbols", "is empty", 'e.g. symbols = ["EURUSD"]')
        for i, s in enumerate(self.symbols):
            try:
                check_stream(s)
            except ValueError as exc:
                raise ConfigError(f"{key}.symbols[{i}]", str(exc)) from None
        _positive(f"{key}.rate", self.rate, "ticks per second, e.g. rate = 1000")
        _non_negative(f"{key}.speed", self.speed, "1.0 = recorded pace, 0 = max")
        if self.quotes == "replay" and not self.file:
            raise ConfigError(f"{key}.file", 'is required for quotes = "replay"',
                              'file = "ticks.csv"')
        _positive(f"{key}.tick_history", self.tick_history, "e.g. tick_history = 200000")
        _non_negative(f"{key}.partial_lots", self.partial_lots, "lots per deal, 0: whole")
        for name in ("requote_rate", "reject_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{key}.{name}", f"must be in 0..1, got {value!r}",
                                  "a fraction of requests, e.g. 0.01")
        _non_negative(f"{key}.max_deviation", self.max_deviation, "a price distance, 0: any")


NodeKind = Literal["feed", "recovery", "subscriber", "monitor", "backend", "executor", "trader",
                   "historian", "gateway", "ea", "terminal"]


@dataclass(frozen=True, slots=True)
class SchedSection:
    """CPU scheduling of the node processes. ``realtime_priority`` 1-99 runs the ``realtime``
    kinds under ``SCHED_FIFO`` at that priority (``bus.sched``: why, and what it needs); 0 leaves
    every node under the normal scheduler. Default off: it needs root or ``CAP_SYS_NICE``."""

    realtime_priority: int = 0
    realtime: tuple[NodeKind, ...] = ("feed", "subscriber")
    cpus: tuple[int, ...] = ()  # the realtime kinds run on these CPUs only ((): any)

    def validate(self, key: str) -> None:
        if not 0 <= self.realtime_priority <= 99:
            raise ConfigError(f"{key}.realtime_priority",
                              f"must be 0 (off) or 1-99, got {self.realtime_priority}",
                              "e.g. realtime_priority = 40")
        for i, cpu in enumerate(self.cpus):
            _non_negative(f"{key}.cpus[{i}]", cpu, "a CPU number, e.g. cpus = [1]")

    def priority_for(self, kind: NodeKind) -> int:
        """The ``SCHED_FIFO`` priority a node of ``kind`` runs at (0: the normal scheduler)."""
        return self.realtime_priority if kind in self.realtime else 0


@dataclass(frozen=True, slots=True)
class MeshConfig:
    mesh: MeshSection = field(default_factory=MeshSection)
    redis: RedisSection = field(default_factory=RedisSection)
    feeds: tuple[FeedSection, ...] = (FeedSection(),)
    recovery: tuple[RecoverySection, ...] = (RecoverySection(),)
    subscriber: SubscriberSection = field(default_factory=SubscriberSection)
    orders: OrdersSection = field(default_factory=OrdersSection)
    sched: SchedSection = field(default_factory=SchedSection)
    history: HistorySection = field(default_factory=HistorySection)
    gateway: GatewaySection = field(default_factory=GatewaySection)
    ea: tuple[EaSection, ...] = ()
    terminal: TerminalSection = field(default_factory=TerminalSection)

    def validate(self) -> MeshConfig:
        self.redis.validate("redis")
        names: set[str] = set()
        owner: dict[str, str] = {}
        for i, f in enumerate(self.feeds):
            key = f"feeds[{i}]"
            f.validate(key)
            if f.name in names:
                raise ConfigError(f"{key}.name", f"{f.name!r} is used twice", "name each node")
            names.add(f.name)
            for s in f.symbols:
                if s in owner:
                    raise ConfigError(f"{key}.symbols", f"{s!r} is already published by feed "
                                      f"{owner[s]!r}", "each symbol belongs to one feed")
                owner[s] = f.name
        for i, r in enumerate(self.recovery):
            r.validate(f"recovery[{i}]")
        self.subscriber.validate("subscriber")
        self.orders.validate("orders")
        self.sched.validate("sched")
        self.history.validate("history")
        self.gateway.validate("gateway")
        self.terminal.validate("terminal")
        self._validate_ea()
        return self

    def _validate_ea(self) -> None:
        feeds = {f.name: f for f in self.feeds}
        names: set[str] = set()
        for i, e in enumerate(self.ea):
            key = f"ea[{i}]"
            e.validate(key)
            if e.name in names:
                raise ConfigError(f"{key}.name", f"{e.name!r} is used twice",
                                  "name each instance")
            names.add(e.name)
            if e.feed:
                feed = feeds.get(e.feed)
                if feed is None or feed.source != "ea":
                    raise ConfigError(f"{key}.feed", f"{e.feed!r} is not a feed with "
                                      'source = "ea"', f"feeds: {sorted(feeds)}")
                extra = set(e.symbols) - set(feed.symbols)
                if extra:
                    raise ConfigError(f"{key}.symbols", f"{sorted(extra)} are not symbols of "
                                      f"feed {e.feed!r}", "list some of the feed's symbols")
        if self.orders.execution == "ea" and not any(e.trades for e in self.ea):
            raise ConfigError("orders.execution", '"ea" needs an [[ea]] instance that trades',
                              'add [[ea]] name = "ea-1", or execution = "simulated"')

    def ea_instance(self, name: str) -> EaSection:
        for e in self.ea:
            if e.name == name:
                return e
        raise ConfigError("ea", f"no EA instance named {name!r}",
                          f"choose one of {[e.name for e in self.ea]}")

    def ea_symbols(self, e: EaSection) -> tuple[str, ...]:
        """The symbols instance ``e`` pushes ticks of (none without a feed)."""
        if not e.feed:
            return ()
        return e.symbols or self.feed(e.feed).symbols

    def feed(self, name: str) -> FeedSection:
        for f in self.feeds:
            if f.name == name:
                return f
        raise ConfigError("feeds", f"no feed named {name!r}",
                          f"choose one of {[f.name for f in self.feeds]}")

    def recovery_node(self, name: str) -> RecoverySection:
        for r in self.recovery:
            if r.name == name:
                return r
        raise ConfigError("recovery", f"no recovery node named {name!r}",
                          f"choose one of {[r.name for r in self.recovery]}")

    @property
    def recovery_endpoints(self) -> tuple[str, ...]:
        return tuple(r.bind.replace("*", "127.0.0.1") for r in self.recovery)

    @property
    def feed_endpoints(self) -> tuple[str, ...]:
        return tuple(f.pub.replace("*", "127.0.0.1") for f in self.feeds)


def _positive(key: str, value: float, fix: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(key, f"must be a finite number > 0, got {value!r}", fix)


def _non_negative(key: str, value: float, fix: str = "") -> None:
    if not (value >= 0 and math.isfinite(value)):  # `not >=` also catches NaN
        raise ConfigError(key, f"must be a finite number >= 0, got {value!r}", fix)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _coerce(key: str, tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            choices = " | ".join(repr(a) for a in get_args(tp))
            raise ConfigError(key, f"{value!r} is not allowed", f"use one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        return tuple(_coerce(f"{key}[{i}]", get_args(tp)[0], v) for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(key, f"must be {_TYPE_NAMES.get(tp, tp.__name__)}, "
                          f"got {type(value).__name__} {value!r}")
    return value


def _section(cls: type[Any], key: str, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(key, "must be a table", f"write it as [{key}]")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for k in data:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            raise ConfigError(f"{key}.{k}", "unknown key",
                              f"did you mean {close[0]!r}?" if close
                              else f"known keys: {', '.join(sorted(known))}")
    values = {k: _coerce(f"{key}.{k}", hints[k], v) for k, v in data.items()}
    return cls(**values)


_SECTIONS: dict[str, tuple[type[Any], bool]] = {
    "mesh": (MeshSection, False), "redis": (RedisSection, False),
    "feeds": (FeedSection, True), "recovery": (RecoverySection, True),
    "subscriber": (SubscriberSection, False), "orders": (OrdersSection, False),
    "sched": (SchedSection, False), "history": (HistorySection, False),
    "gateway": (GatewaySection, False), "ea": (EaSection, True),
    "terminal": (TerminalSection, False),
}


def parse_config(data: dict[str, Any]) -> MeshConfig:
    """Build and validate a :class:`MeshConfig` from a parsed TOML document."""
    values: dict[str, Any] = {}
    for k, v in data.items():
        if k not in _SECTIONS:
            close = difflib.get_close_matches(k, _SECTIONS, n=1)
            raise ConfigError(k, "unknown section", f"did you mean [{close[0]}]?" if close
                              else f"sections: {', '.join(_SECTIONS)}")
        cls, many = _SECTIONS[k]
        if many:
            if not isinstance(v, list) or not v:
                raise ConfigError(k, "must be a non-empty array of tables",
                                  f"write each entry as [[{k}]]")
            values[k] = tuple(_section(cls, f"{k}[{i}]", item) for i, item in enumerate(v))
        else:
            values[k] = _section(cls, k, v)
    return MeshConfig(**values).validate()


def load_config(path: str | Path | None) -> MeshConfig:
    """Read a mesh file; ``None`` gives :func:`default_config`."""
    if path is None:
        return default_config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read the mesh file: {exc.strerror}",
                          "check the path given with --config") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"is not valid TOML: {exc}") from None
    return parse_config(data)


def default_config() -> MeshConfig:
    """The local mesh: one simulated feed, one recovery service, Redis on 6379."""
    return MeshConfig().validate()


def with_overrides(cfg: MeshConfig, **sections: Any) -> MeshConfig:
    """A copy of ``cfg`` with whole sections replaced, validated again."""
    return replace(cfg, **sections).validate()


__all__ = [
    "EaSection",
    "FeedSection",
    "MeshConfig",
    "MeshSection",
    "OrdersSection",
    "RecoverySection",
    "RedisSection",
    "SubscriberSection",
    "TerminalSection",
    "default_config",
    "dump_toml",
    "load_config",
    "parse_config",
    "parse_hostport",
    "with_overrides",
]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(cfg: MeshConfig) -> str:
    """The mesh file that :func:`load_config` reads back as ``cfg`` (every key written)."""
    lines: list[str] = []
    for name, (_cls, many) in _SECTIONS.items():
        value = getattr(cfg, name)
        for item in (value if many else (value,)):
            lines.append(f"[[{name}]]" if many else f"[{name}]")
            lines += [f"{f.name} = {_toml_value(getattr(item, f.name))}" for f in fields(item)]
            lines.append("")
    return "\n".join(lines)
