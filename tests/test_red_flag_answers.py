"""Red-flag answers are safety data (docs/integrators/red-flag-answers.md).

The scenarios in knowledge_base/scenarios/red-flag-answers.yaml specify each rule on whole
patients (both engines); here: the decision table of ``read_red_flag`` on its own, what the
reader reports, and properties over random patients written as FHIR: an older "yes" never
lowers urgency nor releases a hold, and a later "no" never silences every alert about a
recent "yes".
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import KnowledgeBase, Plan
from fhir_adapters import read_bundle
from fhir_adapters._red_flag_answers import Answer, read_red_flag, show_date
from movement_cds import DecisionSupport
from tests.fhir_factory import bundle, concept, observation, patient
from tests.patients import fact_strategy

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PRIORITY = ["stat", "asap", "urgent", "routine", "none"]
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def days_ago(n: float) -> datetime:
    return AS_OF - timedelta(days=n)


def yes(n: float | None, ref: str = "Observation/y") -> Answer:
    return Answer(True, None if n is None else days_ago(n), (ref,))


def no(n: float | None, ref: str = "Observation/n") -> Answer:
    return Answer(False, None if n is None else days_ago(n), (ref,))


def unreadable(n: float | None, ref: str = "Observation/u") -> Answer:
    return Answer(None, None if n is None else days_ago(n), (ref,))


def read(*answers: Answer, lifelong: bool = False) -> Any:
    return read_red_flag("Q", answers, AS_OF, 14, 30, lifelong)


# --- the decision table ------------------------------------------------------------------


def test_a_stale_yes_still_counts_and_says_when() -> None:
    r = read(yes(40))
    assert r.value is True
    assert [k for k, _, _ in r.notes] == ["stale-yes"]
    assert f"reported YES on {show_date(days_ago(40))}, not re-assessed since" in r.notes[0][1]


def test_a_current_yes_needs_no_note() -> None:
    r = read(yes(2))
    assert r.value is True and r.notes == []


def test_a_newer_no_replaces_an_old_yes_without_a_caution() -> None:
    r = read(yes(200), no(1))
    assert r.value is False and not r.discordant and r.notes == []


def test_a_newer_no_after_a_recent_yes_is_used_with_a_caution() -> None:
    r = read(yes(3), no(1))
    assert r.value is False and r.discordant
    (kind, text, sources), = r.notes
    assert kind == "discordant" and "YES on" in text and "then NO on" in text
    assert sources == ("Observation/n", "Observation/y")


def test_a_stale_no_counts_as_unanswered_and_says_so() -> None:
    r = read(no(20))
    assert r.value is None and [k for k, _, _ in r.notes] == ["stale-no"]


def test_a_stale_no_after_a_recent_yes_is_unanswered_and_discordant() -> None:
    r = read(yes(25), no(20))
    assert r.value is None and r.discordant


def test_lifelong_yes_is_never_erased() -> None:
    r = read(yes(300), no(1), lifelong=True)
    assert r.value is True and r.discordant
    assert [k for k, _, _ in r.notes] == ["contradicted"]
    assert "the YES stands" in r.notes[0][1]


def test_lifelong_yes_never_expires() -> None:
    r = read(yes(3000), lifelong=True)
    assert r.value is True and [k for k, _, _ in r.notes] == ["stale-yes"]


def test_undated_no_is_unanswered() -> None:
    r = read(no(None))
    assert r.value is None and [k for k, _, _ in r.notes] == ["undated-no"]


def test_undated_yes_escalates_worded_date_unknown() -> None:
    r = read(yes(None))
    assert r.value is True and "date unknown" in r.notes[0][1]


def test_undated_yes_beats_a_stale_dated_no() -> None:
    r = read(yes(None), no(40))
    assert r.value is True and r.notes[0][0] == "undated-yes"


def test_a_current_dated_no_is_used_over_an_undated_yes_and_named() -> None:
    r = read(yes(None), no(1))
    assert r.value is False and r.discordant and "date unknown" in r.notes[0][1]


def test_a_dated_yes_is_not_outweighed_by_an_undated_no() -> None:
    r = read(yes(40), no(None))
    assert r.value is True


def test_unreadable_answer_counts_until_a_readable_one_at_least_as_new() -> None:
    assert read(unreadable(2)).unreadable
    assert read(unreadable(2), no(3)).unreadable  # the readable answer is older
    assert not read(unreadable(2), no(1)).unreadable
    assert not read(unreadable(2), no(2)).unreadable
    assert read(unreadable(None), no(40)).unreadable  # a stale answer replaces nothing
    assert not read(unreadable(None), no(1)).unreadable
    # an older "yes" still counts beside the unreadable answer
    r = read(yes(5), unreadable(1))
    assert r.value is True and r.unreadable


def test_input_order_never_matters() -> None:
    answers = [yes(3, "Observation/a"), no(3, "Observation/b"), unreadable(3, "Observation/c"),
               yes(None, "Observation/d"), no(1, "Observation/e")]
    first = read(*answers)
    for shift in range(1, len(answers)):
        again = read(*answers[shift:], *answers[:shift])
        assert (again.value, again.notes, again.discordant, again.unreadable) == (
            first.value, first.notes, first.discordant, first.unreadable)


# --- what the reader does with FHIR ------------------------------------------------------


def facts_of(kb: KnowledgeBase, *resources: dict[str, Any]) -> dict[str, Any]:
    pf = read_bundle(bundle(patient(), *resources), kb=kb, as_of=AS_OF)
    return {f.name: f.value for f in pf.facts}


@pytest.mark.parametrize(("value", "expected"), [
    ({"valueCodeableConcept": concept(SNOMED, "373066001")}, True),
    ({"valueCodeableConcept": concept(SNOMED, "373067005")}, False),
    ({"valueCodeableConcept": concept(LOINC, "LA33-6")}, True),
    ({"valueCodeableConcept": concept(LOINC, "LA32-8")}, False),
    ({"valueBoolean": True}, True),
])
def test_yes_no_codes_are_read(kb: KnowledgeBase, value: dict[str, Any],
                               expected: bool) -> None:
    got = facts_of(kb, observation("rf-fever", value_fields_=value))
    assert got["rf-fever"] is expected
    assert "red-flag-unreadable" not in got


@pytest.mark.parametrize("value", [
    {"valueString": "yes"},
    {"valueInteger": 1},
    {"valueCodeableConcept": {"text": "Yes"}},
    {"valueCodeableConcept": {"coding": [
        {"system": SNOMED, "code": "373066001"}, {"system": SNOMED, "code": "373067005"}]}},
    {"component": [{"code": {"text": "x"}, "valueBoolean": True}]},
])
def test_other_forms_are_received_but_unreadable(kb: KnowledgeBase,
                                                 value: dict[str, Any]) -> None:
    got = facts_of(kb, observation("rf-bladder-dysfunction", value_fields_=value))
    assert "rf-bladder-dysfunction" not in got
    assert got["red-flag-unreadable"] is True
    assert got["red-flag-unreadable-holding"] is True  # a cauda equina item


def test_an_unreadable_weak_flag_does_not_hold(kb: KnowledgeBase) -> None:
    got = facts_of(kb, observation("rf-night-pain", value_fields_={"valueString": "yes"}))
    assert got["red-flag-unreadable"] is True and "red-flag-unreadable-holding" not in got


def test_no_value_at_all_is_unanswered_not_unreadable(kb: KnowledgeBase) -> None:
    got = facts_of(kb, observation("rf-fever", value_fields_={
        "dataAbsentReason": concept("http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                    "asked-unknown")}))
    assert "rf-fever" not in got and "red-flag-unreadable" not in got


def test_clock_skew_tolerance_is_a_parameter(kb: KnowledgeBase) -> None:
    late = observation("rf-fever", True, effective="2026-11-02T09:08:00Z")
    assert facts_of(kb, late)["rf-fever"] is True
    strict = DecisionSupport(parameters={"clock-skew-tolerance-minutes": 5})
    plan = strict.evaluate(bundle(patient(), late), as_of=AS_OF).plan
    assert "rf-fever" not in {f.name for f in plan.facts}
    with pytest.raises(ValueError, match="parameters are applied when"):
        DecisionSupport(kb, parameters={"clock-skew-tolerance-minutes": 5})


def test_partial_birth_date_gives_the_oldest_possible_age(kb: KnowledgeBase) -> None:
    pf = read_bundle(bundle(patient(birth_date="1976")), kb=kb, as_of=AS_OF)
    got = {f.name: f.value for f in pf.facts}
    assert (got["age"], got["age-oldest-possible"]) == (49, 50)
    assert [n.kind for n in pf.answer_notes] == ["partial-birth-date"]
    full = read_bundle(bundle(patient(birth_date="1976-03-01")), kb=kb, as_of=AS_OF)
    got = {f.name: f.value for f in full.facts}
    assert got["age"] == got["age-oldest-possible"] == 50 and full.answer_notes == ()


# --- properties over random patients ---------------------------------------------------------


def top(plan: Plan) -> int:
    prios = [PRIORITY.index(a.referral.priority) for a in plan.alerts if a.referral]
    return min(prios, default=PRIORITY.index("none"))


@pytest.fixture(scope="module")
def support(kb: KnowledgeBase) -> DecisionSupport:
    return DecisionSupport(kb)


def random_patient(kb: KnowledgeBase) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Observations of random recorded facts, all current, one per fact (bilateral ones
    with a top-level value)."""
    def resources(facts: list[Any]) -> list[dict[str, Any]]:
        out = []
        for f in facts:
            base, _, side = f.name.partition(".")
            if side or base.startswith("condition-") or base in ("age", "sex"):
                continue
            out.append(observation(base, f.value))
        return out
    return fact_strategy(kb, recorded_only=True).map(resources)


