"""The gateway node: the chart gateway of docs/GATEWAY.md as a process.

    tickmesh gateway --config mesh.toml --index 0      # [gateway] listen[0]
    tickmesh gateway --listen 127.0.0.1:8090 --name gw-x

It composes the bus pieces: the session store and the users file, the history readers, the
market data (a subscriber and the bar builders), the order desk (the order client and the order
store's history stream) and the aiohttp application. Each starts in that order and closes in
the reverse one; a part that cannot start (Redis away, a wrong users file) stops the node with
an error that names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bus.config import MeshConfig, parse_hostport
from bus.gateway.market import MarketData
from bus.gateway.orders import OrderDesk, desk_client_options
from bus.gateway.server import Gateway, GatewayOptions, GatewayParts
from bus.gateway.sessions import SessionStore, load_users
from bus.history.readers import HistoryReaders, open_history_reader
from bus.orders.client import OrderClient
from bus.store.orders import RedisOrderStore
from bus.store.ticks import RedisTickStore
from bus.ticks.subscriber import SubscriberOptions
from nodes.common import stats_writer

__all__ = ["GatewayNode", "mesh_symbols"]

log = logging.getLogger(__name__)


def mesh_symbols(cfg: MeshConfig) -> tuple[str, ...]:
    """Every symbol a feed of the mesh publishes, in config order."""
    return tuple(s for f in cfg.feeds for s in f.symbols)


class GatewayNode:
    def __init__(self, cfg: MeshConfig, listen: str, name: str = "",
                 stats_path: Path | None = None) -> None:
        self.cfg = cfg
        self.host, self.port = parse_hostport("--listen", listen)
        self.name = name or f"gw-{self.port}"
        self.stats_path = stats_path
        self.gateway: Gateway | None = None

    async def run(self, stop: asyncio.Event) -> int:
        async with self.started() as gw:
            writer = None
            if self.stats_path is not None:
                writer = asyncio.create_task(stats_writer(self.stats_path, 1.0,
                                                          lambda: self.stats(gw)))
            try:
                await stop.wait()
            finally:
                if writer is not None:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await writer
        return 0

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[Gateway]:
        cfg, g = self.cfg, self.cfg.gateway
        users = load_users(g.users_file)
        async with contextlib.AsyncExitStack() as stack:
            sessions = SessionStore.from_config(cfg)
            stack.push_async_callback(sessions.close)
            epoch = await sessions.epoch()
            readers: HistoryReaders | None = None
            if cfg.history.enabled:
                readers = open_history_reader(cfg)
                await readers.open()
                stack.push_async_callback(readers.close)
            reader = readers.reader if readers is not None else None
            ticks = RedisTickStore.from_config(cfg)
            stack.push_async_callback(ticks.close)
            market = MarketData(SubscriberOptions.from_config(cfg, udp_bind="", snapshot=False),
                                mesh_symbols(cfg), reader, epoch,
                                retention_count=g.retention_count, retention_s=g.retention_s,
                                tick_store=ticks)
            await market.start()
            stack.push_async_callback(market.close)
            desk = None
            if cfg.orders.enabled:
                client = OrderClient(desk_client_options(cfg))
                await client.start()
                stack.push_async_callback(client.close)
                store = RedisOrderStore.from_config(cfg)
                stack.push_async_callback(store.close)
                desk = OrderDesk(store, client, reader, resume_limit=g.retention_count)
                await desk.start()
                stack.push_async_callback(desk.close)
            gw = Gateway(GatewayParts(users, sessions, market, desk, reader, epoch),
                         GatewayOptions(self.name, self.host, self.port, g,
                                        cfg.history.store if cfg.history.enabled else "none"))
            await gw.start()
            stack.push_async_callback(gw.close)
            self.gateway = gw
            yield gw

    def stats(self, gw: Gateway) -> dict[str, Any]:
        from dataclasses import asdict

        return {"gateway": asdict(gw.stats), "market": {
            k: v for k, v in asdict(gw.parts.market.stats).items() if not k.startswith("_")},
            "clients": len(gw.clients), "status": gw.status()}
