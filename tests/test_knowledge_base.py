"""Knowledge-base format v1: loading, and every error pinned to file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds import KnowledgeBaseError, load_knowledge_base
from cds._schema_export import schemas
from knowledge_base import bundled_path
from tests.conftest import STARTER


def test_bundled_knowledge_base_loads_clean() -> None:
    kb = load_knowledge_base(bundled_path())
    assert kb.ruleset_name == f"{kb.manifest.id}@{kb.manifest.version}"
    assert kb.warnings == []
    assert len(kb.exercises) >= 6
    # every rule names evidence with a stable identifier and a tag
    for rule in kb.rules:
        assert rule.evidence
        for e in rule.evidence:
            assert e.tag.value in {"R", "S", "M"}


def test_rules_are_in_stratum_then_priority_order() -> None:
    kb = load_knowledge_base(bundled_path())
    order = {s: i for i, s in enumerate(kb.manifest.strata)}
    keys = [(order[r.stratum], r.priority, r.id) for r in kb.rules]
    assert keys == sorted(keys)


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _problems(root: Path) -> list[str]:
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(root)
    return [str(p) for p in err.value.problems if p.severity == "error"]


def test_yaml_syntax_error_has_line_and_column(kb_copy: Path) -> None:
    rules = kb_copy / "rules" / "red-flags.yaml"
    lines = rules.read_text().splitlines()
    lines[6] = lines[6] + " : : ["
    rules.write_text("\n".join(lines) + "\n")
    (msg,) = _problems(kb_copy)
    assert msg.startswith("rules/red-flags.yaml:")
    _file, line, col, *_ = msg.split(":")
    assert int(line) >= 7 and int(col) >= 1


def test_unknown_fact_is_reported_at_the_rule(kb_copy: Path) -> None:
    _replace(kb_copy / "rules" / "red-flags.yaml", "- fact: rf-bowel-dysfunction",
             "- fact: rf-bowel-dysfuncion")
    (msg,) = _problems(kb_copy)
    assert "unknown fact 'rf-bowel-dysfuncion'" in msg
    assert msg.startswith("rules/red-flags.yaml:3:")


def test_bad_operator_points_into_the_condition(kb_copy: Path) -> None:
    _replace(kb_copy / "rules" / "classification.yaml", "      is: peripheralizes",
             "      is: peripheralizes\n      gt: 2")
    (msg,) = _problems(kb_copy)
    assert "exactly one of" in msg and "['is', 'gt']" in msg
    assert msg.startswith("rules/classification.yaml:8:7:")


def test_duplicate_rule_id_names_the_first(kb_copy: Path) -> None:
    _replace(kb_copy / "rules" / "movement-screen.yaml", "id: MV-02-TSPU", "id: MV-01-ROTARY")
    (msg,) = _problems(kb_copy)
    assert "duplicate rule id 'MV-01-ROTARY'" in msg and "first at" in msg


def test_rule_without_evidence_is_an_error(kb_copy: Path) -> None:
    p = kb_copy / "rules" / "classification.yaml"
    text = p.read_text()
    start = text.index("  - id: CL-04-EXT-DP")
    block = text[start:]
    block = block[: block.index("    evidence:")]
    p.write_text(text[:start] + block)
    msgs = _problems(kb_copy)
    assert any("evidence" in m and "Field required" in m for m in msgs)


def test_unknown_exercise_and_alert_codes(kb_copy: Path) -> None:
    _replace(kb_copy / "rules" / "movement-screen.yaml", "exercise: hip-hinge-dowel",
             "exercise: hip-hinge-broom")
    _replace(kb_copy / "rules" / "classification.yaml", "code: flexion-peripheralizes",
             "code: flexion-peripheralises")
    msgs = _problems(kb_copy)
    assert any("unknown exercise 'hip-hinge-broom'" in m for m in msgs)
    assert any("unknown alert code 'flexion-peripheralises'" in m for m in msgs)


def test_code_value_not_in_catalog(kb_copy: Path) -> None:
    _replace(kb_copy / "rules" / "classification.yaml", "is: peripheralizes",
             "is: peripheralises")
    (msg,) = _problems(kb_copy)
    assert "has no code ['peripheralises']" in msg


def test_a_value_test_of_another_type_than_the_facts_is_refused(kb_copy: Path) -> None:
    """Found by review of issue 15: ``aberrant-movement is 1`` (a boolean fact) was taken;
    durable reads true as equal to 1 and the reference does not. Refused by name, like an
    input value of another type."""
    _replace(kb_copy / "rules" / "movement-screen.yaml", "{fact: aberrant-movement, is: true}",
             "{fact: aberrant-movement, is: 1}")
    (msg,) = _problems(kb_copy)
    assert "'aberrant-movement' is a boolean; it is never [1]" in msg


def test_absence_of_a_fact_derived_in_same_stratum_is_refused(kb_copy: Path) -> None:
    p = kb_copy / "rules" / "movement-screen.yaml"
    p.write_text(p.read_text() + """
  - id: MV-99-NEGATION
    title: reads the absence of a same-stratum finding
    stratum: movement-screen
    when: {fact: finding.motor-control-deficit, missing: true}
    then:
      - finding: {name: finding.hinge-deficit}
    evidence: *mv-evidence