RED_FLAGS = ["rf-saddle-anaesthesia", "rf-bladder-dysfunction", "rf-bowel-dysfunction",
             "rf-bilateral-leg-symptoms", "rf-progressive-weakness", "rf-foot-drop",
             "rf-fever", "rf-cancer-history", "rf-night-pain", "rf-iv-drug-use",
             "rf-pulsatile-abdominal-mass", "rf-significant-trauma", "rf-not-improving",
             "rf-unexplained-weight-loss", "rf-corticosteroid-use", "rf-recent-infection"]


@SETTINGS
@given(data=st.data(), item=st.sampled_from(RED_FLAGS),
       older=st.floats(min_value=0, max_value=800), birth=st.sampled_from(
           ["1940-02-03", "1955", "1970-06", "1990-12-31", "2001-07-07"]))
def test_an_older_yes_never_lowers_urgency_nor_releases_a_hold(
    data: st.DataObject, item: str, older: float, birth: str, kb: KnowledgeBase,
    support: DecisionSupport,
) -> None:
    others = [r for r in data.draw(random_patient(kb)) if r["id"] != f"obs-{item}"]
    when = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    answer = observation(item, True, effective=when.isoformat())
    aged = copy.deepcopy(answer)
    aged["effectiveDateTime"] = (when - timedelta(days=older)).isoformat()
    before = support.evaluate(bundle(patient(birth_date=birth), *others, answer),
                              as_of=AS_OF).plan
    after = support.evaluate(bundle(patient(birth_date=birth), *others, aged),
                             as_of=AS_OF).plan
    assert top(after) <= top(before)
    assert after.exercise_held or not before.exercise_held


