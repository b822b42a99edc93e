"""Progress across visits as FHIR R4: one ``DiagnosticReport`` the EHR can store.

When the input held two or more dated values of a progress measure (pain now, ODI, or
adherence from the follow-up responses), the output Bundle carries a DiagnosticReport coded
``plan-change#progress``: one *contained* Observation per value (the EHR stores the series
with the report, never a second copy of its own Observations), each with its date, value,
``derivedFrom`` the input Observation(s) it came from and the extension ``progress-role``
saying whether today's decision read it (``used``; ``response`` for adherence) or not
(``superseded`` by a later value, with a note naming it; ``stale``: too old, so counted as
missing). ``result`` lists them oldest first per measure; ``conclusion`` is the trend in
words. The CarePlan's ``supportingInfo`` references the report. See
docs/integrators/output.md, "Progress across visits".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, NoReturn, cast

from cds import (
    MEASURES,
    InputIssue,
    Measure,
    Plan,
    ProgressPoint,
    ProgressRole,
    human_date,
    progress_by_measure,
    show_number,
    trend_text,
)
from fhir_adapters._errors import InvalidBundleError
from fhir_adapters._outbound import _instant as instant_text
from fhir_adapters._terminology import (
    ADHERENCE_CODE,
    EXT_PROGRESS_ROLE,
    PLAN_CHANGE_SYSTEM,
    PROGRESS_CODE,
    UCUM,
)

__all__ = ["PROGRESS_FACT", "progress_report", "progress_series", "read_progress"]

# the catalog fact whose coding codes each measure's values (adherence has its own code)
PROGRESS_FACT: Final[dict[Measure, str]] = {"pain": "pain-now", "odi": "odi-score"}
_UNIT: Final[dict[Measure, str]] = {"pain": "{score}", "odi": "%", "adherence": "%"}
_ROLE_WORDS: Final = {"used": "used for this plan", "response": "used for this plan",
                      "superseded": "superseded: not used for this plan",
                      "stale": "too old: counted as missing"}


def progress_series(plan: Plan) -> dict[Measure, list[ProgressPoint]]:
    """The series the output carries: every measure with a point, when at least one measure
    has two or more (a trend); else empty (a first visit's single values are in the
    summary's findings, not a report)."""
    series = progress_by_measure(plan.progress)
    return series if any(len(s) >= 2 for s in series.values()) else {}


def _value(p: ProgressPoint) -> dict[str, Any]:
    v: int | float = int(p.value) if p.value == int(p.value) else p.value
    unit = _UNIT[p.measure]
    return {"value": v, "unit": unit, "system": UCUM, "code": unit}


def _observation(p: ProgressPoint, oid: str, subject: str,
                 code: dict[str, Any]) -> dict[str, Any]:
    note = None
    if p.superseded_by is not None:
        note = [{"text": f"Superseded for this plan's decision by {p.superseded_by}"}]
    elif p.role == "stale":
        note = [{"text": "The latest value, but older than its age limit: the decision "
                         "counted it as missing"}]
    return {
        "resourceType": "Observation",
        "id": oid,
        "extension": [{"url": EXT_PROGRESS_ROLE, "valueCode": p.role}],
        "status": "final",
        "code": code,
        "subject": {"reference": subject},
        "effectiveDateTime": instant_text(p.when),
        "valueQuantity": _value(p),
        "derivedFrom": [{"reference": s} for s in p.sources],
        "note": note,
    }


def progress_report(plan: Plan, report_id: str,
                    coding: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The DiagnosticReport of the plan's progress series, or None when there is no trend.
    ``coding(fact)`` is the coding of a catalog fact (as the knowledge base codes it)."""
    series = progress_series(plan)
    if not series:
        return None
    contained: list[dict[str, Any]] = []
    result: list[dict[str, Any]] = []
    lines: list[str] = []
    code, display, _ = ADHERENCE_CODE
    adherence = {"coding": [{"system": PLAN_CHANGE_SYSTEM, "code": code, "display": display}],
                 "text": display}
    for measure, points in series.items():
        fact = PROGRESS_FACT.get(measure)
        obs_code = adherence if fact is None else {
            "coding": coding(fact), "text": MEASURES[measure].label}
        for n, p in enumerate(points, 1):
            oid = f"{measure}-{n}"
            contained.append(_observation(p, oid, plan.subject, obs_code))
            result.append({"reference": f"#{oid}", "display": (
                f"{measure} {show_number(p.value)} on {human_date(p.when, plan.time_zone)}, "
                f"{_ROLE_WORDS[p.role]}")})
        lines.append(trend_text(measure, points, plan.time_zone) + ".")
    whens = [p.when for points in series.values() for p in points]
    code, display, _ = PROGRESS_CODE
    zone = plan.time_zone or "UTC"
    return {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "contained": contained,
        "status": "final",
        "code": {"coding": [{"system": PLAN_CHANGE_SYSTEM, "code": code, "display": display}],
                 "text": display},
        "subject": {"reference": plan.subject},
        "effectivePeriod": {"start": instant_text(min(whens)),
                            "end": instant_text(max(whens))},
        "issued": instant_text(plan.as_of),
        "result": result,
        "conclusion": " ".join(lines) + f" Dates in {zone}. The decision read only the "
                      "latest valid value of each; earlier ones are marked superseded.",
    }


_MEASURE_OF_CODE: Final[dict[str, Measure]] = {
    "72514-3": "pain", "97909-6": "odi", ADHERENCE_CODE[0]: "adherence"}


def _bad(where: str, message: str) -> NoReturn:
    raise InvalidBundleError([InputIssue("error", "structure", message, where)])


def read_progress(bundle: Mapping[str, Any]) -> tuple[ProgressPoint, ...]:
    """The progress series back from an output Bundle this project wrote (its progress
    DiagnosticReport), e.g. to draw it with ``progress_chart_svg`` from a stored plan; empty
    when the Bundle has none. ``superseded_by`` is not restored (the note says it in words).
    Raises ``InvalidBundleError`` (a ``ValueError``; its OperationOutcome names the element)
    when the report is not as this project writes it."""
    points: list[ProgressPoint] = []
    for i, entry in enumerate(bundle.get("entry") or []):
        res = entry.get("resource") or {}
        if res.get("resourceType") != "DiagnosticReport" or not any(
                c.get("code") == PROGRESS_CODE[0] for c in res.get("code", {}).get("coding", [])):
            continue
        for j, obs in enumerate(res.get("contained") or []):
            where = f"Bundle.entry[{i}].resource.contained[{j}]"
            try:
                codes = [c["code"] for c in obs["code"]["coding"]]
                measure = next(_MEASURE_OF_CODE[c] for c in codes if c in _MEASURE_OF_CODE)
                role = next(x["valueCode"] for x in obs["extension"]
                            if x["url"] == EXT_PROGRESS_ROLE)
                when = datetime.fromisoformat(obs["effectiveDateTime"])
                value = float(obs["valueQuantity"]["value"])
                sources = tuple(r["reference"] for r in obs.get("derivedFrom", []))
            except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as e:
                _bad(where, f"not a progress value as movement-cds writes it "
                            f"({type(e).__name__}: {e})")
            if role not in _ROLE_WORDS:
                _bad(where, f"progress-role {role!r} is not one of "
                            f"{', '.join(sorted(_ROLE_WORDS))}")
            points.append(ProgressPoint(measure, when, value, cast(ProgressRole, role), sources))
    return tuple(sorted(points))
