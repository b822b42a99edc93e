"""Adversarial review of the red-flag answer reader (input contract v2, issue 12 part 1).

Written by a reviewer who did not write the reader, as a hostile EHR and a careful clinician
would send data. Tests that PASS document behaviour the contract requires (or that the
docs state). Tests marked ``xfail(strict=True)`` are open findings: the contract (or the
project's rules) requires what the reason says, and the code does not do it yet; when the
code is fixed the xfail turns into a failure (strict), so the marker must then be removed.

The red-flag RULES for ``red-flag-discordant``, ``-unreadable``, ``condition-hiv`` and so on
are recalibrated on another branch; here only the reader's facts and notes, the plan's
handling of the notes and the wording are judged.
"""

from __future__ import annotations

import copy
import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cds import KnowledgeBase, PatientFacts
from fhir_adapters import InvalidBundleError, read_bundle
from movement_cds import DecisionSupport
from tests.fhir_factory import (
    LOINC,
    SCREEN,
    SNOMED,
    WHEN,
    bundle,
    concept,
    condition,
    observation,
    patient,
    quantity,
    red_flags,
)

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SADDLE = "rf-saddle-anaesthesia"


def at(delta: timedelta) -> str:
    return (AS_OF + delta).isoformat().replace("+00:00", "Z")


def read(kb: KnowledgeBase, *resources: dict[str, Any], as_of: datetime = AS_OF,
         pat: dict[str, Any] | None = None) -> PatientFacts:
    return read_bundle(bundle(pat or patient(), *resources), kb=kb, as_of=as_of)


def values(pf: PatientFacts) -> dict[str, Any]:
    return {f.name: f.value for f in pf.facts}


def kinds(pf: PatientFacts, fact: str) -> list[str]:
    return [n.kind for n in pf.answer_notes if fact in n.facts]


@pytest.fixture(scope="module")
def support(kb: KnowledgeBase) -> DecisionSupport:
    return DecisionSupport(kb)


def stat_referral(support: DecisionSupport, *resources: dict[str, Any],
                  as_of: datetime = AS_OF) -> bool:
    plan = support.evaluate(bundle(patient(), *resources), as_of=as_of).plan
    return any(a.referral is not None and a.referral.priority == "stat" for a in plan.alerts)


def others(item: str) -> list[dict[str, Any]]:
    """Every other red-flag question answered NO, now."""
    return red_flags(False, omit=(item,))


# --- findings: a reported YES is lost ----------------------------------------------------


# Review finding, fixed: F1 (high): an Observation coded with two red-flag codes (a combined
# 'bladder or bowel change' question: rf-bladder-dysfunction AND rf-bowel-dysfunction) answered
# YES is dropped as 'code maps to several facts'; both cauda equina items then read as
# unanswered and no emergency referral is made. A reported YES must never be lost: it should
# count for every red-flag item it is coded with (or at least hold exercise)
def test_a_yes_coded_with_two_red_flag_items_is_not_lost(support: DecisionSupport) -> None:
    combined = observation("rf-bladder-dysfunction", True, oid="bladder-or-bowel")
    combined["code"]["coding"].append({"system": SCREEN, "code": "rf-bowel-dysfunction"})
    rest = red_flags(False, omit=("rf-bladder-dysfunction", "rf-bowel-dysfunction"))
    assert stat_referral(support, *rest, combined)


# Review finding, fixed: F2 (high): a YES and a NO recorded at the same instant: neither is
# 'later', so by the contract no newer NO replaces the YES. The reader breaks the tie by
# Observation id, so the NO wins whenever its id sorts after the YES's: the saddle-anaesthesia
# YES then gives no emergency referral (only a discordance note)
def test_a_no_at_the_same_instant_does_not_replace_a_yes(support: DecisionSupport) -> None:
    yes = observation(SADDLE, True, oid="a-yes")
    no = observation(SADDLE, False, oid="b-no")
    assert stat_referral(support, *others(SADDLE), yes, no)


def test_same_instant_yes_wins_when_its_id_sorts_last(support: DecisionSupport) -> None:
    """The other half of F2: the same answers with the ids swapped do escalate, so the
    reading depends on an arbitrary id, not on the answers."""
    yes = observation(SADDLE, True, oid="b-yes")
    no = observation(SADDLE, False, oid="a-no")
    assert stat_referral(support, *others(SADDLE), yes, no)


# Review finding, fixed: F2b (medium): a lifelong item answered YES and NO at the same instant
# is a contradiction; the caution ('contradicted', red-flag-discordant) is only raised when the
# NO's id sorts after the YES's. Swap the ids and the contradiction is silent
def test_a_same_instant_contradiction_is_named_whatever_the_ids(kb: KnowledgeBase) -> None:
    for yes_id, no_id in (("a", "b"), ("b", "a")):
        pf = read(kb, observation("rf-cancer-history", True, oid=yes_id),
                  observation("rf-cancer-history", False, oid=no_id))
        assert values(pf)["rf-cancer-history"] is True
        assert "contradicted" in kinds(pf, "rf-cancer-history"), (yes_id, no_id)


