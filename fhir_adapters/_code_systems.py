"""The terminology the project publishes, as FHIR R4 CodeSystems (output contract).

``code_systems(kb)`` returns four CodeSystem dicts; ``export_terminology(kb, directory)``
writes them as ``CodeSystem-<id>.json``:

* ``screen`` (``http://movement-cds.org/fhir/CodeSystem/screen``): every input code of the
  knowledge base's fact catalog in this system (the question codes), the answer codes of
  its code-valued facts, and the codes the input contract adds (answer codes, the
  ``lbp-provoked`` component, the follow-up codes). The catalog's wording wins where a code
  is in both.
* ``exercise`` (``http://movement-cds.org/fhir/CodeSystem/exercise``): every catalog
  exercise; display = title, definition = the patient instructions. Properties:
  ``direction`` (code, repeats: flexion | extension | rotation | lateral-flexion |
  neutral), ``load`` (code: unloaded | bodyweight | external), ``surface`` (code: stable |
  unstable) as the contract requires; also ``purpose`` (string, the goal family),
  ``position`` (string), ``equipment`` (string, repeats), ``easier`` and ``harder`` (code:
  another concept of this system, the regression and progression).
* ``alert`` (``http://movement-cds.org/fhir/CodeSystem/alert``): every alert code.
* ``plan-change`` (``http://movement-cds.org/fhir/CodeSystem/plan-change``): what a revised
  plan did to each exercise (new, continued, progressed, held, regressed, swapped, stopped)
  and ``check-in``, the code of the proposed check-in activity (follow-ups; an extension of
  the output contract, see docs/integrators/follow-up.md); ``progress`` and ``adherence``,
  the codes of the progress-across-visits DiagnosticReport (docs/integrators/output.md).

Each has ``version`` = the knowledge-base version, ``status`` = the manifest's status
(draft | active | retired), ``content`` ``complete`` and is validated with the
``fhir.resources.R4B`` CodeSystem model (failure raises ``OutputValidationError``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from fhir.resources.R4B.codesystem import CodeSystem
from pydantic import ValidationError

from cds import KnowledgeBase
from fhir_adapters._errors import OutputValidationError
from fhir_adapters._terminology import (
    ADHERENCE_CODE,
    ALERT_SYSTEM,
    CHANGE_DISPLAY,
    CHECK_IN_CODE,
    EXERCISE_SYSTEM,
    PLAN_CHANGE_SYSTEM,
    PROGRESS_CODE,
    SCREEN_SYSTEM,
)

__all__ = ["code_systems", "export_terminology"]

_ANSWER: Final = "Answer code"

# Codes of the screen system that the input contract lists but no fact carries as its code:
# (code, display, definition).
_EXTRA_SCREEN: Final[tuple[tuple[str, str, str], ...]] = (
    ("back-only", "Back only",
     "Where symptoms reach (symptom-distribution): the back only."),
    ("above-knee", "Above the knee",
     "Where symptoms reach (symptom-distribution): into the leg, not below the knee."),
    ("below-knee", "Below the knee",
     "Where symptoms reach (symptom-distribution): below the knee."),
    ("both-legs", "Both legs",
     "Where symptoms reach (symptom-distribution): both legs."),
    ("extension", "Extension",
     "Directional preference for extension."),
    ("flexion", "Flexion",
     "Directional preference for flexion."),
    ("lateral-shift-left", "Lateral shift, left",
     "Directional preference: lateral shift to the left."),
    ("lateral-shift-right", "Lateral shift, right",
     "Directional preference: lateral shift to the right."),
    ("none", "None",
     "No directional preference found."),
    ("centralizes", "Centralizes",
     "With the repeated movement, symptoms move towards the spine (centralisation)."),
    ("peripheralizes", "Peripheralizes",
     "With the repeated movement, symptoms spread further down the leg (peripheralisation)."),
    ("no-effect", "No effect",
     "The repeated movement does not change the symptoms."),
    ("increases-back-pain", "Increases back pain",
     "The repeated movement increases back pain without peripheralisation."),
    ("lbp-provoked", "Low back pain provoked",
     "Component of an FMS test or loaded-pattern Observation (valueBoolean): true when the "
     "test reproduced or increased the patient's low back pain."),
    ("better", "Better",
     "Better than before (next-morning pain, or the patient's sense of effect)."),
    ("same", "Same",
     "The same as before (next-morning pain, or the patient's sense of effect)."),
    ("worse", "Worse",
     "Worse than before (next-morning pain, or the patient's sense of effect)."),
    ("exercise", "Exercise",
     "Component of a follow-up Observation naming the exercise it is about "
     "(valueCodeableConcept from http://movement-cds.org/fhir/CodeSystem/exercise)."),
    ("exercise-pain-during", "Pain during the exercise",
     "Pain during the exercise, 0-10 numeric rating scale (valueInteger)."),
    ("exercise-pain-next-morning", "Pain the next morning",
     "Pain the next morning compared with before the exercise (valueCodeableConcept: "
     "better, same, worse)."),
    ("exercise-sessions-done", "Sessions done",
     "Exercise sessions done since the last plan (valueInteger)."),
    ("exercise-sessions-prescribed", "Sessions prescribed",
     "Exercise sessions prescribed since the last plan (valueInteger)."),
    ("exercise-perceived-effect", "Perceived effect",
     "The patient's sense of the exercise's effect (valueCodeableConcept: better, same, "
     "worse)."),
    ("exercise-peripheralization", "Peripheralization with the exercise",
     "Leg symptoms spread further during or after the exercise (valueBoolean)."),
)

_EXERCISE_PROPERTIES: Final[tuple[tuple[str, str, str], ...]] = (
    ("direction", "code",
     "Spinal movement direction (may repeat): flexion | extension | rotation | "
     "lateral-flexion | neutral (spine held still, e.g. anti-extension or anti-rotation "
     "work)."),
    ("load", "code",
     "Load: unloaded (lying, supported) | bodyweight | external (band, weight)."),
    ("surface", "code", "Surface: stable | unstable."),
    ("purpose", "string", "Goal family; a plan holds one exercise per purpose."),
    ("position", "string", "Starting position."),
    ("equipment", "string", "Equipment needed (may repeat)."),
    ("easier", "code", "Regression: the easier exercise (a code of this system)."),
    ("harder", "code", "Progression: the harder exercise (a code of this system)."),
)


def _header(kb: KnowledgeBase, cs_id: str, url: str, name: str, title: str,
            description: str) -> dict[str, Any]:
    m = kb.manifest
    out: dict[str, Any] = {
        "resourceType": "CodeSystem",
        "id": cs_id,
        "url": url,
        "version": m.version,
        "name": name,
        "title": title,
        "status": m.status,
        "description": f"{description} Published with knowledge base {m.id}@{m.version}.",
        "caseSensitive": True,
        "content": "complete",
    }
    if m.publisher:
        out["publisher"] = m.publisher
    return out


def _screen(kb: KnowledgeBase) -> dict[str, Any]:
    concepts: dict[str, dict[str, Any]] = {}
    facts = [d for d in kb.facts.values()
             if d.coding is not None and d.coding.system == SCREEN_SYSTEM]
    for d in facts:
        assert d.coding is not None
        concepts.setdefault(d.coding.code, {
            "code": d.coding.code,
            "display": (d.coding.display or d.description).strip(),
            "definition": d.description.strip(),
        })
    extra = {c: (disp, defn) for c, disp, defn in _EXTRA_SCREEN}
    answers = {c: d for d in facts for c in (d.codes or [])}
    for code, disp, defn in _EXTRA_SCREEN:
        concepts.setdefault(code, {"code": code, "display": disp, "definition": defn})
    for code, d in answers.items():
        if code not in concepts and code not in extra:
            concepts[code] = {
                "code": code,
                "display": code.replace("-", " ").capitalize(),
                "definition": f"{_ANSWER} for: {d.description.strip()}.",
            }
    cs = _header(kb, "screen", SCREEN_SYSTEM, "MovementCdsScreen",
                 "movement-cds screen items and answers",
                 "Questions, tests and answer codes of the movement-cds low back pain screen "
                 "(see the input contract for the value each question takes).")
    cs["count"] = len(concepts)
    cs["concept"] = list(concepts.values())
    return cs


def _exercise(kb: KnowledgeBase) -> dict[str, Any]:
    concepts = []
    for ex in kb.exercises.values():
        props: list[dict[str, Any]] = [{"code": "direction", "valueCode": d.value}
                                       for d in ex.direction]
        props += [
            {"code": "load", "valueCode": ex.load.value},
            {"code": "surface", "valueCode": ex.surface.value},
            {"code": "purpose", "valueString": ex.purpose},
            {"code": "position", "valueString": ex.position},
        ]
        props += [{"code": "equipment", "valueString": e} for e in ex.equipment]
        if ex.easier:
            props.append({"code": "easier", "valueCode": ex.easier})
        if ex.harder:
            props.append({"code": "harder", "valueCode": ex.harder})
        concepts.append({
            "code": ex.id,
            "display": ex.title.strip(),
            "definition": ex.instructions.strip(),
            "property": [p for p in props if all(str(v).strip() for v in p.values())],
        })
    cs = _header(kb, "exercise", EXERCISE_SYSTEM, "MovementCdsExercise",
                 "movement-cds exercise catalog",
                 "Exercises that movement-cds may propose or mark 'do not perform', with the "
                 "properties its safety rules match on (direction, load, surface).")
    cs["count"] = len(concepts)
    cs["property"] = [{"code": c, "type": t, "description": d}
                      for c, t, d in _EXERCISE_PROPERTIES]
    cs["concept"] = concepts
    return cs


def _alert(kb: KnowledgeBase) -> dict[str, Any]:
    concepts = [{"code": a.code, "display": a.display.strip(),
                 "definition": a.definition.strip()} for a in kb.alerts.values()]
    cs = _header(kb, "alert", ALERT_SYSTEM, "MovementCdsAlert", "movement-cds alerts",
                 "Alerts that movement-cds raises (DetectedIssue.code).")
    cs["count"] = len(concepts)
    cs["concept"] = concepts
    return cs


def _plan_change(kb: KnowledgeBase) -> dict[str, Any]:
    concepts = [{"code": code, "display": display, "definition": definition}
                for code, (display, definition) in CHANGE_DISPLAY.items()]
    for code, display, definition in (CHECK_IN_CODE, PROGRESS_CODE, ADHERENCE_CODE):
        concepts.append({"code": code, "display": display, "definition": definition})
    cs = _header(kb, "plan-change", PLAN_CHANGE_SYSTEM, "MovementCdsPlanChange",
                 "movement-cds follow-up plan changes",
                 "What a revised plan did to each exercise of the plan it replaces (the kind "
                 "sub-extension of http://movement-cds.org/fhir/StructureDefinition/"
                 "exercise-change on CarePlan.activity.detail), and the code of the proposed "
                 "check-in activity, and the codes of the progress-across-visits report. An "
                 "extension of the output contract for follow-ups.")
    cs["count"] = len(concepts)
    cs["concept"] = concepts
    return cs


def code_systems(kb: KnowledgeBase) -> list[dict[str, Any]]:
    """The screen, exercise, alert and plan-change CodeSystems (FHIR R4 JSON dicts),
    validated."""
    out = [_screen(kb), _exercise(kb), _alert(kb), _plan_change(kb)]
    for cs in out:
        try:
            CodeSystem.model_validate(cs)
        except ValidationError as e:
            raise OutputValidationError(
                f"CodeSystem {cs['id']} is not valid FHIR R4: {e}") from e
    return out


def export_terminology(kb: KnowledgeBase, directory: Path) -> list[Path]:
    """Write ``CodeSystem-<id>.json`` per code system into ``directory`` (created if needed);
    return the paths written (screen, exercise, alert, plan-change)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for cs in code_systems(kb):
        path = directory / f"CodeSystem-{cs['id']}.json"
        text = json.dumps(cs, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
