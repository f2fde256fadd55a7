"""The users file (load_users, append_users, write_demo_users) and SessionStore on a real
Redis: create, resume from another store (another gateway), touch at most once a minute, drop
(a logout everywhere), expiry, the token never stored, the gateway epoch, the RTSS role from
the mesh config, and a Redis that is gone."""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bus.config import GatewaySection, MeshSection, RedisSection, default_config, with_overrides
from bus.gateway.sessions import (
    EPOCH_MAX,
    TOUCH_EVERY_S,
    TOUCH_RETRY_S,
    Session,
    SessionStore,
    append_users,
    load_users,
    write_demo_users,
)
from nodes.servers.redis_server import RedisProcess
from protocols.errors import AuthError, ConfigError, StoreUnavailable
from protocols.gateway.auth import User, hash_password, new_token, token_id
from tests.support import run_with, run_with_two, wait_until

pytestmark = pytest.mark.timeout(30)

N = 16  # a cheap scrypt for tests
TTL_S = 3600.0


def user(name: str = "alice", *accounts: str) -> User:
    return User(name, accounts or (f"ACC-{name.upper()}",), hash_password(name, n=N), ())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the users file ---------------------------------------------------------------------------


def test_a_missing_users_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no users file") as caught:
        load_users(tmp_path / "users.toml")
    assert f"tickmesh gateway add-user NAME --accounts ACCOUNT --password-stdin --file " \
           f"{tmp_path / 'users.toml'}" in str(caught.value)


