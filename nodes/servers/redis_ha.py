"""A local Redis high-availability topology for the mesh's two store roles, run for real.

Rules of the topology:

* **RTS** (tick checkpoints) may lose old keys under memory pressure: ``allkeys-lru`` with a
  ``maxmemory``. **RTSS** (order and trade state) must never evict: ``noeviction``. One
  instance has one eviction policy, so each role is its own group: a master and one replica.
* All four redis-servers persist to an AOF (``appendfsync everysec``) and share one optional
  password (``requirepass`` for clients, ``masterauth`` for replication).
* Three Sentinels monitor both masters (quorum 2), so any one of them may fail; each master is
  known to them under its role's name (``tickmesh-rts``, ``tickmesh-rtss``), the names a mesh
  file's ``[redis]`` section points at.
* ``down-after-milliseconds`` defaults to 1500. Below that Sentinel sometimes flags the *new*
  master down about down-after-milliseconds after a switch and tries a second failover: at
  100-200 ms in 10 of 10 trials (REFERENCES.md, 3); at 500 ms in about half the switches, in
  the Redis drill and in five unloaded kills; at 1000 ms in none of five unloaded kills but in
  3 of 9 loaded drill runs. Each such attempt also holds the next real failover back by
  2 x failover-timeout (switches of 7-9 s instead of 2-3). At 1500 ms: none in five unloaded
  kills and 26 drill runs (130 kills); the switch takes about 2.75 s (1000 ms: 2.2 s).
* A crashed master comes back as a replica of whoever is master now. Started with its old
  config it would be a second master, taking writes, until Sentinel converts it (about 8 s
  later), so ``restart()`` asks the Sentinels first.
* A server that rejoins is not promoted until it has caught up: ``restart()`` starts it with
  ``replica-priority 0`` (Sentinel never promotes such a replica) and raises the priority
  once its replication link is up. Without that, a second failover while it was still
  loading its own stale AOF made it master and its stale data won: the Redis drill lost
  6,921 acknowledged orders that way. With it, such a failover is refused
  (``-failover-abort-no-good-slave``) and the group waits for the master it has.

``RedisHA`` starts, stops, kills and restarts the processes; ``main()`` is the
``scripts/run-redis-ha`` launcher. Everything here blocks: asyncio code calls it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

from nodes.servers.redis_server import (
    RedisProcess,
    ReplyError,
    RespValue,
    SentinelProcess,
    ServerError,
    command,
    free_port,
)

__all__ = ["HAPorts", "RedisHA", "Role", "main", "mesh_redis_section"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SENTINEL_COUNT = 3
QUORUM = 2
DEFAULT_DOWN_AFTER_MS = 1500
DEFAULT_REPLICA_PRIORITY = 100  # redis.conf's default
DEFAULT_FAILOVER_TIMEOUT_MS = 5_000
DEFAULT_RTS_MAXMEMORY = "256mb"
DEFAULT_BASE_PORT = 6379
# Sentinels conventionally listen 20000 above their Redis (6379 -> 26379).
_SENTINEL_PORT_OFFSET = 20_000

_POLL_INTERVAL_S = 0.02
_QUERY_TIMEOUT_S = 0.5
_STOP_TIMEOUT_S = 5.0

# Config every server of the topology gets (``server_extra`` may override it).
_SERVER_DEFAULTS = {
    # Redis 7 waits 5 s by default for more replicas before a diskless full sync; with one
    # replica per master that only delays the first sync (and every rejoin) by 5 s.
    "repl-diskless-sync-delay": "0",
}

Address = tuple[str, int]


class Role(enum.StrEnum):
    """The two store roles; the value is the prefix of the role's directories."""

    RTS = "rts"
    RTSS = "rtss"


MASTER_NAMES: dict[Role, str] = {Role.RTS: "tickmesh-rts", Role.RTSS: "tickmesh-rtss"}


