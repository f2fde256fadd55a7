"""The browser the page tests drive: Debian's chromium through Playwright, never a download."""

from __future__ import annotations

from playwright.sync_api import Browser


def test_debians_chromium_runs_headless(browser: Browser) -> None:
    major = int(browser.version.split(".")[0])
    assert major >= 120, f"chromium {browser.version}: the page's modules need a current browser"
    page = browser.new_page()
    try:
        found = page.evaluate("typeof WebSocket === 'function' && typeof structuredClone")
        assert found == "function"
    finally:
        page.close()
