"""Small builders of FHIR R4 test input (plain dicts), shared by the test modules: thin
wrappers over the project's one input builder (``fhir_adapters``: ``observation``,
``patient``, ``condition``, ``bundle``...) with the tests' defaults (patient ``pat-1``,
answers dated ``WHEN``, no displays, fullUrls from resource type and id).

    b = bundle(patient(), observation("pain-now", 4, system=LOINC, code="72514-3"))

``observation(fact, value)`` takes a catalog fact name and looks its code up in the bundled
knowledge base; the value becomes ``valueBoolean`` (bool), ``valueInteger`` (int),
``valueQuantity`` (float, with the catalog unit) or ``valueCodeableConcept`` (str, a screen
code), whatever the catalog's type (tests send mismatched types on purpose). Pass
``value_fields_={...}`` to send any raw ``value[x]`` instead. ``RED_FLAGS`` is the bundled
catalog's red-flag screen.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

import fhir_adapters as fa
from cds import KnowledgeBase, load_knowledge_base
from fhir_adapters import LOINC, SNOMED, UCUM
from fhir_adapters import SCREEN_SYSTEM as SCREEN
from knowledge_base import bundled_path

__all__ = ["LOINC", "SCREEN", "SNOMED", "UCUM"]  # and the builders below

LEFT = fa.side_component("left", {})["code"]["coding"][0]["code"]
RIGHT = fa.side_component("right", {})["code"]["coding"][0]["code"]

AS_OF = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
PATIENT_ID = "pat-1"
SUBJECT = f"Patient/{PATIENT_ID}"
WHEN = "2026-11-01T09:30:00Z"
_NS = uuid.UUID("0c7d9f3e-2b1a-4f5e-8d6c-9a8b7c6d5e4f")


@cache
def kb() -> KnowledgeBase:
    return load_knowledge_base(bundled_path())


RED_FLAGS = fa.red_flag_questions(kb())


def concept(system: str, code: str) -> dict[str, Any]:
    return fa.concept(system, code)


def patient(pid: str | None = PATIENT_ID, *, birth_date: str | None = "1971-04-12",
            gender: str | None = "female", **extra: Any) -> dict[str, Any]:
    res = fa.patient(pid, gender=gender, birth_date=birth_date)
    res.update(extra)
    return res


def value_fields(fact: str, value: Any) -> dict[str, Any]:
    """The value[x] the contract asks for, for a value of this Python type."""
    return {} if value is None else fa.fact_value(kb(), fact, value, strict=False)


def quantity(value: Any, unit: str | None = None, *, system: str | None = UCUM,
             **extra: Any) -> dict[str, Any]:
    """A valueQuantity; ``system=None`` leaves the unit's system out."""
    q: dict[str, Any] = fa.quantity(value, unit)["valueQuantity"]
    if unit is not None and system != UCUM:
        q.pop("system")
        if system is not None:
            q["system"] = system
    q.update(extra)
    return {"valueQuantity": q}


def component(system: str, code: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"code": fa.concept(system, code), **fields}


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
    coded = (fa.fact_code(kb(), fact, display=False) if code is None
             else fa.concept(system or SCREEN, code))
    comps = list(components or [])
    comps += [fa.side_component(side, value_fields(fact, v))
              for side, v in (("left", left), ("right", right)) if v is not None]
    if provoked is not None:
        comps.append(fa.provoked_component(provoked))
    res = fa.observation(
        coded, oid=None if oid is None else oid or f"obs-{fact}", status=status,
        subject=subject, when=effective,
        value=value_fields_ if value_fields_ is not None else value_fields(fact, value),
        components=comps)
    res.update(extra)
    return res


def condition(fact_or_code: str, *, cid: str = "cond-1", clinical: str | None = "active",
              verification: str | None = None, subject: str | None = SUBJECT,
              **extra: Any) -> dict[str, Any]:
    """A Condition coded with the SNOMED code of a catalog ``condition-*`` fact (or a code)."""
    code = (fa.fact_code(kb(), fact_or_code, display=False) if fact_or_code in kb().facts
            else fa.concept(SNOMED, fact_or_code))
    res = fa.condition(code, cid=cid, clinical=clinical, verification=verification,
                       subject=subject)
    res.update(extra)
    return res


def full_url(resource: dict[str, Any]) -> str:
    url: str = fa.bundle([resource], namespace=_NS)["entry"][0]["fullUrl"]
    return url


def bundle(*resources: dict[str, Any], type: str = "collection",
           full_urls: bool = True) -> dict[str, Any]:
    """A Bundle of the resources; ``fullUrl`` urn:uuids derived from type and id."""
    return fa.bundle(resources, namespace=_NS if full_urls else None, type=type)


def red_flags(value: bool = False, *, omit: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every red-flag answer of the catalog (``value`` for each), leaving out ``omit``."""
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
