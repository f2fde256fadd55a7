"""The rebuild from history: orders written through the real Redis order store, recorded as
the historian records them (protocols.history.records) into a real DuckDB store, Redis wiped,
then rebuilt: records byte for byte, their logs, idempotency keys, open set, epoch and the
history position; a store that lost nothing is left alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus.orders.rebuild import rebuild_from_history
from bus.store.history_duck import DuckDBHistoryStore
from bus.store.orders import RedisOrderStore
from nodes.servers.redis_server import RedisProcess
from protocols.history.records import append_write
from protocols.history.schema import Columns, Table
from protocols.orders.codec import to_blob
from protocols.orders.lifecycle import OrderState
from tests.bus.store.contract_orders import logged, routed

pytestmark = pytest.mark.timeout(30)


async def record_history(store: RedisOrderStore, history: DuckDBHistoryStore) -> None:
    orders, executions = Columns(Table.ORDERS), Columns(Table.EXECUTIONS)
    for entry in await store.history(0, 10_000):
        append_write(orders, executions, entry.position, entry.record, entry.entries)
    await history.insert(orders)
    await history.insert(executions)


def test_a_wiped_store_is_rebuilt_from_history(redis_server: RedisProcess,
                                               tmp_path: Path) -> None:
    async def main() -> None:
        store = RedisOrderStore(redis_server.url, "rb", history_cap=10_000)
        history = DuckDBHistoryStore(tmp_path / "h.duckdb")
        await history.open()
        _, epoch = await store.acquire_epoch(0)
        open_one = routed(order_id="o1", coid="c1")
        fill = open_one.fill_report(0.4, 1.1, seq=1, exec_id="o1:1")
        partly = logged(open_one, fill)
        done = routed(order_id="o2", coid="c2")
        cancel = done.status_report(OrderState.CANCELLED, exec_id="o2:1", epoch=epoch, seq=1)
        cancelled = logged(done, cancel)
        await store.write_batch([open_one, done], epoch)
        await store.write_batch([partly, cancelled], epoch, [fill, cancel])
        await record_history(store, history)
        before = {oid: await store.redis.get(f"rb:order:{oid}") for oid in ("o1", "o2")}

        await store.redis.flushall()
        report = await rebuild_from_history(store, history)
        assert report.rebuilt and (report.records, report.entries) == (2, 2)
        assert report.log_holes == report.bad_rows == 0
        for oid, blob in before.items():
            assert await store.redis.get(f"rb:order:{oid}") == blob  # byte for byte
        assert await store.redis.get("rb:order:o1") == to_blob(partly)
        assert [e.exec_id for e in await store.executions("o1")] == ["o1:1"]
        assert [e.exec_id for e in await store.executions("o2")] == ["o2:1"]
        assert await store.redis.smembers(store.executed_key("o1")) == {b"o1:1"}
        assert [o.order_id for o in await store.open_orders()] == ["o1"]
        found = await store.by_client_id(partly.order.account, "c1")
        assert found is not None and found.order_id == "o1"  # the idempotency key is back
        assert await store.current_epoch() == 1  # the highest epoch history saw
        assert await store.history_position() == 4
        # The store numbers its next write above what history holds.
        await store.write_batch([routed(order_id="o3", coid="c3")], epoch)
        assert [e.position for e in await store.history(4, 10)] == [5]

        # Run again: the store is not behind any more, nothing is touched.
        again = await rebuild_from_history(store, history)
        assert not again.rebuilt and again.records == 0
        await store.close()
        await history.close()
    asyncio.run(main())


def test_a_store_that_lost_nothing_is_left_alone(redis_server: RedisProcess,
                                                 tmp_path: Path) -> None:
    async def main() -> None:
        store = RedisOrderStore(redis_server.url, "rb2", history_cap=10_000)
        history = DuckDBHistoryStore(tmp_path / "h.duckdb")
        await history.open()
        _, epoch = await store.acquire_epoch(0)
        await store.write_batch([routed(order_id="o1", coid="c1")], epoch)
        await record_history(store, history)
        # History is behind the store (written behind): nothing to rebuild.
        await store.write_batch([routed(order_id="o2", coid="c2")], epoch)
        report = await rebuild_from_history(store, history)
        assert not report.rebuilt and (report.store_position, report.history_position) == (2, 1)
        await store.close()
        await history.close()
    asyncio.run(main())
