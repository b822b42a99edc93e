"""The static HTML catalog (issue 5, part 4): complete, anchored, escaped, offline, searchable."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cds import KnowledgeBase, load_knowledge_base
from cds._catalog_html import evidence_url
from knowledge_base import bundled_path
from movement_cds._cli import app
from movement_cds._docs import catalog_pages
from tests.conftest import STARTER

runner = CliRunner()


class Page(HTMLParser):
    """Everything the tests look at: ids, links, resource loads, scripts, item texts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.local_links: set[str] = set()
        self.external: list[tuple[str, str, str]] = []  # (tag, attr, url)
        self.srcs: list[str] = []
        self.tags: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.items: list[dict[str, str]] = []  # article.item: id, group, text
        self._stack: list[str] = []
        self._item: dict[str, str] | None = None
        self._group = ""
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if "src" in a:
            self.srcs.append(a["src"])
        for attr in ("href", "src", "action", "data"):
            url = a.get(attr, "")
            if url.startswith("#"):
                self.local_links.add(url[1:])
            elif url:
                self.external.append((tag, a.get("class", ""), url))
        if tag in ("script", "style"):
            self._in = tag
        if tag == "section":
            self._group = a.get("id", "")
        if tag == "article" and "item" in a.get("class", "").split():
            self._item = {"id": a["id"], "group": self._group, "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._in = None
        if tag == "article" and self._item is not None:
            self.items.append(self._item)
            self._item = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)
        elif self._item is not None:
            self._item["text"] += data


@pytest.fixture(scope="module")
def bundled_page() -> tuple[str, Page]:
    text = catalog_pages(bundled_path())["catalog.html"]
    return text, Page(text)


def test_every_rule_exercise_alert_and_parameter_is_present_and_anchored(
        bundled_page: tuple[str, Page], kb: KnowledgeBase) -> None:
    _, page = bundled_page
    for rule in kb.rules:
        assert rule.id in page.ids and rule.id in page.local_links, rule.id
    for ex in kb.exercises:
        assert ex in page.ids and ex in page.local_links, ex
    for code in kb.alerts:
        assert f"alert-{code}" in page.ids
    for name in kb.parameters:
        assert f"param-{name}" in page.ids
    dangling = page.local_links - page.ids
    assert not dangling, sorted(dangling)[:10]
    questions = [n for n, d in kb.facts.items() if d.question and not d.derived]
    for name in questions:
        assert f"fact-{name}" in page.ids and f"fact-{name}" in page.local_links, name
    assert len(page.items) == (len(kb.rules) + len(kb.exercises) + len(kb.alerts)
                               + len(kb.parameters) + len(questions))


def test_nothing_is_loaded_from_the_network(bundled_page: tuple[str, Page],
                                            kb: KnowledgeBase) -> None:
    """Works from file:// offline: no src at all, no stylesheet links, no CSS urls; the only
    external URLs are evidence links that open on click."""
    _, page = bundled_page
    assert page.srcs == []
    assert "link" not in page.tags and "iframe" not in page.tags and "img" not in page.tags
    css = "".join(page.styles)
    assert "url(" not in css and "@import" not in css
    assert page.scripts and not any("fetch(" in s or "XMLHttpRequest" in s
                                    for s in page.scripts)
    allowed = {evidence_url(e.id) for r in kb.rules for e in r.evidence} - {None}
    assert page.external, "evidence should be linked"
    for tag, cls, url in page.external:
        assert tag == "a" and cls == "evidence", (tag, url)
        assert url in allowed and url.startswith("https://"), url


def test_rules_show_conditions_outputs_evidence_and_scenarios() -> None:
    page = Page(catalog_pages(STARTER)["catalog.html"])
    ces = next(i for i in page.items if i["id"] == "RF-01-CES")
    text = " ".join(ces["text"].split())
    assert "Suspected cauda equina syndrome" in text
    assert "rf-bladder-dysfunction is true" in text
    assert "alert suspected-cauda-equina (emergency; referral stat" in text
    assert "PMID:32438853 R strong" in text
    assert "Scenarios: bladder-dysfunction-alone-is-an-emergency" in text
    assert ("https://pubmed.ncbi.nlm.nih.gov/32438853/" in
            {url for _, _, url in page.external})
    bird = " ".join(next(i for i in page.items if i["id"] == "bird-dog-breathing")["text"]
                    .split())
    assert "Recommended by: SE-01-MOTOR-CONTROL" in bird
    assert "Dose: 3 sets" in bird and "Chain:" in bird
    param = " ".join(next(i for i in page.items if i["id"] == "param-fms-deficit-max-score")
                     ["text"].split())
    assert "M, unverified" in param and "Default 1; range 0 to 3" in param
    assert "MV-01-ROTARY" in param  # which rules use it


