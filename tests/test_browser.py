"""The real-browser harness itself: Chromium renders a page and lays out its SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_chromium_lays_out_an_svg_picture(browser_page: Any, tmp_path: Path) -> None:
    page_file = tmp_path / "p.html"
    page_file.write_text('<!doctype html><svg width="120" height="80" viewBox="0 0 12 8">'
                         '<rect width="12" height="8" fill="#c00"/></svg>', encoding="utf-8")
    browser_page.goto(page_file.as_uri())
    box = browser_page.locator("svg").bounding_box()
    assert box is not None and (box["width"], box["height"]) == (120, 80)
    shot = tmp_path / "p.png"
    browser_page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
