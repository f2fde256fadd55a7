"""The backend pair against a real Redis: orders, rejects, failover, and fencing proven."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from bus.config import MeshConfig, MeshSection, OrdersSection, RedisSection
from bus.sched import renice_permitted
from bus.store.orders import OrderStore, RedisOrderStore, WriteOutcome
from bus.store.ticks import CheckpointRun, QuoteCache, RedisTickStore
from nodes.drills.procs import Node
from nodes.orders.backend import QUOTE_TTL_S, BackendEndpoints, BackendNode
from nodes.orders.executor import ExecutorNode
from nodes.servers.redis_server import RedisProcess, free_port
from protocols.errors import StoreUnavailable
from protocols.orders.binary_star import PairConfig, Role, State
from protocols.orders.codec import decode_order, encode_order
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    CancelOrder,
    EntryRefusal,
    EntryRefused,
    ExecutionReport,
    NewOrder,
    OrderAck,
    OrderPending,
    OrderReject,
    OrderRequest,
    OrderType,
    RejectReason,
    Side,
)
from protocols.orders.record import Order
from protocols.orders.risk import Limits
from tests.nodes.harness import NodeProcesses, node_processes
from tests.support import FakeClock, scaled, wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]
PAIR = PairConfig(heartbeat_s=0.02, peer_timeout_s=0.06, cold_start_s=0.3, holdoff_s=0.5)
LIMITS = Limits(frozenset({"EURUSD", "GBPUSD"}), max_quantity=100.0, price_band=0.05,
                max_exposure_per_account=1000.0)


def tcp() -> str:
    """An endpoint on a port that was free a moment ago: only for what a child binds, or
    what must be named before its binder exists (pair(): why)."""
    return f"tcp://127.0.0.1:{free_port()}"


def order(coid: str, qty: float = 1.0, symbol: str = "EURUSD", price: float | None = None,
          account: str = "acc") -> NewOrder:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    return NewOrder(account, coid, symbol, Side.BUY, kind, qty, price, time.time_ns())


@dataclass
class Pair:
    cfg: MeshConfig
    primary: BackendNode | None
    backup: BackendNode | None
    ends: dict[Role, BackendEndpoints]
    ctx: zmq.asyncio.Context
    executed: list[Order] = field(default_factory=list)
    executor: ExecutorNode | None = None
    executor_stop: asyncio.Event | None = None  # stops the in-process executor (a restart)
    procs: dict[str, Node] = field(default_factory=dict)  # nodes run as children, by name
    on_exit: list[Callable[[], None]] = field(default_factory=list)  # before the nodes stop

    def node(self, role: Role) -> BackendNode:
        node = self.primary if role is Role.PRIMARY else self.backup
        assert node is not None
        return node

    def stat(self, name: str, key: str) -> Any:
        """A figure from the last stats file of child ``name`` ("primary", "executor"):
        rewritten every 0.5 s, so it may lag the node by that much."""
        return (self.procs[name].stats() or {}).get(key)

    async def request(self, role: Role, msg: OrderRequest, timeout: float = 2.0,
                      client: str = "") -> OrderAck | OrderReject:
        """``msg`` from a DEALER of its own, as ``client-{client or its client order id}``."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"client-{client or msg.client_order_id}".encode())
        sock.connect(self.ends[role].clients)
        try:
            await sock.send_multipart(encode_order(msg))
            async with asyncio.timeout(scaled(timeout)):
                while True:  # execution reports for this routing id may come first
                    reply = decode_order(await sock.recv_multipart())
                    if isinstance(reply, (OrderAck, OrderReject)):
                        return reply
        finally:
            sock.close(linger=0)


async def seed_tick(cfg: MeshConfig, symbol: str = "EURUSD", bid: float = 1.08,
                    ask: float = 1.0802) -> None:
    ticks = RedisTickStore(cfg.redis.url, cfg.mesh.key_prefix)
    await ticks.start_session("seed", 1, [symbol], 100)
    await ticks.write([CheckpointRun(symbol, 1, 1, [(bid, ask, 0.0, 1.0, 1, 1)])], 100)
    await ticks.close()


async def fake_executor(ctx: zmq.asyncio.Context, ends: list[str], executed: list[Order]) -> None:
    """A minimal executor peer: fills every routed market order at 1.0802, once per order, and
    answers a re-driven order with the same report; limit orders stay open (resting), so they
    count in the account's exposure. The backend's answers to its proposed fills are not
    needed: a fill that was not decided comes back as a re-drive."""
    socks = []
    for ep in ends:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, b"executor")
        s.connect(ep)
        socks.append(s)
    reports: dict[str, ExecutionReport] = {}
    poller = zmq.asyncio.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    try:
        while True:
            for s, _ in await poller.poll():
                msg = decode_order(await s.recv_multipart())
                if isinstance(msg, (ExecutionReport, EntryRefused)):
                    continue  # the backend's answer to a proposed fill
                assert isinstance(msg, Order)
                if msg.order_id in reports:  # a re-drive: not executed again, answered again
                    await s.send_multipart(encode_order(reports[msg.order_id]))
                    continue
                if any(o.order_id == msg.order_id for o in executed):
                    continue  # a resting limit order routed again
                executed.append(msg)
                o = msg.order
                if o.type is OrderType.LIMIT:
                    continue
                fill = ExecutionReport(msg.order_id, o.client_order_id, o.account, o.symbol,
                                       o.side, OrderState.FILLED, o.quantity, o.quantity,
                                       1.0802, 1.0802, msg.epoch, f"{msg.order_id}:1",
                                       time.time_ns(), seq=1)
                reports[msg.order_id] = fill
                await s.send_multipart(encode_order(fill))
    finally:
        for s in socks:
            s.close(linger=0)


ANY_PORT = "tcp://127.0.0.1:*"  # a bind on a port the kernel picks


def bound_endpoints(node: BackendNode) -> BackendEndpoints:
    """The endpoints an in-process node bound (a bind to ANY_PORT: the port it got)."""
    def bound(sock: zmq.asyncio.Socket) -> str:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return BackendEndpoints(clients=bound(node.clients), peer_pub=node.peer_pub.endpoint,
                            peer_sub=node.endpoints.peer_sub, updates=bound(node.updates),
                            executor=bound(node.executor), replica=node.endpoints.replica,
                            peer_replica=node.endpoints.peer_replica)


