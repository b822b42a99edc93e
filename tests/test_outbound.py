"""Plan -> output Bundle (shared/spec/output-contract.md): structure, safety rules, stable ids,
no empty elements, FHIR R4 validity (re-validated here, resource by resource)."""

from __future__ import annotations

import collections
import copy
import dataclasses
import importlib
import json
import os
import pkgutil
import random
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.reference import Reference
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import model_validator

from cds import Evaluator, Fact, InputIssue, KnowledgeBase, PatientFacts, Plan
from fhir_adapters import (
    InvalidBundleError,
    OutputValidationError,
    _outbound,
    _output_check,
    read_bundle,
    write_bundle,
)
from fhir_adapters._terminology import (
    ALERT_SYSTEM,
    EXERCISE_SYSTEM,
    EXT_EVIDENCE,
    EXT_EXERCISE_DOSE,
    EXT_SOURCE_RULE,
)
from tests.patients import AS_OF, fact_strategy

CORE_RED_FLAGS = (
    "rf-saddle-anaesthesia", "rf-bladder-dysfunction", "rf-bowel-dysfunction",
    "rf-bilateral-leg-symptoms", "rf-progressive-weakness", "rf-foot-drop", "rf-fever",
    "rf-cancer-history", "rf-significant-trauma", "rf-unexplained-weight-loss",
)
HOLDING = {"stat", "asap", "urgent"}
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- helpers ------------------------------------------------------------------------------


def all_clear(*skip: str) -> list[Fact]:
    return [Fact(n, False, (f"Observation/{n}",)) for n in CORE_RED_FLAGS if n not in skip]


def evaluate(ev: Evaluator, facts: Iterable[Fact], issues: Iterable[InputIssue] = (),
             as_of: datetime = AS_OF, subject: str = "Patient/p1") -> Plan:
    return ev.evaluate(PatientFacts.build(subject, as_of, list(facts), list(issues)))


def empties(node: Any, path: str = "$") -> list[str]:
    """Every null, blank string, empty array or empty object, by path."""
    found: list[str] = []
    if node is None:
        found.append(path)
    elif isinstance(node, str):
        if not node.strip():
            found.append(path)
    elif isinstance(node, dict):
        if not node:
            found.append(path)
        for k, v in node.items():
            found += empties(v, f"{path}.{k}")
    elif isinstance(node, list):
        if not node:
            found.append(path)
        for i, v in enumerate(node):
            found += empties(v, f"{path}[{i}]")
    return found


def revalidate(bundle: dict[str, Any]) -> None:
    """Validate each resource with its own R4B model, then the Bundle."""
    for entry in bundle["entry"]:
        r = entry["resource"]
        module = importlib.import_module(f"fhir.resources.R4B.{r['resourceType'].lower()}")
        getattr(module, r["resourceType"]).model_validate(r)
        assert entry["fullUrl"] == f"urn:uuid:{r['id']}"
    Bundle.model_validate(bundle)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def careplan(bundle: dict[str, Any]) -> dict[str, Any]:
    (cp,) = resources(bundle, "CarePlan")
    return cp