# Review finding, fixed: F3 (high): a date-only answer is placed at 00:00 UTC of its day. A
# clinic east of UTC (here UTC+10, 06:00 local on 3 Nov) records today's local date; at 20:00
# UTC on 2 Nov that date is 'in the future' and the saddle-anaesthesia YES is dropped
# (information only), every day for up to 14 hours. The contract: clock differences must not
# drop a just-entered answer. A date-only value whose day has begun somewhere (UTC+14) by the
# as-of instant should count
def test_a_date_only_yes_from_a_clinic_east_of_utc_counts(support: DecisionSupport) -> None:
    as_of = datetime(2026, 11, 2, 20, 0, tzinfo=UTC)
    yes = observation(SADDLE, True, effective="2026-11-03")
    rest = [observation(rf, False, effective="2026-11-03") for rf in
            ("rf-bladder-dysfunction", "rf-bowel-dysfunction")]
    assert stat_referral(support, *rest, yes, as_of=as_of)


# Review finding, fixed: F4 (medium-high): a YES whose effectivePeriod started before the as-of
# instant but ends after it (an ongoing symptom, or an EHR that stamps the end of an episode) is
# taken as 'recorded after the as-of instant' and dropped with an information-level issue; the
# answer existed at the as-of instant, and a red-flag YES must never be lost
def test_a_yes_with_a_period_that_began_before_as_of_counts(kb: KnowledgeBase) -> None:
    yes = observation(SADDLE, True, effective=None, effectivePeriod={
        "start": at(-timedelta(days=1)), "end": at(timedelta(days=7))})
    assert values(read(kb, yes)).get(SADDLE) is True


def test_a_future_dated_yes_is_dropped_with_information_only(kb: KnowledgeBase) -> None:
    """Documented behaviour (contract: later answers 'reported and ignored'), but note the
    severity: a red-flag YES beyond the skew tolerance is dropped with an
    information-level issue, the same level as an unknown code."""
    pf = read(kb, observation(SADDLE, True, effective=at(timedelta(minutes=11))))
    assert SADDLE not in values(pf)
    (issue,) = [i for i in pf.issues if i.location == f"Observation/obs-{SADDLE}"]
    assert issue.severity == "information" and "after the as-of instant" in issue.message


# Review finding, fixed: F5 (medium): a partial-date YES ('2026-10') is dated at the START of
# its month for the discordance window, so a YES that may have been given on 31 Oct is judged 32
# days old; a NO on 1 Nov is then used with no discordance caution. For a YES the window should
# take the latest instant the partial date allows
def test_a_partial_date_yes_possibly_inside_the_window_is_discordant(
    kb: KnowledgeBase,
) -> None:
    pf = read(kb, observation("rf-fever", True, oid="y", effective="2026-10"),
              observation("rf-fever", False, oid="n", effective="2026-11-01T09:30:00Z"))
    assert values(pf)["rf-fever"] is False
    assert values(pf).get("red-flag-discordant") is True


# Review finding, fixed: F6 (low-medium, wording untrue): a year-only YES ('2025') is shown as
# 'reported YES on 1 Jan 2025': the alert invents a day and month the EHR never sent (show_date
# ignores the date's precision); it should say '2025'
def test_a_partial_date_is_not_shown_as_a_precise_day(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("rf-fever", True, effective="2025"))
    (note,) = [n for n in pf.answer_notes if n.kind == "stale-yes"]
    assert "1 Jan 2025" not in note.text and "2025" in note.text


# Review finding, fixed: F5b (medium-high): a date-only YES ('2026-11-01') is placed at 00:00
# UTC, so a NO timed 08:00 the same day counts as NEWER and replaces it (emergency ->
# discordance note), although the YES may have been given later that day. The contract lets only
# a newer NO replace a YES; a NO that is not provably newer should leave the YES standing
def test_a_timed_no_on_the_day_of_a_date_only_yes_does_not_replace_it(
    support: DecisionSupport,
) -> None:
    yes = observation(SADDLE, True, oid="y", effective="2026-11-01")
    no = observation(SADDLE, False, oid="n", effective="2026-11-01T08:00:00Z")
    assert stat_referral(support, *others(SADDLE), yes, no)


# Review finding, fixed: F6b (low, wording): dates are shown in UTC, not as recorded: a YES
# recorded at 23:30 on 1 Oct at UTC-05:00 is shown 'reported YES on 2 Oct 2026', a date that is
# not in the chart the clinician will check it against
def test_the_date_shown_is_the_date_recorded(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("rf-fever", True, effective="2026-10-01T23:30:00-05:00"))
    (note,) = [n for n in pf.answer_notes if n.kind == "stale-yes"]
    assert "reported YES on 1 Oct 2026" in note.text