def test_exercises_list_the_rules_that_avoid_them_by_property() -> None:
    page = Page(catalog_pages(STARTER)["catalog.html"])
    kb = load_knowledge_base(STARTER)
    for ex in kb.exercises.values():
        text = next(i for i in page.items if i["id"] == ex.id)["text"]
        flexion = "flexion" in {d.value for d in ex.direction}
        assert ("PR-01-NO-FLEXION" in text) == flexion, ex.id


def test_knowledge_base_text_is_escaped(kb_copy: Path) -> None:
    rules = kb_copy / "rules" / "red-flags.yaml"
    rules.write_text(rules.read_text().replace(
        "title: Suspected cauda equina syndrome",
        "title: 'Suspected <script>alert(1)</script> & <b>CES</b>'", 1))
    text = catalog_pages(kb_copy)["catalog.html"]
    page = Page(text)
    assert len(page.scripts) == 2 and "b" not in page.tags  # the synonyms (JSON), the search
    assert "Suspected &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;CES&lt;/b&gt;" in text
    ces = next(i for i in page.items if i["id"] == "RF-01-CES")
    assert "Suspected <script>alert(1)</script> & <b>CES</b>" in ces["text"]


def test_output_is_deterministic() -> None:
    """Byte-identical on every run (no dates, sorted orders), so the staleness test in
    test_generated_docs.py can compare the committed page with a fresh one."""
    assert catalog_pages(STARTER)["catalog.html"] == catalog_pages(STARTER)["catalog.html"]


