"""Order client -> backend pair -> executor, with the active backend dying mid-stream.

Every order must be acknowledged once under one order id, executed exactly once, and end
FILLED in the store: nothing lost, nothing executed twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bus.orders.client import OrderClient, OrderClientOptions
from bus.store.orders import RedisOrderStore
from nodes.servers.redis_server import RedisProcess
from protocols.orders.binary_star import Role
from protocols.orders.lifecycle import OrderState
from protocols.orders.record import Order
from tests.nodes.orders.test_backend import (
    Pair,
    order,
    pair,
    run,
    run_with_children,
    wait_active,
)
from tests.support import scaled, wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]


async def executed_entries(p: Pair, order_ids: list[str]) -> int:
    """How many fills the execution logs of ``order_ids`` hold, in all."""
    store = RedisOrderStore(p.cfg.redis.url, "bk")
    try:
        return sum([len(await store.executions(order_id)) for order_id in order_ids])
    finally:
        await store.close()


def both_backends(p: Pair) -> OrderClientOptions:
    """Client options that know both backends of the pair, primary first."""
    return OrderClientOptions(endpoints=(p.ends[Role.PRIMARY].clients,
                                         p.ends[Role.BACKUP].clients))


async def wait_filled(store: RedisOrderStore, order_id: str, timeout: float) -> Order:
    """The order's record once it is FILLED."""
    async def filled() -> Order | None:
        stored = await store.get(order_id)
        return stored if stored is not None and stored.state is OrderState.FILLED else None
    return await wait_until(filled, timeout, f"{order_id} FILLED", interval=0.05)


async def wait_all_filled(store: RedisOrderStore, order_ids: list[str], timeout: float,
                          what: str) -> None:
    async def filled() -> bool:
        got = [await store.get(order_id) for order_id in order_ids]
        return all(o is not None and o.state is OrderState.FILLED for o in got)
    await wait_until(filled, timeout, what, interval=0.05)


