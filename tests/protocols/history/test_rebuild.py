"""plan_rebuild: which version of each order, which log entries, which epoch and position."""

from __future__ import annotations

from protocols.history.rebuild import plan_rebuild
from protocols.history.records import append_write
from protocols.history.schema import Columns, Table
from protocols.orders.codec import to_blob
from tests.bus.store.contract_orders import logged, routed


def history(*writes: tuple[int, bytes, list[bytes]]) -> tuple[Columns, Columns]:
    orders, executions = Columns(Table.ORDERS), Columns(Table.EXECUTIONS)
    for position, record, entries in writes:
        append_write(orders, executions, position, record, entries)
    return orders, executions


def test_the_latest_version_wins_with_its_whole_log_the_top_epoch_and_position() -> None:
    rec = routed(quantity=1.0)
    f1 = rec.fill_report(0.5, 1.1, seq=1, exec_id="o1:1")
    half = logged(rec, f1)
    f2 = half.fill_report(0.5, 1.2, seq=2, exec_id="o1:2")
    full = logged(half, f2)
    # Rows arrive in any order (a resync, a merge): the version with the highest src wins.
    plan = plan_rebuild(*history((9, to_blob(full), [to_blob(f2)]), (3, to_blob(rec), []),
                                 (5, to_blob(half), [to_blob(f1)])))
    assert [r.blob for r in plan.records] == [to_blob(full)]
    assert [(e.seq, e.executed) for e in plan.records[0].entries] == [(1, "o1:1"), (2, "o1:2")]
    assert (plan.position, plan.epoch, plan.log_holes, plan.bad_rows) == (9, 1, 0, 0)
    assert plan.records[0].terminal


def test_a_log_with_a_missing_position_is_cut_there_and_counted() -> None:
    rec = routed()
    f1 = rec.fill_report(0.5, 1.1, seq=1, exec_id="o1:1")
    half = logged(rec, f1)
    f2 = half.fill_report(0.5, 1.2, seq=2, exec_id="o1:2")
    orders, executions = history((5, to_blob(logged(half, f2)), [to_blob(f2)]))
    plan = plan_rebuild(orders, executions)  # entry 1 never reached history
    assert plan.records[0].entries == () and plan.log_holes == 1


def test_an_unreadable_record_is_left_out_and_counted() -> None:
    orders, executions = history((1, to_blob(routed()), []))
    orders.column("blob")[0] = b"not a record"
    plan = plan_rebuild(orders, executions)
    assert plan.records == () and plan.bad_rows == 1 and plan.position == 1


def test_nothing_in_history_plans_nothing() -> None:
    plan = plan_rebuild(Columns(Table.ORDERS), Columns(Table.EXECUTIONS))
    assert (plan.records, plan.epoch, plan.position) == ((), 0, 0)