def test_kb_docs_writes_the_html_page_and_check_detects_staleness(tmp_path: Path) -> None:
    out = tmp_path / "clinical"
    r = runner.invoke(app, ["kb", "docs", str(STARTER), "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert (out / "catalog.html").read_text() == catalog_pages(STARTER)["catalog.html"]
    assert str(out / "catalog.html") in r.stdout
    r = runner.invoke(app, ["kb", "docs", str(STARTER), "--out", str(out), "--check"])
    assert r.exit_code == 0, r.stderr
    (out / "catalog.html").write_text("<p>edited by hand</p>")
    r = runner.invoke(app, ["kb", "docs", str(STARTER), "--out", str(out), "--check"])
    assert r.exit_code == 1 and "catalog.html" in r.stderr and "kb docs" in r.stderr


def test_kb_docs_fails_clearly_on_an_invalid_knowledge_base(kb_copy: Path,
                                                            tmp_path: Path) -> None:
    (kb_copy / "rules" / "precautions.yaml").write_text("rules:\n  - id: [broken\n")
    r = runner.invoke(app, ["kb", "docs", str(kb_copy), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert "precautions.yaml" in r.stderr and "knowledge base invalid" in r.stderr
    assert not (tmp_path / "o").exists()


def test_every_input_question_is_shown_in_plain_words(bundled_page: tuple[str, Page],
                                                      kb: KnowledgeBase) -> None:
    _, page = bundled_page
    facts = {i["id"]: " ".join(i["text"].split()) for i in page.items if i["group"] == "facts"}
    coded = [n for n, d in kb.facts.items() if d.coding is not None]
    assert len(coded) > 60
    for name in coded:
        question = " ".join((kb.facts[name].question or "").split())
        assert question and question in facts[f"fact-{name}"], name
    saddle = facts["fact-rf-saddle-anaesthesia"]
    assert "saddle area" in saddle and "red flag, specific" in saddle
    assert "an unreadable answer holds exercise" in saddle and "RF-01-CES" in saddle
    assert "lifelong" in facts["fact-rf-cancer-history"]


def test_a_coded_fact_without_a_question_fails_validation(kb_copy: Path) -> None:
    facts = kb_copy / "facts.yaml"
    text = facts.read_text()
    line = next(x for x in text.splitlines(keepends=True)
                if x.startswith("    question:") and "fever" in x)
    facts.write_text(text.replace(line, "", 1))
    r = runner.invoke(app, ["kb", "validate", str(kb_copy)])
    assert r.exit_code == 1
    assert "facts.yaml:" in r.stderr and "'rf-fever' is carried by an input code" in r.stderr
    assert "has no question" in r.stderr


def test_a_derived_fact_may_not_carry_a_question(kb_copy: Path) -> None:
    facts = kb_copy / "facts.yaml"
    facts.write_text(facts.read_text().replace(
        "  - name: finding.motor-control-deficit\n",
        "  - name: finding.motor-control-deficit\n    question: 'Is it?'\n", 1))
    r = runner.invoke(app, ["kb", "validate", str(kb_copy)])
    assert r.exit_code == 1 and "is derived: a question is only for input" in r.stderr


def test_search_synonyms_are_checked_data(kb_copy: Path) -> None:
    syn = kb_copy / "search-synonyms.yaml"
    syn.write_text("synonyms:\n  - terms: [tumour, tumor]\n  - terms: [cancer, tumor]\n")
    r = runner.invoke(app, ["kb", "validate", str(kb_copy)])
    assert r.exit_code == 1
    assert "search-synonyms.yaml:3" in r.stderr and "'tumor' is already in the group" in r.stderr
    syn.write_text("synonyms:\n  - terms: [Tumour]\n")
    r = runner.invoke(app, ["kb", "validate", str(kb_copy)])
    assert r.exit_code == 1 and "search-synonyms.yaml:2" in r.stderr
    syn.write_text("synonyms:\n  - terms: [tumour, tumor]\n")
    assert runner.invoke(app, ["kb", "validate", str(kb_copy)]).exit_code == 0
    page = catalog_pages(kb_copy)["catalog.html"]
    assert '<script type="application/json" id="synonyms">[["tumour", "tumor"]]</script>' in page


def test_bundled_synonyms_cover_the_asked_spellings(kb: KnowledgeBase) -> None:
    groups = [set(g.terms) for g in kb.search_synonyms]
    for a, b in (("anaesthesia", "anesthesia"), ("faeces", "feces"), ("tumour", "tumor"),
                 ("incontinence", "loss of control"), ("fever", "pyrexia"),
                 ("weight loss", "lost weight"), ("anaesthesia", "numbness")):
        assert any({a, b} <= g for g in groups), (a, b)


def test_red_flag_overview_has_a_row_per_red_flag_alert(bundled_page: tuple[str, Page],
                                                        kb: KnowledgeBase) -> None:
    text, _ = bundled_page
    table = text[text.index('id="red-flag-table"'):]
    table = table[:table.index("</table>")]
    rows = table.split('<tr class="item">')[1:]
    expected = [(r.id, a.alert.code) for r in kb.rules for a in r.then
                if a.alert is not None and (r.stratum == "red-flags" or r.id.startswith("RF-"))]
    assert len(rows) == len(expected) > 20
    ces = next(row for row in rows if 'href="#RF-01-CES"' in row)
    assert "Suspected cauda equina syndrome" in ces and ">emergency<" in ces
    assert "<strong>stat</strong>" in ces and "holds exercise" in ces
    assert "https://pubmed.ncbi.nlm.nih.gov/32438853/" in ces
    watch = next(row for row in rows if 'href="#RF-03-WATCH"' in row)
    assert ">caution<" in watch and "exercise continues" in watch
    levels = [row.split('<td class="lvl-')[1].split('"')[0] for row in rows]
    assert levels[0] == "emergency"  # the most severe first within the first pathway


def test_exercise_pictures_hook(kb: KnowledgeBase) -> None:
    """One picture per exercise when a drawing function is given; none without one."""
    from cds.authoring import render_catalog_html

    def draw(ex: object) -> str | None:
        ident = getattr(ex, "id", "")
        return None if ident == "bird-dog" else f'<svg data-exercise="{ident}"></svg>'

    page = render_catalog_html(kb, {}, exercise_picture=draw)
    for ex in kb.exercises:
        assert (f'<svg data-exercise="{ex}"></svg>' in page) == (ex != "bird-dog"), ex
    assert page.count('<figure class="picture"') == len(kb.exercises) - ("bird-dog" in
                                                                           kb.exercises)
    assert '<figure class="picture"' not in render_catalog_html(kb, {})