def test_empty_ok_is_for_a_file_being_made(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    assert len(load_users(path, empty_ok=True)) == 0  # missing
    path.write_text("# nobody yet\n")
    assert len(load_users(path, empty_ok=True)) == 0
    with pytest.raises(ConfigError, match="lists no users"):
        load_users(path)
    path.write_text("admins = []\n")  # a mistake is still one
    with pytest.raises(ConfigError, match="unknown key"):
        load_users(path, empty_ok=True)


def test_bad_toml_says_where(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text('[[users]]\nname = "alice"\naccounts = ["A"]]\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 3") as caught:
        load_users(path)
    assert caught.value.key == str(path)


def test_a_bad_user_is_named_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    append_users(path, [user("alice")])
    with path.open("a") as f:
        f.write('\n[[users]]\nname = "bob"\naccounts = ["ACC-ALICE"]\napi_keys = []\n'
                f'password = "{hash_password("bob", n=N)}"\n')
    with pytest.raises(ConfigError, match="belongs to user 'alice'") as caught:
        load_users(path)
    assert caught.value.key == f"{path}: users[1].accounts[0]"


def test_append_users_creates_then_appends_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "users.toml"
    alice, bob = user("alice"), user("bob")
    append_users(path, [alice])
    assert mode(path) == 0o600
    assert path.read_text().startswith("# tickmesh gateway users")
    path.chmod(0o644)
    append_users(path, [bob])
    assert mode(path) == 0o600  # an existing file is tightened too
    assert list(load_users(path)) == [alice, bob]
    with pytest.raises(FileExistsError):
        append_users(path, [user("carol")], new_file=True)
    assert load_users(path).names() == ("alice", "bob")


def test_a_users_file_others_can_read_is_warned_about(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users.toml"
    append_users(path, [user()])
    with caplog.at_level(logging.WARNING, logger="bus.gateway.sessions"):
        load_users(path)
        assert not caplog.records
        path.chmod(0o640)
        load_users(path)
    assert "readable by others" in caplog.text


def test_write_demo_users(tmp_path: Path) -> None:
    path = tmp_path / "run" / "users.toml"
    write_demo_users(path)
    assert mode(path) == 0o600
    text = path.read_text()
    assert "alice (password alice)" in text  # the file says what the demo users are
    users = load_users(path)
    assert users.names() == ("alice", "bob")
    assert users.authenticate("alice", "alice").accounts == ("ACC-ALICE",)
    assert users.authenticate("bob", "bob").accounts == ("ACC-BOB",)
    assert text.count("scrypt$16384$8$1$") == 2  # the default cost
    write_demo_users(path)
    assert path.read_text() == text  # never rewritten


def test_write_demo_users_leaves_a_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("# mine\n")
    write_demo_users(path)
    assert path.read_text() == "# mine\n"


# --- sessions ---------------------------------------------------------------------------------


def opener(server: RedisProcess, ttl_s: float = TTL_S, deadline_s: float = 0.0
           ) -> Callable[[], Awaitable[SessionStore]]:
    async def open_store() -> SessionStore:
        return SessionStore(server.url, "t", ttl_s, deadline_s=deadline_s)
    return open_store


def with_store(server: RedisProcess, body: Callable[[SessionStore], Awaitable[None]],
               deadline_s: float = 0.0) -> None:
    run_with(opener(server, deadline_s=deadline_s), body)


def with_stores(server: RedisProcess,
                body: Callable[[SessionStore, SessionStore], Awaitable[None]],
                ttl_s: float = TTL_S) -> None:
    """``body(a, b)``: two stores on one Redis, as two gateways of a mesh."""
    run_with_two(opener(server, ttl_s), body)


def test_create_then_resume_at_another_gateway(redis_server: RedisProcess) -> None:
    async def body(a: SessionStore, b: SessionStore) -> None:
        before = int(time.time() * 1000)
        token, session = await a.create(user("bob", "ACC-BOB", "ACC-BOB-2"))
        assert session.user == "bob" and session.accounts == ("ACC-BOB", "ACC-BOB-2")
        assert before <= session.created_ms <= int(time.time() * 1000)
        assert session.id not in token and len(session.id) == 16
        assert await b.resume(token) == session
        assert await a.resume(token) == session
        key = f"t:session:{token_id(token)}"
        assert 0 < await a.redis.pttl(key) <= TTL_S * 1000
        # The token itself is nowhere in Redis: not in a key, not in a value.
        keys = await a.redis.keys("*")
        assert keys == [key.encode()]
        assert token.encode() not in b"".join(await a.redis.hvals(key))
        other, second = await b.create(user("bob", "ACC-BOB", "ACC-BOB-2"))
        assert other != token and second.id != session.id  # a login is a new session
    with_stores(redis_server, body)


def test_resume_renews_the_ttl(redis_server: RedisProcess) -> None:
    async def body(a: SessionStore, b: SessionStore) -> None:
        token, _ = await a.create(user())
        key = a.session_key(token)
        await a.redis.pexpire(key, 5000)
        await b.resume(token)
        assert await a.redis.pttl(key) > 5000
    with_stores(redis_server, body)


def test_touch_renews_at_most_once_a_minute(redis_server: RedisProcess) -> None:
    async def body(a: SessionStore, b: SessionStore) -> None:
        token, _ = await a.create(user())
        key = a.session_key(token)

        async def shortened_then_touched(now: float) -> bool:
            """Whether a touch at ``now`` renewed the TTL."""
            await a.redis.pexpire(key, 5000)
            await a.touch(token, now)
            return bool(await a.redis.pttl(key) > 5000)
        assert await shortened_then_touched(100.0)  # the first touch renews
        assert not await shortened_then_touched(100.0 + 1)
        assert not await shortened_then_touched(100.0 + TOUCH_EVERY_S - 0.001)
        assert await shortened_then_touched(100.0 + TOUCH_EVERY_S)
        assert not await shortened_then_touched(100.0 + TOUCH_EVERY_S + 30)
        # Each store keeps its own memory: the other gateway renews on its first touch.
        await a.redis.pexpire(key, 5000)
        await b.touch(token, 100.0 + TOUCH_EVERY_S + 30)
        assert await a.redis.pttl(key) > 5000
    with_stores(redis_server, body)


def test_touch_remembers_a_bounded_number_of_tokens(redis_server: RedisProcess,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bus.gateway.sessions.TOUCHES_KEPT", 3)

    async def body(a: SessionStore, b: SessionStore) -> None:
        tokens = [(await a.create(user(f"u{i}")))[0] for i in range(5)]
        for i, token in enumerate(tokens):
            await a.touch(token, float(i))
        assert list(a._touched) == [token_id(t) for t in tokens[2:]]
        # A forgotten token is renewed again (one more PEXPIRE), a remembered one is not.
        key = a.session_key(tokens[0])
        await a.redis.pexpire(key, 5000)
        await a.touch(tokens[0], 10.0)
        assert await a.redis.pttl(key) > 5000
        assert len(a._touched) == 3
    with_stores(redis_server, body)


def test_drop_ends_the_session_everywhere(redis_server: RedisProcess) -> None:
    async def body(a: SessionStore, b: SessionStore) -> None:
        token, _ = await a.create(user())
        await b.touch(token, 0.0)
        await a.drop(token)
        with pytest.raises(AuthError, match="unknown or expired"):
            await b.resume(token)
        await b.touch(token, 1.0)  # b renewed it a second ago: it does not ask yet
        with pytest.raises(AuthError, match="unknown or expired"):
            await b.touch(token, TOUCH_EVERY_S)  # at its next renewal it learns
        with pytest.raises(AuthError, match="unknown or expired"):
            await a.touch(token, 0.0)
        await a.drop(token)  # dropping a gone session is no error
        assert await a.redis.keys("*") == []
    with_stores(redis_server, body)


def test_a_session_expires(redis_server: RedisProcess) -> None:
    async def body(a: SessionStore, b: SessionStore) -> None:
        token, _ = await a.create(user())
        key = a.session_key(token)
        assert 0 < await a.redis.pttl(key) <= 200
        async def gone() -> bool:
            return await a.redis.exists(key) == 0
        await wait_until(gone, 5, "the session to expire")
        with pytest.raises(AuthError, match="unknown or expired"):
            await a.resume(token)
        with pytest.raises(AuthError, match="unknown or expired"):
            await a.touch(token, 0.0)
    with_stores(redis_server, body, ttl_s=0.2)


@pytest.mark.parametrize("token", ["", "nope", "x" * 44, "tmk_" + "x" * 43])
def test_a_malformed_token_is_refused(redis_server: RedisProcess, token: str) -> None:
    async def body(a: SessionStore) -> None:
        for call in (a.resume, lambda t: a.touch(t, 0.0), a.drop):
            with pytest.raises(AuthError, match="malformed session token"):
                await call(token)
    with_store(redis_server, body)


@pytest.mark.parametrize("fields", [{"user": "alice"},
                                    {"user": "alice", "accounts": "[1]", "created_ms": "1"},
                                    {"user": "alice", "accounts": "{", "created_ms": "1"},
                                    {"user": b"\xff", "accounts": "[]", "created_ms": "1"},
                                    {"user": "alice", "accounts": "[]", "created_ms": "x"}])
def test_a_malformed_record_is_refused(redis_server: RedisProcess,
                                       fields: dict[str, str | bytes]) -> None:
    async def body(a: SessionStore) -> None:
        token = new_token()
        await a.redis.hset(a.session_key(token), mapping=fields)  # type: ignore[arg-type]
        with pytest.raises(AuthError, match="malformed session record"):
            await a.resume(token)
    with_store(redis_server, body)


def test_the_epoch_is_shared_and_new_after_a_wipe(redis_server: RedisProcess) -> None:
    async def body(a: SessionStore, b: SessionStore) -> None:
        first = await a.epoch()
        assert 1 <= first <= EPOCH_MAX
        assert await b.epoch() == first
        assert await a.epoch() == first  # set once
        await a.redis.flushall()
        second = await b.epoch()
        assert second != first  # a fresh random number: equal once in 2**48
        assert await a.epoch() == second
        assert int(await a.redis.get("t:gw:epoch")) == second
    with_stores(redis_server, body)


def test_from_config_uses_the_rtss_role(redis_server: RedisProcess, tmp_path: Path) -> None:
    # The RTS URL points nowhere: the sessions must be on orders_url.
    cfg = with_overrides(default_config(), mesh=MeshSection(key_prefix="gwt"),
                         redis=RedisSection(url="redis://127.0.0.1:1/0",
                                            orders_url=redis_server.url, deadline_ms=0),
                         gateway=GatewaySection(session_ttl_s=120))

    async def body(s: SessionStore) -> None:
        token, session = await s.create(user())
        assert await s.resume(token) == session
        pttl = await s.redis.pttl(f"gwt:session:{token_id(token)}")
        assert 60_000 < pttl <= 120_000
        assert await s.redis.exists("gwt:gw:epoch") == 0
        await s.epoch()
        assert await s.redis.exists("gwt:gw:epoch") == 1
    async def open_store() -> SessionStore:
        return SessionStore.from_config(cfg)
    run_with(open_store, body)


def test_redis_gone_is_store_unavailable(redis_server: RedisProcess) -> None:
    async def body(a: SessionStore) -> None:
        token, _ = await a.create(user())
        redis_server.stop()
        for call in (a.create(user()), a.resume(token), a.drop(token), a.epoch(),
                     a.touch(token, 0.0)):
            with pytest.raises(StoreUnavailable):
                await call
        # A failed renewal is tried again TOUCH_RETRY_S later, not on every frame.
        await a.touch(token, TOUCH_RETRY_S - 0.001)
        with pytest.raises(StoreUnavailable):
            await a.touch(token, TOUCH_RETRY_S)
    with_store(redis_server, body)


def test_a_ridden_through_call_comes_back_with_redis(redis_server: RedisProcess) -> None:
    """A Redis that returns within the deadline is ridden through, not reported."""
    async def body(a: SessionStore) -> None:
        token, session = await a.create(user())
        redis_server.stop()
        resumed = asyncio.ensure_future(a.resume(token))  # fails and backs off meanwhile
        await asyncio.to_thread(redis_server.start)
        assert await resumed == session
    with_store(redis_server, body, deadline_s=20.0)


def test_session_is_a_frozen_record() -> None:
    s = Session("abc", "alice", ("A",), 1)
    with pytest.raises(AttributeError):
        s.user = "bob"  # type: ignore[misc]
