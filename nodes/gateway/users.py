"""``tickmesh gateway hash-password|new-api-key|add-user``: credentials for the users file
(docs/GATEWAY.md, 2).

    tickmesh gateway hash-password              read a password, print its hash
    tickmesh gateway new-api-key                print a new API key, then its hash
    tickmesh gateway add-user NAME --accounts A,B [--password-stdin] [--api-key] --file PATH

A password is read from stdin (its first line) when stdin is not a terminal or
``--password-stdin`` is given, else prompted for twice. ``add-user`` appends a user to the
users file (created with mode 0600 if missing): with a password (read as above) unless only
``--api-key`` is given; with ``--api-key`` a new key is made, printed once on stdout, and its
hash stored. Exit codes: 0 done, 2 bad usage (a user or an account that exists already, an
invalid name, no credential), 1 the users file cannot be read or is invalid.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bus.gateway.sessions import append_users, load_users
from protocols.errors import ConfigError
from protocols.gateway.auth import (
    DEFAULT_N,
    User,
    Users,
    hash_api_key,
    hash_password,
    new_api_key,
)

__all__ = ["add_parser", "main", "run"]

Command = Callable[[argparse.Namespace], int]


class UsageError(ValueError):
    """The command line asks for something impossible (exit code 2)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hash-password``, ``new-api-key`` and ``add-user`` to ``sub`` (the subcommands of
    ``tickmesh gateway``); :func:`run` then carries out the parsed command."""
    cost = argparse.ArgumentParser(add_help=False)
    cost.add_argument("--scrypt-n", type=int, default=DEFAULT_N, metavar="N",
                      help=f"scrypt cost, a power of 2 (default {DEFAULT_N})")
    hp = sub.add_parser("hash-password", parents=[cost],
                        help="read a password (stdin or a prompt) and print its hash")
    hp.set_defaults(gateway_users=_hash_password)
    key = sub.add_parser("new-api-key", help="print a new API key, then its hash")
    key.set_defaults(gateway_users=_new_api_key)
    add = sub.add_parser("add-user", parents=[cost], help="add a user to the users file")
    add.add_argument("name")
    add.add_argument("--accounts", required=True, help="the accounts it owns: A,B,...")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from stdin's first line")
    add.add_argument("--api-key", action="store_true",
                     help="make an API key (printed once); alone: no password")
    add.add_argument("--file", type=Path, required=True, help="the users file")
    add.set_defaults(gateway_users=_add_user)


def run(args: argparse.Namespace) -> int:
    """Carry out a command that :func:`add_parser`'s subcommands parsed; its exit code."""
    command: Command = args.gateway_users
    try:
        return command(args)
    except (UsageError, ConfigError) as exc:
        print(f"tickmesh gateway: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``tickmesh gateway`` with only these commands (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="tickmesh gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_parser(parser.add_subparsers(dest="gateway_command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or bad usage (argparse printed why)
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    if not password:
        raise UsageError("the password is empty")
    return password


def _hashed(password: str, n: int) -> str:
    try:
        return hash_password(password, n=n)
    except ConfigError as exc:
        raise UsageError(f"--scrypt-n: {exc.problem}") from None


def _hash_password(args: argparse.Namespace) -> int:
    print(_hashed(_read_password(False), args.scrypt_n))
    return 0


def _new_api_key(args: argparse.Namespace) -> int:
    key = new_api_key()
    print(key)
    print(hash_api_key(key))
    print("the key (first line) is shown once: give it to its user; its hash (second line) "
          "goes in the users file's api_keys", file=sys.stderr)
    return 0


def _add_user(args: argparse.Namespace) -> int:
    accounts = tuple(a.strip() for a in args.accounts.split(","))
    if not all(accounts):
        raise UsageError(f"--accounts {args.accounts!r} has an empty account")
    path: Path = args.file
    existing = load_users(path, empty_ok=True)  # ConfigError (exit 1): fix the file first
    if existing.get(args.name) is not None:
        raise UsageError(f"user {args.name!r} is in {path} already")
    password = None
    if args.password_stdin or not args.api_key:
        password = _hashed(_read_password(args.password_stdin), args.scrypt_n)
    key = new_api_key() if args.api_key else None
    try:
        user = User(args.name, accounts, password, (hash_api_key(key),) if key else ())
        Users([*existing, user])  # an account another user owns is refused
    except ConfigError as exc:
        problem = exc.problem.replace("belongs to user", "in --accounts belongs to user")
        raise UsageError(f"{exc.key.split('.')[-1]}: {problem}") from None
    append_users(path, [user])
    if key:
        print(key)
    print(f"added user {user.name!r} (accounts {', '.join(accounts)}) to {path}"
          + ("; its API key (stdout) is shown once" if key else ""), file=sys.stderr)
    return 0
