"""The gateway's aiohttp application: the page, login, the WebSocket protocol, UDF.

    gw = Gateway(GatewayParts(...), GatewayOptions(...))
    await gw.start()      # listening
    ...
    await gw.close()

One event loop serves every client. The flush task runs every ``flush_ms``: it refreshes the
forming bars of the symbols that ticked, then writes each client its control frames and one
``batch`` built from its cursors (``bus.gateway.clients``). Requests (orders, snapshots) run as
tasks owned by their client, bounded per client; a request never holds the receive loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from bus.aio import cancel_and_wait
from bus.config import GatewaySection
from bus.gateway.clients import CLOSE_WAIT_S, Client, SharedNews, Subscription
from bus.gateway.market import MarketData
from bus.gateway.orders import OrderDesk
from bus.gateway.sessions import TOUCH_RETRY_S, SessionStore
from bus.gateway.udf import udf_routes
from bus.store.history_reader import HistoryReader
from protocols.errors import AuthError, BadRequest, StoreError
from protocols.gateway.auth import Users
from protocols.gateway.limits import TokenBucket
from protocols.gateway.streams import LatestValue
from protocols.gateway.wire import (
    PROTOCOL_VERSION,
    Cancel,
    Hello,
    Ping,
    Place,
    Position,
    Replace,
    StreamKind,
    Subscribe,
    Unsubscribe,
    decode_client,
    dumps,
    frame,
    item,
    parse_stream,
)

__all__ = ["WEB_ROOT", "Gateway", "GatewayOptions", "GatewayParts"]

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
WEB_FOLDERS = ("src", "vendor")
WEB_FILES = ("app.js", "style.css")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HELLO_TIMEOUT_S = 10.0
REQUESTS_PER_CLIENT = 64  # order requests and snapshots in service for one client at once
STATUS_EVERY_S = 1.0
CLOSE_AUTH = 4001  # "log in again" (docs/GATEWAY.md 7)
CLOSE_POLICY = 4008


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """This gateway's name and address; ``section`` holds the mesh's [gateway] limits."""

    name: str
    host: str
    port: int
    section: GatewaySection = field(default_factory=GatewaySection)
    history_store: str = "duckdb"
    web_root: Path = WEB_ROOT


@dataclass(slots=True)
class GatewayParts:
    users: Users
    sessions: SessionStore
    market: MarketData
    desk: OrderDesk | None
    reader: HistoryReader | None
    epoch: int


@dataclass(slots=True)
class GatewayStats:
    connections: int = 0
    refused: int = 0
    bad_frames: int = 0
    logins: int = 0
    login_failures: int = 0
    snapshots: int = 0
    resumed: int = 0
    resets: int = 0
    slow_closed: int = 0
    flushes: int = 0
    flush_max_ms: float = 0.0
    status_seq: int = 0


class Gateway:
    def __init__(self, parts: GatewayParts, options: GatewayOptions) -> None:
        self.parts = parts
        self.options = options
        self.limits = options.section
        self.stats = GatewayStats()
        self.clients: set[Client] = set()
        # Order items as JSON, encoded once for every client (the last retention_count).
        self._order_json: OrderedDict[int, str] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._login_buckets: dict[str, TokenBucket] = {}
        self._unlisten: Callable[[], None] | None = None
        self._wake = asyncio.Event()  # set: flush now (an answer is waiting)
        self._status_value = LatestValue()
        self.app = self._app()

    # -- lifecycle -------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_message_bytes,
                              middlewares=[self._cors])
        r = app.router
        r.add_get("/", self._index)
        self._static(r)
        r.add_post("/api/login", self._login)
        r.add_post("/api/logout", self._logout)
        r.add_get("/api/gateways", self._gateways)
        r.add_get("/healthz", self._health)
        r.add_get("/ws", self._ws)
        udf_routes(r, self)
        return app

    def _static(self, r: web.UrlDispatcher) -> None:
        """The page's files: its modules and the vendored chart library, nothing else of
        web/ (its tests, node_modules and package files are not the page's)."""
        root = self.options.web_root
        for sub in WEB_FOLDERS:
            if (root / sub).is_dir():
                r.add_static(f"/web/{sub}/", root / sub, follow_symlinks=False)
        for name in WEB_FILES:
            if (root / name).is_file():
                r.add_get(f"/web/{name}", _file(root / name))

    async def start(self) -> None:
        desk = self.parts.desk
        if desk is not None:
            self._unlisten = desk.listen(self._on_order)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port,
                           reuse_address=True)
        await site.start()
        self._tasks = [asyncio.create_task(self._flusher(), name="gateway-flush"),
                       asyncio.create_task(self._status(), name="gateway-status")]
        log.info("gateway %s listening on http://%s:%d", self.options.name, self.options.host,
                 self.options.port)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks, what="gateway")
        if self._unlisten is not None:
            self._unlisten()
        await cancel_and_wait(list(self._writers), what="gateway writers")
        clients = list(self.clients)
        for c in clients:
            await cancel_and_wait(list(c.requests), what="gateway requests")
        await asyncio.gather(*(c.close(WSCloseCode.GOING_AWAY, "gateway stopping")
                               for c in clients))
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.parts.market.symbols

    # -- HTTP ------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        page = self.options.web_root / "index.html"
        if not page.is_file():
            return web.Response(status=503, text="the page is not installed: run ./scripts/up")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "gateway": self.options.name,
                                  "clients": len(self.clients)})

    async def _gateways(self, request: web.Request) -> web.Response:
        return web.json_response({"gateways": list(self.limits.urls),
                                  "self": f"http://{self.options.host}:{self.options.port}"})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text=dumps({"error": "bad_json",
                                                 "message": "the body must be JSON"}),
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise _http_error(web.HTTPBadRequest, "bad_request", "the body must be an object")
        return body

    async def _login(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        bucket = self._login_bucket(peer)
        if not bucket.allow(time.monotonic()):
            raise _http_error(web.HTTPTooManyRequests, "rate_limited",
                              "too many login attempts: wait a second")
        body = await self._body(request)
        users = self.parts.users
        try:
            if isinstance(body.get("api_key"), str):
                user = users.by_api_key(body["api_key"])
            elif isinstance(body.get("user"), str) and isinstance(body.get("password"), str):
                # scrypt is deliberately slow (tens of ms): off the event loop
                user = await asyncio.to_thread(users.authenticate, body["user"],
                                               body["password"])
            else:
                raise _http_error(web.HTTPBadRequest, "bad_request",
                                  'send {"user", "password"} or {"api_key"}')
            token, session = await self.parts.sessions.create(user)
        except AuthError as exc:
            self.stats.login_failures += 1
            log.info("gateway: login refused from %s: %s", peer, exc.reason)
            raise _http_error(web.HTTPUnauthorized, "auth_failed",
                              "unknown user or wrong credentials") from None
        except StoreError as exc:
            raise _http_error(web.HTTPServiceUnavailable, "unavailable",
                              f"the session store is unavailable: {exc}") from None
        self.stats.logins += 1
        return web.json_response({"token": token, "user": session.user,
                                  "accounts": list(session.accounts),
                                  "session": session.id,
                                  "ttl_s": self.parts.sessions.ttl_ms / 1000})

    def _login_bucket(self, peer: str) -> TokenBucket:
        bucket = self._login_buckets.get(peer)
        if bucket is None:
            if len(self._login_buckets) >= 10_000:  # bounded: forget everyone, start over
                self._login_buckets.clear()
            bucket = self._login_buckets[peer] = TokenBucket(5.0, 10.0)
        return bucket

    async def _logout(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise _http_error(web.HTTPBadRequest, "bad_request", 'send {"token"}')
        try:
            await self.parts.sessions.drop(token)
        except StoreError as exc:
            raise _http_error(web.HTTPServiceUnavailable, "unavailable", str(exc)) from None
        for c in [c for c in self.clients if c.token == token]:
            c.end(CLOSE_AUTH)
        return web.json_response({"ok": True})

    # -- WebSocket -------------------------------------------------------------------------

    def _origin_ok(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser (a bench client, a script): no CSRF to fear
            return True
        allowed = self.limits.origins or self.limits.urls
        return origin in allowed or origin == f"http://{request.host}"

    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """``/api/*`` for the pages of the mesh's other gateways (a page that failed over
        logs in again at the gateway it is on): CORS for the allowed origins only."""
        origin = request.headers.get("Origin")
        if not request.path.startswith("/api/") or origin is None \
                or not self._origin_ok(request):
            return await handler(request)
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                   "Access-Control-Allow-Headers": "Content-Type",
                   "Access-Control-Allow-Methods": "GET, POST"}
        if request.method == "OPTIONS":  # the preflight of a JSON POST
            return web.Response(status=204, headers=headers)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        resp.headers.update(headers)
        return resp

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not self._origin_ok(request):
            self.stats.refused += 1
            raise _http_error(web.HTTPForbidden, "origin",
                              f"origin {request.headers.get('Origin')!r} is not allowed")
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_message_bytes,
                                   autoping=True, heartbeat=None)
        await ws.prepare(request)
        client = await self._greet(ws)
        if client is None:
            return ws
        self.clients.add(client)
        self.stats.connections += 1
        try:
            await self._serve(client)
        finally:
            self.clients.discard(client)
            await cancel_and_wait(list(client.requests), what="gateway client requests")
            if not ws.closed:
                await client.close(client.close_code, "closing")
        return ws

    async def _greet(self, ws: web.WebSocketResponse) -> Client | None:
        """Read and check the ``hello``; the client, or None once the connection is closed."""
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            await self._fatal(ws, BadRequest("bad_hello", "no hello within "
                                             f"{HELLO_TIMEOUT_S:.0f} s", True))
            return None
        if msg.type is not WSMsgType.TEXT:
            await self._fatal(ws, BadRequest("bad_hello", "the first frame must be a text "
                                             "hello", True))
            return None
        try:
            hello = decode_client(msg.data, self.limits.max_message_bytes)
            if not isinstance(hello, Hello):
                raise BadRequest("bad_hello", "the first frame must be hello", True)
            session = await self.parts.sessions.resume(hello.token)
            if self.parts.users.get(session.user) is None:  # removed from the users file
                raise AuthError(f"user {session.user!r} is no longer in the users file")
        except BadRequest as exc:
            await self._fatal(ws, exc)
            return None
        except AuthError:
            await self._fatal(ws, BadRequest("auth", "unknown or expired session: log in "
                                             "again", True), CLOSE_AUTH)
            return None
        except StoreError as exc:
            await self._fatal(ws, BadRequest("unavailable", f"sessions unavailable: {exc}",
                                             True), WSCloseCode.TRY_AGAIN_LATER)
            return None
        mine = sum(1 for c in self.clients if c.user == session.user)
        if mine >= self.limits.connections_per_user:
            await self._fatal(ws, BadRequest("too_many_connections", f"{session.user} has "
                                             f"{mine} connections to this gateway (the "
                                             "limit)", True), CLOSE_POLICY)
            return None
        rate = self.limits.orders_per_s
        client = Client(ws, hello.token, session.id, session.user, frozenset(session.accounts),
                        TokenBucket(rate, 2 * rate))
        client.say(frame("welcome", v=PROTOCOL_VERSION, gateway=self.options.name,
                         session=session.id, user=session.user,
                         accounts=list(session.accounts), epoch=self.parts.epoch,
                         heartbeat_ms=self.limits.heartbeat_ms,
                         limits={"max_message_bytes": self.limits.max_message_bytes,
                                 "max_subscriptions": self.limits.max_subscriptions,
                                 "orders_per_s": self.limits.orders_per_s}))
        for stream, pos in hello.streams.items():
            self._request(client, self._subscribe(client, None, stream, pos))
        return client

    async def _fatal(self, ws: web.WebSocketResponse, exc: BadRequest,
                     code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        self.stats.refused += 1
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(CLOSE_WAIT_S):  # one that does not read is cut
                await ws.send_str(frame("error", id=None, code=exc.code, message=exc.reason,
                                        fatal=True))
                await ws.close(code=code, message=exc.code.encode())

    async def _serve(self, c: Client) -> None:
        async for msg in c.ws:
            c.heard = time.monotonic()
            if msg.type is WSMsgType.TEXT:
                self._on_text(c, msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._error(c, None, BadRequest("bad_request", "binary frames are not part "
                                                "of the protocol: send JSON text"))
            elif msg.type is WSMsgType.ERROR:  # a frame over max_msg_size (closed 1009), ...
                break
            if c.closing:
                break
        if c.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            self.stats.bad_frames += 1

    def _on_text(self, c: Client, text: str) -> None:
        try:
            msg = decode_client(text, self.limits.max_message_bytes)
        except BadRequest as exc:
            self.stats.bad_frames += 1
            self._error(c, None, exc)
            if exc.fatal:
                c.end(WSCloseCode.MESSAGE_TOO_BIG if exc.code == "too_big"
                      else WSCloseCode.POLICY_VIOLATION)
            return
        now = time.monotonic()
        if now - c.touched >= TOUCH_RETRY_S:  # the store renews at most once a minute
            c.touched = now
            self._request(c, self.parts.sessions.touch(c.token, now))
        match msg:
            case Ping(t):
                c.say(frame("pong", t=t))
            case Subscribe(rid, stream, since):
                self._request(c, self._subscribe(c, rid, stream, since))
            case Unsubscribe(rid, stream):
                with contextlib.suppress(BadRequest):  # an unknown name: nothing to drop
                    stream = parse_stream(stream, self.symbols).name
                c.subs.pop(stream, None)
                c.say(frame("unsubscribed", id=rid, stream=stream))
            case Place() | Cancel() | Replace():
                self._order(c, msg)
            case Hello():
                self._error(c, None, BadRequest("bad_request", "hello was already sent"))

    def _error(self, c: Client, rid: int | None, exc: BadRequest) -> None:
        c.say(frame("error", id=rid, code=exc.code, message=exc.reason, fatal=exc.fatal))

    def _request(self, c: Client, work: Awaitable[None]) -> None:
        """Run ``work`` as a task owned by the client (bounded: past the bound, refused)."""
        if len(c.requests) >= REQUESTS_PER_CLIENT:
            if asyncio.iscoroutine(work):
                work.close()
            self._error(c, None, BadRequest("busy", f"{REQUESTS_PER_CLIENT} requests in "
                                            "service: wait for their answers"))
            return
        task = asyncio.ensure_future(self._guarded(c, work))
        c.requests.add(task)
        task.add_done_callback(c.requests.discard)

    async def _guarded(self, c: Client, work: Awaitable[None]) -> None:
        try:
            await work
        except BadRequest as exc:
            self._error(c, None, exc)
        except StoreError as exc:
            log.info("gateway: %s: store unavailable: %s", c.session_id, exc)
        except AuthError:  # the session ended (expired, logged out): log in again
            c.say(frame("error", id=None, code="auth", message="the session ended: log in "
                        "again", fatal=True))
            c.end(CLOSE_AUTH)
        except Exception:  # a bug: logged, the connection and the gateway carry on
            log.exception("gateway: request of %s failed", c.session_id)

    # -- subscriptions ---------------------------------------------------------------------

    async def _subscribe(self, c: Client, rid: int | None, name: str,
                         since: Position | None) -> None:
        try:
            stream = parse_stream(name, self.symbols)
            # Counted with those still being opened (a burst of subscribes must not pass it).
            opening = c.subs.keys() | c.opening
            if stream.name not in opening and len(opening) >= self.limits.max_subscriptions:
                raise BadRequest("too_many_subscriptions", f"at most "
                                 f"{self.limits.max_subscriptions} streams per connection")
            if stream.kind is StreamKind.ORDERS and self.parts.desk is None:
                raise BadRequest("unknown_stream", "this gateway has no order path")
        except BadRequest as exc:
            self._error(c, rid, exc)
            return
        held = since if since is not None and since.epoch == self.parts.epoch else None
        sub = Subscription(stream, 0)
        c.opening.add(stream.name)
        try:
            await self._open(c, rid, sub, since, held)
        finally:
            c.opening.discard(stream.name)
        c.subs[stream.name] = sub  # by its canonical name, the one its items carry

    async def _open(self, c: Client, rid: int | None, sub: Subscription,
                    since: Position | None, held: Position | None) -> None:
        stream = sub.stream
        market = self.parts.market
        match stream.kind:
            case StreamKind.TICKS:
                sub.latest = market.ticks[stream.symbol]
                self._open_latest(c, rid, sub, since, held)
            case StreamKind.STATUS:
                sub.latest = self._status_value
                self._open_latest(c, rid, sub, since, held)
            case StreamKind.BARS:
                await market.wait_ready(stream.symbol)
                sub.bars = market.trails[stream.symbol, stream.res_s]
                self._open_bars(c, rid, sub, since, held)
            case StreamKind.ORDERS:
                await self._open_orders(c, rid, sub, since, held)

    def _ack(self, c: Client, rid: int | None, sub: Subscription, mode: str,
             reset: bool) -> None:
        if reset:
            self.stats.resets += 1
            c.stats.resets += 1
        elif mode == "recovered":
            self.stats.resumed += 1
        c.say(frame("subscribed", id=rid, stream=sub.stream.name, epoch=self.parts.epoch,
                    seq=sub.cursor, mode=mode, reset=reset))

    def _open_latest(self, c: Client, rid: int | None, sub: Subscription,
                     since: Position | None, held: Position | None) -> None:
        # The newest value is the snapshot; a held position only spares a repeat of it.
        assert sub.latest is not None
        sub.cursor = held.seq if held is not None and held.seq <= sub.latest.seq else 0
        self._ack(c, rid, sub, "recovered" if sub.cursor else "snapshot",
                  since is not None and not sub.cursor)

    def _open_bars(self, c: Client, rid: int | None, sub: Subscription,
                   since: Position | None, held: Position | None) -> None:
        trail = sub.bars
        assert trail is not None
        if held is not None and held.seq <= trail.head and trail.since(held.seq) is not None:
            sub.cursor = held.seq  # the next flush sends every bar above it
            self._ack(c, rid, sub, "recovered", False)
            return
        self._bars_snapshot(c, rid, sub, reset=since is not None)

    def _bars_snapshot(self, c: Client, rid: int | None, sub: Subscription,
                       reset: bool) -> None:
        assert sub.bars is not None
        sub.cursor = sub.bars.head
        self.stats.snapshots += 1
        self._ack(c, rid, sub, "snapshot", reset)
        c.say(f'{{"op":"batch","t":{_now_ms()},"items":[{{"stream":{dumps(sub.stream.name)},'
              f'"epoch":{self.parts.epoch},"seq":{sub.cursor},"kind":"snapshot","bars":['
              f'{",".join(sub.bars.snapshot(self.limits.countback))}]}}]}}')

    async def _open_orders(self, c: Client, rid: int | None, sub: Subscription,
                           since: Position | None, held: Position | None) -> None:
        desk = self.parts.desk
        assert desk is not None
        if held is not None and held.seq <= desk.position:
            if desk.held_since(held.seq, c.accounts) is not None:
                sub.cursor = held.seq
                self._ack(c, rid, sub, "recovered", False)
                return
            missed = await desk.missed(sorted(c.accounts), held.seq)
            if missed is not None:
                sub.cursor = max([held.seq, *(seq for seq, _ in missed)])
                self._ack(c, rid, sub, "recovered", False)
                if missed:
                    c.say(frame("batch", t=_now_ms(), items=[
                        {"stream": "orders", "epoch": self.parts.epoch, "seq": seq,
                         "kind": "order", **body} for seq, body in missed]))
                return
        await self._orders_snapshot(c, rid, sub, reset=since is not None)

    async def _orders_snapshot(self, c: Client, rid: int | None, sub: Subscription,
                               reset: bool) -> None:
        desk = self.parts.desk
        assert desk is not None
        snap = await desk.snapshot(sorted(c.accounts))
        sub.cursor = snap.seq
        self.stats.snapshots += 1
        self._ack(c, rid, sub, "snapshot", reset)
        c.say(frame("batch", t=_now_ms(), items=[
            {"stream": "orders", "epoch": self.parts.epoch, "seq": snap.seq, "kind": "snapshot",
             **snap.item()}]))

    def _on_order(self, seq: int, account: str, body: dict[str, Any]) -> None:
        self._encoded(seq, body)

    def _encoded(self, seq: int, body: dict[str, Any]) -> str:
        text = self._order_json.get(seq)
        if text is None:
            text = self._order_json[seq] = item("orders", self.parts.epoch, seq, "order", body)
            while len(self._order_json) > self.limits.retention_count:
                self._order_json.popitem(last=False)
        return text

    def _order_items(self, after: int, accounts: frozenset[str]) -> tuple[list[str] | None, int]:
        desk = self.parts.desk
        assert desk is not None
        held = desk.held_since(after, accounts)
        if held is None:
            return None, after
        return [self._encoded(seq, body) for seq, body in held], desk.position

    # -- orders ----------------------------------------------------------------------------

    def _order(self, c: Client, msg: Place | Cancel | Replace) -> None:
        desk = self.parts.desk
        coid = (msg.order if isinstance(msg, Place) else msg.body).get("client_order_id")
        coid = coid if isinstance(coid, str) else ""
        if desk is None:
            c.say(frame("order_reject", id=msg.id, client_order_id=coid, reason="UNAVAILABLE",
                        message="this gateway has no order path", retryable=False))
            return
        if not c.orders_bucket.allow(time.monotonic()):
            wait = c.orders_bucket.retry_after(time.monotonic())
            c.say(frame("order_reject", id=msg.id, client_order_id=coid, reason="RATE_LIMITED",
                        message=f"more than {self.limits.orders_per_s:g} orders/s: retry in "
                                f"{wait * 1000:.0f} ms", retryable=True,
                        retry_after_ms=int(wait * 1000) + 1))
            return
        accounts = sorted(c.accounts)
        call: Callable[[], Awaitable[dict[str, Any]]]
        match msg:
            case Place(_, order):
                call = lambda: desk.place(accounts, order)  # noqa: E731
            case Cancel(_, body):
                call = lambda: desk.cancel(accounts, body)  # noqa: E731
            case Replace(_, body):
                call = lambda: desk.replace(accounts, body)  # noqa: E731
        self._request(c, self._answer(c, msg.id, call))

    async def _answer(self, c: Client, rid: int,
                      call: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        answer = dict(await call())
        ok = answer.pop("ok", False)
        c.say(frame("order_ack" if ok else "order_reject", id=rid, **answer))
        self._kick()

    # -- the flush -------------------------------------------------------------------------

    def _kick(self) -> None:
        """Flush soon: an answer should not wait out the rest of a flush interval."""
        self._wake.set()

    async def _flusher(self) -> None:
        interval = self.limits.flush_ms / 1000
        wake = self._wake
        while True:  # every interval, or sooner when kicked
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
            began = time.perf_counter()
            await self.flush()
            took = (time.perf_counter() - began) * 1000
            self.stats.flushes += 1
            self.stats.flush_max_ms = max(self.stats.flush_max_ms, took)

    async def flush(self) -> None:
        """Write every client what is new for it."""
        self.parts.market.refresh()
        t_ms = _now_ms()
        now = time.monotonic()
        silent = 3 * self.limits.heartbeat_ms / 1000
        shared: dict[Any, SharedNews] = {}
        for c in list(self.clients):
            if c.closing or now - c.heard > silent:
                self._drop(c, "closing" if c.closing else "silent")
                continue
            if not c.writable(now):
                continue
            frames = c.news(self._order_items, t_ms, shared)
            for sub in c.behind():
                self._resnapshot(c, sub)
            if not frames and now - c.said > self.limits.heartbeat_ms / 1000:
                frames = [frame("heartbeat", t=t_ms)]
            if frames:
                await c.write(frames, self._spawn_writer)

    def _resnapshot(self, c: Client, sub: Subscription) -> None:
        """A client fell behind a trail: it gets a fresh snapshot instead of a backlog."""
        if sub.stream.kind is StreamKind.BARS:
            self._bars_snapshot(c, None, sub, reset=True)
        else:
            assert self.parts.desk is not None
            sub.cursor = self.parts.desk.position  # held until the snapshot is in
            self._request(c, self._orders_snapshot(c, None, sub, reset=True))

    def _spawn_writer(self, c: Client, frames: list[str]) -> None:
        task = asyncio.create_task(c.write_slowly(frames), name=f"gateway-write-{c.session_id}")
        c.writing = task
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    def _drop(self, c: Client, why: str) -> None:
        """Close a slow or silent client, off the flush (its close may take a second)."""
        self.clients.discard(c)
        self.stats.slow_closed += 1
        log.info("gateway: closing %s (%s): %s", c.session_id, c.user, why)
        if c.writing is not None:
            c.writing.cancel()
        task = asyncio.create_task(c.close(c.close_code, why))
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    # -- status ----------------------------------------------------------------------------

    async def _status(self) -> None:
        while True:
            self.publish_status()
            await asyncio.sleep(STATUS_EVERY_S)

    def status(self) -> dict[str, Any]:
        market = self.parts.market
        sub = market.subscriber_stats()
        desk = self.parts.desk
        return {"gateway": self.options.name,
                "backend": desk.client.preferred_endpoint if desk is not None else None,
                "tick_rate": round(market.tick_rate(time.monotonic()), 1),
                "gaps": sub.get("gaps", 0),
                "gaps_filled": sub.get("filled_by_path", 0) + sub.get("filled_by_recovery", 0),
                "lost": sub.get("lost", 0),
                "history_store": self.options.history_store,
                "clients": len(self.clients), "epoch": self.parts.epoch}

    def publish_status(self) -> None:
        self.stats.status_seq += 1
        seq = self.stats.status_seq
        body = self.status()
        self._status_value.set(seq, lambda: item("status", self.parts.epoch, seq, "status",
                                                 {"status": body}))


def _file(path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
    return serve


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _http_error(kind: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    return kind(text=dumps({"error": code, "message": message}),
                content_type="application/json")