# Review finding, fixed: F12 (medium): JSON with duplicate keys is unusable input by the
# contract (exit 2 / HTTP 400 naming where). read_bundle parses with json.loads, which keeps the
# LAST value: 'valueBoolean': true, 'valueBoolean': false reads as NO, silently
def test_duplicate_json_keys_are_refused(kb: KnowledgeBase) -> None:
    text = json.dumps(bundle(patient(), observation(SADDLE, True)))
    assert '"valueBoolean": true' in text
    text = text.replace('"valueBoolean": true', '"valueBoolean": true, "valueBoolean": false')
    with pytest.raises(InvalidBundleError):
        read_bundle(text, kb=kb, as_of=AS_OF)


# Review finding, fixed: F13 (low): text that is not valid Unicode (a lone surrogate) is
# unusable input by the contract; read_bundle accepts it
def test_a_lone_surrogate_is_refused(kb: KnowledgeBase) -> None:
    text = json.dumps(bundle(patient(), observation(SADDLE, True, oid="x")))
    bad = text.replace('"id": "x"', '"id": "x\\ud800"')
    assert bad != text
    with pytest.raises(InvalidBundleError):
        read_bundle(bad, kb=kb, as_of=AS_OF)


# Review finding, fixed: F16 (medium): an answer sent under a misspelt value key ('value': true,
# 'valueboolean': true) is read as NO VALUE ('counts as unanswered', the words of a question
# never asked) instead of received-but-unreadable; for a cauda equina item that means no hold
# (an unreadable answer would hold exercise). The contract: any value other than the accepted
# forms is unreadable
@pytest.mark.parametrize("fields", [{"value": True}, {"valueboolean": True}])
def test_an_answer_under_a_misspelt_value_key_is_unreadable(
    kb: KnowledgeBase, fields: dict[str, Any],
) -> None:
    got = values(read(kb, observation(SADDLE, value_fields_=fields)))
    assert got.get("red-flag-unreadable-holding") is True


# Review finding, fixed: F17 (medium-high, with strict_fhir=True): a saddle-anaesthesia YES
# whose Observation fails R4B validation on a part the reader never uses (here 'note' sent as a
# string) is ignored as a whole; the plan then says 'Unanswered: New saddle or genital
# numbness', the words of a question never asked, and nothing holds exercise. A red-flag answer
# that was received but cannot be used must at least read as unreadable (and hold)
def test_strict_validation_never_turns_a_received_yes_into_unanswered(
    kb: KnowledgeBase,
) -> None:
    yes = observation(SADDLE, True)
    yes["note"] = "patient reports numbness"
    got = values(read_bundle(bundle(patient(), yes), kb=kb, as_of=AS_OF, strict_fhir=True))
    assert got.get(SADDLE) is True or got.get("red-flag-unreadable-holding") is True
    strict = DecisionSupport(kb, strict_fhir=True)
    plan = strict.evaluate(bundle(patient(), *others(SADDLE), yes), as_of=AS_OF).plan
    assert not any("Unanswered: New saddle" in a.detail for a in plan.alerts)


def test_red_flag_answers_in_components_of_an_unknown_panel_are_dropped_as_information(
    kb: KnowledgeBase,
) -> None:
    """Outside the contract (one Observation per item), but a common EHR shape: a screen
    panel with one component per question. The YES inside is dropped with an
    information-level 'code not in the knowledge base' only: nothing says a red-flag
    answer was in it (remark for the lead)."""
    panel = observation(SADDLE, oid="panel", system=LOINC, code="99999-9", value_fields_={},
                        components=[{"code": concept(SCREEN, SADDLE), "valueBoolean": True}])
    pf = read(kb, panel)
    assert SADDLE not in values(pf)
    assert [i.severity for i in pf.issues if i.location == "Observation/panel"] == [
        "information"]


# --- findings: duplicates, notes and wording -------------------------------------------------


# Review finding, fixed: F7 (low): two copies of the same resource (same id), a final YES and an
# amended NO at the same instant: one is used, and the other is dropped with no issue at all
# (they share a source, so report_old_answers thinks both are in use). Nothing a caller sent may
# be dropped silently
def test_a_second_copy_with_another_answer_is_reported(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("rf-fever", True, oid="x"),
              observation("rf-fever", False, oid="x", status="amended"))
    assert [i for i in pf.issues if i.location == "Observation/x"]


