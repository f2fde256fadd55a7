"""The envelope every tickmesh frame shares: magic, version, kind (sans-I/O).

Every header, on every path, opens with the same four bytes::

    magic "TM" | version u8 | kind u8

A feed header continues with its own fields (``protocols.ticks.codec``); the recovery, order
and pair protocols stop there and carry a msgpack map with string keys in a second frame::

    [magic "TM" | version u8 | kind u8, msgpack map]

Each protocol owns its kinds (an ``IntEnum`` of disjoint values: ticks 1-31, orders 32-63, the
backend pair 64-71; docs/PROTOCOL.md sections 4, 14 and 15). This module is the one copy of
the envelope's layout and of its checks; a bad magic, another version, an unknown kind or a
body that is not a map raises :class:`RemoteProtocolError` naming the reason.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, TypeVar

import msgpack

from protocols.errors import RemoteProtocolError

MAGIC = b"TM"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct(">2sBB")  # magic, version, kind: the first bytes of every header
HEADER_SIZE = PREFIX.size  # 4: the whole header frame of an envelope message

K = TypeVar("K", bound=IntEnum)


def pack_header(kind: int) -> bytes:
    """The 4-byte header frame of an envelope message of ``kind``."""
    return PREFIX.pack(MAGIC, PROTOCOL_VERSION, kind)


def pack_body(body: Mapping[str, Any]) -> bytes:
    """The msgpack body frame (str as str, bytes as bin)."""
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def encode_envelope(kind: int, body: Mapping[str, Any]) -> list[bytes]:
    """Frames ``[header, body]`` of an envelope message."""
    return [pack_header(kind), pack_body(body)]


def check_prefix(magic: bytes, version: int) -> None:
    """Raise :class:`RemoteProtocolError` unless a header opens with our magic and version."""
    if magic != MAGIC:
        raise RemoteProtocolError(f"bad magic {bytes(magic)!r}")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(f"unsupported protocol version {version}")


def decode_envelope(frames: list[bytes] | tuple[bytes, ...], kinds: type[K],
                    what: str, kind_label: str = "") -> tuple[K, dict[str, Any]]:
    """Check the two-frame envelope and return its kind (one of ``kinds``) and its map.

    ``what`` names the protocol in errors ("recovery message of 3 frames"), ``kind_label``
    the kind ("unknown order kind 9")."""
    if len(frames) != 2:
        raise RemoteProtocolError(f"{what} message of {len(frames)} frames, need 2")
    header, body = frames
    if len(header) != HEADER_SIZE:
        raise RemoteProtocolError(f"{what} header of {len(header)} bytes")
    magic, version, raw_kind = PREFIX.unpack(header)
    check_prefix(magic, version)
    try:
        kind = kinds(raw_kind)
    except ValueError:
        raise RemoteProtocolError(f"unknown {kind_label}kind {raw_kind}") from None
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise RemoteProtocolError(f"body is not msgpack: {exc}") from exc
    if not isinstance(data, dict):
        raise RemoteProtocolError("body is not a map")
    return kind, data


__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "PREFIX",
    "PROTOCOL_VERSION",
    "check_prefix",
    "decode_envelope",
    "encode_envelope",
    "pack_body",
    "pack_header",
]
