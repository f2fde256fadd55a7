"""The history schema: partition_of against Python's calendar, and the Columns batch type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.history import schema
from protocols.history.schema import (
    NS_PER_S,
    TABLES,
    Columns,
    Table,
    partition_of,
)
from tests.history_support import batch


def ns(d: datetime) -> int:
    return int(d.replace(tzinfo=UTC).timestamp()) * NS_PER_S


@pytest.mark.parametrize(("when", "part"), [
    (datetime(1970, 1, 1), 197001),
    (datetime(2000, 2, 29, 23, 59, 59), 200002),  # a leap year divisible by 400
    (datetime(2000, 3, 1), 200003),
    (datetime(2024, 2, 29, 12), 202402),
    (datetime(2100, 2, 28, 23, 59, 59), 210002),  # 2100 is not a leap year
    (datetime(2100, 3, 1), 210003),
    (datetime(2026, 12, 31, 23, 59, 59), 202612),
    (datetime(2027, 1, 1), 202701),
    (datetime(2026, 4, 30, 23, 59, 59), 202604),
    (datetime(2026, 5, 1), 202605),
])
def test_partition_of_table(when: datetime, part: int) -> None:
    assert partition_of(ns(when)) == part


def test_partition_of_every_month_end_for_four_centuries() -> None:
    first = datetime(1970, 1, 1)
    while first.year < 2370:
        nxt = (first + timedelta(days=32)).replace(day=1)
        last = nxt - timedelta(microseconds=1)
        for d in (first, last):
            want = d.year * 100 + d.month
            assert partition_of(ns(d) + d.microsecond * 1000) == want, d
        first = nxt


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)))
def test_partition_of_matches_datetime(when: datetime) -> None:
    assert partition_of(ns(when) + when.microsecond * 1000) == when.year * 100 + when.month


def tick(stream: str, seq: int, ts_ns: int) -> tuple[object, ...]:
    return (stream, seq, 1, ts_ns, ts_ns, 1.0, 1.1, 0.0, 0.0)


JAN, FEB = ns(datetime(2026, 1, 31, 23, 59)), ns(datetime(2026, 2, 1))


def test_append_extend_take_slice_rows() -> None:
    a = Columns(Table.TICKS)
    a.append(tick("EUR", 1, JAN))
    a.append(tick("XAU", 7, FEB))
    b = Columns(Table.TICKS)
    b.append(tick("EUR", 2, FEB))
    a.extend(b)
    assert len(a) == 3
    assert a.column("seq") == [1, 7, 2]
    assert list(a.take([2, 0]).rows()) == [tick("EUR", 2, FEB), tick("EUR", 1, JAN)]
    assert list(a.slice(1, 2).rows()) == [tick("XAU", 7, FEB)]
    assert a.take([0]).data is not a.data  # a new batch
    with pytest.raises(ValueError, match="row of 2 values"):
        a.append(("EUR", 3))
    with pytest.raises(ValueError, match="cannot extend ticks with bars"):
        a.extend(Columns(Table.BARS))


def test_construction_checks_columns() -> None:
    names = TABLES[Table.TICKS].names
    with pytest.raises(ValueError, match="missing"):
        Columns(Table.TICKS, {"stream": []})
    with pytest.raises(ValueError, match="different lengths"):
        Columns(Table.TICKS, {n: [0] * (2 if n == "seq" else 1) for n in names})
    given_data = {n: [0] for n in names}
    cols = Columns(Table.TICKS, given_data)
    given_data["seq"].append(9)  # the batch copies what it was given
    assert len(cols) == 1


def test_by_partition_splits_on_months_and_the_atomic_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    one = Columns(Table.TICKS)
    one.append(tick("EUR", 1, JAN))
    assert one.by_partition() == [one]  # one partition: the batch itself
    mixed = Columns(Table.TICKS)
    for seq, ts in enumerate([FEB, JAN, FEB, FEB, JAN], start=1):
        mixed.append(tick("EUR", seq, ts))
    parts = mixed.by_partition()
    # Runs of consecutive rows, in batch order (a failed k-th insert must not leave a
    # watermark above a row it lacks), each in one month.
    assert [p.column("seq") for p in parts] == [[1], [2], [3, 4], [5]]
    assert [{partition_of(t) for t in p.column("ts_ns")} for p in parts] == [
        {202602}, {202601}, {202602}, {202601}]
    monkeypatch.setattr(schema, "MAX_ATOMIC_ROWS", 2)
    long = Columns(Table.TICKS)
    for seq, ts in enumerate([JAN, JAN, JAN, FEB], start=1):
        long.append(tick("EUR", seq, ts))
    assert [p.column("seq") for p in long.by_partition()] == [[1, 2], [3], [4]]


def test_above_and_marks_per_group() -> None:
    cols = Columns(Table.TICKS)
    for stream, seq in [("EUR", 1), ("EUR", 2), ("XAU", 5), ("EUR", 3), ("XAU", 6)]:
        cols.append(tick(stream, seq, JAN))
    assert cols.marks() == {"EUR": 3, "XAU": 6}
    above = cols.above({"EUR": 1, "XAU": 6})
    assert [(r[0], r[1]) for r in above.rows()] == [("EUR", 2), ("EUR", 3)]
    assert len(cols.above({})) == 5  # an absent group: all of it
    assert Columns(Table.TICKS).marks() == {}


def test_above_and_marks_without_groups() -> None:
    spec = TABLES[Table.EXECUTIONS]
    assert spec.group == ""
    cols = batch(Table.EXECUTIONS, *({"src": src} for src in (4, 9, 7)))
    assert cols.marks() == {"": 9}
    assert cols.above({"": 4}).column("src") == [9, 7]
    assert cols.above({}).column("src") == [4, 9, 7]
