"""What a chart needs to know of a symbol: TradingView's ``LibrarySymbolInfo`` (sans-I/O).

The mesh trades FX and metals quoted to the usual pip precision: five decimals, three for yen
crosses, two for gold and silver. A symbol the rule does not know gets five.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protocols.history.bars import RESOLUTIONS

__all__ = ["EXCHANGE", "search", "symbol_info"]

EXCHANGE = "TICKMESH"
_METALS = ("XAU", "XAG")


def _decimals(symbol: str) -> int:
    if symbol.startswith(_METALS):
        return 2
    if "JPY" in symbol:
        return 3
    return 5


def symbol_info(symbol: str) -> dict[str, Any]:
    """The ``LibrarySymbolInfo`` (and UDF ``/symbols`` answer) of ``symbol``."""
    kind = "commodity" if symbol.startswith(_METALS) else "forex"
    return {
        "name": symbol, "ticker": symbol, "full_name": f"{EXCHANGE}:{symbol}",
        "description": symbol, "type": kind, "session": "24x7", "exchange": EXCHANGE,
        "listed_exchange": EXCHANGE, "timezone": "Etc/UTC", "format": "price",
        "pricescale": 10 ** _decimals(symbol), "minmov": 1, "has_intraday": True,
        "has_seconds": True, "seconds_multipliers": ["1"], "has_daily": True,
        "has_weekly_and_monthly": False, "intraday_multipliers": ["1", "5", "15", "60"],
        "supported_resolutions": list(RESOLUTIONS), "volume_precision": 2,
        "data_status": "streaming",
    }


def search(symbols: Sequence[str], query: str, kind: str, exchange: str,
           limit: int) -> list[dict[str, Any]]:
    """UDF ``/search``: the symbols whose name contains ``query`` (any case)."""
    q = query.strip().upper()
    out = []
    for s in symbols:
        info = symbol_info(s)
        if q and q not in s.upper():
            continue
        if kind and kind != info["type"]:
            continue
        if exchange and exchange != EXCHANGE:
            continue
        out.append({"symbol": s, "full_name": info["full_name"], "description": s,
                    "exchange": EXCHANGE, "ticker": s, "type": info["type"]})
    return out[:max(0, limit)]
