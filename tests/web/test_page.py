"""The chart page in a real browser (Debian's headless Chromium) against a whole mesh: the chart
draws and updates live, an order placed in the panel is acknowledged, filled and shown once, a
reload keeps the session, a restarted gateway resumes the chart exactly (no bar missing,
repeated or out of order: the page runs Lightweight Charts' development build, which asserts
ordering) and executes once the orders placed while it was down, two gateways fail over, and
a second user sees none of the first one's orders."""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from bus.config import load_config
from bus.store.orders import RedisOrderStore
from nodes.drills.mesh import UpMesh, http_json
from tests.support import scaled
from tests.web.conftest import OwnGateway

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

SYMBOL = "EURUSD"


class ChartPage:
    """One browser context (its own storage) with the page open, and what went wrong in it:
    uncaught errors, and the page's own reports of a failed handler (``tickmesh:`` errors)."""

    def __init__(self, browser: Browser) -> None:
        self.context: BrowserContext = browser.new_context(viewport={"width": 1440, "height": 860})
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.errors.append(m.text)
                     if m.type == "error" and m.text.startswith("tickmesh:") else None)

    def open(self, base: str, user: str = "alice", *, pinned: str | None = None) -> ChartPage:
        query = f"?lwc=dev&symbol={SYMBOL}&res=1S" + (f"&gateways={pinned}" if pinned else "")
        self.page.goto(f"{base}/{query}")
        self.wait("window.tickmesh && window.tickmesh.ready")
        if self.page.is_visible("#login"):
            self.page.fill("#login-user", user)
            self.page.fill("#login-password", user)
            self.page.click("#login-submit")
        self.wait_live()
        self.wait("window.tickmesh.bars().length > 0 && window.tickmesh.book.ready")
        # The newest bar when the page opened: what follows it was drawn live by this page.
        self.opened_at: int = self.js("window.tickmesh.bars().at(-1).time")
        return self

    def js(self, expr: str) -> Any:
        return self.page.evaluate(expr)

    def wait(self, expr: str, timeout: float = 20.0) -> None:
        self.page.wait_for_function(expr, timeout=scaled(timeout) * 1000)

    def wait_live(self, url: str | None = None, timeout: float = 20.0) -> None:
        want = f" && window.tickmesh.connection.url === {json.dumps(url)}" if url else ""
        self.wait(f"window.tickmesh.connection.status === 'live'{want}", timeout)

    def counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = self.js("window.tickmesh.counters()")
        return counters

    def wait_updates(self, more: int = 3) -> None:
        """Until the chart drew ``more`` further live updates (it is live, not frozen)."""
        now = self.counters()["updates"]
        self.wait(f"window.tickmesh.counters().updates >= {now + more}")

    def wait_new_bars(self, count: int = 2) -> None:
        """Until ``count`` bars newer than the newest now were drawn (time moves on the chart)."""
        last = self.js("window.tickmesh.bars().at(-1).time")
        self.wait(f"window.tickmesh.bars().at(-1).time >= {last + count}")

    def place(self, side: str = "buy", quantity: float = 1) -> str:
        """An order from the ticket (market); its client order id."""
        self.page.click(f"#side-{side}")
        self.page.click("#type-market")
        self.page.fill("#qty", str(quantity))
        self.page.click("#place")
        cid: str = self.js("window.tickmesh.lastPlaced()")
        return cid

    def wait_state(self, cid: str, state: str, timeout: float = 20.0) -> None:
        self.wait(f"window.tickmesh.book.allOrders().some(o => o.client_order_id === "
                  f"{json.dumps(cid)} && o.state === {json.dumps(state)})", timeout)

    def rows(self, table: str, cid: str) -> int:
        return self.page.locator(f"#{table} tr[data-cid={json.dumps(cid)}]").count()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def chart(browser: Browser) -> Any:
    pages: list[ChartPage] = []

    def make() -> ChartPage:
        pages.append(ChartPage(browser))
        return pages[-1]

    yield make
    for p in pages:
        p.close()
    assert [e for p in pages for e in p.errors] == []


def store_view(mesh: UpMesh, account: str, cids: list[str]) -> dict[str, tuple[str, float, int]]:
    """What the order store (the backend's record) holds for these client order ids:
    ``cid -> (state, filled quantity, executions)``."""
    async def read() -> dict[str, tuple[str, float, int]]:
        store = RedisOrderStore.from_config(load_config(mesh.run_dir / "mesh.toml"))
        try:
            out = {}
            for cid in cids:
                order = await store.by_client_id(account, cid)
                assert order is not None, f"{cid} is not in the order store"
                fills = [e for e in await store.executions(order.order_id) if e.is_fill]
                out[cid] = (order.state.name, order.filled_quantity, len(fills))
            return out
        finally:
            await store.close()
    # Playwright's sync API keeps an event loop on this thread: the store's client runs its own
    # on another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