def test_orders_survive_the_death_of_the_active_backend(redis_server: RedisProcess,
                                                        tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        primary = p.procs["primary"]
        await wait_active(primary)
        opts = OrderClientOptions(endpoints=(p.ends[Role.PRIMARY].clients,
                                             p.ends[Role.BACKUP].clients),
                                  request_timeout_s=0.05, deadline_s=5.0)
        async with OrderClient(opts) as client:
            acks: dict[str, str] = {}

            async def place(i: int) -> None:
                ack = await client.place(order(f"o{i}"))
                acks[ack.client_order_id] = ack.order_id

            first = [asyncio.create_task(place(i)) for i in range(40)]
            await asyncio.sleep(0.02)  # some in flight when the primary dies
            primary.kill()  # SIGKILL
            t0 = time.monotonic()
            second = [asyncio.create_task(place(i)) for i in range(40, 80)]
            await asyncio.gather(*first, *second)
            failover_s = time.monotonic() - t0
            assert len(acks) == 80 and len(set(acks.values())) == 80
            await wait_until(lambda: len(p.executed) >= 80, 10, "80 executions")
            executed = [o.order_id for o in p.executed]
            assert sorted(executed) == sorted(acks.values()), "lost or extra executions"
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            try:
                # Each fill applied, by the primary before it died or by the backup
                # (the dead primary's own count is not readable: its last stats file
                # may be 0.5 s old).
                await wait_all_filled(store, list(acks.values()), 10, "80 fills applied")
                for order_id in acks.values():
                    stored = await store.get(order_id)
                    assert stored is not None, order_id
                    assert stored.state in (OrderState.FILLED, OrderState.ROUTED), stored
            finally:
                await store.close()
            s = client.stats()
            assert s["switches"] >= 1  # requests left the dead primary for the backup
            print(f"failover completed in {failover_s * 1000:.0f} ms, stats {s}")
    run_with_children(redis_server, tmp_path, body, child_primary=True)


def test_real_executor_executes_each_order_once_across_a_failover(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    async def body(p: Pair) -> None:
        primary, backup = p.procs["primary"], p.node(Role.BACKUP)
        assert p.executor is not None
        await wait_active(primary)
        async with OrderClient(both_backends(p)) as client:
            acks = await asyncio.gather(*(client.place(order(f"a{i}")) for i in range(30)))
            await wait_until(lambda: p.stat("primary", "reports") == 30, 10,
                             "30 fills at primary")
            # Orders in flight while the active backend dies, then more on the backup.
            tail = [asyncio.create_task(client.place(order(f"b{i}"))) for i in range(30)]
            await asyncio.sleep(0.01)
            primary.kill()  # SIGKILL
            acks += await asyncio.gather(*tail)
            # The tail may all have been answered before the primary went silent; the
            # backup takes over on a client's request (the binary star's client vote).
            acks.append(await client.place(order("wake")))
            assert len({a.order_id for a in acks}) == 61
            await wait_until(lambda: p.executor is not None and
                             p.executor.stats.fills == 61, 10, "61 executions")
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            try:  # re-drives converge on the backup
                await wait_all_filled(store, [a.order_id for a in acks], 10,
                                      "every order FILLED")
            finally:
                await store.close()
            assert p.executor.stats.fills == 61  # none executed twice
            assert backup.star.serving
    run_with_children(redis_server, tmp_path, body, real_executor=True, child_primary=True)


def test_progress_of_a_working_order_holds_its_re_drive_back(
        redis_server: RedisProcess) -> None:
    """Re-drives are for orders the executor lost. An order it fills slice by slice reports
    progress, and each report resets the order's re-drive clock: re-sending it would only
    make the executor replay its log (what a backlog did in the Redis drill)."""
    async def main() -> None:
        async with pair(redis_server, real_executor=True, fill_lots=1.0) as p:
            primary = p.node(Role.PRIMARY)
            assert p.executor is not None
            await wait_active(primary)
            async with OrderClient(both_backends(p)) as client:
                ack = await client.place(order("slices", qty=30.0))  # 30 slices, one a poll
                routed = time.monotonic()
                await wait_until(lambda: primary.stats.reports >= 3, 10, "three slices")
                assert ack.order_id in primary.orders  # still working
                record = primary.service.record(ack.order_id)
                assert record is not None and record.sent > routed  # progress reset the clock
                store = RedisOrderStore(p.cfg.redis.url, "bk")
                try:
                    await wait_filled(store, ack.order_id, 15)
                finally:
                    await store.close()
    run(main())


def test_executor_killed_mid_stream_executes_each_order_once(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    from nodes.orders.executor import ExecutorNode

    async def body(p: Pair) -> None:
        primary = p.node(Role.PRIMARY)
        first = p.procs["executor"]
        await wait_active(primary)
        opts = both_backends(p)
        async with OrderClient(opts) as client:
            acks = list(await asyncio.gather(*(client.place(order(f"a{i}"))
                                               for i in range(20))))
            # The executor dies (SIGKILL of its process) with orders routed.
            tail = [asyncio.create_task(client.place(order(f"b{i}"))) for i in range(20)]
            await asyncio.sleep(0.005)
            first.kill()
            acks += await asyncio.gather(*tail)
            # What the dead executor executed: the fills it appended to the orders'
            # logs (it counts a fill once appended; its stats file may lag 0.5 s).
            first_fills = await executed_entries(p, [a.order_id for a in acks])
            # A new executor process takes its place, same name, same Redis.
            second = ExecutorNode(p.cfg, name="executor",
                                  backends=(p.ends[Role.PRIMARY].executor,
                                            p.ends[Role.BACKUP].executor))
            stop = asyncio.Event()
            task = asyncio.create_task(second.run(stop))
            try:
                await wait_until(lambda: primary.stats.reports == 40, 10,
                                 "every order reported after the re-drive")
                # Each order executed once in all: the new executor only replays.
                assert first_fills + second.stats.fills <= 40
                store = RedisOrderStore(p.cfg.redis.url, "bk")
                try:
                    for a in acks:
                        stored = await store.get(a.order_id)
                        assert stored is not None and stored.state is OrderState.FILLED
                        n = await store.redis.scard(f"bk:executed:{a.order_id}")
                        assert n == 1, (a.order_id, n)
                    # The log: one fill per order, whichever process appended it.
                    assert await executed_entries(p, [a.order_id for a in acks]) == 40
                finally:
                    await store.close()
            finally:
                stop.set()
                await task
    run_with_children(redis_server, tmp_path, body, real_executor=True, child_executor=True)


def test_cancel_settles_against_fills_through_the_executor(redis_server: RedisProcess) -> None:
    from protocols.errors import OrderRejected
    from protocols.orders.messages import CancelOrder, RejectReason
    from tests.nodes.orders.test_backend import seed_tick

    async def main() -> None:
        async with pair(redis_server, real_executor=True) as p:
            primary = p.node(Role.PRIMARY)
            assert p.executor is not None
            await wait_active(primary)
            opts = both_backends(p)
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            async with OrderClient(opts) as client:
                # A limit buy below the ask rests at the executor; cancel it.
                rest = await client.place(order("rest", price=1.0750))
                await wait_until(lambda: p.executor is not None and
                                 p.executor.stats.resting == 1, 5, "the order resting")
                ack = await client.cancel(CancelOrder("acc", "cxl-1", "rest"))
                assert ack.order_id == rest.order_id
                await wait_until(lambda: primary.stats.reports == 1, 5, "the cancel report")
                stored = await store.get(rest.order_id)
                assert stored is not None and stored.state is OrderState.CANCELLED
                # A retried cancel is harmless; a tick that would have filled it fills nothing.
                again = await client.cancel(CancelOrder("acc", "cxl-2", "rest"))
                assert again.state is OrderState.CANCELLED
                await seed_tick(p.cfg, bid=1.0740, ask=1.0745)
                await asyncio.sleep(0.2)  # several executor polls: nothing may fill now
                assert p.executor.stats.fills == 0 and p.executor.stats.cancels == 1
                # A filled order cannot be cancelled; an unknown one is unknown.
                market = await client.place(order("mkt"))
                await wait_until(lambda: primary.stats.reports == 2, 5, "the fill")
                with pytest.raises(OrderRejected) as filled:
                    await client.cancel(CancelOrder("acc", "cxl-3", "mkt"))
                assert filled.value.reason is RejectReason.NOT_CANCELLABLE
                with pytest.raises(OrderRejected) as unknown:
                    await client.cancel(CancelOrder("acc", "cxl-4", "nope"))
                assert unknown.value.reason is RejectReason.UNKNOWN_ORDER
                assert market.order_id != rest.order_id
            await store.close()
    run(main())


def test_replace_is_decided_by_the_executor_and_acknowledged_after(
        redis_server: RedisProcess) -> None:
    from protocols.errors import OrderRejected
    from protocols.orders.messages import RejectReason, ReplaceOrder

    async def main() -> None:
        async with pair(redis_server, real_executor=True, fill_lots=0) as p:
            primary = p.node(Role.PRIMARY)
            assert p.executor is not None
            await wait_active(primary)
            opts = both_backends(p)
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            async with OrderClient(opts) as client:
                rest = await client.place(order("rest", qty=2.0, price=1.0750))
                await wait_until(lambda: p.executor is not None and
                                 p.executor.stats.resting == 1, 5, "the order resting")
                # Outside the 5 % band around the 1.0801 mid: refused by the backend.
                with pytest.raises(OrderRejected) as band:
                    await client.replace(ReplaceOrder("acc", "rpl-0", "rest", 2.0, 1.2))
                assert band.value.reason is RejectReason.PRICE_BAND
                # Smaller and still resting: acknowledged once the executor logged it.
                ack = await client.replace(ReplaceOrder("acc", "rpl-1", "rest", 1.5, 1.0760))
                assert (ack.order_id, ack.state) == (rest.order_id, OrderState.ROUTED)
                held = await primary.store.get(rest.order_id)  # the pair's, at the ack
                assert held is not None
                assert (held.quantity, held.price, held.exec_seq) == (1.5, 1.0760, 1)
                async def replaced_in_redis() -> bool:
                    return await store.get(rest.order_id) == held
                await wait_until(replaced_in_redis, 5, "the replace in Redis (written behind)")
                # The client's retry of the same replace gets the same answer, no new entry.
                again = await client.replace(ReplaceOrder("acc", "rpl-1", "rest", 1.5, 1.0760))
                assert again == ack
                # Marketable now (ask 1.0802): filled at the new limit, for the new quantity.
                await client.replace(ReplaceOrder("acc", "rpl-2", "rest", 1.5, 1.0805))
                report = await client.next_update()
                while report.state is not OrderState.FILLED:
                    report = await client.next_update()
                assert (report.filled_quantity, report.last_price) == (1.5, 1.0805)
                await wait_until(lambda: primary.stats.reports == 3, 5, "two replaces, a fill")

                async def filled_in_redis() -> bool:
                    stored = await store.get(rest.order_id)
                    return stored is not None and stored.state is OrderState.FILLED
                await wait_until(filled_in_redis, 5, "FILLED in Redis (written behind)")
                assert p.executor.stats.replaces == 2
                # A filled order takes no replace; an unknown one is unknown.
                with pytest.raises(OrderRejected) as filled:
                    await client.replace(ReplaceOrder("acc", "rpl-3", "rest", 3.0, 1.0805))
                assert filled.value.reason is RejectReason.NOT_CANCELLABLE
                with pytest.raises(OrderRejected) as unknown:
                    await client.replace(ReplaceOrder("acc", "rpl-4", "nope", 3.0, 1.0805))
                assert unknown.value.reason is RejectReason.UNKNOWN_ORDER
            await store.close()
    run(main())


def test_replace_without_an_executor_is_a_retryable_reject(redis_server: RedisProcess,
                                                            tmp_path: Path) -> None:
    from protocols.orders.messages import OrderAck, OrderReject, RejectReason, ReplaceOrder

    async def body(p: Pair) -> None:
        primary = p.node(Role.PRIMARY)
        await wait_active(primary)
        ack = await p.request(Role.PRIMARY, order("lim", price=1.0750))
        await wait_until(lambda: p.stat("executor", "resting") == 1, 5,
                         "the order resting")
        p.procs["executor"].kill()  # the executor dies (SIGKILL)
        primary.amend_timeout_s = 0.1
        reply = await p.request(Role.PRIMARY, ReplaceOrder("acc", "r1", "lim", 2.0, 1.0760))
        assert isinstance(reply, OrderReject), reply
        assert reply.reason is RejectReason.EXECUTOR_UNAVAILABLE and reply.retryable
        store = RedisOrderStore(p.cfg.redis.url, "bk")
        assert isinstance(ack, OrderAck)
        stored = await store.get(ack.order_id)
        await store.close()
        assert stored is not None and stored.quantity == 1.0  # unchanged
        record = primary.service.record(ack.order_id)
        assert record is None or record.replace is None  # no replace left pending
    run_with_children(redis_server, tmp_path, body, real_executor=True, child_executor=True)


def test_partial_fills_converge_across_a_failover(redis_server: RedisProcess,
                                                  tmp_path: Path) -> None:
    """A 6-lot order fills one lot per executor poll; the active backend dies after the
    first fills. The backup re-drives the order, the executor replays what it missed and
    goes on: the record ends FILLED with exactly 6 lots from 6 log entries."""
    async def body(p: Pair) -> None:
        primary, backup = p.procs["primary"], p.node(Role.BACKUP)
        assert p.executor is not None
        await wait_active(primary)
        async with OrderClient(both_backends(p)) as client:
            ack = await client.place(order("big", qty=6.0))
            await wait_until(lambda: (p.stat("primary", "reports") or 0) >= 2, 5,
                             "two fills applied")
            primary.kill()  # SIGKILL
            await client.place(order("wake"))  # a request makes the backup take over
            await wait_active(backup)
            store = RedisOrderStore(p.cfg.redis.url, "bk")
            try:
                stored = await wait_filled(store, ack.order_id, 10)
                assert (stored.filled_quantity, stored.exec_seq) == (6.0, 6)
                entries = await store.executions(ack.order_id)
                assert [e.last_quantity for e in entries] == [1.0] * 6
                assert await store.redis.scard(f"bk:executed:{ack.order_id}") == 6
            finally:
                await store.close()
    run_with_children(redis_server, tmp_path, body,
                      real_executor=True, fill_lots=1.0, child_primary=True)


@pytest.mark.parametrize("replicate", [True, False], ids=["replicated", "redis-acked"])
def test_orders_placed_while_the_store_is_away_are_acknowledged_once_and_filled(
        redis_server: RedisProcess, replicate: bool) -> None:
    """Redis goes away (as during a Sentinel switch). Replicated, orders placed meanwhile are
    acknowledged at once (the passive node holds them) and filled too (the executor's fills
    are decided by the pair), all reaching Redis behind; acknowledged in Redis (replicate =
    false), they are held, neither refused nor lost, and acknowledged once the store is back.
    Either way each is acknowledged once and filled."""
    async def main() -> None:
        async with pair(redis_server, real_executor=True, deadline_ms=5000,
                        replicate=replicate) as p:
            primary = p.node(Role.PRIMARY)
            assert p.executor is not None
            await wait_active(primary)
            await wait_until(lambda: primary.peer_ready(), 3, "the backup passive")
            opts = replace(both_backends(p), deadline_s=10.0)
            async with OrderClient(opts) as client:
                before = await client.place(order("before"))
                await asyncio.to_thread(redis_server.stop)
                placed = [asyncio.create_task(client.place(order(f"held{i}")))
                          for i in range(5)]
                if replicate:
                    await asyncio.wait_for(asyncio.gather(*placed), scaled(2.0))
                    assert primary.pair_store is not None
                    assert primary.pair_store.backlog() >= 5  # not in Redis yet
                    # A deadline, not a speed: the executor's fills go through the pair while
                    # Redis is away; a loaded CI machine once took longer than 3 s.
                    await wait_until(lambda: all(primary.orders.get(t.result().order_id) is None
                                                 for t in placed), 10,
                                     "the held orders filled with Redis away (no longer open)")
                else:
                    await asyncio.sleep(0.5)
                    assert not any(t.done() for t in placed), "held, not refused"
                await asyncio.to_thread(redis_server.start)
                acks = await asyncio.gather(*placed)
                assert len({a.order_id for a in acks}) == 5
                ids = [before.order_id, *(a.order_id for a in acks)]
                store = RedisOrderStore(p.cfg.redis.url, "bk")
                try:
                    await wait_all_filled(store, ids[1:], 10, "held orders all FILLED")
                    # Executed once each: one fill in each log (the executor's own counter
                    # of fills it proposed and saw decided depends on which round's answer
                    # came in time: a loaded clean-clone CI run counted 1 of 6).
                    logs = await asyncio.gather(*(store.executions(o) for o in ids))
                finally:
                    await store.close()
                assert [sum(e.is_fill for e in log) for log in logs] == [1] * 6
                redis_store = primary.pair_store.backing if primary.pair_store else primary.store
                assert redis_store.stats.ridden >= 1  # type: ignore[attr-defined]
                assert primary.star.serving
    run(main())
