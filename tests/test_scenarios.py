"""Every scenario file of the bundled knowledge base, one test each, on both evaluators."""

from __future__ import annotations

import pytest

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts, Plan
from cds._scenarios import Scenario, ScenarioOutcome, check_scenario, load_scenarios
from knowledge_base import bundled_path
from movement_cds._kbtools import run_all_scenarios
from tests.patients import AS_OF

SCENARIOS = load_scenarios(bundled_path())


@pytest.fixture(scope="module")
def outcomes(durable: Evaluator, reference: Evaluator) -> dict[str, dict[str, ScenarioOutcome]]:
    """Every scenario run once per engine."""
    return {
        name: {o.scenario.id: o for o in run_all_scenarios(ev, bundled_path())}
        for name, ev in (("durable", durable), ("reference", reference))
    }


@pytest.mark.parametrize("engine", ["durable", "reference"])
@pytest.mark.parametrize("scenario_id", [sc.id for sc, _, _ in SCENARIOS])
def test_scenario(
    scenario_id: str, engine: str, outcomes: dict[str, dict[str, ScenarioOutcome]]
) -> None:
    outcome = outcomes[engine][scenario_id]
    assert outcome.error is None, outcome.error
    assert outcome.passed, f"{outcome.file}:{outcome.line}\n" + "\n".join(outcome.failures)


def test_both_engines_give_identical_plans(
    outcomes: dict[str, dict[str, ScenarioOutcome]]
) -> None:
    for sid, o in outcomes["durable"].items():
        assert o.plan == outcomes["reference"][sid].plan, sid


def test_every_rule_has_a_scenario(kb: KnowledgeBase) -> None:
    covered = {rid for sc, _, _ in SCENARIOS for rid in sc.covers}
    # per-exercise follow-up rules are specified by multi-visit trajectories (issue 6)
    from cds._trajectories import load_trajectories
    covered |= {rid for t, _, _ in load_trajectories(bundled_path()) for rid in t.covers}
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


def test_starter_fixture_scenarios_pass(starter: Evaluator) -> None:
    from tests.conftest import STARTER

    failed = [(o.scenario.id, o.error or o.failures)
              for o in run_all_scenarios(starter, STARTER) if not o.passed]
    assert not failed