# Review finding, fixed: F8 (low, docs untrue): the OperationOutcome issue of a missing item
# carries only the LAST note about it ({fact: text} dict). A saddle item whose YES and NO are
# both stale gets 'neither is current' but loses 'last answered NO on ..., too old to count'.
# docs/integrators/red-flag-answers.md says every note is carried
def test_the_operation_outcome_carries_every_note_of_a_missing_item(
    support: DecisionSupport,
) -> None:
    ev = support.evaluate(bundle(
        patient(), *others(SADDLE),
        observation(SADDLE, True, oid="y", effective=at(-timedelta(days=20))),
        observation(SADDLE, False, oid="n", effective=at(-timedelta(days=16)))), as_of=AS_OF)
    notes = [n.text for n in ev.plan.answer_notes if SADDLE in n.facts]
    assert len(notes) == 2
    (oo,) = [e["resource"] for e in ev.bundle["entry"]
             if e["resource"]["resourceType"] == "OperationOutcome"]
    said = " ".join(i["diagnostics"] for i in oo["issue"] if i["code"] == "required")
    assert all(text in said for text in notes)


# Review finding, fixed: F8b (low): the summary's MISSING section gives the reason of the LAST
# note only; for an item with a stale NO that contradicts a YES ('discordant' sorts last) it
# prints the bare item, the same words as a question never asked
def test_the_summary_says_why_a_contradicted_item_is_missing(
    support: DecisionSupport,
) -> None:
    ev = support.evaluate(bundle(
        patient(), *others(SADDLE),
        observation(SADDLE, True, oid="y", effective=at(-timedelta(days=20))),
        observation(SADDLE, False, oid="n", effective=at(-timedelta(days=16)))), as_of=AS_OF)
    missing = ev.summary.split("MISSING (not read as normal)")[1].split("\n\n")[0]
    line = next(x for x in missing.splitlines() if "saddle" in x.lower())
    assert " - " in line.strip("- ")


# Review finding, fixed: F9 (low): ODI sent as a fraction (unit '1') is multiplied by 100 in
# binary floating point: 0.57 becomes 56.99999999999999, below a threshold of 57 (tbc-high-odi-
# min is a deployment parameter). The conversion should be exact to the precision sent
def test_an_odi_fraction_converts_exactly(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("odi-score", value_fields_=quantity(0.57, "1")))
    assert values(pf)["odi-score"] == 57


# Review finding, fixed: F10 (low): STarT Back totals are checked against the items only when
# all nine items are sent. Eight items with four agreements and a total of 2 are provably
# inconsistent (the total cannot be below the agreements sent) but the total is used
def test_a_total_below_the_agreed_items_is_inconsistent(kb: KnowledgeBase) -> None:
    items = [observation(f"startback-item-{i}", i <= 4) for i in range(1, 9)]
    pf = read(kb, *items, observation("startback-total", 2),
              observation("startback-psychosocial", 0))
    assert "startback-total" not in values(pf)


# Review finding, fixed: F11 the STarT Back distress subscale is accepted as LOINC 91350-9
# (also-coded in the fact catalog).
def test_startback_subscale_is_accepted_with_its_loinc_code(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("startback-psychosocial", 3, system=LOINC, code="91350-9"))
    assert values(pf).get("startback-psychosocial") == 3


# --- behaviour the contract requires, and the code does --------------------------------------


@pytest.mark.parametrize(("delta", "counts"), [
    (timedelta(days=14), True),
    (timedelta(days=14, seconds=1), False),
])
def test_a_no_exactly_the_max_age_old_is_current(kb: KnowledgeBase, delta: timedelta,
                                                 counts: bool) -> None:
    pf = read(kb, observation("rf-fever", False, effective=at(-delta)))
    assert (values(pf).get("rf-fever") is False) is counts
    assert ("stale-no" in kinds(pf, "rf-fever")) is not counts


@pytest.mark.parametrize(("effective", "counts"), [
    (at(timedelta(minutes=10)), True),
    (at(timedelta(minutes=10, seconds=1)), False),
    ("2026-11-02T14:40:00+05:30", True),   # 09:10 UTC: exactly the tolerance
    ("2026-11-02T14:40:01+05:30", False),
    ("2026-11-01T23:20:01-09:50", False),  # 09:10:01 UTC on 2 Nov
    ("2026-11-01T23:00:00-10:00", True),   # 09:00 UTC on 2 Nov: the as-of instant itself
])
def test_clock_skew_boundary_in_any_time_zone(kb: KnowledgeBase, effective: str,
                                              counts: bool) -> None:
    pf = read(kb, observation("rf-fever", True, effective=effective))
    assert (values(pf).get("rf-fever") is True) is counts


@pytest.mark.parametrize(("yes_days", "discordant"), [(30, True), (30.001, False)])
def test_the_discordance_window_boundary(kb: KnowledgeBase, yes_days: float,
                                         discordant: bool) -> None:
    pf = read(kb, observation("rf-fever", True, oid="y", effective=at(-timedelta(days=yes_days))),
              observation("rf-fever", False, oid="n", effective=at(-timedelta(days=1))))
    assert values(pf)["rf-fever"] is False
    assert (values(pf).get("red-flag-discordant") is True) is discordant