def exercise_details(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for act in careplan(bundle).get("activity", []):
        d = act.get("detail")
        if d and any(c["system"] == EXERCISE_SYSTEM for c in d["code"]["coding"]):
            out.append(d)
    return out


def code_of(detail: dict[str, Any]) -> str:
    (c,) = [c["code"] for c in detail["code"]["coding"] if c["system"] == EXERCISE_SYSTEM]
    return str(c)


def ext_values(node: dict[str, Any], url: str) -> list[Any]:
    return [e.get("valueString") for e in node.get("extension", []) if e["url"] == url]


def refs(items: list[dict[str, Any]] | None) -> list[str]:
    return [r["reference"] for r in items or []]


def check_safety(plan: Plan, bundle: dict[str, Any]) -> None:
    """The output contract's safety rules, judged from the Bundle (and the plan's avoid list)."""
    details = exercise_details(bundle)
    held = any(sr["priority"] in HOLDING for sr in resources(bundle, "ServiceRequest")) or any(
        a.holds_exercise for a in plan.alerts)
    if held:
        assert all(d["status"] != "not-started" for d in details)
        assert all(d["status"] == "on-hold" for d in details)
    vetoed = {a.exercise_id for a in plan.avoid}
    for d in details:
        if code_of(d) in vetoed:
            assert d.get("doNotPerform") is True
            assert d["status"] != "not-started"
        if d.get("doNotPerform"):
            assert d["status"] != "not-started"
            assert d["statusReason"]["text"].startswith("Do not perform")
    for ex in plan.exercises:
        assert ex.exercise_id not in vetoed


def check_common(plan: Plan, bundle: dict[str, Any]) -> None:
    assert empties(bundle) == []
    revalidate(bundle)
    check_safety(plan, bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    order = ["CarePlan", "ServiceRequest", "DetectedIssue", "OperationOutcome", "Provenance"]
    assert kinds == sorted(kinds, key=order.index)
    assert kinds.count("CarePlan") == 1 and kinds[-1] == "Provenance"
    assert kinds.count("ServiceRequest") == len(plan.referrals)
    assert kinds.count("DetectedIssue") == len(plan.alerts)
    assert kinds.count("OperationOutcome") == (
        1 if plan.issues or any(g.missing for g in plan.data_gaps) else 0)
    # every reference inside the Bundle resolves to an entry
    urls = {e["fullUrl"] for e in bundle["entry"]}
    sources = {s for f in plan.facts for s in f.sources}
    text = json.dumps(bundle)
    for part in text.split('"reference": "urn:uuid:')[1:]:
        ref = "urn:uuid:" + part.split('"', 1)[0]
        assert ref in urls or ref in sources or ref == plan.subject
    # every input reference used is one the plan's facts came from
    for d in exercise_details(bundle):
        assert set(refs(d.get("reasonReference"))) <= sources


# --- plan kinds ---------------------------------------------------------------------------


def test_plan_without_alerts(durable: Evaluator) -> None:
    facts = [*all_clear(), Fact("fms-rotary-stability", 1, ("Observation/rot",)),
             Fact("pattern-hinge", 1, ("Observation/hinge",)),
             Fact("pain-now", 3, ("Observation/p",)), Fact("odi-score", 20.0, ("Observation/o",))]
    plan = evaluate(durable, facts)
    assert not plan.alerts and plan.exercises
    b = write_bundle(plan, durable.kb)
    check_common(plan, b)
    assert b["type"] == "collection" and b["timestamp"] == AS_OF.isoformat()
    assert [e["resource"]["resourceType"] for e in b["entry"]] == ["CarePlan", "Provenance"]

    cp = careplan(b)
    assert (cp["status"], cp["intent"]) == ("draft", "proposal")
    assert cp["subject"] == {"reference": "Patient/p1"}
    assert cp["created"] == AS_OF.isoformat()
    kb = durable.kb
    assert cp["instantiatesUri"] == [
        f"http://movement-cds.org/fhir/KnowledgeBase/{kb.manifest.id}|{kb.manifest.version}"]
    assert "supportingInfo" not in cp
    assert [n["text"] for n in cp["note"]] == [s.strip() for s in plan.safety_net]

    details = exercise_details(b)
    assert [code_of(d) for d in details] == [ex.exercise_id for ex in plan.exercises]
    for d, ex in zip(details, plan.exercises, strict=True):
        assert d["status"] == "not-started"
        assert "statusReason" not in d
        assert d["code"]["coding"][0]["display"] == ex.title
        assert refs(d["reasonReference"]) == list(ex.sources)
        assert ext_values(d, EXT_SOURCE_RULE) == list(ex.rule_ids)
        assert ext_values(d, EXT_EVIDENCE) == [e.id for e in ex.evidence]
        rep = d["scheduledTiming"]["repeat"]
        assert (rep["frequency"], rep["period"], rep["periodUnit"]) == (
            ex.dose.frequency, ex.dose.period, ex.dose.period_unit)
        (dose,) = [e for e in d["extension"] if e["url"] == EXT_EXERCISE_DOSE]
        sub = {e["url"]: e for e in dose["extension"]}
        assert sub["sets"]["valueInteger"] == ex.dose.sets
        if ex.dose.repetitions:
            assert sub["repetitions"]["valueInteger"] == ex.dose.repetitions
        if ex.dose.hold_seconds:
            assert sub["hold-seconds"]["valueQuantity"]["value"] == ex.dose.hold_seconds
            assert sub["hold-seconds"]["valueQuantity"]["code"] == "s"
        if ex.dose.tempo:
            assert sub["tempo"]["valueString"] == ex.dose.tempo
        assert ex.dose.describe().split(".")[0] in d["description"]
        assert ex.rationale.strip() in d["description"]
        assert ex.instructions.strip() in d["description"]

    (prov,) = resources(b, "Provenance")
    assert refs(prov["target"]) == [b["entry"][0]["fullUrl"]]
    assert prov["recorded"] == AS_OF.isoformat()
    assert prov["agent"][0]["who"]["display"].startswith("movement-cds ")
    whats = [e["what"] for e in prov["entity"]]
    assert whats[0]["identifier"]["value"] == plan.knowledge_base
    assert {w["reference"] for w in whats[1:]} == {s for f in plan.facts for s in f.sources}


def test_cauda_equina_emergency_holds_every_exercise(durable: Evaluator) -> None:
    facts = [Fact("rf-bladder-dysfunction", True, ("Observation/o1",)),
             Fact("fms-rotary-stability", 1, ("Observation/o2",)),
             Fact("repeated-flexion-response", "peripheralizes", ("Observation/o3",))]
    plan = evaluate(durable, facts)
    assert plan.exercise_held and plan.exercises
    b = write_bundle(plan, durable.kb)
    check_common(plan, b)

    (sr,) = resources(b, "ServiceRequest")
    assert (sr["status"], sr["intent"], sr["priority"]) == ("draft", "proposal", "stat")
    assert sr["category"][0]["coding"][0] == {
        "system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}
    assert sr["subject"] == {"reference": "Patient/p1"}
    assert sr["authoredOn"] == AS_OF.isoformat()
    assert "Emergency department" in sr["code"]["text"]
    assert ext_values(sr, EXT_SOURCE_RULE) == ["RF-01-CES"]

    dis = {d["code"]["coding"][0]["code"]: d for d in resources(b, "DetectedIssue")}
    ces = dis["suspected-cauda-equina"]
    assert (ces["status"], ces["severity"]) == ("preliminary", "high")
    assert ces["code"]["coding"][0]["system"] == ALERT_SYSTEM
    assert ces["patient"] == {"reference": "Patient/p1"}
    assert ces["identifiedDateTime"] == AS_OF.isoformat()
    assert refs(ces["evidence"][0]["detail"]) == ["Observation/o1"]
    assert ces["mitigation"][0]["action"]["text"].startswith("All exercise is held")
    assert ext_values(ces, EXT_SOURCE_RULE) == ["RF-01-CES"]

    url = {e["resource"]["id"]: e["fullUrl"] for e in b["entry"]}
    assert set(refs(sr["reasonReference"])) == {url[ces["id"]], "Observation/o1"}

    cp = careplan(b)
    assert cp["activity"][0]["reference"]["reference"] == url[sr["id"]]
    assert set(refs(cp["supportingInfo"])) == {url[d["id"]] for d in dis.values()}
    held = [d for d in exercise_details(b) if not d.get("doNotPerform")]
    assert len(held) == len(plan.exercises)
    for d in held:
        assert d["status"] == "on-hold"
        assert "Suspected cauda equina syndrome" in d["statusReason"]["text"]
        assert d["description"].startswith("On hold")


def test_vetoed_exercise_appears_only_as_do_not_perform(durable: Evaluator) -> None:
    facts = [*all_clear(), Fact("fms-active-slr", 1, ("Observation/aslr",)),
             Fact("fms-rotary-stability", 1, ("Observation/rot",)),
             Fact("repeated-flexion-response", "peripheralizes", ("Observation/rfr",))]
    plan = evaluate(durable, facts)
    avoided = {a.exercise_id for a in plan.avoid}
    assert "controlled-pelvic-tilt" in avoided  # recommended by SE-02, vetoed by PR-01
    assert not plan.exercise_held
    b = write_bundle(plan, durable.kb)
    check_common(plan, b)

    details = exercise_details(b)
    for d in details:
        if code_of(d) in avoided:
            assert d["doNotPerform"] is True
            assert d["status"] == "on-hold"
            assert refs(d["reasonReference"]) == ["Observation/rfr"]
            assert ext_values(d, EXT_SOURCE_RULE) == ["PR-01-NO-FLEXION"]
            assert "scheduledTiming" not in d
        else:
            assert d["status"] == "not-started" and d["doNotPerform"] is False
    assert sorted(code_of(d) for d in details if d.get("doNotPerform")) == sorted(avoided)
    (di,) = resources(b, "DetectedIssue")
    assert di["severity"] == "moderate"
    assert refs(di["evidence"][0]["detail"]) == ["Observation/rfr"]


def test_unanswered_red_flags_are_reported_missing(durable: Evaluator) -> None:
    facts = [*all_clear("rf-fever", "rf-foot-drop"), Fact("fms-rotary-stability", 1, ("O/r",))]
    plan = evaluate(durable, facts)
    b = write_bundle(plan, durable.kb)
    check_common(plan, b)
    (di,) = resources(b, "DetectedIssue")
    assert di["code"]["coding"][0]["code"] == "core-red-flags-unanswered"
    assert di["severity"] == "moderate"
    missing = {c["coding"][0]["code"] for c in di["evidence"][0]["code"]}
    assert missing == {"rf-fever", "rf-foot-drop"}
    assert "detail" not in di["evidence"][0]  # no sources: omitted, never empty
    (oo,) = resources(b, "OperationOutcome")
    assert len(oo["issue"]) == 2
    for issue in oo["issue"]:
        assert (issue["severity"], issue["code"]) == ("warning", "required")
        code = issue["details"]["coding"][0]["code"]
        assert code in missing and code in issue["expression"][0]
    # a caution does not hold exercise
    assert all(d["status"] == "not-started" for d in exercise_details(b))


def test_input_issues_go_to_the_operation_outcome(durable: Evaluator) -> None:
    issue = InputIssue("warning", "value", "pain-now of 14 is out of range",
                       "Bundle.entry[3] Observation/nrs")
    plan = evaluate(durable, all_clear(), [issue])
    b = write_bundle(plan, durable.kb)
    check_common(plan, b)
    (oo,) = resources(b, "OperationOutcome")
    assert oo["issue"] == [{"severity": "warning", "code": "value",
                            "diagnostics": "pain-now of 14 is out of range",
                            "expression": ["Bundle.entry[3] Observation/nrs"]}]


@pytest.mark.parametrize(("facts", "issues", "expected"), [
    (all_clear(), [], False),
    (all_clear("rf-fever"), [], True),
    (all_clear(), [InputIssue("information", "informational", "preliminary", "Observation/x")],
     True),
])
def test_operation_outcome_iff_issues_or_gaps(
    durable: Evaluator, facts: list[Fact], issues: list[InputIssue], expected: bool
) -> None:
    plan = evaluate(durable, facts, issues)
    b = write_bundle(plan, durable.kb)
    assert bool(resources(b, "OperationOutcome")) is expected


# --- stable ids ---------------------------------------------------------------------------


def busy_facts() -> list[Fact]:
    return [Fact("rf-bladder-dysfunction", True, ("Observation/o1",)),
            Fact("fms-rotary-stability", 1, ("Observation/o2",)),
            Fact("fms-active-slr", 1, ("Observation/o4",)),
            Fact("repeated-flexion-response", "peripheralizes", ("Observation/o3",))]


def test_same_plan_gives_byte_identical_bundle(durable: Evaluator) -> None:
    facts = busy_facts()
    issues = [InputIssue("warning", "value", "a", "Observation/x"),
              InputIssue("information", "informational", "b", "Observation/y")]
    one = json.dumps(write_bundle(evaluate(durable, facts, issues), durable.kb), sort_keys=True)
    again = json.dumps(write_bundle(evaluate(durable, facts, issues), durable.kb),
                       sort_keys=True)
    random.Random(7).shuffle(facts)
    shuffled = json.dumps(
        write_bundle(evaluate(durable, facts, list(reversed(issues))), durable.kb),
        sort_keys=True)
    assert one == again == shuffled


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {bundle["id"]} | {e["resource"]["id"] for e in bundle["entry"]}


def test_ids_change_with_as_of_subject_and_content(durable: Evaluator) -> None:
    base = write_bundle(evaluate(durable, busy_facts()), durable.kb)
    later = write_bundle(evaluate(durable, busy_facts(), as_of=AS_OF + timedelta(seconds=1)),
                         durable.kb)
    other = write_bundle(evaluate(durable, busy_facts(), subject="Patient/p2"), durable.kb)
    more = write_bundle(evaluate(durable, [*busy_facts(), Fact("pain-now", 2, ("O/p",))]),
                        durable.kb)
    ids = _ids(base)
    assert len(ids) == len(base["entry"]) + 1  # all distinct
    for b in (later, other, more):
        assert not ids & _ids(b)
    assert later["timestamp"] == (AS_OF + timedelta(seconds=1)).isoformat()


def test_timestamp_is_the_as_of_instant_in_its_zone(durable: Evaluator) -> None:
    as_of = datetime(2027, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    b = write_bundle(evaluate(durable, all_clear(), as_of=as_of), durable.kb)
    assert b["timestamp"] == "2027-03-04T05:06:07+02:00"
    assert careplan(b)["created"] == b["timestamp"]


# --- errors -------------------------------------------------------------------------------


def test_invalid_output_raises_instead_of_returning(durable: Evaluator) -> None:
    plan = evaluate(durable, all_clear(), [InputIssue("warning", "no-such-issue-type", "x")])
    with pytest.raises(OutputValidationError):
        write_bundle(plan, durable.kb)
    assert issubclass(OutputValidationError, RuntimeError)


def test_naive_as_of_is_refused(durable: Evaluator) -> None:
    plan = evaluate(durable, all_clear())
    naive = Plan(**{**plan.__dict__, "as_of": datetime(2026, 1, 1)})
    with pytest.raises(ValueError, match="timezone"):
        write_bundle(naive, durable.kb)


def test_the_checkers_can_fail() -> None:
    assert empties({"a": [{"b": ""}], "c": {}, "d": [], "e": None, "f": "  ", "g": 0}) == [
        "$.a[0].b", "$.c", "$.d", "$.e", "$.f"]
    bad = {"resourceType": "Bundle", "type": "collection", "entry": [{
        "fullUrl": "urn:uuid:1", "resource": {
            "resourceType": "CarePlan", "id": "1", "intent": "proposal",
            "subject": {"reference": "Patient/p"}}}]}
    with pytest.raises(ValueError):
        revalidate(bad)  # CarePlan.status is required


# --- properties ---------------------------------------------------------------------------

_PLAUSIBLE: list[tuple[str, st.SearchStrategy[Any]]] = [
    *((n, st.sampled_from([False, False, False, True])) for n in CORE_RED_FLAGS),
    ("rf-night-pain", st.booleans()),
    ("rf-not-improving", st.booleans()),
    *((n, st.integers(0, 3)) for n in (
        "fms-deep-squat", "fms-hurdle-step", "fms-inline-lunge", "fms-active-slr",
        "fms-trunk-stability-pushup", "fms-rotary-stability", "pattern-hinge",
        "pattern-lateral-bend", "pattern-squat")),
    ("repeated-flexion-response",
     st.sampled_from(["centralizes", "peripheralizes", "no-effect", "increases-back-pain"])),
    ("repeated-extension-response",
     st.sampled_from(["centralizes", "peripheralizes", "no-effect", "increases-back-pain"])),
    ("directional-preference",
     st.sampled_from(["extension", "flexion", "lateral-shift-left", "lateral-shift-right",
                      "none"])),
    ("pain-now", st.integers(0, 10)),
    ("aberrant-movement", st.booleans()),
    ("clear-spinal-extension", st.booleans()),
]


@st.composite
def plausible_patient(draw: st.DrawFn) -> PatientFacts:
    facts = []
    for name, values in _PLAUSIBLE:
        if draw(st.booleans()):
            facts.append(Fact(name, draw(values), (f"Observation/{name}",)))
    issues = draw(st.lists(st.builds(
        InputIssue, st.sampled_from(["warning", "information"]),
        st.sampled_from(["value", "informational", "processing"]),
        st.text("abcdefgh ", min_size=1, max_size=12).filter(str.strip),
        st.one_of(st.none(), st.just("Bundle.entry[1] Observation/z"))), max_size=2))
    as_of = draw(st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1),
                              timezones=st.just(UTC)))
    return PatientFacts.build("Patient/h", as_of, facts, issues)


@SETTINGS
@given(patient=plausible_patient())
def test_any_plausible_plan_gives_valid_safe_output(
    durable: Evaluator, kb: KnowledgeBase, patient: PatientFacts
) -> None:
    plan = durable.evaluate(patient)
    b = write_bundle(plan, kb)
    check_common(plan, b)
    assert json.dumps(b, sort_keys=True) == json.dumps(write_bundle(plan, kb), sort_keys=True)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_catalog_patient_gives_valid_safe_output(
    durable: Evaluator, kb: KnowledgeBase, data: st.DataObject
) -> None:
    facts = data.draw(fact_strategy(kb))
    plan = durable.evaluate(PatientFacts.build("urn:uuid:0f6f7c1e-0000-4000-8000-000000000001",
                                               AS_OF, facts))
    b = write_bundle(plan, kb)
    check_common(plan, b)


# --- validation: node by node (the default) == Bundle.model_validate (full_validation) --------
#
# write_bundle validates node by node: each node's shape (cached) and every primitive value
# (every call); see fhir_adapters/_output_check.py. These tests hold it to the
# verdict of Bundle.model_validate on the same output, valid or not.

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example_plans(ev: Evaluator) -> list[Plan]:
    plans = []
    for path in sorted(EXAMPLES.glob("*.json")):
        try:
            patient = read_bundle(json.loads(path.read_text()), kb=ev.kb, as_of=AS_OF)
        except InvalidBundleError:
            continue
        plans.append(ev.evaluate(patient))
    assert len(plans) >= 5
    return plans


def outcome(plan: Plan, kb: KnowledgeBase, *, full: bool) -> str:
    """The Bundle as sorted JSON, or the error type if there is none."""
    try:
        return json.dumps(write_bundle(plan, kb, full_validation=full), sort_keys=True)
    except OutputValidationError:
        return "OutputValidationError"


def fast_verdict(bundle: Any) -> bool:
    try:
        _output_check._check_fast(bundle)
    except Exception:
        return False
    return True


def full_verdict(bundle: Any) -> bool:
    try:
        Bundle.model_validate(bundle)
    except Exception:
        return False
    return True


def test_examples_fast_and_full_validation_give_the_same_bundles(durable: Evaluator) -> None:
    for plan in example_plans(durable):
        fast = outcome(plan, durable.kb, full=False)
        assert fast != "OutputValidationError"
        assert fast == outcome(plan, durable.kb, full=True)
        b = json.loads(fast)
        assert fast_verdict(b) and full_verdict(b)


_ISSUE_CODES = ["value", "informational", "processing", "no-such-issue-type", "two  spaces"]


@SETTINGS
@given(patient=plausible_patient(), codes=st.lists(st.sampled_from(_ISSUE_CODES), max_size=2))
def test_any_plan_fast_and_full_validation_agree(
    durable: Evaluator, kb: KnowledgeBase, patient: PatientFacts, codes: list[str]
) -> None:
    issues = [InputIssue("warning", c, f"issue {c}", None) for c in codes]
    patient = PatientFacts.build(patient.subject, patient.as_of, list(patient.facts), issues)
    plan = durable.evaluate(patient)
    fast = outcome(plan, kb, full=False)
    assert fast == outcome(plan, kb, full=True)
    assert (fast == "OutputValidationError") == any(c not in _ISSUE_CODES[:3] for c in codes)


def renamed(text: str, prefix: str) -> str:
    """A FHIR Bundle's text with every resource id (and so every reference) changed."""
    for rid in set(re.findall(r'"id": "([^"]+)"', text)):
        text = text.replace(f'"id": "{rid}"', f'"id": "{prefix}-{rid}"').replace(
            f'/{rid}"', f'/{prefix}-{rid}"')
    return text


def test_the_advice_only_bundle_is_the_full_one_without_the_report_resources(
    durable: Evaluator,
) -> None:
    """What the CDS Hooks service asks for: the same Bundle id and the same CarePlan,
    ServiceRequests and DetectedIssues, without the OperationOutcome and Provenance."""
    plans = example_plans(durable)
    assert any(p.issues for p in plans) and any(p.referrals for p in plans)
    for plan in plans:
        full = write_bundle(plan, durable.kb)
        advice = write_bundle(plan, durable.kb, advice_only=True)
        kept = [e for e in full["entry"]
                if e["resource"]["resourceType"] not in ("OperationOutcome", "Provenance")]
        assert len(kept) < len(full["entry"])
        assert advice == {**full, "entry": kept}


def test_a_new_patient_needs_no_new_shape(durable: Evaluator) -> None:
    """What varies per patient (ids, references, dates, texts) is checked as values, so a
    patient never seen before hits the shape cache (the point of the cache)."""
    text = (EXAMPLES / "example-patient.json").read_text()
    first = durable.evaluate(read_bundle(json.loads(text), kb=durable.kb, as_of=AS_OF))
    write_bundle(first, durable.kb)
    seen = len(_output_check._SHAPES)
    other = json.loads(renamed(text, "p-2"))
    plan = durable.evaluate(read_bundle(other, kb=durable.kb, as_of=AS_OF + timedelta(days=3)))
    b = write_bundle(plan, durable.kb)
    assert careplan(b)["subject"]["reference"] == "Patient/p-2-example-patient"
    sources = {s for f in plan.facts for s in f.sources}
    assert sources and not sources & {s for f in first.facts for s in f.sources}
    assert not _ids(b) & _ids(write_bundle(first, durable.kb))
    assert len(_output_check._SHAPES) == seen


# the values a mutation puts somewhere in a valid Bundle
_JUNK: list[Any] = [
    "", " ", "two  spaces", " lead", "trail\n", "\x00", "é", 0, -1, 1, 2**31, -(2**31) - 1, 1.5,
    True, False, None, [], {}, {"x": 1}, ["a"], [None], [{}], "2026-02-30", "2026-11-02T09:00:00",
    "2026-11-02T09:00:00Z", "2026", "not-a-date", "on  hold", {"reference": "x"},
    [{"reference": 1}], {"text": "t"}, "12", "true", '{"reference": "Patient/p"}',
    {"resourceType": "Basic", "code": {"text": "x"}}, {"resourceType": "NoSuchResource"},
    {"url": "u", "valueString": "s"}, {"url": "u", "valueString": "s", "valueBoolean": True},
]
_KEYS = ["valueBoolean", "valueString", "valueInteger", "extension", "id", "resourceType",
         "bogus", "_status", "status__ext", "fhir_comments", "reference", "display", "text",
         "coding", "status", "url", "scheduledString", "scheduledPeriod"]


def _nodes(x: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], Any]]:
    yield path, x
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _nodes(v, (*path, i))


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]]) -> dict[str, Any]:
    b = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        path, node = draw(st.sampled_from(list(_nodes(b))))
        junk = copy.deepcopy(draw(st.sampled_from(_JUNK)))
        how = draw(st.sampled_from(["set", "delete", "append", "replace"]))
        if isinstance(node, dict) and how == "set":
            node[draw(st.sampled_from(_KEYS + sorted(node)))] = junk
        elif isinstance(node, dict) and how == "delete" and node:
            del node[draw(st.sampled_from(sorted(node)))]
        elif isinstance(node, list) and how == "append":
            node.append(copy.deepcopy(node[0]) if node and draw(st.booleans()) else junk)
        elif path:
            parent: Any = b
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = junk
    return b


