"""The resource writer: plan -> the output FHIR R4 Bundle (docs/integrators/output.md).

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
Every Bundle returned has been pruned (no element is ever null, ``""``, ``[]`` or ``{}``) and
accepted by the output check, ``fhir_adapters._output_check.checked_bundle``: the verdict
of the ``fhir.resources.R4B`` models on the whole Bundle plus the required bindings and
invariants they do not check (that module says how and why it is fast). Any failure raises
``OutputValidationError``, a bug: unvalidated output is never returned.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import orjson

from cds import (
    AvoidedExercise,
    CheckIn,
    EvidenceRef,
    ExerciseChange,
    ExerciseDose,
    Fact,
    KnowledgeBase,
    Plan,
    PlanAlert,
    PlannedExercise,
    PreviousPlan,
)
from fhir_adapters._errors import OutputValidationError, operation_outcome
from fhir_adapters._json_text import encoder
from fhir_adapters._output_check import checked_bundle
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

if TYPE_CHECKING:
    from cds.authoring import DoseSpec

__all__ = ["OutputValidationError", "dose_extension", "written_bundle"]

_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, CANONICAL_BASE)
# SHA-1 of the namespace's bytes, the common start of every resource id's hash (uuid5)
_NAMESPACE_SHA1: Final = hashlib.sha1(_NAMESPACE.bytes, usedforsecurity=False)

_HOLDING_PRIORITIES: Final = frozenset({"stat", "asap", "urgent"})
_SEVERITY: Final = {"emergency": "high", "urgent": "high", "caution": "moderate",
                    "information": "low"}
_PRIORITY_WORDS: Final = {
    "stat": "Emergency, same day",
    "asap": "Same-day urgent assessment",
    "urgent": "Urgent assessment, within about two weeks",
    "routine": "Routine referral",
}

def _software_version() -> str:
    try:
        return version("movement-cds")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0+source"


_SOFTWARE: Final = f"movement-cds {_software_version()}"


# --- small helpers --------------------------------------------------------------------------


def _instant(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("Plan.as_of must be timezone-aware")
    return dt.isoformat()


_DATACLASS_FIELDS: dict[type, tuple[tuple[str, ...], Any]] = {}


def _json_default(v: Any) -> Any:
    """JSON for plan content (for the id digest): dataclasses as objects, instants as text."""
    known = _DATACLASS_FIELDS.get(type(v))
    if known is None:
        if not (is_dataclass(v) and not isinstance(v, type)):
            if isinstance(v, datetime):
                return v.isoformat()
            raise TypeError(f"cannot digest {type(v).__name__}")
        names = tuple(f.name for f in fields(v))
        # attrgetter of several names gives a tuple; of one (or none) not: wrap those
        getter = (attrgetter(*names) if len(names) > 1
                  else (lambda x, n=names: tuple(getattr(x, m) for m in n)))
        known = _DATACLASS_FIELDS[type(v)] = (names, getter)
    return dict(zip(known[0], known[1](v), strict=True))


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_NAMESPACE, name))`` without the UUID object (the same text: RFC
    4122 version 5, variant bits set; tests/test_outbound_speed.py checks them equal)."""
    h = _NAMESPACE_SHA1.copy()
    h.update(name.encode("utf-8"))
    b = bytearray(h.digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _sorted_facts(facts: Iterable[Fact]) -> list[list[Any]]:
    """A plan's facts as ``[name, value, sorted sources, preliminary]``, in the order of
    their ``json.dumps(..., sort_keys=True)`` text. That text begins with ``["``, the name
    as JSON (``encode_basestring_ascii``) and ``"``; JSON-escaped names never hold a bare
    ``"``, so distinct names are ordered by their JSON text alone and the rest of the row
    is encoded only when two rows share a name (tests/test_outbound_speed.py checks both
    orders equal on random facts)."""
    rows: list[list[Any]] = [[f.name, f.value, sorted(f.sources), f.preliminary]
                             for f in facts]
    names = {r[0] for r in rows if type(r[0]) is str}
    if len(names) == len(rows):
        rows.sort(key=lambda r: encode_basestring_ascii(r[0]))
        return rows
    return sorted(rows, key=_FACT_ORDER)


# json.dumps(x, sort_keys=True): orders the facts; then the digested text
_FACT_ORDER: Final = encoder(sort_keys=True)
_DIGEST_TEXT: Final = encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              default=_json_default)


# dataclasses and instants by orjson itself: a dataclass as an object of its fields in the
# order they are declared (not sorted: one text per content all the same), an instant as
# RFC 3339 (``isoformat``'s text for the aware instants of a plan). orjson leaves out a
# field whose name starts with "_": no dataclass a plan holds has one
# (tests/test_outbound_speed.py::test_the_digest_sees_every_field_of_the_plan)
_ORJSON_DIGEST: Final = orjson.OPT_SORT_KEYS


def _digest_text(content: dict[str, object]) -> bytes:
    """Canonical JSON of the digest content, as UTF-8, by orjson: one text per content, so
    ids are unique and deterministic (for one version of this library: the text is not
    ``json``'s, and changed when orjson came to write the dataclasses itself). What orjson
    refuses (a lone surrogate) goes to json (``_DIGEST_TEXT``)."""
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
        "facts": _sorted_facts(plan.facts),
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


def dose_extension(dose: DoseSpec | ExerciseDose, *, fold_space: bool = False
                   ) -> dict[str, Any]:
    """The ``exercise-dose`` extension (how much) of a plan's dose, or of a catalog dose
    (``fold_space``: the catalog's texts with their line breaks folded to single spaces)."""
    subs: list[dict[str, Any]] = []
    if dose.sets is not None:
        subs.append({"url": "sets", "valueInteger": dose.sets})
    if dose.repetitions is not None:
        subs.append({"url": "repetitions", "valueInteger": dose.repetitions})
    if dose.hold_seconds is not None:
        subs.append({"url": "hold-seconds", "valueQuantity": {
            "value": dose.hold_seconds, "unit": "s", "system": UCUM, "code": "s"}})
    for key, v in (("tempo", dose.tempo), ("load", dose.load),
                   ("pain-monitoring", dose.pain_monitoring)):
        if v:
            subs.append({"url": key, "valueString": " ".join(str(v).split()) if fold_space
                         else v})
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
        dose = [x for x in dose_extension(d)["extension"] if x["url"] != "pain-monitoring"]
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
        # imported here: _progress_fhir builds on this module (its _instant)
        from fhir_adapters._progress_fhir import progress_report

        self.progress = progress_report(plan, self.id("progress"), self.fact_coding)

    def id(self, role: str) -> str:
        rid = self.ids.get(role)
        if rid is None:
            rid = self.ids[role] = _uuid5(f"{self.digest}|{role}")
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
            "extension": [dose_extension(d), state, *change_exts,
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


# --- public ---------------------------------------------------------------------------------


def written_bundle(plan: Plan, kb: KnowledgeBase, previous: PreviousPlan | None,
                   full_validation: bool, advice_only: bool) -> dict[str, Any]:
    """``write_bundle`` (``_bundles.py``, which documents it)."""
    return checked_bundle(_Writer(plan, kb, previous).bundle(advice_only),
                          full_validation=full_validation)