def test_issued_dates_an_answer_when_effective_is_absent(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("rf-fever", False, effective=None,
                              issued="2026-11-01T10:00:00Z"))
    assert values(pf)["rf-fever"] is False and pf.answer_notes == ()


def test_a_period_without_end_is_undated(kb: KnowledgeBase) -> None:
    """The contract dates by effectivePeriod.end; a period with a start only is undated:
    a YES escalates worded 'date unknown' (although its start is known), a NO is
    unanswered."""
    period = {"start": at(-timedelta(days=1))}
    pf = read(kb, observation("rf-fever", True, effective=None, effectivePeriod=period))
    assert values(pf)["rf-fever"] is True and kinds(pf, "rf-fever") == ["undated-yes"]
    pf = read(kb, observation("rf-fever", False, effective=None, effectivePeriod=period))
    assert "rf-fever" not in values(pf) and kinds(pf, "rf-fever") == ["undated-no"]


def test_an_invalid_date_makes_the_answer_undated_and_says_so(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("rf-fever", True, effective="2026-11-01T24:00:00Z"))
    assert values(pf)["rf-fever"] is True and kinds(pf, "rf-fever") == ["undated-yes"]
    assert any("not a valid FHIR date" in i.message for i in pf.issues)


def test_an_undated_yes_loses_to_a_current_no_and_both_are_named(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("rf-fever", True, oid="y", effective=None),
              observation("rf-fever", False, oid="n", effective=at(-timedelta(days=13))))
    assert values(pf)["rf-fever"] is False
    (note,) = [n for n in pf.answer_notes if n.kind == "discordant"]
    assert "date unknown" in note.text and set(note.sources) == {"Observation/y",
                                                                 "Observation/n"}


def test_yes_in_one_coding_and_no_in_another_is_unreadable_and_holds(
    kb: KnowledgeBase,
) -> None:
    mixed = {"valueCodeableConcept": {"coding": [
        {"system": LOINC, "code": "LA33-6"}, {"system": SNOMED, "code": "373067005"}]}}
    pf = read(kb, observation("rf-bowel-dysfunction", value_fields_=mixed))
    got = values(pf)
    assert "rf-bowel-dysfunction" not in got
    assert got["red-flag-unreadable"] is True and got["red-flag-unreadable-holding"] is True
    (note,) = [n for n in pf.answer_notes if n.kind == "unreadable"]
    assert "could not be read" in note.text and "unanswered" not in note.text.lower()


def test_an_unreadable_answer_newer_than_a_no_still_holds(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("rf-foot-drop", False, oid="n", effective=at(-timedelta(days=2))),
              observation("rf-foot-drop", oid="u", effective=at(-timedelta(days=1)),
                          value_fields_={"valueString": "Y"}))
    got = values(pf)
    assert got["rf-foot-drop"] is False and got["red-flag-unreadable-holding"] is True


def test_two_value_keys_are_unreadable(kb: KnowledgeBase) -> None:
    pf = read(kb, observation(SADDLE, value_fields_={"valueBoolean": True,
                                                     "valueString": "no"}))
    assert SADDLE not in values(pf) and values(pf)["red-flag-unreadable-holding"] is True


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "unknown", "registered"])
def test_an_ignored_status_yes_is_reported_not_used(kb: KnowledgeBase, status: str) -> None:
    pf = read(kb, observation(SADDLE, True, status=status))
    assert SADDLE not in values(pf)
    assert any(status in i.message for i in pf.issues)


def test_a_preliminary_yes_is_used_and_marked(kb: KnowledgeBase) -> None:
    pf = read(kb, observation(SADDLE, True, status="preliminary"))
    (fact,) = [f for f in pf.facts if f.name == SADDLE]
    assert fact.value is True and fact.preliminary


def test_a_preliminary_no_after_a_final_yes_is_discordant(kb: KnowledgeBase) -> None:
    pf = read(kb, observation(SADDLE, True, oid="y", effective=at(-timedelta(days=2))),
              observation(SADDLE, False, oid="n", status="preliminary",
                          effective=at(-timedelta(days=1))))
    got = values(pf)
    assert got[SADDLE] is False and got["red-flag-discordant"] is True


def test_an_entered_in_error_copy_does_not_retract_the_yes(kb: KnowledgeBase) -> None:
    """Same resource twice, once final YES and once marked entered-in-error: the YES is
    used (the safe side), and the retraction is reported only as an ignored status;
    nothing tells the clinician that this very answer was retracted."""
    pf = read(kb, observation(SADDLE, True, oid="x"),
              observation(SADDLE, True, oid="x", status="entered-in-error"))
    assert values(pf)[SADDLE] is True