def child_config(cfg: MeshConfig, ends: dict[Role, BackendEndpoints],
                 fill_lots: float | None) -> MeshConfig:
    """``cfg`` with the [orders] section that gives a child backend or executor the endpoints,
    LIMITS and PAIR timings of the in-process nodes."""
    def both(name: str) -> tuple[str, str]:
        return (getattr(ends[Role.PRIMARY], name), getattr(ends[Role.BACKUP], name))
    orders = OrdersSection(
        enabled=True, symbols=tuple(sorted(LIMITS.symbols)), clients=both("clients"),
        peers=both("peer_pub"), updates=both("updates"), executor=both("executor"),
        replicas=both("replica"),
        max_quantity=LIMITS.max_quantity, price_band=LIMITS.price_band,
        max_exposure=LIMITS.max_exposure_per_account, heartbeat_ms=PAIR.heartbeat_s * 1000,
        peer_timeout_ms=PAIR.peer_timeout_s * 1000, cold_start_ms=PAIR.cold_start_s * 1000,
        **({} if fill_lots is None else {"fill_lots": fill_lots}))
    return replace(cfg, orders=orders).validate()


@contextlib.asynccontextmanager
async def pair(redis: RedisProcess, *, roles: tuple[Role, ...] = (Role.PRIMARY, Role.BACKUP),
               cut_heartbeats: bool = False, real_executor: bool = False,
               fill_lots: float | None = None, deadline_ms: int = 300,
               clock: FakeClock | None = None, children: NodeProcesses | None = None,
               child_primary: bool = False, child_executor: bool = False,
               primary_store: OrderStore | None = None, max_in_service: int | None = None,
               max_queue_ms: float | None = None, replicate: bool = True,
               orders: dict[str, Any] | None = None) -> AsyncIterator[Pair]:
    """The backend pair (and an executor: a fake one, or the real one with
    ``real_executor``), in this process except the nodes a test kills: with
    ``child_primary`` the primary and with ``child_executor`` the (real) executor run as
    processes of ``children`` (``p.procs["primary"]``, ``p.procs["executor"]``). ``clock``
    ages the in-process backends' quote caches; ``primary_store`` is the in-process
    primary's order store (a wrapper), ``max_in_service`` and ``max_queue_ms`` its admission
    bounds; ``replicate=False``: acknowledged once in Redis, as without a passive node (the
    tests that hold Redis's writes to hold the acknowledgement); ``orders``: more [orders]
    settings (e.g. the executor's bridge mode)."""
    # A short store deadline: tests of a store outage want the reject, not a 5 s ride.
    cfg = MeshConfig(mesh=MeshSection(key_prefix="bk"),
                     redis=RedisSection(url=redis.url, deadline_ms=deadline_ms))
    if max_in_service is not None:
        cfg = replace(cfg, orders=replace(cfg.orders, max_in_service=max_in_service))
    if max_queue_ms is not None:
        cfg = replace(cfg, orders=replace(cfg.orders, max_queue_ms=max_queue_ms))
    cfg = replace(cfg, orders=replace(cfg.orders, replicate=replicate, **(orders or {})))
    await seed_tick(cfg)
    # In-process nodes bind port 0 and the endpoints are read back (bound_endpoints), except
    # those that must be known before their binder exists: the heartbeat endpoint of the
    # node made second (the first connects to it when it is made) and every endpoint of a
    # child (its mesh file names them): free ports there (nodes.drills.ports, case 4).
    other = {Role.PRIMARY: Role.BACKUP, Role.BACKUP: Role.PRIMARY}
    in_process = tuple(r for r in (Role.BACKUP, Role.PRIMARY) if r in roles
                       and not (child_primary and r is Role.PRIMARY))
    if not child_primary:
        in_process = in_process[::-1]  # the primary first
    reserved = tcp()  # the peer_pub of the node made last
    # The replication links: each node binds its own and connects to the other's (a cut
    # link: to where nobody listens).
    replica = {Role.PRIMARY: tcp(), Role.BACKUP: tcp()}
    ends: dict[Role, BackendEndpoints] = {}
    nodes: dict[Role, BackendNode] = {}
    for r in in_process:
        peer = ends.get(other[r])
        want = BackendEndpoints(
            clients=ANY_PORT, updates=ANY_PORT, executor=ANY_PORT,
            peer_pub=reserved if peer is not None and not cut_heartbeats else ANY_PORT,
            # a cut link: each listens where nobody publishes
            peer_sub=tcp() if cut_heartbeats else peer.peer_pub if peer else reserved,
            replica=replica[r], peer_replica=tcp() if cut_heartbeats else replica[other[r]])
        nodes[r] = BackendNode(cfg, r, want, limits=LIMITS, pair=PAIR, redrive_s=0.2,
                               store=primary_store if r is Role.PRIMARY else None)
        ends[r] = bound_endpoints(nodes[r])
    if child_primary:
        ends[Role.PRIMARY] = BackendEndpoints(clients=tcp(), peer_pub=reserved,
                                              peer_sub=ends[Role.BACKUP].peer_pub,
                                              updates=tcp(), executor=tcp(),
                                              replica=replica[Role.PRIMARY],
                                              peer_replica=replica[Role.BACKUP])
    if clock is not None:
        for node in nodes.values():
            node._quotes = QuoteCache(node.ticks, QUOTE_TTL_S, stale_s=node._quotes.stale_s,
                                      clock=clock)
    stops = {r: asyncio.Event() for r in in_process}
    tasks = {r: asyncio.create_task(nodes[r].run(stops[r])) for r in in_process}
    ctx = zmq.asyncio.Context()
    p = Pair(cfg, nodes.get(Role.PRIMARY), nodes.get(Role.BACKUP), ends, ctx)
    if child_primary or child_executor:
        assert children is not None, "child nodes need node_processes()"
        config = children.config(child_config(cfg, ends, fill_lots), "pair")
        if child_primary:
            p.procs["primary"] = await children.start(
                "primary", ["backend", "--role", "primary"], config)
        if child_executor:
            assert real_executor, "a child executor is the real one"
            p.procs["executor"] = await children.start("executor", ["executor"], config)
    exec_ends = tuple(ends[r].executor for r in Role if r in ends)
    ex_stop = asyncio.Event()
    executors: list[asyncio.Task[Any]] = []
    if real_executor and not child_executor:
        p.executor = ExecutorNode(cfg, name="executor", backends=exec_ends, fill_lots=fill_lots)
        p.executor_stop = ex_stop
        executors.append(asyncio.create_task(p.executor.run(ex_stop)))
    elif not real_executor:
        executors.append(asyncio.create_task(fake_executor(ctx, list(exec_ends), p.executed)))
    try:
        yield p
    finally:
        for undo in p.on_exit:
            undo()
        ex_stop.set()
        if not real_executor:
            for ex in executors:
                ex.cancel()
        await asyncio.gather(*executors, return_exceptions=True)
        for r in in_process:
            stops[r].set()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        ctx.term()


