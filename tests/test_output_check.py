"""The output check remembers strings each field's validator accepted (issue 15 part 2): the
verdict stays R4B's (``Bundle.model_validate``) whatever was remembered before, for values
that are valid in one field and not in another, and for ``1``, ``1.0`` and ``True`` (equal
in Python, different to the validators)."""

from __future__ import annotations

import json
from typing import Any

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
