"""Plan -> the output FHIR R4 Bundle (shared/spec/output-contract.md).

``write_bundle(plan, kb)`` returns a ``Bundle`` of type ``collection`` as a plain JSON dict,
entries in this order:

1. one ``CarePlan`` (status ``draft``, intent ``proposal``); its activities are, in order:
   one ``activity.reference`` per referral (the referral comes first: when exercise is held
   the referral *is* the plan), one ``activity.detail`` per proposed exercise, one
   ``activity.detail`` with ``doNotPerform`` = true per exercise to avoid;
2. one ``ServiceRequest`` per alert that carries a referral (in alert order);
3. one ``DetectedIssue`` per alert (in alert order);
4. an ``OperationOutcome`` when there is anything to report about the input: one issue per
   ``InputIssue`` and one per fact that a data-gap rule found missing;
5. a ``Provenance`` for the CarePlan.

Machine-readable choices (documented for integrators)
----------------------------------------------------
* ``CarePlan.instantiatesUri`` = ``http://movement-cds.org/fhir/KnowledgeBase/{kb-id}|{version}``
  names the exact knowledge-base version whose rules made the plan.
* ``activity.detail.kind`` is omitted: a home exercise is not any of the request resources
  that R4's CarePlanActivityKind lists.
* The dose: ``detail.scheduledTiming.repeat`` (``frequency`` per ``period`` ``periodUnit``)
  says how often; the extension ``http://movement-cds.org/fhir/StructureDefinition/exercise-dose``
  on ``activity.detail`` says how much, with sub-extensions ``sets`` (valueInteger),
  ``repetitions`` (valueInteger), ``hold-seconds`` (valueQuantity, UCUM ``s``), ``tempo``
  (valueString), ``load`` (valueString) and ``pain-monitoring`` (valueString), each present
  only when the dose has it. ``detail.description`` says all of it in words, with the
  instructions, the rationale, the rules and the evidence.
* Traceability: ``http://movement-cds.org/fhir/StructureDefinition/source-rule``
  (valueString, one per rule id) and
  ``http://movement-cds.org/fhir/StructureDefinition/evidence`` (valueString, one per
  evidence id such as ``PMID:32438853``; the citation is in the knowledge base) sit on every
  exercise activity's ``detail``, every ServiceRequest and every DetectedIssue;
  ``reasonReference`` / ``evidence.detail`` carry the input references exactly as given.
* Held exercise: ``detail.status`` ``on-hold`` and ``detail.statusReason.text`` naming the
  alert(s) that hold it. If any alert holds exercise (or calls for a ``stat``, ``asap`` or
  ``urgent`` referral), every exercise activity is ``on-hold`` here, whatever the plan says:
  the safety rule is enforced again at the boundary.
* Exercises to avoid: ``detail.doNotPerform`` = true and ``detail.status`` **``on-hold``**.
  Why ``on-hold``: every R4 CarePlanActivityStatus is judged by readers (and by checkers that
  look only at the status of activities with an exercise code) as the state of *the
  exercise*. ``not-started``, ``scheduled`` and ``in-progress`` read as "do this" to anyone
  who misses the ``doNotPerform`` flag; ``cancelled`` and ``stopped`` read, together with
  ``doNotPerform``, as "the prohibition was withdrawn" (and ``stopped`` wrongly says it was
  started); ``completed``, ``unknown`` and ``entered-in-error`` are false. ``on-hold`` is the
  contract's own word for "held back by a safety rule", which is exactly what a vetoed
  exercise is, and it agrees with ``doNotPerform`` however it is read.
  ``detail.statusReason.text`` starts with "Do not perform:" and gives the reason.
* DetectedIssue: ``severity`` high (emergency, urgent), moderate (caution), low
  (information); ``evidence`` holds the input references (``detail``) and, for a data gap,
  the codes of the unanswered questions (``code``); ``mitigation.action.text`` says what the
  plan did.
* OperationOutcome issues for missing facts: severity ``warning``, code ``required``,
  ``details`` coded with the question's code, ``expression`` a FHIRPath that selects the
  resource that would have carried the answer.
* Provenance: target the CarePlan; agent the software (``movement-cds <version>``, type
  Device); entities (role ``source``) the knowledge base (identifier
  ``http://movement-cds.org/fhir/KnowledgeBase`` | ``{kb-id}@{version}``) and every input
  reference behind a fact.

Stable ids
----------
Every resource id is a UUID (v5) of a SHA-256 digest of the knowledge-base id and version,
the effective parameter values, the as-of instant, the subject, the plan's facts and issues
(sorted, sources sorted) and the plan's content (alerts, exercises, avoid list, data gaps,
safety net), plus the resource's role (``careplan``, ``servicerequest:<alert>``,
``detectedissue:<alert>``, ``operationoutcome``, ``provenance``, ``bundle``). The ``fullUrl``
is ``urn:uuid:<id>``; ``Bundle.timestamp`` is the as-of instant, never the wall clock. The
same plan gives a byte-identical ``json.dumps(bundle, sort_keys=True)``.

Validation
----------
No element is ever null, ``""``, ``[]`` or ``{}`` (they are pruned). The Bundle is validated
with the ``fhir.resources.R4B`` models (which validates every entry's resource with its own
model) and the codes of required bindings this module fills are checked; any failure raises
``OutputValidationError``, a bug: unvalidated output is never returned.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import fields, is_dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from cds import (
    AvoidedExercise,
    EvidenceRef,
    ExerciseDose,
    KnowledgeBase,
    MovementCDSError,
    Plan,
    PlanAlert,
    PlannedExercise,
)
from fhir_adapters._errors import operation_outcome

__all__ = [
    "ALERT_SYSTEM",
    "EXERCISE_SYSTEM",
    "EXT_EVIDENCE",
    "EXT_EXERCISE_DOSE",
    "EXT_SOURCE_RULE",
    "KNOWLEDGE_BASE_BASE",
    "SCREEN_SYSTEM",
    "OutputValidationError",
    "write_bundle",
]

SCREEN_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/screen"
EXERCISE_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/exercise"
ALERT_SYSTEM: Final = "http://movement-cds.org/fhir/CodeSystem/alert"
_SD: Final = "http://movement-cds.org/fhir/StructureDefinition/"
EXT_EXERCISE_DOSE: Final = _SD + "exercise-dose"
EXT_SOURCE_RULE: Final = _SD + "source-rule"
EXT_EVIDENCE: Final = _SD + "evidence"
KNOWLEDGE_BASE_BASE: Final = "http://movement-cds.org/fhir/KnowledgeBase"

_SNOMED: Final = "http://snomed.info/sct"
_UCUM: Final = "http://unitsofmeasure.org"
_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "http://movement-cds.org/fhir")

_HOLDING_PRIORITIES: Final = frozenset({"stat", "asap", "urgent"})
_SEVERITY: Final = {"emergency": "high", "urgent": "high", "caution": "moderate",
                    "information": "low"}
_PRIORITY_WORDS: Final = {
    "stat": "Emergency, same day",
    "asap": "Same-day urgent assessment",
    "urgent": "Urgent assessment, within about two weeks",
    "routine": "Routine referral",
}

# required bindings this module fills from data (R4 value sets)
_ACTIVITY_STATUS: Final = frozenset({
    "not-started", "scheduled", "in-progress", "on-hold", "completed", "cancelled", "stopped",
    "unknown", "entered-in-error",
})
_REQUEST_PRIORITY: Final = frozenset({"routine", "urgent", "asap", "stat"})
_ISSUE_SEVERITY: Final = frozenset({"fatal", "error", "warning", "information"})
_ISSUE_TYPE: Final = frozenset({
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-lost", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
})
_DETECTED_ISSUE_SEVERITY: Final = frozenset({"high", "moderate", "low"})
_UNITS_OF_TIME: Final = frozenset({"s", "min", "h", "d", "wk", "mo", "a"})


class OutputValidationError(MovementCDSError, RuntimeError):
    """The output failed FHIR R4 validation: a bug in this module, never returned as advice."""


def _software_version() -> str:
    try:
        return version("movement-cds")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0+source"


_SOFTWARE: Final = f"movement-cds {_software_version()}"


# --- small helpers --------------------------------------------------------------------------


def _prune(v: Any) -> Any:
    """Drop null, blank strings, empty arrays and empty objects, bottom up; strip strings."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            x = _prune(x)
            if x is not None and x != "" and x != [] and x != {}:
                out[k] = x
        return out
    if isinstance(v, list):
        items = []
        for x in v:
            x = _prune(x)
            if x is not None and x != "" and x != [] and x != {}:
                items.append(x)
        return items
    if isinstance(v, str):
        return v.strip()
    return v


