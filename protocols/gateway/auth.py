"""Who may use the chart gateway (docs/GATEWAY.md, 2), sans-I/O: password hashes, API keys,
session tokens, and the users of the users file.

Rules:

- A password is stored as ``scrypt$N$r$p$<salt>$<key>`` (standard base64): scrypt is
  memory-hard, so every guess against a stolen users file costs ``128 * r * N`` bytes and the
  time of a login. Parameters outside :data:`MAX_SCRYPT_MEMORY` are refused, so a users file
  cannot make a login take a gigabyte.
- An API key ``tmk_...`` carries 256 random bits and is stored as ``sha256$<hex>``.
- A session token carries 256 random bits and is never stored: Redis keys use
  :func:`token_id` (its SHA-256), logs and screens :func:`public_session_id`.
- An account belongs to one user. The ``orders`` stream and the ``NOT_YOUR_ACCOUNT`` check are
  per account, and each client makes its own client order ids, unique per account: two users'
  clients on one account could pick the same id, and the order path's idempotency would then
  answer one user's new order with the other's old one. A user who trades from several places
  is one user with several credentials (a password and API keys).
- Every refusal is :class:`~protocols.errors.AuthError`; an unknown user and a wrong password
  get the same text and cost the same scrypt run.

Hashing a password runs scrypt (about 15-50 ms at the default ``N = 2**14``): the gateway calls
:func:`hash_password`, :func:`verify_password` and :meth:`Users.authenticate` in a worker
thread, never on its event loop.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from protocols.errors import AuthError, ConfigError, InvalidOrder
from protocols.orders.fields import check_id

__all__ = ["API_KEY_PREFIX", "DEFAULT_N", "MAX_SCRYPT_MEMORY", "User", "Users", "hash_api_key",
           "hash_password", "new_api_key", "new_token", "public_session_id", "token_id",
           "verify_password"]

DEFAULT_N = 2**14
MAX_SCRYPT_MEMORY = 2**27  # bytes one hash may use (128 * r * N): 128 MiB
SALT_BYTES = 16
KEY_BYTES = 32
SECRET_BYTES = 32  # random bytes in an API key and in a session token: 256 bits
API_KEY_PREFIX = "tmk_"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(SECRET_BYTES)
_API_KEY_HASH = re.compile(r"sha256\$[0-9a-f]{64}")
_USER_KEYS = ("name", "accounts", "password", "api_keys")
_NO_USERS_FIX = "add one: tickmesh gateway add-user NAME --accounts ACCOUNT --file PATH"


def _utf8(text: str) -> bytes:
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"); it hashes like any other
    # text instead of raising in the middle of a login.
    return text.encode("utf-8", "surrogatepass")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _cost_int(key: str, name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(key, f"scrypt {name} must be an integer >= 1, got {value!r}",
                          "make a new hash with tickmesh gateway hash-password")
    return value


def _check_cost(key: str, n: object, r: object, p: object) -> tuple[int, int, int]:
    n, r, p = _cost_int(key, "N", n), _cost_int(key, "r", r), _cost_int(key, "p", p)
    if n < 2 or n & (n - 1):
        raise ConfigError(key, f"scrypt N must be a power of 2 above 1, got {n}",
                          f"e.g. N = {DEFAULT_N}")
    if 128 * r * n > MAX_SCRYPT_MEMORY or p > 16:
        raise ConfigError(key, f"scrypt N={n}, r={r}, p={p} costs more than a login may "
                          f"({MAX_SCRYPT_MEMORY >> 20} MiB, p <= 16)", f"e.g. N = {DEFAULT_N}, "
                          "r = 8, p = 1")
    return n, r, p


def _derive(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    # OpenSSL needs 128 * r * (N + p + 2) bytes; hashlib's default ceiling (32 MiB) is lower
    # than what MAX_SCRYPT_MEMORY allows.
    return hashlib.scrypt(_utf8(password), salt=salt, n=n, r=r, p=p, dklen=size,
                          maxmem=128 * r * (n + p + 2) + (1 << 20))


def hash_password(password: str, *, salt: bytes | None = None, n: int = DEFAULT_N, r: int = 8,
                  p: int = 1) -> str:
    """The users file's form of ``password``: ``scrypt$N$r$p$<salt b64>$<key b64>`` (a new
    random salt unless one is given). Costs one scrypt run: not on an event loop."""
    n, r, p = _check_cost("password", n, r, p)
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif len(salt) < 8:
        raise ConfigError("password", f"a salt of {len(salt)} bytes is too short", "16 bytes")
    key = _derive(password, salt, n, r, p, KEY_BYTES)
    return "$".join(("scrypt", str(n), str(r), str(p), _b64(salt), _b64(key)))


def _parse_password_hash(key: str, stored: object) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, derived key) of a stored hash; ``ConfigError`` naming ``key``."""
    fix = "make one with tickmesh gateway hash-password"
    parts = stored.split("$") if isinstance(stored, str) else []
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ConfigError(key, "is not a password hash of the form "
                          "scrypt$N$r$p$<salt>$<key>", fix)
    if not all(part.isascii() and part.isdigit() for part in parts[1:4]):
        raise ConfigError(key, "has a scrypt parameter that is not a number", fix)
    n, r, p = _check_cost(key, int(parts[1]), int(parts[2]), int(parts[3]))
    try:
        salt = base64.b64decode(parts[4], validate=True)
        derived = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(key, "has a salt or key that is not base64", fix) from None
    if len(salt) < 8 or len(derived) < 16:
        raise ConfigError(key, f"has a salt of {len(salt)} or a key of {len(derived)} bytes "
                          "(at least 8 and 16)", fix)
    return n, r, p, salt, derived


