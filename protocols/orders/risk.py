"""Pre-trade checks: the limits, the one rule for a usable quote, and the checks of a new order
and of a replace's new terms (sans-I/O).

Checks run in this order: symbol, quantity limit, market data and band, exposure. Without a
usable two-sided quote (:func:`usable_quote`) every order is refused with PRICE_BAND.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocols.orders.fields import above, not_negative
from protocols.orders.messages import NewOrder, RejectReason, ReplaceOrder
from protocols.orders.record import Order
from protocols.ticks.messages import check_stream

# --- pre-trade checks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Pre-trade limits.

    ``price_band`` is a fraction: 0.05 means a LIMIT price must lie within 5 % of the mid of
    the last tick (inclusive). ``max_exposure_per_account`` bounds an account's exposure: the
    sum over its open orders (and the new orders being stored, this one included) of what is
    left to fill times the limit price, ``leaves_quantity x price`` in the units of the limit
    (lots x price, no contract size). Buys and sells add up (a sell does not offset a buy);
    filled quantities (positions) are not counted. A MARKET order is valued at the mid while it
    is checked and counts 0 once open (it fills at once or is rejected).
    """

    symbols: frozenset[str]
    max_quantity: float
    price_band: float
    max_exposure_per_account: float

    def __post_init__(self) -> None:
        if not isinstance(self.symbols, frozenset):
            raise ValueError("symbols must be a frozenset")
        for s in self.symbols:
            check_stream(s)
        for name in ("max_quantity", "price_band", "max_exposure_per_account"):
            not_negative(name, getattr(self, name))
        if self.max_quantity <= 0:
            raise ValueError("max_quantity must be > 0")


Quote = tuple[float, float]  # (bid, ask) of a usable two-sided tick


def usable_quote(bid: float, ask: float) -> Quote | None:
    """``(bid, ask)`` if both are finite prices with ``0 < bid <= ask``, else None: the one
    rule for a quote that prices orders, in the backend's checks and the executor's fills."""
    if math.isfinite(bid) and math.isfinite(ask) and 0 < bid <= ask:
        return bid, ask
    return None


def _mid(last_bid_ask: tuple[float, float] | None) -> float | None:
    """The mid of a usable two-sided quote, else None."""
    quote = None if last_bid_ask is None else usable_quote(*last_bid_ask)
    return None if quote is None else (quote[0] + quote[1]) / 2


def validate(order: NewOrder, *, limits: Limits, last_bid_ask: tuple[float, float] | None,
             exposure: float) -> RejectReason | None:
    """Pre-trade checks of a well-formed order; None if it may be accepted.

    ``last_bid_ask`` is the last tick's quote of the order's symbol, or None if there is none
    (pass None for a quote too old to trust too). Without a usable two-sided quote every order
    is refused with PRICE_BAND: a LIMIT price has no band to sit in and a MARKET order has
    nothing to be priced at. ``exposure`` is the account's current exposure (see
    :class:`Limits`); a MARKET order's notional is valued at the mid.

    Checks run in this order: symbol, quantity limit, market data and band, exposure.
    """
    if order.symbol not in limits.symbols:
        return RejectReason.UNKNOWN_SYMBOL
    return _check_terms(order.quantity, order.quantity, order.price, limits=limits,
                        last_bid_ask=last_bid_ask, exposure=exposure)


def validate_replace(target: Order, request: ReplaceOrder, *, limits: Limits,
                     last_bid_ask: tuple[float, float] | None, exposure: float
                     ) -> RejectReason | None:
    """Pre-trade checks of a replace's new terms, after :func:`check_amend` passed.

    The same checks as :func:`validate` on the new total quantity and price; ``exposure`` is
    the account's exposure *without* ``target``, and the replaced order adds what it would
    still have to fill (the new quantity minus its filled part)."""
    leaves = request.quantity - target.filled_quantity
    return _check_terms(request.quantity, leaves, request.price, limits=limits,
                        last_bid_ask=last_bid_ask, exposure=exposure)


def _check_terms(quantity: float, leaves: float, limit_price: float | None, *, limits: Limits,
                 last_bid_ask: tuple[float, float] | None, exposure: float
                 ) -> RejectReason | None:
    if not math.isfinite(exposure) or exposure < 0:
        raise ValueError(f"exposure must be finite and >= 0, got {exposure!r}")
    if above(quantity, limits.max_quantity):
        return RejectReason.QUANTITY_LIMIT
    mid = _mid(last_bid_ask)
    if mid is None:
        return RejectReason.PRICE_BAND
    price = mid if limit_price is None else limit_price
    if above(abs(price - mid), limits.price_band * mid):
        return RejectReason.PRICE_BAND
    if above(exposure + leaves * price, limits.max_exposure_per_account):
        return RejectReason.EXPOSURE_LIMIT
    return None


__all__ = [
    "Limits",
    "Quote",
    "usable_quote",
    "validate",
    "validate_replace",
]