def _instant(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("Plan.as_of must be timezone-aware")
    return dt.isoformat()


def _json_default(v: Any) -> Any:
    """JSON for plan content (for the id digest): dataclasses as objects, instants as text."""
    if is_dataclass(v) and not isinstance(v, type):
        return {f.name: getattr(v, f.name) for f in fields(v)}
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(f"cannot digest {type(v).__name__}")


def _digest(plan: Plan, kb: KnowledgeBase) -> str:
    content = {
        "kb": [plan.kb_id, plan.kb_version],
        "parameters": {n: kb.parameter(n) for n in sorted(kb.parameters)},
        "as_of": _instant(plan.as_of),
        "subject": plan.subject,
        "facts": sorted(
            ([f.name, f.value, sorted(f.sources), f.preliminary] for f in plan.facts),
            key=lambda x: json.dumps(x, sort_keys=True),
        ),
        "issues": sorted(
            [i.severity, i.code, i.message, i.location or ""] for i in plan.issues
        ),
        "alerts": plan.alerts,
        "exercises": plan.exercises,
        "avoid": plan.avoid,
        "data_gaps": plan.data_gaps,
        "safety_net": list(plan.safety_net),
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _refs(sources: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    return [{"reference": s} for s in sources]


def _rule_extensions(rule_ids: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"url": EXT_SOURCE_RULE, "valueString": r} for r in rule_ids]


def _evidence_extensions(evidence: tuple[EvidenceRef, ...]) -> list[dict[str, Any]]:
    return [{"url": EXT_EVIDENCE, "valueString": e.id} for e in evidence]


def _trace_extensions(
    rule_ids: tuple[str, ...], evidence: tuple[EvidenceRef, ...]
) -> list[dict[str, Any]]:
    return _rule_extensions(rule_ids) + _evidence_extensions(evidence)


def _trace_text(
    plan: Plan, rule_ids: tuple[str, ...], sources: tuple[str, ...],
    evidence: tuple[EvidenceRef, ...],
) -> str:
    parts = [f"Rules: {', '.join(rule_ids)} ({plan.knowledge_base})."] if rule_ids else []
    if sources:
        parts.append(f"Based on: {', '.join(sources)}.")
    if evidence:
        parts.append("Evidence: " + "; ".join(f"{e.id} ({e.strength})" for e in evidence) + ".")
    return " ".join(parts)


def _dose_extension(dose: ExerciseDose) -> dict[str, Any]:
    subs: list[dict[str, Any]] = []
    if dose.sets is not None:
        subs.append({"url": "sets", "valueInteger": dose.sets})
    if dose.repetitions is not None:
        subs.append({"url": "repetitions", "valueInteger": dose.repetitions})
    if dose.hold_seconds is not None:
        subs.append({"url": "hold-seconds", "valueQuantity": {
            "value": dose.hold_seconds, "unit": "s", "system": _UCUM, "code": "s"}})
    if dose.tempo:
        subs.append({"url": "tempo", "valueString": dose.tempo})
    if dose.load:
        subs.append({"url": "load", "valueString": dose.load})
    if dose.pain_monitoring:
        subs.append({"url": "pain-monitoring", "valueString": dose.pain_monitoring})
    return {"url": EXT_EXERCISE_DOSE, "extension": subs}


def _exercise_code(exercise_id: str, title: str) -> dict[str, Any]:
    return {
        "coding": [{"system": EXERCISE_SYSTEM, "code": exercise_id, "display": title}],
        "text": title,
    }


def _holds(alert: PlanAlert) -> bool:
    return alert.holds_exercise or (
        alert.referral is not None and alert.referral.priority in _HOLDING_PRIORITIES
    )


# --- the resources --------------------------------------------------------------------------


class _Writer:
    def __init__(self, plan: Plan, kb: KnowledgeBase) -> None:
        self.plan = plan
        self.kb = kb
        self.as_of = _instant(plan.as_of)
        self.digest = _digest(plan, kb)
        self.holding = [a for a in plan.alerts if _holds(a)]
        self.held = bool(self.holding)
        self.avoid_ids = {a.exercise_id for a in plan.avoid}

    def id(self, role: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.digest}|{role}"))

    def urn(self, role: str) -> str:
        return f"urn:uuid:{self.id(role)}"

    # CarePlan ------------------------------------------------------------------------------

    def hold_reason(self) -> str:
        why = "; ".join(
            f"{a.display}"
            + (f" ({a.referral.priority} referral: {a.referral.to})" if a.referral else "")
            + f". {a.mitigation}"
            for a in self.holding
        )
        return f"On hold: {why} Do not start until a clinician has reviewed this."

    def exercise_activity(self, ex: PlannedExercise) -> dict[str, Any]:
        p = self.plan
        on_hold = self.held or ex.status != "proposed"
        text = [f"{ex.title}: {ex.dose.describe()}", f"How: {ex.instructions}",
                f"Why: {ex.rationale}", _trace_text(p, ex.rule_ids, ex.sources, ex.evidence)]
        if on_hold:
            text.insert(0, self.hold_reason() if self.held
                        else "On hold under the plan's safety policy.")
        d = ex.dose
        detail: dict[str, Any] = {
            "extension": [_dose_extension(d), *_trace_extensions(ex.rule_ids, ex.evidence)],
            "code": _exercise_code(ex.exercise_id, ex.title),
            "reasonReference": _refs(ex.sources),
            "status": "on-hold" if on_hold else "not-started",
            "statusReason": {"text": text[0]} if on_hold else None,
            "doNotPerform": False,
            "scheduledTiming": {"repeat": {
                "frequency": d.frequency, "period": d.period, "periodUnit": d.period_unit}},
            "description": "\n\n".join(text),
        }
        return {"detail": detail}

    def avoid_activity(self, av: AvoidedExercise) -> dict[str, Any]:
        text = [f"Do not perform: {av.title}. {av.reason}",
                _trace_text(self.plan, av.rule_ids, av.sources, av.evidence)]
        detail: dict[str, Any] = {
            "extension": _trace_extensions(av.rule_ids, av.evidence),
            "code": _exercise_code(av.exercise_id, av.title),
            "reasonReference": _refs(av.sources),
            "status": "on-hold",
            "statusReason": {"text": f"Do not perform: {av.reason}"},
            "doNotPerform": True,
            "description": "\n\n".join(text),
        }
        return {"detail": detail}

    def careplan(self) -> dict[str, Any]:
        p = self.plan
        activity: list[dict[str, Any]] = [
            {"reference": {
                "reference": self.urn(f"servicerequest:{a.code}"),
                "display": f"Referral ({a.referral.priority}): {a.referral.to}"}}
            for a in p.alerts if a.referral is not None
        ]
        activity += [self.exercise_activity(ex) for ex in p.exercises
                     if ex.exercise_id not in self.avoid_ids]
        activity += [self.avoid_activity(av) for av in p.avoid]
        if self.held:
            top = min(
                (a.referral.priority for a in self.holding if a.referral is not None),
                key=lambda pr: list(_PRIORITY_WORDS).index(pr) if pr in _PRIORITY_WORDS else 9,
                default=None,
            )
            title = ("Exercise on hold: " + (f"{top} referral proposed" if top
                                              else "see alerts"))
        else:
            title = "Proposed exercise plan for low back pain"
        return {
            "resourceType": "CarePlan",
            "id": self.id("careplan"),
            "instantiatesUri": [
                f"{KNOWLEDGE_BASE_BASE}/{p.kb_id}|{p.kb_version}"],
            "status": "draft",
            "intent": "proposal",
            "title": title,
            "description": self.careplan_description(),
            "subject": {"reference": p.subject},
            "created": self.as_of,
            "supportingInfo": [
                {"reference": self.urn(f"detectedissue:{a.code}"), "display": a.display}
                for a in p.alerts
            ],
            "activity": activity,
            "note": [{"text": s} for s in p.safety_net],
        }

    def careplan_description(self) -> str:
        p = self.plan
        lines = [f"Draft proposal for clinician review from {p.kb_title} "
                 f"({p.knowledge_base}); nothing is ordered."]
        if self.held:
            lines.append("All exercise is on hold: "
                         + "; ".join(f"{a.display}. {a.mitigation}" for a in self.holding)
                         + " The referral is the plan.")
        if p.alerts:
            lines.append("Alerts: " + "; ".join(f"{a.display} ({a.level})" for a in p.alerts)
                         + ".")
        shown = [ex.title for ex in p.exercises if ex.exercise_id not in self.avoid_ids]
        if shown:
            lines.append(("Exercises on hold: " if self.held else "Proposed exercises: ")
                         + "; ".join(shown) + ".")
        if p.avoid:
            lines.append("Do not perform: " + "; ".join(a.title for a in p.avoid) + ".")
        missing = self.missing_facts()
        if missing:
            lines.append("Missing (not read as normal): "
                         + "; ".join(self.fact_label(m) for m, _ in missing) + ".")
        return "\n".join(lines)

    # ServiceRequest ------------------------------------------------------------------------

    def service_request(self, a: PlanAlert) -> dict[str, Any]:
        assert a.referral is not None
        r = a.referral
        return {
            "resourceType": "ServiceRequest",
            "id": self.id(f"servicerequest:{a.code}"),
            "extension": _trace_extensions(a.rule_ids, a.evidence),
            "instantiatesUri": [f"{KNOWLEDGE_BASE_BASE}/{self.plan.kb_id}|{self.plan.kb_version}"],
            "status": "draft",
            "intent": "proposal",
            "category": [{"coding": [
                {"system": _SNOMED, "code": "3457005", "display": "Patient referral"}]}],
            "priority": r.priority,
            "code": {"text": f"Referral to {r.to}"},
            "subject": {"reference": self.plan.subject},
            "authoredOn": self.as_of,
            "performerType": {"text": r.to},
            "reasonCode": [{
                "coding": [{"system": ALERT_SYSTEM, "code": a.code, "display": a.display}],
                "text": a.display}],
            "reasonReference": [
                {"reference": self.urn(f"detectedissue:{a.code}"), "display": a.display},
                *_refs(a.sources)],
            "note": [{"text": f"{a.detail} {a.mitigation}"}],
            "patientInstruction": f"{_PRIORITY_WORDS.get(r.priority, r.priority)}: {r.to}.",
        }

    # DetectedIssue -------------------------------------------------------------------------

    def fact_label(self, name: str) -> str:
        d = self.kb.facts.get(name)
        desc = d.description if d else self.plan.fact_descriptions.get(name, name)
        return desc.split(" (")[0]

    def fact_concept(self, name: str) -> dict[str, Any]:
        d = self.kb.facts.get(name)
        coding = (
            [{"system": d.coding.system, "code": d.coding.code, "display": d.coding.display}]
            if d is not None and d.coding is not None else []
        )
        return {"coding": coding, "text": f"No usable answer: {self.fact_label(name)}"}

    def detected_issue(self, a: PlanAlert) -> dict[str, Any]:
        gaps = [m for m, rid in self.missing_facts() if rid in a.rule_ids]
        evidence = {"code": [self.fact_concept(m) for m in gaps], "detail": _refs(a.sources)}
        return {
            "resourceType": "DetectedIssue",
            "id": self.id(f"detectedissue:{a.code}"),
            "extension": _trace_extensions(a.rule_ids, a.evidence),
            "status": "preliminary",
            "code": {"coding": [{"system": ALERT_SYSTEM, "code": a.code, "display": a.display}],
                     "text": a.display},
            "severity": _SEVERITY[a.level],
            "patient": {"reference": self.plan.subject},
            "identifiedDateTime": self.as_of,
            "evidence": [evidence],
            "detail": a.detail,
            "mitigation": [{"action": {"text": a.mitigation}, "date": self.as_of}],
        }

    # OperationOutcome ----------------------------------------------------------------------

    def missing_facts(self) -> list[tuple[str, str]]:
        """(fact, data-gap rule id) for every missing fact, first gap first, no repeats."""
        seen: dict[str, str] = {}
        for g in self.plan.data_gaps:
            for m in g.missing:
                seen.setdefault(m, g.rule_id)
        return list(seen.items())

    def expression(self, name: str) -> str:
        d = self.kb.facts.get(name)
        if name == "age":
            return "Patient.birthDate"
        if name == "sex":
            return "Patient.gender"
        if d is None or d.coding is None:
            return name
        kind = "Condition" if name.startswith("condition-") else "Observation"
        return (f"{kind}.where(code.coding.where(system = '{d.coding.system}' and "
                f"code = '{d.coding.code}').exists())")

    def operation_outcome(self) -> dict[str, Any] | None:
        issues = list(operation_outcome(self.plan.issues)["issue"])
        details = {g.rule_id: g.detail for g in self.plan.data_gaps}
        for name, rid in self.missing_facts():
            issues.append({
                "severity": "warning",
                "code": "required",
                "details": self.fact_concept(name),
                "diagnostics": f"{details[rid]} Missing: {self.fact_label(name)} ({name}); "
                               f"rule {rid}. A missing answer is not read as normal.",
                "expression": [self.expression(name)],
            })
        if not issues:
            return None
        return {"resourceType": "OperationOutcome", "id": self.id("operationoutcome"),
                "issue": issues}

    # Provenance ----------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        p = self.plan
        inputs = sorted({s for f in p.facts for s in f.sources})
        return {
            "resourceType": "Provenance",
            "id": self.id("provenance"),
            "target": [{"reference": self.urn("careplan")}],
            "recorded": self.as_of,
            "activity": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                "code": "CREATE", "display": "create"}]},
            "agent": [{
                "type": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author", "display": "Author"}]},
                "who": {"type": "Device", "display": _SOFTWARE},
            }],
            "entity": [
                {"role": "source", "what": {
                    "identifier": {"system": KNOWLEDGE_BASE_BASE, "value": p.knowledge_base},
                    "display": f"Knowledge base {p.knowledge_base}"}},
                *({"role": "source", "what": {"reference": s}} for s in inputs),
            ],
        }

    # Bundle --------------------------------------------------------------------------------

    def bundle(self) -> dict[str, Any]:
        p = self.plan
        resources: list[dict[str, Any]] = [self.careplan()]
        resources += [self.service_request(a) for a in p.alerts if a.referral is not None]
        resources += [self.detected_issue(a) for a in p.alerts]
        oo = self.operation_outcome()
        if oo is not None:
            resources.append(oo)
        resources.append(self.provenance())
        return {
            "resourceType": "Bundle",
            "id": self.id("bundle"),
            "type": "collection",
            "timestamp": self.as_of,
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
        }