def panel_view(page: ChartPage, cids: list[str]) -> dict[str, tuple[str, float, int]]:
    """The same, as the page's panel has it: state, filled quantity and fill rows."""
    orders = {o["client_order_id"]: o for o in page.js("window.tickmesh.book.allOrders()")}
    return {cid: (orders[cid]["state"], orders[cid]["filled_quantity"], page.rows("fills", cid))
            for cid in cids}


def seam_gap(stats: Path) -> int:
    """Ticks a gateway's bars missed where it joined the history (its stats file: the process
    running now). A historian behind by more than the gateway waits leaves the bar forming at
    that moment short of those ticks, counted (bus.gateway.market, "the seam")."""
    try:
        return int(json.loads(stats.read_text())["market"]["seam_gap"])
    except (OSError, ValueError, KeyError):
        return 0


def assert_bars_match_history(page: ChartPage, url: str, *, seam_bars: int = 0) -> None:
    """The bars the page drew since it opened (live, and across every reconnect) are the
    history's: ascending, none repeated, none missing, the same values (the forming bar, and
    what the historian has not written yet, left out). ``seam_bars``: bars a gateway that
    joined meanwhile said it built short of ticks (its counted seam gap), each at most one
    bar with a subset of the history's ticks. The bars of the snapshot the page opened with
    are the history's too, except where a gateway's own start left a seam: not checked."""
    bars = page.js("window.tickmesh.bars()")
    times = [b["time"] for b in bars]
    assert times == sorted(set(times)), "bars out of order or repeated"
    assert page.counters()["violations"] == 0
    first, last = page.opened_at + 1, times[-1]
    assert last > first, "no bar was drawn live"
    got = http_json(f"{url}/udf/history?symbol={SYMBOL}&resolution=1S&from={first}&to={last}"
                    f"&countback={len(bars) + 10}")
    assert got["s"] == "ok", got
    upto = got["t"][-1]  # the historian's newest bar may still be forming there
    history = {t: (o, h, lo, c, v) for t, o, h, lo, c, v in
               zip(got["t"], got["o"], got["h"], got["l"], got["c"], got["v"], strict=True)
               if first <= t < upto}
    drawn = {b["time"]: (b["open"], b["high"], b["low"], b["close"], b["volume"])
             for b in bars if first <= b["time"] < upto}
    assert sorted(drawn) == sorted(history), "a bar missing on one side"
    differ = [t for t, v in history.items()
              if not all(math.isclose(a, b, rel_tol=1e-9)
                         for a, b in zip(v, drawn[t], strict=True))]
    for t in differ:  # only a seam bar may differ, and only by ticks it lacks
        (_, hh, hl, hc, hv), (_, dh, dl, dc, dv) = history[t], drawn[t]
        assert dv < hv and dh <= hh and dl >= hl and math.isclose(dc, hc), (t, history[t], drawn[t])
    assert len(differ) <= seam_bars, (differ, seam_bars)


def test_the_chart_draws_bars_and_updates_live(mesh: UpMesh, chart: Any) -> None:
    page = chart().open(mesh.urls[0])
    assert page.js("document.querySelector('#conn-state').dataset.status") == "live"
    page.wait_updates(5)
    assert page.js("window.tickmesh.bars().length") > 0
    page.wait("document.querySelector('#st-backend').textContent.startsWith('tcp://')")
    assert page.page.text_content("#st-history") == "duckdb"
    page.wait_new_bars()
    assert_bars_match_history(page, mesh.urls[0])


def test_an_order_from_the_panel_is_acked_filled_shown_once_and_a_reload_keeps_it_all(
        mesh: UpMesh, chart: Any) -> None:
    page = chart().open(mesh.urls[0])
    cid = page.place("buy", 2)
    page.wait_state(cid, "FILLED")
    page.wait(f"document.querySelectorAll('#fills tr[data-cid=\"{cid}\"]').length > 0")
    assert page.rows("done-orders", cid) == 1 and page.rows("open-orders", cid) == 0
    assert page.js("window.tickmesh.connection.queue().length") == 0
    assert panel_view(page, [cid]) == store_view(mesh, "ACC-ALICE", [cid])
    # A reload: the session is kept (no login), the order is there once, from the snapshot.
    page.page.reload()
    page.wait("window.tickmesh && window.tickmesh.ready")
    page.wait_live()
    assert page.page.is_hidden("#login")
    assert page.page.text_content("#user") == "alice · ACC-ALICE"
    page.wait_state(cid, "FILLED")
    page.wait(f"document.querySelectorAll('#done-orders tr[data-cid=\"{cid}\"]').length === 1")
    assert panel_view(page, [cid]) == store_view(mesh, "ACC-ALICE", [cid])


