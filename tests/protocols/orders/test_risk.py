"""Pre-trade checks from tables: one validate() case per reason it can produce, replaces, bad
limits, and the one usable-quote rule."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from protocols.orders.messages import (
    NewOrder,
    OrderType,
    RejectReason,
    ReplaceOrder,
    Side,
)
from protocols.orders.record import Order
from protocols.orders.risk import Limits, validate, validate_replace
from tests.protocols.orders.builders import (
    MARKET_ROUTED,
    S,
    amend,
    market,
    new,
    order,
)

# --- pre-trade validation --------------------------------------------------------------------

LIMITS = Limits(symbols=frozenset({"EURUSD", "XAUUSD"}), max_quantity=10.0, price_band=0.05,
                max_exposure_per_account=100.0)
QUOTE = (0.99, 1.01)  # mid 1.0

# (id, order, last_bid_ask, exposure, expected)
VALIDATE: list[tuple[str, NewOrder, tuple[float, float] | None, float, RejectReason | None]] = [
    ("limit-ok", new(price=1.0), QUOTE, 0.0, None),
    ("market-ok", market(), QUOTE, 0.0, None),
    ("limit-at-upper-band", new(price=1.05), QUOTE, 0.0, None),
    ("limit-at-lower-band", new(price=0.95), QUOTE, 0.0, None),
    ("max-quantity", new(quantity=10.0, price=1.0), QUOTE, 0.0, None),
    ("exposure-up-to-limit", new(quantity=10.0, price=1.0), QUOTE, 90.0, None),
    ("sell-ok", new(side=Side.SELL, price=1.0), QUOTE, 0.0, None),
    ("unknown-symbol", new(symbol="GBPUSD"), QUOTE, 0.0, RejectReason.UNKNOWN_SYMBOL),
    ("symbol-case-matters", new(symbol="eurusd"), QUOTE, 0.0, RejectReason.UNKNOWN_SYMBOL),
    ("quantity-limit", new(quantity=10.5, price=1.0), QUOTE, 0.0, RejectReason.QUANTITY_LIMIT),
    ("above-band", new(price=1.06), QUOTE, 0.0, RejectReason.PRICE_BAND),
    ("below-band", new(price=0.94), QUOTE, 0.0, RejectReason.PRICE_BAND),
    ("limit-no-market-data", new(price=1.0), None, 0.0, RejectReason.PRICE_BAND),
    ("market-no-market-data", market(), None, 0.0, RejectReason.PRICE_BAND),
    ("market-one-sided-quote", market(), (1.0, 0.0), 0.0, RejectReason.PRICE_BAND),
    ("market-zero-quote", market(), (0.0, 0.0), 0.0, RejectReason.PRICE_BAND),
    ("market-crossed-quote", market(), (1.02, 1.01), 0.0, RejectReason.PRICE_BAND),
    ("exposure-over-limit", new(quantity=10.0, price=1.0), QUOTE, 90.5,
     RejectReason.EXPOSURE_LIMIT),
    ("market-valued-at-mid-up-to-limit", market(quantity=10.0), (9.9, 10.1), 0.0, None),
    ("market-valued-at-mid-over-limit", market(quantity=10.0), (9.9, 10.1), 0.5,
     RejectReason.EXPOSURE_LIMIT),
    ("limit-exposure-at-limit-price", new(quantity=10.0, price=10.4), (9.9, 10.1), 0.0,
     RejectReason.EXPOSURE_LIMIT),
    # order of checks: the first failing one wins
    ("unknown-symbol-before-quantity", new(symbol="GBPUSD", quantity=50.0), None, 1e9,
     RejectReason.UNKNOWN_SYMBOL),
    ("quantity-before-band", new(quantity=50.0, price=9.0), QUOTE, 0.0,
     RejectReason.QUANTITY_LIMIT),
    ("band-before-exposure", new(price=9.0), QUOTE, 1e9, RejectReason.PRICE_BAND),
]


@pytest.mark.parametrize(("o", "quote", "exposure", "expected"), [v[1:] for v in VALIDATE],
                         ids=[v[0] for v in VALIDATE])
def test_validate(o: NewOrder, quote: tuple[float, float] | None, exposure: float,
                  expected: RejectReason | None) -> None:
    assert validate(o, limits=LIMITS, last_bid_ask=quote, exposure=exposure) is expected


def test_validate_cases_cover_every_reason_it_can_produce() -> None:
    produced = {v[4] for v in VALIDATE}
    assert produced == {None, RejectReason.UNKNOWN_SYMBOL, RejectReason.QUANTITY_LIMIT,
                        RejectReason.PRICE_BAND, RejectReason.EXPOSURE_LIMIT}


# (id, target, request, exposure of the account's other orders, expected)
REPLACE_LIMITS: list[tuple[str, Order, ReplaceOrder, float, RejectReason | None]] = [
    ("ok", order(S.ROUTED), amend(2.0, 1.0), 0.0, None),
    ("market-ok", MARKET_ROUTED, amend(2.0, None), 0.0, None),
    ("quantity-limit-on-the-total", order(S.PARTIALLY_FILLED, 5.0, 1.0, quantity=6.0),
     amend(10.5, 1.0), 0.0, RejectReason.QUANTITY_LIMIT),
    ("band", order(S.ROUTED), amend(2.0, 1.06), 0.0, RejectReason.PRICE_BAND),
    ("no-quote", order(S.ROUTED), amend(2.0, 1.0), 0.0, RejectReason.PRICE_BAND),
    # exposure counts what is left to fill: 9 filled of 10, 1 left at 1.0 on top of 99
    ("exposure-counts-leaves", order(S.PARTIALLY_FILLED, 9.0, 1.0, quantity=9.5),
     amend(10.0, 1.0), 99.0, None),
    ("exposure-limit", order(S.ROUTED), amend(10.0, 1.0), 91.0, RejectReason.EXPOSURE_LIMIT),
]


@pytest.mark.parametrize(("target", "req", "exposure", "expected"),
                         [r[1:] for r in REPLACE_LIMITS], ids=[r[0] for r in REPLACE_LIMITS])
def test_validate_replace(target: Order, req: ReplaceOrder, exposure: float,
                          expected: RejectReason | None) -> None:
    quote = None if expected is RejectReason.PRICE_BAND and req.price == 1.0 else QUOTE
    assert validate_replace(target, req, limits=LIMITS, last_bid_ask=quote,
                            exposure=exposure) is expected


def test_validate_refuses_a_bad_exposure_argument() -> None:
    with pytest.raises(ValueError, match="exposure"):
        validate(new(), limits=LIMITS, last_bid_ask=QUOTE, exposure=-1.0)


@pytest.mark.parametrize("changes, message", [
    ({"symbols": {"EURUSD"}}, "frozenset"),
    ({"symbols": frozenset({"EUR\x00"})}, "control character"),
    ({"max_quantity": 0.0}, "max_quantity must be > 0"),
    ({"price_band": -0.1}, "price_band must be >= 0"),
    ({"max_exposure_per_account": float("nan")}, "max_exposure_per_account must be finite"),
], ids=["set-not-frozenset", "bad-symbol", "zero-max-quantity", "negative-band", "nan-exposure"])
def test_bad_limits_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(LIMITS, **changes)


def test_the_price_band_and_the_executor_share_one_quote_rule() -> None:
    from protocols.orders.risk import usable_quote
    order = new(type=OrderType.MARKET, price=None)
    for bid, ask in ((0.0, 1.0), (1.2, 1.1), (float("nan"), 1.0), (1.0, float("inf"))):
        assert usable_quote(bid, ask) is None
        assert validate(order, limits=LIMITS, last_bid_ask=(bid, ask),
                        exposure=0.0) is RejectReason.PRICE_BAND