@dataclass(frozen=True, slots=True)
class HAPorts:
    """Loopback ports of the topology: per role, the first-started master and its replica."""

    rts: tuple[int, int]
    rtss: tuple[int, int]
    sentinels: tuple[int, int, int]

    def __post_init__(self) -> None:
        every = [*self.rts, *self.rtss, *self.sentinels]
        if len(set(every)) != len(every):
            raise ValueError(f"ports must all differ: {every}")
        if any(not 0 < port < 65536 for port in every):
            raise ValueError(f"ports must be in 1..65535: {every}")

    @classmethod
    def from_base(cls, base: int) -> HAPorts:
        """RTS on base, base+1; RTSS on base+2, base+3; Sentinels on base+20000..+20002."""
        sentinel = base + _SENTINEL_PORT_OFFSET
        return cls(
            rts=(base, base + 1),
            rtss=(base + 2, base + 3),
            sentinels=(sentinel, sentinel + 1, sentinel + 2),
        )

    @classmethod
    def free(cls) -> HAPorts:
        """Seven ports that were free a moment ago (see
        ``nodes.servers.redis_server.free_port``)."""
        return cls(
            rts=(free_port(HOST), free_port(HOST)),
            rtss=(free_port(HOST), free_port(HOST)),
            sentinels=(free_port(HOST), free_port(HOST), free_port(HOST)),
        )

    @classmethod
    def parse(cls, text: str) -> HAPorts:
        """``RTS_MASTER,RTS_REPLICA,RTSS_MASTER,RTSS_REPLICA,S1,S2,S3``."""
        try:
            ports = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(f"ports must be integers: {text!r}") from None
        if len(ports) != 7:
            raise ValueError(f"need 7 comma-separated ports (4 redis, 3 sentinels): {text!r}")
        return cls(
            rts=(ports[0], ports[1]),
            rtss=(ports[2], ports[3]),
            sentinels=(ports[4], ports[5], ports[6]),
        )


def _as_dict(reply: RespValue) -> dict[str, str]:
    """A flat ``[field, value, ...]`` reply (``SENTINEL master``) as a dict."""
    if not isinstance(reply, list):
        return {}
    items = [str(item) for item in reply]
    return dict(zip(items[0::2], items[1::2], strict=False))


def _info_fields(reply: RespValue) -> dict[str, str]:
    """The ``field:value`` lines of an INFO reply."""
    fields: dict[str, str] = {}
    for line in str(reply).splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key] = value
    return fields


def _as_address(reply: RespValue) -> Address | None:
    if isinstance(reply, list) and len(reply) == 2:
        return (str(reply[0]), int(str(reply[1])))
    return None


