"""The pair's replication rules (protocols.orders.replication): the passive side's answer to
every kind of batch, the active side's numbering, confirmations and durability, the backlog,
the client index's window and completeness, and which of two records is newer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from protocols.orders.codec import EncodedEntry, EncodedOrder
from protocols.orders.pair import RefuseReason, ReplicaAck, ReplicaBatch, ReplicaRefused
from protocols.orders.record import Order
from protocols.orders.replication import (
    Backlog,
    ClientIndex,
    Replica,
    Replicator,
    newer,
)
from tests.protocols.orders import builders


def order(order_id: str, coid: str | None = None, exec_seq: int = 0, updated_ns: int = 100
          ) -> Order:
    return replace(builders.order(), order_id=order_id, exec_seq=exec_seq,
                   updated_ns=updated_ns,
                   order=replace(builders.new(), client_order_id=coid or f"c-{order_id}"))


def rec(order_id: str, coid: str | None = None, exec_seq: int = 0) -> EncodedOrder:
    return EncodedOrder.of(order(order_id, coid, exec_seq))


def batch(seq: int, *records: Order, term: str = "t1", epoch: int = 5, flushed: int = 0,
          reset: bool = False) -> ReplicaBatch:
    return ReplicaBatch(epoch, term, seq, flushed, records, reset=reset)


# --- the passive side -------------------------------------------------------------------------

R = RefuseReason
# (what the replica holds: term, seq), (passive?, known epoch), the batch -> the answer
CASES = [
    ("first reset", (None, 0), (True, 5), batch(1, rec("a"), reset=True), "ack"),
    ("next in term", ("t1", 1), (True, 5), batch(2, rec("a")), "ack"),
    ("newer epoch", ("t1", 1), (True, 5), batch(2, rec("a"), epoch=6), "ack"),
    ("reset of a new term", ("t1", 4), (True, 5), batch(9, term="t2", reset=True), "ack"),
    ("gap", ("t1", 1), (True, 5), batch(3, rec("a")), R.OUT_OF_SYNC),
    ("repeat", ("t1", 2), (True, 5), batch(2, rec("a")), R.OUT_OF_SYNC),
    ("other term", ("t1", 1), (True, 5), batch(2, term="t2"), R.OUT_OF_SYNC),
    ("nothing held", (None, 0), (True, 5), batch(1, rec("a")), R.OUT_OF_SYNC),
    ("stale epoch", ("t1", 1), (True, 6), batch(2, rec("a")), R.STALE_EPOCH),
    ("stale reset", (None, 0), (True, 6), batch(1, reset=True), R.STALE_EPOCH),
    ("not passive", ("t1", 1), (False, 5), batch(2, rec("a")), R.NOT_PASSIVE),
    ("taking over, reset", ("t1", 1), (False, 5), batch(2, reset=True), R.NOT_PASSIVE),
]


@pytest.mark.parametrize(("held", "node", "msg", "answer"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_the_passive_answer_to_every_kind_of_batch(
        held: tuple[str | None, int], node: tuple[bool, int], msg: ReplicaBatch,
        answer: str | RefuseReason) -> None:
    replica = Replica()
    replica.term, replica.seq = held
    index = ClientIndex(known_from=0.0)
    passive, epoch = node
    got = replica.on_batch(msg, passive=passive, epoch=epoch, now=50.0, index=index)
    if answer == "ack":
        assert got == ReplicaAck(msg.epoch, msg.term, msg.seq)
        assert (replica.term, replica.seq, replica.last_batch) == (msg.term, msg.seq, 50.0)
        for r in msg.records:
            assert replica.backlog.get(r.order_id) == (msg.seq, r)
            assert index.get(r.key, 50.0) == r.order_id
    else:
        assert got == ReplicaRefused(epoch, msg.term, msg.seq, answer)
        assert (replica.term, replica.seq) == held  # nothing taken
        assert replica.backlog.records == 0 and len(index) == 0


def test_the_passive_drops_what_the_store_has_and_a_reset_replaces_everything() -> None:
    replica, index = Replica(), ClientIndex(known_from=0.0)
    for seq, r in enumerate([rec("a"), rec("b"), rec("c")], start=1):
        assert isinstance(replica.on_batch(batch(seq, r, reset=seq == 1, flushed=seq // 3),
                                           passive=True, epoch=5, now=1.0, index=index),
                          ReplicaAck)
    assert replica.backlog.get("a") is None and replica.backlog.get("b") is not None
    assert [r.order_id for r in replica.backlog.newest()] == ["b", "c"]
    replica.on_batch(batch(1, rec("z"), term="t2", reset=True), passive=True, epoch=5,
                     now=2.0, index=index)
    assert [r.order_id for r in replica.backlog.newest()] == ["z"]
    assert not index.complete(2.0 + index.window_s - 1)  # a reset is a gap: reload the window


def test_the_passive_refuses_past_its_bound() -> None:
    replica = Replica(max_records=2)
    index = ClientIndex(known_from=0.0)
    assert isinstance(replica.on_batch(batch(1, rec("a"), rec("b"), reset=True), passive=True,
                                       epoch=5, now=1.0, index=index), ReplicaAck)
    full = replica.on_batch(batch(2, rec("c")), passive=True, epoch=5, now=1.0, index=index)
    assert isinstance(full, ReplicaRefused) and full.reason is RefuseReason.FULL
    # A reset replaces what it holds: it counts alone.
    assert isinstance(replica.on_batch(batch(3, rec("c"), rec("d"), reset=True), passive=True,
                                       epoch=5, now=1.0, index=index), ReplicaAck)


def test_release_forgets_the_term() -> None:
    replica = Replica()
    replica.on_batch(batch(1, rec("a"), reset=True), passive=True, epoch=5, now=1.0,
                     index=ClientIndex())
    replica.release()
    assert (replica.term, replica.seq, replica.last_batch, replica.backlog.records) == \
        (None, 0, None, 0)


# --- the active side --------------------------------------------------------------------------


def test_out_of_sync_the_first_batch_is_a_reset_with_everything_the_store_lacks() -> None:
    rep = Replicator("t1", 5)
    one = rep.append([rec("a")])
    assert rep.batch(one, peer_ready=False) is None  # nobody to hold it: wait for the store
    two = rep.append([rec("b")])
    reset = rep.batch(two, peer_ready=True)
    assert reset == batch(2, rec("a"), rec("b"), reset=True)
    three = rep.append([rec("c")])
    assert rep.batch(three, peer_ready=True) == batch(3, rec("c"))
    rep.flushed_to(1)
    four = rep.append([rec("d")])
    assert rep.batch(four, peer_ready=True) == batch(4, rec("d"), flushed=1)


def test_durable_once_confirmed_in_sync_or_in_the_store() -> None:
    rep = Replicator("t1", 5)
    seqs = [rep.append([rec(x)]) for x in "abc"]
    rep.batch(seqs[-1], peer_ready=True)  # the reset, carrying all three
    assert not any(rep.durable(s) for s in seqs)
    four = rep.append([rec("d")])
    rep.batch(four, peer_ready=True)
    assert rep.on_ack(ReplicaAck(5, "t1", 3))
    seqs.append(four)
    assert [rep.durable(s) for s in seqs] == [True, True, True, False]
    assert not rep.on_ack(ReplicaAck(5, "t1", 2))  # old news
    assert not rep.on_ack(ReplicaAck(5, "t0", 4))  # another term's
    rep.lost()  # the passive may have died: only the store counts now
    assert not any(rep.durable(s) for s in seqs)
    assert not rep.on_ack(ReplicaAck(5, "t1", 4))  # from before the loss
    rep.flushed_to(2)
    assert [rep.durable(s) for s in seqs] == [True, True, False, False]


def test_a_confirmation_from_before_the_current_reset_does_not_count() -> None:
    rep = Replicator("t1", 5)
    rep.batch(rep.append([rec("a")]), peer_ready=True)  # reset at 1
    rep.lost()
    rep.append([rec("b")])
    rep.batch(rep.append([rec("c")]), peer_ready=True)  # reset at 3, carrying a, b, c
    assert not rep.on_ack(ReplicaAck(5, "t1", 1))
    assert rep.on_ack(ReplicaAck(5, "t1", 3)) and rep.durable(1)


def test_flushing_takes_whole_batches_in_order_up_to_a_bound() -> None:
    rep = Replicator("t1", 5)
    rep.append([rec("a"), rec("b")])
    rep.append([rec("c"), rec("d")])
    rep.append([rec("e")])
    assert rep.to_flush(3) == (1, [rec("a"), rec("b")])
    assert rep.to_flush(4) == (2, [rec(x) for x in "abcd"])
    assert rep.to_flush(1) == (1, [rec("a"), rec("b")])  # at least one batch
    rep.flushed_to(2)
    assert rep.to_flush(10) == (3, [rec("e")]) and rep.backlog.records == 1
    rep.flushed_to(3)
    assert rep.to_flush(10) == (3, [])


# --- the backlog ------------------------------------------------------------------------------


def test_the_backlog_keeps_the_newest_record_of_each_order_until_flushed() -> None:
    log = Backlog()
    a1, a2, b1 = rec("a", exec_seq=1), rec("a", exec_seq=2), rec("b")
    log.add(1, [a1, b1])
    log.add(2, [a2])
    assert log.get("a") == (2, a2) and log.newest() == [b1, a2] and log.records == 3
    assert log.last() == (2, (a2,))
    log.trim(1)
    assert log.get("a") == (2, a2) and log.get("b") is None and log.records == 1
    with pytest.raises(ValueError, match="after"):
        log.add(2, [a1])
    log.clear()
    assert log.get("a") is None and len(log) == 0


def _entry(seq: int) -> EncodedEntry:
    return EncodedEntry(seq, f"entry-{seq}".encode(), f"a:{seq}")


def test_the_backlog_holds_each_orders_log_entries_until_flushed() -> None:
    """Entries travel with the record version that applied them; the backlog keeps every
    version's, so a node taking over writes the whole part of the log the store lacks with
    the newest record (``newest``), and answers a position from memory (``entries``)."""
    log = Backlog()
    a1 = replace(rec("a", exec_seq=1), entries=(_entry(1),))
    a3 = replace(rec("a", exec_seq=3), entries=(_entry(2), _entry(3)))
    b0 = rec("b")
    log.add(1, [a1, b0])
    log.add(2, [a3])
    assert [e.seq for e in log.entries("a")] == [1, 2, 3] and log.entries("b") == []
    assert log.newest() == [b0, replace(a3, entries=(_entry(1), _entry(2), _entry(3)))]
    log.trim(1)  # the store has batch 1: entry 1 with its record
    assert [e.seq for e in log.entries("a")] == [2, 3]
    assert log.newest() == [a3]
    log.trim(2)
    assert log.entries("a") == [] and log.newest() == []
    log.add(3, [a1])
    log.clear()
    assert log.entries("a") == []


# --- the client index -------------------------------------------------------------------------


def test_the_index_forgets_past_its_window_and_says_when_it_is_complete() -> None:
    index = ClientIndex(window_s=10.0)
    assert not index.complete(0.0)  # nothing known yet
    index.load([(("acc", "x"), "o-x", 1.0)], since=0.0)
    assert index.get(("acc", "x"), 5.0) == "o-x"
    assert not index.complete(5.0) and index.complete(10.0)
    index.add(("acc", "y"), "o-y", 6.0)
    assert index.get(("acc", "x"), 11.5) is None  # older than the window
    assert index.get(("acc", "y"), 11.5) == "o-y"
    assert index.key_of("o-y") == ("acc", "y") and index.key_of("o-x") is None
    index.add(("acc", "y"), "o-y2", 11.6)  # the id reused past its order: the key moves on
    assert index.key_of("o-y") is None and index.key_of("o-y2") == ("acc", "y")
    index.gap(12.0)  # batches lost: what came before may be missing
    assert not index.complete(21.0) and index.complete(22.0)


def test_the_count_bound_moves_completeness_on() -> None:
    index = ClientIndex(window_s=100.0, max_keys=2, known_from=0.0)
    for i, at in enumerate([101.0, 102.0, 103.0]):
        index.add(("acc", f"k{i}"), f"o{i}", at)
    assert len(index) == 2 and index.get(("acc", "k0"), 103.0) is None
    assert index.known_from == 101.0 and not index.complete(150.0)


def test_a_load_merges_older_entries_in_front_and_keeps_newer_ones() -> None:
    index = ClientIndex(window_s=100.0)
    index.add(("acc", "new"), "o-new", 50.0)
    index.load([(("acc", "old"), "o-old", 20.0), (("acc", "new"), "o-stale", 10.0)], since=0.0)
    assert index.get(("acc", "new"), 60.0) == "o-new"
    assert index.get(("acc", "old"), 60.0) == "o-old"
    assert index.get(("acc", "old"), 121.0) is None  # expired first: it is oldest
    assert index.get(("acc", "new"), 121.0) == "o-new"


# --- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("record", "stored", "expected"), [
    (order("a"), None, True),
    (order("a", exec_seq=2), order("a", exec_seq=1, updated_ns=999), True),
    (order("a", exec_seq=1, updated_ns=999), order("a", exec_seq=2), False),
    (order("a", exec_seq=1, updated_ns=200), order("a", exec_seq=1, updated_ns=100), True),
    (order("a", exec_seq=1), order("a", exec_seq=1), False),  # the same: Redis has it
])
def test_newer(record: Order, stored: Order | None, expected: bool) -> None:
    assert newer(record, stored) is expected