def test_another_patients_red_flag_answer_refuses_the_request(kb: KnowledgeBase) -> None:
    theirs = observation(SADDLE, False, oid="theirs", subject="Patient/someone-else")
    with pytest.raises(InvalidBundleError) as err:
        read(kb, observation(SADDLE, True), theirs)
    assert "Observation/theirs" in str(err.value.issues[0].message)


def test_contained_answers_are_reported_another_patients_as_a_warning(
    kb: KnowledgeBase,
) -> None:
    inner_yes = observation(SADDLE, True, oid="c1", subject="#")
    inner_other = observation(SADDLE, False, oid="c2", subject="Patient/someone-else")
    panel = observation("rf-fever", False, contained=[inner_yes, inner_other])
    pf = read(kb, panel)
    assert SADDLE not in values(pf)  # contained resources are not read
    mine = [i for i in pf.issues if i.location == "Observation/obs-rf-fever"]
    assert sorted(i.severity for i in mine) == ["information", "warning"]
    (other,) = [i for i in mine if i.severity == "warning"]
    assert "another subject" in other.message


@pytest.mark.parametrize("clinical", ["active", "inactive", "resolved", "remission", None])
def test_a_cancer_condition_is_a_history_whatever_its_status(kb: KnowledgeBase,
                                                            clinical: str | None) -> None:
    cond = condition("condition-cancer", clinical=clinical)
    if clinical is None:
        cond["abatementDateTime"] = "2019-05-01"
    assert values(read(kb, cond)).get("condition-cancer") is True


def test_a_refuted_cancer_condition_does_not_count(kb: KnowledgeBase) -> None:
    cond = condition("condition-cancer", clinical="remission", verification="refuted")
    assert "condition-cancer" not in values(read(kb, cond))


def test_a_contradictory_clinical_status_counts_as_active(kb: KnowledgeBase) -> None:
    cond = condition("condition-osteoporosis", clinical="active")
    cond["clinicalStatus"]["coding"].append(
        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
         "code": "resolved"})
    pf = read(kb, cond)
    assert values(pf)["condition-osteoporosis"] is True
    assert any("not recognised" in i.message for i in pf.issues)


@pytest.mark.parametrize("code", ["73211009", "44054006", "46635009"])
def test_every_diabetes_code_gives_condition_diabetes(kb: KnowledgeBase, code: str) -> None:
    cond = condition("condition-diabetes")
    cond["code"] = concept(SNOMED, code)
    assert values(read(kb, cond))["condition-diabetes"] is True


def test_an_hiv_condition_counts_whatever_its_recorded_status(kb: KnowledgeBase) -> None:
    """HIV is not cured: the catalog marks condition-hiv as a history, so a Condition
    recorded inactive or in remission is still an infection risk factor (the review asked
    the lead to decide; decided so)."""
    for clinical in ("remission", "inactive", "resolved"):
        assert values(read(kb, condition("condition-hiv", clinical=clinical)))[
            "condition-hiv"] is True
    assert "condition-hiv" not in values(read(kb, condition(
        "condition-hiv", clinical="active", verification="refuted")))


@pytest.mark.parametrize(("birth", "as_of", "age", "oldest"), [
    ("1960-02-29", datetime(2027, 2, 28, 12, tzinfo=UTC), 66, 66),   # leap-day birthday
    ("1960-02-29", datetime(2027, 3, 1, 0, tzinfo=UTC), 67, 67),
    ("1978-02-29", None, None, None),                                # not a date
    ("1960-02", datetime(2027, 2, 28, 12, tzinfo=UTC), 66, 67),
    ("1976", AS_OF, 49, 50),
    ("2027-01-01", AS_OF, None, None),                               # in the future
])
def test_ages_at_boundaries(kb: KnowledgeBase, birth: str, as_of: datetime | None,
                            age: int | None, oldest: int | None) -> None:
    pf = read(kb, pat=patient(birth_date=birth), as_of=as_of or AS_OF)
    got = values(pf)
    assert (got.get("age"), got.get("age-oldest-possible")) == (age, oldest)
    if age is None:
        assert any(i.location == "Patient/pat-1" and i.severity == "warning"
                   for i in pf.issues)


def test_odi_fraction_edges(kb: KnowledgeBase) -> None:
    def odi(fields: dict[str, Any]) -> tuple[Any, list[str]]:
        pf = read(kb, observation("odi-score", value_fields_=fields))
        return values(pf).get("odi-score"), [i.message for i in pf.issues]

    assert odi(quantity(0.5, "1"))[0] == 50
    assert odi(quantity(1.5, "1"))[0] is None  # 150 %: out of range, not used
    value, issues = odi(quantity(1, "%"))
    assert value == 1 and any("possibly a fraction" in m for m in issues)
    value, issues = odi(quantity(0, "%"))
    assert value == 0 and not issues
    # a unit-less 0.5 is used as 0.5 % without any warning (the contract only names '%')
    value, issues = odi(quantity(0.5))
    assert value == 0.5 and not issues


