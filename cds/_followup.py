"""Follow-up: what the patient reported about each exercise of the previous plan, and what
the revised plan changes because of it.

The front end (``fhir_adapters``) reads the previous CarePlan and the response Observations
into ``FollowUp``; the decision core returns one ``ExerciseChange`` per exercise so the EHR
can show what changed and why, in words for the patient and in codes for the record.
Nothing here knows FHIR: references are the input's own strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cds._dose import ExerciseDose

__all__ = [
    "ChangeKind",
    "CheckIn",
    "ExerciseChange",
    "ExerciseResponse",
    "FollowUp",
    "PreviousExercise",
    "PreviousPlan",
    "Rating",
]

Rating = Literal["better", "same", "worse"]

ChangeKind = Literal[
    "new",  # not in the previous plan
    "continued",  # same exercise, same dose (including "no response recorded")
    "progressed",  # one variable up (or the harder version)
    "held",  # same dose again: pain acceptable but not yet ready to progress
    "regressed",  # less load, range or complexity (or the easier version)
    "swapped",  # replaced by a same-goal exercise in another direction or plane
    "stopped",  # taken out (peripheralisation, new neurological symptoms, red flag, veto)
]


@dataclass(frozen=True)
class ExerciseResponse:
    """The patient's report on one exercise since the previous plan; ``None`` = not reported
    (never read as "fine")."""

    exercise_id: str
    pain_during: int | None = None  # 0-10 NRS
    next_morning: Rating | None = None  # pain the next morning compared with before
    sessions_done: int | None = None
    sessions_prescribed: int | None = None
    perceived_effect: Rating | None = None
    peripheralization: bool | None = None
    sources: tuple[str, ...] = ()  # input references of the Observations behind it


@dataclass(frozen=True)
class PreviousExercise:
    """One exercise as the previous plan prescribed it, with the follow-up state the plan
    carried (so that "two bad responses in a row" can be counted across visits)."""

    exercise_id: str
    dose: ExerciseDose | None  # None when the previous plan's dose could not be read
    status: str  # "proposed" | "on-hold" | "stopped"
    since: datetime | None = None  # when this exercise was first prescribed
    consecutive_bad: int = 0  # hold-or-regress responses in a row up to the previous plan


@dataclass(frozen=True)
class PreviousPlan:
    """The CarePlan this project produced last time, as far as the revision needs it."""

    reference: str  # how the input names it (``CarePlan/123`` or a fullUrl)
    created: datetime | None
    ruleset: str | None  # ``{kb-id}@{version}`` that produced it, if stated
    exercises: tuple[PreviousExercise, ...]
    avoided: tuple[str, ...] = ()  # exercise ids it said not to do


@dataclass(frozen=True)
class FollowUp:
    previous: PreviousPlan
    responses: tuple[ExerciseResponse, ...] = ()


@dataclass(frozen=True)
class ExerciseChange:
    """What the revision did to one exercise, and why."""

    exercise_id: str  # the exercise concerned (for a swap: the new one)
    kind: ChangeKind
    previous_exercise_id: str | None  # for a swap or a harder/easier version: the old one
    variable: str | None  # progressed/regressed: "load" | "repetitions" | "sets" |
    #                        "hold-seconds" | "tempo" | "exercise" (harder/easier version)
    patient_text: str  # plain words for the patient
    clinician_text: str  # the reason, including the pain-monitoring model where it applies
    rule_ids: tuple[str, ...]
    sources: tuple[str, ...]  # the response Observations (and others) behind it
    previous_dose: ExerciseDose | None = None
    consecutive_bad: int = 0  # carried forward for the next follow-up
    since: datetime | None = None  # when this exercise (at any dose) was first prescribed:
    #                                carried forward for "no felt benefit after N weeks"
    dose: ExerciseDose | None = None  # the dose now (None when stopped)
    decision: str | None = None  # the winning rule decision (progress, hold, regress,
    #                              swap, stop), None when no rule decided (continued)


@dataclass(frozen=True)
class CheckIn:
    """A proposed check-in with the patient after a new or changed exercise."""

    start: datetime  # as-of + 48 h (configurable)
    end: datetime  # as-of + 72 h (configurable)
    reason: str
    exercise_ids: tuple[str, ...]  # the new or changed exercises that call for it
