"""Every scenario file of the bundled knowledge base, one test each, on both evaluators."""

from __future__ import annotations

import pytest

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts, Plan
from cds._scenarios import Scenario, check_scenario, load_scenarios
from knowledge_base import bundled_path
from movement_cds._kbtools import run_all_scenarios
from tests.patients import AS_OF

SCENARIOS = load_scenarios(bundled_path())


@pytest.mark.parametrize("engine", ["durable", "reference"])
@pytest.mark.parametrize("scenario_id", [sc.id for sc, _, _ in SCENARIOS])
def test_scenario(scenario_id: str, engine: str, durable: Evaluator,
                  reference: Evaluator) -> None:
    ev = durable if engine == "durable" else reference
    (outcome,) = run_all_scenarios(ev, bundled_path(), only={scenario_id})
    assert outcome.error is None, outcome.error
    assert outcome.passed, "\n".join(outcome.failures)


def test_every_rule_has_a_scenario(kb: KnowledgeBase) -> None:
    covered = {rid for sc, _, _ in SCENARIOS for rid in sc.covers}
    assert {r.id for r in kb.rules} - covered == set()
    assert covered - {r.id for r in kb.rules} == set(), "scenarios cover unknown rules"


def test_a_wrong_expectation_fails_with_expected_and_actual(durable: Evaluator) -> None:
    sc = Scenario.model_validate({
        "id": "deliberately-wrong", "facts": {"rf-bladder-dysfunction": True},
        "expect": {"referral": "routine", "exercise-held": False, "alerts": ["nope"]},
    })
    plan: Plan = durable.evaluate(
        PatientFacts.build("Patient/x", AS_OF, [Fact("rf-bladder-dysfunction", True)])
    )
    fails = check_scenario(sc, plan)
    assert any(f.startswith("most urgent referral: expected routine, got stat") for f in fails)
    assert any(f.startswith("exercise held: expected False, got True") for f in fails)
    assert any(f.startswith("alerts: expected ['nope']") for f in fails)
