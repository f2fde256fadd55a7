"""Performance reports from the orders and executions tables (sans-I/O).

Inputs are :class:`~protocols.history.schema.Columns` of ``Table.ORDERS`` (every stored
version of each order) and ``Table.EXECUTIONS`` (the execution-log entries). Rules:

- **A fill** is an execution-log entry with ``last_quantity > 0`` (acknowledgements, cancels,
  replaces and rejections carry 0). An entry stored twice (same ``(order_id, seq)``) counts
  once. Fills are taken in ``(transact_ns, order_id, seq)`` order.
- **Positions and P&L use average cost** (a netting position per account and symbol, as MT5's
  netting accounts and most FX books keep them): a fill that adds to the position moves its
  average price; a fill that reduces it realizes ``(price - average) * quantity`` (negated for
  a short) and leaves the average unchanged; a fill that crosses zero closes the old side and
  opens the rest at the fill price. Amounts are price * quantity (no contract size), and the
  position starts flat at the first fill given: a report over a range reads P&L of that range.
  **Unrealized** P&L is ``position * (mark - average)`` at a mark price given per symbol
  (None when no mark is given and the position is open).
- **Slippage** of a fill is against the quote the historian held when the order was first
  stored (``quote_bid``/``quote_ask`` of its first version): ``price - ask`` for a buy,
  ``bid - price`` for a sell, so positive is worse for the trader, in price units. The
  average is weighted by fill quantity. An order without that side's quote (0), or whose
  order record is not among the orders given, is left out and counted (``no_quote``).
- **Latency** per order, in ms, from the order's first stored version: *ack* is placed
  (``sent_ns``, the client's clock) to acknowledged (that version's ``updated_ns``); *fill*
  is placed to each fill's ``transact_ns``. Grouped by the UTC hour of the first version
  (:func:`protocols.history.bars.bucket_start` at 3600 s) with a total row; percentiles are
  nearest rank (:mod:`protocols.stats`). Orders with no ``sent_ns`` are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocols.history.bars import bucket_start
from protocols.history.schema import Columns, Table
from protocols.orders.messages import Side
from protocols.stats import percentiles

__all__ = [
    "LATENCY_QUANTILES",
    "LatencyRow",
    "LatencyStats",
    "SymbolReport",
    "latency_report",
    "performance_report",
]

LATENCY_QUANTILES = (0.5, 0.9, 0.99, 1.0)
_NS_PER_MS = 1_000_000
_EPS = 1e-12  # quantities at or below this are zero (float sums of partial fills)


@dataclass(frozen=True, slots=True)
class _Fill:
    order_id: str
    seq: int
    account: str
    symbol: str
    side: Side
    quantity: float
    price: float
    transact_ns: int


@dataclass(frozen=True, slots=True)
class _FirstVersion:
    account: str
    updated_ns: int
    sent_ns: int
    quote_bid: float
    quote_ask: float


@dataclass(slots=True)
class SymbolReport:
    """One account's trading in one symbol (see the module rules)."""

    account: str
    symbol: str
    fills: int = 0
    volume: float = 0.0
    position: float = 0.0  # signed: > 0 long
    avg_price: float = 0.0  # of the open position (0 when flat)
    realized_pnl: float = 0.0
    unrealized_pnl: float | None = 0.0
    slippage_avg: float | None = None  # price units, positive = worse for the trader
    slippage_fills: int = 0
    no_quote: int = 0
    _slip_qty: float = field(default=0.0, repr=False)
    _slip_sum: float = field(default=0.0, repr=False)

    def add_fill(self, side: Side, quantity: float, price: float) -> None:
        self.fills += 1
        self.volume += quantity
        signed = quantity if side is Side.BUY else -quantity
        if self.position * signed >= 0:  # opens or adds
            total = self.position + signed
            self.avg_price = (self.avg_price * abs(self.position) + price * quantity) / abs(total)
            self.position = total
            return
        closing = min(quantity, abs(self.position))
        direction = 1.0 if self.position > 0 else -1.0
        self.realized_pnl += (price - self.avg_price) * closing * direction
        self.position += closing * -direction
        rest = quantity - closing
        if rest > _EPS:  # crossed zero: the rest opens the other side at this price
            self.position, self.avg_price = rest * -direction, price
        elif abs(self.position) <= _EPS:
            self.position, self.avg_price = 0.0, 0.0

    def add_slippage(self, slippage: float, quantity: float) -> None:
        self._slip_sum += slippage * quantity
        self._slip_qty += quantity
        self.slippage_fills += 1
        self.slippage_avg = self._slip_sum / self._slip_qty

    def mark(self, price: float | None) -> None:
        if self.position == 0:
            self.unrealized_pnl = 0.0
        elif price is None:
            self.unrealized_pnl = None
        else:
            self.unrealized_pnl = self.position * (price - self.avg_price)

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "symbol": self.symbol, "fills": self.fills,
                "volume": self.volume, "position": self.position, "avg_price": self.avg_price,
                "realized_pnl": self.realized_pnl, "unrealized_pnl": self.unrealized_pnl,
                "slippage_avg": self.slippage_avg, "slippage_fills": self.slippage_fills,
                "no_quote": self.no_quote}


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Nearest-rank percentiles of one latency, in ms (None when there are no samples)."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, samples_ms: list[float]) -> LatencyStats:
        qs = percentiles(samples_ms, LATENCY_QUANTILES)
        if qs is None:
            return cls(0, None, None, None, None)
        return cls(len(samples_ms), *qs)


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """Order latencies of the orders first stored in one UTC hour (``hour_ns`` None: all)."""

    hour_ns: int | None
    ack: LatencyStats
    fill: LatencyStats


