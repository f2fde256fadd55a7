"""An in-process mesh for end-to-end tests: real sockets, real Redis, fault wrappers between.

feed (FeedNode) --PUB--> [TcpProxy] --> Subscriber <-- [UdpRelay] <--UDP-- feed
                                          |  DEALER
                              RecoveryNode (ROUTER) --> Redis <-- feed checkpoints

Every tick the subscriber delivers is recorded per stream, and :meth:`Mesh.verify` checks the
delivery against the store: in order, no duplicate, no hole, the same bytes as were published.

A node that a test crashes runs as a child process instead (:class:`NodeProcesses`): the
crash is a SIGKILL of its PID, never its sockets closed from inside the test's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bus.config import (
    FeedSection,
    MeshConfig,
    MeshSection,
    RecoverySection,
    RedisSection,
    SubscriberSection,
    dump_toml,
)
from bus.store.ticks import RedisTickStore
from bus.ticks.subscriber import Subscriber, SubscriberOptions
from nodes.common import dump_tasks
from nodes.drills.procs import Node
from nodes.servers.faults import TcpProxy, UdpRelay
from nodes.servers.redis_server import RedisProcess, free_port
from nodes.ticks.feed import FeedNode
from nodes.ticks.recovery import RecoveryNode
from protocols.ticks.arbitration import ArbiterConfig
from protocols.ticks.messages import Row, Tick
from tests.support import scaled, wait_until

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY")


class NodeProcesses:
    """Nodes as child processes, ``python -m nodes.cli COMMAND --config F --stats S``, for
    tests that crash one: :meth:`start` returns once the node serves (its first stats file is
    written after it bound its sockets), ``Node.kill()`` is a SIGKILL of its PID, and
    ``Node.stats()`` reads what a test would otherwise read from the node's internals (the
    file is rewritten every 0.5 s, and once more on a clean stop). Use :func:`node_processes`,
    which stops and reaps every one at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: dict[str, Node] = {}

    def config(self, cfg: MeshConfig, name: str = "mesh") -> Path:
        """Write ``cfg`` as a mesh file for the children; its path."""
        path = self.workdir / f"{name}.toml"
        path.write_text(dump_toml(cfg))
        return path

    async def start(self, name: str, command: list[str], config: Path,
                    timeout: float = 15.0) -> Node:
        """Start node ``name`` (``command``: e.g. ``["backend", "--role", "primary"]``) and
        wait until it serves; a node of that name started before is started again."""
        node = self.nodes.get(name)
        if node is None:
            stats = self.workdir / f"{name}.stats.json"
            node = Node(name, [sys.executable, "-m", "nodes.cli", *command, "--config",
                               str(config), "--stats", str(stats)],
                        stats, self.workdir / f"{name}.log")
            self.nodes[name] = node
        node.start()
        await self.wait_serving(node, timeout)
        return node

    async def wait_serving(self, node: Node, timeout: float = 15.0) -> None:
        await wait_until(lambda: node.stats() is not None or not node.alive(), timeout,
                         f"{node.name} serving")
        assert node.alive(), f"{node.name} exited at start:\n{self.log_tail(node)}"

    @staticmethod
    def log_tail(node: Node, chars: int = 3000) -> str:
        try:
            return node.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop_all(self) -> None:
        """Stop (SIGTERM, then SIGKILL) and reap every child still running."""
        for node in self.nodes.values():
            node.stop()


@contextlib.contextmanager
def node_processes(workdir: Path) -> Iterator[NodeProcesses]:
    """:class:`NodeProcesses` in ``workdir``; on failure each child's log is printed, and at
    exit every child is stopped and reaped."""
    procs = NodeProcesses(workdir)
    try:
        yield procs
    except BaseException:
        for node in procs.nodes.values():
            print(f"--- {node.name}\n{procs.log_tail(node)}")
        raise
    finally:
        procs.stop_all()


def mesh_config(redis: RedisProcess, *, rate: float = 3000.0, udp_target: str,
                symbols: tuple[str, ...] = SYMBOLS, recoveries: int = 1,
                **feed: Any) -> MeshConfig:
    # Free ports, not port 0: the nodes bind these themselves, in this process or as children
    # reading a mesh file, and the config must name each port before they start (bus.config
    # refuses 0 and *: a peer is told the endpoint). nodes.drills.ports, case 4.
    return MeshConfig(
        mesh=MeshSection(key_prefix="e2e"),
        redis=RedisSection(url=redis.url),
        feeds=(FeedSection(name="f", symbols=symbols, pub=f"tcp://127.0.0.1:{free_port()}",
                           udp_targets=(udp_target,), rate=rate, heartbeat_ms=50,
                           checkpoint_ms=5, reserve_block=10_000, **feed),),
        recovery=tuple(RecoverySection(name=f"r{i}", bind=f"tcp://127.0.0.1:{free_port()}")
                       for i in range(recoveries)),
        subscriber=SubscriberSection(udp_bind=udp_target),
    ).validate()