def verify_password(stored: str, password: str, *, key: str = "password") -> bool:
    """Whether ``password`` matches the ``stored`` hash (compared in constant time). A
    malformed ``stored`` raises ``ConfigError`` naming ``key``. Costs one scrypt run."""
    n, r, p, salt, expected = _parse_password_hash(key, stored)
    return hmac.compare_digest(_derive(password, salt, n, r, p, len(expected)), expected)


def new_api_key() -> str:
    """A new API key: ``tmk_`` and 256 random bits, URL-safe. Shown once, stored hashed."""
    return API_KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_api_key(key: str) -> str:
    """The users file's form of an API key: ``sha256$<hex>``.

    No slow hash: a slow hash protects a secret a person chose, which a stolen users file
    lets an attacker guess offline; 256 random bits cannot be guessed at any hash speed, and a
    fast one makes a key login one dictionary look-up instead of a search through scrypt runs.
    """
    return "sha256$" + hashlib.sha256(_utf8(key)).hexdigest()


def new_token() -> str:
    """A new session token: 256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def _check_token(token: object) -> bytes:
    if not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
        raise AuthError("malformed session token")
    return token.encode("ascii")


def token_id(token: str) -> str:
    """The SHA-256 (hex) of a session token: what Redis keys name, so the store never holds
    a token. A malformed token raises ``AuthError``."""
    return hashlib.sha256(_check_token(token)).hexdigest()


def public_session_id(token: str) -> str:
    """A short id of a session (16 hex digits) to show and log: neither the token nor its
    Redis key can be derived from it. A malformed token raises ``AuthError``."""
    return hashlib.sha256(b"tickmesh public session id\0" + _check_token(token)).hexdigest()[:16]


def _config_id(key: str, value: object) -> str:
    try:
        return check_id(key, value)
    except InvalidOrder as exc:
        raise ConfigError(key, exc.problem) from None


def _toml_str(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_array(items: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


@dataclass(frozen=True, slots=True)
class User:
    """One user of the users file: a name, the accounts it owns and trades, and its
    credentials (``password``: a :func:`hash_password` hash; ``api_keys``: :func:`hash_api_key`
    hashes), at least one of them.

    Invalid fields raise ``ConfigError`` naming the field (``accounts[1]``); :class:`Users`
    prefixes it with the user's place in the file.
    """

    name: str
    accounts: tuple[str, ...]
    password: str | None
    api_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        _config_id("name", self.name)
        if not isinstance(self.accounts, tuple) or not self.accounts:
            raise ConfigError("accounts", "must list at least one account",
                              'e.g. accounts = ["ACC-1"]')
        for i, account in enumerate(self.accounts):
            _config_id(f"accounts[{i}]", account)
        if len(set(self.accounts)) != len(self.accounts):
            raise ConfigError("accounts", "lists an account twice", "list each once")
        if self.password is not None:
            _parse_password_hash("password", self.password)
        if not isinstance(self.api_keys, tuple):
            raise ConfigError("api_keys", "must be an array of key hashes")
        for i, hashed in enumerate(self.api_keys):
            if not isinstance(hashed, str) or _API_KEY_HASH.fullmatch(hashed) is None:
                raise ConfigError(f"api_keys[{i}]", "is not an API key hash sha256$<64 hex>",
                                  "make a key and its hash with tickmesh gateway new-api-key")
        if len(set(self.api_keys)) != len(self.api_keys):
            raise ConfigError("api_keys", "lists a key twice", "list each once")
        if self.password is None and not self.api_keys:
            raise ConfigError("password", "is missing and so are api_keys: the user could "
                              "never log in", "add a password (tickmesh gateway hash-password) "
                              "or an API key (tickmesh gateway new-api-key)")

    def to_toml(self) -> str:
        """This user as a ``[[users]]`` table of the users file."""
        lines = ["[[users]]", f"name = {_toml_str(self.name)}",
                 f"accounts = {_toml_array(self.accounts)}"]
        if self.password is not None:
            lines.append(f"password = {_toml_str(self.password)}")
        if self.api_keys:
            lines.append(f"api_keys = {_toml_array(self.api_keys)}")
        return "\n".join(lines) + "\n"


def _user_from_table(key: str, entry: object) -> User:
    if not isinstance(entry, dict):
        raise ConfigError(key, "must be a table", "write each user as a [[users]] table")
    for field in entry:
        if field not in _USER_KEYS:
            close = difflib.get_close_matches(str(field), _USER_KEYS, n=1)
            raise ConfigError(f"{key}.{field}", "unknown key", f"did you mean {close[0]!r}?"
                              if close else f"a user has {', '.join(_USER_KEYS)}")
    if "name" not in entry:
        raise ConfigError(f"{key}.name", "is missing", 'e.g. name = "alice"')
    lists: dict[str, tuple[Any, ...]] = {}  # User checks every item
    for field in ("accounts", "api_keys"):
        value = entry.get(field, [])
        if not isinstance(value, list):
            raise ConfigError(f"{key}.{field}", f"must be an array, got {value!r}",
                              f'e.g. {field} = ["..."]')
        lists[field] = tuple(value)
    password = entry.get("password")
    if password is not None and not isinstance(password, str):
        raise ConfigError(f"{key}.password", "must be a string (a password hash)",
                          "make one with tickmesh gateway hash-password")
    try:
        return User(entry["name"], lists["accounts"], password, lists["api_keys"])
    except ConfigError as exc:
        raise ConfigError(f"{key}.{exc.key}", exc.problem, exc.fix) from None


class Users:
    """The users of a users file, each bound to the accounts it owns (no account has two
    owners, no name or API key is listed twice: ``ConfigError`` naming ``users[i].field``)."""

    def __init__(self, users: Iterable[User] = ()) -> None:
        self._by_name: dict[str, User] = {}
        self._by_key: dict[str, User] = {}
        owner: dict[str, str] = {}
        for i, user in enumerate(users):
            if user.name in self._by_name:
                raise ConfigError(f"users[{i}].name", f"{user.name!r} is listed twice",
                                  "one [[users]] table per user")
            for j, account in enumerate(user.accounts):
                if account in owner:
                    raise ConfigError(f"users[{i}].accounts[{j}]", f"{account!r} belongs to "
                                      f"user {owner[account]!r} already", "an account has one "
                                      "owner: give the other place a credential of that user")
                owner[account] = user.name
            for j, hashed in enumerate(user.api_keys):
                if hashed in self._by_key:
                    raise ConfigError(f"users[{i}].api_keys[{j}]", "is a key of user "
                                      f"{self._by_key[hashed].name!r} already",
                                      "make a new key with tickmesh gateway new-api-key")
                self._by_key[hashed] = user
            self._by_name[user.name] = user
        # What a login of an unknown user is checked against, so that it costs the scrypt run
        # a known user's costs (at the first user's parameters): a random key no password
        # derives, so it never matches.
        n, r, p = next((_parse_password_hash("password", u.password)[:3]
                        for u in self._by_name.values() if u.password is not None),
                       (DEFAULT_N, 8, 1))
        self._dummy = "$".join(("scrypt", str(n), str(r), str(p),
                                _b64(secrets.token_bytes(SALT_BYTES)),
                                _b64(secrets.token_bytes(KEY_BYTES))))

    @classmethod
    def from_toml(cls, data: Mapping[str, object]) -> Users:
        """The users of a parsed users file (its ``[[users]]`` array of tables)."""
        for key in data:
            if key != "users":
                raise ConfigError(key, "unknown key", "a users file holds [[users]] tables")
        entries = data.get("users")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("users", "lists no users", _NO_USERS_FIX)
        return cls(_user_from_table(f"users[{i}]", e) for i, e in enumerate(entries))

    def authenticate(self, name: str, password: str) -> User:
        """The user ``name`` if ``password`` is its password, else ``AuthError`` (the same one
        for an unknown user, a user without a password, and a wrong password). Costs one
        scrypt run in every case: not on an event loop."""
        user = self._by_name.get(name) if isinstance(name, str) else None
        stored = user.password if user is not None and user.password is not None \
            else self._dummy
        matches = verify_password(stored, password if isinstance(password, str) else "")
        if user is None or user.password is None or not matches:
            raise AuthError("wrong user name or password")
        return user

    def by_api_key(self, key: str) -> User:
        """The user that holds API key ``key``, else ``AuthError``. The look-up is by the key's
        hash, so its timing says nothing about the key."""
        if isinstance(key, str) and key.startswith(API_KEY_PREFIX):
            user = self._by_key.get(hash_api_key(key))
            if user is not None:
                return user
        raise AuthError("unknown API key")

    def get(self, name: str) -> User | None:
        return self._by_name.get(name)

    def names(self) -> tuple[str, ...]:
        """The users' names, in the file's order."""
        return tuple(self._by_name)

    def __iter__(self) -> Iterator[User]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)