def test_a_restarted_gateway_resumes_the_chart_exactly_and_runs_the_orders_placed_meanwhile(
        mesh: UpMesh, own_gateway: OwnGateway, chart: Any) -> None:
    url = own_gateway.url
    page = chart().open(url, pinned=url)
    page.wait_updates(3)
    own_gateway.kill()
    page.wait("window.tickmesh.connection.status !== 'live'")
    # Placed while no gateway answers: shown as queued, kept in the page's storage.
    queued = [page.place("buy", 1), page.place("sell", 3)]
    page.wait("document.querySelectorAll('#queued tr[data-state=queued]').length === 2")
    before = page.counters()
    down = time.monotonic()
    own_gateway.start()
    page.wait_live(url)
    back = time.monotonic() - down
    for cid in queued:
        page.wait_state(cid, "FILLED")
    page.wait("document.querySelectorAll('#queued tr[data-cid]').length === 0")
    assert panel_view(page, queued) == store_view(mesh, "ACC-ALICE", queued)
    # Once each: one order per client order id (the store's own key), filled exactly its
    # quantity, by as many fills as the panel shows (the executor may fill in slices).
    assert [store_view(mesh, "ACC-ALICE", queued)[c][1] for c in queued] == [1, 3]
    page.wait_updates(5)
    after = page.counters()
    assert after["reconnects"] >= before["reconnects"] + 1
    assert after["resets"] == 0, "resumed inside the retention window: nothing reloaded"
    page.wait_new_bars()
    assert_bars_match_history(page, url, seam_bars=1 if seam_gap(own_gateway.stats) else 0)
    assert back < scaled(60)


def test_with_two_gateways_the_page_fails_over_when_the_one_in_use_dies(
        mesh: UpMesh, chart: Any) -> None:
    first, second = mesh.urls
    page = chart().open(first)
    page.wait("window.tickmesh.connection.urls.length === 2")
    cid = page.place("sell", 1)
    page.wait_state(cid, "FILLED")
    page.wait_updates(3)
    old = mesh.kill("gateway-1")
    page.wait_live(second, timeout=10)
    assert page.js("document.querySelector('#conn-text').textContent").startswith("live")
    assert page.counters()["lastOutageMs"] is not None  # the page measured its outage
    page.wait_updates(5)
    assert page.counters()["resets"] == 0
    page.wait_new_bars()
    assert_bars_match_history(page, second)
    assert panel_view(page, [cid]) == store_view(mesh, "ACC-ALICE", [cid])
    mesh.wait_restarted("gateway-1", old)


def test_a_second_user_sees_none_of_the_first_users_orders(mesh: UpMesh, chart: Any) -> None:
    alice = chart().open(mesh.urls[1])
    mine = alice.place("buy", 1)
    alice.wait_state(mine, "FILLED")
    bob = chart().open(mesh.urls[1], user="bob")
    assert bob.page.text_content("#user") == "bob · ACC-BOB"
    theirs = bob.place("sell", 1)
    bob.wait_state(theirs, "FILLED")
    accounts = set(bob.js("window.tickmesh.book.allOrders().map(o => o.account)"))
    assert accounts == {"ACC-BOB"}
    assert bob.rows("done-orders", mine) == 0 and bob.rows("fills", mine) == 0
    assert alice.rows("done-orders", theirs) == 0


def test_a_limit_order_is_replaced_and_cancelled_from_the_panel(mesh: UpMesh, chart: Any) -> None:
    page = chart().open(mesh.urls[1])
    page.wait("!isNaN(parseFloat(document.querySelector('#bid').textContent))")  # a tick came
    bid = float(page.page.text_content("#bid") or "nan")
    page.page.click("#side-buy")
    page.page.click("#type-limit")
    page.page.fill("#qty", "3")
    page.page.fill("#price", f"{bid * 0.98:.5f}")  # far below the market: it rests
    page.page.click("#place")
    cid: str = page.js("window.tickmesh.lastPlaced()")
    page.wait(f"document.querySelectorAll('#open-orders tr[data-cid=\"{cid}\"]').length === 1")
    # A new limit at the same quantity: the mesh runs on the EA path, and MetaTrader 5 moves a
    # pending order's price but cannot change its volume (a quantity replace is refused
    # BAD_QUANTITY there: tests/nodes/orders/test_executor_ea.py).
    new_price = float(f"{bid * 0.97:.5f}")
    page.page.click(f"[data-testid='replace-{cid}']")
    page.page.fill("#replace-price", f"{new_price:.5f}")
    page.page.click("#replace-ok")
    page.wait(f"window.tickmesh.book.allOrders().some(o => o.client_order_id === "
              f"{json.dumps(cid)} && o.quantity === 3 && Math.abs(o.price - {new_price}) < 1e-9)")
    page.page.click(f"[data-testid='cancel-{cid}']")
    page.wait_state(cid, "CANCELLED")
    assert page.rows("open-orders", cid) == 0 and page.rows("done-orders", cid) == 1
    assert panel_view(page, [cid]) == store_view(mesh, "ACC-ALICE", [cid]) == {
        cid: ("CANCELLED", 0, 0)}
