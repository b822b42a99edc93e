"""`movement-cds kb diff` and the synthetic population it runs (issue 5, part 5).

Every deliberate change to a copy of the starter knowledge base must come out as exactly
that change, with counts checked against an independent evaluation of the same population.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cds import Evaluator, KnowledgeBase, load_knowledge_base
from fhir_adapters import read_bundle
from fhir_adapters._population import CONDITIONS, CONTRACT_ITEMS, synthetic_bundle
from movement_cds._cli import app
from movement_cds._kb_diff import DEFAULT_AS_OF, diff_knowledge_bases
from tests.conftest import STARTER

AS_OF = DEFAULT_AS_OF
N = 300
runner = CliRunner()


def _diff(old: Path, new: Path, *extra: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["kb", "diff", str(old), str(new), "--patients", str(N), *extra])
    return r.exit_code, r.stdout, r.stderr


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


def _population(kb_root: Path) -> list[tuple[int, Any]]:
    """The same population the diff runs, evaluated independently (old plan per patient)."""
    kb = load_knowledge_base(kb_root)
    ev = Evaluator(kb, "reference")
    out = []
    for i in range(N):
        patient = read_bundle(synthetic_bundle(1, i, AS_OF), kb=kb, as_of=AS_OF)
        out.append((patient, ev.evaluate(patient)))
    return out


# --- the synthetic population ---------------------------------------------------------------


def test_population_is_deterministic_for_a_seed() -> None:
    a = [synthetic_bundle(7, i, AS_OF) for i in range(50)]
    assert a == [synthetic_bundle(7, i, AS_OF) for i in range(50)]
    assert a != [synthetic_bundle(8, i, AS_OF) for i in range(50)]
    # a patient depends on (seed, index) only: chunks can run in any order, anywhere
    assert synthetic_bundle(7, 42, AS_OF) == a[42]


def test_population_codes_and_ranges_match_the_input_contract_catalog(
        kb: KnowledgeBase) -> None:
    """The generator's table is copied from the contract; the bundled fact catalog maps the
    same codes with the same ranges, so every input fact is exercised."""
    by_code = {(i.system, i.code): i for i in CONTRACT_ITEMS.values()}
    for name, d in kb.facts.items():
        if d.derived or d.coding is None or d.coding.code.startswith("exercise-"):
            continue  # follow-up responses are not generated (no previous plan)
        if name.startswith("condition-"):
            assert d.coding.code in CONDITIONS.values(), name
            continue
        item = by_code.get((d.coding.system, d.coding.code))
        assert item is not None, f"the population never sends {name}"
        assert item.kind == d.type and item.bilateral == d.bilateral, name
        if d.type in ("integer", "decimal"):
            assert (item.low, item.high) == (d.min, d.max), name
        if d.type == "code":
            assert set(item.codes) == set(d.codes or []), name


def test_population_covers_missing_preliminary_red_flags_and_bilateral_tests(
        kb: KnowledgeBase) -> None:
    issues: Counter[str] = Counter()
    facts: Counter[str] = Counter()
    components = no_fever = 0
    for i in range(N):
        b = synthetic_bundle(1, i, AS_OF)
        patient = read_bundle(b, kb=kb, as_of=AS_OF)  # never refused
        no_fever += "rf-fever" not in {f.name for f in patient.facts}
        for issue in patient.issues:
            issues[issue.message.split(":")[0].split(" before")[0]] += 1
        for f in patient.facts:
            if f.value is True or not f.name.startswith("rf-"):
                facts[f.name] += 1
        components += sum(1 for e in b["entry"] for c in e["resource"].get("component", [])
                          if c["code"]["coding"][0]["code"] in ("7771000", "24028007"))
    assert issues["status 'preliminary'"] > 0
    assert any(k.startswith("recorded") for k in issues)  # stale answers
    assert any(k.startswith("superseded") for k in issues)
    assert components > 0 and facts["fms-hurdle-step.left"] > 0 and facts["fms-hurdle-step"] > 0
    assert facts["fms-deep-squat.lbp-provoked"] > 0
    # red flags are rare but present; a core red-flag item is sometimes unanswered
    assert 0 < facts["rf-cancer-history"] < N * 0.15
    assert facts["rf-saddle-anaesthesia"] < N * 0.02
    assert no_fever > N * 0.05
    assert 0 < facts["age"] < N and facts["sex"] < N  # sometimes unknown


def test_population_is_valid_r4(kb: KnowledgeBase) -> None:
    for i in range(15):
        patient = read_bundle(synthetic_bundle(3, i, AS_OF), kb=kb, as_of=AS_OF,
                              strict_fhir=True)
        assert not [x for x in patient.issues if x.code == "structure"], i


# --- kb diff ----------------------------------------------------------------------------------


def test_a_knowledge_base_against_itself_changes_nothing(kb_copy: Path) -> None:
    code, out, _ = _diff(STARTER, kb_copy, "--fail-on-change")
    assert code == 0, out
    assert f"Synthetic population: 0 of {N} patients change" in out
    assert "Scenario corpus: 0 of" in out
    assert out.rstrip().endswith("no output changes")


def test_removing_a_recommendation_reports_exactly_that(kb_copy: Path,
                                                        tmp_path: Path) -> None:
    _replace(kb_copy / "rules" / "movement-screen.yaml", """      - recommend:
          exercise: dead-bug-eccentric
          why: >-
            Slow, controlled lowering trains the trunk to stay steady while the legs move.
