"""``tickmesh gateway hash-password|new-api-key|add-user``: what each prints, the users file
add-user writes (readable by load_users, mode 0600), and every refusal with its exit code."""

from __future__ import annotations

import argparse
import io
import stat
from pathlib import Path

import pytest

from bus.gateway.sessions import load_users
from nodes.gateway import users as cli
from protocols.gateway.auth import hash_api_key, verify_password

N = ["--scrypt-n", "16"]  # a cheap scrypt for tests


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the command reads as stdin (not a terminal); write to it before the call."""
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stdin", buffer)
    return buffer


def feed(stdin: io.StringIO, text: str) -> None:
    stdin.write(text)
    stdin.seek(0)


def test_hash_password(stdin: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    feed(stdin, "s3cret pass\nignored second line\n")
    assert cli.main(["hash-password", *N]) == 0
    stored = capsys.readouterr().out.strip()
    assert stored.startswith("scrypt$16$8$1$")
    assert verify_password(stored, "s3cret pass")


@pytest.mark.parametrize("text, argv, message", [
    ("", ["hash-password"], "the password is empty"),
    ("\n", ["hash-password"], "the password is empty"),
    ("x\n", ["hash-password", "--scrypt-n", "1000"], "--scrypt-n: scrypt N must be a power"),
])
def test_hash_password_refusals(stdin: io.StringIO, capsys: pytest.CaptureFixture[str],
                                text: str, argv: list[str], message: str) -> None:
    feed(stdin, text)
    assert cli.main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and message in out.err


def test_new_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["new-api-key"]) == 0
    key, hashed = capsys.readouterr().out.splitlines()
    assert key.startswith("tmk_") and hashed == hash_api_key(key)


def test_add_user_creates_then_appends(tmp_path: Path, stdin: io.StringIO,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run" / "users.toml"
    feed(stdin, "alice pw\n")
    assert cli.main(["add-user", "alice", "--accounts", "ACC-A1, ACC-A2", "--password-stdin",
                     "--file", str(path), *N]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "added user 'alice'" in capsys.readouterr().err
    # An API key alone: no password is read, the key is printed once.
    assert cli.main(["add-user", "bot", "--accounts", "ACC-BOT", "--api-key",
                     "--file", str(path), *N]) == 0
    key = capsys.readouterr().out.strip()
    # Both: a password and a key.
    stdin.seek(0)
    stdin.truncate()
    feed(stdin, "bob pw\n")
    assert cli.main(["add-user", "bob", "--accounts", "ACC-BOB", "--password-stdin",
                     "--api-key", "--file", str(path), *N]) == 0
    bob_key = capsys.readouterr().out.strip()
    users = load_users(path)
    assert users.names() == ("alice", "bot", "bob")
    assert users.authenticate("alice", "alice pw").accounts == ("ACC-A1", "ACC-A2")
    assert users.by_api_key(key).name == "bot"
    bot = users.get("bot")
    assert bot is not None and bot.password is None
    assert users.authenticate("bob", "bob pw") == users.by_api_key(bob_key)


def test_add_user_into_a_comments_only_file(tmp_path: Path, stdin: io.StringIO) -> None:
    path = tmp_path / "users.toml"
    path.write_text("# users of the desk\n")
    path.chmod(0o644)
    feed(stdin, "pw\n")
    assert cli.main(["add-user", "alice", "--accounts", "A", "--file", str(path), *N]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("# users of the desk\n")
    assert load_users(path).names() == ("alice",)


@pytest.mark.parametrize("argv, message", [
    (["add-user", "alice", "--accounts", "ACC-NEW"], "user 'alice' is in"),
    (["add-user", "carol", "--accounts", "ACC-X,ACC-ALICE"],
     "accounts[1]: 'ACC-ALICE' in --accounts belongs to user 'alice' already"),
    (["add-user", "carol", "--accounts", "A,,B"], "has an empty account"),
    (["add-user", "carol", "--accounts", "A,A"], "lists an account twice"),
    (["add-user", "ca\trol", "--accounts", "A"], "contains a control character"),
    (["add-user", "carol", "--accounts", "A", "--scrypt-n", "3"], "power of 2"),
])
def test_add_user_refusals(tmp_path: Path, stdin: io.StringIO,
                           capsys: pytest.CaptureFixture[str], argv: list[str],
                           message: str) -> None:
    path = tmp_path / "users.toml"
    feed(stdin, "pw\n")
    assert cli.main(["add-user", "alice", "--accounts", "ACC-ALICE", "--password-stdin",
                     "--file", str(path), *N]) == 0
    before = path.read_text()
    capsys.readouterr()
    stdin.seek(0)
    cost = [] if "--scrypt-n" in argv else N
    assert cli.main([*argv, "--password-stdin", "--file", str(path), *cost]) == 2
    out = capsys.readouterr()
    assert message in out.err and out.out == ""
    assert path.read_text() == before  # nothing written


def test_add_user_without_a_password_on_stdin(tmp_path: Path, stdin: io.StringIO,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.toml"
    feed(stdin, "")
    assert cli.main(["add-user", "alice", "--accounts", "A", "--file", str(path), *N]) == 2
    assert "the password is empty" in capsys.readouterr().err
    assert not path.exists()


def test_add_user_refuses_a_broken_file(tmp_path: Path, stdin: io.StringIO,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[[users]\n")
    feed(stdin, "pw\n")
    assert cli.main(["add-user", "alice", "--accounts", "A", "--password-stdin",
                     "--file", str(path), *N]) == 1
    assert "is not valid TOML" in capsys.readouterr().err
    assert path.read_text() == "[[users]\n"


def test_usage_errors_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["add-user", "alice"]) == 2  # --accounts and --file are required
    assert "required" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_add_parser_under_another_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """How ``tickmesh gateway`` wires it: the commands under its own subparsers."""
    parser = argparse.ArgumentParser(prog="tickmesh")
    gateway = parser.add_subparsers(dest="command").add_parser("gateway")
    cli.add_parser(gateway.add_subparsers(dest="gateway_command", required=True))
    args = parser.parse_args(["gateway", "new-api-key"])
    assert cli.run(args) == 0
    assert capsys.readouterr().out.startswith("tmk_")
