"""Small builders of FHIR R4 test input (plain dicts), shared by the test modules.

    b = bundle(patient(), observation("pain-now", 4, system=LOINC, code="72514-3"))

``observation(fact, value)`` takes a catalog fact name and looks its code up in the bundled
knowledge base; the value becomes ``valueBoolean`` (bool), ``valueInteger`` (int),
``valueQuantity`` (float, with the catalog unit) or ``valueCodeableConcept`` (str, a screen
code). Pass ``value_fields={...}`` to send any raw ``value[x]`` instead.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

from cds import KnowledgeBase, load_knowledge_base
from knowledge_base import bundled_path

SCREEN = "http://movement-cds.org/fhir/CodeSystem/screen"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
LEFT = "7771000"
RIGHT = "24028007"

AS_OF = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
PATIENT_ID = "pat-1"
SUBJECT = f"Patient/{PATIENT_ID}"
WHEN = "2026-11-01T09:30:00Z"
_NS = uuid.UUID("0c7d9f3e-2b1a-4f5e-8d6c-9a8b7c6d5e4f")

RED_FLAGS = (
    "rf-saddle-anaesthesia", "rf-bladder-dysfunction", "rf-bowel-dysfunction",
    "rf-bilateral-leg-symptoms", "rf-progressive-weakness", "rf-foot-drop",
    "rf-sexual-dysfunction", "rf-fever", "rf-unexplained-weight-loss", "rf-cancer-history",
    "rf-night-pain", "rf-significant-trauma", "rf-corticosteroid-use", "rf-iv-drug-use",
    "rf-immunosuppression", "rf-recent-infection", "rf-pulsatile-abdominal-mass",
    "rf-not-improving",
)


@cache
def kb() -> KnowledgeBase:
    return load_knowledge_base(bundled_path())


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def patient(pid: str | None = PATIENT_ID, *, birth_date: str | None = "1971-04-12",
            gender: str | None = "female", **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient"}
    if pid is not None:
        res["id"] = pid
    if birth_date is not None:
        res["birthDate"] = birth_date
    if gender is not None:
        res["gender"] = gender
    res.update(extra)
    return res


def value_fields(fact: str, value: Any) -> dict[str, Any]:
    """The value[x] the contract asks for, for a value of this Python type."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int):
        return {"valueInteger": value}
    if isinstance(value, float):
        unit = kb().facts[fact].unit if fact in kb().facts else None
        q: dict[str, Any] = {"value": value}
        if unit is not None:
            q.update(unit=unit, system=UCUM, code=unit)
        return {"valueQuantity": q}
    if isinstance(value, str):
        return {"valueCodeableConcept": concept(SCREEN, value)}
    raise TypeError(value)


def quantity(value: Any, unit: str | None = None, *, system: str | None = UCUM,
             **extra: Any) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if unit is not None:
        q["unit"] = unit
        q["code"] = unit
        if system is not None:
            q["system"] = system
    q.update(extra)
    return {"valueQuantity": q}


def component(system: str, code: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"code": concept(system, code), **fields}


def observation(
    fact: str,
    value: Any = None,
    *,
    oid: str | None = "",
    system: str | None = None,
    code: str | None = None,
    status: str = "final",
    effective: str | None = WHEN,
    subject: str | None = SUBJECT,
    left: Any = None,
    right: Any = None,
    provoked: bool | None = None,
    value_fields_: dict[str, Any] | None = None,
    components: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An Observation of a catalog fact (or of ``system``/``code`` when given).

    ``oid=""`` (default) gives ``obs-{fact}``; ``oid=None`` leaves the id out.
    """
    if code is None:
        coding = kb().facts[fact].coding
        assert coding is not None, fact
        system, code = coding.system, coding.code
    res: dict[str, Any] = {"resourceType": "Observation"}
    if oid is not None:
        res["id"] = oid or f"obs-{fact}"
    res["status"] = status
    res["code"] = concept(system or SCREEN, code)
    if subject is not None:
        res["subject"] = {"reference": subject}
    if effective is not None:
        res["effectiveDateTime"] = effective
    res.update(value_fields_ if value_fields_ is not None else value_fields(fact, value))
    comps = list(components or [])
    if left is not None:
        comps.append(component(SNOMED, LEFT, value_fields(fact, left)))
    if right is not None:
        comps.append(component(SNOMED, RIGHT, value_fields(fact, right)))
    if provoked is not None:
        comps.append(component(SCREEN, "lbp-provoked", {"valueBoolean": provoked}))
    if comps:
        res["component"] = comps
    res.update(extra)
    return res


def condition(fact_or_code: str, *, cid: str = "cond-1", clinical: str | None = "active",
              verification: str | None = None, subject: str | None = SUBJECT,
              **extra: Any) -> dict[str, Any]:
    """A Condition coded with the SNOMED code of a catalog ``condition-*`` fact (or a code)."""
    d = kb().facts.get(fact_or_code)
    code = d.coding.code if d is not None and d.coding is not None else fact_or_code
    res: dict[str, Any] = {"resourceType": "Condition", "id": cid}
    if clinical is not None:
        res["clinicalStatus"] = concept(CLINICAL, clinical)
    if verification is not None:
        res["verificationStatus"] = concept(VERIFICATION, verification)
    res["code"] = concept(SNOMED, code)
    if subject is not None:
        res["subject"] = {"reference": subject}
    res.update(extra)
    return res


def full_url(resource: dict[str, Any]) -> str:
    key = f"{resource['resourceType']}/{resource.get('id')}"
    return f"urn:uuid:{uuid.uuid5(_NS, key)}"


def bundle(*resources: dict[str, Any], type: str = "collection",
           full_urls: bool = True) -> dict[str, Any]:
    """A Bundle of the resources; ``fullUrl`` urn:uuids derived from type and id."""
    entries = []
    for r in resources:
        entry: dict[str, Any] = {}
        if full_urls:
            entry["fullUrl"] = full_url(r)
        entry["resource"] = r
        entries.append(entry)
    return {"resourceType": "Bundle", "type": type, "entry": entries}


def red_flags(value: bool = False, *, omit: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """All 18 red-flag answers (``value`` for each), leaving out ``omit``."""
    return [observation(rf, value) for rf in RED_FLAGS if rf not in omit]


def screen_bundle(n_extra: int = 0) -> dict[str, Any]:
    """A realistic 30-Observation Bundle (18 red flags and 12 screen items)."""
    obs = red_flags()
    obs += [
        observation("pain-now", 4, system=None),
        observation("odi-score", 32.0),
        observation("episode-duration", 120.0),
        observation("symptom-distribution", "above-knee"),
        observation("fms-deep-squat", 2, provoked=False),
        observation("fms-hurdle-step", left=2, right=1, provoked=False),
        observation("fms-inline-lunge", left=3, right=2),
        observation("fms-active-slr", left=1, right=2),
        observation("fms-rotary-stability", left=1, right=1),
        observation("pattern-hinge", 1, provoked=True),
        observation("slr-angle", left=70.0, right=80.0),
        observation("directional-preference", "extension"),
    ]
    obs += [observation("pain-now", 3, oid=f"obs-old-pain-{i}",
                        effective=f"2026-10-{i + 1:02d}") for i in range(n_extra)]
    return bundle(patient(), *obs, condition("condition-chronic-low-back-pain"))