async def wait_active(node: BackendNode | Node, timeout: float = 3.0) -> None:
    """Until the backend serves (a child: until its stats file says so)."""
    if isinstance(node, Node):
        await wait_until(lambda: (node.stats() or {}).get("state") == State.ACTIVE.value,
                         timeout, f"{node.name} active")
    else:
        await wait_until(lambda: node.star.serving, timeout, f"{node.role.value} active")


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def run_with_children(redis: RedisProcess, workdir: Path,
                      body: Callable[[Pair], Awaitable[None]], **kw: Any) -> None:
    """Run ``body`` on a :func:`pair` some of whose nodes are child processes (``kw``:
    ``child_primary``, ``child_executor``, and the rest of its options), each stopped and
    reaped at the end, its log printed on failure."""
    async def main() -> None:
        with node_processes(workdir) as children:
            async with pair(redis, children=children, **kw) as p:
                await body(p)
    run(main())


def test_order_is_accepted_routed_filled_and_reported(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server) as p:
            await wait_active(p.node(Role.PRIMARY))
            ack = await p.request(Role.PRIMARY, order("c1"))
            # Acknowledged once stored (a single fenced write, as ROUTED).
            assert isinstance(ack, OrderAck) and ack.state is OrderState.ROUTED
            await wait_until(lambda: p.node(Role.PRIMARY).stats.reports == 1, 3, "the fill")
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            stored = await store.get(ack.order_id)
            await store.close()
            assert stored is not None and stored.state is OrderState.FILLED
            assert [o.order_id for o in p.executed] == [ack.order_id]
    run(main())


def test_passive_backup_answers_not_active(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server) as p:
            await wait_active(p.node(Role.PRIMARY))
            await wait_until(lambda: p.node(Role.BACKUP).star.state is State.PASSIVE, 3,
                             "backup passive")
            reply = await p.request(Role.BACKUP, order("c1"))
            assert isinstance(reply, OrderReject) and reply.reason is RejectReason.NOT_ACTIVE
            assert reply.retryable
    run(main())


def test_duplicate_client_order_id_is_one_order(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server) as p:
            await wait_active(p.node(Role.PRIMARY))
            first = await p.request(Role.PRIMARY, order("c1"))
            again = await p.request(Role.PRIMARY, order("c1"))  # a retry, re-stamped
            assert isinstance(first, OrderAck) and isinstance(again, OrderAck)
            assert again.order_id == first.order_id
            conflict = await p.request(Role.PRIMARY, order("c1", qty=2.0))
            assert isinstance(conflict, OrderReject)
            assert conflict.reason is RejectReason.DUPLICATE_DIFFERENT
            await wait_until(lambda: len(p.executed) == 1, 3, "one execution")
    run(main())


def test_a_retry_gets_the_stored_order_even_after_the_market_moved(
        redis_server: RedisProcess) -> None:
    """The idempotency check rides on the fenced write; a retry that would now fail the
    pre-trade checks (the price band moved away) must still get the order it created."""
    async def main() -> None:
        clock = FakeClock()
        async with pair(redis_server, clock=clock) as p:
            await wait_active(p.node(Role.PRIMARY))
            first = await p.request(Role.PRIMARY, order("lim", price=1.0750))
            assert isinstance(first, OrderAck)
            await seed_tick(p.cfg, bid=2.0, ask=2.0002)  # 1.0750 is far outside the band now
            clock.advance(2 * QUOTE_TTL_S)  # past the backend's quote cache
            fresh = await p.request(Role.PRIMARY, order("other", price=1.0750))
            assert isinstance(fresh, OrderReject) and fresh.reason is RejectReason.PRICE_BAND
            again = await p.request(Role.PRIMARY, order("lim", price=1.0750))
            assert isinstance(again, OrderAck) and again.order_id == first.order_id
            conflict = await p.request(Role.PRIMARY, order("lim", price=1.0760))
            assert isinstance(conflict, OrderReject)
            assert conflict.reason is RejectReason.DUPLICATE_DIFFERENT
    run(main())


@pytest.mark.parametrize(("msg", "reason"), [
    (order("u1", symbol="XAGUSD"), RejectReason.UNKNOWN_SYMBOL),
    (order("q1", qty=101.0), RejectReason.QUANTITY_LIMIT),
    (order("p1", price=1.5), RejectReason.PRICE_BAND),
    (order("n1", symbol="GBPUSD"), RejectReason.PRICE_BAND),  # no market data for GBPUSD
    (order("e1", qty=99.0, price=1.08, account="big"), None),
], ids=["unknown_symbol", "quantity_limit", "price_band", "no_market_data", "within_limits"])
def test_rejection_reasons(redis_server: RedisProcess, msg: NewOrder,
                           reason: RejectReason | None) -> None:
    async def main() -> None:
        async with pair(redis_server) as p:
            await wait_active(p.node(Role.PRIMARY))
            reply = await p.request(Role.PRIMARY, msg)
            if reason is None:
                assert isinstance(reply, OrderAck)
            else:
                assert isinstance(reply, OrderReject) and reply.reason is reason
    run(main())


def test_exposure_limit_counts_open_orders(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server) as p:
            await wait_active(p.node(Role.PRIMARY))
            # Resting limit orders of 90 x 1.08 = 97.2 each: ten fit under 1,000, not eleven.
            for i in range(10):
                ok = await p.request(Role.PRIMARY, order(f"e{i}", qty=90.0, price=1.08))
                assert isinstance(ok, OrderAck), ok
            over = await p.request(Role.PRIMARY, order("e10", qty=90.0, price=1.08))
            assert isinstance(over, OrderReject) and over.reason is RejectReason.EXPOSURE_LIMIT
            other = await p.request(Role.PRIMARY, order("o1", qty=90.0, price=1.08,
                                                        account="other"))
            assert isinstance(other, OrderAck)  # the limit is per account
    run(main())


def test_concurrent_orders_of_one_account_cannot_share_its_headroom(
        redis_server: RedisProcess) -> None:
    """New orders of one account are stored concurrently (no per-account queue); the exposure
    check reserves before the store write, so fifteen orders at once still fit ten."""
    from bus.orders.client import OrderClient, OrderClientOptions
    from protocols.errors import OrderRejected

    async def main() -> None:
        async with pair(redis_server) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            opts = OrderClientOptions(endpoints=(p.ends[Role.PRIMARY].clients,))
            async with OrderClient(opts) as client:
                results = await asyncio.gather(
                    *(client.place(order(f"c{i}", qty=90.0, price=1.08)) for i in range(15)),
                    return_exceptions=True)
            acked = [r for r in results if isinstance(r, OrderAck)]
            refused = [r for r in results if isinstance(r, OrderRejected)]
            assert len(acked) == 10, results
            assert len(refused) == 5
            assert {r.reason for r in refused} == {RejectReason.EXPOSURE_LIMIT}
            assert primary.service.reserved() == 0  # every reservation released
            assert primary.service.exposure("acc") == pytest.approx(10 * 90 * 1.08)
    run(main())


