"""Plan -> the output FHIR R4 Bundle (docs/integrators/output.md).

``write_bundle(plan, kb)`` returns a ``Bundle`` of type ``collection`` as a plain JSON dict,
entries in this order:

1. one ``CarePlan`` (status ``draft``, intent ``proposal``); its activities are, in order:
   one ``activity.reference`` per referral (the referral comes first: when exercise is held
   the referral *is* the plan), one ``activity.detail`` per proposed exercise, one per
   exercise a follow-up stopped (status ``stopped``), one ``activity.detail`` with
   ``doNotPerform`` = true per exercise to avoid, and a follow-up's check-in;
2. one ``ServiceRequest`` per alert that carries a referral (in alert order);
3. one ``DetectedIssue`` per alert (in alert order);
4. a ``DiagnosticReport``, progress across visits, when a progress measure has two or more
   values (``fhir_adapters._progress_fhir`` says what it holds);
5. an ``OperationOutcome`` when there is anything to report about the input: one issue per
   ``InputIssue`` and one per fact that a data-gap rule found missing;
6. a ``Provenance`` for the CarePlan.

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
  ``reasonReference`` / ``evidence.detail`` carry the input references exactly as given,
  except that ``reasonReference`` never names the Patient (R4 allows only Condition,
  Observation, DiagnosticReport and DocumentReference there): a ServiceRequest driven by age
  or sex names the Patient in ``supportingInfo``. An independent validator (FHIR.js,
  tests/test_fhir_js.py) checks the outputs too.
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
* Follow-up (an extension of the output contract; docs/integrators/follow-up.md). Every
  exercise activity carries
  ``http://movement-cds.org/fhir/StructureDefinition/exercise-follow-up`` with ``since``
  (valueDateTime: when this exercise was first prescribed, as the change says; else carried
  over from the previous plan while it stays the same exercise, the as-of instant for a new,
  swapped or harder/easier one) and ``consecutive-bad`` (valueInteger), so the next visit can count
  bad responses in a row. When the plan revises an earlier one (``Plan.replaces``):
  ``CarePlan.replaces`` references it as the input named it; each exercise the revision
  touched has ``http://movement-cds.org/fhir/StructureDefinition/exercise-change`` with
  ``kind`` (valueCoding from ``http://movement-cds.org/fhir/CodeSystem/plan-change``: new,
  continued, progressed, held, regressed, swapped, stopped), ``variable`` (valueCode, for a
  progression or regression: load, repetitions, sets, hold-seconds, tempo, exercise),
  ``previous-exercise`` (valueCoding, exercise system), ``previous-dose`` (the sub-extensions
  of exercise-dose without pain-monitoring, plus ``frequency``, ``period`` and
  ``period-unit``), ``reason`` (valueString, for the clinician), ``patient-text``
  (valueString) and ``rule`` (valueString, repeats); ``detail.description`` says "What
  changed" in the patient's words next to the dose, and ``reasonReference`` adds the response
  Observations. An exercise taken out is an activity with ``detail.status`` ``stopped``
  (it was started; now stop) and ``statusReason.text`` "Stopped: <reason>", unless it is
  also on the avoid list (then the change sits on the doNotPerform activity). The check-in
  is a last activity with ``detail.kind`` ``Appointment``, ``code`` plan-change#check-in,
  ``status`` ``not-started``, ``scheduledPeriod`` (start, end) and a description; none is
  written while exercise is held.
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
safety net; for a follow-up also what it replaces, the changes, the check-in and the
previous plan passed as ``previous``), plus the resource's role (``careplan``,
``servicerequest:<alert>``, ``detectedissue:<alert>``, ``operationoutcome``, ``provenance``,
``bundle``). The ``fullUrl`` is ``urn:uuid:<id>``; ``Bundle.timestamp`` is the as-of
instant, never the wall clock. The same plan gives a byte-identical
``json.dumps(bundle, sort_keys=True)``.

Validation
----------
No element is ever null, ``""``, ``[]`` or ``{}`` (they are pruned). Every Bundle returned has
been accepted by the ``fhir.resources.R4B`` models, with the verdict of
``Bundle.model_validate(bundle)`` (which validates every entry's resource with its own model),
and passes the checks the models do not make: the codes of the required bindings this module
fills, and the invariants cpl-3 (an activity has a reference or a detail, not both; here always
one), bdl-7 (fullUrls unique) and fullUrl = ``urn:uuid:`` + id. Any failure raises
``OutputValidationError``, a bug: unvalidated output is never returned.

Validating the whole Bundle with the models takes ~4 ms, nearly all of it per-element Python
work, while most of each output's *structure* is the same from call to call. So the Bundle is
validated node by node (a node: a JSON object an R4B model validates, from the Bundle down to
a Coding), each node as two parts:

* its **shape**: its keys in order, each primitive value replaced by a fixed stand-in that the
  field's type accepts, each element value by a stub instance of the field's model (a list of
  them by a one-stub list), each resource by a stub of the model its ``resourceType`` names,
  and anything else (a null, an empty list, a string where an element belongs, an unknown
  key, ...) kept verbatim as canonical JSON. The node's own model validates the shape, and the
  shape's encoding is remembered in a bounded cache (4096 shapes, first in first out). The
  encoding determines the shape exactly (the stand-ins are fixed per field), so a cache hit
  is the model's verdict on exactly that content;
* its **values**: every primitive value, on every call, by the validator the model compiled
  for that field (taken from the model's own core schema), in one batch per validator; and
  every child node, the same way, recursively.

Why the verdict is ``Bundle.model_validate``'s: for these models, validating a JSON object is
(1) each present field validated by its own validator, which never sees another field
(primitives by their core schema; elements by the child model, which accepts an instance of
itself as it is; resources by the model ``resourceType`` names), and (2) checks that look
only at which fields are present and non-null: unknown keys are refused, required elements
must be there, a choice element (``value[x]``, ``scheduled[x]``) has at most one type, a list
of elements holds no null, ``resourceType`` matches. Putting a valid stand-in for a valid
value, or a stub for a valid child (one stub for a list of valid children), changes nothing
in (2), so: node valid <=> shape valid and every value valid and every child valid, and by
induction the Bundle is valid exactly when every shape, value and node in it is. This holds
only for models whose validation is exactly (1) and (2): each model is checked for that on
first use (configuration, validators, no field constraints besides the type); a node of any
other model is validated whole, keyed by its canonical JSON. What varies per patient (ids,
references, statuses, dates, texts) is values, checked on every call; what repeats (shapes)
hits the cache, for a patient never seen before too. The output must be JSON: a value of any
other Python type is refused. ``write_bundle(..., full_validation=True)`` validates with
``Bundle.model_validate`` instead; the tests check that both accept the same Bundles.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
    encode_basestring_ascii,
)
from types import UnionType
from typing import Any, Final, Union, cast, get_args, get_origin

import orjson
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension
from fhir_core.constraints import FHIR_TYPES_MAPS
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import CoreConfig, CoreSchema, SchemaValidator, core_schema

from cds import (
    AvoidedExercise,
    CheckIn,
    EvidenceRef,
    ExerciseChange,
    ExerciseDose,
    KnowledgeBase,
    Plan,
    PlanAlert,
    PlannedExercise,
    PreviousPlan,
)
from fhir_adapters._errors import OutputValidationError, operation_outcome
from fhir_adapters._terminology import (
    ALERT_SYSTEM,
    CANONICAL_BASE,
    CHANGE_DISPLAY,
    CHECK_IN_CODE,
    DATA_OPERATION,
    EXERCISE_SYSTEM,
    EXT_EVIDENCE,
    EXT_EXERCISE_CHANGE,
    EXT_EXERCISE_DOSE,
    EXT_FOLLOW_UP_STATE,
    EXT_SOURCE_RULE,
    KNOWLEDGE_BASE_BASE,
    PLAN_CHANGE_SYSTEM,
    PROVENANCE_PARTICIPANT_TYPE,
    SNOMED,
    UCUM,
)

__all__ = ["OutputValidationError", "write_bundle"]

_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, CANONICAL_BASE)

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
_ACTIVITY_KIND: Final = frozenset({
    "Appointment", "CommunicationRequest", "DeviceRequest", "MedicationRequest",
    "NutritionOrder", "Task", "ServiceRequest", "VisionPrescription",
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
            t = type(x)
            if t is str:
                x = x.strip()
                if x:
                    out[k] = x
            elif t in _PLAIN:
                out[k] = x
            elif x is not None:
                x = _prune(x)
                if x or not isinstance(x, str | list | dict):
                    out[k] = x
        return out
    if isinstance(v, list):
        items = []
        for x in v:
            t = type(x)
            if t is str:
                x = x.strip()
                if x:
                    items.append(x)
            elif t in _PLAIN:
                items.append(x)
            elif x is not None:
                x = _prune(x)
                if x or not isinstance(x, str | list | dict):
                    items.append(x)
        return items
    if isinstance(v, str):
        return v.strip()
    return v


_PLAIN: Final = frozenset({bool, int, float})


def _instant(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("Plan.as_of must be timezone-aware")
    return dt.isoformat()


_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}


def _json_default(v: Any) -> Any:
    """JSON for plan content (for the id digest): dataclasses as objects, instants as text."""
    names = _DATACLASS_FIELDS.get(type(v))
    if names is None:
        if not (is_dataclass(v) and not isinstance(v, type)):
            if isinstance(v, datetime):
                return v.isoformat()
            raise TypeError(f"cannot digest {type(v).__name__}")
        names = _DATACLASS_FIELDS[type(v)] = tuple(f.name for f in fields(v))
    return {n: getattr(v, n) for n in names}


def _encoder(**options: Any) -> Callable[[Any], str]:
    """``json.dumps(v, **options)`` for acyclic values, without building an encoder per call."""
    encoder = json.JSONEncoder(check_circular=False, **options)
    if c_make_encoder is None:  # no C accelerator
        return encoder.encode
    iterencode = c_make_encoder(
        None, encoder.default,
        encode_basestring_ascii if encoder.ensure_ascii else encode_basestring,
        None, encoder.key_separator, encoder.item_separator, encoder.sort_keys,
        encoder.skipkeys, encoder.allow_nan)

    def encode(v: Any) -> str:
        return "".join(iterencode(v, 0))

    return encode


# json.dumps(x, sort_keys=True): orders the facts; then the digested text
_FACT_ORDER: Final = _encoder(sort_keys=True)
_CANONICAL: Final = _encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                             allow_nan=False)
_DIGEST_TEXT: Final = _encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                               default=_json_default)


_ORJSON_DIGEST: Final = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                         | orjson.OPT_PASSTHROUGH_DATETIME)


def _digest_text(content: dict[str, object]) -> bytes:
    """Canonical JSON of the digest content, as UTF-8: by orjson (several times faster
    than json), which writes the same text as ``_DIGEST_TEXT`` except for floats below
    1e-4 in magnitude (``0.000025``, not ``2.5e-05``: still one text per value, so ids
    stay unique and deterministic). What orjson refuses (a lone surrogate) goes to json."""
    try:
        text = orjson.dumps(content, default=_json_default, option=_ORJSON_DIGEST)
    except TypeError:
        return _DIGEST_TEXT(content).encode("utf-8")
    return text


def _parameter_values(kb: KnowledgeBase) -> dict[str, object]:
    """Every parameter's value (overrides applied), by name: fixed once a knowledge base is
    loaded, so worked out once."""
    values = kb.derived_cache.get("digest-parameters")
    if values is None:
        values = kb.derived_cache["digest-parameters"] = {
            n: kb.parameter(n) for n in sorted(kb.parameters)}
    out: dict[str, object] = values
    return out


def _digest(plan: Plan, kb: KnowledgeBase, previous: PreviousPlan | None) -> str:
    content: dict[str, object] = {
        "kb": [plan.kb_id, plan.kb_version],
        "parameters": _parameter_values(kb),
        "as_of": _instant(plan.as_of),
        "subject": plan.subject,
        "facts": sorted(
            ([f.name, f.value, sorted(f.sources), f.preliminary] for f in plan.facts),
            key=_FACT_ORDER,
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
    if plan.replaces is not None or plan.changes or plan.check_in is not None:
        content["follow_up"] = [plan.replaces, plan.changes, plan.check_in]
    if previous is not None:
        content["previous"] = previous
    if len(plan.progress) > 2:  # earlier values (not in the facts) make a progress report
        from fhir_adapters._progress_fhir import progress_series

        if progress_series(plan):
            content["progress"] = plan.progress
    return hashlib.sha256(_digest_text(content)).hexdigest()


# a reference to a QuestionnaireResponse (relative or absolute): not a reasonReference in R4
_NOT_A_REASON: Final = re.compile(r"(^|/)QuestionnaireResponse/[^/]+(/_history/[^/]+)?$")


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
            "value": dose.hold_seconds, "unit": "s", "system": UCUM, "code": "s"}})
    if dose.tempo:
        subs.append({"url": "tempo", "valueString": dose.tempo})
    if dose.load:
        subs.append({"url": "load", "valueString": dose.load})
    if dose.pain_monitoring:
        subs.append({"url": "pain-monitoring", "valueString": dose.pain_monitoring})
    return {"url": EXT_EXERCISE_DOSE, "extension": subs}


def _change_extension(change: ExerciseChange, kb: KnowledgeBase) -> dict[str, Any]:
    display, _ = CHANGE_DISPLAY.get(change.kind, (change.kind, ""))
    subs: list[dict[str, Any]] = [
        {"url": "kind", "valueCoding": {"system": PLAN_CHANGE_SYSTEM, "code": change.kind,
                                        "display": display}}]
    if change.variable:
        subs.append({"url": "variable", "valueCode": change.variable})
    if change.previous_exercise_id:
        prev = kb.exercises.get(change.previous_exercise_id)
        subs.append({"url": "previous-exercise", "valueCoding": {
            "system": EXERCISE_SYSTEM, "code": change.previous_exercise_id,
            "display": prev.title if prev is not None else None}})
    if change.previous_dose is not None:
        d = change.previous_dose
        dose = [x for x in _dose_extension(d)["extension"] if x["url"] != "pain-monitoring"]
        dose += [{"url": "frequency", "valueInteger": d.frequency},
                 {"url": "period", "valueInteger": d.period},
                 {"url": "period-unit", "valueCode": d.period_unit}]
        subs.append({"url": "previous-dose", "extension": dose})
    subs.append({"url": "reason", "valueString": change.clinician_text})
    subs.append({"url": "patient-text", "valueString": change.patient_text})
    subs += [{"url": "rule", "valueString": r} for r in change.rule_ids]
    return {"url": EXT_EXERCISE_CHANGE, "extension": subs}


def _follow_up_state_extension(since: datetime, consecutive_bad: int) -> dict[str, Any]:
    return {"url": EXT_FOLLOW_UP_STATE, "extension": [
        {"url": "since", "valueDateTime": _instant(since)},
        {"url": "consecutive-bad", "valueInteger": consecutive_bad},
    ]}


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
    def __init__(self, plan: Plan, kb: KnowledgeBase, previous: PreviousPlan | None) -> None:
        self.plan = plan
        self.kb = kb
        self.previous = previous
        self.as_of = _instant(plan.as_of)
        self.digest = _digest(plan, kb, previous)
        self.holding = [a for a in plan.alerts if _holds(a)]
        self.held = bool(self.holding)
        self.avoid_ids = {a.exercise_id for a in plan.avoid}
        self.changes = {c.exercise_id: c for c in plan.changes}
        self.ids: dict[str, str] = {}
        # imported here: _progress_fhir builds on this module (and on _terminology, which
        # does too)
        from fhir_adapters._progress_fhir import progress_report

        self.progress = progress_report(plan, self.id("progress"), self.fact_coding)

    def id(self, role: str) -> str:
        rid = self.ids.get(role)
        if rid is None:
            rid = self.ids[role] = str(uuid.uuid5(_NAMESPACE, f"{self.digest}|{role}"))
        return rid

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

    def since(self, exercise_id: str) -> datetime:
        """When the exercise was first prescribed: as the revision says (``change.since``);
        else carried over from the previous plan while it stays the same exercise, and the
        as-of instant for a new one (also a swap or a harder/easier version)."""
        change = self.changes.get(exercise_id)
        if change is not None and change.since is not None:
            return change.since  # the revision carried it
        if change is not None and (change.kind in ("new", "swapped")
                                   or change.variable == "exercise"):
            return self.plan.as_of
        if self.previous is not None:
            old = change.previous_exercise_id if change is not None else None
            for px in self.previous.exercises:
                if px.exercise_id == (old or exercise_id):
                    return px.since or self.previous.created or self.plan.as_of
        return self.plan.as_of

    def change_parts(self, exercise_id: str) -> tuple[list[dict[str, Any]], list[str],
                                                        tuple[str, ...]]:
        """(extensions, description lines, sources) the exercise's change adds."""
        change = self.changes.get(exercise_id)
        if change is None:
            return [], [], ()
        lines = [f"What changed: {change.patient_text}",
                 f"Why it changed: {change.clinician_text}"]
        return [_change_extension(change, self.kb)], lines, change.sources

    def exercise_activity(self, ex: PlannedExercise) -> dict[str, Any]:
        p = self.plan
        on_hold = self.held or ex.status != "proposed"
        change_exts, change_lines, change_sources = self.change_parts(ex.exercise_id)
        change = self.changes.get(ex.exercise_id)
        text = [f"{ex.title}: {ex.dose.describe()}", *change_lines, f"How: {ex.instructions}",
                f"Why: {ex.rationale}", _trace_text(p, ex.rule_ids, ex.sources, ex.evidence)]
        if on_hold:
            text.insert(0, self.hold_reason() if self.held
                        else "On hold under the plan's safety policy.")
        d = ex.dose
        state = _follow_up_state_extension(self.since(ex.exercise_id),
                                           change.consecutive_bad if change else 0)
        detail: dict[str, Any] = {
            "extension": [_dose_extension(d), state, *change_exts,
                          *_trace_extensions(ex.rule_ids, ex.evidence)],
            "code": _exercise_code(ex.exercise_id, ex.title),
            "reasonReference": self.reasons(tuple(dict.fromkeys((*ex.sources, *change_sources)))),
            "status": "on-hold" if on_hold else "not-started",
            "statusReason": {"text": text[0]} if on_hold else None,
            "doNotPerform": False,
            "scheduledTiming": {"repeat": {
                "frequency": d.frequency, "period": d.period, "periodUnit": d.period_unit}},
            "description": "\n\n".join(text),
        }
        return {"detail": detail}

    def avoid_activity(self, av: AvoidedExercise) -> dict[str, Any]:
        change_exts, change_lines, change_sources = self.change_parts(av.exercise_id)
        text = [f"Do not perform: {av.title}. {av.reason}", *change_lines,
                _trace_text(self.plan, av.rule_ids, av.sources, av.evidence)]
        detail: dict[str, Any] = {
            "extension": [*change_exts, *_trace_extensions(av.rule_ids, av.evidence)],
            "code": _exercise_code(av.exercise_id, av.title),
            "reasonReference": self.reasons(tuple(dict.fromkeys((*av.sources, *change_sources)))),
            "status": "on-hold",
            "statusReason": {"text": f"Do not perform: {av.reason}"},
            "doNotPerform": True,
            "description": "\n\n".join(text),
        }
        return {"detail": detail}

    def stopped_changes(self) -> list[ExerciseChange]:
        """Stopped exercises that are neither in the plan nor on its avoid list."""
        shown = {ex.exercise_id for ex in self.plan.exercises} | self.avoid_ids
        return [c for c in self.plan.changes
                if c.kind == "stopped" and c.exercise_id not in shown]

    def stopped_activity(self, change: ExerciseChange) -> dict[str, Any]:
        """A previous exercise taken out: status ``stopped`` (it was started; now stop)."""
        ex = self.kb.exercises.get(change.exercise_id)
        title = ex.title if ex is not None else change.exercise_id
        dose = (f" (was: {change.previous_dose.describe()})"
                if change.previous_dose is not None else "")
        text = [f"Stop: {title}{dose}", f"What changed: {change.patient_text}",
                f"Why it changed: {change.clinician_text}",
                _trace_text(self.plan, change.rule_ids, change.sources, ())]
        detail: dict[str, Any] = {
            "extension": [_change_extension(change, self.kb),
                          *_rule_extensions(change.rule_ids)],
            "code": _exercise_code(change.exercise_id, title),
            "reasonReference": self.reasons(change.sources),
            "status": "stopped",
            "statusReason": {"text": f"Stopped: {change.clinician_text}"},
            "doNotPerform": False,
            "description": "\n\n".join(text),
        }
        return {"detail": detail}

    def check_in_activity(self, check_in: CheckIn) -> dict[str, Any]:
        """The proposed check-in: an Appointment-kind activity, not-started, in a window."""
        titles = [self.kb.exercises[x].title if x in self.kb.exercises else x
                  for x in check_in.exercise_ids]
        code, display, _ = CHECK_IN_CODE
        text = [f"{display}: between {_instant(check_in.start)} and "
                f"{_instant(check_in.end)}.", check_in.reason]
        if titles:
            text.append("About: " + "; ".join(titles) + ".")
        detail: dict[str, Any] = {
            "kind": "Appointment",
            "code": {"coding": [{"system": PLAN_CHANGE_SYSTEM, "code": code,
                                 "display": display}], "text": display},
            "status": "not-started",
            "scheduledPeriod": {"start": _instant(check_in.start),
                                "end": _instant(check_in.end)},
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
        activity += [self.stopped_activity(c) for c in self.stopped_changes()]
        activity += [self.avoid_activity(av) for av in p.avoid]
        if p.check_in is not None and not self.held:
            activity.append(self.check_in_activity(p.check_in))
        if self.held:
            top = min(
                (a.referral.priority for a in self.holding if a.referral is not None),
                key=lambda pr: list(_PRIORITY_WORDS).index(pr) if pr in _PRIORITY_WORDS else 9,
                default=None,
            )
            title = ("Exercise on hold: " + (f"{top} referral proposed" if top
                                              else "see alerts"))
        elif p.replaces is not None:
            title = "Revised exercise plan for low back pain"
        else:
            title = "Proposed exercise plan for low back pain"
        return {
            "resourceType": "CarePlan",
            "id": self.id("careplan"),
            "instantiatesUri": [
                f"{KNOWLEDGE_BASE_BASE}/{p.kb_id}|{p.kb_version}"],
            "replaces": [{"reference": p.replaces}] if p.replaces is not None else None,
            "status": "draft",
            "intent": "proposal",
            "title": title,
            "description": self.careplan_description(),
            "subject": {"reference": p.subject},
            "created": self.as_of,
            "supportingInfo": [
                {"reference": self.urn(f"detectedissue:{a.code}"), "display": a.display}
                for a in p.alerts
            ] + ([{"reference": self.urn("progress"), "display": "Progress across visits"}]
                 if self.progress is not None else [])
            # questionnaire answers behind an exercise: no reasonReference R4 allows
            + self.questionnaire_support(),
            "activity": activity,
            "note": [{"text": s} for s in p.safety_net],
        }

    def questionnaire_support(self) -> list[dict[str, Any]]:
        """References the CarePlan's exercises rest on that R4 allows in no reasonReference
        (QuestionnaireResponses), for ``CarePlan.supportingInfo``."""
        p = self.plan
        sources = {s for ex in p.exercises for s in ex.sources}
        sources.update(s for av in p.avoid for s in av.sources)
        return _refs(sorted(s for s in sources if s != p.subject and not self.is_reason(s)))

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
        if p.replaces is not None:
            lines.append(f"Revises {p.replaces}: " + ("; ".join(
                f"{self.exercise_title(c.exercise_id)} {c.kind}" for c in p.changes)
                or "no exercise changes") + ".")
        if p.check_in is not None and not self.held:
            lines.append(f"Check-in proposed between {_instant(p.check_in.start)} and "
                         f"{_instant(p.check_in.end)}.")
        missing = self.missing_facts()
        if missing:
            lines.append("Missing (not read as normal): "
                         + "; ".join(self.fact_label(m) for m, _ in missing) + ".")
        return "\n".join(lines)

    def exercise_title(self, exercise_id: str) -> str:
        ex = self.kb.exercises.get(exercise_id)
        return ex.title if ex is not None else exercise_id

    def reasons(self, sources: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
        """``reasonReference`` of a CarePlan activity or a ServiceRequest: R4 allows
        Condition, Observation, DiagnosticReport and DocumentReference there, so the
        Patient (the source of age and sex) is left out (it is the subject), and so is a
        QuestionnaireResponse (named in ``supportingInfo`` of the CarePlan or referral, and
        in the Provenance)."""
        return _refs([s for s in sources if self.is_reason(s)])

    def is_reason(self, source: str) -> bool:
        """Whether R4 allows ``source`` as a reasonReference (urn:uuid references, whose
        type is unknown here, are Observations or Conditions read by the reader)."""
        return source != self.plan.subject and not _NOT_A_REASON.search(source)

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
                {"system": SNOMED, "code": "3457005", "display": "Patient referral"}]}],
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
                *self.reasons(a.sources)],
            # the Patient (age, sex) and questionnaire answers are no reason R4 allows here
            "supportingInfo": _refs([s for s in a.sources if not self.is_reason(s)]) or None,
            "note": [{"text": f"{a.detail} {a.mitigation}"}],
            "patientInstruction": f"{_PRIORITY_WORDS.get(r.priority, r.priority)}: {r.to}.",
        }

    # DetectedIssue -------------------------------------------------------------------------

    def fact_label(self, name: str) -> str:
        d = self.kb.facts.get(name)
        desc = d.description if d else self.plan.fact_descriptions.get(name, name)
        return desc.split(" (")[0]

    def fact_coding(self, name: str) -> list[dict[str, Any]]:
        d = self.kb.facts.get(name)
        return ([{"system": d.coding.system, "code": d.coding.code, "display": d.coding.display}]
                if d is not None and d.coding is not None else [])

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
        # why a fact is missing, when the reader knows more than "not answered"
        read_as: dict[str, str] = {}
        for n in self.plan.answer_notes:
            for f in n.facts:
                read_as[f] = f"{read_as[f]} {n.text}" if f in read_as else n.text
        for name, rid in self.missing_facts():
            detail = read_as.get(name, details[rid])
            issues.append({
                "severity": "warning",
                "code": "required",
                "details": self.fact_concept(name),
                "diagnostics": f"{detail} Missing: {self.fact_label(name)} ({name}); "
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
                "system": DATA_OPERATION,
                "code": "CREATE", "display": "create"}]},
            "agent": [{
                "type": {"coding": [{
                    "system": PROVENANCE_PARTICIPANT_TYPE,
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

    def bundle(self, advice_only: bool = False) -> dict[str, Any]:
        p = self.plan
        resources: list[dict[str, Any]] = [self.careplan()]
        resources += [self.service_request(a) for a in p.alerts if a.referral is not None]
        resources += [self.detected_issue(a) for a in p.alerts]
        if self.progress is not None:
            resources.append(self.progress)
        if not advice_only:
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
#
# Node by node, shape (cached) and values (every call): see "Validation" in the module
# docstring for why this gives the verdict of Bundle.model_validate.

_PRIM, _PRIM_LIST, _CPLX, _CPLX_LIST, _POLY, _POLY_LIST = range(6)
_SCALARS: Final = frozenset({str, int, float, bool})
# stand-ins tried, in order, for a primitive type; the first one its R4B type accepts is used
_STAND_INS: Final[tuple[Any, ...]] = (
    "x", "2000-01-01T00:00:00Z", "2000-01-01", "00:00:00", "http://example.org",
    "urn:oid:1.2", "AAAA", "00000000-0000-4000-8000-000000000000",
    '<div xmlns="http://www.w3.org/1999/xhtml">x</div>', 1, True,
)
_NO_STAND_IN: Final = object()
_SHAPE_CACHE_SIZE: Final = 4096

# What R4B model validation does besides validating each field by its own type: it is split
# soundly only for models that do exactly this (checked per model, see _decomposable).
_MODEL_CONFIG: Final = {"extra": "forbid", "validate_assignment": True, "populate_by_name": True}


def _function(f: Any) -> Any:
    """The function behind a (class) method."""
    return getattr(f, "__func__", f)


_PRESENCE_VALIDATORS: Final = {
    name: _function(dec.func)
    for owner in (FHIRAbstractModel, FHIRPrimitiveExtension)
    for name, dec in owner.__pydantic_decorators__.model_validators.items()
}
_BASE_METHODS: Final = ("_validate_one_of_many", "_validate_required_primitive_elements")

Model = type[FHIRAbstractModel]


class _Leaf:
    """The validator an R4B model compiled for one primitive field (for its items, if the
    field is a list), taken from the model's own core schema, run over a batch of values; and
    a stand-in value it accepts (preferably one it keeps as the same Python type)."""

    __slots__ = ("batch", "stand_in")

    def __init__(self, schema: CoreSchema, config: CoreConfig | None) -> None:
        self.batch = SchemaValidator(core_schema.list_schema(schema), config)
        accepted: list[Any] = []
        for candidate in _STAND_INS:
            try:
                (out,) = self.batch.validate_python([candidate])
            except ValidationError:
                continue
            if out is not None:
                accepted.append(candidate)
                if type(out) is type(candidate):
                    accepted.insert(0, candidate)
                    break
        self.stand_in: Any = accepted[0] if accepted else _NO_STAND_IN


class _ShapeCache:
    """Shapes an R4B model has accepted, by exact encoding; bounded, first in first out.

    ``seen`` is read without the lock (a dict lookup is atomic); it is changed only under it.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.seen: dict[tuple[Model, tuple[Any, ...]], None] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, key: tuple[Model, tuple[Any, ...]]) -> None:
        with self._lock:
            self.seen[key] = None
            while len(self.seen) > self.maxsize:
                del self.seen[next(iter(self.seen))]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()


_SHAPES: Final = _ShapeCache(_SHAPE_CACHE_SIZE)
_SPECS: dict[Model, dict[Any, tuple[int, Any] | None] | None] = {}
_UNSEEN: Final[Any] = object()  # not yet in _SPECS / a spec
_FIELD_NAMES: dict[Model, dict[str, str]] = {}
_LEAVES: dict[Any, _Leaf] = {}
_POLY_CLASSES: dict[tuple[str, str], Model] = {}
_STUBS: dict[Model, FHIRAbstractModel] = {}


def _strip_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        args = tuple(a for a in get_args(annotation) if a is not type(None))
        return args[0] if len(args) == 1 else Union[args]  # noqa: UP007
    return annotation


def _is_fhir_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, FhirBase)


def _mentions_fhir_type(annotation: Any) -> bool:
    return _is_fhir_type(annotation) or any(_mentions_fhir_type(a) for a in get_args(annotation))


def _model_fields_schema(model: Model) -> tuple[dict[str, Any], CoreConfig | None] | None:
    """The compiled schema of each field of ``model`` (by field name), and the model's config
    (less its ``title``, which only names the model in error messages)."""
    s: Any = model.__pydantic_core_schema__
    config: CoreConfig | None = None
    while isinstance(s, dict) and s.get("type") != "model-fields":
        if s.get("type") == "model" and s.get("config") is not None:
            config = cast(CoreConfig, {k: v for k, v in s["config"].items() if k != "title"})
        s = s.get("schema")
    return (s["fields"], config) if isinstance(s, dict) else None


def _pure(schema: Any) -> bool:
    """True if ``schema`` is plain data (so equal schemas validate alike) and self-contained."""
    if isinstance(schema, dict):
        return (schema.get("type") != "definition-ref" and "ref" not in schema
                and all(_pure(v) for v in schema.values()))
    if isinstance(schema, list | tuple):
        return all(_pure(v) for v in schema)
    return schema is None or type(schema) in (str, int, float, bool)


def _unwrap(schema: Any, *kinds: str) -> Any:
    """``schema`` without outer wrappers of the given kinds that add nothing else."""
    while isinstance(schema, dict) and schema.get("type") in kinds and (
        set(schema) <= {"type", "schema", "default"}
        and (schema["type"] != "default" or schema.get("default") is None)
    ):
        schema = schema["schema"]
    return schema


def _leaf(model: Model, name: str, many: bool) -> _Leaf | None:
    """The batch validator of a primitive field of ``model`` (its items if ``many``)."""
    found = _model_fields_schema(model)
    if found is None:
        return None
    fields_schema, config = found
    schema = _unwrap(fields_schema[name]["schema"], "default", "nullable")
    if many:
        if not (isinstance(schema, dict) and schema.get("type") == "list"
                and set(schema) == {"type", "items_schema"}):
            return None  # a list with constraints of its own: kept verbatim
        schema = schema["items_schema"]
    key: Any = (repr(schema), repr(config)) if _pure(schema) and _pure(config) else (
        model, name)
    leaf = _LEAVES.get(key)
    if leaf is None:
        try:
            leaf = _Leaf(schema, config)
        except Exception:  # a schema that does not stand alone: kept verbatim
            return None
        _LEAVES[key] = leaf
    return leaf if leaf.stand_in is not _NO_STAND_IN else None


def _decomposable(model: Model) -> bool:
    """True if ``model`` validates a JSON object by validating each field with its own type
    (no field sees another) plus checks that look only at which fields are present: extra keys
    forbidden, required elements, one value per choice element, no null in a list of elements.
    """
    d = model.__pydantic_decorators__
    return (
        dict(model.model_config) == _MODEL_CONFIG
        and not (d.field_validators or d.validators or d.root_validators)
        and all(_PRESENCE_VALIDATORS.get(name) is _function(v.func)
                for name, v in d.model_validators.items())
        and model.__init__ is FHIRAbstractModel.__init__
        and model.model_post_init is BaseModel.model_post_init
        and all(getattr(model, m) is getattr(FHIRAbstractModel, m) for m in _BASE_METHODS)
        and all(not fi.metadata for fi in model.model_fields.values())
        and all(f.alias in (None, name) or f.alias not in model.model_fields
                for name, f in model.model_fields.items())  # a JSON key names one field
    )


def _field_spec(model: Model, name: str, field: FieldInfo) -> tuple[int, Any] | None:
    """How a field's value is split off its node, or None: kept in the shape verbatim."""
    annotation, many = _strip_none(field.annotation), False
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        annotation, many = _strip_none(item), True
    if _is_fhir_type(annotation):
        if issubclass(annotation, FhirElementOrResourceBase):
            return (_POLY_LIST if many else _POLY, annotation._prefix)
        return (_CPLX_LIST if many else _CPLX, annotation.get_model_klass())
    if _mentions_fhir_type(annotation):
        return None
    leaf = _leaf(model, name, many)
    return None if leaf is None else (_PRIM_LIST if many else _PRIM, leaf)


def _spec(model: Model) -> dict[Any, tuple[int, Any] | None] | None:
    """How ``model``'s fields are split off, by JSON key (alias or field name; filled in on
    first use, see _entry), or None if ``model`` is validated whole."""
    if model in _SPECS:
        return _SPECS[model]
    spec: dict[Any, tuple[int, Any] | None] | None = None
    if _decomposable(model):
        spec = {}
        _FIELD_NAMES[model] = {
            **{name: name for name in model.model_fields},
            **{f.alias: name for name, f in model.model_fields.items() if f.alias},
        }
    _SPECS[model] = spec
    return spec


def _entry(model: Model, spec: dict[Any, tuple[int, Any] | None], key: Any) -> Any:
    """``spec[key]``, worked out on first use: None for a key kept verbatim. Only the model's
    own keys are remembered (so data cannot grow ``spec``)."""
    name = _FIELD_NAMES[model].get(key) if type(key) is str else None
    if name is None:
        return None
    entry = spec[key] = _field_spec(model, name, model.model_fields[name])
    return entry


def _poly_class(prefix: str, value: Any) -> Model | None:
    """The model a Resource-typed field validates ``value`` with (as fhir.resources picks it)."""
    if type(value) is not dict:
        return None
    rt = value.get("resourceType")
    if type(rt) is not str:
        return None
    cls = _POLY_CLASSES.get((prefix, rt))
    if cls is None:
        path = FHIR_TYPES_MAPS.get(prefix + rt + "Type")
        if path is None:
            return None
        module, _, name = path.rpartition(".")
        cls = _POLY_CLASSES[(prefix, rt)] = getattr(importlib.import_module(module), name)
    return cls


def _stub(model: Model) -> FHIRAbstractModel:
    """An instance of ``model``; a field of that element type accepts it as it is."""
    stub = _STUBS.get(model)
    if stub is None:
        stub = _STUBS[model] = model.model_construct()
    return stub


def _json_native(v: Any) -> bool:
    t = type(v)
    if t is dict:
        return all(type(k) is str and _json_native(x) for k, x in v.items())
    if t is list:
        return all(_json_native(x) for x in v)
    return v is None or t in _SCALARS


def _canonical(v: Any) -> str:
    """Exact canonical JSON of a JSON-native value (anything else is not output)."""
    if not _json_native(v):
        raise TypeError(f"not a JSON value: {type(v).__name__}")
    return _CANONICAL(v)


def _shape(model: Model, parts: tuple[Any, ...]) -> Any:
    """The JSON object a shape encoding stands for (see _split)."""
    spec = _spec(model)
    if spec is None:
        (whole,) = parts
        return json.loads(whole)
    out: dict[Any, Any] = {}
    for p in parts:
        if type(p) is str:
            kind, arg = cast(tuple[int, Any], spec[p])  # a split-off field
            out[p] = (arg.stand_in if kind == _PRIM else [arg.stand_in] if kind == _PRIM_LIST
                      else _stub(arg) if kind == _CPLX else [_stub(arg)])
        else:
            key, what = p
            out[key] = (json.loads(what) if type(what) is str
                        else [_stub(c) for c in what] if type(what) is tuple else _stub(what))
    return out


def _split(node: dict[str, Any], model: Model, leaves: defaultdict[_Leaf, list[Any]]) -> None:
    """Check ``node`` as ``model`` would: its shape against the cache (validated on a miss),
    its primitive values into ``leaves`` (validated by the caller), its children recursively.

    The shape encoding is a tuple with, per key in order: the key itself (a field whose value
    was split off: a primitive replaced by its type's stand-in, an element by a stub, a list
    of them by a one-item list), ``(key, model)`` / ``(key, (model, ...))`` (a Resource / list
    of Resources replaced by stubs of those models), or ``(key, canonical JSON)`` (verbatim).
    A model validated whole is encoded as ``(canonical JSON,)``.
    """
    spec = _SPECS[model] if model in _SPECS else _spec(model)
    parts: list[Any]
    if spec is None:
        parts = [_canonical(node)]
    else:
        parts = []
        for k, v in node.items():
            f = spec[k] if k in spec else _entry(model, spec, k)
            if f is not None:
                kind, arg = f
                t = type(v)
                if kind == _PRIM and t in _SCALARS:
                    parts.append(k)
                    leaves[arg].append(v)
                    continue
                if kind == _CPLX and t is dict:
                    parts.append(k)
                    _split(v, arg, leaves)
                    continue
                if kind == _CPLX_LIST and t is list and v and all(type(x) is dict for x in v):
                    parts.append(k)
                    for x in v:
                        _split(x, arg, leaves)
                    continue
                if kind == _PRIM_LIST and t is list and v and all(
                        type(x) in _SCALARS for x in v):
                    parts.append(k)
                    leaves[arg].extend(v)
                    continue
                if kind == _POLY:
                    cls = _poly_class(arg, v)
                    if cls is not None:
                        parts.append((k, cls))
                        _split(v, cls, leaves)
                        continue
                if kind == _POLY_LIST and t is list and v:
                    classes = [_poly_class(arg, x) for x in v]
                    if None not in classes:
                        parts.append((k, tuple(dict.fromkeys(classes))))
                        for x, cls in zip(v, classes, strict=True):
                            _split(x, cls, leaves)  # type: ignore[arg-type]
                        continue
            parts.append((k, _canonical(v)))  # anything else: verbatim
    key = (model, tuple(parts))
    if key not in _SHAPES.seen:
        model.model_validate(_shape(model, key[1]))
        _SHAPES.add(key)


def _poly_class_of(prefix: str, value: dict[str, Any]) -> Model | None:
    """``_poly_class`` of ``value`` as ``_prune`` will leave it (resourceType stripped)."""
    rt = value.get("resourceType")
    if type(rt) is not str:
        return None
    stripped = rt.strip()
    return _poly_class(prefix, value if stripped == rt else {"resourceType": stripped})


def _pruned_split(node: dict[str, Any], model: Model,
                  leaves: defaultdict[_Leaf, list[Any]]) -> dict[str, Any]:
    """``_prune(node)``, checked as ``_split`` checks it, in one walk instead of two (the
    write_bundle path). Returns the pruned node; ``{}`` (nothing checked) if it prunes away.

    A child is pruned before its key is kept, so the shapes and leaves are exactly those
    of the pruned tree. Where a list is not all objects, or a Resource's type is unknown,
    the value is pruned whole and kept verbatim, as ``_split`` would have it."""
    spec = _SPECS.get(model, _UNSEEN)
    if spec is _UNSEEN:
        spec = _spec(model)
    if spec is None:
        whole = _prune(node)
        if whole:
            _check_shape(model, (_canonical(whole),))
        return cast(dict[str, Any], whole)
    out: dict[str, Any] = {}
    parts: list[Any] = []
    for k, v in node.items():
        t = type(v)
        f = spec.get(k, _UNSEEN)
        if f is _UNSEEN:
            f = _entry(model, spec, k)
        if t is str:
            v = v.strip()
            if not v:
                continue
            if f is not None and f[0] == _PRIM:  # the commonest node: a string primitive
                out[k] = v
                parts.append(k)
                leaves[f[1]].append(v)
                continue
        elif v is None:
            continue
        if f is not None:
            kind, arg = f
            if t is dict:
                if kind == _CPLX:
                    child = _pruned_split(v, arg, leaves)
                    if child:
                        out[k] = child
                        parts.append(k)
                    continue
                if kind == _POLY:
                    cls = _poly_class_of(arg, v)
                    if cls is not None:
                        child = _pruned_split(v, cls, leaves)
                        if child:
                            out[k] = child
                            parts.append((k, cls))
                        continue
            elif t is list:
                if kind == _CPLX_LIST and all(type(x) is dict or x is None for x in v):
                    items = [c for x in v if x is not None
                             if (c := _pruned_split(x, arg, leaves))]
                    if items:
                        out[k] = items
                        parts.append(k)
                    continue
                if kind == _POLY_LIST and all(type(x) is dict or x is None for x in v):
                    present = [x for x in v if x is not None]
                    classes = [_poly_class_of(arg, x) for x in present]
                    if None not in classes:
                        items, kept = [], []
                        for x, cls in zip(present, classes, strict=True):
                            c = _pruned_split(x, cls, leaves)  # type: ignore[arg-type]
                            if c:
                                items.append(c)
                                kept.append(cls)
                        if items:
                            out[k] = items
                            parts.append((k, tuple(dict.fromkeys(kept))))
                        continue
                if kind == _PRIM_LIST:
                    pv = _prune(v)
                    if pv and all(type(x) in _SCALARS for x in pv):
                        out[k] = pv
                        parts.append(k)
                        leaves[arg].extend(pv)
                        continue
                    v, t = pv, list  # verbatim below (already pruned)
            elif kind == _PRIM and t in _SCALARS:
                out[k] = v
                parts.append(k)
                leaves[arg].append(v)
                continue
        if t is dict or t is list:  # anything else: pruned, verbatim
            v = _prune(v)
            if not v:
                continue
        out[k] = v
        parts.append((k, _canonical(v)))
    if out:
        _check_shape(model, tuple(parts))
    return out


def _check_shape(model: Model, parts: tuple[Any, ...]) -> None:
    key = (model, parts)
    if key not in _SHAPES.seen:
        model.model_validate(_shape(model, parts))
        _SHAPES.add(key)


def _prune_check_fast(raw: dict[str, Any]) -> dict[str, Any]:
    """``_prune(raw)``, which ``_check_fast`` accepts (raises otherwise), in one walk."""
    leaves: defaultdict[_Leaf, list[Any]] = defaultdict(list)
    bundle = _pruned_split(raw, Bundle, leaves)
    for leaf, values in leaves.items():
        if None in leaf.batch.validate_python(values):
            raise ValueError("a primitive value validated to null")
    return bundle


def _check_fast(bundle: dict[str, Any]) -> None:
    """Raise (any exception) unless ``Bundle.model_validate(bundle)`` would accept the JSON
    value ``bundle``: every node's shape (cached) and every primitive value (each call)."""
    if type(bundle) is not dict:
        raise TypeError("the output Bundle is not a JSON object")
    leaves: defaultdict[_Leaf, list[Any]] = defaultdict(list)
    _split(bundle, Bundle, leaves)
    for leaf, values in leaves.items():
        if None in leaf.batch.validate_python(values):
            raise ValueError("a primitive value validated to null")


def _validate_fast(bundle: dict[str, Any]) -> None:
    """Validate ``bundle`` as ``Bundle.model_validate`` would, node by node (see _split)."""
    try:
        _check_fast(bundle)
    except Exception as e:  # any failure rejects; the whole-Bundle models say where
        try:
            Bundle.model_validate(bundle)
        except Exception as full:
            raise OutputValidationError(f"output Bundle is not valid FHIR R4: {full}") from e
        raise OutputValidationError(f"output Bundle is not valid FHIR R4: {e!r}") from e
    _check_rules(bundle)


def _validate_full(bundle: dict[str, Any]) -> None:
    """Validate ``bundle`` with ``Bundle.model_validate`` (which validates every entry's
    resource with its own R4B model), as a whole."""
    try:
        Bundle.model_validate(bundle)
    except Exception as e:
        raise OutputValidationError(f"output Bundle is not valid FHIR R4: {e}") from e
    _check_rules(bundle)


def _check_rules(bundle: dict[str, Any]) -> None:
    bad = _check_bindings(bundle) + _check_invariants(bundle)
    if bad:
        raise OutputValidationError("output Bundle is not valid FHIR R4: " + "; ".join(bad))


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
                if "kind" in d:
                    need(d["kind"] in _ACTIVITY_KIND, f"{at}.activity[{j}].detail.kind",
                         d["kind"])
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


def _check_invariants(bundle: dict[str, Any]) -> list[str]:
    """FHIR invariants the R4B models do not check, for what this module writes."""
    bad: list[str] = []
    urls: set[Any] = set()
    for i, entry in enumerate(bundle.get("entry", [])):
        r = entry.get("resource", {})
        at = f"Bundle.entry[{i}]"
        url = entry.get("fullUrl")
        if url in urls:  # bdl-7
            bad.append(f"{at}.fullUrl: {url!r} is not unique in the Bundle")
        urls.add(url)
        if url != f"urn:uuid:{r.get('id')}":
            bad.append(f"{at}.fullUrl: {url!r} is not urn:uuid: and the resource id")
        if r.get("resourceType") == "CarePlan":
            for j, act in enumerate(r.get("activity", [])):
                # cpl-3 (reference or detail, not both); this module always gives one
                if ("reference" in act) == ("detail" in act):
                    bad.append(f"{at}.resource.activity[{j}]: needs exactly one of reference "
                               "and detail")
    return bad


# --- public ---------------------------------------------------------------------------------


def write_bundle(
    plan: Plan, kb: KnowledgeBase, *, previous: PreviousPlan | None = None,
    full_validation: bool = False, advice_only: bool = False,
) -> dict[str, Any]:
    """The output Bundle (type ``collection``) for one plan, as a JSON-ready dict.

    ``kb`` is the knowledge base that produced the plan (for fact codes and parameters).
    ``previous`` is the plan a follow-up revises (``PatientFacts.follow_up.previous``): the
    ``since`` of exercises that stay the same is carried over from it (without it, ``since``
    is the as-of instant).
    Deterministic: the same plan gives a byte-identical ``json.dumps(..., sort_keys=True)``.
    Raises ``ValueError`` if ``plan.as_of`` has no time zone and ``OutputValidationError`` if
    the result is not valid FHIR R4 (a bug). ``full_validation`` (internal, for cross-checks)
    validates the Bundle with ``Bundle.model_validate`` as a whole instead of shape by shape;
    both accept exactly the same Bundles. ``advice_only`` (the CDS Hooks service, whose
    cards carry only these) leaves out the OperationOutcome and the Provenance: the same
    Bundle id and the same CarePlan, ServiceRequests and DetectedIssues, byte for byte.
    """
    raw = _Writer(plan, kb, previous).bundle(advice_only)
    if full_validation:
        bundle: dict[str, Any] = _prune(raw)
        _validate_full(bundle)
        return bundle
    try:
        bundle = _prune_check_fast(raw)
    except Exception:  # _validate_fast says why (or, if the fast check was wrong, accepts)
        bundle = _prune(raw)
        _validate_fast(bundle)
        return bundle
    _check_rules(bundle)
    return bundle
