"""The order desk against real parts: Redis, the backend pair and the real executor, and a
DuckDB history store holding part of the stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus.gateway.orders import UPDATES_KEPT, OrderDesk, desk_client_options
from bus.orders.client import OrderClient, OrderClientOptions
from bus.store.history_duck import DuckDBHistoryStore
from bus.store.orders import RedisOrderStore
from nodes.servers.redis_server import RedisProcess, free_port
from protocols.history.records import append_write
from protocols.history.schema import Columns, Table
from protocols.orders.binary_star import Role
from tests.bus.store.contract_orders import routed
from tests.nodes.orders.test_backend import Pair, pair, wait_active
from tests.protocols.gateway.test_orders import Client, rounded
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)

Item = tuple[int, str, dict[str, Any]]


def market(coid: str, account: str = "ACC-A", qty: float = 5.0,
           side: str = "buy") -> dict[str, Any]:
    return {"account": account, "client_order_id": coid, "symbol": "EURUSD", "side": side,
            "type": "market", "quantity": qty}


@contextlib.asynccontextmanager
async def desk_on(p: Pair, reader: DuckDBHistoryStore | None = None, **kw: Any
                  ) -> AsyncIterator[tuple[OrderDesk, list[Item]]]:
    """A started desk on the pair's store and backends, and every item it tailed."""
    opts = desk_client_options(p.cfg, endpoints=(p.ends[Role.PRIMARY].clients,
                                                 p.ends[Role.BACKUP].clients))
    store = RedisOrderStore(p.cfg.redis.url, p.cfg.mesh.key_prefix)
    async with OrderClient(opts) as client:
        desk = OrderDesk(store, client, reader, **kw)
        items: list[Item] = []
        desk.listen(lambda seq, account, item: items.append((seq, account, item)))
        await desk.start()
        try:
            yield desk, items
        finally:
            await desk.close()
            await store.close()


def filled(items: list[Item], order_ids: set[str]) -> bool:
    done = {i["order"]["order_id"] for _, _, i in items if i["order"]["state"] == "FILLED"}
    return order_ids <= done


