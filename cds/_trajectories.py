"""Trajectory tests: what the follow-up loop must do over several visits, written as YAML.

A trajectory is a patient's course: a first plan, the patient's responses to it, the second
plan, responses, the third... Informaticists write them in ``trajectories/*.yaml`` next to
the rules, named after what they specify. The previous plan of each visit is the plan the
visit before produced, read back with ``previous_plan_of`` (what the FHIR side round-trips
through the CarePlan)::

    trajectories:
      - id: progress-twice
        covers: [DS-01-PROGRESS]
        visits:
          - facts: {pain-now: 6, odi-score: 30}       # visit 1: as in scenarios
            expect: {exercises-include: [glute-bridge], check-in: true}
          - after-days: 7                               # default 7
            facts: {pain-now: 4}                        # changes to the facts (optional)
            responses:                                  # per exercise id; '*' = every other
              glute-bridge: {pain-during: 2, next-morning: same, sessions-done: 6,
                             sessions-prescribed: 6, perceived-effect: better,
                             peripheralization: false}
            expect:
              changes: {glute-bridge: progressed}       # by the exercise now or before
              variables: {glute-bridge: repetitions}
              doses: {glute-bridge: {repetitions: 12}}
              check-in: true

Any scenario expectation (``alerts-include``, ``exercises``, ``exercise-held``...) works
in ``expect`` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cds._errors import MovementCDSError
from cds._evaluator import Evaluator
from cds._facts import Fact, PatientFacts
from cds._followup import ExerciseResponse, FollowUp
from cds._knowledge_base import load_cases
from cds._plan import Plan
from cds._revision import previous_plan_of
from cds._scenarios import DEFAULT_AS_OF, Expectation, Scenario, check_scenario

__all__ = [
    "Trajectory",
    "TrajectoryOutcome",
    "load_trajectories",
    "run_trajectories",
    "run_trajectory",
]

Rating = Literal["better", "same", "worse"]
Kind = Literal["new", "continued", "progressed", "held", "regressed", "swapped", "stopped"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Response(_Model):
    pain_during: int | None = Field(default=None, alias="pain-during", ge=0, le=10)
    next_morning: Rating | None = Field(default=None, alias="next-morning")
    sessions_done: int | None = Field(default=None, alias="sessions-done", ge=0)
    sessions_prescribed: int | None = Field(default=None, alias="sessions-prescribed", ge=0)
    perceived_effect: Rating | None = Field(default=None, alias="perceived-effect")
    peripheralization: bool | None = None


class VisitExpectation(Expectation):
    changes: dict[str, Kind] | None = Field(
        default=None, description="change kind per exercise (the exercise now, or for a "
        "swap or a harder/easier version, the one before)")
    variables: dict[str, str] | None = Field(default=None, description="variable changed")
    doses: dict[str, dict[str, Any]] | None = Field(
        default=None, description="dose fields of proposed exercises (sets, repetitions, "
        "hold_seconds...)")
    check_in: bool | None = Field(default=None, alias="check-in")
    consecutive_bad: dict[str, int] | None = Field(default=None, alias="consecutive-bad")


class Visit(_Model):
    after_days: float = Field(default=7, alias="after-days", ge=0)
    as_of: datetime | None = Field(default=None, alias="as-of")
    facts: dict[str, Any] = Field(default_factory=dict)
    responses: dict[str, Response] = Field(default_factory=dict)
    expect: VisitExpectation = Field(default_factory=VisitExpectation)


class Trajectory(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str | None = None
    covers: list[str] = Field(default_factory=list, description="rule ids it specifies")
    visits: list[Visit] = Field(min_length=2)


@dataclass
class TrajectoryOutcome:
    trajectory: Trajectory
    file: str
    line: int | None
    failures: list[str] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    error: str | None = None

    @property
    def id(self) -> str:
        return self.trajectory.id

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


def load_trajectories(root: Path) -> list[tuple[Trajectory, str, int | None]]:
    """Every trajectory under ``root/trajectories``, with its file and line."""
    return load_cases(root, "trajectories", Trajectory, "trajectory")


def _facts(values: dict[str, Any], src: str) -> list[Fact]:
    out: list[Fact] = []
    for name, value in sorted(values.items()):
        if isinstance(value, dict):
            out += [Fact(f"{name}.{side}", v, (f"{src}#{name}",)) for side, v in
                    sorted(value.items())]
        elif value is not None:  # null removes a fact at a later visit
            out.append(Fact(name, value, (f"{src}#{name}",)))
    return out


def check_visit(e: VisitExpectation, plan: Plan) -> list[str]:
    """What differs between a visit's expectation and its plan (empty: passed)."""
    fails = check_scenario(Scenario(id="visit", facts={}, expect=e), plan)

    def need(cond: bool, what: str, expected: Any, actual: Any) -> None:
        if not cond:
            fails.append(f"{what}: expected {expected}, got {actual}")

    def change_of(ex: str) -> Any:
        return next((c for c in plan.changes if c.exercise_id == ex), None) or next(
            (c for c in plan.changes if c.previous_exercise_id == ex), None)

    for ex, kind in (e.changes or {}).items():
        c = change_of(ex)
        need(c is not None and c.kind == kind, f"change of {ex}", kind,
             c.kind if c else "(no change listed)")
    for ex, var in (e.variables or {}).items():
        c = change_of(ex)
        need(c is not None and c.variable == var, f"variable changed for {ex}", var,
             c.variable if c else "(no change listed)")
    for ex, n in (e.consecutive_bad or {}).items():
        c = change_of(ex)
        need(c is not None and c.consecutive_bad == n, f"bad responses in a row for {ex}", n,
             c.consecutive_bad if c else "(no change listed)")
    doses = {pe.exercise_id: pe.dose for pe in plan.exercises}
    for ex, want in (e.doses or {}).items():
        d = doses.get(ex)
        for k, v in want.items():
            got = getattr(d, k.replace("-", "_"), "(no such field)") if d else "(not in plan)"
            need(got == v, f"dose of {ex}: {k}", v, got)
    if e.check_in is not None:
        need((plan.check_in is not None) == e.check_in, "check-in proposed", e.check_in,
             plan.check_in is not None)
    return fails