""", "")
    report = tmp_path / "diff.json"
    code, out, _ = _diff(STARTER, kb_copy, "--json", str(report))
    assert code == 0  # a diff is information
    doc = json.loads(report.read_text())
    changes = doc["synthetic"]["changes"]
    assert changes, out
    assert {c["item"] for c in changes} == {"dead-bug-eccentric"}
    assert {c["after"] for c in changes} == {None}  # only "no longer ..."
    expected = sum(1 for _, plan in _population(STARTER)
                   if "dead-bug-eccentric" in {x.exercise_id for x in plan.exercises})
    by_cat = {c["category"]: c for c in changes}
    assert by_cat["proposed"]["patients"] == expected > 0
    assert by_cat["proposed"]["percent"] == pytest.approx(100 * expected / N, abs=0.01)
    assert len(by_cat["proposed"]["examples"]) == 3
    for ex in by_cat["proposed"]["examples"]:
        assert ex["rules_before"] == ["SE-01-MOTOR-CONTROL"] and ex["rules_after"] == []
        assert ex["key_facts"]  # the facts behind the deficit that fired the rule
    assert "exercise dead-bug-eccentric no longer proposed" in out
    code, _, _ = _diff(STARTER, kb_copy, "--fail-on-change")
    assert code == 1
    # the example patients can be written out and replayed: OLD proposes it, NEW does not
    code, _, err = _diff(STARTER, kb_copy, "--examples-dir", str(tmp_path / "ex"))
    assert code == 0 and "example patient written to" in err
    first = by_cat["proposed"]["examples"][0]["index"]
    data = json.loads((tmp_path / "ex" / f"synthetic-{first}.json").read_text())
    for root, proposed in ((STARTER, True), (kb_copy, False)):
        kb = load_knowledge_base(root)
        plan = Evaluator(kb, "reference").evaluate(read_bundle(data, kb=kb, as_of=AS_OF))
        assert ("dead-bug-eccentric" in {x.exercise_id for x in plan.exercises}) == proposed


def test_raising_a_threshold_only_adds_exercises_for_patients_at_the_new_threshold(
        kb_copy: Path, tmp_path: Path) -> None:
    _replace(kb_copy / "manifest.yaml", "fms-deficit-max-score:\n    value: 1",
             "fms-deficit-max-score:\n    value: 2")
    report = tmp_path / "diff.json"
    code, out, _ = _diff(STARTER, kb_copy, "--json", str(report))
    assert code == 0
    changes = json.loads(report.read_text())["synthetic"]["changes"]
    assert changes
    # more deficits: exercises are added; one leaves the plan only to make way for a
    # higher-ranked exercise of the same purpose (it is then deferred, never dropped)
    by_key = {(c["category"], c["item"], c["after"]): c["patients"] for c in changes}
    for c in changes:
        assert c["after"] == "yes" or (c["category"] == "proposed" and by_key.get(
            ("deferred", c["item"], "yes")) == c["patients"]), out
    bird = next(c for c in changes if c["change"] == "exercise bird-dog-breathing now proposed")
    for ex in bird["examples"]:
        assert ex["rules_after"] == ["SE-01-MOTOR-CONTROL"]
        assert "MV-01-ROTARY" in ex["fired_only_after"] or \
            "MV-02-TSPU" in ex["fired_only_after"]
        # the deficit is a score of exactly 2: deficit under the new threshold only
        assert "2" in {ex["key_facts"].get("fms-rotary-stability"),
                       ex["key_facts"].get("fms-trunk-stability-pushup")}


def test_adding_a_veto_reports_the_avoided_exercises(kb_copy: Path, tmp_path: Path) -> None:
    rule = """
  - id: PR-02-NO-UNSTABLE
    title: No unstable surface in severe pain (test rule)
    stratum: precautions
    priority: 20
    when: {fact: pain-now, ge: 7}
    then:
      - veto:
          surface: [unstable]
          why: Severe pain today, so unstable surfaces are avoided.
    evidence:
      - id: GUIDELINE:test-only
        citation: A deliberate change for the kb diff test.
        tag: M
        strength: expert-opinion
