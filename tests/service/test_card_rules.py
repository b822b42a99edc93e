"""Which rules a card's feedback counts against (C16 report), including plans no
recommendation shaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_adapters._hooks_cards import NO_RULE, card_rules, plan_cards
from movement_cds import DecisionSupport
from tests.service.conftest import ROOT, STARTER_KB

AS_OF = "2026-11-02T09:00:00Z"


def _bundle(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "examples" / name).read_text())
    return data


def _only_patient(bundle: dict[str, Any]) -> dict[str, Any]:
    return {**bundle, "entry": [e for e in bundle["entry"]
                                if e["resource"]["resourceType"] == "Patient"]}


@pytest.fixture(scope="module")
def support() -> DecisionSupport:
    return DecisionSupport(Path(STARTER_KB))


def _plan_card_rules(support: DecisionSupport, bundle: dict[str, Any]) -> tuple[Any, list[str]]:
    result = support.evaluate(bundle, as_of=AS_OF)
    cards = plan_cards(result.plan, result.bundle, "movement-cds-patient-view")
    rows = card_rules(result.plan, cards)
    assert [r["card"] for r in rows] == [k["uuid"] for k in cards]
    assert rows[-1]["code"] == "exercise-plan"
    return result.plan, rows[-1]["rule_ids"]


def test_plan_card_counts_against_the_rules_behind_its_exercises(
        support: DecisionSupport) -> None:
    plan, rules = _plan_card_rules(support, _bundle("no-red-flags.json"))
    assert plan.exercises
    assert rules == sorted({r for x in [*plan.exercises, *plan.avoid] for r in x.rule_ids})


def test_plan_card_without_exercises_counts_against_missing_data_rules(
        support: DecisionSupport) -> None:
    plan, rules = _plan_card_rules(support, _only_patient(_bundle("no-red-flags.json")))
    assert not plan.exercises and not plan.avoid
    if plan.data_gaps:
        assert rules == sorted({g.rule_id for g in plan.data_gaps})
    else:
        assert rules == [NO_RULE]
    assert rules and all(rules)  # never an empty list: the feedback would count nowhere