def run_trajectory(evaluator: Evaluator, tr: Trajectory, file: str = "",
                   line: int | None = None) -> TrajectoryOutcome:
    """Run one trajectory visit by visit; never raises for a bad trajectory."""
    out = TrajectoryOutcome(tr, file, line)
    facts: dict[str, Any] = {}
    as_of = DEFAULT_AS_OF
    previous: Plan | None = None
    try:
        for n, visit in enumerate(tr.visits, start=1):
            facts.update(visit.facts)
            if n > 1:
                as_of = visit.as_of or as_of + timedelta(days=visit.after_days)
            elif visit.as_of is not None:
                as_of = visit.as_of
            follow_up = None
            if previous is not None:
                prev = previous_plan_of(previous, f"CarePlan/{tr.id}-{n - 1}")
                default = visit.responses.get("*")
                responses = []
                for pe in prev.exercises:
                    r = visit.responses.get(pe.exercise_id, default)
                    if r is not None:
                        responses.append(ExerciseResponse(
                            pe.exercise_id, r.pain_during, r.next_morning, r.sessions_done,
                            r.sessions_prescribed, r.perceived_effect, r.peripheralization,
                            (f"trajectory:{tr.id}#visit{n}/{pe.exercise_id}",)))
                follow_up = FollowUp(prev, tuple(responses))
            patient = PatientFacts.build(f"Patient/{tr.id}", as_of,
                                         _facts(facts, f"trajectory:{tr.id}"),
                                         follow_up=follow_up)
            plan = evaluator.evaluate(patient)
            out.plans.append(plan)
            out.failures += [f"visit {n}: {f}" for f in check_visit(visit.expect, plan)]
            previous = plan
    except MovementCDSError as err:
        out.error = f"{type(err).__name__}: {err}"
    return out


def run_trajectories(evaluator: Evaluator, root: Path,
                     only: set[str] | None = None) -> list[TrajectoryOutcome]:
    """Run every trajectory of the knowledge base at ``root``."""
    return [run_trajectory(evaluator, tr, rel, line)
            for tr, rel, line in load_trajectories(root) if not only or tr.id in only]