class HeldStore(RedisOrderStore):
    """A fault wrapper: counts the batched writes of new orders (their sizes) and holds each
    while ``gate`` is closed (open at first); the records of reports pass."""

    def __init__(self, url: str, key_prefix: str) -> None:
        super().__init__(url, key_prefix)
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.waiting = 0

    async def write_batch(self, orders: Sequence[Order], epoch: int,
                          entries: Sequence[ExecutionReport] = ()) -> list[WriteOutcome]:
        if entries:  # decisions of the executor
            return await super().write_batch(orders, epoch, entries)
        self.batches.append(len(orders))
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().write_batch(orders, epoch)


def test_a_batch_of_mixed_orders_is_answered_per_order_in_one_store_call(
        redis_server: RedisProcess) -> None:
    """The new orders read in one wake-up (here: queued while the store holds the batch
    before them) are checked one by one and stored in one script call; each is answered on
    its own: refused by its checks, a retry of a stored order, a reused client order id,
    stored."""
    async def main() -> None:
        store = HeldStore(redis_server.url, "bk")
        # No time bound: the orders queue behind the held batch however slowly they come.
        async with pair(redis_server, primary_store=store, max_queue_ms=60_000.0,
                        replicate=False) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            stored = await p.request(Role.PRIMARY, order("stored"))
            assert isinstance(stored, OrderAck)
            store.gate.clear()
            p.on_exit.append(store.gate.set)  # a failing test does not leave writes held
            first = asyncio.create_task(p.request(Role.PRIMARY, order("first"), timeout=10))
            await wait_until(lambda: store.waiting == 1, 3, "the first batch at the store")
            mixed = [order("unknown", symbol="XAGUSD"), order("over", qty=101.0),
                     order("stored"), order("stored", qty=2.0), order("valid")]
            replies = [asyncio.create_task(p.request(Role.PRIMARY, m, timeout=10,
                                                     client=f"mixed-{i}"))
                       for i, m in enumerate(mixed)]
            await wait_until(lambda: len(primary._placing) == len(mixed), 3, "all queued")
            calls = len(store.batches)
            store.gate.set()
            assert isinstance(await first, OrderAck)
            unknown, over, retry, reused, valid = await asyncio.gather(*replies)
            # One script call for the three orders that passed their checks.
            assert store.batches[calls:] == [3], store.batches
            assert isinstance(unknown, OrderReject)
            assert unknown.reason is RejectReason.UNKNOWN_SYMBOL
            assert isinstance(over, OrderReject) and over.reason is RejectReason.QUANTITY_LIMIT
            assert isinstance(retry, OrderAck) and retry.order_id == stored.order_id
            assert isinstance(reused, OrderReject)
            assert reused.reason is RejectReason.DUPLICATE_DIFFERENT
            assert isinstance(valid, OrderAck) and valid.state is OrderState.ROUTED
            assert len({stored.order_id, valid.order_id}) == 2
            reader = RedisOrderStore(p.cfg.redis.url, "bk")
            try:
                assert await reader.by_client_id("acc", "unknown") is None
                assert await reader.by_client_id("acc", "over") is None
                kept = await reader.by_client_id("acc", "stored")
                assert kept is not None and kept.order_id == stored.order_id
                assert kept.quantity == 1.0  # the reuse wrote nothing
            finally:
                await reader.close()
            assert primary.service.reserved() == 0 and primary.service.in_service() == 0
            await wait_until(lambda: len(p.executed) == 3, 3, "three orders routed")
    run(main())


class LostReplyStore(RedisOrderStore):
    """A fault wrapper: the first write of decided entries runs in Redis and its reply is lost
    (a master that failed over after running it, past the ride-through deadline)."""

    def __init__(self, url: str, key_prefix: str) -> None:
        super().__init__(url, key_prefix)
        self.lost = 0

    async def write_batch(self, orders: Sequence[Order], epoch: int,
                          entries: Sequence[ExecutionReport] = ()) -> list[WriteOutcome]:
        got = await super().write_batch(orders, epoch, entries)
        if entries and not self.lost:
            self.lost += 1
            raise StoreUnavailable("the reply was lost")
        return got


def test_a_decided_fill_whose_write_reply_was_lost_is_applied_once(
        redis_server: RedisProcess) -> None:
    """Redis ran the write of a fill but the backend never heard (acknowledged in Redis,
    replicate = false): the executor is told STORE, proposes the fill again at its re-drive,
    and the backend reads the order from Redis before judging it: the fill that is there is
    applied, relayed once and answered; the log holds it once."""
    async def main() -> None:
        store = LostReplyStore(redis_server.url, "bk")
        async with pair(redis_server, primary_store=store, replicate=False) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            ack = await p.request(Role.PRIMARY, order("lost-reply"))
            assert isinstance(ack, OrderAck)
            await wait_until(lambda: primary.orders.get(ack.order_id) is None, 5,
                             "the fill applied after the re-drive")
            assert store.lost == 1 and primary.stats.entries_refused >= 1
            assert primary.stats.entries_taken >= 1
            reader = RedisOrderStore(p.cfg.redis.url, "bk")
            try:
                assert [e.seq for e in await reader.executions(ack.order_id)] == [1]
                stored = await reader.get(ack.order_id)
                assert stored is not None and stored.state is OrderState.FILLED
            finally:
                await reader.close()
    run(main())


QUEUE_BUDGET_MS = 50.0  # the time bound's test: long enough to see a request admitted first


