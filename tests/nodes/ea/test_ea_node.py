"""The EA node against a real simulated terminal process and a scripted executor peer.

The executor side here is a ROUTER speaking docs/PROTOCOL.md section 18 from the test (our
own protocol's peer): it grants or withholds the lease and sends EXECUTE / CANCEL / MODIFY; the
terminal is ``tickmesh sim-terminal`` in its own process, whose record is what the assertions
count (what was really sent to the "broker").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from bus.config import MeshConfig, TerminalSection, dump_toml, parse_config
from bus.ea.simclient import SimTerminal
from nodes.drills.ports import tcp_endpoint
from nodes.ea.node import EaNode
from nodes.ea.simproc import TerminalProcess, start_terminal
from protocols.ea.messages import (
    Cancel,
    EaMessage,
    Execute,
    Facts,
    FactStatus,
    Grant,
    Lease,
    Modify,
    OrderFacts,
    Ping,
    Refused,
    RefusedWhy,
    Synced,
    decode_ea,
    encode_ea,
)
from protocols.ea.mt5 import magic_of
from tests.support import scaled, wait_until

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(60)


def mesh(terminal: str, **ea: object) -> MeshConfig:
    return parse_config({
        "feeds": [{"name": "sim", "source": "ea", "pull": tcp_endpoint(), "pub": tcp_endpoint(),
                   "udp_targets": []}],
        "ea": [{"name": "ea-1", "feed": "sim", "sim_endpoint": terminal, "poll_ms": 2, **ea}],
        "orders": {"execution": "ea", "ea_bind": tcp_endpoint(), "ea_lease_ms": 150,
                   "ea_heartbeat_ms": 20},
    })


@dataclass
class Terminal:
    """A simulated terminal process, the mesh file of an EA on it, and a client of its own."""

    proc: TerminalProcess
    cfg: MeshConfig
    file: Path
    client: SimTerminal = field(init=False)

    def __post_init__(self) -> None:
        self.client = SimTerminal(self.proc.endpoint)
        self.client.initialize()

    def tagged(self, order_id: str) -> list[int]:
        """Tickets of the terminal orders tagged with ``order_id`` (active and finished)."""
        magic = magic_of(order_id)
        orders = self.client.orders_get() + self.client.history_orders_get(0, 2**62)
        return sorted(o.ticket for o in orders if o.magic == magic)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    with start_terminal(TerminalSection(symbols=("EURUSD", "GBPUSD"), rate=400.0),
                        tmp_path / "terminal") as proc:
        cfg = mesh(proc.endpoint)
        file = tmp_path / "mesh.toml"
        file.write_text(dump_toml(cfg))
        term = Terminal(proc, cfg, file)
        try:
            yield term
        finally:
            term.client.shutdown()


class Executor:
    """The executor's end of the trade socket, scripted by the test."""

    def __init__(self, cfg: MeshConfig) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(cfg.orders.ea_bind)
        self.grant: tuple[str, int, bool] | None = ("*", 1, True)  # None: silent
        self.got: asyncio.Queue[EaMessage] = asyncio.Queue()
        self.facts: dict[str, OrderFacts] = {}
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            peer, *frames = await self.sock.recv_multipart()
            msg = decode_ea(frames)
            if isinstance(msg, Ping):
                if self.grant is not None:
                    await self.sock.send_multipart([peer, *encode_ea(
                        Lease(msg.n, 150.0, (Grant(*self.grant),)))])
                continue
            if isinstance(msg, Facts):
                for f in msg.orders:
                    self.facts[f.order_id] = f
            self.peer = peer
            await self.got.put(msg)

    async def send(self, msg: EaMessage) -> None:
        await self.sock.send_multipart([b"ea-1", *encode_ea(msg)])

    async def expect(self, kind: type, timeout: float = 10.0) -> EaMessage:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                msg = await self.got.get()
                if isinstance(msg, kind):
                    return msg

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close()
        self.ctx.term()


