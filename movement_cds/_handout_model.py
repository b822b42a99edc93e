"""What the patient handout says, read from an output Bundle of this project.

The handout is made from the output Bundle (not from the ``Plan`` object), so that the same
page comes from ``movement-cds handout`` on an input Bundle (evaluated first), on an output
Bundle saved earlier, and from the CDS Hooks service's plan card. Only patient material is
read: exercise codes, doses, statuses, the plain-words change text, the check-in window and
whether a referral is urgent. Rule ids, evidence ids and Observation references are never
read, so they cannot reach the page.

The exercise text (how to do it, what you should feel, when to stop) is the knowledge base's
``instructions``, split into sentences; the pain thresholds are the knowledge base's
``follow-up-pain-safe-max`` and ``follow-up-pain-acceptable-max`` parameters (the numbers
the follow-up rules use on the patient's answers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds import InputIssue, KnowledgeBase, alert_holds_exercise
from fhir_adapters import (
    ALERT_SYSTEM,
    EXERCISE_SYSTEM,
    EXT_EXERCISE_CHANGE,
    EXT_EXERCISE_DOSE,
    EXT_SOURCE_RULE,
    KNOWLEDGE_BASE_BASE,
    InvalidBundleError,
)

__all__ = ["HandoutDose", "HandoutExercise", "HandoutPlan", "read_output_bundle"]

_DOING = ("not-started", "scheduled", "in-progress")


@dataclass(frozen=True)
class HandoutDose:
    sets: int | None
    repetitions: int | None
    hold_seconds: int | None
    tempo: str | None
    load: str | None
    frequency: int
    period: int
    period_unit: str  # "d" | "wk"


@dataclass(frozen=True)
class HandoutExercise:
    exercise_id: str
    title: str
    how: str
    feel: str
    stop: str
    dose: HandoutDose | None
    change: str | None  # what changed since the last plan, in plain words


@dataclass(frozen=True)
class HandoutPlan:
    created: datetime | None
    exercises: tuple[HandoutExercise, ...]
    held: bool  # a safety rule holds all exercise
    emergency: bool  # a same-day (stat/asap) referral
    stopped: tuple[str, ...]  # titles of exercises to stop
    avoid: tuple[str, ...]  # titles of exercises not to do
    check_in: tuple[datetime, datetime] | None
    pain_safe_max: int | None  # None: the knowledge base has no pain-monitoring thresholds
    pain_acceptable_max: int | None
    revised: bool
    pain_text: str | None = None  # the plan's own pain guidance (the doses' text)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s.strip()]


def split_instructions(text: str) -> tuple[str, str, str]:
    """(how, feel, stop): the sentences of an exercise's instructions that say what you
    should feel and when to stop, and the rest."""
    how, feel, stop = [], [], []
    for s in _sentences(text):
        low = s.lower()
        if "you should feel" in low or low.startswith("you should "):
            feel.append(s)
        elif low.startswith("stop") or "; stop" in low:
            stop.append(s)
        else:
            how.append(s)
    return " ".join(how), " ".join(feel), " ".join(stop)


def _int(ext: dict[str, Any], key: str) -> int | None:
    if "valueInteger" in ext:
        return int(ext["valueInteger"])
    if "valueQuantity" in ext:
        return int(ext["valueQuantity"]["value"])
    return None


def _dose(detail: dict[str, Any]) -> HandoutDose | None:
    parts: dict[str, Any] = {}
    for ext in detail.get("extension", []):
        if ext.get("url") == EXT_EXERCISE_DOSE:
            for sub in ext.get("extension", []):  # pain-monitoring: see _pain_text
                parts[sub["url"]] = (_int(sub, sub["url"]) if sub["url"] in
                                     ("sets", "repetitions", "hold-seconds")
                                     else sub.get("valueString"))
    repeat = detail.get("scheduledTiming", {}).get("repeat", {})
    if not parts or "frequency" not in repeat:
        return None
    return HandoutDose(parts.get("sets"), parts.get("repetitions"), parts.get("hold-seconds"),
                       parts.get("tempo"), parts.get("load"), int(repeat["frequency"]),
                       int(repeat.get("period", 1)), str(repeat.get("periodUnit", "d")))


def _pain_text(activities: list[dict[str, Any]]) -> str | None:
    for activity in activities:
        for ext in (activity.get("detail") or {}).get("extension", []):
            if ext.get("url") == EXT_EXERCISE_DOSE:
                for sub in ext.get("extension", []):
                    if sub.get("url") == "pain-monitoring" and sub.get("valueString"):
                        return str(sub["valueString"])
    return None


def _threshold(kb: KnowledgeBase, name: str) -> int | None:
    return int(kb.parameter(name)) if name in kb.parameters else None


def _change_text(detail: dict[str, Any]) -> str | None:
    for ext in detail.get("extension", []):
        if ext.get("url") == EXT_EXERCISE_CHANGE:
            for sub in ext.get("extension", []):
                if sub.get("url") == "patient-text":
                    return str(sub["valueString"])
    return None


def _code(detail: dict[str, Any]) -> str | None:
    for c in detail.get("code", {}).get("coding", []):
        if c.get("system") == EXERCISE_SYSTEM:
            return str(c["code"])
    return None


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", [])
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def is_output_bundle(bundle: dict[str, Any]) -> bool:
    """An output Bundle of this project: a CarePlan from one of its knowledge bases and no
    Patient (every input Bundle has one)."""
    found = _resources(bundle)
    return (not any(r.get("resourceType") == "Patient" for r in found)
            and _our_careplan(found) is not None)


def _our_careplan(found: list[dict[str, Any]]) -> dict[str, Any] | None:
    for r in found:
        if r.get("resourceType") == "CarePlan" and any(
                str(u).startswith(KNOWLEDGE_BASE_BASE) for u in r.get("instantiatesUri", [])):
            return r
    return None


def _exercise(kb: KnowledgeBase, code: str, detail: dict[str, Any]) -> HandoutExercise:
    entry = kb.exercises.get(code)
    title = entry.title if entry else str(detail.get("code", {}).get("text", code))
    how, feel, stop = split_instructions(entry.instructions if entry else "")
    return HandoutExercise(code, title, how, feel, stop, _dose(detail), _change_text(detail))


def read_output_bundle(bundle: dict[str, Any], kb: KnowledgeBase) -> HandoutPlan:
    """The handout's content from an output Bundle (``InvalidBundleError`` when it holds no
    CarePlan of this project)."""
    found = _resources(bundle)
    plan = _our_careplan(found)
    if plan is None:
        raise InvalidBundleError([InputIssue(
            "error", "not-found", "no CarePlan made by movement-cds in the Bundle: a handout "
            "needs an output Bundle of `movement-cds evaluate` (or an input Bundle with "
            "--as-of)", "Bundle.entry")])
    todo: list[HandoutExercise] = []
    stopped, avoid, held = [], [], False
    check_in: tuple[datetime, datetime] | None = None
    for activity in plan.get("activity", []):
        detail = activity.get("detail") or {}
        code, status = _code(detail), detail.get("status")
        if code is None:
            period = detail.get("scheduledPeriod") or {}
            start, end = _when(period.get("start")), _when(period.get("end"))
            if start and end:
                check_in = (start, end)
            continue
        ex = _exercise(kb, code, detail)
        if detail.get("doNotPerform"):
            avoid.append(ex.title)
        elif status == "on-hold":
            held = True
        elif status in _DOING:
            todo.append(ex)
        else:
            stopped.append(ex.title)
    emergency = any(r.get("resourceType") == "ServiceRequest"
                    and r.get("priority") in ("stat", "asap") for r in found)
    # a plan with no exercise to put on hold is held too (a cauda equina "yes" with no
    # exercise recommended): an alert in the Bundle that holds exercise says so
    held = held or _an_alert_holds_exercise(kb, found)
    return HandoutPlan(
        created=_when(plan.get("created")), exercises=() if held else tuple(todo), held=held,
        emergency=emergency, stopped=tuple(stopped), avoid=tuple(avoid),
        check_in=None if held else check_in,
        pain_safe_max=_threshold(kb, "follow-up-pain-safe-max"),
        pain_acceptable_max=_threshold(kb, "follow-up-pain-acceptable-max"),
        revised=bool(plan.get("replaces")), pain_text=_pain_text(plan.get("activity", [])))


def _an_alert_holds_exercise(kb: KnowledgeBase, found: list[dict[str, Any]]) -> bool:
    """Whether a DetectedIssue of this project's alerts holds all exercise, by the plan's
    own rule (``cds.alert_holds_exercise`` of its code and source rules)."""
    for r in found:
        if r.get("resourceType") != "DetectedIssue":
            continue
        codes = [c.get("code") for c in (r.get("code") or {}).get("coding", [])
                 if isinstance(c, dict) and c.get("system") == ALERT_SYSTEM]
        rules = [x.get("valueString") for x in r.get("extension", [])
                 if isinstance(x, dict) and x.get("url") == EXT_SOURCE_RULE]
        if any(isinstance(c, str) and alert_holds_exercise(kb, c, [x for x in rules
                                                                  if isinstance(x, str)])
               for c in codes):
            return True
    return False
