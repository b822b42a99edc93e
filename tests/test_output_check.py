"""The output check remembers strings each field's validator accepted (issue 15 part 2): the
verdict stays R4B's (``Bundle.model_validate``) whatever was remembered before, for values
that are valid in one field and not in another, and for ``1``, ``1.0`` and ``True`` (equal
in Python, different to the validators)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_adapters import OutputValidationError, _output_check

# primitive fields of different R4 types, each as where it sits in a small Bundle
FIELDS = {
    "id": ("resource", "id"),
    "code": ("coding", "code"),
    "uri": ("coding", "system"),
    "string": ("coding", "display"),
    "boolean": ("coding", "userSelected"),
    "valueBoolean": ("extension", "valueBoolean"),
    "valueInteger": ("extension", "valueInteger"),
    "valuePositiveInt": ("extension", "valuePositiveInt"),
    "valueDecimal": ("extension", "valueDecimal"),
    "valueDateTime": ("extension", "valueDateTime"),
    "valueDate": ("extension", "valueDate"),
    "valueCode": ("extension", "valueCode"),
    "valueId": ("extension", "valueId"),
    "valueString": ("extension", "valueString"),
}
VALUES: list[Any] = [
    "abc", "a b", "a  b", " padded ", "1", "0", "true", "false", "2026-01-01", "2026-02-30",
    "2026-11-02T09:00:00Z", "2026-11-02T09:00:00", "urn:uuid:0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f",
    "x" * 65, "é", "tab\there", "", 1, 0, -1, 2**31, True, False, 1.0, 1.5, 0.0,
]


def bundle(values: list[tuple[str, Any]]) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": "http://example.org/cs", "code": "c"}
    resource: dict[str, Any] = {"resourceType": "Basic", "id": "b1",
                                "code": {"coding": [coding]}}
    extensions = []
    for name, value in values:
        where, key = FIELDS[name]
        if where == "resource":
            resource[key] = value
        elif where == "coding":
            coding[key] = value
        else:
            extensions.append({"url": "http://example.org/ext", key: value})
    if extensions:
        resource["extension"] = extensions
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}]}


def outcome(raw: dict[str, Any], *, full: bool) -> str:
    try:
        return json.dumps(_output_check.checked_bundle(raw, full_validation=full),
                          sort_keys=True)
    except OutputValidationError:
        return "refused"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundles=st.lists(st.lists(st.tuples(st.sampled_from(sorted(FIELDS)),
                                           st.sampled_from(VALUES)), max_size=4),
                        min_size=1, max_size=6))
def test_remembered_values_keep_the_verdict_of_r4b(
    bundles: list[list[tuple[str, Any]]],
) -> None:
    """A run of Bundles through one check (what it remembers carries over from Bundle to
    Bundle and from example to example): each gets R4B's verdict and the same output."""
    for values in bundles:
        raw = bundle(values)
        assert outcome(raw, full=False) == outcome(raw, full=True), values


def test_a_string_valid_in_one_field_is_refused_in_another_after_it_was_remembered() -> None:
    ok = bundle([("valueString", "a  b"), ("valueDateTime", "2026-11-02T09:00:00Z"),
                 ("valueInteger", 1)])
    assert outcome(ok, full=False) == outcome(ok, full=True) != "refused"
    for bad in ([("valueCode", "a  b")], [("id", "a  b")], [("valueDate", "2026-11-02T09:00:00Z")],
                # 1 == True in a set, yet a decimal takes 1 and refuses True
                [("valueDecimal", 1), ("valueDecimal", True)],
                [("valueDecimal", 1.0), ("valueDecimal", True)]):
        assert outcome(bundle(bad), full=False) == "refused" == outcome(bundle(bad), full=True)
    for other in ([("valueInteger", True)], [("valueInteger", 1.0)], [("valueBoolean", 1)]):
        assert outcome(bundle(other), full=False) == outcome(bundle(other), full=True)


# Fields of one FHIR type in different models share one validator and what it remembered
# (the output check merges field schemas that differ only in their serializers): dateTime
# (Extension.valueDateTime, Period.start, Timing.event), instant (Extension.valueInstant,
# Meta.lastUpdated) and date (Extension.valueDate, Period has none) side by side.
def _ext(key: str, value: Any) -> dict[str, Any]:
    return {"url": "http://example.org/ext", key: value}


DATE_FIELDS: dict[str, Any] = {
    "valueDateTime": lambda v: _ext("valueDateTime", v),
    "valueInstant": lambda v: _ext("valueInstant", v),
    "valueDate": lambda v: _ext("valueDate", v),
    "Period.start": lambda v: _ext("valuePeriod", {"start": v}),
    "Period.end": lambda v: _ext("valuePeriod", {"end": v}),
    "Timing.event": lambda v: _ext("valueTiming", {"event": [v, "2026-11-02"]}),
    "Meta.lastUpdated": None,  # on the resource
}
DATE_VALUES: list[Any] = [
    "2026", "2026-11", "2026-11-02", "2026-02-30", "2026-11-02T09:00:00Z",
    "2026-11-02T09:00:00", "2026-11-02T09:00:00.123+01:00", "2026-11-02T25:00:00Z", "09:00:00",
    " 2026-11-02 ", "", None, 2026, 1, True, 1.0,
]


def dated_bundle(values: list[tuple[str, Any]]) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Basic", "id": "b1",
                                "code": {"text": "dated"}}
    extensions = []
    for name, value in values:
        if DATE_FIELDS[name] is None:
            resource["meta"] = {"lastUpdated": value}
        else:
            extensions.append(DATE_FIELDS[name](value))
    if extensions:
        resource["extension"] = extensions
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}]}


DATED_RUNS = st.lists(st.lists(st.tuples(st.sampled_from(sorted(DATE_FIELDS)),
                                         st.sampled_from(DATE_VALUES)), max_size=4),
                      min_size=1, max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundles=DATED_RUNS)
def test_fields_sharing_a_validator_keep_the_verdict_of_r4b(bundles: Any) -> None:
    """A value accepted in one field of a type is remembered for every field of that type,
    never for a field of another type: each Bundle gets R4B's verdict and the same output,
    key order included (the check prunes in place what ``_prune`` copies)."""
    for values in bundles:
        raw = dated_bundle(values)
        full = outcome(raw, full=True)
        assert outcome(dated_bundle(values), full=False) == full, values
        if full != "refused":
            assert json.dumps(_output_check.checked_bundle(dated_bundle(values))) == \
                json.dumps(_output_check._prune(dated_bundle(values))), values


def test_fields_are_validated_one_by_one_when_their_schemas_do_not_combine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the one validator for all fields (schemas that do not combine), each field's
    batch is validated on its own, with the same verdicts."""
    monkeypatch.setattr(_output_check._FIELDS, "combined", (None, 10**9))
    fresh = [("Period.start", "2031-02-31"), ("valueInstant", "2031-01-05T10:11:12"),
             ("Meta.lastUpdated", "2031-01-05T10:11:13Z"), ("valueDate", "2031-01-06")]
    verdicts = [outcome(dated_bundle([v]), full=False) for v in fresh]
    assert verdicts == [outcome(dated_bundle([v]), full=True) for v in fresh]
    assert [v == "refused" for v in verdicts] == [True, True, False, False]
