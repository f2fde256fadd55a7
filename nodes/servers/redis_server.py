"""Start and stop real redis-server and redis-sentinel processes.

Tests, the launcher and failure drills use these to run the state store for real on loopback:
each process gets a generated config in its own data directory, is started in its own session
(a Ctrl-C meant for the test run does not reach it), and is ready once it answers ``PING``.
``kill()`` is a crash (SIGKILL), ``stop()`` a clean shutdown, ``restart()`` brings the same
server back on the same port and data directory. An ``atexit`` guard kills whatever is still
running when Python exits, so a failed test never leaves a server behind.

``command()`` is a minimal blocking RESP client for control-plane queries (INFO, CONFIG GET,
SENTINEL ...) where pulling in a full client would be overkill.

Starting blocks until the server is ready: asyncio code calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from protocols.errors import ServerError

__all__ = [
    "RedisProcess",
    "ReplyError",
    "RespValue",
    "SentinelProcess",
    "ServerError",
    "command",
    "free_port",
]

log = logging.getLogger(__name__)

# Where Debian installs the servers; searched after PATH because a non-login root shell may
# not have /usr/sbin on PATH. Tests replace this to simulate a machine without the binaries.
_FALLBACK_DIRS: tuple[Path, ...] = (Path("/usr/bin"), Path("/usr/sbin"))

_LOG_TAIL_LINES = 20
_PING_INTERVAL_S = 0.02
# A port picked by free_port() can be taken by someone else before the server binds it:
# start() then tries again on another port, this many times in all.
_PORT_RACE_RETRIES = 5
_ADDRESS_IN_USE = "Address already in use"

_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            log.warning("killing leftover server pid %d at exit", proc.pid)
            _killpg(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _live.discard(proc)


# Ports handed out for servers come from below the kernel's ephemeral range (32768-60999 by
# default): a port from that range can be taken as the *local* port of any outgoing connection
# (a Redis client, a ZeroMQ connect) between being picked and being bound, which made tests
# fail with "Address already in use" now and then.
# A port is handed out once per process: random picks would otherwise give one caller the same
# free port twice before either is bound.
_PORTS = (20000, 32000)
_rnd = random.Random()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago, is not ephemeral, and was not
    returned before by this process.

    Check-then-use: another process may bind the port between this check and the caller's
    bind, so use it only where nothing better exists:

    * a socket bound in this process binds port 0 (ZeroMQ: ``tcp://127.0.0.1:*``) and reads
      the port back (``LAST_ENDPOINT``; ``nodes.drills.ports.bind_loopback``);
    * a server that cannot bind port 0 (redis-server, redis-sentinel) takes this as its first
      choice, and ``RedisProcess``/``SentinelProcess.start`` move to another port when the
      bind fails;
    * what remains: endpoints a mesh file must name before the nodes that bind them start,
      and the fixed ports of a Redis HA topology (its replicas and Sentinels are configured
      with them).
    """
    for _ in range(200):
        port = _rnd.randrange(*_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ServerError(f"no free port in {_PORTS[0]}..{_PORTS[1]} on {host}")


def _find_binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _FALLBACK_DIRS:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerError(f"{name} not found on PATH: install it with `apt-get install {package}`")


def _quote(value: str) -> str:
    """Quote a value for a redis config file, which splits lines on spaces."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The server leads its own session, so its process group also holds any child it forked
    # (an AOF rewrite, say). Only called before the leader is reaped, so the group id is still
    # ours and cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _ping(host: str, port: int, password: str | None, timeout: float) -> bool:
    """True when the server at host:port answers PONG (after AUTH when a password is set)."""
    request = (_resp("AUTH", password) if password is not None else b"") + _resp("PING")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            buffer = b""
            replies_expected = 2 if password is not None else 1
            while buffer.count(b"\r\n") < replies_expected:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                buffer += chunk
    except OSError:
        return False
    # A server still loading its AOF answers -LOADING: not ready yet.
    return buffer.split(b"\r\n")[replies_expected - 1] == b"+PONG"


# A decoded RESP2 reply: simple and bulk strings as str, integers as int, nil as None.
RespValue = str | int | None | list["RespValue"]


class ReplyError(ServerError):
    """A server answered a command with an error reply (``-ERR ...``, ``-WRONGPASS ...``)."""

    def __init__(self, address: tuple[str, int], command: str, reply: str) -> None:
        super().__init__(f"{address[0]}:{address[1]} answered {command} with: {reply}")
        self.address = address
        self.command = command
        self.reply = reply


def _read_reply(stream: _LineReader) -> RespValue | _ErrorReply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    match kind:
        case b"+":
            return body.decode(errors="replace")
        case b"-":
            return _ErrorReply(body.decode(errors="replace"))
        case b":":
            return int(body)
        case b"$":
            size = int(body)
            if size < 0:
                return None
            data = stream.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("connection closed in the middle of a reply")
            return data[:-2].decode(errors="replace")
        case b"*":
            count = int(body)
            if count < 0:
                return None
            items: list[RespValue] = []
            for _ in range(count):
                item = _read_reply(stream)
                if isinstance(item, _ErrorReply):
                    # Only EXEC nests errors in arrays; nothing here sends it.
                    items.append(item.message)
                else:
                    items.append(item)
            return items
    raise ConnectionError(f"not a RESP reply: {line[:40]!r}")


class _ErrorReply:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _LineReader:
    """The two reads RESP needs, on a socket (``socket.makefile`` has no typed equivalent)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def readline(self) -> bytes:
        return self._file.readline()

    def read(self, size: int) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


def command(
    address: tuple[str, int],
    *args: str,
    password: str | None = None,
    timeout: float = 1.0,
) -> RespValue:
    """Send one command on a fresh connection (after AUTH when ``password`` is set) and return
    its decoded reply.

    Raises ``ReplyError`` when the server answers with an error (a refused AUTH included) and
    ``OSError`` (``ConnectionError``, ``TimeoutError``) when it cannot be reached or hangs up.
    """
    with socket.create_connection(address, timeout=timeout) as sock:
        request = (_resp("AUTH", password) if password is not None else b"") + _resp(*args)
        sock.sendall(request)
        stream = _LineReader(sock)
        try:
            if password is not None:
                auth = _read_reply(stream)
                if isinstance(auth, _ErrorReply):
                    raise ReplyError(address, "AUTH", auth.message)
            reply = _read_reply(stream)
        except ValueError as exc:  # a length or integer that is not a number
            raise ConnectionError(f"malformed reply from {address[0]}:{address[1]}: {exc}") from exc
        finally:
            stream.close()
    if isinstance(reply, _ErrorReply):
        raise ReplyError(address, args[0] if args else "", reply.message)
    return reply


class _ServerProcess:
    """A server binary run from a config file in ``data_dir``; ready when it answers PING."""

    _binary = ""
    _package = ""
    _stem = ""

    def __init__(self, *, port: int | None, host: str, data_dir: Path) -> None:
        self._host = host
        self._port_was_given = port is not None
        self._port = port if port is not None else free_port(host)
        self._data_dir = Path(data_dir).resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- subclass hooks ------------------------------------------------------------------

    def _config(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def _write_config(self) -> None:
        lines = [f"{key} {value}" for key, value in self._config()]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def _ping_password(self) -> str | None:
        return None

    def _argv(self, binary: str) -> list[str]:
        return [binary, str(self.config_path)]

    def _is_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once *this* process answers: when the port was taken by another server, that
        one answers PING until ours exits with "Address already in use"."""
        return _ping(self._host, self._port, self._ping_password, timeout=0.5) and (
            self._answering_pid() == proc.pid
        )

    # -- public API ----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self._host, self._port)

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def config_path(self) -> Path:
        return self._data_dir / f"{self._stem}.conf"

    @property
    def log_path(self) -> Path:
        return self._data_dir / f"{self._stem}.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def answers(self, timeout: float = 0.5) -> bool:
        """True if a server (started by anyone) answers PING at this address."""
        return _ping(self.host, self.port, self._ping_password, timeout)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING; raise ServerError otherwise."""
        if self.running:
            raise ServerError(f"{self._binary} on port {self._port} is already running")
        binary = _find_binary(self._binary, self._package)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(_PORT_RACE_RETRIES):
            log_start = self._log_size()
            try:
                self._launch(binary, timeout)
            except ServerError:
                # Only a port we picked ourselves, and never served on, may move: a restart
                # must come back where clients expect it. Only this attempt's log lines
                # count: the log file is kept across starts.
                if (
                    self._port_was_given
                    or self._started_once
                    or attempt == _PORT_RACE_RETRIES - 1
                    or _ADDRESS_IN_USE not in self._log_since(log_start)
                ):
                    raise
                log.info(
                    "port %d was taken before %s bound it; picking another",
                    self._port,
                    self._binary,
                )
                self._port = free_port(self._host)
            else:
                self._started_once = True
                return

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down with SIGTERM, SIGKILL if it is not gone within ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s pid %d ignored SIGTERM for %.1f s; killing it",
                    self._binary,
                    proc.pid,
                    timeout,
                )
                _killpg(proc, signal.SIGKILL)
                proc.wait()
        self._forget(proc)
        log.info("%s on port %d stopped", self._binary, self._port)

    def kill(self) -> None:
        """Crash the server: SIGKILL its process group and wait for it to die."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _killpg(proc, signal.SIGKILL)
            proc.wait()
        self._forget(proc)
        log.info("%s on port %d killed", self._binary, self._port)

    def restart(self, timeout: float = 10.0) -> None:
        """Start the server again on the same port and data directory (stopping it first)."""
        self.stop()
        self.start(timeout=timeout)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self._host}:{self._port} {state}>"

    # -- internals -----------------------------------------------------------------------

    def _launch(self, binary: str, timeout: float) -> None:
        self._write_config()
        with self.log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                self._argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                start_new_session=True,
            )
        self._proc = proc
        _live.add(proc)
        log.info("started %s pid %d on %s:%d", self._binary, proc.pid, self._host, self._port)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self._forget(proc)
                raise ServerError(
                    f"{self._binary} on port {self._port} exited with code {proc.returncode} "
                    f"while starting; end of {self.log_path}:\n{self._log_tail()}"
                )
            if self._is_ready(proc):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerError(
                    f"{self._binary} on port {self._port} did not answer PING within "
                    f"{timeout:.1f} s; end of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(_PING_INTERVAL_S)

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        _live.discard(proc)
        if self._proc is proc:
            self._proc = None

    def _answering_pid(self) -> int | None:
        """The process id of the server answering at this address (``INFO server``)."""
        try:
            info = command(self.address, "INFO", "server", password=self._ping_password,
                           timeout=0.5)
        except (OSError, ServerError):
            return None
        for line in str(info).splitlines():
            if line.startswith("process_id:"):
                with contextlib.suppress(ValueError):
                    return int(line.split(":", 1)[1])
        return None

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        """What the server logged after ``offset`` (bytes), e.g. since an attempt began."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


class RedisProcess(_ServerProcess):
    """A redis-server on loopback, persisted to an append-only file in ``data_dir``."""

    _binary = "redis-server"
    _package = "redis-server"
    _stem = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: Path,
        maxmemory_policy: str = "noeviction",
        maxmemory: str | None = None,
        appendonly: bool = True,
        password: str | None = None,
        replica_of: tuple[str, int] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(port=port, host=host, data_dir=data_dir)
        self._maxmemory_policy = maxmemory_policy
        self._maxmemory = maxmemory
        self._appendonly = appendonly
        self._password = password
        self._replica_of = replica_of
        self.replica_priority: int | None = None  # "replica-priority" at the next start
        self._extra = dict(extra or {})

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def replica_of(self) -> tuple[str, int] | None:
        """The master the generated config follows (None: start as a master).

        Setting it takes effect at the next ``start()``/``restart()``: a failed-over group
        brings a server back as a replica of whoever is master now.
        """
        return self._replica_of

    @replica_of.setter
    def replica_of(self, master: tuple[str, int] | None) -> None:
        self._replica_of = master

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``, ready for ``redis.Redis.from_url``."""
        auth = f":{quote(self._password, safe='')}@" if self._password is not None else ""
        return f"redis://{auth}{self._host}:{self._port}/0"

    @property
    def _ping_password(self) -> str | None:
        return self._password

    def _config(self) -> list[tuple[str, str]]:
        config: dict[str, str] = {
            "bind": self._host,
            "port": str(self._port),
            "daemonize": "no",
            "protected-mode": "no",
            "dir": _quote(str(self._data_dir)),
            "logfile": _quote(str(self.log_path)),
            # No RDB snapshots: persistence under test is the AOF, and a fork per snapshot
            # would only slow tests down.
            "save": '""',
            "appendonly": "yes" if self._appendonly else "no",
            "maxmemory-policy": self._maxmemory_policy,
        }
        if self._appendonly:
            config["appendfsync"] = "everysec"
        if self._maxmemory is not None:
            config["maxmemory"] = self._maxmemory
        if self._password is not None:
            config["requirepass"] = _quote(self._password)
            # A replica in a password-protected group authenticates to its master with the
            # same password.
            config["masterauth"] = _quote(self._password)
        if self._replica_of is not None:
            replica_host, replica_port = self._replica_of
            config["replicaof"] = f"{replica_host} {replica_port}"
        if self.replica_priority is not None:
            config["replica-priority"] = str(self.replica_priority)
        config.update(self._extra)
        return list(config.items())


class SentinelProcess(_ServerProcess):
    """A redis-sentinel on loopback that monitors one master under ``master_name``, or
    several: ``masters`` lists ``(name, host, port)`` for each, with the same settings."""

    _binary = "redis-sentinel"
    _package = "redis-sentinel"
    _stem = "sentinel"

    def __init__(
        self,
        *,
        master_host: str | None = None,
        master_port: int | None = None,
        data_dir: Path,
        master_name: str = "tickmesh",
        port: int | None = None,
        host: str = "127.0.0.1",
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        password: str | None = None,
        masters: Sequence[tuple[str, str, int]] | None = None,
    ) -> None:
        if masters is None:
            if master_host is None or master_port is None:
                raise ValueError("SentinelProcess needs master_host and master_port, or masters")
            masters = [(master_name, master_host, master_port)]
        elif master_host is not None or master_port is not None:
            raise ValueError("give either master_host/master_port or masters, not both")
        if not masters:
            raise ValueError("SentinelProcess needs at least one master to monitor")
        names = [name for name, _, _ in masters]
        if len(set(names)) != len(names):
            raise ValueError(f"master names must be unique: {names}")
        super().__init__(port=port, host=host, data_dir=data_dir)
        self._masters = tuple(masters)
        self._quorum = quorum
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._password = password

    @property
    def master_name(self) -> str:
        """The (first) monitored master's name."""
        return self._masters[0][0]

    @property
    def master_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self._masters)

    def _config(self) -> list[tuple[str, str]]:
        config = [
            ("bind", self._host),
            ("port", str(self._port)),
            ("daemonize", "no"),
            ("protected-mode", "no"),
            ("dir", _quote(str(self._data_dir))),
            ("logfile", _quote(str(self.log_path))),
            # Before `monitor`: addresses are taken as given, never looked up.
            ("sentinel", "resolve-hostnames no"),
        ]
        for name, master_host, master_port in self._masters:
            config += [
                ("sentinel", f"monitor {name} {master_host} {master_port} {self._quorum}"),
                ("sentinel", f"down-after-milliseconds {name} {self._down_after_ms}"),
                ("sentinel", f"failover-timeout {name} {self._failover_timeout_ms}"),
                ("sentinel", f"parallel-syncs {name} 1"),
            ]
            if self._password is not None:
                config.append(("sentinel", f"auth-pass {name} {_quote(self._password)}"))
        return config

    def _write_config(self) -> None:
        # Sentinel rewrites its config with what it learnt (current master after a failover,
        # replicas, its own id); a restart must keep that, as a real sentinel would.
        if self._started_once and self.config_path.exists():
            return
        super()._write_config()
