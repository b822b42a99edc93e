"""The example patient's handout in a real headless Chromium (tests/browser.py): every
exercise picture is laid out and drawn (not blank), the page fits a phone, and print media
breaks it into a page per section.

Screenshots go under the test's temporary folder; with ``MOVEMENT_CDS_SCREENSHOTS=DIR`` they
are also copied to ``DIR/handout-*.png`` for people to look at, e.g.::

    MOVEMENT_CDS_SCREENSHOTS=out/screenshots \
        .venv/bin/python -m pytest tests/test_handout_browser.py
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import movement_cds

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
AS_OF = "2026-11-02T09:00:00Z"
SECTIONS = ["plan", "exercise-abdominal-bracing-supine", "exercise-bird-dog-breathing",
            "exercise-dead-bug-eccentric", "week", "log", "help"]


def _page_file(tmp_path: Path, example: str = "example-patient.json") -> Path:
    html = movement_cds.handout_html((EXAMPLES / example).read_bytes(), as_of=AS_OF)
    path = tmp_path / f"{Path(example).stem}-handout.html"
    path.write_text(html, encoding="utf-8")
    return path


def _keep(shot: Path) -> None:
    """Copy a screenshot to $MOVEMENT_CDS_SCREENSHOTS/handout-*.png when that is set."""
    target = os.environ.get("MOVEMENT_CDS_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


def _ink(png: bytes) -> float:
    """Share of dark pixels (the figure's strokes are near black on a white background)."""
    image = pytest.importorskip("PIL.Image").open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    return sum(histogram[:100]) / max(1, sum(histogram))


@pytest.mark.slow
def test_every_exercise_picture_is_laid_out_and_drawn(browser_page: Any, tmp_path: Path
                                                      ) -> None:
    page = browser_page
    page.goto(_page_file(tmp_path).as_uri())
    shot = tmp_path / "handout-screen.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    figures = page.locator("section.exercise svg.exercise-figure")
    assert figures.count() == 3
    for i in range(figures.count()):
        figure = figures.nth(i)
        box = figure.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 60, box
        strokes = figure.evaluate(
            "svg => [...svg.querySelectorAll('line.near, path.near')].filter(e => {"
            " const s = getComputedStyle(e); const b = e.getBBox();"
            " return s.stroke !== 'none' && parseFloat(s.strokeWidth) > 0"
            " && (b.width > 0 || b.height > 0); }).length")
        assert strokes >= 12, strokes  # two frames: body, neck, near arm and leg
        frames = figure.locator("g.frame")
        assert frames.count() == 2
        inked = [_ink(frames.nth(f).screenshot()) for f in range(2)]
        # the drawing is what makes the ink: the same boxes with the figures hidden (only the
        # "Start"/"Then" labels and the floor line left) have far less
        figure.evaluate("svg => svg.querySelectorAll('g.frame > g').forEach("
                        "g => g.style.visibility = 'hidden')")
        blank = [_ink(frames.nth(f).screenshot()) for f in range(2)]
        figure.evaluate("svg => svg.querySelectorAll('g.frame > g').forEach("
                        "g => g.style.visibility = '')")
        for with_figure, without in zip(inked, blank, strict=True):
            assert with_figure > 0.02 and with_figure > 4 * without, (i, inked, blank)


def test_the_page_fits_a_phone(tmp_path: Path) -> None:
    from tests.browser import page as new_page

    with new_page(width=390, height=844) as page:
        page.goto(_page_file(tmp_path).as_uri())
        shot = tmp_path / "handout-phone.png"
        page.screenshot(path=str(shot), full_page=True)
        _keep(shot)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, overflow
        box = page.locator("svg.exercise-figure").first.bounding_box()
        assert box is not None and box["width"] <= 390


def test_print_media_breaks_a_page_per_section(browser_page: Any, tmp_path: Path) -> None:
    pypdf = pytest.importorskip("pypdf")
    page = browser_page
    page.goto(_page_file(tmp_path).as_uri())
    page.emulate_media(media="print")
    breaks = page.evaluate("[...document.querySelectorAll('body > section')].map("
                           "s => [s.id, getComputedStyle(s).breakBefore])")
    assert [b[0] for b in breaks] == SECTIONS
    assert [b[1] for b in breaks] == ["auto"] + ["page"] * (len(SECTIONS) - 1)
    shot = tmp_path / "handout-print.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    pdf = tmp_path / "chromium-print.pdf"
    page.pdf(path=str(pdf), format="A4")
    pages = pypdf.PdfReader(pdf).pages
    assert len(pages) == len(SECTIONS)  # each section fits its page


def test_the_held_handout_in_the_browser(browser_page: Any, tmp_path: Path) -> None:
    page = browser_page
    page.goto(_page_file(tmp_path, "cauda-equina.json").as_uri())
    shot = tmp_path / "handout-held.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    assert page.locator("svg").count() == 0
    assert page.locator(".held").inner_text().startswith("Do not start any exercises")
    assert page.locator(".held").is_visible()