@dataclass
class Mesh:
    cfg: MeshConfig
    sub: Subscriber
    feed: FeedNode | None
    proxy: TcpProxy | None
    relay: UdpRelay | None
    recovery: dict[int, RecoveryNode] = field(default_factory=dict)  # by index in the config
    recovery_procs: dict[int, Node] = field(default_factory=dict)  # those run as children
    got: dict[str, list[Tick]] = field(default_factory=dict)

    def delivered(self, stream: str) -> list[int]:
        return [t.seq for t in self.got.get(stream, [])]

    def count(self) -> int:
        return sum(len(v) for v in self.got.values())

    async def wait_for_ticks(self, n: int, timeout: float = 10.0) -> None:
        target = self.count() + n
        await wait_until(lambda: self.count() >= target, timeout, f"{n} more ticks")

    async def verify(self, last_seq: dict[str, int], timeout: float = 15.0) -> None:
        """Wait until every stream is delivered through ``last_seq``; check it against Redis."""
        await wait_until(lambda: all(self.delivered(s)[-1:] == [n] for s, n in last_seq.items()
                                     if n > 0), timeout, f"delivery through {last_seq}")
        store = RedisTickStore(self.cfg.redis.url, self.cfg.mesh.key_prefix)
        try:
            for stream, last in last_seq.items():
                seqs = self.delivered(stream)
                assert all(a < b for a, b in itertools.pairwise(seqs)), \
                    f"{stream}: out of order or duplicated"
                truth = await store.fill(stream, seqs[0], last, 10**7)
                stored: dict[int, Row] = {b.first_seq + i: r for b in truth.batches
                                          for i, r in enumerate(b.rows)}
                # Only numbers a killed feed reserved (an unknown range in the store) may be
                # absent: it may have published some of them (delivered live), or not.
                void = {s for r in (*truth.void, *truth.unknown)
                        for s in range(r.first, r.last + 1)}
                missing = set(range(seqs[0], last + 1)) - set(seqs) - void
                assert not missing, f"{stream}: {len(missing)} ticks never delivered"
                for tick in self.got[stream]:
                    if tick.seq in stored:
                        assert tick.row() == stored[tick.seq], f"{stream}#{tick.seq} differs"
                assert len(stored) >= 0.9 * len(seqs), f"{stream}: store lacks ticks"
        finally:
            await store.close()


async def _collect(sub: Subscriber, got: dict[str, list[Tick]]) -> None:
    while True:
        for tick in await sub.get_many():
            got.setdefault(tick.symbol, []).append(tick)


@contextlib.asynccontextmanager
async def run_feed(cfg: MeshConfig) -> AsyncIterator[FeedNode]:
    """A FeedNode in this loop; stopped cleanly (end of session, final checkpoint) on exit."""
    node = FeedNode(cfg, cfg.feeds[0])
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    await wait_until(lambda: node.ready.is_set() or task.done(), 10, "feed start")
    try:
        yield node
    finally:
        stop.set()
        done, _ = await asyncio.wait([task], timeout=scaled(10))
        if not done:
            dump_tasks()  # say where the feed is stuck before failing
            raise AssertionError("the feed did not stop within 10 s")
        assert task.result() == 0


@contextlib.asynccontextmanager
async def run_recovery(cfg: MeshConfig, index: int = 0) -> AsyncIterator[RecoveryNode]:
    node = RecoveryNode(cfg, cfg.recovery[index])
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    try:
        yield node
    finally:
        stop.set()
        await asyncio.wait_for(task, scaled(10))


@contextlib.asynccontextmanager
async def mesh(redis: RedisProcess, *, tcp_proxy: bool = False, udp_relay: bool = False,
               udp_drop: float = 0.0, in_process_feed: bool = True, snapshot: bool = False,
               rate: float = 3000.0, udp_target_override: str = "", recoveries: int = 1,
               children: NodeProcesses | None = None, child_recoveries: tuple[int, ...] = (),
               **feed: Any) -> AsyncIterator[Mesh]:
    """Start recovery, feed and a subscriber (with fault wrappers when asked); the recovery
    nodes of ``child_recoveries`` (indexes) run as processes of ``children``."""
    sub_udp = f"127.0.0.1:{free_port()}"
    relay = None
    if udp_relay:
        host, port = sub_udp.split(":")
        relay = UdpRelay((host, int(port)), drop_rate=udp_drop, seed=7)
        await relay.start()
        feed_udp = f"127.0.0.1:{relay.listen_port}"
    else:
        feed_udp = sub_udp
    cfg = mesh_config(redis, rate=rate, udp_target=udp_target_override or feed_udp,
                      recoveries=recoveries, **feed)
    cfg = replace(cfg, subscriber=replace(cfg.subscriber, udp_bind=sub_udp))
    proxy = None
    feeds = cfg.feed_endpoints
    if tcp_proxy:
        host, port = cfg.feeds[0].pub[len("tcp://"):].split(":")
        proxy = TcpProxy((host, int(port)))
        await proxy.start()
        feeds = (f"tcp://127.0.0.1:{proxy.listen_port}",)
    opts = SubscriberOptions.from_config(
        cfg, feeds=feeds, snapshot=snapshot,
        arbiter=ArbiterConfig(grace_s=0.003, fill_timeout_s=0.2, retry_s=0.01, give_up_s=5.0))
    async with contextlib.AsyncExitStack() as stack:
        recovery = {i: await stack.enter_async_context(run_recovery(cfg, i))
                    for i in range(recoveries) if i not in child_recoveries}
        recovery_procs: dict[int, Node] = {}
        if child_recoveries:
            assert children is not None, "child recovery nodes need node_processes()"
            config = children.config(cfg)
            for i in child_recoveries:
                name = cfg.recovery[i].name
                recovery_procs[i] = await children.start(name, ["recovery", "--name", name],
                                                         config)
        sub = Subscriber(opts)
        await sub.start()
        stack.push_async_callback(sub.close)
        if proxy is not None:
            stack.push_async_callback(proxy.close)
        if relay is not None:
            stack.callback(relay.close)
        m = Mesh(cfg, sub, None, proxy, relay, recovery, recovery_procs)
        collector = asyncio.create_task(_collect(sub, m.got))

        async def stop_collector() -> None:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
        stack.push_async_callback(stop_collector)
        if in_process_feed:
            m.feed = await stack.enter_async_context(run_feed(cfg))
        yield m