""")
    (msg,) = _problems(kb_copy)
    assert "absent" in msg and "later stratum" in msg


def test_reading_a_fact_a_later_stratum_also_derives_is_refused(kb_copy: Path) -> None:
    """SE-01 (selection) reads finding.motor-control-deficit; a rule in precautions, a later
    stratum, derives it too. The reference evaluator fires SE-01 at its stratum only, while
    durable would fire it again when the late fact arrives: the loader refuses the rule set,
    naming the reader."""
    p = kb_copy / "rules" / "movement-screen.yaml"
    p.write_text(p.read_text() + """
  - id: PR-99-LATE-MOTOR
    title: derives a finding an earlier stratum reads
    stratum: precautions
    when: {fact: repeated-extension-response, is: peripheralizes}
    then:
      - finding: {name: finding.motor-control-deficit}
    evidence: *mv-evidence
""")
    (msg,) = _problems(kb_copy)
    assert "SE-01-MOTOR-CONTROL" in msg
    assert "'finding.motor-control-deficit', which a later stratum derives too" in msg
    # the same producer in the reader's own stratum or earlier is fine
    p.write_text(p.read_text().replace("    stratum: precautions\n    when: {fact: repeated-ext",
                                       "    stratum: selection\n    when: {fact: repeated-ext"))
    assert "PR-99-LATE-MOTOR" in {r.id for r in load_knowledge_base(kb_copy).rules}


def test_unknown_parameter_and_unknown_override(kb_copy: Path) -> None:
    _replace(kb_copy / "rules" / "movement-screen.yaml", "{param: fms-deficit-max-score}}",
             "{param: fms-deficit-max}}")
    msgs = _problems(kb_copy)
    assert any("unknown parameter 'fms-deficit-max'" in m for m in msgs)
    with pytest.raises(KnowledgeBaseError, match="unknown parameter 'nope'"):
        load_knowledge_base(STARTER, {"nope": 3})


def test_exercise_regression_must_exist_and_dose_be_complete(kb_copy: Path) -> None:
    _replace(kb_copy / "exercises.yaml", "easier: hip-hinge-dowel", "easier: hip-hinge-stick")
    _replace(kb_copy / "exercises.yaml",
             "      frequency: 5\n      period: 1\n      period-unit: d",
             "      period: 1\n      period-unit: d")
    msgs = _problems(kb_copy)
    assert any("unknown exercise 'hip-hinge-stick'" in m for m in msgs)
    assert any("default dose lacks frequency" in m for m in msgs)


def test_veto_must_name_a_property(kb_copy: Path) -> None:
    _replace(kb_copy / "rules" / "precautions.yaml", "          direction: [flexion]\n", "")
    (msg,) = _problems(kb_copy)
    assert "a veto names at least one of direction, load, surface" in msg


def test_missing_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text("id: x\nversion: 1.0.0\ntitle: t\nstatus: draft\n"
                                            "strata: [a]\n")
    msgs = _problems(tmp_path)
    assert any("facts.yaml" in m and "missing" in m for m in msgs)
    assert any("no rule files" in m for m in msgs)


def test_error_type_is_a_value_error(kb_copy: Path) -> None:
    (kb_copy / "manifest.yaml").write_text("id: Not Valid\n")
    with pytest.raises(ValueError):
        load_knowledge_base(kb_copy)


def test_json_schema_export_covers_every_file_kind() -> None:
    docs = schemas()
    assert set(docs) == {"manifest", "facts", "exercises", "alerts", "rules", "search-synonyms"}
    assert "question" in docs["facts"]["$defs"]["FactDefinition"]["properties"]
    rule = docs["rules"]["$defs"]["Rule"]
    assert {"id", "when", "then", "evidence"} <= set(rule["properties"])
    assert set(rule["required"]) >= {"id", "when", "then", "evidence"}


def test_catalogs_may_be_split_into_one_file_per_pathway(kb_copy: Path) -> None:
    (kb_copy / "alerts").mkdir(exist_ok=True)
    (kb_copy / "alerts" / "extra.yaml").write_text(
        "alerts:\n  - code: extra-alert\n    display: Extra\n    definition: d\n")
    (kb_copy / "parameters").mkdir(exist_ok=True)
    (kb_copy / "parameters" / "extra.yaml").write_text(
        "parameters:\n  extra-threshold: {value: 3, tag: M, description: d, min: 0, max: 5}\n")
    kb = load_knowledge_base(kb_copy)
    assert "extra-alert" in kb.alerts and kb.parameter("extra-threshold") == 3
    (kb_copy / "alerts" / "dup.yaml").write_text(
        "alerts:\n  - code: extra-alert\n    display: Again\n    definition: d\n")
    (msg,) = _problems(kb_copy)
    # files are read in name order, so the second one is the one reported
    assert msg.startswith("alerts/extra.yaml:2:5") and "duplicate code 'extra-alert'" in msg
    assert "first at alerts/dup.yaml:2" in msg


def test_parameter_override_outside_its_range_is_refused() -> None:
    with pytest.raises(KnowledgeBaseError, match="outside its range"):
        load_knowledge_base(STARTER, {"fms-deficit-max-score": 7})