def _first_versions(orders: Columns) -> dict[str, _FirstVersion]:
    if orders.table is not Table.ORDERS:
        raise ValueError(f"not orders: {orders.table.value}")
    first: dict[str, tuple[tuple[int, int], _FirstVersion]] = {}
    c = orders.data
    for i, oid in enumerate(c["order_id"]):
        rank = (c["updated_ns"][i], c["src"][i])
        if oid not in first or rank < first[oid][0]:
            first[oid] = (rank, _FirstVersion(c["account"][i], c["updated_ns"][i],
                                              c["sent_ns"][i], c["quote_bid"][i],
                                              c["quote_ask"][i]))
    return {oid: v for oid, (_, v) in first.items()}


def _fills(executions: Columns) -> list[_Fill]:
    if executions.table is not Table.EXECUTIONS:
        raise ValueError(f"not executions: {executions.table.value}")
    c = executions.data
    seen: set[tuple[str, int]] = set()
    out: list[_Fill] = []
    for i, oid in enumerate(c["order_id"]):
        key = (oid, c["seq"][i])
        if c["last_quantity"][i] <= 0 or key in seen:
            continue
        seen.add(key)
        out.append(_Fill(oid, c["seq"][i], c["account"][i], c["symbol"][i], Side(c["side"][i]),
                         c["last_quantity"][i], c["last_price"][i], c["transact_ns"][i]))
    out.sort(key=lambda f: (f.transact_ns, f.order_id, f.seq))
    return out


def _slippage(side: Side, price: float, quote: _FirstVersion) -> float | None:
    if side is Side.BUY:
        return price - quote.quote_ask if quote.quote_ask > 0 else None
    return quote.quote_bid - price if quote.quote_bid > 0 else None


def performance_report(orders: Columns, executions: Columns,
                       marks: Mapping[str, float] | None = None) -> list[SymbolReport]:
    """Fills, volume, P&L and slippage per (account, symbol), sorted by account then symbol.

    ``marks``: the price per symbol that open positions are valued at (unrealized P&L).
    """
    first = _first_versions(orders)
    reports: dict[tuple[str, str], SymbolReport] = {}
    no_quote: dict[tuple[str, str], set[str]] = {}
    for f in _fills(executions):
        key = (f.account, f.symbol)
        rep = reports.get(key)
        if rep is None:
            rep = reports[key] = SymbolReport(f.account, f.symbol)
        rep.add_fill(f.side, f.quantity, f.price)
        quote = first.get(f.order_id)
        slip = None if quote is None else _slippage(f.side, f.price, quote)
        if slip is None:
            no_quote.setdefault(key, set()).add(f.order_id)
        else:
            rep.add_slippage(slip, f.quantity)
    for key, rep in reports.items():
        rep.no_quote = len(no_quote.get(key, ()))
        rep.mark((marks or {}).get(rep.symbol))
    return [reports[k] for k in sorted(reports)]


def latency_report(orders: Columns, executions: Columns) -> list[LatencyRow]:
    """Placed → acknowledged and placed → each fill, per UTC hour of the orders' first
    version (oldest first), then one row over all of them (``hour_ns`` None)."""
    first = {oid: v for oid, v in _first_versions(orders).items() if v.sent_ns > 0}
    ack: dict[int, list[float]] = {}
    fill: dict[int, list[float]] = {}
    for v in first.values():
        hour = bucket_start(v.updated_ns, 3600)
        ack.setdefault(hour, []).append((v.updated_ns - v.sent_ns) / _NS_PER_MS)
        fill.setdefault(hour, [])
    for f in _fills(executions):
        order = first.get(f.order_id)
        if order is not None:
            fill[bucket_start(order.updated_ns, 3600)].append(
                (f.transact_ns - order.sent_ns) / _NS_PER_MS)
    rows = [LatencyRow(h, LatencyStats.of(ack[h]), LatencyStats.of(fill[h])) for h in sorted(ack)]
    rows.append(LatencyRow(None, LatencyStats.of(_flat(ack.values())),
                           LatencyStats.of(_flat(fill.values()))))
    return rows


def _flat(lists: Iterable[list[float]]) -> list[float]:
    return [x for xs in lists for x in xs]
