"""The history server link machine: every transition of its table, and the probe back-off."""

from __future__ import annotations

import pytest

from protocols.errors import IllegalTransition
from protocols.history.pair import TRANSITIONS, Link, LinkEvent, ServerLink

ALL = [(s, e) for s in Link for e in LinkEvent]


@pytest.mark.parametrize(("state", "event"), ALL)
def test_every_state_and_event_moves_by_the_table_or_is_refused(state: Link,
                                                                 event: LinkEvent) -> None:
    link = ServerLink("a", state=state)
    nxt = TRANSITIONS[state].get(event)
    if nxt is None:
        with pytest.raises(IllegalTransition):
            link.on(event, 1.0)
        assert link.state is state
    else:
        assert link.on(event, 1.0) is nxt
        assert link.state is nxt


@pytest.mark.parametrize(("state", "direct"), [(Link.LIVE, True), (Link.DOWN, False),
                                                (Link.RESYNC, False)])
def test_only_a_live_server_takes_batches_directly(state: Link, direct: bool) -> None:
    assert ServerLink("a", state=state).direct is direct


def test_a_failure_counts_a_down_and_probes_back_off_until_one_answers() -> None:
    link = ServerLink("a")
    link.on(LinkEvent.FAILED, 10.0)
    assert (link.downs, link.down_since, link.failures) == (1, 10.0, 0)
    assert not link.probe_due(10.0) and link.probe_due(10.05)
    link.on(LinkEvent.FAILED, 10.05)  # the probe failed
    assert link.failures == 1 and link.next_probe == pytest.approx(10.15)
    for _ in range(10):
        link.on(LinkEvent.FAILED, 20.0)
    assert link.next_probe == pytest.approx(20.5)  # capped
    assert link.downs == 1  # one outage, however many probes
    link.on(LinkEvent.PROBED, 30.0)
    assert not link.probe_due(99.0)  # only a DOWN server is probed
    link.on(LinkEvent.CAUGHT_UP, 31.5)
    assert (link.state, link.last_resync_s, link.failures) == (Link.LIVE, 1.5, 0)


def test_a_failure_while_catching_up_is_a_new_outage() -> None:
    link = ServerLink("a", state=Link.RESYNC)
    link.on(LinkEvent.FAILED, 5.0)
    assert (link.state, link.downs, link.down_since) == (Link.DOWN, 1, 5.0)
