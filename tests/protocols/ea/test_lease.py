"""The executor's EA lease table (protocols.ea.lease), driven from tables with a hand clock:
takeover after silence, none while the holder pings, a restart waits out its old lease, BYE
hands over at once, two keys, the "*" fallback, epochs."""

from __future__ import annotations

import pytest

from protocols.ea.lease import (
    IGNORED,
    MACHINE,
    TRANSITIONS,
    Claim,
    Holder,
    KeyEvent,
    KeyState,
    Leases,
)
from protocols.ea.messages import Grant
from protocols.errors import IllegalTransition
from protocols.machines import Kind

LEASE, GUARD = 100.0, 20.0  # ms
MS = 0.001


def granted(t: Leases, now: float, epoch: int | None = None) -> tuple[Claim, ...]:
    """One tick, every claim granted at once (the caller's INCR answered)."""
    claims = t.tick(now)
    for c in claims:
        assert t.grant(c, epoch, now) > 0
    return claims


def table(*instances: tuple[str, tuple[str, ...]], now: float = 0.0) -> Leases:
    t = Leases(LEASE, GUARD)
    for name, keys in instances:
        t.hello(name, f"{name}-1", keys, now)
    return t


def test_the_first_instance_gets_the_key_under_epoch_1_and_syncs() -> None:
    t = table(("a", ("acc",)))
    assert t.holder("acc") is None and t.ping("a", "a-1", 0.0) == (Grant("acc", 0, False),)
    [claim] = t.tick(0.0)
    assert claim == Claim("acc", "a", "a-1") and t.state("acc") is KeyState.CLAIMED
    assert t.ping("a", "a-1", 0.0) == (Grant("acc", 0, False),)  # not before the grant
    assert t.grant(claim, None, 0.0) == 1
    assert t.holder("acc") == Holder("a", 1, False)
    assert t.ping("a", "a-1", 0.01) == (Grant("acc", 1, True),)
    assert not t.synced("a", "acc", 2)  # another epoch: nothing
    assert t.synced("a", "acc", 1) and t.holder("acc") == Holder("a", 1, True)
    assert t.synced("a", "acc", 1)  # again: no change


def test_epochs_continue_from_the_loaded_value_and_the_durable_one() -> None:
    t = Leases(LEASE, GUARD, epochs={"acc": 41})
    t.hello("a", "a-1", ("acc",), 0.0)
    [claim] = t.tick(0.0)
    assert t.grant(claim, None, 0.0) == 42
    t2 = Leases(LEASE, GUARD)
    t2.hello("a", "a-1", ("acc",), 0.0)
    [claim] = t2.tick(0.0)
    assert t2.grant(claim, 7, 0.0) == 7  # the INCR's answer


@pytest.mark.parametrize(("step_ms", "until_ms", "moved"), [
    (20, 1000, False),   # the holder pings every heartbeat: the key stays
    (90, 1000, False),   # late pings, but within the lease: stays
])
def test_no_takeover_while_the_holder_pings(step_ms: int, until_ms: int, moved: bool) -> None:
    t = table(("a", ("acc",)), ("b", ("acc",)))
    granted(t, 0.0)
    assert t.holder("acc") == Holder("a", 1, False)
    for ms in range(0, until_ms, step_ms):
        t.ping("a", "a-1", ms * MS)
        t.ping("b", "b-1", ms * MS)
        granted(t, ms * MS)
    assert (t.holder("acc") != Holder("a", 1, False)) is moved
    assert t.takeovers == 0


def test_takeover_after_silence_waits_for_lease_and_guard() -> None:
    t = table(("a", ("acc",)), ("b", ("acc",)))
    granted(t, 0.0)
    t.ping("a", "a-1", 0.0)  # a's last ping: its lease ends at 100 ms
    for ms in range(0, 120, 10):
        t.ping("b", "b-1", ms * MS)
        assert granted(t, ms * MS) == (), ms
        assert t.holder("acc") is not None and t.holder("acc").instance == "a"  # type: ignore[union-attr]
    t.ping("b", "b-1", 0.121)
    [claim] = granted(t, 0.121)  # 100 ms lease + 20 ms guard (+1: float sums)
    assert claim.instance == "b" and t.holder("acc") == Holder("b", 2, False)
    assert t.takeovers == 1
    assert t.ping("b", "b-1", 0.13) == (Grant("acc", 2, True),)
    # The old holder, back (a stalled process): a standby now.
    assert t.ping("a", "a-1", 0.13) == (Grant("acc", 2, False),)


