"""LeaseHolder: an EA instance's leases (protocols.ea.holder; PROTOCOL.md 18.2)."""

from __future__ import annotations

import pytest

from protocols.ea.holder import LeaseHolder
from protocols.ea.messages import Grant, Lease


def lease(n: int, *grants: tuple[str, int, bool], valid_ms: float = 100.0) -> Lease:
    return Lease(n, valid_ms, tuple(Grant(*g) for g in grants))


def test_the_lease_runs_from_the_ping_it_answers_not_from_its_arrival() -> None:
    h = LeaseHolder(("*",), guard_s=0.02)
    n = h.ping(10.0)
    gained, lost = h.on_lease(lease(n, ("*", 3, True)), now=10.09)  # a slow answer
    assert (gained, lost) == ([("*", 3)], [])
    assert h.live("*", 10.099) and not h.live("*", 10.1)


@pytest.mark.parametrize("now, synced, epoch, may", [
    (10.05, True, 3, True),
    (10.079, True, 3, True),
    (10.081, True, 3, False),  # less than the guard left: no order_send begins
    (10.05, False, 3, False),  # not reconciled yet
    (10.05, True, 2, False),  # an EXECUTE under another epoch
])
def test_may_send(now: float, synced: bool, epoch: int, may: bool) -> None:
    h = LeaseHolder(("*",), guard_s=0.02)
    h.on_lease(lease(h.ping(10.0), ("*", 3, True)), now=10.0)
    if synced:
        h.synced("*", 3)
    assert h.may_send("*", epoch, now) is may


def test_renewal_extends_and_a_higher_epoch_is_a_new_holding() -> None:
    h = LeaseHolder(("A", "B"), guard_s=0.0)
    h.on_lease(lease(h.ping(0.0), ("A", 1, True), ("B", 7, False)), now=0.0)
    h.synced("A", 1)
    gained, _ = h.on_lease(lease(h.ping(0.05), ("A", 1, True)), now=0.05)
    assert gained == [] and h.live("A", 0.14) and h.is_synced("A", 1)
    gained, _ = h.on_lease(lease(h.ping(0.1), ("A", 2, True)), now=0.1)  # lost and won again
    assert gained == [("A", 2)] and not h.is_synced("A", 2)
    assert h.held == {"A": 2}


def test_a_standby_grant_drops_the_holding_and_old_answers_extend_nothing() -> None:
    h = LeaseHolder(("*",), guard_s=0.0)
    first = h.ping(0.0)
    second = h.ping(0.05)
    h.on_lease(lease(second, ("*", 1, True)), now=0.06)
    assert h.on_lease(lease(first, ("*", 1, True)), now=0.07) == ([], [])  # answered already
    assert h.on_lease(lease(h.ping(0.1), ("*", 2, False)), now=0.1) == ([], ["*"])
    assert h.epoch("*") == 0


def test_expire() -> None:
    h = LeaseHolder(("*",), guard_s=0.0)
    h.on_lease(lease(h.ping(0.0), ("*", 1, True)), now=0.0)
    assert h.expire(0.099) == [] and h.expire(0.1) == ["*"] and h.held == {}


def test_a_lapsed_lease_back_under_the_same_epoch_needs_no_new_reconciliation() -> None:
    h = LeaseHolder(("*",), guard_s=0.0)
    h.on_lease(lease(h.ping(0.0), ("*", 4, True)), now=0.0)
    h.synced("*", 4)
    assert h.expire(0.2) == ["*"]  # this process stalled: its lease ran out
    assert h.on_lease(lease(h.ping(0.3), ("*", 4, True)), now=0.3) == ([], [])
    assert h.may_send("*", 4, 0.31)  # no other holder came between: serving at once
    gained, _ = h.on_lease(lease(h.ping(0.35), ("*", 5, True)), now=0.35)
    assert gained == [("*", 5)] and not h.may_send("*", 5, 0.36)  # another epoch: reconcile


def test_lapsed() -> None:
    h = LeaseHolder(("*",), guard_s=0.0)
    h.on_lease(lease(h.ping(0.0), ("*", 4, True)), now=0.0)
    assert not h.lapsed("*", 4)  # held: not lapsed
    h.expire(0.2)
    assert not h.lapsed("*", 4)  # never reconciled under 4: nothing to wait for
    h.on_lease(lease(h.ping(0.3), ("*", 4, True)), now=0.3)
    h.synced("*", 4)
    h.expire(0.5)
    assert h.lapsed("*", 4) and not h.lapsed("*", 5)