def execute(order_id: str, *, price: float = 0.0, quantity: float = 1.0, epoch: int = 1,
            routed_ms: int = 0) -> Execute:
    return Execute("*", epoch, order_id, "EURUSD", True, quantity, price,
                   routed_ms or time.time_ns() // 1_000_000)


@contextlib.asynccontextmanager
async def trading(terminal: Terminal) -> AsyncIterator[tuple[Executor, EaNode]]:
    """A trade-only EA node on ``terminal`` and the scripted executor, once reconciled."""
    ex = Executor(terminal.cfg)
    node = EaNode(terminal.cfg, replace(terminal.cfg.ea[0], feed="", trades=True))
    task, stop = await run_node(node)
    try:
        await ex.expect(Synced)
        yield ex, node
    finally:
        assert await stop_node(task, stop) == 0
        await ex.close()


async def run_node(node: EaNode) -> tuple[asyncio.Task[int], asyncio.Event]:
    stop = asyncio.Event()
    return asyncio.create_task(node.run(stop)), stop


async def stop_node(task: asyncio.Task[int], stop: asyncio.Event) -> int:
    stop.set()
    return await task


def test_ticks_reach_the_feed_and_a_restart_loses_none(terminal: Terminal,
                                                        tmp_path: Path) -> None:
    # The restart reads from the cursor the first process saved (state_dir).
    cfg = replace(terminal.cfg, ea=(replace(terminal.cfg.ea[0], trades=False,
                                            state_dir=str(tmp_path / "state")),))

    async def main() -> list[dict[str, Any]]:
        ctx = zmq.asyncio.Context()
        pull = ctx.socket(zmq.PULL)
        pull.bind(cfg.feeds[0].pull)
        got: list[dict[str, Any]] = []

        async def read(n: int) -> None:
            while len(got) < n:
                got.extend(msgpack.unpackb(await pull.recv()))
        try:
            for _ in range(2):  # the second node is a restart: it backfills its downtime
                node = EaNode(cfg, cfg.ea[0])
                task, stop = await run_node(node)
                await asyncio.wait_for(read(len(got) + 200), scaled(10))
                await asyncio.sleep(0.25)  # a cursor saved (every 0.1 s)
                assert await stop_node(task, stop) == 0
                await asyncio.sleep(0.3)  # downtime: ticks the terminal makes meanwhile
            return got
        finally:
            pull.close(linger=0)
            ctx.term()

    got = asyncio.run(main())
    for symbol in ("EURUSD", "GBPUSD"):
        pushed = {(t["time_msc"], t["bid"], t["ask"]) for t in got if t["symbol"] == symbol}
        first = min(p[0] for p in pushed)
        last = max(p[0] for p in pushed)
        made = {(t.time_msc, t.bid, t.ask) for t in terminal.client.copy_ticks_from(
            symbol, first, 100_000) if t.time_msc <= last}
        assert made and made <= pushed  # every tick the terminal made in the span was pushed


def test_an_order_is_sent_once_however_often_it_is_asked(terminal: Terminal) -> None:
    async def main() -> None:
        async with trading(terminal) as (ex, node):
            for _ in range(3):
                await ex.send(execute("O1.aa.1"))
                await ex.expect(Facts)
            facts = ex.facts["O1.aa.1"]
            assert facts.status is FactStatus.FILLED and facts.filled == 1.0
            assert len(facts.deals) == 1
            assert node.trades is not None and node.trades.stats.sent == 1
        assert len(terminal.tagged("O1.aa.1")) == 1

    asyncio.run(main())


def test_limit_order_rests_is_modified_and_cancelled(terminal: Terminal) -> None:
    async def main() -> None:
        async with trading(terminal) as (ex, _node):
            await ex.send(execute("O1.aa.2", price=0.5))  # far below the market: rests
            await ex.expect(Facts)
            working = ex.facts["O1.aa.2"]
            await ex.send(Modify("*", 1, "O1.aa.2", 0.6))
            await ex.expect(Facts)
            modified = ex.facts["O1.aa.2"]
            await ex.send(Cancel("*", 1, "O1.aa.2"))
            await ex.expect(Facts)
            cancelled = ex.facts["O1.aa.2"]
            assert (working.status, working.price) == (FactStatus.WORKING, 0.5)
            assert (modified.status, modified.price) == (FactStatus.WORKING, 0.6)
            assert (cancelled.status, cancelled.deals) == (FactStatus.CANCELLED, ())
            await ex.send(Cancel("*", 1, "O1.never"))
            refused = await ex.expect(Refused)
            assert isinstance(refused, Refused) and refused.why is RefusedWhy.UNKNOWN_ORDER

    asyncio.run(main())


def test_no_order_send_without_a_lease(terminal: Terminal) -> None:
    async def main() -> None:
        async with trading(terminal) as (ex, node):
            ex.grant = None  # the executor goes silent: the lease runs out
            await wait_until(lambda: node.trades is not None and not node.trades.holder.held,
                             scaled(5), "the lease to run out")
            await ex.send(execute("O1.aa.3"))
            refused = await ex.expect(Refused)
            assert isinstance(refused, Refused) and refused.why is RefusedWhy.NOT_ACTIVE
            ex.grant = ("*", 2, False)  # another instance holds it now
            await ex.send(execute("O1.aa.3", epoch=2))
            assert (await ex.expect(Refused)).why is RefusedWhy.NOT_ACTIVE  # type: ignore
        assert terminal.tagged("O1.aa.3") == []

    asyncio.run(main())


def test_killed_after_order_send_the_restart_reports_it_and_never_resends(
        terminal: Terminal, tmp_path: Path) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "nodes.cli", "ea", "--config",
                                 str(terminal.file), "--name", "ea-1"], cwd=ROOT,
                                env={**os.environ, "TICKMESH_EA_FAULTS": str(faults)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def main() -> None:
        ex = Executor(terminal.cfg)
        ea = start()
        try:
            await ex.expect(Synced, 20)
            (faults / "ea-1.after_send").touch()
            await ex.send(execute("O1.aa.4"))
            assert await asyncio.to_thread(ea.wait, scaled(10)) == -signal.SIGKILL
            assert "O1.aa.4" not in ex.facts  # it died before its report
            ex.grant = ("*", 2, True)  # the restart gets the next epoch
            ea = start()
            await ex.expect(Synced, 20)
            facts = ex.facts["O1.aa.4"]  # reconciliation found it in the terminal's record
            assert facts.status is FactStatus.FILLED and facts.filled == 1.0
            del ex.facts["O1.aa.4"]
            await ex.send(execute("O1.aa.4", epoch=2))
            await ex.expect(Facts)
            assert ex.facts["O1.aa.4"] == facts
        finally:
            ea.kill()
            ea.wait()
            await ex.close()
        assert len(terminal.tagged("O1.aa.4")) == 1

    asyncio.run(main())


def test_a_node_waiting_for_its_terminal_stops_cleanly(tmp_path: Path) -> None:
    """No terminal at the endpoint: the node keeps trying to attach, counts it, and a stop
    ends it at once with 0 (a service manager stopping it must not hang)."""
    cfg = mesh(tcp_endpoint())

    async def main() -> tuple[int, int]:
        node = EaNode(cfg, replace(cfg.ea[0], feed=""))
        task, stop = await run_node(node)
        await wait_until(lambda: node.terminal_errors >= 1, scaled(10), "an attach failure")
        return await stop_node(task, stop), node.terminal_errors

    rc, errors = asyncio.run(main())
    assert rc == 0 and errors >= 1