class RedisHA:
    """Two Redis groups (RTS, RTSS: master + replica each) and three Sentinels on loopback.

    ``start()`` returns once replication is up and every Sentinel knows both masters, their
    replicas and the other Sentinels; ``stop()`` shuts everything down, Sentinels first (so a
    stopping master does not cause a failover). Also a context manager.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        password: str | None = None,
        down_after_ms: int = DEFAULT_DOWN_AFTER_MS,
        failover_timeout_ms: int = DEFAULT_FAILOVER_TIMEOUT_MS,
        ports: HAPorts | None = None,
        rts_maxmemory: str = DEFAULT_RTS_MAXMEMORY,
        server_extra: dict[str, str] | None = None,
    ) -> None:
        """``server_extra`` adds raw config lines to all four redis-servers (tests use it to
        inject faults or tighten fsync)."""
        if down_after_ms <= 0:
            raise ValueError(f"down_after_ms must be positive, not {down_after_ms}")
        self._data_dir = Path(data_dir).resolve()
        self._password = password
        self._down_after_ms = down_after_ms
        ports = ports if ports is not None else HAPorts.free()
        self._ports = ports
        role_settings = {
            Role.RTS: ("allkeys-lru", rts_maxmemory, ports.rts),
            Role.RTSS: ("noeviction", None, ports.rtss),
        }
        # Per role, index 0 is started as the master and 1 as its replica; Sentinel may swap
        # them later, so nothing below assumes which one is master now.
        self._servers: dict[Role, tuple[RedisProcess, RedisProcess]] = {}
        for role, (policy, maxmemory, (first, second)) in role_settings.items():
            servers: list[RedisProcess] = []
            for index, port in enumerate((first, second)):
                servers.append(
                    RedisProcess(
                        port=port,
                        host=HOST,
                        data_dir=self._data_dir / f"{role.value}-{index + 1}",
                        maxmemory_policy=policy,
                        maxmemory=maxmemory,
                        password=password,
                        replica_of=(HOST, first) if index == 1 else None,
                        extra={**_SERVER_DEFAULTS, **(server_extra or {})},
                    )
                )
            self._servers[role] = (servers[0], servers[1])
        masters = [(MASTER_NAMES[role], HOST, self._servers[role][0].port) for role in Role]
        self._sentinels = [
            SentinelProcess(
                masters=masters,
                data_dir=self._data_dir / f"sentinel-{index + 1}",
                port=port,
                host=HOST,
                quorum=QUORUM,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                password=password,
            )
            for index, port in enumerate(ports.sentinels)
        ]

    # -- description ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def ports(self) -> HAPorts:
        return self._ports

    @property
    def sentinels(self) -> list[Address]:
        return [sentinel.address for sentinel in self._sentinels]

    @property
    def sentinel_processes(self) -> list[SentinelProcess]:
        return list(self._sentinels)

    @property
    def master_names(self) -> dict[Role, str]:
        return dict(MASTER_NAMES)

    def servers(self, role: Role | str) -> tuple[RedisProcess, RedisProcess]:
        """The role's two redis-servers, the one first started as master first."""
        return self._servers[Role(role)]

    @property
    def processes(self) -> list[RedisProcess | SentinelProcess]:
        every: list[RedisProcess | SentinelProcess] = list(self._sentinels)
        for pair in self._servers.values():
            every.extend(pair)
        return every

    def process_at(self, address: Address) -> RedisProcess:
        """The redis-server of this topology that serves ``address``."""
        for pair in self._servers.values():
            for server in pair:
                if server.address == tuple(address):
                    return server
        raise KeyError(f"no redis-server of this topology at {address[0]}:{address[1]}")

    def role_of(self, server: RedisProcess) -> Role:
        for role, pair in self._servers.items():
            if server in pair:
                return role
        raise KeyError(f"{server!r} is not part of this topology")

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Start masters, replicas and Sentinels, and return once the topology is settled.

        Raises ``ServerError`` (after stopping whatever it started) if a process fails to
        start or the topology does not settle within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        try:
            for role in Role:
                self._servers[role][0].start(timeout=self._left(deadline))
            for role in Role:
                self._servers[role][1].start(timeout=self._left(deadline))
            for role in Role:
                self._wait_replica_linked(self._servers[role][1], deadline)
            for sentinel in self._sentinels:
                sentinel.start(timeout=self._left(deadline))
            self._wait_sentinels_settled(deadline)
        except BaseException:
            self.stop()
            raise
        log.info(
            "Redis HA up in %s: RTS %s, RTSS %s, sentinels %s",
            self._data_dir,
            [server.port for server in self._servers[Role.RTS]],
            [server.port for server in self._servers[Role.RTSS]],
            [sentinel.port for sentinel in self._sentinels],
        )

    def stop(self) -> None:
        """Stop everything cleanly, Sentinels first; safe to call more than once."""
        # Sentinels first, or they would fail over a stopping master; then replicas, because
        # a master's clean shutdown waits (up to a second) for connected replicas to catch up.
        servers = [server for pair in self._servers.values() for server in pair]
        servers.sort(key=lambda server: not self._is_replica(server))
        errors: list[BaseException] = []
        for process in [*self._sentinels, *servers]:
            try:
                process.stop(timeout=_STOP_TIMEOUT_S)
            except Exception as exc:  # keep stopping the others; re-raised below
                log.exception("stopping %r failed", process)
                errors.append(exc)
        if errors:
            raise ServerError(f"{len(errors)} process(es) failed to stop: {errors}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the Sentinels say ----------------------------------------------------------

    def master_address(self, role: Role | str) -> Address:
        """The role's master as a majority of the Sentinels report it."""
        name = MASTER_NAMES[Role(role)]
        reports = self._master_reports(name)
        counts = Counter(address for address in reports if address is not None)
        if counts:
            address, votes = counts.most_common(1)[0]
            if votes >= self._majority:
                return address
        raise ServerError(f"no majority of sentinels agrees on the master of {name}: {reports}")

    def wait_switch(
        self, role: Role | str, old: Address, timeout: float, *, since: float | None = None
    ) -> tuple[Address, float]:
        """Wait until a majority of the Sentinels report one master other than ``old``.

        Returns the new address and the seconds elapsed since ``since`` (a
        ``time.monotonic()`` value; default: when this call started).
        """
        name = MASTER_NAMES[Role(role)]
        started = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout
        reports: list[Address | None] = []
        while True:
            reports = self._master_reports(name)
            counts = Counter(a for a in reports if a is not None and a != tuple(old))
            if counts:
                address, votes = counts.most_common(1)[0]
                if votes >= self._majority:
                    return address, time.monotonic() - started
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"sentinels did not switch {name} away from {old[0]}:{old[1]} within "
                    f"{timeout:.1f} s; they report {reports}"
                )
            time.sleep(_POLL_INTERVAL_S)

    # -- faults --------------------------------------------------------------------------

    def kill_master(self, role: Role | str) -> Address:
        """SIGKILL the role's current master (as the Sentinels report it); return its address."""
        address = self.master_address(role)
        self.process_at(address).kill()
        log.info("killed the %s master at %s:%d", Role(role).value, *address)
        return address

    def restart(self, process: RedisProcess, timeout: float = 15.0) -> None:
        """Bring a stopped or killed redis-server back into its group.

        If the Sentinels report another server as the group's master, it starts as that
        master's replica (never as a second master) and this returns once it reports
        ``role:slave`` with its link up; otherwise it starts as the master it was.
        """
        role = self.role_of(process)
        deadline = time.monotonic() + timeout
        master = self.master_address(role)
        rejoins = master != process.address
        process.replica_of = master if rejoins else None
        # Not electable until it has the master's data (the module's docstring: why).
        process.replica_priority = 0 if rejoins else None
        process.restart(timeout=self._left(deadline))
        # Settled, whoever is master then (a server that comes back as the master it was
        # needs the Sentinels to see its replica again): a group with one master the
        # Sentinels agree on and the other server linked to it as a replica.
        self._wait_group_settled(Role(role), deadline, process.log_path)
        if rejoins:
            # Linked means the full or partial sync is done: it may be promoted again.
            command(process.address, "CONFIG", "SET", "replica-priority",
                    str(DEFAULT_REPLICA_PRIORITY), password=self._password,
                    timeout=_QUERY_TIMEOUT_S)
            process.replica_priority = None
        log.info("restarted %s:%d; %s master is %s:%d", *process.address, role,
                 *self.master_address(role))

    def info(self, server: RedisProcess, section: str = "replication") -> dict[str, str]:
        """``INFO section`` of one of the topology's servers, as a dict."""
        return _info_fields(
            command(server.address, "INFO", section, password=self._password,
                    timeout=_QUERY_TIMEOUT_S)
        )

    # -- internals -----------------------------------------------------------------------

    def _is_replica(self, server: RedisProcess) -> bool:
        if not server.running:
            return False
        try:
            return self.info(server).get("role") == "slave"
        except (OSError, ServerError):
            return False

    @property
    def _majority(self) -> int:
        return len(self._sentinels) // 2 + 1

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.1)

    def _master_reports(self, name: str) -> list[Address | None]:
        reports: list[Address | None] = []
        for sentinel in self._sentinels:
            try:
                reply = command(
                    sentinel.address, "SENTINEL", "get-master-addr-by-name", name,
                    timeout=_QUERY_TIMEOUT_S,
                )
            except (OSError, ReplyError):
                reports.append(None)
            else:
                reports.append(_as_address(reply))
        return reports

    def _wait_until(
        self, check: Callable[[], str | None], deadline: float, what: str, log_of: Path
    ) -> None:
        """Poll ``check`` (None: done; a string: why not yet) until ``deadline``."""
        while True:
            try:
                why_not = check()
            except ReplyError as exc:
                # An answer, but a refusal (a wrong password, most likely): waiting longer
                # will not change it.
                raise ServerError(f"{what}: {exc}") from exc
            except OSError as exc:
                why_not = f"{type(exc).__name__}: {exc}"
            if why_not is None:
                return
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"timed out waiting for {what} ({why_not}); end of {log_of}:\n"
                    f"{_tail(log_of)}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _wait_group_settled(self, role: Role, deadline: float, log_of: Path) -> None:
        def check() -> str | None:
            try:
                master = self.master_address(role)
            except ServerError as exc:
                return str(exc)
            for server in self.servers(role):
                fields = self.info(server)
                if server.address == master:
                    if fields.get("role") != "master":
                        return f"{master[0]}:{master[1]} is role:{fields.get('role')}"
                elif (fields.get("role") != "slave" or fields.get("master_link_status") != "up"
                      or fields.get("master_port") != str(master[1])):
                    return (f"{server.host}:{server.port} is not linked to "
                            f"{master[0]}:{master[1]} yet")
            return None

        self._wait_until(check, deadline, f"the {role} group to settle", log_of)

    def _wait_replica_linked(self, replica: RedisProcess, deadline: float) -> None:
        def check() -> str | None:
            fields = self.info(replica)
            if fields.get("role") != "slave":
                return f"role:{fields.get('role')}"
            status = fields.get("master_link_status")
            if status == "up":
                return None
            refused = _replication_auth_failure(replica)
            if refused is not None:
                # Retrying will not fix a password mismatch: say so now.
                raise ServerError(
                    f"the replica {replica.host}:{replica.port} cannot authenticate to its "
                    f"master {fields.get('master_host')}:{fields.get('master_port')} (its "
                    f"masterauth does not match the master's requirepass): {refused}"
                )
            return f"master_link_status:{status}"

        self._wait_until(
            check,
            deadline,
            f"the replica {replica.host}:{replica.port} to link to its master",
            replica.log_path,
        )

    def _wait_sentinels_settled(self, deadline: float) -> None:
        others = len(self._sentinels) - 1
        for sentinel in self._sentinels:
            for role in Role:
                name = MASTER_NAMES[role]
                expected = self._servers[role][0].address

                def check(sentinel: SentinelProcess = sentinel, name: str = name,
                          expected: Address = expected) -> str | None:
                    fields = _as_dict(
                        command(sentinel.address, "SENTINEL", "master", name,
                                timeout=_QUERY_TIMEOUT_S)
                    )
                    seen = (fields.get("ip"), int(fields.get("port", "0")))
                    if seen != expected:
                        return f"master at {seen}, expected {expected}"
                    if fields.get("flags") != "master":
                        return f"flags {fields.get('flags')}"
                    if int(fields.get("num-slaves", "0")) < 1:
                        return "no replica known yet"
                    if int(fields.get("num-other-sentinels", "0")) < others:
                        return f"knows {fields.get('num-other-sentinels')} other sentinels"
                    return None

                self._wait_until(
                    check,
                    deadline,
                    f"sentinel {sentinel.port} to know {name}, its replica and {others} "
                    "other sentinels",
                    sentinel.log_path,
                )


