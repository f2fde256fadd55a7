"""An EA instance's tag index (sans-I/O): what its terminal holds of each tickmesh order.

Built at reconciliation from the terminal's own record (``orders_get``, ``history_orders_get``,
``history_deals_get``: docs/PROTOCOL.md section 18.4) and kept up to date with every send and
every change the instance sees since. It answers the one question that must never be answered
wrongly: *has the terminal seen this order?* (:meth:`TagIndex.seen`), and gives an order's
facts (:meth:`TagIndex.facts`: status, ticket, price, deals) for the executor.

``covers_from_msc`` is the oldest moment the index has read the terminal's history from: an
order routed before it cannot be judged unseen until the history is read back further.

An order sent and not answered (the terminal died mid-call) is *in doubt*: it counts as seen,
so it is not sent again until a later read of the terminal settles it (:meth:`settle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.ea.messages import Deal, FactStatus, OrderFacts
from protocols.ea.mt5 import (
    DealType,
    OrderSendResult,
    OrderStateMt5,
    Retcode,
    TradeDeal,
    TradeOrder,
    order_id_of,
)

_FINAL = {OrderStateMt5.FILLED: FactStatus.FILLED, OrderStateMt5.CANCELED: FactStatus.CANCELLED,
          OrderStateMt5.EXPIRED: FactStatus.CANCELLED,
          OrderStateMt5.REJECTED: FactStatus.REJECTED,
          # A finished order that was partly filled and then stopped (MT5 keeps PARTIAL in the
          # history of an order whose rest was removed).
          OrderStateMt5.PARTIAL: FactStatus.CANCELLED}


@dataclass(slots=True)
class Tagged:
    """One tickmesh order at the terminal."""

    order_id: str
    status: FactStatus | None = None  # None: sent, no answer yet (in doubt)
    ticket: int = 0
    price: float = 0.0
    retcode: int = 0
    setup_msc: int = 0
    deals: dict[int, Deal] = field(default_factory=dict)

    def facts(self) -> OrderFacts:
        status = FactStatus.WORKING if self.status is None else self.status
        return OrderFacts(self.order_id, status, self.ticket, self.price, self.retcode,
                          tuple(self.deals[t] for t in sorted(self.deals)))


class TagIndex:
    """Tickmesh order id -> what the terminal holds of it."""

    def __init__(self) -> None:
        self.orders: dict[str, Tagged] = {}
        self._by_ticket: dict[int, str] = {}
        self.magics: dict[int, str] = {}  # magic -> order id, for ids longer than a comment
        self.covers_from_msc: int | None = None  # None: nothing read yet
        self.foreign = 0  # terminal orders and deals not tickmesh's (left alone)
        self.unknown_deals = 0  # tagged deals of an order the terminal record lacks
        self.twice: set[str] = set()  # ids with two terminal orders (must stay empty)
        self.deals = 0  # deals of tickmesh orders taken in (from reads and from sends)

    # --- reading the terminal -----------------------------------------------------------------

    def covered(self, from_msc: int) -> None:
        """The history from ``from_msc`` on has been read in."""
        if self.covers_from_msc is None or from_msc < self.covers_from_msc:
            self.covers_from_msc = from_msc

    def covers(self, routed_ms: int) -> bool:
        """Whether an order routed at ``routed_ms`` (0: unknown) is inside what was read."""
        return (self.covers_from_msc is not None and routed_ms > 0
                and routed_ms >= self.covers_from_msc)

    def on_order(self, o: TradeOrder, *, active: bool) -> str | None:
        """Take a terminal order (active: in ``orders_get``); the id changed, or None."""
        oid = self.id_of(o.ticket, o.magic, o.comment)
        if oid is None:
            self.foreign += 1
            return None
        t = self._tagged(oid)
        if t.ticket and o.ticket != t.ticket:
            # Two terminal orders tagged with one id: reported (the drill counts this as sent
            # twice); the index keeps the one that was taken.
            self.twice.add(oid)
            if t.status is not FactStatus.REJECTED:
                return None
        status = FactStatus.WORKING if active else _FINAL.get(o.state, FactStatus.WORKING)
        before = (t.status, t.ticket, t.price)
        t.status, t.ticket, t.price, t.setup_msc = status, o.ticket, o.price_open, \
            o.time_setup_msc
        self._by_ticket[o.ticket] = oid
        return oid if (t.status, t.ticket, t.price) != before else None

    def on_deal(self, d: TradeDeal) -> str | None:
        """Take a terminal deal; the order id it changed, or None (known, or not ours)."""
        if d.type not in (DealType.BUY, DealType.SELL):
            return None  # a balance or credit entry: not a trade
        oid = self._by_ticket.get(d.order) or self.id_of(d.order, d.magic, d.comment)
        if oid is None:
            self.foreign += 1
            return None
        t = self._tagged(oid)
        if d.ticket in t.deals:
            return None
        if not t.ticket:
            self.unknown_deals += 1  # a deal of an order the index has no terminal order of
        t.deals[d.ticket] = Deal(d.ticket, d.volume, d.price, d.time_msc)
        self.deals += 1
        return oid

    # --- the instance's own sends -------------------------------------------------------------

    def seen(self, order_id: str) -> bool:
        return order_id in self.orders

    def sending(self, order_id: str, magic: int, price: float = 0.0, at_msc: int = 0) -> None:
        """About to call ``order_send`` for ``order_id`` (a pending order at ``price``, at
        ``at_msc``: reads of its record later start about there): it counts as seen from now
        on."""
        self.magics[magic] = order_id
        t = self.orders.setdefault(order_id, Tagged(order_id))
        t.price, t.setup_msc = price, t.setup_msc or at_msc

    def sent(self, order_id: str, result: OrderSendResult, *, time_msc: int,
             final_reject: bool) -> None:
        """Take ``order_send``'s answer. ``final_reject``: a refusal the instance will not
        retry (the order is REJECTED); a transient one leaves it unsent (forgotten)."""
        t = self.orders[order_id]
        t.retcode = result.retcode
        if result.order:
            t.ticket = result.order
            self._by_ticket[result.order] = order_id
        if result.deal and result.volume > 0 and result.deal not in t.deals:
            t.deals[result.deal] = Deal(result.deal, result.volume, result.price, time_msc)
            self.deals += 1
        if result.retcode == Retcode.DONE and result.deal:
            t.status = FactStatus.FILLED  # a market order executed in full
        elif result.retcode in (Retcode.DONE, Retcode.DONE_PARTIAL, Retcode.PLACED):
            t.status = FactStatus.WORKING  # resting, or the rest of a partial fill
        elif final_reject:
            t.status = FactStatus.REJECTED
        else:
            del self.orders[order_id]  # not taken: free to send again

    def in_doubt(self) -> list[str]:
        """Orders sent without an answer (the terminal did not reply)."""
        return [oid for oid, t in self.orders.items() if t.status is None]

    def settle(self, order_id: str) -> None:
        """A read of the terminal after the doubt found no trace of ``order_id``: never
        taken, free to send again."""
        t = self.orders.get(order_id)
        if t is not None and t.status is None and not t.ticket and not t.deals:
            del self.orders[order_id]

    def facts(self, order_id: str) -> OrderFacts:
        return self.orders[order_id].facts()

    def working(self) -> list[Tagged]:
        return [t for t in self.orders.values() if t.status is FactStatus.WORKING]

    # --- internals -------------------------------------------------------------------------

    def id_of(self, ticket: int, magic: int, comment: str) -> str | None:
        """The tickmesh order id of a terminal order (or a deal's order), None if foreign."""
        return self._by_ticket.get(ticket) or order_id_of(magic, comment, self.magics)

    def _tagged(self, oid: str) -> Tagged:
        t = self.orders.get(oid)
        if t is None:
            t = self.orders[oid] = Tagged(oid)
        return t


__all__ = ["TagIndex", "Tagged"]
