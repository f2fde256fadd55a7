"""The contract of :class:`bus.store.orders.OrderStore`: what the backend pair and the executor
rely on, whatever keeps the orders.

* The epoch is a compare-and-swap: raised to ``expected + 1`` only if it is still
  ``expected``; of two backends racing for it, one wins.
* An order write is fenced by the epoch: a writer whose epoch is not the current one is
  refused (``Fenced``, with both epochs) and writes nothing.
* A client order id names one order: the same order may be written again (a retry, a new
  state), another order with that client order id is refused (``InvalidOrder``), and an order
  id never overwrites another client order's record (``StoreError``).
* A batch of orders is written in one step, each by the rules of a single write, in turn, with
  an outcome per order (written, client order id taken, order id taken); fenced as a whole.
* ``open_orders`` holds every order not yet terminal, however many.
* The execution log of an order is written with the records that applied its entries, in the
  same step (``write_batch`` with ``entries``; the active backend decided them): an entry lands
  at its log's end; the same write again (a lost reply, the write-behind after a takeover)
  appends nothing twice; entries must be the positions their records applied last
  (``ValueError``); a fenced batch writes no entry either. (What Redis's script does with a
  log that disagrees, which the backend's decisions never produce, is in ``test_orders.py``.)

An implementation runs it with one fixture named ``order_store``: an async function that opens
a store on this test's own empty data (each call opens another client on the same data); see
``tests/bus/store/test_contracts.py``. What only one implementation does (Redis keys and Lua,
AOF, connection limits, faults of the server) is tested beside it, in ``test_orders.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bus.store.orders import OrderStore, WriteOutcome
from protocols.errors import Fenced, InvalidOrder, StoreError
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import ExecutionReport, NewOrder, OrderType, Side
from protocols.orders.record import Order
from tests.support import run_with, run_with_two, wait_until

OpenOrderStore = Callable[[], Awaitable[OrderStore]]


def new(coid: str = "c1", account: str = "acc") -> NewOrder:
    return NewOrder(account, coid, "EURUSD", Side.BUY, OrderType.LIMIT, 1.0, 1.08, 1)


def order(order_id: str = "o1", coid: str = "c1", epoch: int = 1) -> Order:
    return Order.from_new(order_id, new(coid), epoch=epoch, now_ns=10)


def routed(quantity: float = 2.0, order_id: str = "o1", coid: str = "c1") -> Order:
    rec = Order.from_new(order_id, NewOrder("acc", coid, "EURUSD", Side.BUY, OrderType.MARKET,
                                            quantity, None, 1), epoch=1, now_ns=1)
    for state in (OrderState.ACCEPTED, OrderState.ROUTED):
        rec = rec.apply(rec.status_report(state, exec_id="b", epoch=1), epoch=1, now_ns=1)
    return rec


def slice_of(rec: Order, seq: int, price: float = 1.1) -> ExecutionReport:
    """A fill of half a lot at position ``seq`` of ``rec``'s log."""
    return rec.fill_report(0.5, price, seq=seq, exec_id=f"{rec.order_id}:{seq}")


def logged(rec: Order, *entries: ExecutionReport) -> Order:
    """``rec`` after ``entries``, as the active backend's decisions leave it."""
    for entry in entries:
        rec = rec.apply(entry, epoch=rec.epoch, now_ns=rec.updated_ns + 1)
    return rec