# --- validation -----------------------------------------------------------------------------


def _check_bindings(bundle: dict[str, Any]) -> list[str]:
    """Codes of required bindings filled from data (the R4B models do not check them)."""
    bad: list[str] = []

    def need(ok: bool, where: str, value: Any) -> None:
        if not ok:
            bad.append(f"{where}: {value!r} is not in the required value set")

    for i, entry in enumerate(bundle.get("entry", [])):
        r = entry["resource"]
        at = f"Bundle.entry[{i}].resource({r.get('resourceType')})"
        kind = r.get("resourceType")
        if kind == "CarePlan":
            for j, act in enumerate(r.get("activity", [])):
                d = act.get("detail")
                if d is None:
                    continue
                need(d.get("status") in _ACTIVITY_STATUS, f"{at}.activity[{j}].detail.status",
                     d.get("status"))
                unit = d.get("scheduledTiming", {}).get("repeat", {}).get("periodUnit")
                if unit is not None:
                    need(unit in _UNITS_OF_TIME, f"{at}.activity[{j}]...periodUnit", unit)
        elif kind == "ServiceRequest":
            need(r.get("priority") in _REQUEST_PRIORITY, f"{at}.priority", r.get("priority"))
        elif kind == "DetectedIssue":
            need(r.get("severity") in _DETECTED_ISSUE_SEVERITY, f"{at}.severity",
                 r.get("severity"))
        elif kind == "OperationOutcome":
            for j, issue in enumerate(r.get("issue", [])):
                need(issue.get("severity") in _ISSUE_SEVERITY, f"{at}.issue[{j}].severity",
                     issue.get("severity"))
                need(issue.get("code") in _ISSUE_TYPE, f"{at}.issue[{j}].code", issue.get("code"))
    return bad


def _validate(bundle: dict[str, Any]) -> None:
    try:
        # Bundle validation validates each entry's resource with its own R4B model.
        Bundle.model_validate(bundle)
    except ValidationError as e:
        raise OutputValidationError(f"output Bundle is not valid FHIR R4: {e}") from e
    bad = _check_bindings(bundle)
    if bad:
        raise OutputValidationError("output Bundle is not valid FHIR R4: " + "; ".join(bad))


# --- public ---------------------------------------------------------------------------------


def write_bundle(plan: Plan, kb: KnowledgeBase) -> dict[str, Any]:
    """The output Bundle (type ``collection``) for one plan, as a JSON-ready dict.

    ``kb`` is the knowledge base that produced the plan (for fact codes and parameters).
    Deterministic: the same plan gives a byte-identical ``json.dumps(..., sort_keys=True)``.
    Raises ``ValueError`` if ``plan.as_of`` has no time zone and ``OutputValidationError`` if
    the result is not valid FHIR R4 (a bug).
    """
    bundle: dict[str, Any] = _prune(_Writer(plan, kb).bundle())
    _validate(bundle)
    return bundle