@pytest.mark.parametrize("bound", ["count", "time"])
def test_busy_at_the_admission_bound_and_everything_acknowledged_once_after(
        redis_server: RedisProcess, bound: str) -> None:
    """With the store holding the writes, one more new order is refused at once with BUSY and
    a retry-after hint, by the count bound (max_in_service requests held; the time bound far
    away) or by the time bound (one order held past max_queue_ms; the count bound far away,
    and the hint at least that wait); a retry of a held one joins it; the passive still says
    NOT_ACTIVE, and nobody takes over. Once the store lets go, every held order is
    acknowledged once, and the refused one is served when it comes back."""
    held_n, limits = {"count": (4, dict(max_in_service=4, max_queue_ms=60_000.0)),
                      "time": (1, dict(max_in_service=100, max_queue_ms=QUEUE_BUDGET_MS))}[bound]

    async def main() -> None:
        store = HeldStore(redis_server.url, "bk")
        async with pair(redis_server, primary_store=store, replicate=False, **limits) as p:
            primary, backup = p.node(Role.PRIMARY), p.node(Role.BACKUP)
            await wait_active(primary)
            await wait_until(lambda: backup.star.state is State.PASSIVE, 3, "backup passive")
            store.gate.clear()
            p.on_exit.append(store.gate.set)
            held = [asyncio.create_task(p.request(Role.PRIMARY, order(f"h{i}"), timeout=10))
                    for i in range(held_n)]
            await wait_until(lambda: primary.service.in_service() == held_n, 3, "all held")
            if bound == "time":
                await wait_until(lambda: primary.service.waited(time.monotonic())
                                 > QUEUE_BUDGET_MS / 1000, 3, "the held order past the budget")
            began = time.monotonic()
            busy = await p.request(Role.PRIMARY, order("one-more"))
            took = time.monotonic() - began
            assert isinstance(busy, OrderReject) and busy.reason is RejectReason.BUSY, busy
            assert busy.retryable and busy.client_order_id == "one-more"
            assert 1 <= busy.retry_after_ms <= 1000
            if bound == "time":
                assert "waiting" in busy.message and busy.retry_after_ms > QUEUE_BUDGET_MS
            else:
                assert "requests in service" in busy.message
            if bound == "count":
                assert took < scaled(0.05), took  # at once, not after the held ones
            assert primary.stats.busy == 1 and primary.service.in_service() == held_n
            # A client's retry of a held order (another socket, same request): joined.
            retry = asyncio.create_task(p.request(Role.PRIMARY, order("h0"), timeout=10,
                                                  client="retrier"))
            await wait_until(lambda: primary.stats.joined == 1, 3, "the retry joined")
            passive = await p.request(Role.BACKUP, order("elsewhere"))
            assert isinstance(passive, OrderReject)
            assert passive.reason is RejectReason.NOT_ACTIVE  # never BUSY from the passive
            await asyncio.sleep(scaled(3 * PAIR.peer_timeout_s))  # a failover's worth
            assert primary.star.serving and backup.star.state is State.PASSIVE
            assert backup.stats.takeovers == 0 and primary.stats.busy == 1
            store.gate.set()
            acks = await asyncio.gather(*held)
            assert all(isinstance(a, OrderAck) for a in acks), acks
            again = await retry
            assert isinstance(again, OrderAck) and again.order_id == acks[0].order_id
            assert len({a.order_id for a in acks if isinstance(a, OrderAck)}) == held_n
            await wait_until(lambda: len(p.executed) == held_n, 3, "each routed once")
            assert sorted(o.order.client_order_id for o in p.executed) == \
                [f"h{i}" for i in range(held_n)]
            assert primary.service.in_service() == 0
            # Room again; the refused order was not stored: coming back, it is served.
            later = await p.request(Role.PRIMARY, order("one-more"))
            assert isinstance(later, OrderAck), later
            assert later.order_id not in {a.order_id for a in acks if isinstance(a, OrderAck)}
    run(main())


def test_malformed_frames_get_an_error_reply(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server) as p:
            await wait_active(p.node(Role.PRIMARY))
            sock = p.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(p.ends[Role.PRIMARY].clients)
            await sock.send_multipart([b"TM\x01\x20", b"\xc1"])
            async with asyncio.timeout(scaled(2)):
                reply = decode_order(await sock.recv_multipart())
            sock.close(linger=0)
            assert isinstance(reply, OrderReject) and reply.reason is RejectReason.MALFORMED
            assert isinstance(await p.request(Role.PRIMARY, order("ok")), OrderAck)
            assert p.node(Role.PRIMARY).stats.malformed == 1
    run(main())


