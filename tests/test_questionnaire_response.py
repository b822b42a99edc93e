"""QuestionnaireResponse in (issue 17 part 5): the red-flag screen and STarT Back as
questionnaires, read with exactly the rules of Observations, and the Questionnaires that
``kb export-fhir`` publishes for them."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import KnowledgeBase
from fhir_adapters import InvalidBundleError, read_bundle
from fhir_adapters._kb_export import questionnaires
from knowledge_base import bundled_path
from movement_cds import DecisionSupport
from tests.fhir_factory import (
    AS_OF,
    RED_FLAGS,
    SUBJECT,
    bundle,
    observation,
    patient,
    value_fields,
)

DATES = (
    "2026-11-02T08:00:00Z", "2026-11-01T09:30:00Z", "2026-10-20T10:00:00Z",
    "2026-10-01T10:00:00Z",  # stale for a red flag (14 days), current for STarT Back
    "2026-03-10T10:00:00Z",  # stale for everything
    "2026-11-02T12:05:00Z",  # within the clock-skew tolerance after the as-of instant
    "2026-11-02T14:00:00Z",  # after it: ignored
    None,                    # undated
)
FACTS = (*RED_FLAGS, *(f"startback-item-{i}" for i in range(1, 10)), "pain-now", "odi-score")
UNREADABLE = "unreadable"


@pytest.fixture(scope="module")
def support(kb: KnowledgeBase) -> DecisionSupport:
    return DecisionSupport(kb)


def _value(fact: str) -> st.SearchStrategy[Any]:
    if fact == "pain-now":
        return st.one_of(st.integers(0, 12), st.just(UNREADABLE))
    if fact == "odi-score":
        return st.one_of(st.floats(0, 100).map(lambda x: round(x, 1)), st.just(UNREADABLE))
    return st.sampled_from([True, False, UNREADABLE])


@st.composite
def answers(draw: st.DrawFn) -> list[tuple[str, Any, str | None, bool, bool]]:
    """(fact, value, date, preliminary, as a questionnaire item) with one answer per fact
    and date (two answers of one instant would be tie-broken by their references)."""
    keys = draw(st.lists(st.tuples(st.sampled_from(FACTS), st.sampled_from(DATES)),
                         min_size=1, max_size=24, unique=True))
    out = []
    for fact, when in keys:
        value = draw(_value(fact))
        out.append((fact, value, when, draw(st.booleans()), draw(st.booleans())))
    return out


def _answer_fields(fact: str, value: Any) -> dict[str, Any]:
    return {"valueString": "not sure"} if value == UNREADABLE else value_fields(fact, value)


def _item_answer(fact: str, value: Any) -> dict[str, Any]:
    if value == UNREADABLE:
        return {"valueString": "not sure"}
    if isinstance(value, float):
        return {"valueDecimal": value}
    return value_fields(fact, value)


def as_bundle(rows: list[tuple[str, Any, str | None, bool, bool]], *, mixed: bool) -> dict:
    """Every answer as an Observation, or (``mixed``) those marked so as items of one
    QuestionnaireResponse per date and status (the rest as Observations)."""
    resources: list[dict[str, Any]] = [patient()]
    groups: dict[tuple[str | None, bool], list[dict[str, Any]]] = {}
    for k, (fact, value, when, prelim, in_qr) in enumerate(rows):
        if mixed and in_qr:
            groups.setdefault((when, prelim), []).append(
                {"linkId": fact, "answer": [_item_answer(fact, value)]})
        else:
            resources.append(observation(
                fact, oid=f"obs-{k}", effective=when,
                status="preliminary" if prelim else "final",
                value_fields_=_answer_fields(fact, value)))
    for i, ((when, prelim), items) in enumerate(sorted(
            groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))):
        qr: dict[str, Any] = {"resourceType": "QuestionnaireResponse", "id": f"qr-{i}",
                              "status": "in-progress" if prelim else "completed",
                              "subject": {"reference": SUBJECT}, "item": items}
        if when is not None:
            qr["authored"] = when
        resources.append(qr)
    return bundle(*resources)


_REF = re.compile(r"(Observation|QuestionnaireResponse)/[A-Za-z0-9.-]+")


def _without_provenance(x: Any) -> Any:
    """The plan with every input reference made the same: lists of references become one
    marker (one QuestionnaireResponse may stand where several Observations did)."""
    if isinstance(x, dict):
        return {k: _without_provenance(v) for k, v in x.items() if k != "issues"}
    if isinstance(x, list | tuple):
        if x and all(isinstance(i, str) for i in x) and any(_REF.fullmatch(i) for i in x):
            return sorted({"REF" if _REF.fullmatch(i) else i for i in x})  # a source list
        return [_without_provenance(i) for i in x]
    if isinstance(x, str):
        return re.sub(r"REF(, REF)+", "REF", _REF.sub("REF", x))
    return x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers())
def test_observations_or_questionnaire_give_the_same_facts_and_plan(
        support: DecisionSupport, rows: list[tuple[str, Any, str | None, bool, bool]]) -> None:
    """The same answers, each sent as an Observation or as an item of a
    QuestionnaireResponse of the same date and status: the same facts (value and
    preliminary flag), the same notes on how red-flag answers were read, and the same plan
    (alerts, referrals, holds, exercises, data gaps), modulo the input references."""
    as_obs = support.evaluate(as_bundle(rows, mixed=False), as_of=AS_OF)
    as_qr = support.evaluate(as_bundle(rows, mixed=True), as_of=AS_OF)
    facts_obs = {(f.name, f.value, f.preliminary) for f in as_obs.plan.facts}
    facts_qr = {(f.name, f.value, f.preliminary) for f in as_qr.plan.facts}
    assert facts_qr == facts_obs
    assert (_without_provenance(dataclasses.asdict(as_qr.plan))
            == _without_provenance(dataclasses.asdict(as_obs.plan)))
    # a red-flag YES is never lost: every current readable YES still counts
    for fact, value, when, _prelim, _in_qr in rows:
        if fact.startswith("rf-") and value is True and when is not None and when < \
                "2026-11-02T12:10:00Z" and not any(
                    f == fact and w is not None and w > when for f, _v, w, _p, _q in rows):
            assert (fact, True) in {(f.name, f.value) for f in as_qr.plan.facts}, fact


def _qr(items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "QuestionnaireResponse", "id": "qr-1", "status": "completed",
            "subject": {"reference": SUBJECT}, "authored": "2026-11-01T09:30:00Z",
            "item": items, **extra}


def _fact(facts: Any, name: str) -> Any:
    return facts.by_name().get(name)


def _issues(facts: Any) -> list[str]:
    return [f"{i.severity} {i.location} {i.message}" for i in facts.issues]


def test_a_questionnaire_about_another_patient_is_refused(kb: KnowledgeBase) -> None:
    qr = _qr([{"linkId": "rf-fever", "answer": [{"valueBoolean": True}]}],
             subject={"reference": "Patient/someone-else"})
    with pytest.raises(InvalidBundleError) as err:
        read_bundle(bundle(patient(), qr), kb=kb, as_of=AS_OF)
    issue = err.value.operation_outcome["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1]"]
    assert "QuestionnaireResponse/qr-1 is about another subject" in issue["diagnostics"]


def test_unknown_items_are_reported_and_groups_are_not(kb: KnowledgeBase) -> None:
    qr = _qr([
        {"linkId": "mood", "answer": [{"valueBoolean": True}]},
        {"linkId": "section", "item": [
            {"linkId": "rf-fever", "answer": [{"valueBoolean": False}]},
            {"linkId": "x-unasked"}]},
        {"answer": [{"valueInteger": 3}]},
    ])
    facts = read_bundle(bundle(patient(), qr), kb=kb, as_of=AS_OF)
    issues = _issues(facts)
    assert _fact(facts, "rf-fever").value is False
    assert any("item 'mood' (item[0]) answers no question" in i for i in issues)
    assert any("item 'x-unasked' (item[1].item[1])" in i for i in issues)
    assert any("item '(no linkId)' (item[2])" in i for i in issues)
    assert not any("'section'" in i for i in issues)
    assert all("QuestionnaireResponse/qr-1" in i for i in issues)


def test_a_yes_nested_under_an_answer_is_read(kb: KnowledgeBase) -> None:
    qr = _qr([{"linkId": "legs", "answer": [{"valueBoolean": True, "item": [
        {"linkId": "deeper", "item": [
            {"linkId": "rf-saddle-anaesthesia", "answer": [{"valueBoolean": True}]}]}]}]}])
    facts = read_bundle(bundle(patient(), qr), kb=kb, as_of=AS_OF)
    saddle = _fact(facts, "rf-saddle-anaesthesia")
    assert saddle is not None and saddle.value is True
    assert saddle.sources == ("QuestionnaireResponse/qr-1",)


def test_a_link_id_ending_in_a_catalog_code_names_the_question(kb: KnowledgeBase) -> None:
    """LOINC forms name items by their code (``/91349-1/91343-4``); R4 gives a
    QuestionnaireResponse item no code of its own, so an item ``code`` is not read."""
    qr = _qr([{"linkId": "/91349-1/91343-4", "answer": [{"valueBoolean": True}]},
              {"linkId": "screen/rf-fever",
               "answer": [{"valueCoding": {"system": "http://loinc.org", "code": "LA33-6"}}]},
              {"linkId": "q9", "code": [{"system": "http://loinc.org", "code": "72514-3"}],
               "answer": [{"valueInteger": 4}]}])
    facts = read_bundle(bundle(patient(), qr), kb=kb, as_of=AS_OF)
    assert _fact(facts, "startback-item-4").value is True
    assert _fact(facts, "rf-fever").value is True  # the LOINC Yes answer code
    assert _fact(facts, "pain-now") is None
    assert any("item 'q9' (item[2]) answers no question" in i for i in _issues(facts))


def test_every_scenario_input_is_valid_r4(kb: KnowledgeBase) -> None:
    """The questionnaire scenarios are what an EHR may send: valid R4 (strict reading
    reports nothing invalid)."""
    folder = bundled_path() / "scenarios" / "questionnaire-responses"
    files = sorted(folder.glob("*.json"))
    assert len(files) >= 14
    for path in files:
        facts = read_bundle(path.read_bytes(), kb=kb, as_of=AS_OF, strict_fhir=True)
        assert not [i for i in facts.issues if i.code == "structure"], path.name


def test_statuses(kb: KnowledgeBase) -> None:
    item = [{"linkId": "rf-bladder-dysfunction", "answer": [{"valueBoolean": True}]}]
    wrong = read_bundle(bundle(patient(), _qr(item, status="entered-in-error")), kb=kb,
                        as_of=AS_OF)
    assert _fact(wrong, "rf-bladder-dysfunction") is None
    assert any("status 'entered-in-error': ignored" in i for i in _issues(wrong))
    odd = read_bundle(bundle(patient(), _qr(item, status="done")), kb=kb, as_of=AS_OF)
    assert _fact(odd, "rf-bladder-dysfunction") is None
    assert any("not a QuestionnaireResponse status; ignored" in i for i in _issues(odd))
    for status in ("in-progress", "stopped"):
        facts = read_bundle(bundle(patient(), _qr(item, status=status)), kb=kb, as_of=AS_OF)
        fact = _fact(facts, "rf-bladder-dysfunction")
        assert fact is not None and fact.value is True and fact.preliminary
        assert any(f"status '{status}': the questionnaire was not finished" in i
                   for i in _issues(facts))
    amended = read_bundle(bundle(patient(), _qr(item, status="amended")), kb=kb, as_of=AS_OF)
    assert _fact(amended, "rf-bladder-dysfunction").preliminary is False


def test_several_different_answers_cannot_be_read_and_are_never_dropped(
        kb: KnowledgeBase) -> None:
    qr = _qr([{"linkId": "rf-saddle-anaesthesia",
               "answer": [{"valueBoolean": True}, {"valueBoolean": False}]},
              {"linkId": "rf-fever", "answer": [{"valueBoolean": True}, {"valueBoolean": True}]}])
    facts = read_bundle(bundle(patient(), qr), kb=kb, as_of=AS_OF)
    assert _fact(facts, "rf-fever").value is True  # the same answer twice is one answer
    assert _fact(facts, "rf-saddle-anaesthesia") is None
    assert _fact(facts, "red-flag-unreadable-holding").value is True  # a cauda equina item
    assert any("item 'rf-saddle-anaesthesia' (item[0]) has 2 different answers" in i
               for i in _issues(facts))
    assert any(n.kind == "unreadable" and "rf-saddle-anaesthesia" in n.facts
               for n in facts.answer_notes)


def test_an_invalid_authored_date_leaves_the_answers_undated(kb: KnowledgeBase) -> None:
    qr = _qr([{"linkId": "rf-fever", "answer": [{"valueBoolean": True}]},
              {"linkId": "rf-night-pain", "answer": [{"valueBoolean": False}]}],
             authored="yesterday")
    facts = read_bundle(bundle(patient(), qr), kb=kb, as_of=AS_OF)
    assert any("authored is not a valid FHIR date; the answers are undated" in i
               for i in _issues(facts))
    assert _fact(facts, "rf-fever").value is True       # an undated YES escalates
    assert _fact(facts, "rf-night-pain") is None        # an undated NO is unanswered
    assert {n.kind for n in facts.answer_notes} == {"undated-yes", "undated-no"}


def test_a_newer_observation_no_beats_a_questionnaire_yes_with_a_caution(
        kb: KnowledgeBase) -> None:
    qr = _qr([{"linkId": "rf-bladder-dysfunction", "answer": [{"valueBoolean": True}]}])
    obs = observation("rf-bladder-dysfunction", False, effective="2026-11-02T08:00:00Z")
    facts = read_bundle(bundle(patient(), qr, obs), kb=kb, as_of=AS_OF)
    assert _fact(facts, "rf-bladder-dysfunction").value is False
    note = next(n for n in facts.answer_notes if n.kind == "discordant")
    assert set(note.sources) == {"QuestionnaireResponse/qr-1",
                                 "Observation/obs-rf-bladder-dysfunction"}
    assert _fact(facts, "red-flag-discordant").value is True


def test_questionnaire_answers_never_appear_as_a_reason_reference(
        support: DecisionSupport) -> None:
    """R4 allows no QuestionnaireResponse in reasonReference; a referral names it in
    supportingInfo, and the Provenance lists it."""
    qr = _qr([{"linkId": "rf-bladder-dysfunction", "answer": [{"valueBoolean": True}]}])
    out = support.evaluate(bundle(patient(), qr), as_of=AS_OF).bundle
    text = json.dumps(out)
    assert "QuestionnaireResponse/qr-1" in text
    for entry in out["entry"]:
        res = entry["resource"]
        activities = res.get("activity", []) if res["resourceType"] == "CarePlan" else []
        reasons = [r["reference"] for a in activities
                   for r in a.get("detail", {}).get("reasonReference", [])]
        reasons += [r["reference"] for r in res.get("reasonReference", [])]
        assert not any("QuestionnaireResponse" in r for r in reasons), res["resourceType"]
        if res["resourceType"] == "ServiceRequest":
            assert {"reference": "QuestionnaireResponse/qr-1"} in res["supportingInfo"]
        if res["resourceType"] == "Provenance":
            assert "QuestionnaireResponse/qr-1" in json.dumps(res["entity"])


# --- the published Questionnaires --------------------------------------------------------


def test_published_questionnaires_come_from_the_fact_catalog(kb: KnowledgeBase) -> None:
    qs = {q["id"]: q for q in questionnaires(kb)}
    assert set(qs) == {"red-flag-screen", "startback"}
    screen = {i["linkId"]: i for i in qs["red-flag-screen"]["item"]}
    assert set(screen) == set(RED_FLAGS)
    saddle = screen["rf-saddle-anaesthesia"]
    assert saddle["text"] == " ".join((kb.facts["rf-saddle-anaesthesia"].question or "").split())
    assert saddle["type"] == "boolean"
    assert saddle["code"][0]["code"] == "rf-saddle-anaesthesia"
    startback = qs["startback"]
    assert startback["code"][0]["code"] == "91349-1"
    assert [i["linkId"] for i in startback["item"]] == [f"startback-item-{i}"
                                                         for i in range(1, 10)]
    loinc = [c["code"] for i in startback["item"] for c in i["code"]
             if c["system"] == "http://loinc.org"]
    assert loinc == ["91340-0", "91341-8", "91342-6", "91343-4", "91344-2", "91345-9",
                     "91346-7", "91347-5", "91348-3"]


def test_a_response_to_each_published_questionnaire_is_read_in_full(
        kb: KnowledgeBase) -> None:
    """Answer every item of the published Questionnaires as they stand: every answer
    reaches its fact (the linkId mapping is the one the reader uses)."""
    resources: list[dict[str, Any]] = [patient()]
    for n, q in enumerate(questionnaires(kb)):
        resources.append({
            "resourceType": "QuestionnaireResponse", "id": f"qr-{n}", "status": "completed",
            "questionnaire": q["url"], "subject": {"reference": SUBJECT},
            "authored": "2026-11-01T09:30:00Z",
            "item": [{"linkId": i["linkId"], "answer": [{"valueBoolean": True}]}
                     for i in q["item"]]})
    facts = read_bundle(bundle(*resources), kb=kb, as_of=AS_OF)
    asked = [i["linkId"] for q in questionnaires(kb) for i in q["item"]]
    assert len(asked) == len(RED_FLAGS) + 9
    for name in asked:
        fact = _fact(facts, name)
        assert fact is not None and fact.value is True, name
    assert not [i for i in facts.issues if i.severity != "information"]


def test_published_questionnaires_are_valid_r4_for_fhir_js(tmp_path: Path,
                                                          kb: KnowledgeBase) -> None:
    from tests.test_fhir_js import validate

    paths = []
    for q in questionnaires(kb):
        path = tmp_path / f"Questionnaire-{q['id']}.json"
        path.write_text(json.dumps(q))
        paths.append(path)
    results = validate(paths)
    assert len(results) == 2 and all(r["valid"] for r in results), results


def test_the_committed_scenario_bundles_are_current() -> None:
    generator = bundled_path() / "scenarios" / "questionnaire-responses" / "_generate.py"
    done = subprocess.run([sys.executable, str(generator), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr



def test_an_exercise_driven_by_a_questionnaire_answer_names_it_in_support(
        support: DecisionSupport) -> None:
    """The example patient with the aberrant-movement finding sent in a questionnaire: the
    exercise it drives lists the QuestionnaireResponse in the CarePlan's supportingInfo,
    never in an activity's reasonReference; the output is valid (R4B-checked on write)."""
    example = json.loads((Path(__file__).resolve().parents[1] / "examples"
                          / "example-patient.json").read_text())
    entries = example["entry"]
    obs = next(e["resource"] for e in entries
               if e["resource"].get("id") == "obs-aberrant-movement")
    entries.remove(next(e for e in entries if e["resource"] is obs))
    entries.append({"fullUrl": "urn:uuid:5b0e9a56-1c8e-4a57-9a3e-0c1f0f6a7d11", "resource": {
        "resourceType": "QuestionnaireResponse", "id": "qr-exam", "status": "completed",
        "subject": obs["subject"], "authored": obs["effectiveDateTime"],
        "item": [{"linkId": "aberrant-movement", "answer": [{"valueBoolean": True}]}]}})
    out = support.evaluate(example, as_of="2026-11-02T09:00:00Z").bundle
    careplan = out["entry"][0]["resource"]
    assert {"reference": "QuestionnaireResponse/qr-exam"} in careplan["supportingInfo"]
    reasons = [r["reference"] for a in careplan["activity"]
               for r in a.get("detail", {}).get("reasonReference", [])]
    assert reasons and not any("QuestionnaireResponse" in r for r in reasons)