@pytest.mark.parametrize(("answer", "said"), [
    ({"valueString": "Y"}, "could not be read"),
    ({"valueBoolean": False, "effectiveDateTime": "2026-10-01T08:00:00Z"}, "too old to count"),
    ({"valueBoolean": False, "effectiveDateTime": None}, "without a date"),
])
def test_a_core_item_received_but_unusable_is_not_worded_as_unanswered(
    support: DecisionSupport, answer: dict[str, Any], said: str,
) -> None:
    """The contract: an answer received but not usable is never worded as 'not asked': in
    the alert's data gap, the summary's MISSING line and the OperationOutcome."""
    effective = answer.pop("effectiveDateTime", WHEN)
    ev = support.evaluate(bundle(patient(), *others(SADDLE),
                                 observation(SADDLE, effective=effective, value_fields_=answer)),
                          as_of=AS_OF)
    (alert,) = [a for a in ev.plan.alerts if a.code == "core-red-flags-unanswered"]
    assert said in alert.detail and "Unanswered:" not in alert.detail
    missing = ev.summary.split("MISSING (not read as normal)")[1].split("\n\n")[0]
    assert " - " in next(x for x in missing.splitlines() if "saddle" in x.lower()).strip("- ")
    (oo,) = [e["resource"] for e in ev.bundle["entry"]
             if e["resource"]["resourceType"] == "OperationOutcome"]
    assert any(said in i["diagnostics"] for i in oo["issue"] if i["code"] == "required")


@pytest.mark.xfail(strict=True, reason=(
    "F15 (low, docstring untrue for the public API): read_bundle computes age on the as-of "
    "instant's date in its own UTC offset, but DecisionSupport.evaluate converts as_of to "
    "UTC first: at 01:00 on the 50th birthday in UTC+10 the library says 49, so an age-50 "
    "red-flag threshold is missed for up to a day (read_bundle alone says 50)"))
def test_age_uses_the_local_date_of_the_as_of_instant(support: DecisionSupport) -> None:
    as_of = "2026-11-02T01:00:00+10:00"
    local = datetime.fromisoformat(as_of)
    pat = patient(birth_date="1976-11-02")
    assert values(read_bundle(bundle(pat), kb=support.kb, as_of=local))["age"] == 50
    plan = support.evaluate(bundle(pat), as_of=as_of).plan
    assert {f.name: f.value for f in plan.facts}["age"] == 50


# --- input order, volume, cache --------------------------------------------------------------


# Review finding, fixed: F14a (low, docs untrue): the unreadable note lists the dates of the
# live unreadable answers in ENTRY order ('received (1 Nov 2026, 1 Jan 2026)' or '(1 Jan 2026, 1
# Nov 2026)'), so the same chart in another order gives another PatientFacts; the docs and the
# module docstring say the order of the entries never matters
def test_the_unreadable_note_does_not_depend_on_entry_order(kb: KnowledgeBase) -> None:
    u1 = observation(SADDLE, oid="u1", effective="2026-11-01", value_fields_={"valueString": "y"})
    u2 = observation(SADDLE, oid="u2", effective="2026-10-01",
                     value_fields_={"valueString": "y"})
    assert read(kb, u1, u2) == read(kb, u2, u1)


# Review finding, fixed: F14b (low): with two undated YES answers and a current NO, the
# discordance note and the red-flag-discordant fact name only the FIRST undated YES in entry
# order (undated_yes[:1]); reorder the entries and another source is named
def test_several_undated_yes_are_named_whatever_the_order(kb: KnowledgeBase) -> None:
    y1 = observation(SADDLE, True, oid="y1", effective=None)
    y2 = observation(SADDLE, True, oid="y2", effective=None)
    no = observation(SADDLE, False, oid="n", effective=at(-timedelta(hours=1)))
    assert read(kb, y1, y2, no) == read(kb, y2, y1, no)


_DATES = [None, "2026-11-01", "2026-11-01T00:00:00Z", "2026-11-01T09:30:00Z",
          "2026-11-01T10:30:00+01:00", "2026-10", "2026-10-05T08:00:00Z", "2026",
          "2026-11-02T09:10:00Z", "2026-11-02T09:10:01Z"]
_READABLE: list[dict[str, Any]] = [
    {"valueBoolean": True}, {"valueBoolean": False},
    {"valueCodeableConcept": concept(SNOMED, "373066001")},
    {"valueCodeableConcept": concept(LOINC, "LA32-8")}, {},
]
_STATUSES = ["final", "amended", "preliminary", "entered-in-error"]


