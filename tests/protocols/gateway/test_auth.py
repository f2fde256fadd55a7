"""Credentials: password hashes (round trip, the stored form, malformed hashes), API keys,
session tokens and their ids, User's checks, and Users: the users file's mistakes named by
key, logins by password and by API key. Hashes use a small scrypt N, so the suite is fast."""

from __future__ import annotations

import base64
import hashlib
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import AuthError, ConfigError
from protocols.gateway.auth import (
    DEFAULT_N,
    User,
    Users,
    hash_api_key,
    hash_password,
    new_api_key,
    new_token,
    public_session_id,
    token_id,
    verify_password,
)

N = 16  # a cheap scrypt for tests; the default is DEFAULT_N


def pw(password: str) -> str:
    return hash_password(password, n=N)


# --- passwords --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)  # scrypt: slow on a loaded machine
@given(password=st.text(max_size=40), other=st.text(max_size=40))
def test_hash_verify_round_trip(password: str, other: str) -> None:
    stored = pw(password)
    assert verify_password(stored, password)
    assert verify_password(stored, other) is (other == password)


def test_lone_surrogates_hash_too() -> None:
    # json.loads("\"\\ud800\"") is a str that UTF-8 cannot encode strictly.
    stored = pw("\ud800x")
    assert verify_password(stored, "\ud800x")
    assert not verify_password(stored, "x")


def test_the_stored_form() -> None:
    salt = bytes(range(16))
    stored = hash_password("alice", salt=salt, n=N, r=2, p=1)
    kind, n, r, p, salt64, key64 = stored.split("$")
    assert (kind, n, r, p) == ("scrypt", "16", "2", "1")
    assert base64.b64decode(salt64) == salt
    assert len(base64.b64decode(key64)) == 32
    assert hash_password("alice", salt=salt, n=N, r=2, p=1) == stored  # deterministic
    assert hash_password("alice", n=N) != hash_password("alice", n=N)  # a fresh salt each


def test_default_cost() -> None:
    assert DEFAULT_N == 2**14
    assert hash_password("x", salt=b"s" * 16).startswith("scrypt$16384$8$1$")


GOOD = "scrypt$16$8$1$" + base64.b64encode(b"s" * 16).decode() + "$" \
    + base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize("stored, problem", [
    ("", "not a password hash"),
    ("plain-text-password", "not a password hash"),
    ("bcrypt$16$8$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5", "not a password hash"),
    (GOOD + "$extra", "not a password hash"),
    (GOOD.replace("$16$", "$x$"), "not a number"),
    (GOOD.replace("$16$", "$-16$"), "not a number"),
    (GOOD.replace("$16$", "$15$"), "power of 2"),
    (GOOD.replace("$16$", "$1$", 1), "power of 2"),
    (GOOD.replace("$8$", "$0$"), "r must be an integer >= 1"),
    (GOOD.replace("$16$8$", "$1048576$8$"), "costs more than a login may"),
    (GOOD.replace("$1$c", "$17$c"), "costs more than a login may"),
    (GOOD[:-4] + "!!!!", "not base64"),
    ("scrypt$16$8$1$c2FsdA==$" + base64.b64encode(b"k" * 32).decode(), "salt of 4"),
    ("scrypt$16$8$1$" + base64.b64encode(b"s" * 16).decode() + "$a2V5", "key of 3"),
])
def test_malformed_hashes_are_config_errors(stored: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        verify_password(stored, "x", key="users[3].password")
    assert caught.value.key == "users[3].password"
    assert "tickmesh gateway hash-password" in str(caught.value) or "e.g." in str(caught.value)


def test_hash_password_refuses_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="power of 2"):
        hash_password("x", n=1000)
    with pytest.raises(ConfigError, match="costs more"):
        hash_password("x", n=2**20, r=8)
    with pytest.raises(ConfigError, match="salt of 4 bytes"):
        hash_password("x", salt=b"abcd", n=N)


# --- API keys and tokens ----------------------------------------------------------------------


