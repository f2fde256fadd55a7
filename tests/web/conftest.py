"""Fixtures of the browser tests: one headless Chromium (Debian's, driven by Playwright) for
the session; a page per test in its own context (its own localStorage: its own session)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is missing: apt-get install -y chromium"
    # Never `playwright install` (it downloads a browser): Debian's is what runs here.
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                         args=["--no-sandbox"])
    try:
        yield browser
    finally:
        browser.close()
