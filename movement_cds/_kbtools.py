"""Glue for the knowledge-base tools: scenario runs that may read FHIR vignettes, and the
case runners ``kb test`` reports on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cds import Evaluator, KnowledgeBase, PatientFacts
from cds.authoring import (
    BundleReader,
    CaseOutcome,
    ExpectationRow,
    Explainer,
    ScenarioOutcome,
    TrajectoryOutcome,
    load_scenarios,
    load_trajectories,
    run_scenarios,
    run_trajectories,
    scenario_case,
)
from fhir_adapters import read_bundle

__all__ = [
    "CASE_RUNNERS", "CaseRunner", "fhir_reader", "run_all_scenarios", "scenario_cases",
    "trajectory_cases",
]

# (evaluator, knowledge-base root, which case ids to run, explainer) -> outcomes
CaseRunner = Callable[[Evaluator, Path, Callable[[str], bool], Explainer], list[CaseOutcome]]


def fhir_reader(kb: KnowledgeBase) -> BundleReader:
    """Reads a scenario's ``bundle:`` file with the production FHIR adapter."""

    def read(path: Path, as_of: datetime) -> PatientFacts:
        return read_bundle(path.read_bytes(), kb=kb, as_of=as_of)

    return read


def run_all_scenarios(
    evaluator: Evaluator, root: Path, only: set[str] | None = None
) -> list[ScenarioOutcome]:
    return run_scenarios(evaluator, root, fhir_reader(evaluator.kb), only)


def _cases(
    load: Callable[[Path], list[tuple[Any, str, int | None]]],
    outcomes: Callable[[Evaluator, Path, set[str], Explainer], list[CaseOutcome]],
) -> CaseRunner:
    """A ``kb test`` runner: the cases ``load`` finds that ``select`` picks, run by
    ``outcomes`` (nothing to run: no cases)."""

    def run(evaluator: Evaluator, root: Path, select: Callable[[str], bool],
            explainer: Explainer) -> list[CaseOutcome]:
        ids = {case.id for case, _, _ in load(root) if select(case.id)}
        return outcomes(evaluator, root, ids, explainer) if ids else []

    return run


def _scenario_outcomes(
    evaluator: Evaluator, root: Path, ids: set[str], explainer: Explainer
) -> list[CaseOutcome]:
    """The scenario files as report cases (failed ones explained)."""
    return [scenario_case(o, explainer) for o in run_all_scenarios(evaluator, root, ids)]


def _row(failure: str) -> ExpectationRow:
    """``"visit 2: change of x: expected progressed, got held"`` as a report row."""
    what, sep, rest = failure.rpartition(": expected ")
    expected, sep2, actual = rest.partition(", got ")
    if not sep or not sep2:
        return ExpectationRow(failure, "", "", False)
    return ExpectationRow(what, expected, actual, False)


def _visit_story(outcome: TrajectoryOutcome) -> str:
    """What each visit's plan did to each exercise, and why: the explanation of a failed
    trajectory (its decisions are per exercise, so the story is the explanation)."""
    lines: list[str] = []
    for n, plan in enumerate(outcome.plans, start=1):
        held = [a.code for a in plan.alerts if a.holds_exercise]
        lines.append(f"visit {n} ({plan.as_of:%Y-%m-%d}): "
                     + (f"exercise held by {', '.join(held)}" if held else
                        f"{len(plan.exercises)} exercise(s) proposed"))
        for c in plan.changes:
            came = f" (was {c.previous_exercise_id})" if c.previous_exercise_id else ""
            var = f", {c.variable}" if c.variable else ""
            rules = f" [{', '.join(c.rule_ids)}]" if c.rule_ids else ""
            lines.append(f"  {c.exercise_id}{came}: {c.kind}{var}{rules}: "
                         f"{' '.join(c.clinician_text.split())}")
    return "\n".join(lines) + "\n"


def _trajectory_outcomes(
    evaluator: Evaluator, root: Path, ids: set[str], _explainer: Explainer
) -> list[CaseOutcome]:
    """Multi-visit follow-up trajectories (``trajectories/*.yaml``) as report cases."""
    out = []
    for o in run_trajectories(evaluator, root, ids):
        story = _visit_story(o) if not o.passed and o.plans else None
        out.append(CaseOutcome("trajectory", o.id, o.file, o.line, o.passed,
                               tuple(_row(f) for f in o.failures), o.error, story))
    return out


scenario_cases = _cases(load_scenarios, _scenario_outcomes)
trajectory_cases = _cases(load_trajectories, _trajectory_outcomes)

# Every runner ``kb test`` runs, in order: single-visit scenarios, then multi-visit
# follow-up trajectories.
CASE_RUNNERS: list[tuple[str, CaseRunner]] = [
    ("scenarios", scenario_cases), ("trajectories", trajectory_cases),
]
