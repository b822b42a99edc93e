"""The committed clinical catalog must match the knowledge base (`movement-cds kb docs`)."""

from __future__ import annotations

from pathlib import Path

from knowledge_base import bundled_path
from movement_cds._docs import catalog_pages
from tests.conftest import STARTER

DOCS = Path(__file__).resolve().parent.parent / "docs" / "clinical"


def test_committed_catalog_is_current() -> None:
    pages = catalog_pages(bundled_path())
    assert set(pages) == {"rules.md", "exercises.md", "parameters.md", "questions.md",
                          "red-flags.md", "catalog.html"}
    stale = [name for name, text in pages.items()
             if not (DOCS / name).is_file() or (DOCS / name).read_text() != text]
    assert not stale, f"docs/clinical is stale ({stale}); run: movement-cds kb docs"


def test_catalog_shows_conditions_outputs_evidence_and_scenarios() -> None:
    pages = catalog_pages(STARTER)
    rules = pages["rules.md"]
    assert "### RF-01-CES: Suspected cauda equina syndrome" in rules
    assert "- `rf-bladder-dysfunction` is `true`" in rules
    assert "alert `suspected-cauda-equina` (emergency; referral **stat**" in rules
    assert "`PMID:32438853` [R, strong]" in rules
    assert "**Scenarios**: `bladder-dysfunction-alone-is-an-emergency`" in rules
    assert "| `fms-deficit-max-score` | `1` | 0.0 to 3.0 | M |" in pages["parameters.md"]
    assert "## bird-dog-breathing" in pages["exercises.md"]


def test_markdown_questions_and_red_flag_overview() -> None:
    pages = catalog_pages(bundled_path())
    questions = pages["questions.md"]
    assert "## Red-flag screen" in questions
    assert ("| Have you ever had cancer? | `rf-cancer-history` (red flag, specific) | "
            "`http://movement-cds.org/fhir/CodeSystem/screen\\|rf-cancer-history` | yes / no |"
            in questions)
    assert "`http://loinc.org\\|91340-0`" in questions  # STarT Back item 1's LOINC code
    overview = pages["red-flags.md"]
    rows = [line for line in overview.splitlines() if line.startswith("| ") and "`RF-" in line]
    assert rows[0].startswith("| Suspected cauda equina syndrome (`suspected-cauda-equina`) "
                              "| `RF-01-CES` Suspected cauda equina syndrome | emergency | "
                              "referral **stat**")
    assert "**holds exercise**" in rows[0] and "`PMID:32438853` [R]" in rows[0]
    assert all(line.count(" | ") == 4 for line in rows), "a cell split by a pipe"