@st.composite
def answers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Answers to two items with repeated ids (other content under the same id), same
    instants, partial dates, time zones, absent values, mixed statuses; per item at most one
    undated YES and one unreadable answer (more of either: F14)."""
    out = []
    for item in (SADDLE, "rf-cancer-history"):
        for _ in range(draw(st.integers(min_value=0, max_value=4))):
            out.append(observation(
                item, oid=draw(st.sampled_from(["a", "b", "c"])),
                effective=draw(st.sampled_from(_DATES)),
                status=draw(st.sampled_from(_STATUSES)),
                value_fields_=draw(st.sampled_from(_READABLE))))
        if draw(st.booleans()):
            out.append(observation(item, oid=f"u-{item}", effective=draw(st.sampled_from(_DATES)),
                                   value_fields_={"valueString": "yes"}))
    twin_wanted = draw(st.booleans())  # a second copy of one resource with the other answer
    if out and twin_wanted:
        twin = copy.deepcopy(draw(st.sampled_from(out)))
        if isinstance(twin.get("valueBoolean"), bool):
            twin["valueBoolean"] = not twin["valueBoolean"]
            twin["status"] = draw(st.sampled_from(["final", "amended", "corrected"]))
            out.append(twin)
    return out


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.randoms(use_true_random=False))
def test_the_reading_never_depends_on_entry_order(kb: KnowledgeBase,
                                                  obs: list[dict[str, Any]],
                                                  rnd: random.Random) -> None:
    """Any permutation of the entries gives an equal PatientFacts (facts, notes, issues)."""
    undated_yes = [o for o in obs if o.get("effectiveDateTime") is None and (
        o.get("valueBoolean") is True or "373066001" in json.dumps(o))]
    by_item = [o["code"]["coding"][0]["code"] for o in undated_yes]
    assume(len(by_item) == len(set(by_item)))  # several undated YES to one item: F14b
    first = read(kb, *obs)
    shuffled = copy.deepcopy(obs)
    rnd.shuffle(shuffled)
    assert read(kb, *shuffled) == first


def test_thousands_of_answers_are_read_quickly_and_correctly(kb: KnowledgeBase) -> None:
    """2,000 answers to one question (NO every hour, one YES among them 3 days ago, one
    unreadable answer older still): fast, and the newest NO after a recent YES is
    discordant."""
    obs = [observation(SADDLE, False, oid=f"n{i}", effective=at(-timedelta(hours=i + 1)))
           for i in range(2000)]
    obs.append(observation(SADDLE, True, oid="y", effective=at(-timedelta(days=3))))
    obs.append(observation(SADDLE, oid="u", effective=at(-timedelta(days=90)),
                           value_fields_={"valueInteger": 1}))
    random.Random(7).shuffle(obs)
    start = time.perf_counter()
    pf = read(kb, *obs)
    elapsed = time.perf_counter() - start
    got = values(pf)
    assert got[SADDLE] is False and got["red-flag-discordant"] is True
    assert "red-flag-unreadable" not in got  # replaced by newer readable answers
    assert elapsed < 5.0, elapsed


def test_many_unreadable_answers_give_one_short_note(kb: KnowledgeBase) -> None:
    """300 unreadable answers on distinct days: one note, holding, fast; it names the three
    newest dates and counts the others (the review found the note grew without bound)."""
    obs = [observation(SADDLE, oid=f"u{i}", effective=at(-timedelta(days=i)),
                       value_fields_={"valueString": "?"}) for i in range(300)]
    pf = read(kb, *obs)
    (note,) = [n for n in pf.answer_notes if n.kind == "unreadable"]
    assert len(note.sources) == 300 and values(pf)["red-flag-unreadable-holding"] is True
    assert "and 297 earlier" in note.text and len(note.text) < 300


def test_the_engine_cache_never_returns_another_charts_note(kb: KnowledgeBase) -> None:
    """The engine cache is keyed on fact values; a stale YES and a fresh YES have the same
    values, so the second evaluation hits the cache. The notes must still be this chart's:
    no 'reported YES on' for the fresh one, and the right date for another stale one."""
    cached = DecisionSupport(kb, engine_cache_size=8)

    def cauda_detail(effective: str) -> str:
        plan = cached.evaluate(bundle(patient(), *others(SADDLE),
                                      observation(SADDLE, True, effective=effective)),
                               as_of=AS_OF).plan
        (alert,) = [a for a in plan.alerts if a.code == "suspected-cauda-equina"]
        return alert.detail

    assert "reported YES on 3 Oct 2026, not re-assessed since" in cauda_detail(
        "2026-10-03T08:00:00Z")
    hits = cached.evaluator.cache_hits
    fresh = cauda_detail(at(-timedelta(hours=1)))
    assert cached.evaluator.cache_hits == hits + 1  # the engine result was reused
    assert "reported YES" not in fresh and "How the answers were read" not in fresh
    assert "reported YES on 5 Sep 2026" in cauda_detail("2026-09-05T08:00:00Z")
