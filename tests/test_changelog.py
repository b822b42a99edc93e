"""Versioning (issue #5 part 6): the manifest version is semver and CHANGELOG.md has a section
for it; ``kb validate`` says so with file:line:column."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds._changelog import check_changelog, parse_changelog, semver_key
from knowledge_base import bundled_path
from movement_cds._cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def set_version(kb: Path, version: str) -> None:
    m = kb / "manifest.yaml"
    m.write_text(re.sub(r"(?m)^version: .*$", f"version: {version}", m.read_text()))


def errors(kb: Path) -> list[str]:
    return [str(p) for p in check_changelog(kb) if p.severity == "error"]


def test_bundled_and_starter_pass() -> None:
    from tests.conftest import STARTER

    assert check_changelog(bundled_path()) == []
    assert check_changelog(STARTER) == []


def test_bundled_changelog_names_the_manifest_version() -> None:
    from cds import load_knowledge_base

    kb = load_knowledge_base(bundled_path())
    log = parse_changelog((bundled_path() / "CHANGELOG.md").read_text())
    entry = log.entry(kb.manifest.version)
    assert entry is not None and entry.date is not None
    assert entry.changes["Added"], "the release section lists what it adds"


def test_missing_changelog(kb_copy: Path) -> None:
    (kb_copy / "CHANGELOG.md").unlink()
    [e] = errors(kb_copy)
    assert e.startswith("CHANGELOG.md: error: CHANGELOG.md is missing")
    assert "## [0.1.0]" in e


def test_no_section_for_the_manifest_version(kb_copy: Path) -> None:
    set_version(kb_copy, "0.2.0")
    [e] = errors(kb_copy)
    assert e.startswith("CHANGELOG.md:5:1: error: no section for version 0.2.0")


def test_empty_section(kb_copy: Path) -> None:
    log = kb_copy / "CHANGELOG.md"
    log.write_text("# Changelog\n\n## [0.1.0] - 2026-11-22\n\n### Added\n")
    [e] = errors(kb_copy)
    assert e == ("CHANGELOG.md:3:1: error: section [0.1.0] lists no changes (add items under "
                 "'### Added', '### Changed', ...)")


@pytest.mark.parametrize("version", ["01.0.0", "1.0.0-", "1.0.0-01"])
def test_manifest_version_not_semver(kb_copy: Path, version: str) -> None:
    set_version(kb_copy, f'"{version}"')
    errs = errors(kb_copy)
    assert errs[0].startswith("manifest.yaml:2:10: error: version '"), errs
    assert "is not a semantic version" in errs[0]


def test_malformed_headings_and_dates(kb_copy: Path) -> None:
    (kb_copy / "CHANGELOG.md").write_text(
        "# Changelog\n\n## [Unreleased]\n\n### Added\n\n- next\n\n"
        "## [0.1.0] - 22/11/2026\n\n### Added\n\n- x\n\n"
        "## [0.1] - 2026-01-01\n\n### Tweaked\n\n- y\n\n"
        "## Version 0.0.1\n\n- z\n")
    problems = [str(p) for p in check_changelog(kb_copy)]
    assert "CHANGELOG.md:9:14: error: section [0.1.0]: '22/11/2026' is not a date (YYYY-MM-DD)" \
        in problems
    assert any(p.startswith("CHANGELOG.md:15:5: error: section '0.1' is not a semantic")
               for p in problems)
    assert any(p.startswith("CHANGELOG.md:17:5: warning: unknown change type 'Tweaked'")
               for p in problems)
    assert any(p.startswith("CHANGELOG.md:21:1: error: a section heading is") for p in problems)


def test_order_and_newer_sections_warn(kb_copy: Path) -> None:
    (kb_copy / "CHANGELOG.md").write_text(
        "# Changelog\n\n## [0.0.9] - 2026-01-01\n### Added\n- a\n"
        "## [0.1.0] - 2026-02-01\n### Added\n- b\n"
        "## [0.3.0] - 2026-03-01\n### Added\n- c\n")
    problems = check_changelog(kb_copy)
    assert all(p.severity == "warning" for p in problems), problems
    text = [str(p) for p in problems]
    assert "CHANGELOG.md:6:1: warning: section [0.1.0] should come before [0.0.9] " \
           "(newest first)" in text
    assert any("section [0.3.0] is newer than the manifest's version 0.1.0" in t for t in text)


def test_kb_validate_reports_it(kb_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "kb", "validate", str(kb_copy))
    assert code == 0, err
    set_version(kb_copy, "0.2.0")
    code, _out, err = run(capsys, "kb", "validate", str(kb_copy))
    assert code == 1
    assert "CHANGELOG.md:5:1: error: no section for version 0.2.0" in err
    assert "Traceback" not in err


def test_wrapped_items_are_joined() -> None:
    log = parse_changelog("## [1.0.0] - 2026-01-01\n### Fixed\n- one\n  continued\n- two\n")
    entry = log.entry("1.0.0")
    assert entry is not None and entry.changes == {"Fixed": ["one continued", "two"]}
    assert log.problems == []


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30),
                          st.sampled_from(["", "-alpha", "-alpha.1", "-beta", "-rc.1"])),
                min_size=2, max_size=6))
def test_semver_precedence(versions: list[tuple[int, int, int, str]]) -> None:
    """Sorted by the key = sorted by (major, minor, patch), pre-releases before releases."""
    texts = [f"{a}.{b}.{c}{pre}" for a, b, c, pre in versions]
    order = {"-alpha": 0, "-alpha.1": 1, "-beta": 2, "-rc.1": 3, "": 4}
    expected = sorted(versions, key=lambda v: (v[0], v[1], v[2], order[v[3]]))
    got = sorted(texts, key=semver_key)
    assert [semver_key(t) for t in got] == [semver_key(f"{a}.{b}.{c}{p}")
                                            for a, b, c, p in expected]


def test_every_card_and_plan_names_the_release(kb: Any) -> None:
    """The version is in every output: every card type's source.label and the CarePlan."""
    import json
    from datetime import datetime, timedelta

    from cds_service._app import SERVICES
    from cds_service._cards import plan_cards
    from movement_cds._api import DecisionSupport

    support = DecisionSupport(kb)
    indicators: set[str] = set()
    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.json"))
    for path in examples:
        if path.name.startswith("invalid"):
            continue
        bundle = json.loads(path.read_text())
        dates = [r["effectiveDateTime"] for e in bundle["entry"]
                 if "effectiveDateTime" in (r := e["resource"])]
        as_of = max(datetime.fromisoformat(d.replace("Z", "+00:00")) for d in dates) \
            + timedelta(hours=1)
        result = support.evaluate(bundle, as_of=as_of)
        careplan = result.bundle["entry"][0]["resource"]
        assert careplan["instantiatesUri"][0].endswith(f"|{kb.manifest.version}")
        for service in SERVICES:
            for card in plan_cards(result.plan, result.bundle, service.id):
                assert card["source"]["label"] == kb.ruleset_name, (path.name, card)
                indicators.add(card["indicator"])
    assert indicators == {"critical", "warning", "info"}