def _replication_auth_failure(replica: RedisProcess) -> str | None:
    """The replica's last replication log line if it says its master refused its AUTH."""
    pid = replica.pid
    if pid is None:
        return None
    # Lines start with "<pid>:<role char>": only this run's lines count (the log is appended).
    prefix = f"{pid}:"
    last = None
    for line in _tail(replica.log_path, 50).splitlines():
        if line.startswith(prefix) and "MASTER" in line:
            last = line
    if last is not None and "Unable to AUTH to MASTER" in last:
        return last.split("# ", 1)[-1]
    return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def mesh_redis_section(ha: RedisHA) -> str:
    """The mesh file's ``[redis]`` section that points at ``ha``'s Sentinels."""
    sentinels = ", ".join(json.dumps(f"{host}:{port}") for host, port in ha.sentinels)
    lines = [
        "[redis]",
        f"sentinels = [{sentinels}]",
        f"master = {json.dumps(MASTER_NAMES[Role.RTS])}",
        f"orders_master = {json.dumps(MASTER_NAMES[Role.RTSS])}",
    ]
    if ha.password is not None:
        # A JSON string is a valid TOML basic string.
        lines.append(f"password = {json.dumps(ha.password)}")
    return "\n".join(lines) + "\n"


# -- launcher ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run-redis-ha",
        description="Run the mesh's Redis HA topology (RTS and RTSS, master + replica each, "
        "three Sentinels) on loopback until Ctrl-C or SIGTERM, and print the mesh file's "
        "[redis] section that points at it.",
    )
    p.add_argument("--dir", type=Path, default=Path("run/redis-ha"),
                   help="data directory (default: ./run/redis-ha)")
    p.add_argument("--password", default=None,
                   help="requirepass/masterauth for all servers (default: none)")
    p.add_argument("--down-after-ms", type=int, default=DEFAULT_DOWN_AFTER_MS,
                   help=f"Sentinel down-after-milliseconds (default {DEFAULT_DOWN_AFTER_MS}; "
                   "lower values caused double failovers on a test machine)")
    p.add_argument("--rts-maxmemory", default=DEFAULT_RTS_MAXMEMORY,
                   help=f"maxmemory of the RTS (allkeys-lru) group "
                   f"(default {DEFAULT_RTS_MAXMEMORY})")
    ports = p.add_mutually_exclusive_group()
    ports.add_argument("--base-port", type=int, default=None,
                       help=f"RTS on BASE, BASE+1; RTSS on BASE+2, BASE+3; Sentinels on "
                       f"BASE+20000..+20002 (default {DEFAULT_BASE_PORT})")
    ports.add_argument("--ports", type=HAPorts.parse, default=None,
                       metavar="RTS_M,RTS_R,RTSS_M,RTSS_R,S1,S2,S3",
                       help="explicit ports (RTS master and replica, RTSS master and replica, "
                       "three Sentinels)")
    p.add_argument("--for", dest="run_for", type=float, default=None, metavar="SECONDS",
                   help="stop by itself after SECONDS (default: run until signalled)")
    p.add_argument("--start-timeout", type=float, default=30.0,
                   help="seconds to wait for the topology to settle (default 30)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.ports is not None:
        ports: HAPorts = args.ports
    else:
        ports = HAPorts.from_base(
            args.base_port if args.base_port is not None else DEFAULT_BASE_PORT
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ha = RedisHA(
            args.dir,
            password=args.password,
            down_after_ms=args.down_after_ms,
            ports=ports,
            rts_maxmemory=args.rts_maxmemory,
        )
        try:
            ha.start(timeout=args.start_timeout)
        except ServerError as exc:
            print(f"run-redis-ha: {exc}", file=sys.stderr)
            return 1
        try:
            print(mesh_redis_section(ha), end="", flush=True)
            stop.wait(args.run_for)
        finally:
            ha.stop()
        log.info("Redis HA stopped")
        return 0
    except ValueError as exc:
        print(f"run-redis-ha: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