class ExecutionLogContract:
    """The executor's log, written with the records that applied it (issue 10)."""

    def test_entries_are_written_with_their_records(self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            a, b = routed(order_id="oA"), routed(order_id="oB", coid="cB")
            await s.write_batch([a, b], epoch)
            a1 = slice_of(a, 1)
            a2 = slice_of(logged(a, a1), 2)
            b1 = slice_of(b, 1)
            got = await s.write_batch([logged(a, a1, a2), logged(b, b1)], epoch, [a1, b1, a2])
            assert got == [WriteOutcome.WRITTEN] * 2
            assert await s.executions("oA") == [a1, a2]
            assert await s.executions("oA", after=1) == [a2]
            assert await s.executions("oB") == [b1]
            assert await s.executions("oC") == []
            assert (await s.get("oA")) == logged(a, a1, a2)
        run_with(order_store, body)

    def test_the_same_write_again_appends_nothing_twice(self, order_store: OpenOrderStore
                                                        ) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            a = routed(order_id="oA")
            a1 = slice_of(a, 1)
            a2 = slice_of(logged(a, a1), 2)
            await s.write_batch([logged(a, a1)], epoch, [a1])
            # Sent again, and again with the next entry: the log holds each once.
            await s.write_batch([logged(a, a1)], epoch, [a1])
            await s.write_batch([logged(a, a1, a2)], epoch, [a1, a2])
            assert await s.executions("oA") == [a1, a2]
        run_with(order_store, body)

    def test_entries_must_be_what_their_records_applied_last(
            self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            a, b = routed(order_id="oA"), routed(order_id="oB", coid="cB")
            a1 = slice_of(a, 1)
            a2 = slice_of(logged(a, a1), 2)
            with pytest.raises(ValueError, match="not the positions it applied last"):
                await s.write_batch([logged(a, a1, a2)], epoch, [a1])
            with pytest.raises(ValueError, match="not in the batch"):
                await s.write_batch([logged(a, a1)], epoch, [a1, slice_of(b, 1)])
            assert await s.executions("oA") == []
        run_with(order_store, body)

    def test_a_fenced_batch_writes_no_entry(self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            await s.acquire_epoch(epoch)
            a = routed(order_id="oA")
            a1 = slice_of(a, 1)
            with pytest.raises(Fenced):
                await s.write_batch([logged(a, a1)], epoch, [a1])
            assert await s.executions("oA") == []
        run_with(order_store, body)


class OrderStoreContract(ExecutionLogContract):
    """Every test takes ``order_store``; a subclass in a test module runs them all."""

    def test_the_epoch_is_a_compare_and_swap(self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            assert await s.current_epoch() == 0
            assert await s.acquire_epoch(0) == (True, 1)
            assert await s.acquire_epoch(0) == (False, 1)  # someone else took 1 first
            assert await s.acquire_epoch(1) == (True, 2)
            assert await s.current_epoch() == 2
        run_with(order_store, body)

    def test_of_two_backends_racing_for_the_epoch_one_wins(
            self, order_store: OpenOrderStore) -> None:
        async def body(a: OrderStore, b: OrderStore) -> None:
            results = await asyncio.gather(a.acquire_epoch(0), b.acquire_epoch(0))
            assert sorted(results) == [(False, 1), (True, 1)]
        run_with_two(order_store, body)

    def test_write_and_read_back(self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            o = order(epoch=epoch)
            await s.write(o, epoch)
            assert await s.get("o1") == o
            assert await s.get("nope") is None
            assert await s.by_client_id("acc", "c1") == o
            assert await s.by_client_id("acc", "nope") is None
            assert await s.by_client_id("other", "c1") is None  # client ids are per account
            assert await s.open_orders() == [o]
        run_with(order_store, body)

    def test_a_stale_active_cannot_write(self, order_store: OpenOrderStore) -> None:
        """Two backends both believe they are active; only the newer epoch's writes land."""
        async def body(a: OrderStore, b: OrderStore) -> None:
            _, old = await a.acquire_epoch(0)
            _, current = await b.acquire_epoch(old)  # b took over; a did not notice
            with pytest.raises(Fenced) as info:
                await a.write(order("oA", "cA", epoch=old), old)
            assert (info.value.epoch, info.value.current) == (old, current)
            assert await a.get("oA") is None and await b.by_client_id("acc", "cA") is None
            await b.write(order("oB", "cB", epoch=current), current)

            async def landed() -> bool:  # (a store written behind: once its write-behind ran)
                return [o.order_id for o in await a.open_orders()] == ["oB"]
            await wait_until(landed, 5, "the current epoch's write seen by the stale store")
        run_with_two(order_store, body)

    def test_a_client_order_id_names_one_order(self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            await s.write(order("o1", "c1", epoch), epoch)
            await s.write(order("o1", "c1", epoch), epoch)  # the same order again: fine
            with pytest.raises(InvalidOrder, match="already names order o1"):
                await s.write(order("o2", "c1", epoch), epoch)
            assert await s.get("o2") is None
            assert await s.by_client_id("acc", "c1") == order("o1", "c1", epoch)
        run_with(order_store, body)

    def test_an_order_id_never_overwrites_another_client_orders_record(
            self, order_store: OpenOrderStore) -> None:
        """Defence in depth: two writers that (wrongly) pick the same order id cannot replace
        each other's record; only the record's own client order id may rewrite it."""
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            first = order("o1", "c1", epoch)
            await s.write(first, epoch)
            with pytest.raises(StoreError, match="already names another client order"):
                await s.write(order("o1", "c2", epoch), epoch)
            assert await s.get("o1") == first
            assert await s.by_client_id("acc", "c2") is None
            await s.write(first, epoch)  # its own client order id: an idempotent rewrite
        run_with(order_store, body)

    def test_a_batch_is_written_in_one_step_with_an_outcome_per_order(
            self, order_store: OpenOrderStore) -> None:
        """``write_batch``: each order by the rules of ``write``, in turn (a later order of
        the batch sees the earlier ones), an outcome per order; a stale epoch writes none."""
        async def body(s: OrderStore) -> None:
            _, stale = await s.acquire_epoch(0)
            _, epoch = await s.acquire_epoch(stale)
            stored = order("o1", "c1", epoch)
            await s.write(stored, epoch)
            batch = [order("o2", "c2", epoch),  # new
                     stored,  # a duplicate of a stored order, same content
                     order("o3", "c1", epoch),  # a reused client order id
                     order("o1", "c4", epoch),  # an order id naming another client order's
                     order("o5", "c2", epoch)]  # reuses the client id written just before
            assert await s.write_batch(batch, epoch) == [
                WriteOutcome.WRITTEN, WriteOutcome.WRITTEN, WriteOutcome.CLIENT_ID_TAKEN,
                WriteOutcome.ORDER_ID_TAKEN, WriteOutcome.CLIENT_ID_TAKEN]
            assert await s.get("o1") == stored and await s.get("o2") == batch[0]
            assert await s.get("o3") is None and await s.get("o5") is None
            assert await s.by_client_id("acc", "c1") == stored
            assert await s.by_client_id("acc", "c2") == batch[0]
            assert await s.by_client_id("acc", "c4") is None
            assert sorted(o.order_id for o in await s.open_orders()) == ["o1", "o2"]
            assert await s.write_batch([], epoch) == []
            with pytest.raises(Fenced) as info:  # a stale epoch: the whole batch refused
                await s.write_batch([order("o6", "c6", stale), order("o2", "c2", stale)], stale)
            assert (info.value.epoch, info.value.current) == (stale, epoch)
            assert await s.get("o6") is None and await s.by_client_id("acc", "c6") is None
            # Sent again (its reply lost while the store failed over): the same outcomes.
            assert await s.write_batch(batch, epoch) == [
                WriteOutcome.WRITTEN, WriteOutcome.WRITTEN, WriteOutcome.CLIENT_ID_TAKEN,
                WriteOutcome.ORDER_ID_TAKEN, WriteOutcome.CLIENT_ID_TAKEN]
        run_with(order_store, body)

    def test_a_batch_moves_terminal_orders_out_of_the_open_set(
            self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            first, second = order("o1", "c1", epoch), order("o2", "c2", epoch)
            assert await s.write_batch([first, second], epoch) == [WriteOutcome.WRITTEN] * 2
            done = Order(first.order_id, first.order, OrderState.REJECTED, 0.0, 0.0, epoch, 12,
                         first.quantity, first.price)
            assert await s.write_batch([done], epoch) == [WriteOutcome.WRITTEN]
            assert await s.open_orders() == [second] and await s.get("o1") == done
        run_with(order_store, body)

    def test_a_new_state_replaces_the_record_and_terminal_orders_leave_the_open_set(
            self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            o = order(epoch=epoch)
            await s.write(o, epoch)
            accepted = o.apply(o.status_report(OrderState.ACCEPTED, exec_id="b", epoch=epoch),
                               epoch=epoch, now_ns=11)
            await s.write(accepted, epoch)
            assert await s.get("o1") == await s.by_client_id("acc", "c1") == accepted
            assert await s.open_orders() == [accepted]
            rejected = Order(o.order_id, o.order, OrderState.REJECTED, 0.0, 0.0, epoch, 12,
                             o.quantity, o.price)
            await s.write(rejected, epoch)
            assert await s.open_orders() == []
            assert await s.get("o1") == rejected
        run_with(order_store, body)

    def test_open_orders_holds_every_open_order_however_many(
            self, order_store: OpenOrderStore) -> None:
        async def body(s: OrderStore) -> None:
            _, epoch = await s.acquire_epoch(0)
            orders = [order(f"o{i:03}", f"c{i}", epoch) for i in range(450)]
            await asyncio.gather(*(s.write(o, epoch) for o in orders))
            done = orders[7]
            await s.write(Order(done.order_id, done.order, OrderState.REJECTED, 0.0, 0.0,
                                epoch, 11, done.quantity, done.price), epoch)
            got = await s.open_orders()
            assert sorted(o.order_id for o in got) == [o.order_id for o in orders if o != done]
        run_with(order_store, body)