def test_a_restart_with_a_new_incarnation_waits_out_the_old_lease() -> None:
    t = table(("a", ("acc",)), ("b", ("acc",)))
    granted(t, 0.0)
    t.ping("a", "a-1", 0.05)  # lease to 150 ms
    t.hello("a", "a-2", ("acc",), 0.06)  # restarted
    for ms in range(60, 170, 10):  # the new incarnation's pings renew nothing
        assert t.ping("a", "a-2", ms * MS) == (Grant("acc", 1, False),)
        t.ping("b", "b-1", ms * MS)
        assert granted(t, ms * MS) == (), ms
    [claim] = granted(t, 0.171)  # 150 + 20
    # b has waited since 0 ms, a's new incarnation since 60 ms: b wins.
    assert claim.instance == "b"


def test_a_restarted_lone_instance_gets_its_key_back_under_a_new_epoch() -> None:
    t = table(("a", ("acc",)))
    granted(t, 0.0)
    t.ping("a", "a-1", 0.0)
    t.hello("a", "a-2", ("acc",), 0.01)
    t.ping("a", "a-2", 0.121)
    [claim] = granted(t, 0.121)
    assert claim == Claim("acc", "a", "a-2") and t.holder("acc") == Holder("a", 2, False)
    assert t.ping("a", "a-1", 0.13) == ()  # the old incarnation is nobody now


def test_bye_hands_over_at_once() -> None:
    t = table(("a", ("acc",)), ("b", ("acc",)))
    granted(t, 0.0)
    t.ping("a", "a-1", 0.0)
    t.ping("b", "b-1", 0.0)
    t.bye("a", "a-2", 0.001)  # another incarnation's BYE: nothing
    assert t.holder("acc") is not None
    t.bye("a", "a-1", 0.001)
    assert t.holder("acc") is None
    [claim] = granted(t, 0.001)
    assert claim.instance == "b" and t.epoch("acc") == 2


def test_bye_of_a_claimed_candidate_drops_the_claim() -> None:
    t = table(("a", ("acc",)))
    [claim] = t.tick(0.0)
    t.bye("a", "a-1", 0.0)
    assert t.grant(claim, 5, 0.0) == 0 and t.state("acc") is KeyState.FREE


def test_a_claim_whose_candidate_went_silent_is_dropped() -> None:
    t = table(("a", ("acc",)), ("b", ("acc",)), now=0.0)
    t.ping("b", "b-1", 0.09)
    [claim] = t.tick(0.09)
    assert claim.instance == "a"
    [again] = t.tick(0.11)  # a silent for a lease: b is claimed instead
    assert again.instance == "b" and t.grant(claim) == 0 and t.grant(again) == 1


def test_two_keys_are_leased_apart() -> None:
    t = table(("a", ("acc1", "acc2")), ("b", ("acc2",)))
    claims = granted(t, 0.0)
    assert {(c.key, c.instance) for c in claims} == {("acc1", "a"), ("acc2", "a")}
    assert t.ping("b", "b-1", 0.0) == (Grant("acc2", 1, False),)
    assert t.ping("a", "a-1", 0.0) == (Grant("acc1", 1, True), Grant("acc2", 1, True))
    t.ping("b", "b-1", 0.121)
    granted(t, 0.121)
    assert t.holder("acc2") == Holder("b", 2, False) and t.holder("acc1") is None
    assert t.holders() == {"acc2": "b"} and t.epochs() == {"acc1": 1, "acc2": 2}


@pytest.mark.parametrize(("instances", "account", "key"), [
    ((), "acc", None),
    ((("a", ("*",)),), "acc", "*"),
    ((("a", ("*",)), ("b", ("acc",))), "acc", "acc"),
    ((("a", ("*",)), ("b", ("acc",))), "other", "*"),
    ((("b", ("acc",)),), "other", None),
])
def test_key_for(instances: tuple[tuple[str, tuple[str, ...]], ...], account: str,
                 key: str | None) -> None:
    assert table(*instances).key_for(account) == key


def test_unknown_instances_get_no_grants_and_silent_ones_are_forgotten() -> None:
    t = table(("a", ("acc",)), ("b", ("acc",)))
    assert t.ping("zz", "zz-1", 0.0) == ()
    granted(t, 0.0)
    t.ping("a", "a-1", 0.0)
    assert t.instances == 2
    t.ping("a", "a-1", 1.5)
    t.tick(1.5)  # b was silent for more than ten leases and holds nothing
    assert t.instances == 1


def test_the_key_machine_is_complete() -> None:
    assert set(TRANSITIONS) == set(KeyState)
    assert MACHINE.kind(KeyState.SYNCED, KeyEvent.SYNCED) is Kind.IGNORED
    assert IGNORED[KeyState.SYNCED] == {KeyEvent.SYNCED}
    with pytest.raises(IllegalTransition):
        MACHINE.step(KeyState.FREE, KeyEvent.GRANT)


def test_bad_timings() -> None:
    with pytest.raises(ValueError):
        Leases(0, 1)
