"""The input contract's "other input rules (v2)": ODI fractions, inconsistent STarT Back
totals, contained resources (docs/integrators/red-flag-answers.md, "Other input rules")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cds import KnowledgeBase, PatientFacts
from fhir_adapters import read_bundle
from tests.fhir_factory import bundle, observation, patient

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def read(kb: KnowledgeBase, *resources: dict[str, Any]) -> PatientFacts:
    return read_bundle(bundle(patient(), *resources), kb=kb, as_of=AS_OF)


def odi(value: float, unit: str) -> dict[str, Any]:
    return observation("odi-score", value_fields_={"valueQuantity": {
        "value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})


def test_odi_with_unit_1_is_a_fraction(kb: KnowledgeBase) -> None:
    pf = read(kb, odi(0.42, "1"))
    assert pf.by_name()["odi-score"].value == 42.0
    assert not [i for i in pf.issues if i.location == "Observation/obs-odi-score"]


def test_odi_at_most_1_percent_is_used_and_flagged(kb: KnowledgeBase) -> None:
    pf = read(kb, odi(0.4, "%"))
    assert pf.by_name()["odi-score"].value == 0.4
    (issue,) = [i for i in pf.issues if i.location == "Observation/obs-odi-score"]
    assert issue.severity == "warning" and "possibly a fraction" in issue.message
    assert not [i for i in read(kb, odi(0, "%")).issues if "fraction" in i.message]
    assert not [i for i in read(kb, odi(40, "%")).issues if "fraction" in i.message]


def test_subscale_above_total_counts_as_missing(kb: KnowledgeBase) -> None:
    pf = read(kb, observation("startback-total", 2), observation("startback-psychosocial", 4))
    names = pf.by_name()
    assert "startback-total" not in names and "startback-psychosocial" not in names
    assert {i.location for i in pf.issues if "inconsistent" in i.message} == {
        "Observation/obs-startback-total", "Observation/obs-startback-psychosocial"}


def test_totals_that_disagree_with_the_items_give_way_to_the_items(
        kb: KnowledgeBase, durable: Any) -> None:
    items = [observation(f"startback-item-{i}", i in (1, 5, 6, 7, 8)) for i in range(1, 10)]
    pf = read(kb, observation("startback-total", 4), observation("startback-psychosocial", 4),
              *items)
    assert "startback-total" not in pf.by_name()
    assert pf.by_name()["startback-psychosocial"].value == 4  # agrees with items 5-9
    prepared = durable.prepare(pf).by_name()
    assert prepared["startback-total"].value == 5  # computed from the items


def test_consistent_totals_are_used(kb: KnowledgeBase) -> None:
    items = [observation(f"startback-item-{i}", i in (1, 5)) for i in range(1, 10)]
    pf = read(kb, observation("startback-total", 2), observation("startback-psychosocial", 1),
              *items)
    assert pf.by_name()["startback-total"].value == 2
    assert not [i for i in pf.issues if "inconsistent" in i.message]


def test_contained_resources_are_reported_not_read(kb: KnowledgeBase) -> None:
    host = observation("pain-now", 3)
    host["contained"] = [
        {"resourceType": "Observation", "id": "inner", "status": "final",
         "subject": {"reference": "Patient/someone-else"}},
        {"resourceType": "Observation", "id": "mine", "status": "final",
         "subject": {"reference": "Patient/pat-1"}},
    ]
    pf = read(kb, host)
    found = [i for i in pf.issues if i.location == "Observation/obs-pain-now"]
    assert any("contained[0]" in i.message and "another subject" in i.message
               and i.severity == "warning" for i in found)
    assert any("contained[1]" in i.message and "not read" in i.message for i in found)
    assert pf.by_name()["pain-now"].value == 3