def test_api_keys() -> None:
    key = new_api_key()
    assert key.startswith("tmk_") and len(key) == 4 + 43  # 32 bytes, URL-safe base64
    assert set(key[4:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert new_api_key() != key
    hashed = hash_api_key(key)
    assert hashed.startswith("sha256$") and len(hashed) == 7 + 64
    assert hash_api_key(key) == hashed
    assert hash_api_key("tmk_abc") == "sha256$" + hashlib.sha256(b"tmk_abc").hexdigest()


def test_tokens_and_their_ids() -> None:
    token = new_token()
    assert len(token) == 43 and new_token() != token
    tid, public = token_id(token), public_session_id(token)
    assert len(tid) == 64 and int(tid, 16) >= 0
    assert len(public) == 16 and public not in tid and public not in token
    assert token_id(token) == tid and public_session_id(token) == public


@pytest.mark.parametrize("token", ["", "short", "x" * 42, "x" * 44, "+" * 43, "é" * 43, None,
                                   43])
def test_malformed_tokens_are_auth_errors(token: Any) -> None:
    with pytest.raises(AuthError, match="malformed session token"):
        token_id(token)
    with pytest.raises(AuthError, match="malformed session token"):
        public_session_id(token)


# --- User -------------------------------------------------------------------------------------

KEY = new_api_key()
KEY_HASH = hash_api_key(KEY)
ALICE_PW = pw("alice")


@pytest.mark.parametrize("kwargs, key, problem", [
    ({"name": ""}, "name", "non-empty"),
    ({"name": "a\nb"}, "name", "control character"),
    ({"name": 7}, "name", "non-empty string"),
    ({"accounts": ()}, "accounts", "at least one account"),
    ({"accounts": ["ACC"]}, "accounts", "at least one account"),
    ({"accounts": ("A", "")}, "accounts[1]", "non-empty"),
    ({"accounts": ("A", "A")}, "accounts", "twice"),
    ({"password": "nope"}, "password", "not a password hash"),
    ({"api_keys": ["x"]}, "api_keys", "array"),
    ({"api_keys": ("sha256$abc",)}, "api_keys[0]", "not an API key hash"),
    ({"api_keys": (KEY,)}, "api_keys[0]", "not an API key hash"),
    ({"api_keys": (KEY_HASH, KEY_HASH)}, "api_keys", "twice"),
    ({"password": None, "api_keys": ()}, "password", "never log in"),
])
def test_user_checks(kwargs: dict[str, Any], key: str, problem: str) -> None:
    fields: dict[str, Any] = {"name": "alice", "accounts": ("ACC-ALICE",),
                              "password": ALICE_PW, "api_keys": ()} | kwargs
    with pytest.raises(ConfigError, match=problem) as caught:
        User(**fields)
    assert caught.value.key == key


def test_a_user_with_only_an_api_key() -> None:
    user = User("bot", ("ACC-BOT",), None, (KEY_HASH,))
    assert user.password is None


def test_to_toml_reads_back() -> None:
    users = [User("alice", ("ACC-ALICE", 'Q"uote\\'), ALICE_PW, ()),
             User("bøbé", ("ACC-BOB",), None, (KEY_HASH,)),
             User("carol", ("C1", "C2"), ALICE_PW, (hash_api_key(new_api_key()),))]
    text = "\n".join(u.to_toml() for u in users)
    back = Users.from_toml(tomllib.loads(text))
    assert list(back) == users


# Any text check_id takes: no C0 control or DEL, C1 controls and quotes and backslashes allowed.
_ids = st.text(st.characters(blacklist_categories=("Cs",)).filter(
    lambda c: c >= " " and c != "\x7f"), min_size=1, max_size=16)


@settings(max_examples=50, deadline=None)  # scrypt: slow on a loaded machine
@given(name=_ids, accounts=st.lists(_ids, min_size=1, max_size=3, unique=True),
       with_password=st.booleans())
def test_any_valid_user_survives_the_users_file(name: str, accounts: list[str],
                                                with_password: bool) -> None:
    u = User(name, tuple(accounts), ALICE_PW if with_password else None,
             () if with_password else (KEY_HASH,))
    assert list(Users.from_toml(tomllib.loads(u.to_toml()))) == [u]


def test_to_toml_escapes_del() -> None:
    # DEL cannot be in an account (check_id), but to_toml is a TOML writer: it escapes it.
    from protocols.gateway import auth
    text = "a\x7fb"
    assert tomllib.loads("x = " + auth._toml_str(text))["x"] == text


# --- Users: the users file --------------------------------------------------------------------


def table(**fields: Any) -> dict[str, Any]:
    return {"name": "alice", "accounts": ["ACC-ALICE"], "password": ALICE_PW} | fields


@pytest.mark.parametrize("data, key, problem", [
    ({}, "users", "lists no users"),
    ({"users": []}, "users", "lists no users"),
    ({"users": {"name": "x"}}, "users", "lists no users"),
    ({"users": [table()], "admins": []}, "admins", "unknown key"),
    ({"users": ["alice"]}, "users[0]", "must be a table"),
    ({"users": [table(acounts=["X"])]}, "users[0].acounts", "did you mean 'accounts'"),
    ({"users": [table(zzz=1)]}, "users[0].zzz", "unknown key"),
    ({"users": [{"accounts": ["A"], "password": ALICE_PW}]}, "users[0].name", "missing"),
    ({"users": [table(accounts="ACC-ALICE")]}, "users[0].accounts", "must be an array"),
    ({"users": [table(accounts=[])]}, "users[0].accounts", "at least one"),
    ({"users": [table(), table(name="bob", accounts=["B", 5])]}, "users[1].accounts[1]",
     "non-empty string"),
    ({"users": [table(password=5)]}, "users[0].password", "must be a string"),
    ({"users": [table(password="scrypt$1$2$3")]}, "users[0].password", "not a password hash"),
    ({"users": [table(api_keys="k")]}, "users[0].api_keys", "must be an array"),
    ({"users": [table(api_keys=["k"])]}, "users[0].api_keys[0]", "not an API key hash"),
    ({"users": [{"name": "a", "accounts": ["A"]}]}, "users[0].password", "never log in"),
    ({"users": [table(), table(accounts=["ACC-OTHER"])]}, "users[1].name", "listed twice"),
    ({"users": [table(), table(name="bob", accounts=["B", "ACC-ALICE"])]},
     "users[1].accounts[1]", "belongs to user 'alice' already"),
    ({"users": [table(api_keys=[KEY_HASH]), table(name="bob", accounts=["B"],
                                                  api_keys=[KEY_HASH])]},
     "users[1].api_keys[0]", "a key of user 'alice' already"),
])
def test_users_file_mistakes_are_named(data: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        Users.from_toml(data)
    assert caught.value.key == key


def two_users() -> Users:
    return Users.from_toml({"users": [
        table(),
        {"name": "bob", "accounts": ["ACC-BOB", "ACC-BOB-2"], "password": pw("bob"),
         "api_keys": [KEY_HASH]},
        {"name": "bot", "accounts": ["ACC-BOT"], "api_keys": [hash_api_key("tmk_other")]},
    ]})


def test_lookups() -> None:
    users = two_users()
    assert len(users) == 3 and users.names() == ("alice", "bob", "bot")
    bob = users.get("bob")
    assert bob is not None and bob.accounts == ("ACC-BOB", "ACC-BOB-2")
    assert users.get("carol") is None
    assert Users() is not None and len(Users()) == 0


def test_authenticate() -> None:
    users = two_users()
    assert users.authenticate("alice", "alice").accounts == ("ACC-ALICE",)
    assert users.authenticate("bob", "bob").name == "bob"
    texts = set()
    for name, password in [("alice", "bob"), ("alice", ""), ("carol", "alice"), ("", ""),
                           ("bot", ""), ("bot", "x"), (None, "alice"), ("alice", None)]:
        with pytest.raises(AuthError) as caught:
            users.authenticate(name, password)  # type: ignore[arg-type]
        texts.add(str(caught.value))
    assert texts == {"wrong user name or password"}  # one answer for every refusal


def test_an_unknown_user_costs_a_scrypt_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.gateway import auth
    users = two_users()
    runs: list[int] = []
    real = auth._derive

    def counting(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
        runs.append(n)
        return real(password, salt, n, r, p, size)
    monkeypatch.setattr(auth, "_derive", counting)
    for name in ("alice", "carol", "bot"):  # known, unknown, known without a password
        with pytest.raises(AuthError):
            users.authenticate(name, "wrong")
    assert runs == [N, N, N]  # the dummy hash has the users' parameters


def test_by_api_key() -> None:
    users = two_users()
    assert users.by_api_key(KEY).name == "bob"
    assert users.by_api_key("tmk_other").name == "bot"
    for key in (new_api_key(), "", KEY[4:], KEY_HASH, None, KEY + " "):
        with pytest.raises(AuthError, match="unknown API key"):
            users.by_api_key(key)  # type: ignore[arg-type]
