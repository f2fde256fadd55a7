"""The history readers of a mesh: what the CLI, the backend's rebuild and the gateway read.

    readers = open_history_reader(cfg)
    await readers.open()
    reader, forming = readers
    bars = await reader.bars("EURUSD", 60, 0, end, countback=300)
    last = await forming.forming("EURUSD", 60)
    await readers.close()

- ``[history] store = "duckdb"``: the historian holds the file (one process only), so both
  are one :class:`~bus.history.query.RemoteHistoryStore` asking its query service at
  ``query_bind``.
- ``"clickhouse"``: ``reader`` is a :class:`~bus.store.history_reader.FailoverHistoryReader`
  over the servers (the active one, the other when it stops answering); ``forming`` asks the
  historian's query service and gives None when it does not answer (or ``query_bind`` is
  empty), so a chart shows its closed bars while the historian is away.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple, Protocol, cast

import zmq.asyncio

from bus.config import HistorySection, MeshConfig, parse_hostport
from bus.history.query import RemoteHistoryStore
from bus.store.history_reader import FailoverHistoryReader, HistoryReader
from protocols.errors import StoreError, StoreUnavailable
from protocols.history.bars import Bar

if TYPE_CHECKING:
    from bus.store.history_ch import ClickHouseHistoryStore

__all__ = [
    "FormingSource",
    "HistoryReaders",
    "OpenReader",
    "clickhouse_servers",
    "open_history_reader",
    "query_endpoint",
]

log = logging.getLogger(__name__)


class OpenReader(HistoryReader, Protocol):
    """A history reader with its lifetime: opened before use, closed after."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class FormingSource(Protocol):
    """Where a reader gets the bar in progress of a stream (None: no tick in it yet)."""

    async def forming(self, stream: str, res_s: int) -> Bar | None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class OptionalForming:
    """Forming bars from a historian when it answers, else None (always None without one)."""

    def __init__(self, remote: RemoteHistoryStore | None) -> None:
        self.remote = remote

    async def forming(self, stream: str, res_s: int) -> Bar | None:
        if self.remote is None:
            return None
        try:
            return await self.remote.forming(stream, res_s)
        except StoreUnavailable as exc:
            log.info("history reader: no forming bar: %s", exc)
            return None

    async def open(self) -> None:
        if self.remote is not None:
            await self.remote.open()

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()


class HistoryReaders(NamedTuple):
    """What :func:`open_history_reader` gives: unpacks as ``reader, forming``; open it once
    before use and close it once after (the two may be one object: each is opened and closed
    once)."""

    reader: OpenReader
    forming: FormingSource

    def _forming_apart(self) -> bool:
        return self.forming is not cast(object, self.reader)

    async def open(self) -> None:
        await self.reader.open()
        if self._forming_apart():
            await self.forming.open()

    async def close(self) -> None:
        try:
            await self.reader.close()
        finally:
            if self._forming_apart():
                await self.forming.close()


def query_endpoint(cfg: MeshConfig) -> str:
    """Where a reader reaches the historian of ``cfg`` (a wildcard bind as loopback)."""
    bind = cfg.history.query_bind
    if not bind:
        raise StoreError("history.query_bind is empty: the historian serves no queries")
    return bind.replace("*", "127.0.0.1")


def clickhouse_servers(h: HistorySection) -> list[ClickHouseHistoryStore]:
    """One store per ``history.clickhouse`` server, with the section's timeouts."""
    from bus.store.history_ch import ClickHouseHistoryStore  # clickhouse-driver: only if used

    return [ClickHouseHistoryStore(*parse_hostport(f"history.clickhouse[{i}]", hp), h.database,
                                   h.connect_timeout_s, h.receive_timeout_s)
            for i, hp in enumerate(h.clickhouse)]


def open_history_reader(cfg: MeshConfig, ctx: zmq.asyncio.Context | None = None,
                        ) -> HistoryReaders:
    """The history readers of ``cfg``'s ``[history]``: ``(reader, forming)``, not open yet.

    The historian's query service is asked with ``history.receive_timeout_s`` per attempt;
    ``ctx`` is the ZeroMQ context for it (default: the process's shared one).
    """
    h = cfg.history
    if h.store == "duckdb":
        remote = RemoteHistoryStore([query_endpoint(cfg)], h.receive_timeout_s, ctx)
        return HistoryReaders(remote, remote)
    historian = (RemoteHistoryStore([query_endpoint(cfg)], h.receive_timeout_s, ctx)
                 if h.query_bind else None)
    return HistoryReaders(FailoverHistoryReader(clickhouse_servers(h)),
                          OptionalForming(historian))
