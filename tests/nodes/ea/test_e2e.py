"""Orders end to end on the EA path: order client -> backend pair -> executor in bridge mode
-> the EA node -> the simulated terminal (its own process), on a real Redis.

Every order must be FILLED in the store once, and the terminal's own record must hold exactly
one order and deals of exactly its quantity for it: what tickmesh's log says was executed is
what the "broker" did. A clean stop of the EA (BYE) and a new instance in its place: the
orders go on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus.config import TerminalSection, parse_config
from bus.ea.simclient import SimTerminal
from bus.orders.client import OrderClient
from bus.store.orders import RedisOrderStore
from nodes.drills.ports import tcp_endpoint
from nodes.ea.node import EaNode
from nodes.ea.simproc import start_terminal
from nodes.servers.redis_server import RedisProcess
from protocols.ea.mt5 import magic_of
from protocols.orders.binary_star import Role
from protocols.orders.lifecycle import OrderState
from tests.nodes.orders.test_backend import order, pair, run, wait_active
from tests.nodes.orders.test_e2e import both_backends
from tests.support import scaled, wait_until

pytestmark = pytest.mark.timeout(90)


def test_orders_fill_once_through_the_ea_and_its_terminal(redis_server: RedisProcess,
                                                          tmp_path: Path) -> None:
    ea_bind = tcp_endpoint()
    settings = {"execution": "ea", "ea_bind": ea_bind, "ea_heartbeat_ms": 20.0,
                "ea_lease_ms": 100.0, "ea_guard_ms": 20.0}

    async def main() -> None:
        with start_terminal(TerminalSection(symbols=("EURUSD",), rate=200.0),
                            tmp_path / "terminal") as term:
            ea_cfg = parse_config({"orders": settings, "ea": [
                {"name": "ea-1", "sim_endpoint": term.endpoint, "trades": True}]})
            async with pair(redis_server, real_executor=True, orders=settings) as p:
                await wait_active(p.node(Role.PRIMARY))
                client = OrderClient(both_backends(p))
                await client.start()
                store = RedisOrderStore(p.cfg.redis.url, "bk")
                ids: list[str] = []

                async def filled() -> bool:
                    got = await asyncio.gather(*(store.get(o) for o in ids))
                    return all(o is not None and o.state is OrderState.FILLED for o in got)
                try:
                    for round_ in range(2):  # the second on a new instance
                        node = EaNode(ea_cfg, ea_cfg.ea[0])
                        stop = asyncio.Event()
                        task = asyncio.create_task(node.run(stop))
                        acks = await asyncio.gather(*(client.place(order(f"e2e-{round_}-{i}"))
                                                      for i in range(20)))
                        ids.extend(a.order_id for a in acks)
                        await wait_until(filled, scaled(20), "every order FILLED")
                        stop.set()
                        assert await task == 0
                    logs = await asyncio.gather(*(store.executions(o) for o in ids))
                finally:
                    await client.close()
                    await store.close()
            sim = SimTerminal(term.endpoint)
            sim.initialize()
            orders = sim.orders_get() + sim.history_orders_get(0, 2**62)
            deals = sim.history_deals_get(0, 2**62)
            sim.shutdown()
        for oid, log in zip(ids, logs, strict=True):
            magic = magic_of(oid)
            assert len([o for o in orders if o.magic == magic]) == 1, oid
            volume = sum(d.volume for d in deals if d.magic == magic)
            assert volume == 1.0 == sum(e.last_quantity for e in log if e.is_fill), oid

    run(main())