@pytest.fixture(scope="module")
def example_bundles(durable: Evaluator) -> list[dict[str, Any]]:
    return [write_bundle(p, durable.kb) for p in example_plans(durable)]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fast_validation_has_the_verdict_of_bundle_model_validate(
    example_bundles: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Any Bundle, valid or not, after the shape cache has seen the valid ones."""
    b = data.draw(mutated(example_bundles))
    assert fast_verdict(b) == full_verdict(b)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_one_walk_prune_and_check_is_prune_then_check(
    example_bundles: list[dict[str, Any]], data: st.DataObject
) -> None:
    """write_bundle prunes and checks in one walk: the same pruned Bundle, the same verdict
    as ``_prune`` then ``_check_fast``, for any Bundle (empties and blanks included)."""
    b = data.draw(mutated(example_bundles))
    expected = _output_check._prune(b)
    try:
        got = _output_check._prune_check_fast(copy.deepcopy(b))
    except Exception:
        assert not fast_verdict(expected)
    else:
        assert fast_verdict(expected)
        assert got == expected


@SETTINGS
@given(data=st.data())
def test_the_checked_bundle_is_the_pruned_one_byte_for_byte(
    example_bundles: list[dict[str, Any]], data: st.DataObject
) -> None:
    """``checked_bundle`` prunes its argument in place: it returns ``_prune``'s copy of the
    same Bundle, key order included, or refuses it as ``full_validation`` does."""
    b = data.draw(mutated(example_bundles))
    expected = _output_check._prune(b)

    def refusal(full: bool) -> str | None:
        try:
            _output_check.checked_bundle(copy.deepcopy(b), full_validation=full)
        except Exception as e:
            return type(e).__name__
        return None

    try:
        got = _output_check.checked_bundle(copy.deepcopy(b))
    except Exception as e:
        assert refusal(True) == type(e).__name__
    else:
        assert refusal(True) is None
        assert json.dumps(got) == json.dumps(expected)


# mutations of what write_bundle writes, per-call parts and knowledge-base constant parts: each
# must be refused on the fast path, after the cache has seen the valid version


def _written(plan: Plan, kb: KnowledgeBase, part: str, change: Any) -> dict[str, Any]:
    """The Bundle ``write_bundle`` would check (the writer's own, before the check), with
    ``change`` made to one part of it: the CarePlan, the Provenance or the first exercise
    activity. (The writer's methods are not wrapped: its module is compiled.)"""
    raw = _outbound._Writer(plan, kb, None).bundle(False)
    resources = {e["resource"]["resourceType"]: e["resource"] for e in raw["entry"]}
    if part == "exercise_activity":
        change(next(a for a in resources["CarePlan"]["activity"] if "detail" in a))
    else:
        change(resources[{"careplan": "CarePlan", "provenance": "Provenance"}[part]])
    return raw


def _first_detail(cp: dict[str, Any]) -> dict[str, Any]:
    return next(a["detail"] for a in cp["activity"] if "detail" in a)


def _set_period_unit(activity: dict[str, Any], unit: str) -> None:
    activity["detail"]["scheduledTiming"]["repeat"]["periodUnit"] = unit


PER_CALL_MUTATIONS: dict[str, tuple[str, Any]] = {
    "status not a code": ("careplan", lambda cp: _first_detail(cp).update(status="on  hold")),
    "reference not a string": ("careplan", lambda cp: cp["subject"].update(reference=42)),
    "reason reference not a string": (
        "careplan", lambda cp: _first_detail(cp)["reasonReference"][0].update(reference=7)),
    "bad dateTime": ("careplan", lambda cp: cp.update(created="2026-02-30T09:00:00Z")),
    "bad id": ("careplan", lambda cp: cp.update(id="not an id!")),
    "text not a string": ("careplan", lambda cp: cp.update(title=["a", "b"])),
    "status missing": ("careplan", lambda cp: _first_detail(cp).update(status=None)),
    "provenance entity role": (
        "provenance", lambda pr: pr["entity"][-1].update(role="source  x")),
    "recorded not an instant": ("provenance", lambda pr: pr.update(recorded="2026-11-02")),
    # the constant part of an exercise activity (the same for every patient)
    "timing unit not a code": ("exercise_activity", lambda a: _set_period_unit(a, "w  k")),
    "two value[x] in the dose": (
        "exercise_activity",
        lambda a: a["detail"]["extension"][0]["extension"][0].update(valueString="3")),
    "exercise code not a code": (
        "exercise_activity",
        lambda a: a["detail"]["code"]["coding"][0].update(code="bird dog  x")),
    "unknown element": ("exercise_activity", lambda a: a["detail"].update(dosage="daily")),
    "activity with reference and detail": (
        "exercise_activity", lambda a: a.update(reference={"reference": "ServiceRequest/x"})),
}


@pytest.mark.parametrize("name", sorted(PER_CALL_MUTATIONS))
def test_an_invalid_part_is_refused_after_the_valid_one_was_cached(
    durable: Evaluator, name: str
) -> None:
    text = (EXAMPLES / "example-patient.json").read_text()
    plan = durable.evaluate(read_bundle(json.loads(text), kb=durable.kb, as_of=AS_OF))
    assert plan.exercises
    write_bundle(plan, durable.kb)  # warm: every shape of the valid Bundle is cached
    part, change = PER_CALL_MUTATIONS[name]
    for full in (False, True):
        with pytest.raises(OutputValidationError):
            _output_check.checked_bundle(_written(plan, durable.kb, part, change),
                                         full_validation=full)
    write_bundle(plan, durable.kb)  # and the valid one still passes


def _dose_part(activity: dict[str, Any], url: str, element: dict[str, Any]) -> None:
    """Set sub-extension ``url`` of the activity's exercise-dose extension to ``element``."""
    dose = next(x for x in activity["detail"]["extension"] if x["url"].endswith("exercise-dose"))
    dose["extension"] = [x for x in dose["extension"] if x["url"] != url] + [
        {"url": url, **element}]


# each: the dose as the knowledge base could give it, and the same in the written Bundle
DOSE_CHANGES: dict[str, tuple[dict[str, Any], Any]] = {
    "frequency 0 (positiveInt)": ({"frequency": 0}, lambda a: a["detail"]["scheduledTiming"][
        "repeat"].update(frequency=0)),
    "sets 2**31 (integer range)": (
        {"sets": 2**31}, lambda a: _dose_part(a, "sets", {"valueInteger": 2**31})),
    "tempo a number (string)": (
        {"tempo": 5}, lambda a: _dose_part(a, "tempo", {"valueString": 5})),
    "hold NaN (decimal)": ({"hold_seconds": float("nan")}, lambda a: _dose_part(
        a, "hold-seconds", {"valueQuantity": {"value": float("nan"), "unit": "s"}})),
}


@pytest.mark.parametrize("name", sorted(DOSE_CHANGES))
def test_an_invalid_knowledge_base_dose_is_refused_after_the_valid_one_was_cached(
    durable: Evaluator, name: str
) -> None:
    """By ``write_bundle`` (the compiled writer refuses a value of the wrong type before the
    output check sees it) and by the output check itself, given the Bundle as written."""
    text = (EXAMPLES / "example-patient.json").read_text()
    plan = durable.evaluate(read_bundle(json.loads(text), kb=durable.kb, as_of=AS_OF))
    write_bundle(plan, durable.kb)
    dose_change, written = DOSE_CHANGES[name]
    ex = plan.exercises[0]
    bad = dataclasses.replace(ex, dose=dataclasses.replace(ex.dose, **dose_change))
    broken = dataclasses.replace(plan, exercises=(bad, *plan.exercises[1:]))
    for full in (False, True):
        with pytest.raises(OutputValidationError):
            write_bundle(broken, durable.kb, full_validation=full)
        with pytest.raises(OutputValidationError, match="not valid FHIR R4"):
            _output_check.checked_bundle(_written(plan, durable.kb, "exercise_activity",
                                                  written), full_validation=full)


def test_a_plan_holding_a_value_of_another_type_is_refused_by_name(durable: Evaluator) -> None:
    """Compiled, the writer reads each field as its declared type: a list where a Plan holds
    a tuple is an OutputValidationError saying so (the source may write it as it is)."""
    if os.environ.get("MOVEMENT_CDS_PURE_PYTHON") == "1":
        pytest.skip("the source writes what it is given")
    text = (EXAMPLES / "example-patient.json").read_text()
    plan = durable.evaluate(read_bundle(json.loads(text), kb=durable.kb, as_of=AS_OF))
    with pytest.raises(OutputValidationError, match="another type than its fields declare"):
        write_bundle(dataclasses.replace(plan, exercises=list(plan.exercises)), durable.kb)


def test_the_shape_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # the module's own cache, made small for the test (the module may be compiled: it reads
    # the cache object, not the module attribute), emptied before and after
    small = _output_check._SHAPES
    small.clear()
    monkeypatch.setattr(small, "maxsize", 8)

    def bundle(i: int) -> dict[str, Any]:  # a new shape each time (a verbatim comment)
        return {"resourceType": "Bundle", "type": "collection", "fhir_comments": [f"c{i}"]}

    try:
        for i in range(30):
            _output_check._check_fast(bundle(i))
            assert len(small) == min(i + 1, 8)
        assert (Bundle, (("resourceType", '"Bundle"'), "type", ("fhir_comments", '["c29"]'))) \
            in small.seen
    finally:
        small.clear()
    full = _output_check._ShapeCache(_output_check._SHAPE_CACHE_SIZE)
    for i in range(_output_check._SHAPE_CACHE_SIZE + 500):
        full.add((Bundle, (i,)))
    assert len(full) == _output_check._SHAPE_CACHE_SIZE == 4096
    assert (Bundle, (0,)) not in full.seen and (Bundle, (4595,)) in full.seen


def test_the_models_split_node_by_node_are_exactly_the_r4b_ones() -> None:
    """Every R4B model validates field by field plus presence checks (else the split would not
    be sound for it); a model with a validator of its own is validated whole."""
    import fhir.resources.R4B as r4b

    models = [
        m for info in pkgutil.iter_modules(r4b.__path__)
        for m in vars(importlib.import_module(f"fhir.resources.R4B.{info.name}")).values()
        if isinstance(m, type) and issubclass(m, FHIRAbstractModel)
        and m.__module__ == f"fhir.resources.R4B.{info.name}"
    ]
    assert len(models) > 600
    assert all(_output_check._decomposable(m) for m in models)

    class CheckedReference(Reference):
        @model_validator(mode="after")
        def _display_needs_reference(self) -> CheckedReference:
            if self.display and not self.reference:
                raise ValueError("display without reference")
            return self

    assert not _output_check._decomposable(CheckedReference)
    assert _output_check._spec(CheckedReference) is None
    leaves: Any = collections.defaultdict(list)
    _output_check._split({"display": "x", "reference": "Patient/p"}, CheckedReference, leaves)
    with pytest.raises(ValueError):
        _output_check._split({"display": "x"}, CheckedReference, leaves)


def test_non_json_output_is_refused() -> None:
    ok = {"resourceType": "Bundle", "type": "collection"}
    assert fast_verdict(ok)
    assert not fast_verdict({**ok, "fhir_comments": ("a", "b")})
    assert not fast_verdict({**ok, "timestamp": datetime(2026, 1, 1, tzinfo=UTC)})
    assert not fast_verdict([ok])
