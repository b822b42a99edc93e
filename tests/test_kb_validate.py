"""``movement-cds kb validate``: each check fails on a deliberately broken copy of the starter
knowledge base, with file:line:column, a plain sentence and the right exit status."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from cds import KnowledgeBase, compile_knowledge_base
from cds._kb_lint import lint_knowledge_base
from movement_cds._cli import app


def validate(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["kb", "validate", *args])
    return r.exit_code, r.stdout, r.stderr


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def test_good_starter_kb_passes_with_the_overlap_warning(kb_copy: Path) -> None:
    code, out, err = validate(str(kb_copy))
    assert code == 0, err
    assert "starter-fixture@0.1.0: 17 rules" in out and "1 warning(s)" in out
    warning = err.strip().splitlines()
    assert len(warning) == 1
    w = warning[0]
    assert w.startswith("rules/precautions.yaml:3:5: warning: rule SE-02-HIP-DISSOCIATION")
    assert "rule PR-01-NO-FLEXION vetoes it" in w
    # the witness: a patient for which both rules fire (found by evaluating it)
    assert "fms-active-slr = 0" in w and "repeated-flexion-response = peripheralizes" in w
    assert "overrides: [SE-02-HIP-DISSOCIATION]" in w


def test_overrides_acknowledges_an_intended_overlap_and_stale_ones_warn(kb_copy: Path) -> None:
    rules = kb_copy / "rules" / "precautions.yaml"
    edit(rules, "    stratum: precautions\n",
         "    stratum: precautions\n    overrides: [SE-02-HIP-DISSOCIATION]\n")
    code, out, err = validate(str(kb_copy))
    assert code == 0 and err == "" and "0 warning(s)" in out
    edit(rules, "overrides: [SE-02-HIP-DISSOCIATION]",
         "overrides: [SE-02-HIP-DISSOCIATION, RF-01-CES]")
    code, _, err = validate(str(kb_copy))
    assert code == 0
    assert "overrides names 'RF-01-CES', which recommends nothing this rule vetoes" in err
    assert f"rules/precautions.yaml:{line_of(rules, 'overrides:')}:" in err


def test_strict_turns_warnings_into_failure(kb_copy: Path) -> None:
    code, _, err = validate(str(kb_copy), "--strict")
    assert code == 1 and "--strict" in err


def test_unknown_fact_points_at_the_misspelt_name_with_near_matches(kb_copy: Path) -> None:
    rules = kb_copy / "rules" / "red-flags.yaml"
    edit(rules, "fact: rf-bowel-dysfunction\n", "fact: rf-bowel-dysfuntion\n")
    code, _, err = validate(str(kb_copy))
    assert code == 1
    line = line_of(rules, "rf-bowel-dysfuntion")
    assert re.search(rf"rules/red-flags.yaml:{line}:\d+: error: rule RF-01-CES: unknown fact "
                     r"'rf-bowel-dysfuntion'; did you mean 'rf-bowel-dysfunction'", err), err
    assert "error(s)" in err.strip().splitlines()[-1]


def test_unknown_exercise_and_code_and_alert(kb_copy: Path) -> None:
    rules = kb_copy / "rules" / "movement-screen.yaml"
    edit(rules, "exercise: hip-hinge-dowel", "exercise: hip-hinge-dowell")
    cl = kb_copy / "rules" / "classification.yaml"
    edit(cl, "is: peripheralizes", "is: peripheralises")
    edit(cl, "code: flexion-peripheralizes", "code: flexion-peripheralises")
    code, _, err = validate(str(kb_copy))
    assert code == 1
    assert (f"rules/movement-screen.yaml:{line_of(rules, 'hip-hinge-dowell')}:" in err
            and "unknown exercise 'hip-hinge-dowell'; did you mean 'hip-hinge-dowel'" in err)
    assert f"rules/classification.yaml:{line_of(cl, 'peripheralises')}:" in err
    assert "has no code ['peripheralises']" in err
    assert "unknown alert code 'flexion-peripheralises'" in err


def test_duplicate_ids(kb_copy: Path) -> None:
    rules = kb_copy / "rules" / "movement-screen.yaml"
    edit(rules, "id: MV-02-TSPU", "id: MV-01-ROTARY")
    code, _, err = validate(str(kb_copy))
    assert code == 1
    assert (f"rules/movement-screen.yaml:{line_of(rules, 'id: MV-01-ROTARY') + 0}"
            in err or "duplicate rule id 'MV-01-ROTARY'" in err)
    assert "duplicate rule id 'MV-01-ROTARY' (first at rules/movement-screen.yaml:" in err


def test_duplicate_scenario_id(kb_copy: Path) -> None:
    sc = kb_copy / "scenarios" / "starter-rules.yaml"
    edit(sc, "id: saddle-anaesthesia-alone-is-an-emergency",
         "id: bladder-dysfunction-alone-is-an-emergency")
    code, _, err = validate(str(kb_copy))
    assert code == 1
    assert "duplicate scenario id 'bladder-dysfunction-alone-is-an-emergency'" in err
    assert "scenarios/starter-rules.yaml:" in err


def test_unreachable_rules_through_a_chain(kb_copy: Path) -> None:
    """A test no value can pass makes its rule dead, and with it every rule that needs what
    that rule derives: both are named, at the exact condition."""
    cl = kb_copy / "rules" / "classification.yaml"
    edit(cl, "    when:\n      fact: repeated-flexion-response\n      is: peripheralizes\n",
         "    when:\n      all:\n        - {fact: repeated-flexion-response, is: peripheralizes}"
         "\n        - {fact: pain-now, gt: 10}\n")
    code, _, err = validate(str(kb_copy))
    assert code == 0, err  # warnings only
    assert (f"rules/classification.yaml:{line_of(cl, 'gt: 10')}:" in err
            and "rule CL-04-FLEX-PERIPH can never fire: 'pain-now gt 10' can never hold "
            "(pain-now ranges 0 to 10)" in err)
    pr = kb_copy / "rules" / "precautions.yaml"
    assert (f"rules/precautions.yaml:{line_of(pr, 'fact: finding.flexion-peripheralizes')}:"
            in err)
    assert ("rule PR-01-NO-FLEXION can never fire: no rule that can fire derives "
            "'finding.flexion-peripheralizes'") in err
    # a dead veto no longer overlaps anything
    assert "vetoes it" not in err


def test_value_no_rule_derives(kb_copy: Path) -> None:
    pr = kb_copy / "rules" / "precautions.yaml"
    edit(pr, "fact: finding.flexion-peripheralizes\n      is: true",
         "fact: finding.flexion-peripheralizes\n      is: false")
    code, _, err = validate(str(kb_copy))
    assert code == 0
    assert ("rule PR-01-NO-FLEXION can never fire: 'finding.flexion-peripheralizes is false' "
            "can never hold: rules derive 'finding.flexion-peripheralizes' only as True") in err


def test_input_fact_nothing_carries(kb_copy: Path) -> None:
    facts = kb_copy / "facts.yaml"
    edit(facts, "    unit: '{score}'\n    coding:\n      system: http://loinc.org\n"
         "      code: 72514-3\n      display: Pain severity - 0-10 verbal numeric rating "
         "[Score] - Reported\n", "    unit: '{score}'\n")
    code, _, err = validate(str(kb_copy))
    assert code == 0
    assert "fact 'pain-now' is an input but has no coding, so no input can carry it" in err
    assert re.search(r"facts.yaml:\d+:\d+: warning: fact 'pain-now'", err)


def test_rule_without_evidence_is_said_plainly(kb_copy: Path) -> None:
    pr = kb_copy / "rules" / "precautions.yaml"
    text = pr.read_text()
    start = text.index("    evidence:\n")
    pr.write_text(text[:start])
    code, _, err = validate(str(kb_copy))
    assert code == 1
    assert re.search(r"rules/precautions.yaml:3:5: error: rule PR-01-NO-FLEXION has no "
                     r"evidence: every rule names at least one source", err), err
    pr.write_text(text[:start] + "    evidence: []\n")
    code, _, err = validate(str(kb_copy))
    assert code == 1 and "rule PR-01-NO-FLEXION has no evidence" in err


def _without_overlap_warning(kb_copy: Path) -> Path:
    """The starter copy with its one intended overlap acknowledged: 0 warnings, so --strict
    passes until the edit under test."""
    rules = kb_copy / "rules" / "precautions.yaml"
    edit(rules, "    stratum: precautions\n",
         "    stratum: precautions\n    overrides: [SE-02-HIP-DISSOCIATION]\n")
    code, _, err = validate("--strict", str(kb_copy))
    assert code == 0, err
    return kb_copy / "rules" / "red-flags.yaml"


def test_strict_fails_on_evidence_without_an_identifier(kb_copy: Path) -> None:
    rf = _without_overlap_warning(kb_copy)
    edit(rf, "      - id: PMID:32438853\n", "      - id: GUIDELINE:TBD\n")
    code, _, err = validate("--strict", str(kb_copy))
    assert code == 1
    line = line_of(rf, "GUIDELINE:TBD")
    assert re.search(rf"rules/red-flags.yaml:{line}:\d+: warning: rule RF-01-CES: evidence "
                     r"'GUIDELINE:TBD' has no identifier: name the source by PMID:", err), err
    code, _, err = validate(str(kb_copy))  # a warning: without --strict the status is 0
    assert code == 0 and "has no identifier" in err
    # a placeholder spelt another way is caught too; a real document name is not
    edit(rf, "GUIDELINE:TBD", "GUIDELINE:n_a")
    assert "'GUIDELINE:n_a' has no identifier" in validate("--strict", str(kb_copy))[2]
    edit(rf, "GUIDELINE:n_a", "GUIDELINE:NICE-CKS-sciatica-red-flags")
    code, _, err = validate("--strict", str(kb_copy))
    assert code == 0, err


def test_evidence_with_no_id_at_all_is_an_error(kb_copy: Path) -> None:
    rf = _without_overlap_warning(kb_copy)
    edit(rf, "      - id: PMID:32438853\n        citation:", "      - citation:")
    code, _, err = validate(str(kb_copy))
    assert code == 1
    assert re.search(r"error: rule RF-01-CES: 'evidence\.0\.id' is required but missing", err), err


def test_strict_fails_on_an_unverified_identifier_not_tagged_m(kb_copy: Path) -> None:
    rf = _without_overlap_warning(kb_copy)
    edit(rf, "Spinal Pathologies. J Orthop Sports Phys Ther 2020;50(7):350-372.\n        tag: R",
         "Spinal Pathologies. J Orthop Sports Phys Ther 2020;50(7):350-372 (identifier\n"
         "          unverified).\n        tag: R")
    code, _, err = validate("--strict", str(kb_copy))
    assert code == 1
    assert ("rule RF-01-CES: evidence 'PMID:32438853' says 'identifier unverified' but is "
            "tagged R") in err, err
    edit(rf, "          unverified).\n        tag: R", "          unverified).\n        tag: M")
    code, _, err = validate("--strict", str(kb_copy))
    assert code == 0, err


def test_every_bundled_evidence_id_has_an_identifier(kb: KnowledgeBase) -> None:
    from cds._kb_lint import has_identifier
    ids = {e.id for r in kb.rules for e in r.evidence}
    assert ids and all(has_identifier(i) for i in ids), sorted(i for i in ids
                                                               if not has_identifier(i))
    unverified = [(r.id, e.id) for r in kb.rules for e in r.evidence
                  if "identifier unverified" in e.citation.lower()]
    assert unverified  # the knowledge base does carry ids it could not check
    assert all(e.tag.value == "M" for r in kb.rules for e in r.evidence
               if "identifier unverified" in e.citation.lower())


def test_rule_without_scenario_is_a_warning(kb_copy: Path) -> None:
    sc = kb_copy / "scenarios" / "starter-rules.yaml"
    edit(sc, "covers: [PR-01-NO-FLEXION]", "covers: []", count=-1)
    code, _, err = validate(str(kb_copy))
    assert code == 0
    assert re.search(r"rules/precautions.yaml:3:5: warning: rule PR-01-NO-FLEXION has no "
                     r"scenario test", err), err


def test_scenario_naming_unknown_things_is_an_error(kb_copy: Path) -> None:
    sc = kb_copy / "scenarios" / "starter-rules.yaml"
    edit(sc, "exercises-exclude: [controlled-pelvic-tilt]",
         "exercises-exclude: [controlled-pelvic-tlit]")
    edit(sc, "covers: [CL-04-FLEX-PERIPH]", "covers: [CL-04-FLEX-PERIPHERAL]")
    code, _, err = validate(str(kb_copy))
    assert code == 1
    assert (f"scenarios/starter-rules.yaml:{line_of(sc, 'controlled-pelvic-tlit')}:" in err
            and "expects unknown exercise 'controlled-pelvic-tlit'; did you mean "
            "controlled-pelvic-tilt?" in err)
    assert "covers unknown rule 'CL-04-FLEX-PERIPHERAL'" in err


def test_bad_yaml_and_missing_directory(kb_copy: Path, tmp_path: Path) -> None:
    (kb_copy / "rules" / "precautions.yaml").write_text("rules:\n  - id: [unclosed\n")
    code, _, err = validate(str(kb_copy))
    assert code == 1 and "rules/precautions.yaml:" in err and "not valid YAML" in err
    code, _, err = validate(str(tmp_path / "nope"))
    assert code == 1 and "not a knowledge-base directory" in err


def test_bundled_knowledge_base_has_no_lint_warnings(kb: KnowledgeBase) -> None:
    """The bundled KB is clean: every overlap it has is acknowledged with overrides and every
    rule can fire (scenario coverage is pinned by test_scenarios.py)."""
    problems = lint_knowledge_base(kb, compile_knowledge_base(kb))
    assert [str(p) for p in problems if "no scenario test" not in p.message] == []


def test_trajectories_count_as_scenario_tests_and_unknown_rules_in_them_are_errors(
    tmp_path: Path,
) -> None:
    import shutil

    from knowledge_base import bundled_path

    root = tmp_path / "kb"
    shutil.copytree(bundled_path(), root, ignore=shutil.ignore_patterns("__pycache__"))
    code, _out, err = validate(str(root))
    assert code == 0 and "has no scenario test" not in err
    # without the trajectories, the rules only they cover lose their test
    def covered(path: Path) -> set[str]:
        return {r.strip() for m in re.finditer(r"covers: \[([^\]]*)\]", path.read_text())
                for r in m.group(1).split(",")}

    trajectories = sorted((root / "trajectories").glob("*.yaml"))
    texts = {p: p.read_text() for p in trajectories}
    only_there = set().union(*(covered(p) for p in trajectories)) - set().union(
        *(covered(p) for p in (root / "scenarios").glob("*.yaml")))
    assert only_there
    for p in trajectories:
        p.unlink()
    code, _out, err = validate(str(root))
    assert code == 0
    for rid in only_there:
        assert f"warning: rule {rid} has no scenario test" in err, err
    for p, text in texts.items():
        p.write_text(text)
    # a trajectory that covers a rule the knowledge base does not have tests nothing
    safety = root / "trajectories" / "safety.yaml"
    text = safety.read_text()
    first = re.search(r"covers: \[([A-Z0-9-]+)", text)
    assert first is not None
    safety.write_text(text.replace(first.group(0), "covers: [DS-04-PERIPHERALISATON", 1))
    code, _out, err = validate(str(root))
    assert code == 1
    assert re.search(r"trajectories/safety\.yaml:\d+: error: trajectory '[a-z0-9-]+' covers "
                     r"unknown rule 'DS-04-PERIPHERALISATON'; did you mean", err), err