def test_a_placed_order_is_acked_and_its_writes_reach_its_account_only(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with pair(redis_server, real_executor=True) as p, desk_on(p) as (desk, items):
            await wait_active(p.node(Role.PRIMARY))
            got = await desk.place(["ACC-A"], market("a1"))
            assert got["ok"] and got["client_order_id"] == "a1"
            assert got["state"] in ("ACCEPTED", "ROUTED")
            await wait_until(lambda: filled(items, {got["order_id"]}), 10, "a1 FILLED")
            seqs = [s for s, _, _ in items]
            assert seqs == sorted(set(seqs)) and all(a == "ACC-A" for _, a, _ in items)
            assert items[-1][2]["order"]["state"] == "FILLED"
            fills = [f for _, _, i in items for f in i["fills"]]
            assert sum(f["quantity"] for f in fills) == pytest.approx(5.0)
            assert len({f["exec_id"] for f in fills}) == len(fills) == 3  # 2-lot slices
            # Another account's session: no order of ACC-A, and it cannot trade ACC-A.
            other = await desk.snapshot(["ACC-B"])
            assert other.orders == () and other.fills == () and other.positions == ()
            assert await desk.missed(["ACC-B"], 0) == []
            refused = await desk.cancel(["ACC-B"], {"account": "ACC-A",
                                                    "client_order_id": "x", "target": "a1"})
            assert refused["reason"] == "NOT_YOUR_ACCOUNT" and not refused["ok"]
            mine = await desk.snapshot(["ACC-A"])
            assert mine.seq == desk.position and mine.complete
            assert [o["state"] for o in mine.orders] == ["FILLED"]
            [position] = mine.positions
            assert position["quantity"] == pytest.approx(5.0)
            assert position["avg_price"] == pytest.approx(
                sum(f["quantity"] * f["price"] for f in fills) / 5.0)
            # The order client's own report queue is not read, and stays bounded.
            assert desk.client.stats()["updates_queued"] <= UPDATES_KEPT
    asyncio.run(main())


def record_up_to(columns: tuple[Columns, Columns], entries: list[Any], upto: int) -> None:
    for e in entries:
        if e.position <= upto:
            append_write(*columns, e.position, e.record, e.entries)


@pytest.mark.parametrize(("history", "held"), [(False, 10_000), (False, 5), (True, 5)],
                         ids=["redis-only", "redis-only-holding-5", "with-history-holding-5"])
def test_a_snapshot_mid_burst_and_the_items_after_it_are_the_final_state(
        redis_server: RedisProcess, tmp_path: Path, history: bool, held: int) -> None:
    """Orders of two accounts fill slice by slice while a snapshot is taken; a client that
    loads it and applies the items the desk delivers after it ends where a client that saw
    every item does (each fill once). With a history store holding the stream up to a point
    below the snapshot, the snapshot reads its rows, then the Redis stream above them up to
    the last ``held`` writes the desk holds in memory."""
    async def main() -> None:
        reader = DuckDBHistoryStore(tmp_path / "h.duckdb") if history else None
        if reader is not None:
            await reader.open()
        try:
            async with (pair(redis_server, real_executor=True, fill_lots=1.0) as p,
                        desk_on(p, reader, resume_limit=held) as (desk, items)):
                await wait_active(p.node(Role.PRIMARY))
                first = await asyncio.gather(*(
                    desk.place(["ACC-A", "ACC-B"],
                               market(f"a{i}", ("ACC-A", "ACC-B")[i % 2], qty=3.0,
                                      side=("buy", "sell")[i % 3 % 2]))
                    for i in range(12)))
                assert all(a["ok"] for a in first)
                await wait_until(lambda: len(items) >= 24, 10, "24 writes")
                if reader is not None:  # the historian has recorded the first 20 entries
                    cols = (Columns(Table.ORDERS), Columns(Table.EXECUTIONS))
                    record_up_to(cols, await desk.store.history(0, 10_000), 20)
                    assert len(cols[0]) == 20 and len(cols[1]) > 0
                    for c in cols:
                        await reader.insert(c)
                later: list[Item] = []
                stop = desk.listen(lambda seq, account, item: later.append((seq, account, item)))
                more = asyncio.gather(*(desk.place(["ACC-A"], market(f"b{i}", qty=6.0))
                                        for i in range(6)))
                snap = await desk.snapshot(["ACC-A"])
                after = len(later)  # what the desk delivered before the snapshot returned
                print(f"snapshot at {snap.seq}: {len(snap.orders)} orders, "
                      f"{sum(o['state'] != 'FILLED' for o in snap.orders)} working, "
                      f"{len(snap.fills)} fills; {after} items before it returned")
                assert all(s <= snap.seq for s, _, _ in later[:after])
                assert snap.complete
                acks = first + await more
                await wait_until(lambda: filled(items, {a["order_id"] for a in acks}), 20,
                                 "every order FILLED")
                stop()
                resumed = Client()
                resumed.load(snap.item())
                for seq, account, item in later[after:]:
                    assert seq > snap.seq
                    if account == "ACC-A":
                        resumed.apply(item)
                everything = Client()
                for _, account, item in items:
                    if account == "ACC-A":
                        everything.apply(item)
                assert resumed.orders == everything.orders
                assert sorted(f["exec_id"] for f in resumed.fills) == sorted(
                    f["exec_id"] for f in everything.fills)
                assert resumed.positions() == everything.positions()
                final = await desk.snapshot(["ACC-A"])
                assert rounded(final.positions) == everything.positions()
                assert desk.stats()["history_errors"] == 0
                print(f"after it: {sum(a == 'ACC-A' for _, a, _ in later[after:])} items")
        finally:
            if reader is not None:
                await reader.close()
    asyncio.run(main())


def test_missed_is_exact_from_a_new_desk_and_a_resend_executes_once(
        redis_server: RedisProcess) -> None:
    """A desk that stops at some position and a new one (another gateway) started later:
    the new one's missed() from that position is what a desk running all along delivered.
    The same client order id placed twice at once, and again after its ack, is one order
    executed once."""
    async def main() -> None:
        async with pair(redis_server, real_executor=True) as p, desk_on(p) as (truth, items):
            await wait_active(p.node(Role.PRIMARY))
            async with desk_on(p) as (first, _):
                acks = [await first.place(["ACC-A", "ACC-B"], market(f"a{i}", account))
                        for i, account in enumerate(("ACC-A", "ACC-B", "ACC-A"))]
                await wait_until(lambda: filled(items, {a["order_id"] for a in acks}), 10,
                                 "the first orders FILLED")
                await wait_until(lambda: first.position == truth.position, 5, "first caught up")
                left_at = first.position
            twice = await asyncio.gather(*(truth.place(["ACC-A"], market("dup"))
                                           for _ in range(2)))
            again = await truth.place(["ACC-A"], market("dup"))
            assert truth.stats()["joined"] == 1
            assert {a["order_id"] for a in (*twice, again)} == {twice[0]["order_id"]}
            late = await truth.place(["ACC-A", "ACC-B"], market("b1", "ACC-B"))
            await wait_until(lambda: filled(items, {twice[0]["order_id"], late["order_id"]}),
                             10, "the later orders FILLED")
            dup_fills = [f for _, _, i in items for f in i["fills"]
                         if f["client_order_id"] == "dup"]
            assert sum(f["quantity"] for f in dup_fills) == pytest.approx(5.0)  # once
            async with desk_on(p) as (second, _):
                assert second.position == truth.position
                for accounts in (["ACC-A"], ["ACC-B"], ["ACC-A", "ACC-B"]):
                    got = await second.missed(accounts, left_at)
                    assert got == [(s, i) for s, a, i in items
                                   if left_at < s <= second.position and a in accounts]
                    assert got
                assert await second.missed(["ACC-A"], second.position) == []
                assert await second.missed(["ACC-A"], second.position + 1) is None  # wiped
    asyncio.run(main())


# --- Redis alone -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bare_desk(redis: RedisProcess, cap: int = 100, deadline_s: float = 0.0, **kw: Any
                    ) -> AsyncIterator[tuple[OrderDesk, RedisOrderStore, list[Item]]]:
    """A started desk on a store with a history stream capped at ``cap`` (riding through
    an outage for ``deadline_s``), and an order client whose backend does not exist
    (requests never get that far here)."""
    store = RedisOrderStore(redis.url, "t", history_cap=cap, deadline_s=deadline_s)
    opts = OrderClientOptions(endpoints=(f"tcp://127.0.0.1:{free_port()}",), deadline_s=0.2)
    async with OrderClient(opts) as client:
        desk = OrderDesk(store, client, None, **kw)
        items: list[Item] = []
        desk.listen(lambda seq, account, item: items.append((seq, account, item)))
        await desk.start()
        try:
            yield desk, store, items
        finally:
            await desk.close()
            await store.close()