def test_backup_takes_over_when_the_primary_dies(redis_server: RedisProcess,
                                                 tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        primary, backup = p.procs["primary"], p.node(Role.BACKUP)
        await wait_active(primary)
        assert isinstance(await p.request(Role.PRIMARY, order("c1")), OrderAck)
        primary.kill()  # SIGKILL: no more heartbeats, no answers
        replies: list[OrderAck | OrderReject] = []

        async def acked() -> bool:  # the client's retry loop
            replies.append(await p.request(Role.BACKUP, order("c2")))
            return isinstance(replies[-1], OrderAck)
        await wait_until(acked, 3, "the backup's ack")
        assert backup.star.serving and backup.star.epoch == 2
        assert backup.stats.takeovers == 1
        # The takeover read the last tick of every symbol, not only of the order's (EURUSD):
        # the first batch after a takeover finds them cached.
        await wait_until(lambda: "GBPUSD" in backup._quotes._read, 2, "GBPUSD's quote read")
        # The order placed before the failover is still known (idempotent retry).
        again = await p.request(Role.BACKUP, order("c1"))
        assert isinstance(again, OrderAck)
    run_with_children(redis_server, tmp_path, body, child_primary=True)


def test_cut_heartbeat_link_leaves_at_most_one_writer(redis_server: RedisProcess) -> None:
    """Both nodes can be asked by clients and neither hears the other: each may believe it is
    active, but the store takes writes only under the newest epoch."""
    async def main() -> None:
        async with pair(redis_server, cut_heartbeats=True) as p:
            primary, backup = p.node(Role.PRIMARY), p.node(Role.BACKUP)
            # Cold start on both sides: clients' requests make each take over in turn.
            for role, node, prefix in ((Role.PRIMARY, primary, "a"), (Role.BACKUP, backup, "b")):
                async def serving(role: Role = role, node: BackendNode = node,
                                  prefix: str = prefix) -> bool:
                    if node.star.serving:
                        return True
                    await p.request(role, order(f"{prefix}{time.monotonic_ns()}"))
                    return False
                await wait_until(serving, 3, f"{role.value} serving on a client's request")
            assert backup.star.epoch > primary.star.epoch  # both think they are active
            stale = await p.request(Role.PRIMARY, order("stale"))
            assert isinstance(stale, OrderReject) and stale.reason is RejectReason.FENCED
            assert not primary.star.serving and primary.stats.fenced == 1
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            assert await store.by_client_id("acc", "stale") is None
            assert await store.current_epoch() == backup.star.epoch
            await store.close()
            fresh = await p.request(Role.BACKUP, order("fresh"))
            assert isinstance(fresh, OrderAck)
    run(main())


def test_lone_backup_serves_after_the_cold_start_wait(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server, roles=(Role.BACKUP,)) as p:
            backup = p.node(Role.BACKUP)
            first = await p.request(Role.BACKUP, order("c0"))
            assert isinstance(first, OrderReject) and first.reason is RejectReason.NOT_ACTIVE
            await asyncio.sleep(scaled(PAIR.cold_start_s))  # the documented wait itself
            reply = await p.request(Role.BACKUP, order("c1"))
            assert isinstance(reply, OrderAck) and backup.star.epoch == 1
    run(main())


def test_cli_pair_fails_over_when_the_primary_is_killed(redis_server: RedisProcess,
                                                        tmp_path: Path) -> None:
    """Both nodes as real processes (the CLI); SIGKILL the active one; the client's retry
    on the other gets its order accepted, and the earlier order is still known."""
    # The children bind what their mesh file names: free ports (nodes.drills.ports, case 4).
    eps = {name: (tcp(), tcp())
           for name in ("clients", "peers", "updates", "executor", "replicas")}
    cfg = MeshConfig(mesh=MeshSection(key_prefix="bk"), redis=RedisSection(url=redis_server.url),
                     orders=OrdersSection(enabled=True, symbols=("EURUSD",), **eps)).validate()
    ends = {Role.PRIMARY: BackendEndpoints(eps["clients"][0], "", "", "", ""),
            Role.BACKUP: BackendEndpoints(eps["clients"][1], "", "", "", "")}

    async def main() -> None:
        await seed_tick(cfg)
        p = Pair(cfg, None, None, ends, zmq.asyncio.Context())
        try:
            with node_processes(tmp_path) as children:
                toml = children.config(cfg)
                procs = {role: await children.start(role, ["backend", "--role", role], toml)
                         for role in ("primary", "backup")}

                async def until_ack(role: Role, coid: str, limit: float) -> OrderAck:
                    async def acked() -> OrderAck | None:
                        # What the order client does: retry on silence or "retryable".
                        try:
                            reply = await p.request(role, order(coid), timeout=0.2)
                        except TimeoutError:
                            return None  # the process is still starting, or just died
                        if isinstance(reply, OrderAck):
                            return reply
                        assert reply.retryable, reply
                        return None
                    return await wait_until(acked, limit, f"an ack for {coid}", interval=0.01)
                first = await until_ack(Role.PRIMARY, "c1", 10)
                procs["primary"].kill()
                second = await until_ack(Role.BACKUP, "c2", 5)
                assert second.epoch > first.epoch
                again = await until_ack(Role.BACKUP, "c1", 2)
                assert again.order_id == first.order_id  # a retry, not a second order
        finally:
            p.ctx.term()
    run(main())


def _thread_nices(pid: int) -> list[int]:
    """The nice value of every thread of process ``pid`` (field 19 of its stat lines)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            out.append(int(stat.read().rsplit(")", 1)[1].split()[16]))
    return out


@pytest.mark.skipif(not renice_permitted(os.getpriority(os.PRIO_PROCESS, 0)),
                    reason="needs CAP_SYS_NICE or an RLIMIT_NICE that allows it")
def test_cli_backends_start_at_the_lowest_priority_and_leave_it_once_in_the_pair(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    """A starting backend yields the CPU (a restarted one competes with its peer's takeover)
    and is back at the normal priority, every thread of it, once active or passive."""
    eps = {name: (tcp(), tcp())
           for name in ("clients", "peers", "updates", "executor", "replicas")}
    cfg = MeshConfig(mesh=MeshSection(key_prefix="bk"), redis=RedisSection(url=redis_server.url),
                     orders=OrdersSection(enabled=True, symbols=("EURUSD",), **eps)).validate()
    normal = os.getpriority(os.PRIO_PROCESS, 0)

    async def main() -> None:
        await seed_tick(cfg)
        with node_processes(tmp_path) as children:
            toml = children.config(cfg)
            procs = [await children.start(role, ["backend", "--role", role], toml)
                     for role in ("primary", "backup")]
            await wait_until(lambda: sorted((n.stats() or {}).get("state", "") for n in procs)
                             == ["active", "passive"], 10, "one active, one passive")
            for node in procs:
                assert _thread_nices(node.pid) == [normal] * len(_thread_nices(node.pid))
                assert "start-up over: back to nice" in node.log_path.read_text()
    run(main())


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("side", 3, RejectReason.BAD_SIDE),
    ("quantity", -1.0, RejectReason.BAD_QUANTITY),
    ("price", -2.0, RejectReason.BAD_PRICE),
], ids=["bad_side", "bad_quantity", "bad_price"])
def test_invalid_fields_get_their_reject_reason(redis_server: RedisProcess, field: str,
                                                value: object, reason: RejectReason) -> None:
    import msgpack

    async def main() -> None:
        async with pair(redis_server) as p:
            await wait_active(p.node(Role.PRIMARY))
            header, body = encode_order(order("bad", price=1.08))
            fields = msgpack.unpackb(body)
            fields[field] = value
            sock = p.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(p.ends[Role.PRIMARY].clients)
            await sock.send_multipart([header, msgpack.packb(fields)])
            async with asyncio.timeout(scaled(2)):
                reply = decode_order(await sock.recv_multipart())
            sock.close(linger=0)
            assert isinstance(reply, OrderReject) and reply.reason is reason
            assert reply.client_order_id == "bad"
    run(main())


def test_store_unavailable_is_a_retryable_reject(redis_server: RedisProcess) -> None:
    """Acknowledged in Redis (replicate = false, or no passive node): with the store away past
    its deadline an order is refused, retryable. (Replicated, the pair acknowledges it:
    test_e2e's store-away test.)"""
    async def main() -> None:
        async with pair(redis_server, replicate=False) as p:
            await wait_active(p.node(Role.PRIMARY))
            # The store goes away (a clean stop keeps its AOF, so the seeded tick survives).
            redis_server.stop()
            reply = await p.request(Role.PRIMARY, order("c1"), timeout=5)
            assert isinstance(reply, OrderReject)
            assert reply.reason is RejectReason.STORE_UNAVAILABLE and reply.retryable
            redis_server.restart()
            again = await p.request(Role.PRIMARY, order("c1"), timeout=5)
            assert isinstance(again, OrderAck)
    run(main())


def test_operator_handover_moves_the_active_role(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server) as p:
            primary, backup = p.node(Role.PRIMARY), p.node(Role.BACKUP)
            await wait_active(primary)
            await wait_until(lambda: backup.star.state is State.PASSIVE, 3, "backup passive")
            await primary.handover()
            assert not primary.star.serving
            await wait_active(backup)
            assert backup.star.epoch >= 2  # it won a new epoch; the old active cannot write
            reply = await p.request(Role.BACKUP, order("after-handover"))
            assert isinstance(reply, OrderAck)
            # The primary does not take the role back by itself.
            await asyncio.sleep(scaled(PAIR.holdoff_s + 0.2))
            assert backup.star.serving and not primary.star.serving
    run(main())


class ReloadFailsOnce(RedisOrderStore):
    """A fault wrapper: the first read of the open orders fails as if Redis were away."""

    failed = False

    async def open_orders(self) -> list[Order]:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("injected: redis unreachable during the takeover")
        return await super().open_orders()


def test_takeover_retries_the_reload_of_open_orders(redis_server: RedisProcess) -> None:
    async def main() -> None:
        cfg = MeshConfig(mesh=MeshSection(key_prefix="bk"),
                         redis=RedisSection(url=redis_server.url))
        await seed_tick(cfg)
        # An order routed under epoch 1 by a backend that then died.
        seed = RedisOrderStore(cfg.redis.url, "bk")
        _, epoch = await seed.acquire_epoch(0)
        o = Order.from_new("O1.1", order("left"), epoch=epoch, now_ns=1)
        for state in (OrderState.ACCEPTED, OrderState.ROUTED):
            o = o.apply(o.status_report(state, exec_id=state.name, epoch=epoch), epoch=epoch,
                        now_ns=2)
        await seed.write(o, epoch)
        await seed.close()
        alone = BackendEndpoints(clients=ANY_PORT, peer_pub=ANY_PORT, peer_sub=tcp(),
                                 updates=ANY_PORT, executor=ANY_PORT)  # no peer publishes
        node = BackendNode(cfg, Role.BACKUP, alone, limits=LIMITS, pair=PAIR, redrive_s=0.1,
                           store=ReloadFailsOnce(cfg.redis.url, "bk"))
        ends = bound_endpoints(node)
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        ctx = zmq.asyncio.Context()
        executed: list[Order] = []
        ex = asyncio.create_task(fake_executor(ctx, [ends.executor], executed))
        p = Pair(cfg, None, node, {Role.BACKUP: ends}, ctx)
        try:
            await asyncio.sleep(scaled(PAIR.cold_start_s))  # alone: the cold-start wait
            await p.request(Role.BACKUP, order("first"))  # the client vote: it takes over
            assert node.star.serving
            assert isinstance(node.store, ReloadFailsOnce) and node.store.failed  # it happened
            await wait_until(lambda: any(x.order_id == "O1.1" for x in executed), 5,
                             "the order left behind re-driven once the reload works")
            assert not node._reload_pending
        finally:
            ex.cancel()
            await asyncio.gather(ex, return_exceptions=True)
            stop.set()
            await task
            ctx.term()
    run(main())


def test_a_client_waits_out_a_store_outage_without_resending(
        redis_server: RedisProcess) -> None:
    """Acknowledged in Redis (no replication), the active backend holds an order while the
    store is away and says so every 25 ms (OrderPending): the client sends it once, waits, and
    gets the ack once the store is back, with no retry and no request to the passive (no
    client vote against a live active)."""
    from bus.orders.client import OrderClient, OrderClientOptions

    async def main() -> None:
        async with pair(redis_server, deadline_ms=10_000, replicate=False) as p:
            primary, backup = p.node(Role.PRIMARY), p.node(Role.BACKUP)
            await wait_active(primary)
            # A first timeout of 200 ms: the first notice (20-45 ms) lands inside it even on a
            # loaded test machine; after that the notices alone keep the client waiting.
            opts = OrderClientOptions(endpoints=(p.ends[Role.PRIMARY].clients,
                                                 p.ends[Role.BACKUP].clients),
                                      request_timeout_s=0.2)
            async with OrderClient(opts) as client:
                await client.place(order("warm"))  # connected
                before = client.stats()
                await asyncio.to_thread(redis_server.stop)
                placing = asyncio.create_task(client.place(order("held")))
                await asyncio.sleep(scaled(1.0))  # twenty client timeouts' worth
                await asyncio.to_thread(redis_server.start)
                ack = await placing
                s = {k: v - before.get(k, 0) for k, v in client.stats().items()}
            assert isinstance(ack, OrderAck)
            assert s["retries"] == 0 and s["timeouts"] == 0, s
            assert s["pending_notices"] >= 10 and s["held"] >= 1, s
            assert backup.stats.requests == 0
    run(main())


def test_retries_of_a_held_order_join_it_and_get_one_answer(
        redis_server: RedisProcess) -> None:
    """While the store is away an order is held (acknowledged in Redis: with replication it
    would not wait); the client's retries of it (same routing id, same request) join the one
    in service instead of queueing tasks of their own."""
    async def main() -> None:
        async with pair(redis_server, deadline_ms=10_000, replicate=False) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            sock = p.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, b"retrier")
            sock.connect(p.ends[Role.PRIMARY].clients)
            try:
                await asyncio.to_thread(redis_server.stop)
                msg = order("held")
                for _ in range(5):
                    await sock.send_multipart(encode_order(msg))
                await wait_until(lambda: primary.stats.joined == 4, 3, "four retries joined")
                await asyncio.to_thread(redis_server.start)
                notices = 0
                async with asyncio.timeout(scaled(5)):
                    reply = decode_order(await sock.recv_multipart())
                    while isinstance(reply, OrderPending):  # "in service": before the answer
                        notices += 1
                        reply = decode_order(await sock.recv_multipart())
                assert isinstance(reply, OrderAck)  # notices only if it was held 20 ms+
                while await sock.poll(int(scaled(0.2) * 1000)):  # reports may follow
                    extra = decode_order(await sock.recv_multipart())
                    assert isinstance(extra, ExecutionReport | OrderPending), \
                        "one answer, not five"
                assert primary.stats.requests == 5 and primary.stats.acks == 1
            finally:
                sock.close(linger=0)
    run(main())


def test_requests_in_service_when_the_node_steps_down_keep_their_dispatch_epoch(
        redis_server: RedisProcess) -> None:
    """Orders in service (held in their store write) when the node loses the active role are
    decided by the store under the epoch they were taken with, never one the node learnt
    since (that would write past fencing); a request that arrives after is NOT_ACTIVE."""
    async def main() -> None:
        # No time bound: the second order queues behind the held first however late it comes.
        # Written to Redis before the ack (replicate=False): held in that write. (With the
        # pair store a write waits in the term's backlog, and a step-down ends the term: its
        # unacknowledged batches are answered FENCED, retryable, never written under it.)
        async with pair(redis_server, deadline_ms=10_000, max_queue_ms=60_000.0,
                        replicate=False) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            taken_at = primary.star.epoch
            await asyncio.to_thread(redis_server.stop)
            held = [asyncio.create_task(p.request(Role.PRIMARY, order(f"a{i}"), timeout=10))
                    for i in range(2)]
            await wait_until(lambda: primary.stats.requests == 2, 3, "two requests")
            # The pair moves on: the primary learns of a newer epoch and steps down.
            await primary._effects(primary.star.on_fenced(taken_at + 1, time.monotonic()))
            assert not primary.star.serving
            late = await p.request(Role.PRIMARY, order("a2"), timeout=10)
            assert isinstance(late, OrderReject) and late.reason is RejectReason.NOT_ACTIVE
            await asyncio.to_thread(redis_server.start)
            for reply in await asyncio.gather(*held):
                # The store still holds epoch taken_at (only the node heard of a newer one):
                # it takes the writes, under that epoch.
                assert isinstance(reply, OrderAck), reply
                assert reply.epoch == taken_at and reply.order_id.startswith(f"O{taken_at}.")
    run(main())


def test_one_routing_id_on_a_dealer_per_backend_reaches_the_pair_and_its_reports(
        redis_server: RedisProcess) -> None:
    """PROTOCOL.md §14, "Reaching both backends": a client connects one DEALER to each
    backend's "clients" endpoint, both with the same ROUTING_ID. The passive one refuses
    (NOT_ACTIVE), the active one acknowledges, and the order's reports come back on the socket
    of that routing id (stored as the order's ``client_id``); frontends read the same reports
    on "updates" as ``[account + NUL, header, body]``."""
    async def main() -> None:
        async with pair(redis_server) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            socks: dict[Role, zmq.asyncio.Socket] = {}
            for role in Role:
                socks[role] = p.ctx.socket(zmq.DEALER)
                socks[role].setsockopt(zmq.LINGER, 0)
                socks[role].setsockopt(zmq.ROUTING_ID, b"trader-1")
                socks[role].connect(p.ends[role].clients)
            sub = p.ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"acc\x00")  # the NUL: "acc" is not "acc2"
            sub.connect(p.ends[Role.PRIMARY].updates)
            try:
                await socks[Role.BACKUP].send_multipart(encode_order(order("t0")))
                async with asyncio.timeout(scaled(2.0)):
                    refused = decode_order(await socks[Role.BACKUP].recv_multipart())
                assert isinstance(refused, OrderReject)
                assert refused.reason is RejectReason.NOT_ACTIVE and refused.retryable
                published: list[bytes] = []
                for i in range(1, 50):  # a SUB misses what is published before it joined
                    await socks[Role.PRIMARY].send_multipart(encode_order(order(f"t{i}")))
                    ack: OrderAck | None = None
                    report: ExecutionReport | None = None
                    async with asyncio.timeout(scaled(2.0)):
                        while ack is None or report is None:
                            msg = decode_order(await socks[Role.PRIMARY].recv_multipart())
                            if isinstance(msg, OrderAck):
                                ack = msg
                            elif isinstance(msg, ExecutionReport):
                                report = msg
                    assert ack.client_order_id == f"t{i}" and report.order_id == ack.order_id
                    assert report.state is OrderState.FILLED
                    if await sub.poll(scaled(100)):
                        published = await sub.recv_multipart()
                        break
                assert len(published) == 3 and published[0] == b"acc\x00"
                update = decode_order(published[1:])
                assert isinstance(update, ExecutionReport) and update.account == "acc"
                store = RedisOrderStore(p.cfg.redis.url, "bk")
                stored = await store.get(update.order_id)
                await store.close()
                assert stored is not None and stored.client_id == "trader-1"
            finally:
                for s in (*socks.values(), sub):
                    s.close(linger=0)
    run(main())


def test_memory_follows_the_open_orders(redis_server: RedisProcess) -> None:
    """A backend keeps per-order records and per-account and per-order locks only while they
    are needed: once every order is done, none is left (before, the route of every order ever
    placed and a lock per account ever seen stayed for the life of the process)."""
    async def main() -> None:
        async with pair(redis_server) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            replies = await asyncio.gather(
                *(p.request(Role.PRIMARY, order(f"m{i}", account=f"a{i % 7}"))
                  for i in range(40)))
            assert all(isinstance(r, OrderAck) for r in replies), replies
            await wait_until(lambda: primary.stats.reports == 40, 5, "every fill")
            cancel = await p.request(Role.PRIMARY, CancelOrder("a0", "x0", "m0"))
            assert isinstance(cancel, OrderReject)
            assert cancel.reason is RejectReason.NOT_CANCELLABLE  # filled already
            # The records go once each write of the order's end is in the store (written
            # behind): wait for all of it, not for the first part to go.
            await wait_until(lambda: len(primary.service) == 0 and len(primary.orders) == 0
                             and primary.service.in_service() == 0
                             and len(primary._account_locks) == 0, 5, "records dropped")
            assert primary.collect()["records"] == 0
    run(main())


def test_a_proposed_fill_whose_write_is_fenced_steps_the_node_down_and_is_not_decided(
        redis_server: RedisProcess) -> None:
    """The epoch moved on behind the active node's back (acknowledged in Redis, replicate =
    false): the write of a decided fill is fenced, nothing of it is stored, the node steps
    down, and the executor is told NOT_ACTIVE (it asks the other backend next)."""
    async def main() -> None:
        async with pair(redis_server, replicate=False) as p:
            primary = p.node(Role.PRIMARY)
            await wait_active(primary)
            ack = await p.request(Role.PRIMARY, order("fenced", price=1.08))  # rests
            assert isinstance(ack, OrderAck)
            await wait_until(lambda: len(p.executed) == 1, 3, "the order routed")
            record = primary.orders.get(ack.order_id)
            assert record is not None
            reader = RedisOrderStore(p.cfg.redis.url, "bk")
            executor = p.ctx.socket(zmq.DEALER)  # the executor's routing id: takes its place
            executor.setsockopt(zmq.LINGER, 0)
            executor.setsockopt(zmq.ROUTING_ID, b"executor")
            executor.connect(p.ends[Role.PRIMARY].executor)
            try:
                current = await reader.current_epoch()
                assert await reader.acquire_epoch(current) == (True, current + 1)
                fill = record.fill_report(1.0, 1.08, seq=1, exec_id=f"{ack.order_id}:1")
                await executor.send_multipart(encode_order(fill))
                async with asyncio.timeout(scaled(3)):
                    answer = decode_order(await executor.recv_multipart())
                assert answer == EntryRefused(ack.order_id, 1, EntryRefusal.NOT_ACTIVE)
                assert not primary.star.serving and primary.stats.fenced >= 1
                assert await reader.executions(ack.order_id) == []
                stored = await reader.get(ack.order_id)
                assert stored is not None and stored.exec_seq == 0
            finally:
                executor.close(linger=0)
                await reader.close()
    run(main())
