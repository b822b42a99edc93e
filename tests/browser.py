"""A real headless Chromium for tests that look at what people see (handout, catalog).

Chromium comes from the system packages (``make test`` installs Debian's ``chromium`` when it
is missing); Playwright (a dev dependency) drives it through ``executable_path``, so no
browser is downloaded. Without Chromium the tests that need it are skipped on a developer's
machine and fail under ``CI=true``, where the set-up must have installed it.

Usage::

    def test_x(browser_page):          # the fixture in tests/conftest.py
        browser_page.goto(path.as_uri())
        browser_page.screenshot(path=str(tmp_path / "x.png"))
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

#: Flags that keep Chromium off the network (this machine has none but loopback) and quiet.
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium path; skip the test without one, except under CI where it must exist."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: `make test` installs it (Debian package chromium)")
        pytest.skip("no Chromium on this machine (make test installs it)")
    return path


@contextmanager
def page(width: int = 1200, height: int = 1600) -> Iterator[Any]:
    """A fresh page in a fresh headless Chromium, closed afterwards."""
    executable = require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