async def write_orders(store: RedisOrderStore, first: int, count: int) -> None:
    _, epoch = await store.acquire_epoch(await store.current_epoch())
    for i in range(first, first + count):
        await store.write_batch([routed(order_id=f"o{i}", coid=f"c{i}")], epoch)


def test_a_trimmed_or_wiped_stream_or_too_long_a_gap_is_no_resume(
        redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with bare_desk(redis_server) as (desk, store, items):
            def boom(seq: int, account: str, item: dict[str, Any]) -> None:
                raise RuntimeError("a listener's bug")
            desk.listen(boom)
            await write_orders(store, 0, 300)
            await wait_until(lambda: desk.position == 300, 10, "300 tailed")
            assert [s for s, _, _ in items] == list(range(1, 301))  # the bug stopped nothing
            assert desk.stats()["listener_errors"] == 300
            first = await store.history_first()
            assert first > 1  # the stream keeps about its cap, 100
            # This desk tailed every write and holds them: trimmed in Redis, not here.
            assert [s for s, _ in await desk.missed(["acc"], 0) or []] == list(range(1, 301))
            snap = await desk.snapshot(["acc"])
            assert (snap.seq, snap.complete, len(snap.orders)) == (300, True, 300)
            # A desk started now (another gateway) has what the stream still holds.
            late = OrderDesk(store, desk.client, None, resume_limit=250)
            await late.start()
            try:
                assert late.position == 300 and late.stats()["held"] == 301 - first
                assert await late.missed(["acc"], first - 2) is None  # trimmed
                held = await late.missed(["acc"], first - 1)
                assert held is not None and [s for s, _ in held] == list(range(first, 301))
                assert await late.missed(["acc"], 300 - 251) is None  # past resume_limit
                snap = await late.snapshot(["acc"])  # the open orders, not every fill
                assert (snap.seq, snap.complete, len(snap.orders)) == (300, False, 300)
            finally:
                await late.close()
            await store.redis.flushall()
            await write_orders(store, 1000, 3)
            assert await desk.missed(["acc"], 300) is None  # the store was wiped
            await wait_until(lambda: desk.stats()["resets"] == 1, 10,
                             "the tail to notice the wipe")
            assert (desk.position, desk.stats()["open_orders"]) == (3, 3)
    asyncio.run(main())


def test_the_tail_reads_on_through_a_redis_restart(redis_server: RedisProcess) -> None:
    async def main() -> None:
        async with bare_desk(redis_server, deadline_s=5.0) as (desk, store, items):
            await write_orders(store, 0, 5)
            await wait_until(lambda: desk.position == 5, 10, "5 tailed")
            # In a thread: the tail's XREAD is in flight while the server goes and comes back.
            await asyncio.to_thread(redis_server.restart)
            await write_orders(store, 5, 5)
            await wait_until(lambda: desk.position == 10, 10, "10 tailed")
            assert [s for s, _, _ in items] == list(range(1, 11))
            assert [i["order"]["order_id"] for _, _, i in items] == [f"o{n}" for n in range(10)]
            assert store.stats.ridden >= 1  # the connections broke: read again, not lost
    asyncio.run(main())


@pytest.mark.parametrize(("body", "reason"), [
    (None, "INVALID"),
    ({"account": "acc", "client_order_id": "c", "symbol": "EURUSD", "side": "up",
      "type": "market", "quantity": 1}, "INVALID"),
    ({"account": "acc", "client_order_id": "c", "symbol": "EURUSD", "side": "buy",
      "type": "limit", "quantity": 1}, "INVALID"),
    ({"account": "other", "client_order_id": "c", "symbol": "EURUSD", "side": "buy",
      "type": "market", "quantity": 1}, "NOT_YOUR_ACCOUNT"),
])
def test_bad_bodies_are_answered_never_raised(redis_server: RedisProcess, body: object,
                                              reason: str) -> None:
    async def main() -> None:
        async with bare_desk(redis_server) as (desk, _, _):
            got = await desk.place(["acc"], body)
            assert (got["ok"], got["reason"], got["retryable"]) == (False, reason, False)
            assert got["client_order_id"] == ("c" if body else "")
            # Sent to a backend that does not exist: no final answer, send it again.
            lost = await desk.place(["acc"], market("c9", "acc"))
            assert (lost["ok"], lost["reason"], lost["retryable"]) == (False, "TIMEOUT", True)
    asyncio.run(main())
