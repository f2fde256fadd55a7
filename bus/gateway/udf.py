"""TradingView's UDF over HTTP (docs/GATEWAY.md, section 8), and the bar query it shares with
the page: closed bars from the history store, the ones the gateway closed since (the store may
lag its historian by a batch), and the forming bar from the gateway's own builder.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from protocols.errors import StoreError
from protocols.gateway.symbols import EXCHANGE, search, symbol_info
from protocols.history.bars import RESOLUTIONS, Bar, bars_from_columns, parse_resolution
from protocols.history.schema import NS_PER_S

if TYPE_CHECKING:
    from bus.gateway.server import Gateway

__all__ = ["bars_between", "udf_routes"]

log = logging.getLogger(__name__)

MAX_COUNTBACK = 10_000  # bars in one answer at most: a chart asks again for more


def udf_routes(router: web.UrlDispatcher, gw: Gateway) -> None:
    async def config(request: web.Request) -> web.Response:
        return _cors(web.json_response({
            "supported_resolutions": list(RESOLUTIONS), "supports_search": True,
            "supports_group_request": False, "supports_marks": False,
            "supports_timescale_marks": False, "supports_time": True,
            "exchanges": [{"value": "", "name": "All", "desc": ""},
                          {"value": EXCHANGE, "name": EXCHANGE, "desc": "tickmesh"}],
            "symbols_types": [{"name": "All", "value": ""}, {"name": "Forex", "value": "forex"},
                              {"name": "Commodity", "value": "commodity"}]}))

    async def symbols(request: web.Request) -> web.Response:
        symbol = _symbol(gw, request.query.get("symbol", ""))
        if symbol is None:
            return _cors(web.json_response({"s": "error", "errmsg": "unknown symbol"},
                                           status=404))
        return _cors(web.json_response(symbol_info(symbol)))

    async def find(request: web.Request) -> web.Response:
        q = request.query
        limit = _int(q.get("limit", "30"), "limit", 0, 1000)
        return _cors(web.json_response(search(gw.symbols, q.get("query", ""), q.get("type", ""),
                                              q.get("exchange", ""), limit)))

    async def now(request: web.Request) -> web.Response:
        return _cors(web.Response(text=str(int(time.time()))))

    async def history(request: web.Request) -> web.Response:
        q = request.query
        symbol = _symbol(gw, q.get("symbol", ""))
        if symbol is None:
            return _cors(web.json_response({"s": "error", "errmsg": "unknown symbol"}))
        try:
            res_s = parse_resolution(q.get("resolution", ""))
        except ValueError as exc:
            return _cors(web.json_response({"s": "error", "errmsg": str(exc)}))
        start = _int(q.get("from", "0"), "from", 0, 2**40)
        end = _int(q.get("to", str(int(time.time()) + 1)), "to", 0, 2**40)
        countback = _int(q.get("countback", "0"), "countback", 0, MAX_COUNTBACK)
        try:
            answer = await udf_history(gw, symbol, res_s, start, end, countback)
        except StoreError as exc:
            log.info("gateway: UDF history unavailable: %s", exc)
            return _cors(web.json_response({"s": "error", "errmsg": "history unavailable"},
                                           status=503))
        return _cors(web.json_response(answer))

    for path, handler in (("config", config), ("symbols", symbols), ("search", find),
                          ("time", now), ("history", history)):
        router.add_get(f"/udf/{path}", handler)


def _cors(resp: web.Response) -> web.Response:
    # The Charting Library is often served from another origin than its datafeed; UDF is
    # read-only market data, so any origin may read it.
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


def _symbol(gw: Gateway, raw: str) -> str | None:
    name = raw.split(":", 1)[1] if raw.startswith(f"{EXCHANGE}:") else raw
    return name if name in gw.symbols else None


def _int(raw: str, name: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f'{{"s":"error","errmsg":"{name} must be an integer"}}',
                                 content_type="application/json") from None
    return min(max(value, lo), hi)


async def bars_between(gw: Gateway, symbol: str, res_s: int, start_ns: int, end_ns: int,
                       countback: int) -> list[Bar]:
    """Bars starting in ``[start_ns, end_ns)`` (``countback > 0``: the last ``countback``
    before ``end_ns``, whatever ``start_ns`` says), the forming one included, by start."""
    found: dict[int, Bar] = {}
    reader = gw.parts.reader
    if reader is not None:
        cols = await reader.bars(symbol, res_s, 0 if countback else start_ns, end_ns,
                                 countback=countback)
        found = {b.start_ns: b for b in bars_from_columns(cols)}
    trail = gw.parts.market.trails[symbol, res_s]
    for b in trail.closed_bars():
        if b.start_ns < end_ns:
            found[b.start_ns] = b
    forming = gw.parts.market.forming(symbol, res_s)
    if forming is not None and forming.start_ns < end_ns:
        found[forming.start_ns] = forming
    bars = [found[k] for k in sorted(found)]
    if countback:
        return bars[-countback:]
    return [b for b in bars if b.start_ns >= start_ns]


async def udf_history(gw: Gateway, symbol: str, res_s: int, start_s: int, end_s: int,
                      countback: int) -> dict[str, Any]:
    bars = await bars_between(gw, symbol, res_s, start_s * NS_PER_S, end_s * NS_PER_S,
                              countback)
    if not bars:
        older = await bars_between(gw, symbol, res_s, 0, start_s * NS_PER_S, 1) \
            if start_s > 0 else []
        if older:
            return {"s": "no_data", "nextTime": older[-1].start_ns // NS_PER_S}
        return {"s": "no_data"}
    return {"s": "ok", "t": [b.start_ns // NS_PER_S for b in bars],
            "o": [b.open for b in bars], "h": [b.high for b in bars],
            "l": [b.low for b in bars], "c": [b.close for b in bars],
            "v": [b.volume for b in bars]}
