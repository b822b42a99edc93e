"""The clinical vignettes (knowledge_base/scenarios/vignettes.yaml and vignettes/*.json).

The scenario tests (tests/test_scenarios.py) check every vignette's expectations on both
engines; these tests check that the files are generated, well formed and complete, and the
few things a scenario cannot say (order of the plan, input issues).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cds import Evaluator
from cds._scenarios import ScenarioOutcome, load_scenarios
from knowledge_base import bundled_path
from movement_cds._kbtools import run_all_scenarios

VIGNETTES = bundled_path() / "scenarios" / "vignettes"
GENERATOR = VIGNETTES / "_generate.py"
FILES = sorted(VIGNETTES.glob("*.json"))
SCENARIOS = {sc.id: sc for sc, rel, _ in load_scenarios(bundled_path())
             if rel == "scenarios/vignettes.yaml"}
# Answers are dated 2026-10-28..2026-11-01 (as-of 2026-11-02T09:00Z), except on purpose here.
STALE_ON_PURPOSE = {"stale-red-flag-answer": {"obs-rf-cancer-history"}}


@pytest.fixture(scope="module")
def outcomes(durable: Evaluator) -> dict[str, ScenarioOutcome]:
    return {o.scenario.id: o
            for o in run_all_scenarios(durable, bundled_path(), only=set(SCENARIOS))}


def _bundle(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_generated_files_are_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(GENERATOR), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_at_least_30_vignettes_each_with_one_scenario() -> None:
    assert len(FILES) >= 30
    assert len(SCENARIOS) == len(FILES)
    by_bundle = {sc.bundle: sid for sid, sc in SCENARIOS.items()}
    for path in FILES:
        assert by_bundle.get(f"vignettes/{path.name}") == f"vignette-{path.stem}", path.name
    for sid, sc in SCENARIOS.items():
        assert sc.as_of is not None and sc.as_of.isoformat() == "2026-11-02T09:00:00+00:00", sid
        assert sc.description, sid


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_vignette_bundle_is_well_formed(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    bundle = _bundle(path)
    assert text == json.dumps(bundle, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == 1
    patient = patients[0]
    assert patient["birthDate"] and patient["gender"] in ("female", "male")
    ids = [r["id"] for r in resources]
    assert len(ids) == len(set(ids))
    stale = STALE_ON_PURPOSE.get(path.stem, set())
    for r in resources[1:]:
        assert r["resourceType"] in ("Observation", "Condition"), r["id"]
        assert r["subject"] == {"reference": f"Patient/{patient['id']}"}, r["id"]
        if r["resourceType"] == "Observation":
            when = r["effectiveDateTime"]
            assert ("2026-10-28" <= when[:10] <= "2026-11-01") != (r["id"] in stale), r["id"]
        else:
            assert r["onsetDateTime"], r["id"]


@pytest.mark.parametrize("sid", sorted(SCENARIOS))
def test_every_vignette_runs_and_passes(sid: str, outcomes: dict[str, ScenarioOutcome]) -> None:
    outcome = outcomes[sid]
    assert outcome.error is None, outcome.error
    assert outcome.passed, "\n".join(outcome.failures)


@pytest.mark.parametrize("sid", ["vignette-extension-preference-leads",
                                 "vignette-full-warehouse-worker-flexion-sciatica"])
def test_extension_preference_leads_the_plan(
    sid: str, outcomes: dict[str, ScenarioOutcome]
) -> None:
    plan = outcomes[sid].plan
    assert plan is not None
    first = plan.exercises[0]
    assert first.status == "proposed"
    assert "extension" in first.direction, first.exercise_id


def test_invalid_pain_score_is_reported(outcomes: dict[str, ScenarioOutcome]) -> None:
    plan = outcomes["vignette-invalid-pain-score"].plan
    assert plan is not None
    issues = [i for i in plan.issues if "pain-now" in i.message]
    assert issues and issues[0].severity == "warning", plan.issues
    assert "obs-pain-now" in (issues[0].location or "") + issues[0].message


def test_entered_in_error_answer_is_reported_not_used(
    outcomes: dict[str, ScenarioOutcome]
) -> None:
    plan = outcomes["vignette-entered-in-error-bladder-flag"].plan
    assert plan is not None
    assert any("entered-in-error" in i.message for i in plan.issues), plan.issues
    facts = {f.name: f.value for f in plan.facts}
    assert facts["rf-bladder-dysfunction"] is False


def test_stale_red_flag_answer_is_reported(outcomes: dict[str, ScenarioOutcome]) -> None:
    plan = outcomes["vignette-stale-red-flag-answer"].plan
    assert plan is not None
    assert any("rf-cancer-history" in i.message for i in plan.issues), plan.issues
    alert = next(a for a in plan.alerts if a.code == "core-red-flags-unanswered")
    assert not alert.holds_exercise
