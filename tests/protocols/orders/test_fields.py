"""The field checks shared by the order messages."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import (
    InvalidOrder,
)
from protocols.orders.fields import check_id
from protocols.ticks.messages import check_stream
from tests.protocols.orders.builders import (
    FAST,
)

IDS = st.text(st.characters(codec="utf-8"), max_size=20) | st.binary(max_size=4) | st.none()


@FAST
@given(IDS)
def test_check_id_follows_the_stream_name_rules(value: Any) -> None:
    try:
        check_stream(value)
        stream_ok = True
    except ValueError:
        stream_ok = False
    try:
        assert check_id("account", value) == value
        id_ok = True
    except InvalidOrder as exc:
        assert exc.field == "account" and str(exc).startswith("account ")
        id_ok = False
    assert id_ok == stream_ok
