"""Inbound mapping: FHIR R4 Bundle -> PatientFacts, rule by rule (shared input contract)."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import InputIssue, KnowledgeBase, PatientFacts
from fhir_adapters import read_bundle
from fhir_adapters._errors import InvalidBundleError
from tests import fhir_factory as ff
from tests.fhir_factory import (
    AS_OF,
    LOINC,
    SCREEN,
    SNOMED,
    SUBJECT,
    bundle,
    concept,
    condition,
    observation,
    patient,
    quantity,
    red_flags,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the session-scoped kb is read-only


# --- helpers ------------------------------------------------------------------------------


def read(kb: KnowledgeBase, *resources: dict[str, Any], **kw: Any) -> PatientFacts:
    return read_bundle(bundle(*resources), kb=kb, as_of=AS_OF, **kw)


def facts(pf: PatientFacts) -> dict[str, Any]:
    """The facts by name; ``age-oldest-possible`` only where it differs from ``age`` (a
    partial birth date; tests/test_red_flag_answers.py checks it in full)."""
    out = {f.name: f.value for f in pf.facts}
    if out.get("age-oldest-possible") == out.get("age"):
        out.pop("age-oldest-possible", None)
    return out


def issues_at(pf: PatientFacts, location: str) -> list[InputIssue]:
    return [i for i in pf.issues if i.location == location]


def one_issue(pf: PatientFacts, location: str) -> InputIssue:
    found = issues_at(pf, location)
    assert len(found) == 1, pf.issues
    return found[0]


def invalid(kb: KnowledgeBase, data: Any, **kw: Any) -> list[InputIssue]:
    with pytest.raises(InvalidBundleError) as info:
        read_bundle(data, kb=kb, as_of=AS_OF, **kw)
    err = info.value
    assert err.issues and all(i.severity == "error" for i in err.issues)
    outcome = err.operation_outcome
    assert outcome["resourceType"] == "OperationOutcome"
    assert len(outcome["issue"]) == len(err.issues)
    return err.issues


def pain(value: Any = None, **kw: Any) -> dict[str, Any]:
    return observation("pain-now", value, **kw)


# --- input forms ------------------------------------------------------------------------------


def test_dict_str_bytes_and_bytearray_give_the_same_facts(kb: KnowledgeBase) -> None:
    b = bundle(patient(), pain(4), *red_flags())
    text = json.dumps(b)
    results = [read_bundle(x, kb=kb, as_of=AS_OF)
               for x in (b, text, text.encode(), bytearray(text.encode()))]
    assert all(r == results[0] for r in results)
    assert facts(results[0])["pain-now"] == 4
    assert results[0].subject == SUBJECT


@pytest.mark.parametrize("text", ["not json", "{", b"\xff\xfe\x00", "NaN", '{"a": Infinity}', ""])
def test_not_json_is_invalid(kb: KnowledgeBase, text: str | bytes) -> None:
    (issue,) = invalid(kb, text)
    assert issue.code == "invalid"


def test_deeply_nested_or_huge_json_is_invalid_not_a_crash(kb: KnowledgeBase) -> None:
    (issue,) = invalid(kb, "[" * 100_000 + "]" * 100_000)
    assert issue.code == "invalid"
    (issue,) = invalid(kb, '{"resourceType": "Bundle", "type": "collection", "n": '
                       + "9" * 5000 + "}")
    assert issue.code == "invalid"


def test_deeply_nested_resource_is_reported_not_a_crash(kb: KnowledgeBase) -> None:
    deep: dict[str, Any] = {"url": "http://example.org/x"}
    for _ in range(3000):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    twin = pain(4, extension=[deep])
    for validate in (True, False):
        pf = read(kb, patient(), pain(4), twin, strict_fhir=validate)
        assert all(i.code != "exception" for i in pf.issues)


@pytest.mark.parametrize("doc", ["[]", "3", '"Bundle"', "null", "true", "[{}]"])
def test_json_that_is_not_an_object_is_invalid(kb: KnowledgeBase, doc: str) -> None:
    (issue,) = invalid(kb, doc)
    assert "Bundle" in issue.message


@pytest.mark.parametrize("obj", [[], 3, None, "x", {"a": 1}, {"resourceType": "Patient"}])
def test_python_objects_that_are_not_bundles_are_invalid(kb: KnowledgeBase, obj: Any) -> None:
    invalid(kb, obj)


@pytest.mark.parametrize("btype", ["document", "message", "history", "transaction-response",
                                   "batch-response", "", None, 7, ["collection"]])
def test_wrong_bundle_type_is_invalid(kb: KnowledgeBase, btype: Any) -> None:
    b = bundle(patient())
    if btype is None:
        del b["type"]
    else:
        b["type"] = btype
    (issue,) = invalid(kb, b, strict_fhir=True)
    assert issue.location == "Bundle.type"


@pytest.mark.parametrize("btype", ["collection", "searchset", "transaction", "batch"])
def test_accepted_bundle_types(kb: KnowledgeBase, btype: str) -> None:
    pf = read_bundle(bundle(patient(), pain(4), type=btype), kb=kb, as_of=AS_OF)
    assert facts(pf)["pain-now"] == 4


def test_bundle_envelope_is_validated_as_r4(kb: KnowledgeBase) -> None:
    b = bundle(patient())
    b["entries"] = []  # not an element of Bundle
    (issue,) = invalid(kb, b, strict_fhir=True)
    assert issue.code == "structure" and "entries" in issue.message
    # skipping validation skips the envelope check too
    read_bundle(b, kb=kb, as_of=AS_OF, strict_fhir=False)


def test_entry_that_is_not_a_list_is_invalid(kb: KnowledgeBase) -> None:
    b = bundle(patient())
    b["entry"] = {"resource": patient()}
    invalid(kb, b)


# --- one patient ---------------------------------------------------------------------------


def test_no_patient_is_invalid(kb: KnowledgeBase) -> None:
    (issue,) = invalid(kb, bundle(pain(4)))
    assert issue.code == "required" and "no Patient" in issue.message
    (issue,) = invalid(kb, {"resourceType": "Bundle", "type": "collection"})
    assert "no Patient" in issue.message


def test_two_patients_are_invalid_and_both_entries_are_named(kb: KnowledgeBase) -> None:
    issues = invalid(kb, bundle(patient("a"), pain(4, subject="Patient/a"), patient("b")))
    assert sorted(i.location or "" for i in issues) == ["Bundle.entry[0]", "Bundle.entry[2]"]
    assert any("Patient/a" in i.message for i in issues)
    assert any("Patient/b" in i.message for i in issues)


def test_the_same_patient_twice_is_still_two_patients(kb: KnowledgeBase) -> None:
    assert len(invalid(kb, bundle(patient(), patient()))) == 2


def test_invalid_patient_makes_the_input_invalid(kb: KnowledgeBase) -> None:
    (issue,) = invalid(kb, bundle(pain(4), patient(birth_date="1970-02-30")), strict_fhir=True)
    assert issue.location == "Bundle.entry[1]"
    assert "Patient/pat-1" in issue.message and "birthDate" in issue.message


def test_patient_without_id_or_full_url_is_invalid(kb: KnowledgeBase) -> None:
    (issue,) = invalid(kb, bundle(patient(None), full_urls=False))
    assert "neither an id nor a fullUrl" in issue.message


@pytest.mark.parametrize("resource", [
    observation("pain-now", 4, oid="abc", subject="Patient/other"),
    condition("condition-osteoporosis", cid="abc", subject="Patient/other"),
    {"resourceType": "CarePlan", "id": "abc", "status": "active", "intent": "plan",
     "subject": {"reference": "Patient/other"}},
])
def test_resource_about_another_patient_rejects_the_whole_input(
    kb: KnowledgeBase, resource: dict[str, Any]
) -> None:
    b = bundle(patient(), *red_flags(), resource, pain(3, oid="mine"))
    issues = invalid(kb, b)
    assert len(issues) == 1
    (issue,) = issues
    assert issue.location == "Bundle.entry[19]"
    assert f"{resource['resourceType']}/abc" in issue.message
    assert issue.code == "business-rule"
    # and with validation off too
    assert invalid(kb, b, strict_fhir=False) == issues


def test_missing_subject_rejects_the_whole_input(kb: KnowledgeBase) -> None:
    (issue,) = invalid(kb, bundle(patient(), pain(4, oid="abc", subject=None)))
    assert issue.location == "Bundle.entry[1]" and "Observation/abc" in issue.message


def test_identifier_only_subject_rejects_the_whole_input(kb: KnowledgeBase) -> None:
    obs = pain(4, oid="abc", subject=None)
    obs["subject"] = {"identifier": {"system": "https://example.org/mrn", "value": "1"}}
    invalid(kb, bundle(patient(), obs))


def test_every_offending_entry_is_named(kb: KnowledgeBase) -> None:
    issues = invalid(kb, bundle(patient(), pain(4, oid="x1", subject="Patient/q"),
                                pain(5, oid="x2", subject="Patient/r")))
    assert [i.location for i in issues] == ["Bundle.entry[1]", "Bundle.entry[2]"]


@pytest.mark.parametrize("reference", [
    "Patient/pat-1",
    ff.full_url(patient()),
    "https://ehr.example.org/fhir/Patient/pat-1",
    "Patient/pat-1/_history/3",
])
def test_accepted_subject_forms(kb: KnowledgeBase, reference: str) -> None:
    pf = read(kb, patient(), pain(4, subject=reference))
    assert facts(pf)["pain-now"] == 4


@pytest.mark.parametrize("reference", [
    "Patient/pat-10", "patient/pat-1", "Group/pat-1", "https://x.org/fhir/OtherPatient/pat-1",
    "#pat-1", "pat-1",
])
def test_near_miss_subject_forms_are_rejected(kb: KnowledgeBase, reference: str) -> None:
    invalid(kb, bundle(patient(), pain(4, subject=reference)))


def test_absolute_reference_must_share_a_restful_full_url_base(kb: KnowledgeBase) -> None:
    b = bundle(patient(), pain(4, subject="https://other.example/fhir/Patient/pat-1"),
               full_urls=False)
    b["entry"][0]["fullUrl"] = "https://ehr.example/fhir/Patient/pat-1"
    invalid(kb, b)
    b["entry"][1]["resource"]["subject"]["reference"] = "https://ehr.example/fhir/Patient/pat-1"
    assert facts(read_bundle(b, kb=kb, as_of=AS_OF))["pain-now"] == 4


def test_full_url_only_patient_is_referenced_by_its_full_url(kb: KnowledgeBase) -> None:
    b = bundle(patient(None), pain(4, subject="urn:uuid:1b4f0d5e-0000-4000-8000-000000000001"),
               full_urls=False)
    b["entry"][0]["fullUrl"] = "urn:uuid:1b4f0d5e-0000-4000-8000-000000000001"
    pf = read_bundle(b, kb=kb, as_of=AS_OF)
    assert pf.subject == "urn:uuid:1b4f0d5e-0000-4000-8000-000000000001"
    assert facts(pf)["pain-now"] == 4


# --- entries that are not used ------------------------------------------------------------------


def test_unused_resource_types_are_reported(kb: KnowledgeBase) -> None:
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished",
           "class": {"code": "AMB"}}
    issue = one_issue(read(kb, patient(), enc), "Encounter/e1")
    assert (issue.severity, issue.code) == ("information", "not-supported")


def test_entry_without_resource_is_reported(kb: KnowledgeBase) -> None:
    b = bundle(patient())
    b["entry"].append({"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000009"})
    pf = read_bundle(b, kb=kb, as_of=AS_OF)
    assert one_issue(pf, "urn:uuid:00000000-0000-4000-8000-000000000009").severity == (
        "information")


def test_invalid_observation_is_reported_and_ignored(kb: KnowledgeBase) -> None:
    bad = observation("fms-deep-squat", oid="o1", value_fields_={"valueInteger": "seven"})
    pf = read(kb, patient(), bad, pain(4), strict_fhir=True)
    issue = one_issue(pf, "Observation/o1")
    assert (issue.severity, issue.code) == ("warning", "structure")
    assert "valueInteger" in issue.message and "seven" not in issue.message
    assert "fms-deep-squat" not in facts(pf) and facts(pf)["pain-now"] == 4


def test_invalid_condition_is_reported_and_ignored(kb: KnowledgeBase) -> None:
    bad = condition("condition-osteoporosis", cid="c1", onsetDateTime="yesterday")
    pf = read(kb, patient(), bad, strict_fhir=True)
    assert one_issue(pf, "Condition/c1").code == "structure"
    assert "condition-osteoporosis" not in facts(pf)


# --- Observation status ----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_used_statuses(kb: KnowledgeBase, status: str) -> None:
    pf = read(kb, patient(), pain(4, status=status))
    assert pf.by_name()["pain-now"].value == 4
    assert not pf.by_name()["pain-now"].preliminary
    assert pf.issues == ()


def test_preliminary_is_used_and_reported(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), pain(4, status="preliminary"))
    fact = pf.by_name()["pain-now"]
    assert fact.value == 4 and fact.preliminary
    issue = one_issue(pf, "Observation/obs-pain-now")
    assert (issue.severity, issue.code) == ("information", "informational")
    assert "preliminary" in issue.message


@pytest.mark.parametrize("status", ["registered", "cancelled", "entered-in-error", "unknown"])
def test_ignored_statuses_are_reported(kb: KnowledgeBase, status: str) -> None:
    pf = read(kb, patient(), pain(4, status=status))
    assert "pain-now" not in facts(pf)
    issue = one_issue(pf, "Observation/obs-pain-now")
    assert (issue.severity, issue.code) == ("information", "informational")
    assert status in issue.message


@pytest.mark.parametrize("status", ["signed", ["final"], {"code": "final"}, None])
def test_unrecognised_status_is_ignored_with_a_warning(kb: KnowledgeBase, status: Any) -> None:
    pf = read(kb, patient(), pain(4, status=status), strict_fhir=False)
    assert "pain-now" not in facts(pf)
    assert one_issue(pf, "Observation/obs-pain-now").severity == "warning"


def test_entered_in_error_never_wins_even_when_newer(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), pain(2, oid="old", effective="2026-10-20"),
              pain(9, oid="eie", status="entered-in-error", effective="2026-11-01"))
    assert pf.by_name()["pain-now"].value == 2
    assert pf.by_name()["pain-now"].sources == ("Observation/old",)


# --- latest wins ---------------------------------------------------------------------------------


def test_latest_wins_and_the_older_one_is_reported(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), pain(7, oid="new", effective="2026-11-01T10:00:00Z"),
              pain(2, oid="old", effective="2026-10-01T10:00:00Z"))
    assert pf.by_name()["pain-now"].value == 7
    assert pf.by_name()["pain-now"].sources == ("Observation/new",)
    issue = one_issue(pf, "Observation/old")
    assert "superseded" in issue.message and "Observation/new" in issue.message
    assert issues_at(pf, "Observation/new") == []


def test_undated_loses_to_dated(kb: KnowledgeBase) -> None:
    for order in (1, -1):
        obs = [pain(7, oid="undated", effective=None),
               pain(2, oid="dated", effective="2026-10-20")][::order]
        pf = read(kb, patient(), *obs)
        assert pf.by_name()["pain-now"].value == 2
        assert "superseded" in one_issue(pf, "Observation/undated").message


def test_effective_period_end_then_issued(kb: KnowledgeBase) -> None:
    period = pain(5, oid="period", effective=None,
                  effectivePeriod={"start": "2026-10-01", "end": "2026-11-01T12:00:00Z"})
    issued = pain(6, oid="issued", effective=None, issued="2026-11-01T11:00:00Z")
    assert facts(read(kb, patient(), period, issued))["pain-now"] == 5
    issued["issued"] = "2026-11-01T13:00:00Z"
    assert facts(read(kb, patient(), issued, period))["pain-now"] == 6


def test_time_zones_are_compared_as_instants(kb: KnowledgeBase) -> None:
    east = pain(5, oid="east", effective="2026-11-01T10:00:00+05:00")  # 05:00Z
    utc = pain(6, oid="utc", effective="2026-11-01T06:00:00Z")
    assert facts(read(kb, patient(), east, utc))["pain-now"] == 6


def test_partial_dates_count_from_their_start_and_lose_ties_to_precise_ones(
    kb: KnowledgeBase,
) -> None:
    month = pain(5, oid="month", effective="2026-11")
    day = pain(6, oid="day", effective="2026-11-01")
    midnight = pain(7, oid="midnight", effective="2026-11-01T00:00:00Z")
    assert facts(read(kb, patient(), midnight, day, month))["pain-now"] == 7
    assert facts(read(kb, patient(), month, day))["pain-now"] == 6
    later_month = pain(8, oid="dec", effective="2026-12")
    december = datetime(2026, 12, 15, tzinfo=UTC)  # after both, so neither is in the future
    pf = read_bundle(bundle(patient(), later_month, midnight), kb=kb, as_of=december)
    assert facts(pf)["pain-now"] == 8


def test_ties_are_broken_by_reference_whatever_the_order(kb: KnowledgeBase) -> None:
    a = pain(3, oid="a")
    b = pain(8, oid="b")
    first = read(kb, patient(), a, b)
    assert first == read(kb, patient(), b, a)
    assert first.by_name()["pain-now"].sources == ("Observation/b",)
    assert "same date" in one_issue(first, "Observation/a").message


def test_ties_without_ids_are_broken_by_content(kb: KnowledgeBase) -> None:
    a, b = pain(3, oid=None), pain(8, oid=None)
    one = read_bundle(bundle(patient(), a, b, full_urls=False), kb=kb, as_of=AS_OF)
    two = read_bundle(bundle(patient(), b, a, full_urls=False), kb=kb, as_of=AS_OF)
    assert one.facts == two.facts


def test_newest_invalid_value_makes_the_fact_missing(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), pain(3, oid="old", effective="2026-10-01"),
              pain(14, oid="new", effective="2026-11-01"))
    assert "pain-now" not in facts(pf)
    assert one_issue(pf, "Observation/new").severity == "warning"
    assert "superseded" in one_issue(pf, "Observation/old").message


def test_duplicate_entries_of_one_resource_are_used_once(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), pain(4), pain(4))
    assert facts(pf)["pain-now"] == 4
    assert "duplicate" in one_issue(pf, "Observation/obs-pain-now").message


def test_unreadable_date_is_reported_and_treated_as_undated(kb: KnowledgeBase) -> None:
    odd = pain(9, oid="odd", effective="2026-13-01")
    good = pain(2, oid="good", effective="2026-10-20")
    pf = read(kb, patient(), odd, good, strict_fhir=False)
    assert facts(pf)["pain-now"] == 2
    assert any("effectiveDateTime" in i.message for i in issues_at(pf, "Observation/odd"))


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"valueInteger": 4},
    quantity(4, "{score}"),
    quantity(4.0, "{score}"),
    quantity(4),
    quantity(4, "1"),
    {"valueQuantity": {"value": 4, "unit": "{score}"}},
])
def test_pain_accepts_integer_and_score_quantity(kb: KnowledgeBase, fields: dict[str, Any]) -> None:
    pf = read(kb, patient(), pain(value_fields_=fields))
    assert pf.by_name()["pain-now"].value == 4
    assert isinstance(pf.by_name()["pain-now"].value, int)
    assert pf.issues == ()


@pytest.mark.parametrize("fields, words", [
    ({"valueInteger": 14}, "out of range 0-10"),
    ({"valueInteger": -1}, "out of range"),
    (quantity(4.5, "{score}"), "whole number"),
    (quantity(4, "mm"), "unit"),
    (quantity(4, "{score}", system="http://example.org/units"), "UCUM"),
    (quantity(4, "{score}", comparator="<"), "comparator"),
    ({"valueString": "seven"}, "valueString"),
    ({"valueInteger": "7"}, "not a JSON integer"),
    ({"valueInteger": True}, "not a JSON integer"),
    ({"valueBoolean": True}, "valueBoolean"),
    ({"valueCodeableConcept": concept(LOINC, "LA1")}, "valueCodeableConcept"),
])
def test_wrong_values_are_warnings_and_the_fact_is_missing(
    kb: KnowledgeBase, fields: dict[str, Any], words: str
) -> None:
    pf = read(kb, patient(), pain(value_fields_=fields), strict_fhir=False)
    assert "pain-now" not in facts(pf)
    issue = one_issue(pf, "Observation/obs-pain-now")
    assert (issue.severity, issue.code) == ("warning", "value")
    assert words in issue.message and "pain-now" in issue.message
    assert "14" not in issue.message  # values are not echoed


def test_fms_score_as_a_string_is_reported(kb: KnowledgeBase) -> None:
    bad = observation("fms-deep-squat", value_fields_={"valueString": "seven"})
    pf = read(kb, patient(), bad)
    assert "fms-deep-squat" not in facts(pf)
    issue = one_issue(pf, "Observation/obs-fms-deep-squat")
    assert issue.code == "value" and "seven" not in issue.message


def test_decimal_facts_accept_quantity_and_integer(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), observation("odi-score", 42.5),
              observation("slr-angle", left=60.0, right=75.5),
              observation("episode-duration", value_fields_={"valueInteger": 30}))
    f = facts(pf)
    assert f["odi-score"] == 42.5
    assert (f["slr-angle.left"], f["slr-angle.right"]) == (60.0, 75.5)
    assert f["episode-duration"] == 30.0 and isinstance(f["episode-duration"], float)
    assert pf.issues == ()


@pytest.mark.parametrize("value, unit, days", [
    (120, "d", 120.0), (6, "wk", 42.0), (3, "mo", 91.3125), (1, "a", 365.25), (48, "h", 2.0),
])
def test_episode_duration_units_convert_to_days(
    kb: KnowledgeBase, value: float, unit: str, days: float
) -> None:
    pf = read(kb, patient(), observation("episode-duration", value_fields_=quantity(value, unit)))
    assert facts(pf)["episode-duration"] == pytest.approx(days)


@pytest.mark.parametrize("fact, fields", [
    ("episode-duration", quantity(120, "deg")),
    ("episode-duration", quantity(120)),  # a duration needs a unit
    ("slr-angle", quantity(1.2, "rad")),
    ("slr-angle", quantity(200, "deg")),
    ("odi-score", quantity(40, "mg")),
    ("odi-score", quantity(101, "%")),
])
def test_wrong_unit_or_range_is_a_warning(
    kb: KnowledgeBase, fact: str, fields: dict[str, Any]
) -> None:
    pf = read(kb, patient(), observation(fact, value_fields_=fields))
    assert not any(n.startswith(fact) for n in facts(pf))
    assert one_issue(pf, f"Observation/obs-{fact}").code == "value"


def test_code_facts(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), observation("symptom-distribution", "above-knee"),
              observation("directional-preference", "none"))
    assert facts(pf)["symptom-distribution"] == "above-knee"
    assert facts(pf)["directional-preference"] == "none"


@pytest.mark.parametrize("cc", [
    concept(SCREEN, "knee"),
    concept("http://example.org/other", "above-knee"),
    {"coding": [{"system": SCREEN, "code": "above-knee"}, {"system": SCREEN,
                                                           "code": "below-knee"}]},
    {"text": "above the knee"},
])
def test_code_facts_need_one_allowed_screen_code(kb: KnowledgeBase, cc: dict[str, Any]) -> None:
    pf = read(kb, patient(), observation("symptom-distribution",
                                         value_fields_={"valueCodeableConcept": cc}))
    assert "symptom-distribution" not in facts(pf)
    assert one_issue(pf, "Observation/obs-symptom-distribution").code == "value"


def test_boolean_facts_need_value_boolean(kb: KnowledgeBase) -> None:
    # red-flag answers in another form are "received but unreadable" (see
    # tests/test_red_flag_answers.py); other boolean facts simply count as missing
    pf = read(kb, patient(),
              observation("prone-instability-test", value_fields_={"valueString": "no"}),
              observation("aberrant-movement", value_fields_={"valueInteger": 0}),
              observation("rf-foot-drop", False))
    assert facts(pf) == {"age": 55, "sex": "female", "rf-foot-drop": False}
    assert one_issue(pf, "Observation/obs-prone-instability-test").code == "value"
    assert one_issue(pf, "Observation/obs-aberrant-movement").code == "value"


def test_no_value_is_a_warning_naming_the_data_absent_reason(kb: KnowledgeBase) -> None:
    dar = pain(oid="p", dataAbsentReason=concept(
        "http://terminology.hl7.org/CodeSystem/data-absent-reason", "asked-declined"))
    pf = read(kb, patient(), dar, pain(oid="q", effective="2020-01-01"))
    assert "pain-now" not in facts(pf)
    issue = one_issue(pf, "Observation/p")
    assert issue.severity == "warning" and "asked-declined" in issue.message
    assert "no value" in issue.message


def test_observation_without_value_or_reason(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), pain(oid="p"))
    assert one_issue(pf, "Observation/p").message.startswith("no value")


def test_unknown_codes_are_reported(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), observation("x", 5, oid="bp", system=LOINC, code="8480-6"),
              observation("x", 5, oid="junk", code="not-a-screen-item"))
    for ref in ("Observation/bp", "Observation/junk"):
        issue = one_issue(pf, ref)
        assert (issue.severity, issue.code) == ("information", "not-supported")
    assert "http://loinc.org|8480-6" in one_issue(pf, "Observation/bp").message


def test_multiple_codings_of_one_fact_are_fine(kb: KnowledgeBase) -> None:
    obs = pain(4)
    obs["code"]["coding"].append({"system": "http://example.org/local", "code": "PAIN"})
    obs["code"]["coding"].append({"system": LOINC, "code": "72514-3"})
    assert facts(read(kb, patient(), obs))["pain-now"] == 4


def test_codings_of_two_facts_are_ambiguous(kb: KnowledgeBase) -> None:
    obs = pain(4)
    obs["code"]["coding"].append({"system": SCREEN, "code": "fms-total"})
    pf = read(kb, patient(), obs)
    assert "pain-now" not in facts(pf) and "fms-total" not in facts(pf)
    assert one_issue(pf, "Observation/obs-pain-now").severity == "warning"


# --- bilateral tests ---------------------------------------------------------------------------


def test_bilateral_components_give_per_side_facts_only(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), observation("fms-hurdle-step", left=3, right=1, provoked=True))
    f = facts(pf)
    assert f["fms-hurdle-step.left"] == 3 and f["fms-hurdle-step.right"] == 1
    assert f["fms-hurdle-step.lbp-provoked"] is True
    assert "fms-hurdle-step" not in f and "fms-hurdle-step.asymmetry" not in f
    assert pf.by_name()["fms-hurdle-step.left"].sources == ("Observation/obs-fms-hurdle-step",)


def test_bilateral_top_level_value_only(kb: KnowledgeBase) -> None:
    f = facts(read(kb, patient(), observation("fms-inline-lunge", 2)))
    assert f["fms-inline-lunge"] == 2
    assert not any(n.startswith("fms-inline-lunge.") for n in f)


def test_lbp_provoked_on_a_non_bilateral_test(kb: KnowledgeBase) -> None:
    f = facts(read(kb, patient(), observation("fms-deep-squat", 1, provoked=False)))
    assert f["fms-deep-squat"] == 1 and f["fms-deep-squat.lbp-provoked"] is False


def test_lbp_provoked_component_is_not_read_on_other_tests(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), observation("slr-angle", left=70.0, right=80.0, provoked=True))
    assert "slr-angle.lbp-provoked" not in facts(pf)
    assert one_issue(pf, "Observation/obs-slr-angle").code == "not-supported"


def test_side_component_on_a_non_bilateral_test_is_unusable(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), observation("fms-deep-squat", left=2, right=3))
    assert not any(n.startswith("fms-deep-squat") for n in facts(pf))
    assert "not a bilateral test" in one_issue(pf, "Observation/obs-fms-deep-squat").message


def test_one_side_without_value_leaves_that_side_missing(kb: KnowledgeBase) -> None:
    obs = observation("fms-hurdle-step", left=2, components=[
        ff.component(SNOMED, ff.RIGHT, {"dataAbsentReason": concept(
            "http://terminology.hl7.org/CodeSystem/data-absent-reason", "not-performed")})])
    pf = read(kb, patient(), obs)
    assert facts(pf)["fms-hurdle-step.left"] == 2
    assert "fms-hurdle-step.right" not in facts(pf)
    issue = one_issue(pf, "Observation/obs-fms-hurdle-step")
    assert issue.severity == "warning" and "right" in issue.message
    assert "not-performed" in issue.message


@pytest.mark.parametrize("comps", [
    [ff.component(SNOMED, ff.LEFT, {"valueInteger": 2}),
     ff.component(SNOMED, ff.LEFT, {"valueInteger": 3})],
    [ff.component(SNOMED, ff.LEFT, {"valueInteger": 2}),
     ff.component(SNOMED, ff.RIGHT, {"valueInteger": 4})],
    [ff.component(SNOMED, ff.RIGHT, {"valueString": "2"})],
    [{"code": {"coding": [{"system": SNOMED, "code": ff.LEFT},
                          {"system": SNOMED, "code": ff.RIGHT}]}, "valueInteger": 2}],
    [ff.component(SCREEN, "lbp-provoked", {"valueInteger": 1})],
])
def test_any_invalid_component_makes_the_observation_unusable(
    kb: KnowledgeBase, comps: list[dict[str, Any]]
) -> None:
    pf = read(kb, patient(), observation("fms-hurdle-step", components=comps))
    assert not any(n.startswith("fms-hurdle-step") for n in facts(pf))
    assert any(i.severity == "warning"
               for i in issues_at(pf, "Observation/obs-fms-hurdle-step"))


def test_unrecognised_component_is_reported_and_ignored(kb: KnowledgeBase) -> None:
    obs = observation("fms-hurdle-step", left=2, right=2, components=[
        ff.component("http://example.org/method", "video", {"valueString": "recorded"})])
    pf = read(kb, patient(), obs)
    assert facts(pf)["fms-hurdle-step.left"] == 2
    issue = one_issue(pf, "Observation/obs-fms-hurdle-step")
    assert (issue.severity, issue.code) == ("information", "not-supported")


def test_clearing_tests(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), observation("clear-shoulder", left=False, right=True),
              observation("clear-spinal-extension", True),
              observation("clear-spinal-flexion", False))
    f = facts(pf)
    assert f["clear-shoulder.left"] is False and f["clear-shoulder.right"] is True
    assert "clear-shoulder" not in f
    assert f["clear-spinal-extension"] is True and f["clear-spinal-flexion"] is False


def test_newer_top_level_only_observation_supersedes_per_side_one(kb: KnowledgeBase) -> None:
    old = observation("fms-hurdle-step", oid="old", left=3, right=1, effective="2026-10-01")
    new = observation("fms-hurdle-step", 2, oid="new", effective="2026-11-01")
    f = facts(read(kb, patient(), old, new))
    assert f["fms-hurdle-step"] == 2 and "fms-hurdle-step.left" not in f


# --- Patient ---------------------------------------------------------------------------------


@pytest.mark.parametrize("birth, age", [
    ("1971-11-02", 55),  # birthday today
    ("1971-11-03", 54),  # tomorrow
    ("1971", 54),        # could be born as late as 31 Dec 1971: 54 for certain
    ("1971-10", 55),     # at the latest 31 Oct 1971
    ("1971-11", 54),     # at the latest 30 Nov 1971
    ("2026-11-02", 0),
])
def test_age_at_as_of(kb: KnowledgeBase, birth: str, age: int) -> None:
    pf = read(kb, patient(birth_date=birth))
    assert pf.by_name()["age"].value == age
    assert pf.by_name()["age"].sources == ("Patient/pat-1",)
    partial = len(birth) < 10
    assert bool(issues_at(pf, "Patient/pat-1")) == partial


def test_age_uses_the_as_of_date_in_its_own_offset(kb: KnowledgeBase) -> None:
    b = bundle(patient(birth_date="1971-11-02"))
    # 2026-11-01T23:00-05:00 is 2 Nov in UTC but still 1 Nov where the clinic is
    local = datetime(2026, 11, 1, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert facts(read_bundle(b, kb=kb, as_of=local))["age"] == 54
    assert facts(read_bundle(b, kb=kb, as_of=local.astimezone(UTC)))["age"] == 55


def test_birth_after_as_of_gives_no_age(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(birth_date="2027-01-01"))
    assert "age" not in facts(pf)
    assert one_issue(pf, "Patient/pat-1").severity == "warning"


@pytest.mark.parametrize("gender", ["male", "female", "other", "unknown"])
def test_gender_gives_sex(kb: KnowledgeBase, gender: str) -> None:
    assert facts(read(kb, patient(gender=gender)))["sex"] == gender


def test_missing_birth_date_and_gender_give_no_facts(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(birth_date=None, gender=None))
    assert pf.facts == () and pf.issues == ()


def test_unrecognised_gender_is_a_warning(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(gender="f"), strict_fhir=False)
    assert "sex" not in facts(pf)
    assert one_issue(pf, "Patient/pat-1").code == "value"


def test_as_of_naive_is_utc_and_default_is_now(kb: KnowledgeBase) -> None:
    b = bundle(patient())
    naive = read_bundle(b, kb=kb, as_of=AS_OF.replace(tzinfo=None))
    assert naive == read_bundle(b, kb=kb, as_of=AS_OF)
    assert naive.as_of.tzinfo is not None
    before = datetime.now(UTC)
    now = read_bundle(b, kb=kb).as_of
    assert now.tzinfo is not None and before <= now <= datetime.now(UTC)


# --- Conditions ------------------------------------------------------------------------------


def test_active_condition(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), condition("condition-osteoporosis", cid="c1"))
    assert pf.by_name()["condition-osteoporosis"].value is True
    assert pf.by_name()["condition-osteoporosis"].sources == ("Condition/c1",)
    assert pf.issues == ()


@pytest.mark.parametrize("clinical", ["active", "recurrence", "relapse"])
def test_active_clinical_statuses(kb: KnowledgeBase, clinical: str) -> None:
    pf = read(kb, patient(), condition("condition-cancer", clinical=clinical))
    assert facts(pf)["condition-cancer"] is True


@pytest.mark.parametrize("clinical", ["inactive", "resolved", "remission"])
def test_inactive_conditions_are_not_facts_and_are_reported(
    kb: KnowledgeBase, clinical: str
) -> None:
    # (a cancer Condition in any status is a history of cancer: test_red_flag_answers.py)
    pf = read(kb, patient(), condition("condition-osteoporosis", cid="c1", clinical=clinical))
    assert "condition-osteoporosis" not in facts(pf)
    issue = one_issue(pf, "Condition/c1")
    assert issue.severity == "information" and clinical in issue.message


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_refuted_conditions_are_removed(kb: KnowledgeBase, verification: str) -> None:
    pf = read(kb, patient(), condition("condition-aaa", cid="c1", verification=verification))
    assert "condition-aaa" not in facts(pf)
    assert verification in one_issue(pf, "Condition/c1").message


@pytest.mark.parametrize("verification", ["unconfirmed", "provisional", "differential"])
def test_tentative_conditions_count_and_are_reported(
    kb: KnowledgeBase, verification: str
) -> None:
    pf = read(kb, patient(), condition("condition-aaa", cid="c1", verification=verification))
    assert facts(pf)["condition-aaa"] is True
    assert one_issue(pf, "Condition/c1").severity == "information"


def test_condition_without_clinical_status(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), condition("condition-cauda-equina", clinical=None))
    assert facts(pf)["condition-cauda-equina"] is True
    ended = condition("condition-cauda-equina", cid="c2", clinical=None,
                      abatementDateTime="2020-01-01")
    pf = read(kb, patient(), ended)
    assert "condition-cauda-equina" not in facts(pf)
    assert "abatement" in one_issue(pf, "Condition/c2").message
    refuted = condition("condition-cauda-equina", cid="c3", clinical=None,
                        verification="refuted")
    assert "condition-cauda-equina" not in facts(read(kb, patient(), refuted))


def test_unrecognised_clinical_status_counts_as_active(kb: KnowledgeBase) -> None:
    cond = condition("condition-osteoporosis", cid="c1", clinical=None)
    cond["clinicalStatus"] = {"text": "yes"}
    pf = read(kb, patient(), cond)
    assert facts(pf)["condition-osteoporosis"] is True
    assert one_issue(pf, "Condition/c1").severity == "warning"


def test_several_conditions_with_one_code_are_all_sources(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), condition("condition-sciatica", cid="b"),
              condition("condition-sciatica", cid="a"),
              condition("condition-sciatica", cid="c", clinical="resolved"))
    assert pf.by_name()["condition-sciatica"].sources == ("Condition/a", "Condition/b")


def test_unknown_condition_code_is_reported(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), condition("38341003", cid="htn"))  # hypertension
    assert facts(pf) == {"age": 55, "sex": "female"}
    assert one_issue(pf, "Condition/htn").code == "not-supported"


# --- pregnancy ----------------------------------------------------------------------------------


def preg(answer: str, oid: str = "preg", **kw: Any) -> dict[str, Any]:
    return observation("x", oid=oid, system=LOINC, code="82810-3",
                       value_fields_={"valueCodeableConcept": concept(LOINC, answer)}, **kw)


def test_pregnancy_observation_pregnant(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), preg("LA15173-0"))
    assert pf.by_name()["condition-pregnancy"].value is True
    assert pf.by_name()["condition-pregnancy"].sources == ("Observation/preg",)
    assert pf.issues == ()


def test_preliminary_pregnancy_observation_gives_a_preliminary_fact(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), preg("LA15173-0", status="preliminary"))
    assert pf.by_name()["condition-pregnancy"].preliminary
    assert "preliminary" in one_issue(pf, "Observation/preg").message
    pf = read(kb, patient(), preg("LA15173-0", status="preliminary"),
              condition("condition-pregnancy", cid="c"))
    assert not pf.by_name()["condition-pregnancy"].preliminary


def test_pregnancy_observation_not_pregnant_gives_no_fact(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), preg("LA26683-5"))
    assert "condition-pregnancy" not in facts(pf) and pf.issues == ()


def test_pregnancy_observation_other_answer_is_reported(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), preg("LA4489-6"))  # unknown
    assert "condition-pregnancy" not in facts(pf)
    assert one_issue(pf, "Observation/preg").severity == "information"


def test_pregnancy_latest_observation_wins(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), preg("LA15173-0", "old", effective="2025-01-01"),
              preg("LA26683-5", "new", effective="2026-11-01"))
    assert "condition-pregnancy" not in facts(pf)


def test_pregnancy_condition_and_observation_merge(kb: KnowledgeBase) -> None:
    pf = read(kb, patient(), preg("LA15173-0"), condition("condition-pregnancy", cid="c"))
    assert pf.by_name()["condition-pregnancy"].sources == ("Condition/c", "Observation/preg")
    pf = read(kb, patient(), preg("LA26683-5"), condition("condition-pregnancy", cid="c"))
    assert facts(pf)["condition-pregnancy"] is True
    assert one_issue(pf, "Observation/preg").severity == "warning"


# --- sources, follow-up, careplan ---------------------------------------------------------------


def test_sources_fall_back_to_full_url_then_to_none(kb: KnowledgeBase) -> None:
    b = bundle(patient(), pain(4, oid=None), observation("rf-fever", False, oid=None))
    b["entry"][1]["fullUrl"] = "urn:uuid:9f2c4a80-0000-4000-8000-000000000001"
    del b["entry"][2]["fullUrl"]
    pf = read_bundle(b, kb=kb, as_of=AS_OF)
    assert pf.by_name()["pain-now"].sources == ("urn:uuid:9f2c4a80-0000-4000-8000-000000000001",)
    assert pf.by_name()["rf-fever"].sources == ()
    pf = read_bundle(b | {"entry": [*b["entry"], {"resource": pain(14, oid=None)}]},
                     kb=kb, as_of=AS_OF)
    # a resource with neither id nor fullUrl is located by its entry index
    assert "same date" in one_issue(pf, "Bundle.entry[3]").message


def test_foreign_careplans_and_their_responses_are_reported_not_used(kb: KnowledgeBase) -> None:
    # follow-up reading in detail: tests/test_followup_fhir.py
    fu = observation("x", 3, oid="fu1", code="exercise-pain-during", components=[
        ff.component(SCREEN, "exercise", {"valueCodeableConcept": concept(
            "http://movement-cds.org/fhir/CodeSystem/exercise", "bird-dog-breathing")})])
    plan = {"resourceType": "CarePlan", "id": "cp1", "status": "active", "intent": "proposal",
            "subject": {"reference": SUBJECT}, "created": "2026-10-01T09:00:00Z"}
    old_plan = {**plan, "id": "cp0", "created": "2026-09-01T09:00:00Z"}
    pf = read(kb, patient(), fu, plan, old_plan)
    assert "no previous CarePlan" in one_issue(pf, "Observation/fu1").message
    assert "not a CarePlan made by movement-cds" in one_issue(pf, "CarePlan/cp1").message
    assert "not a CarePlan made by movement-cds" in one_issue(pf, "CarePlan/cp0").message
    assert pf.follow_up is None
    assert read(kb, patient(), old_plan, fu, plan) == pf


def test_no_extras_without_follow_up(kb: KnowledgeBase) -> None:
    assert dict(read(kb, patient(), pain(3)).extras) == {}


# --- examples -----------------------------------------------------------------------------------


def load_example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize("name", ["no-red-flags", "cauda-equina", "flexion-precaution",
                                  "red-flags-missing", "bilateral-asymmetry",
                                  "invalid-values", "example-patient"])
def test_examples_are_read(kb: KnowledgeBase, name: str) -> None:
    pf = read_bundle((EXAMPLES / f"{name}.json").read_bytes(), kb=kb, as_of=AS_OF)
    assert pf.facts and all(f.sources for f in pf.facts)
    assert not any(i.code in ("structure", "exception") for i in pf.issues)


def test_example_facts(kb: KnowledgeBase) -> None:
    def f(name: str) -> dict[str, Any]:
        return facts(read_bundle(load_example(name), kb=kb, as_of=AS_OF))

    nrf = f("no-red-flags")
    assert all(nrf[rf] is False for rf in ff.RED_FLAGS)
    assert nrf["directional-preference"] == "extension"
    ces = f("cauda-equina")
    assert ces["rf-bladder-dysfunction"] is True and ces["rf-saddle-anaesthesia"] is True
    flex = f("flexion-precaution")
    assert flex["repeated-flexion-response"] == "peripheralizes"
    assert flex["repeated-extension-response"] == "centralizes"
    bil = f("bilateral-asymmetry")
    assert (bil["fms-hurdle-step.left"], bil["fms-hurdle-step.right"]) == (3, 1)
    assert (bil["pattern-lateral-bend.left"], bil["pattern-lateral-bend.right"]) == (3, 1)
    assert (bil["clear-shoulder.left"], bil["clear-shoulder.right"]) == (False, True)
    ex = f("example-patient")
    assert ex["episode-duration"] == 120.0 and ex["symptom-distribution"] == "above-knee"
    assert ex["condition-chronic-low-back-pain"] is True
    obs = [e for e in load_example("example-patient")["entry"]
           if e["resource"]["resourceType"] == "Observation"]
    assert len(obs) >= 30


def test_example_red_flags_missing(kb: KnowledgeBase) -> None:
    pf = read_bundle(load_example("red-flags-missing"), kb=kb, as_of=AS_OF)
    f = facts(pf)
    for rf in ("rf-fever", "rf-cancer-history", "rf-significant-trauma"):
        assert rf not in f
    assert pf.by_name()["pain-now"].preliminary
    assert "entered-in-error" in one_issue(pf, "Observation/obs-rf-cancer-history-eie").message


def test_example_invalid_values(kb: KnowledgeBase) -> None:
    pf = read_bundle(load_example("invalid-values"), kb=kb, as_of=AS_OF)
    assert "pain-now" not in facts(pf) and "fms-deep-squat" not in facts(pf)
    assert {i.location for i in pf.issues if i.severity == "warning"} == {
        "Observation/obs-pain-now", "Observation/obs-fms-deep-squat"}
    assert facts(pf)["odi-score"] == 22.0


def test_example_other_patient_is_rejected(kb: KnowledgeBase) -> None:
    (issue,) = invalid(kb, load_example("invalid-other-patient"))
    assert "Observation/obs-odi-other-patient" in issue.message
    assert issue.location is not None and issue.location.startswith("Bundle.entry[")


def test_examples_are_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "_generate.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --- properties -------------------------------------------------------------------------------


def _shuffled_equal(kb: KnowledgeBase, b: dict[str, Any], seed: int) -> None:
    expected = read_bundle(b, kb=kb, as_of=AS_OF)
    other = copy.deepcopy(b)
    random.Random(seed).shuffle(other["entry"])
    assert read_bundle(other, kb=kb, as_of=AS_OF) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE_OK)
@given(seed=st.integers(0, 2**32 - 1))
def test_entry_order_does_not_matter_for_the_example_patient(
    kb: KnowledgeBase, seed: int
) -> None:
    _shuffled_equal(kb, load_example("example-patient"), seed)


def _messy_bundle() -> dict[str, Any]:
    """Ties, duplicates, superseded, invalid and ignored items: the hard cases for order."""
    return bundle(
        patient(),
        pain(3, oid="a"), pain(8, oid="b"), pain(5, oid="c", effective="2026-10-01"),
        pain(9, oid="d", status="entered-in-error"), pain(2, oid="e", effective=None),
        observation("fms-hurdle-step", oid="h1", left=3, right=1),
        observation("fms-hurdle-step", oid="h2", left=2, right=2, status="preliminary"),
        observation("odi-score", 120.0), observation("rf-fever", False),
        observation("rf-fever", False), observation("x", 1, oid="u", code="unknown-item"),
        condition("condition-sciatica", cid="s1"), condition("condition-sciatica", cid="s2"),
        condition("condition-cancer", cid="k", clinical="resolved"),
        preg("LA26683-5"), condition("condition-pregnancy", cid="p"),
        {"resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "proposal",
         "subject": {"reference": SUBJECT}},
        {"resourceType": "Encounter", "id": "enc", "status": "finished",
         "class": {"code": "AMB"}},
    )


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(seed=st.integers(0, 2**32 - 1))
def test_entry_order_does_not_matter_for_hard_cases(kb: KnowledgeBase, seed: int) -> None:
    _shuffled_equal(kb, _messy_bundle(), seed)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _only_invalid_bundle_error(kb: KnowledgeBase, data: Any, validate: bool = True) -> None:
    try:
        pf = read_bundle(data, kb=kb, as_of=AS_OF, strict_fhir=validate)
    except InvalidBundleError as err:
        # an "exception" issue means the reader crashed on something: a bug to fix
        assert all(i.code != "exception" for i in err.issues), err.issues
        assert err.operation_outcome["issue"]
    else:
        assert isinstance(pf, PatientFacts)
        assert all(i.code != "exception" for i in pf.issues)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(value=json_values)
def test_arbitrary_json_raises_only_invalid_bundle_error(kb: KnowledgeBase, value: Any) -> None:
    _only_invalid_bundle_error(kb, value)
    _only_invalid_bundle_error(kb, json.dumps(value))


FIELDS = ["id", "status", "code", "subject", "valueInteger", "valueQuantity", "valueBoolean",
          "valueCodeableConcept", "valueString", "component", "effectiveDateTime",
          "effectivePeriod", "issued", "birthDate", "gender", "clinicalStatus",
          "verificationStatus", "abatementDateTime", "dataAbsentReason", "created", "coding",
          "reference", "value", "unit", "system", "comparator", "end"]
_codes = st.sampled_from([
    (SCREEN, "fms-hurdle-step"), (SCREEN, "rf-fever"), (SCREEN, "symptom-distribution"),
    (SCREEN, "episode-duration"), (SCREEN, "exercise-pain-during"), (LOINC, "72514-3"),
    (LOINC, "82810-3"), (SNOMED, "77386006"), (SNOMED, ff.LEFT), (SNOMED, ff.RIGHT),
    (SCREEN, "lbp-provoked"), (SCREEN, "above-knee"), (LOINC, "LA15173-0"),
])
fhirish_leaf = (
    st.sampled_from(["final", "preliminary", "active", "refuted", "2026-11-01", "2026",
                     "2026-11-01T10:00:00Z", "Patient/pat-1", "Patient/x", "d", "wk",
                     "{score}", "deg", "female", "1970-05"])
    | st.integers(-3, 200) | st.booleans() | st.none() | st.floats(-1e3, 1e3)
    | _codes.map(lambda c: {"coding": [{"system": c[0], "code": c[1]}]})
)
fhirish = st.recursive(
    fhirish_leaf,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(FIELDS), children, max_size=5),
    max_leaves=25,
)
resources = st.builds(
    lambda rtype, fields: {"resourceType": rtype, **fields},
    st.sampled_from(["Patient", "Observation", "Condition", "CarePlan", "Encounter", "", "x"])
    | st.none(),
    st.dictionaries(st.sampled_from(FIELDS), fhirish, max_size=8),
)
entries = st.lists(
    st.one_of(
        st.builds(lambda r: {"resource": r}, resources),
        st.builds(lambda r, u: {"fullUrl": u, "resource": r}, resources,
                  st.sampled_from(["urn:uuid:1", "Patient/pat-1", ""])),
        fhirish,
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    entry=entries,
    btype=st.sampled_from(["collection", "searchset", "transaction", "batch", "document"]),
    validate=st.booleans(),
    with_patient=st.booleans(),
)
def test_fhir_shaped_junk_raises_only_invalid_bundle_error(
    kb: KnowledgeBase, entry: list[Any], btype: str, validate: bool, with_patient: bool
) -> None:
    if with_patient:
        entry = [{"resource": patient()}, *entry]
    data = {"resourceType": "Bundle", "type": btype, "entry": entry}
    _only_invalid_bundle_error(kb, data, validate)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.data(), validate=st.booleans())
def test_examples_with_one_element_replaced_by_junk(
    kb: KnowledgeBase, data: st.DataObject, validate: bool
) -> None:
    b = load_example(data.draw(st.sampled_from(["example-patient", "bilateral-asymmetry"])))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(b)[1:]))
        node = b
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = data.draw(fhirish | json_values)
    _only_invalid_bundle_error(kb, b, validate)


# --- how old is this finding (as-of instant) ---------------------------------------------


def test_stale_red_flag_answer_counts_as_missing(kb: KnowledgeBase) -> None:
    limit = kb.parameter("red-flag-max-age-days")
    old = observation("rf-fever", False, effective="2026-09-01T09:00:00Z")
    fresh = observation("rf-foot-drop", False, effective="2026-10-30T09:00:00Z")
    pf = read(kb, patient(), old, fresh)
    assert "rf-fever" not in facts(pf) and facts(pf)["rf-foot-drop"] is False
    issue = one_issue(pf, "Observation/obs-rf-fever")
    assert issue.severity == "warning" and f"{limit:g}-day limit" in issue.message
    # the same answer evaluated as of a date within the limit is current
    pf = read_bundle(bundle(patient(), old), kb=kb,
                     as_of=datetime(2026, 9, 5, tzinfo=UTC))
    assert facts(pf)["rf-fever"] is False


def test_stale_answer_is_not_replaced_by_an_even_older_one(kb: KnowledgeBase) -> None:
    older = observation("pain-now", 2, oid="p-old", effective="2026-06-01T09:00:00Z")
    old = observation("pain-now", 3, oid="p-new", effective="2026-08-01T09:00:00Z")
    pf = read(kb, patient(), older, old)
    assert "pain-now" not in facts(pf)


def test_observation_after_the_as_of_instant_is_ignored(kb: KnowledgeBase) -> None:
    before = observation("pain-now", 3, oid="p-before", effective="2026-11-01T09:00:00Z")
    after = observation("pain-now", 9, oid="p-after", effective="2026-11-05T09:00:00Z")
    pf = read(kb, patient(), before, after)
    assert facts(pf)["pain-now"] == 3
    assert "after the as-of instant" in one_issue(pf, "Observation/p-after").message


def test_max_age_is_a_configurable_parameter() -> None:
    from cds import load_knowledge_base
    from knowledge_base import bundled_path

    lenient = load_knowledge_base(bundled_path(), {"red-flag-max-age-days": 120})
    old = observation("rf-fever", False, effective="2026-09-01T09:00:00Z")
    assert facts(read(lenient, patient(), old))["rf-fever"] is False