"""
    path = kb_copy / "rules" / "precautions.yaml"
    path.write_text(path.read_text() + rule)
    report = tmp_path / "diff.json"
    code, _, _ = _diff(STARTER, kb_copy, "--json", str(report))
    assert code == 0
    changes = json.loads(report.read_text())["synthetic"]["changes"]
    unstable = {e.id for e in load_knowledge_base(STARTER).exercises.values()
                if e.surface.value == "unstable"}
    avoided = [c for c in changes if c["category"] == "avoided"]
    assert {c["item"] for c in avoided} == unstable
    severe = sum(1 for patient, _ in _population(STARTER)
                 if any(f.name == "pain-now" and f.value >= 7 for f in patient.facts))
    assert all(c["patients"] == severe > 0 and c["after"] == "yes" for c in avoided)
    # anything else that changes is one of those exercises leaving the plan
    others = [c for c in changes if c["category"] != "avoided"]
    assert all(c["item"] in unstable and c["after"] is None for c in others), others
    ex = avoided[0]["examples"][0]
    assert ex["rules_after"] == ["PR-02-NO-UNSTABLE"]
    assert ex["fired_only_after"] == ["PR-02-NO-UNSTABLE"]
    assert int(ex["key_facts"]["pain-now"]) >= 7


def test_a_changed_maximum_age_shows_as_facts_read_differently(kb_copy: Path) -> None:
    """The population is FHIR, so a version that changes how a fact is read is compared on
    the same input (here: a fever answer expires after 1 day instead of never)."""
    _replace(kb_copy / "facts.yaml", "  - name: rf-fever\n",
             "  - name: rf-fever\n    max-age-days: 1\n")
    report = diff_knowledge_bases(STARTER, kb_copy, patients=N, seed=1)
    assert report.population.changes
    ex = report.population.changes[0].examples[0]
    assert "rf-fever" in ex.facts_differ
    assert ex.facts_differ["rf-fever"][1] == "(missing)"


def test_workers_give_the_same_report_as_one_process(kb_copy: Path) -> None:
    _replace(kb_copy / "manifest.yaml", "fms-deficit-max-score:\n    value: 1",
             "fms-deficit-max-score:\n    value: 2")
    one = diff_knowledge_bases(STARTER, kb_copy, patients=120, seed=5, workers=1)
    two = diff_knowledge_bases(STARTER, kb_copy, patients=120, seed=5, workers=2)
    assert one.to_json() == two.to_json()
    assert one.population.changes


def test_scenarios_of_both_versions_are_run(kb_copy: Path) -> None:
    """A scenario only the new version has is run by the old one too (the union)."""
    scen = kb_copy / "scenarios" / "starter-rules.yaml"
    scen.write_text(scen.read_text() + """
  - id: only-in-new-severe-pain
    facts: {pain-now: 9}
    expect: {exercise-held: false}
""")
    _replace(kb_copy / "manifest.yaml", "fms-deficit-max-score:\n    value: 1",
             "fms-deficit-max-score:\n    value: 2")
    old = diff_knowledge_bases(STARTER, STARTER, patients=0)
    new = diff_knowledge_bases(STARTER, kb_copy, patients=0)
    assert new.scenarios.patients == old.scenarios.patients + 1
    assert new.scenarios.changes  # the threshold changes some scenario outcome
    assert all(m.startswith("scenario ") for c in new.scenarios.changes for m in c.members)


def test_progress_is_reported_on_stderr_about_every_ten_percent(kb_copy: Path) -> None:
    _, _, err = _diff(STARTER, kb_copy)
    lines = [x for x in err.splitlines() if "synthetic patients" in x]
    assert 5 <= len(lines) <= 12, err
    # the mixed population, then the primary-care one for the profiles: 2 x N in all
    assert lines[-1].startswith(f"kb diff: {2 * N}/{2 * N} synthetic patients (100%)")


def test_bad_directories_and_invalid_knowledge_bases_fail_clearly(kb_copy: Path,
                                                                  tmp_path: Path) -> None:
    code, out, err = _diff(tmp_path / "nope", kb_copy)
    assert code == 1 and "OLD knowledge base" in err and "not a directory" in err
    assert "Traceback" not in err + out
    (kb_copy / "manifest.yaml").write_text("id: [broken\n")
    code, out, err = _diff(STARTER, kb_copy)
    assert code == 1
    assert "NEW knowledge base" in err and "is invalid" in err
    assert "manifest.yaml" in err
    code, _, err = _diff(STARTER, STARTER, "--as-of", "yesterday")
    assert code == 2 and "--as-of" in err


def test_the_population_is_the_same_for_any_as_of_offset() -> None:
    """Dates are relative to the as-of instant: moving it moves every date, not the content."""
    later = datetime(2027, 1, 1, tzinfo=UTC)
    a, b = synthetic_bundle(1, 3, AS_OF), synthetic_bundle(1, 3, later)
    kinds = [e["resource"]["resourceType"] for e in a["entry"]]
    assert kinds == [e["resource"]["resourceType"] for e in b["entry"]]
