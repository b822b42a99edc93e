"""Which rules a card's feedback counts against (C16 report), including plans no
recommendation shaped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cds_service._cards import NO_RULE, card_rules, plan_cards
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


def test_card_uuids_do_not_follow_the_clock() -> None:
    """The same advice a few minutes apart (the service evaluates at the time of the call)
    keeps its card uuids, also when the plan proposes a check-in, whose instants move with
    the clock: the card says "48-72 hours after this plan", the CarePlan has the instants."""
    from knowledge_base import bundled_path

    support = DecisionSupport(bundled_path())
    bundle = _bundle("no-red-flags.json")
    cards = []
    for as_of in ("2026-11-02T09:00:00Z", "2026-11-02T09:07:31Z"):
        result = support.evaluate(bundle, as_of=as_of)
        assert result.plan.check_in is not None  # the case this test is about
        cards.append(plan_cards(result.plan, result.bundle, "movement-cds-patient-view"))
    first, later = cards
    assert [c["uuid"] for c in first] == [c["uuid"] for c in later]
    assert "**Check-in**: 48-72 hours after this plan." in first[-1]["detail"]
    created = [c["suggestions"][0]["actions"][0]["resource"]["created"] for c in
               (first[-1], later[-1])]
    assert created[0] != created[1]  # the instants are in the CarePlan


def test_the_documented_response_is_of_the_bundled_release() -> None:
    """docs/integrators/cds-hooks.md and its full response example name the release that
    ships; a version bump without regenerating them fails here."""
    from cds import load_knowledge_base
    from knowledge_base import bundled_path

    label = load_knowledge_base(bundled_path()).ruleset_name
    docs = ROOT / "docs" / "integrators"
    response = json.loads((docs / "cds-hooks-response.json").read_text())
    assert {c["source"]["label"] for c in response["cards"]} == {label}
    page = (docs / "cds-hooks.md").read_text()
    for card in response["cards"]:
        assert card["uuid"] in page or card["summary"].startswith("Exercise plan")
    shown = set(re.findall(r'"label": "(movement-cds-lbp@[0-9.]+)"', page))
    assert shown == {label}