@SETTINGS
@given(data=st.data(), item=st.sampled_from(RED_FLAGS),
       yes_days=st.floats(min_value=0.5, max_value=30), gap=st.floats(min_value=0.01,
                                                                       max_value=0.49))
def test_a_later_no_never_silences_every_alert_about_a_recent_yes(
    data: st.DataObject, item: str, yes_days: float, gap: float, kb: KnowledgeBase,
    support: DecisionSupport,
) -> None:
    """Within the discordance window (30 days): a "no" recorded after a "yes" leaves at
    least one alert that names the answers, whenever the "yes" had one."""
    others = [r for r in data.draw(random_patient(kb)) if r["id"] != f"obs-{item}"]
    said_yes = days_ago(yes_days)
    y = observation(item, True, oid="answer-yes", effective=said_yes.isoformat())
    n = observation(item, False, oid="answer-no",
                    effective=(said_yes + timedelta(days=gap * yes_days)).isoformat())

    def about(plan: Plan) -> list[str]:
        return [a.code for a in plan.alerts
                if {"Observation/answer-yes", "Observation/answer-no"} & set(a.sources)]

    before = support.evaluate(bundle(patient(), *others, y), as_of=AS_OF).plan
    after = support.evaluate(bundle(patient(), *others, y, n), as_of=AS_OF).plan
    if about(before):
        assert about(after), (item, [a.code for a in before.alerts])
