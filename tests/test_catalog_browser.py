"""The clinical catalog in a real headless Chromium (issue 17 parts 4 and 7): the search box
finds the questions by synonym and UK/US spelling, and the page is not blank.

Screenshots go to ``$MOVEMENT_CDS_SCREENSHOTS/catalog-*.png`` when that variable is set
(else to the test's temporary directory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knowledge_base import bundled_path
from movement_cds._docs import catalog_pages

pytestmark = pytest.mark.slow  # starts Chromium: a few seconds


def _shots(tmp_path: Path) -> Path:
    where = os.environ.get("MOVEMENT_CDS_SCREENSHOTS")
    out = Path(where) if where else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.html"
    path.write_text(catalog_pages(bundled_path())["catalog.html"], encoding="utf-8")
    return path


@pytest.fixture
def catalog(browser_page: Any, catalog_file: Path) -> Iterator[Any]:
    browser_page.goto(catalog_file.as_uri())
    yield browser_page


def _visible_ids(page: Any, selector: str) -> set[str]:
    ids: list[str] = page.eval_on_selector_all(
        selector, "els => els.filter(e => e.offsetParent !== null).map(e => e.id)")
    return set(ids)


def _search(page: Any, text: str) -> set[str]:
    page.fill("#q", text)
    return _visible_ids(page, "article.fact")


def _not_blank(page: Any, png: Path) -> None:
    """A screenshot with real content: the browser decodes the PNG into a canvas and counts
    its distinct colours (a blank or one-colour page has one or two)."""
    import base64

    data = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    colours = page.evaluate("""async (src) => {
        const img = new Image(); img.src = src; await img.decode();
        const c = document.createElement('canvas');
        c.width = img.width; c.height = img.height;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < px.length; i += 4) {
          seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
        }
        return seen.size;
    }""", data)
    assert colours > 50, f"{png} looks blank ({colours} colours)"


def test_incontinence_shows_the_cauda_equina_questions_and_hides_the_rest(
        catalog: Any, tmp_path: Path) -> None:
    everything = _visible_ids(catalog, "article.fact")
    assert {"fact-rf-bladder-dysfunction", "fact-pain-now"} <= everything
    shown = _search(catalog, "incontinence")
    assert {"fact-rf-bladder-dysfunction", "fact-rf-bowel-dysfunction"} <= shown
    assert not shown & {"fact-pain-now", "fact-rf-fever", "fact-fms-deep-squat",
                        "fact-startback-item-1", "fact-rf-cancer-history"}, sorted(shown)
    assert catalog.is_visible("#facts-red-flags")  # their group stays, the others go
    assert not catalog.is_visible("#facts-examination")
    # the rules that read those questions are found by the question's words too
    assert catalog.is_visible("#RF-01-CES")
    rows = catalog.locator("#red-flag-table tbody tr:visible")
    assert rows.count() >= 1 and "Suspected cauda equina syndrome" in rows.first.inner_text()
    assert not catalog.is_visible("#RF-03-FEVER") and not catalog.is_visible("#bird-dog-breathing")
    assert catalog.inner_text("#count").endswith("shown")
    png = _shots(tmp_path) / "catalog-search-incontinence.png"
    catalog.screenshot(path=str(png))
    _not_blank(catalog, png)


SPELLINGS = (
    ("anesthesia", "fact-rf-saddle-anaesthesia"),       # US spelling of the UK word
    ("anaesthesia", "fact-rf-saddle-anaesthesia"),
    ("feces", "fact-rf-bowel-dysfunction"),             # US spelling, the text says stools
    ("tumor", "fact-rf-cancer-history"),                # synonym: cancer
    ("weight loss", "fact-rf-unexplained-weight-loss"),  # a phrase: "lost weight"
    ("pyrexia", "fact-rf-fever"),
    ("numbness", "fact-rf-saddle-anaesthesia"),
)


def test_uk_us_spellings_and_synonyms_find_the_question(catalog: Any) -> None:
    """One browser for every query (each starts from the query box, as typed)."""
    for query, expected in SPELLINGS:
        shown = _search(catalog, query)
        assert expected in shown, (query, sorted(shown))
        assert "fact-fms-deep-squat" not in shown, query


def test_a_search_with_no_match_hides_everything_and_clearing_it_shows_all(
        catalog: Any) -> None:
    all_facts = _visible_ids(catalog, "article.fact")
    assert _search(catalog, "zzz no such words") == set()
    assert catalog.inner_text("#count").startswith("0 of ")
    assert not catalog.is_visible("#red-flag-table")
    assert _search(catalog, "") == all_facts


def test_red_flag_overview_renders_and_pages_are_not_blank(catalog: Any,
                                                           tmp_path: Path) -> None:
    rows = catalog.locator("#red-flag-table tbody tr")
    assert rows.count() >= 20
    first = rows.first.inner_text()
    assert "emergency" in first and "holds exercise" in first
    out = _shots(tmp_path)
    top = out / "catalog-top.png"
    catalog.screenshot(path=str(top))
    _not_blank(catalog, top)
    catalog.goto(catalog.url.split("#")[0] + "#facts-red-flags")
    questions = out / "catalog-questions.png"
    catalog.screenshot(path=str(questions))
    _not_blank(catalog, questions)


def test_every_exercise_has_its_picture(catalog: Any, tmp_path: Path) -> None:
    """The handout's line drawings (cds.exercise_figure_svg), one per exercise, laid out
    with a real size; a screenshot of the exercises section is not blank."""
    sizes = catalog.eval_on_selector_all(
        "article.exercise", """els => els.map(e => {
            const svg = e.querySelector('figure.picture svg');
            const box = svg ? svg.getBoundingClientRect() : null;
            return [e.id, box ? [box.width, box.height] : null];
        })""")
    assert len(sizes) >= 30
    missing = [ident for ident, box in sizes if box is None or min(box) < 40]
    assert not missing, missing
    catalog.goto(catalog.url.split("#")[0] + "#bird-dog-breathing")
    png = _shots(tmp_path) / "catalog-exercises.png"
    catalog.screenshot(path=str(png))
    _not_blank(catalog, png)
