"""MetaTrader 5's trade vocabulary, without I/O: the constants and record shapes of the
``MetaTrader5`` Python package, and how a tickmesh order is tagged at the terminal.

The values are MT5's own (``TRADE_RETCODE_*``, ``TRADE_ACTION_*``, ``ORDER_TYPE_*``, ...), so a
record read from the real terminal and one from tickmesh's simulated terminal
(``nodes.ea.simterm``) are the same thing. The dataclasses hold the fields tickmesh reads of
MT5's named tuples (``Tick``, ``TradeOrder``, ``TradePosition``, ``TradeDeal``,
``OrderSendResult``); the real package's tuples have more, which the adapter
(``bus.ea.mt5``) drops.

Tagging (docs/PROTOCOL.md section 18): every order tickmesh sends carries its tickmesh order
id twice: as the order's ``comment`` (MT5 keeps at most 31 characters of it) and as a 63-bit
hash of the id in ``magic`` (:func:`magic_of`). A terminal order is tickmesh's when the two
agree (:func:`order_id_of`); a manual trade or another EA's order does not, and is left alone.
The terminal's own history is then the record of what was really sent to the broker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

COMMENT_CHARS = 31  # MT5 keeps this many characters of an order's comment


class Retcode(IntEnum):
    """``TRADE_RETCODE_*``: the answer of ``order_send``."""

    REQUOTE = 10004
    REJECT = 10006
    CANCEL = 10007
    PLACED = 10008
    DONE = 10009
    DONE_PARTIAL = 10010
    ERROR = 10011
    TIMEOUT = 10012
    INVALID = 10013
    INVALID_VOLUME = 10014
    INVALID_PRICE = 10015
    INVALID_STOPS = 10016
    TRADE_DISABLED = 10017
    MARKET_CLOSED = 10018
    NO_MONEY = 10019
    PRICE_CHANGED = 10020
    PRICE_OFF = 10021
    INVALID_EXPIRATION = 10022
    ORDER_CHANGED = 10023
    TOO_MANY_REQUESTS = 10024
    NO_CHANGES = 10025
    SERVER_DISABLES_AT = 10026
    CLIENT_DISABLES_AT = 10027
    LOCKED = 10028
    FROZEN = 10029
    INVALID_FILL = 10030
    CONNECTION = 10031
    ONLY_REAL = 10032
    LIMIT_ORDERS = 10033
    LIMIT_VOLUME = 10034
    INVALID_ORDER = 10035
    POSITION_CLOSED = 10036

    @property
    def accepted(self) -> bool:
        """The request was taken: executed (in full or part) or placed."""
        return self in (Retcode.PLACED, Retcode.DONE, Retcode.DONE_PARTIAL)

    @property
    def transient(self) -> bool:
        """The request was not taken but may be sent again unchanged a moment later (a new
        price, a busy server): the EA retries these a bounded number of times."""
        return self in _TRANSIENT


_TRANSIENT = frozenset({Retcode.REQUOTE, Retcode.PRICE_CHANGED, Retcode.PRICE_OFF,
                        Retcode.TOO_MANY_REQUESTS, Retcode.TIMEOUT, Retcode.CONNECTION,
                        Retcode.LOCKED})


def retcode_name(code: int) -> str:
    """``TRADE_RETCODE_...`` for a known code, ``"retcode N"`` for one this module lacks."""
    try:
        return f"TRADE_RETCODE_{Retcode(code).name}"
    except ValueError:
        return f"retcode {code}"


class Action(IntEnum):
    """``TRADE_ACTION_*``."""

    DEAL = 1  # a market order
    PENDING = 5  # a pending (limit) order
    SLTP = 6
    MODIFY = 7  # new price of a pending order (MT5 cannot change its volume)
    REMOVE = 8  # cancel a pending order


class OrderType(IntEnum):
    """``ORDER_TYPE_*`` (the ones tickmesh sends)."""

    BUY = 0
    SELL = 1
    BUY_LIMIT = 2
    SELL_LIMIT = 3

    @property
    def buy(self) -> bool:
        return self in (OrderType.BUY, OrderType.BUY_LIMIT)


class Filling(IntEnum):
    """``ORDER_FILLING_*``: FOK all or nothing, IOC what is there now, RETURN the rest stays."""

    FOK = 0
    IOC = 1
    RETURN = 2


class OrderStateMt5(IntEnum):
    """``ORDER_STATE_*``."""

    STARTED = 0
    PLACED = 1
    CANCELED = 2
    PARTIAL = 3
    FILLED = 4
    REJECTED = 5
    EXPIRED = 6


class DealType(IntEnum):
    """``DEAL_TYPE_*`` (buy and sell; balance and other bookkeeping deals are not trades)."""

    BUY = 0
    SELL = 1
    BALANCE = 2


class DealEntry(IntEnum):
    """``DEAL_ENTRY_*``."""

    IN = 0
    OUT = 1
    INOUT = 2
    OUT_BY = 3


@dataclass(frozen=True, slots=True)
class Tick:
    """``MqlTick`` as ``symbol_info_tick`` and ``copy_ticks_from`` give it."""

    time_msc: int
    bid: float
    ask: float
    last: float = 0.0
    volume: float = 0.0


@dataclass(frozen=True, slots=True)
class TradeRequest:
    """``MqlTradeRequest``: what ``order_send`` takes."""

    action: Action
    symbol: str
    volume: float = 0.0
    type: OrderType = OrderType.BUY
    price: float = 0.0
    deviation: int = 0  # points a market order may slip before it is requoted
    type_filling: Filling = Filling.RETURN
    magic: int = 0
    comment: str = ""
    order: int = 0  # the ticket of the pending order MODIFY and REMOVE act on


@dataclass(frozen=True, slots=True)
class OrderSendResult:
    """``MqlTradeResult``: ``order_send``'s answer. ``deal`` is the ticket of the deal a market
    order made (0: none), ``order`` the ticket of the order (0: none was made)."""

    retcode: int
    deal: int = 0
    order: int = 0
    volume: float = 0.0
    price: float = 0.0
    bid: float = 0.0
    ask: float = 0.0
    comment: str = ""


@dataclass(frozen=True, slots=True)
class TradeOrder:
    """An order (``orders_get``: active ones; ``history_orders_get``: finished ones)."""

    ticket: int
    time_setup_msc: int
    type: OrderType
    state: OrderStateMt5
    magic: int
    volume_initial: float
    volume_current: float  # what is left to fill
    price_open: float
    symbol: str
    comment: str
    time_done_msc: int = 0


@dataclass(frozen=True, slots=True)
class TradePosition:
    """A position (``positions_get``): a netting account has one per symbol."""

    ticket: int
    symbol: str
    type: OrderType  # BUY or SELL
    volume: float
    price_open: float
    magic: int = 0


@dataclass(frozen=True, slots=True)
class TradeDeal:
    """A deal (``history_deals_get``): one execution of an order at the broker."""

    ticket: int
    order: int  # the ticket of the order it executed
    time_msc: int
    type: DealType
    entry: DealEntry
    magic: int
    volume: float
    price: float
    symbol: str
    comment: str


def magic_of(order_id: str) -> int:
    """The magic number tagging tickmesh order ``order_id``: 63 bits of its BLAKE2b hash
    (MT5's magic is an unsigned 64-bit field; 63 bits keep it a signed int everywhere)."""
    digest = hashlib.blake2b(order_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def comment_of(order_id: str) -> str:
    """The order comment tagging ``order_id`` (its first :data:`COMMENT_CHARS` characters)."""
    return order_id[:COMMENT_CHARS]


def order_id_of(magic: int, comment: str, known: dict[int, str] | None = None) -> str | None:
    """The tickmesh order id a terminal order or deal is tagged with, or None if it is not
    tickmesh's. ``known`` maps magic numbers of ids longer than the comment keeps (the EA's
    own record of what it sent); a comment that hashes to ``magic`` names the id itself."""
    if known is not None and magic in known:
        return known[magic]
    if comment and magic_of(comment) == magic:
        return comment
    return None


__all__ = [
    "COMMENT_CHARS",
    "Action",
    "DealEntry",
    "DealType",
    "Filling",
    "OrderSendResult",
    "OrderStateMt5",
    "OrderType",
    "Retcode",
    "Tick",
    "TradeDeal",
    "TradeOrder",
    "TradePosition",
    "TradeRequest",
    "comment_of",
    "magic_of",
    "order_id_of",
    "retcode_name",
]
