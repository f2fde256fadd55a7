"""The chart gateway's sessions in Redis, its epoch, and the users file (docs/GATEWAY.md, 2, 5).

Sessions are in the RTSS role's Redis (``[redis] orders_url`` or ``orders_master``), beside the
orders: like an order, a session must not be evicted, and every gateway of the mesh finds it
there, so a reconnect to a restarted gateway or to another one resumes it. Keys, under the
mesh's ``key_prefix`` ``P``::

    P:session:{token_id}    hash: user, accounts (a JSON array), created_ms; TTL session_ttl_s
    P:gw:epoch              the mesh's gateway epoch: random in 1..2**48, set once

The token is never stored: the key names its SHA-256 (``protocols.gateway.auth.token_id``).
A Redis that cannot be reached raises ``StoreUnavailable`` (the gateway answers 503) after the
``[redis] deadline_ms`` ride-through that the order store also gives a master switch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
import time
import tomllib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from bus.config import MeshConfig
from bus.store.connection import RedisConnection, connect_redis, guarded, redis_client, ride_through
from protocols.backoff import Backoff
from protocols.errors import AuthError, ConfigError, StoreError
from protocols.gateway.auth import (
    User,
    Users,
    hash_password,
    new_token,
    public_session_id,
    token_id,
)

__all__ = ["EPOCH_MAX", "TOUCH_EVERY_S", "Session", "SessionStore", "append_users",
           "load_users", "write_demo_users"]

log = logging.getLogger(__name__)

TOUCH_EVERY_S = 60.0  # a session's TTL is renewed at most this often per token
TOUCH_RETRY_S = 5.0  # after a renewal failed (Redis down), the next try waits this long
TOUCHES_KEPT = 65_536  # tokens whose last renewal is remembered (the oldest are forgotten)
EPOCH_MAX = 2**48

_ADD_USER = "tickmesh gateway add-user NAME --accounts ACCOUNT --password-stdin --file {path}"
_HEADER = ("# tickmesh gateway users (docs/GATEWAY.md, 2). Add one with\n# "
           + _ADD_USER.format(path="THIS-FILE") + "\n")
_DEMO_NOTE = "# Demo users of ./scripts/up: alice (password alice), bob (password bob).\n"


# --- the users file ---------------------------------------------------------------------------


def load_users(path: str | Path, *, empty_ok: bool = False) -> Users:
    """The users of the users file at ``path``; every mistake is a ``ConfigError`` that names
    the file and the key (``run/users.toml: users[1].accounts``). With ``empty_ok`` (a file
    being made), a missing file or one without users gives no users instead of an error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if empty_ok:
            return Users()
        raise ConfigError(str(p), "no users file there",
                          "create one: " + _ADD_USER.format(path=p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), f"cannot read the users file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its text says where: "(at line 3, column 9)"
        raise ConfigError(str(p), f"is not valid TOML: {exc}") from None
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("users file %s is readable by others than its owner (its password hashes "
                    "can be guessed at offline): chmod 600 %s", p, p)
    if empty_ok and data in ({}, {"users": []}):  # comments only
        return Users()
    try:
        return Users.from_toml(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc.key}", exc.problem, exc.fix) from None


def append_users(path: str | Path, users: Sequence[User], *, new_file: bool = False,
                 note: str = "") -> None:
    """Add ``users`` to the users file at ``path``, creating it (and its folder) if needed,
    with a comment that says how to add more and ``note``; with ``new_file``, only create it
    (``FileExistsError`` if it exists). The file is left with mode 0600: it holds password
    hashes. The caller checks that the result is valid (``Users``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_EXCL if new_file else 0)
    fd = os.open(p, flags, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)  # a file that existed too
        tables = "\n".join(u.to_toml() for u in users)
        f.write(("\n" + tables) if os.fstat(fd).st_size else (_HEADER + note + tables))


def write_demo_users(path: str | Path) -> None:
    """Write the demo users file (``alice``/``alice`` with account ``ACC-ALICE``, ``bob``/``bob``
    with ``ACC-BOB``) at ``path``, unless a file is there already. Hashes two passwords at
    the default scrypt cost (not on an event loop)."""
    p = Path(path)
    if p.exists():
        return
    demo = [User(name, (f"ACC-{name.upper()}",), hash_password(name), ())
            for name in ("alice", "bob")]
    with contextlib.suppress(FileExistsError):  # made meanwhile elsewhere: that one stands
        append_users(p, demo, new_file=True, note=_DEMO_NOTE)


# --- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in session: ``id`` is its public id (never the token), ``accounts`` the
    accounts of ``user`` when it logged in, ``created_ms`` the login time (epoch ms)."""

    id: str
    user: str
    accounts: tuple[str, ...]
    created_ms: int


class SessionStore:
    """Sessions in Redis, shared by every gateway of the mesh (the RTSS role).

    A command that finds Redis unavailable is tried again until ``deadline_s`` after its
    first try (the order store's ride-through over a master switch), then raises
    ``StoreUnavailable``. Every command here may run twice safely.
    """

    def __init__(self, url: str, key_prefix: str = "tm", ttl_s: float = 3600.0, *,
                 client: aioredis.Redis | None = None, deadline_s: float = 0.0,
                 socket_timeout_s: float = 1.0) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        self.prefix = key_prefix
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.deadline_s = deadline_s
        self.redis = client or redis_client(url, socket_timeout_s)
        self._connection: RedisConnection | None = None
        self._backoff = Backoff(base_s=0.005, cap_s=0.1)
        # token id -> when (the caller's clock) its TTL was last renewed, oldest first
        self._touched: OrderedDict[str, float] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: MeshConfig) -> SessionStore:
        """The session store of a mesh: its RTSS Redis, ``[gateway] session_ttl_s``."""
        section = cfg.redis.orders_role()
        connection = connect_redis(section)
        store = cls(section.url, cfg.mesh.key_prefix, cfg.gateway.session_ttl_s,
                    client=connection.client, deadline_s=section.deadline_ms / 1000)
        store._connection = connection
        return store

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def session_key(self, token: str) -> str:
        """The Redis key of a token's session (``AuthError`` for a malformed token)."""
        return self._key("session", token_id(token))

    async def _call(self, command: Callable[[], Awaitable[Any]], *, ride: bool = True) -> Any:
        result, _ = await ride_through(lambda: guarded(command),
                                       self.deadline_s if ride else 0.0, self._backoff)
        return result

    async def create(self, user: User) -> tuple[str, Session]:
        """Log ``user`` in: a new token (give it to the client; it is stored nowhere) and its
        session, which lives ``ttl_s`` unless renewed."""
        token = new_token()
        key = self.session_key(token)
        created_ms = int(time.time() * 1000)
        fields: dict[FieldT, EncodableT] = {
            "user": user.name, "accounts": json.dumps(list(user.accounts)),
            "created_ms": created_ms}

        async def write() -> None:
            # One transaction: a session never exists without its TTL. Not WAITed for a
            # replica (as an order is): a session lost with a master costs one login.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, self.ttl_ms)
                await pipe.execute()
        await self._call(write)
        return token, Session(public_session_id(token), user.name, user.accounts, created_ms)

    async def resume(self, token: str) -> Session:
        """The session of ``token``, its TTL renewed; ``AuthError`` when the token is
        malformed or its session unknown or expired."""
        key = self.session_key(token)

        async def read() -> Any:
            # PEXPIRE of a missing key does nothing: renewing in the same round trip is safe.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(key)
                pipe.pexpire(key, self.ttl_ms)
                fields, _ = await pipe.execute()
            return fields
        fields = await self._call(read)
        if not fields:
            raise AuthError("unknown or expired session")
        try:
            accounts = json.loads(fields[b"accounts"])
            if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
                raise ValueError("accounts is not a list of strings")
            return Session(public_session_id(token), fields[b"user"].decode(),
                           tuple(accounts), int(fields[b"created_ms"]))
        except (KeyError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError included
            log.warning("session %s in Redis is malformed (%s): refused",
                        public_session_id(token), exc)
            raise AuthError("malformed session record") from None

    async def touch(self, token: str, now: float) -> None:
        """Renew the TTL of ``token``'s session, at most once per :data:`TOUCH_EVERY_S` by the
        caller's clock ``now`` (call it on every frame). ``AuthError`` when the session is gone
        (expired, or ended by a logout at any gateway); ``StoreUnavailable`` when Redis is not
        there now: the session lives on, and a frame :data:`TOUCH_RETRY_S` later tries again."""
        key = self.session_key(token)
        tid = key.rpartition(":")[2]
        last = self._touched.get(tid)
        if last is not None and now - last < TOUCH_EVERY_S:
            return
        try:
            # Not ridden through: a frame's handler does not wait out a master switch for it.
            renewed = await self._call(lambda: self.redis.pexpire(key, self.ttl_ms), ride=False)
        except StoreError:
            self._remember(tid, now - TOUCH_EVERY_S + TOUCH_RETRY_S)
            raise
        if not renewed:
            self._touched.pop(tid, None)
            raise AuthError("unknown or expired session")
        self._remember(tid, now)

    def _remember(self, tid: str, when: float) -> None:
        self._touched[tid] = when
        self._touched.move_to_end(tid)
        while len(self._touched) > TOUCHES_KEPT:  # a forgotten token costs one more PEXPIRE
            self._touched.popitem(last=False)

    async def drop(self, token: str) -> None:
        """End ``token``'s session at every gateway (a logout); nothing if it is gone."""
        key = self.session_key(token)
        await self._call(lambda: self.redis.delete(key))
        self._touched.pop(key.rpartition(":")[2], None)

    async def epoch(self) -> int:
        """The mesh's gateway epoch (docs/GATEWAY.md, 5): set once by the first gateway to ask,
        random, so a new or wiped Redis gives a new one and clients reload."""
        key = self._key("gw", "epoch")

        async def read() -> int | None:
            # Not WAITed for a replica: a master lost before the replica had it gives a new
            # epoch, so every client resets; two sequence spaces are never mixed.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, secrets.randbelow(EPOCH_MAX) + 1, nx=True)
                pipe.get(key)
                _, value = await pipe.execute()
            return None if value is None else int(value)
        while (epoch := await self._call(read)) is None:  # wiped between SET and GET
            pass
        return int(epoch)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        else:
            await self.redis.aclose()
