"""Scenario tests: what a rule set must do for a given patient, written as YAML.

Informaticists write them next to the rules (``scenarios/*.yaml``), named after what they
specify. A scenario gives the patient either as facts (``facts:``) or as a FHIR file
(``bundle:``, read by a reader the caller supplies, since this package knows no FHIR) and
says what must come out::

    scenarios:
      - id: bladder-dysfunction-alone-is-an-emergency
        covers: [RF-01-CES]
        facts:
          rf-bladder-dysfunction: true
          fms-hurdle-step: {left: 3, right: 1}     # a bilateral test, per side
        expect:
          alerts-include: [suspected-cauda-equina]
          referral: stat
          exercise-held: true
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cds._errors import MovementCDSError
from cds._evaluator import Evaluator
from cds._explain import Explainer, ExplainTargetError, render_item, render_target
from cds._facts import Fact, PatientFacts
from cds._knowledge_base import load_cases
from cds._plan import Plan

__all__ = [
    "CaseOutcome",
    "ExpectationRow",
    "Scenario",
    "ScenarioOutcome",
    "check_expectations",
    "check_scenario",
    "explain_rows",
    "load_scenarios",
    "run_scenarios",
    "scenario_case",
]

DEFAULT_AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
_PRIORITY = ["stat", "asap", "urgent", "routine"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Properties(_Model):
    direction: list[str] | None = None
    load: list[str] | None = None
    surface: list[str] | None = None


class Expectation(_Model):
    alerts: list[str] | None = Field(default=None, description="exactly these alert codes")
    alerts_include: list[str] | None = Field(default=None, alias="alerts-include")
    alerts_exclude: list[str] | None = Field(default=None, alias="alerts-exclude")
    referral: Literal["stat", "asap", "urgent", "routine", "none"] | None = Field(
        default=None, description="the most urgent referral priority, or none"
    )
    exercise_held: bool | None = Field(default=None, alias="exercise-held")
    exercises: list[str] | None = Field(default=None, description="exactly these proposed")
    exercises_include: list[str] | None = Field(default=None, alias="exercises-include")
    exercises_exclude: list[str] | None = Field(default=None, alias="exercises-exclude")
    exercise_count: tuple[int, int] | None = Field(
        default=None, alias="exercise-count", description="[min, max] proposed exercises"
    )
    avoid_include: list[str] | None = Field(default=None, alias="avoid-include")
    forbidden_properties: Properties | None = Field(
        default=None, alias="forbidden-properties",
        description="no proposed exercise has any of these properties",
    )
    required_properties: Properties | None = Field(
        default=None, alias="required-properties",
        description="for each property listed, some proposed exercise has one of the values",
    )
    fires: list[str] | None = None
    does_not_fire: list[str] | None = Field(default=None, alias="does-not-fire")
    missing: list[str] | None = Field(default=None, description="data-gap items reported")
    findings: dict[str, Any] | None = Field(default=None, description="derived fact values")
    alert_says: dict[str, list[str]] | None = Field(
        default=None, alias="alert-says",
        description="alert code -> phrases its detail must contain (e.g. 'reported YES on')",
    )
    answer_notes: list[str] | None = Field(
        default=None, alias="answer-notes",
        description="exactly these kinds of notes on how answers were read (stale-yes, "
        "undated-yes, discordant, contradicted, unreadable, undated-no, stale-no, "
        "partial-birth-date)",
    )


class Scenario(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str | None = None
    covers: list[str] = Field(default_factory=list, description="rule ids it specifies")
    as_of: datetime | None = Field(default=None, alias="as-of")
    facts: dict[str, Any] | None = None
    bundle: str | None = Field(default=None, description="FHIR file, relative to the scenario")
    expect: Expectation


@dataclass(frozen=True)
class ExpectationRow:
    """One expectation checked: what, expected, actual, and whether it held."""

    what: str
    expected: Any
    actual: Any
    passed: bool
    subjects: tuple[str, ...] = ()  # what to explain when it fails

    def line(self) -> str:
        return f"{self.what}: expected {self.expected}, got {self.actual}"


@dataclass
class ScenarioOutcome:
    scenario: Scenario
    file: str
    line: int | None
    failures: list[str] = field(default_factory=list)
    plan: Plan | None = None
    error: str | None = None
    rows: list[ExpectationRow] = field(default_factory=list)
    inputs: tuple[Fact, ...] = ()  # the facts as read, before scores were computed
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


@dataclass(frozen=True)
class CaseOutcome:
    """One test case of any runner (scenarios now; multi-visit trajectories later), in the
    form ``kb test`` reports: pass/fail, the expected and actual rows, the explanation of the
    actual outcome, and where the case is written."""

    suite: str
    id: str
    file: str
    line: int | None
    passed: bool
    rows: tuple[ExpectationRow, ...] = ()
    error: str | None = None
    explanation: str | None = None
    seconds: float = 0.0

    @property
    def failures(self) -> tuple[ExpectationRow, ...]:
        return tuple(r for r in self.rows if not r.passed)


BundleReader = Callable[[Path, datetime], PatientFacts]


def load_scenarios(root: Path) -> list[tuple[Scenario, str, int | None]]:
    """Every scenario under ``root/scenarios``, with its file and line."""
    return load_cases(root, "scenarios", Scenario, "scenario", _one_input)


def _one_input(sc: Scenario) -> str | None:
    if (sc.facts is None) == (sc.bundle is None):
        return f"scenario '{sc.id}': give exactly one of facts or bundle"
    return None


def _facts_of(sc: Scenario, evaluator: Evaluator) -> list[Fact]:
    facts: list[Fact] = []
    for name, value in sorted((sc.facts or {}).items()):
        src = (f"scenario:{sc.id}#{name}",)
        if isinstance(value, dict):
            for side, v in sorted(value.items()):
                facts.append(Fact(f"{name}.{side}", v, src))
        else:
            facts.append(Fact(name, value, src))
    return facts


def check_scenario(sc: Scenario, plan: Plan) -> list[str]:
    """What differs between the expectation and the plan, one line each (empty: passed)."""
    return [r.line() for r in check_expectations(sc, plan) if not r.passed]


class _Rows(list[ExpectationRow]):
    """The expectation rows of one scenario, in the order checked."""

    def need(self, cond: bool, what: str, expected: Any, actual: Any, *subjects: str) -> None:
        self.append(ExpectationRow(what, expected, actual, cond, tuple(subjects)))


def check_expectations(sc: Scenario, plan: Plan) -> list[ExpectationRow]:
    """Every expectation of the scenario checked against the plan, passed or not, with what
    to explain when it fails (``subjects``: ids for ``Explainer.why``, or ``@held``,
    ``@referral``, ``@gaps``, ``@exercises`` for the plan's parts)."""
    rows = _Rows()
    for check in (_check_alerts, _check_exercises, _check_properties, _check_rules,
                  _check_wording):
        check(sc.expect, plan, rows)
    return list(rows)


def _check_alerts(e: Expectation, plan: Plan, rows: _Rows) -> None:
    alerts = {a.code for a in plan.alerts}
    if e.alerts is not None:
        rows.need(alerts == set(e.alerts), "alerts", sorted(e.alerts), sorted(alerts),
                  *sorted(alerts ^ set(e.alerts)))
    for code in e.alerts_include or []:
        rows.need(code in alerts, f"alert {code}", "present", sorted(alerts), code)
    for code in e.alerts_exclude or []:
        rows.need(code not in alerts, f"alert {code}", "absent", "present", code)
    if e.referral is not None:
        prios = sorted((a.referral.priority for a in plan.alerts if a.referral),
                       key=_PRIORITY.index)
        top = prios[0] if prios else "none"
        rows.need(top == e.referral, "most urgent referral", e.referral, top, "@referral")
    if e.exercise_held is not None:
        rows.need(plan.exercise_held == e.exercise_held, "exercise held", e.exercise_held,
                  plan.exercise_held, "@held")


def _check_exercises(e: Expectation, plan: Plan, rows: _Rows) -> None:
    listed = {x.exercise_id for x in plan.exercises}
    if e.exercises is not None:
        rows.need(listed == set(e.exercises), "exercises", sorted(e.exercises),
                  sorted(listed), *sorted(listed ^ set(e.exercises)))
    for ex in e.exercises_include or []:
        rows.need(ex in listed, f"exercise {ex}", "proposed", sorted(listed), ex)
    for ex in e.exercises_exclude or []:
        rows.need(ex not in listed, f"exercise {ex}", "not proposed", "proposed", ex)
    if e.exercise_count is not None:
        lo, hi = e.exercise_count
        rows.need(lo <= len(listed) <= hi, "number of exercises", f"{lo}-{hi}", len(listed),
                  "@exercises")
    avoided = {a.exercise_id for a in plan.avoid}
    for ex in e.avoid_include or []:
        rows.need(ex in avoided, f"avoid {ex}", "listed as do-not-perform", sorted(avoided),
                  ex)


def _check_properties(e: Expectation, plan: Plan, rows: _Rows) -> None:
    """No proposed exercise has a forbidden property; some has each required one."""
    proposed = [x for x in plan.exercises if x.status == "proposed"]
    if e.forbidden_properties is not None:
        fp = e.forbidden_properties
        for x in proposed:
            bad = (set(fp.direction or []) & set(x.direction)) | (
                {x.load} & set(fp.load or [])) | ({x.surface} & set(fp.surface or []))
            rows.need(not bad, f"exercise {x.exercise_id}", f"none of {sorted(bad)}",
                      "has them", x.exercise_id)
    if e.required_properties is not None:
        rp = e.required_properties
        for prop, wanted in (("direction", rp.direction), ("load", rp.load),
                             ("surface", rp.surface)):
            if not wanted:
                continue
            have = {v for x in proposed for v in (
                x.direction if prop == "direction" else (getattr(x, prop),))}
            rows.need(bool(have & set(wanted)), f"some proposed exercise with {prop}",
                      f"one of {wanted}", sorted(have), "@exercises")


def _check_rules(e: Expectation, plan: Plan, rows: _Rows) -> None:
    fired = {d.rule_id for d in plan.firings}
    for rid in e.fires or []:
        rows.need(rid in fired, f"rule {rid}", "fires", "does not fire", rid)
    for rid in e.does_not_fire or []:
        rows.need(rid not in fired, f"rule {rid}", "does not fire", "fires", rid)
    if e.missing is not None:
        got = sorted({m for g in plan.data_gaps for m in g.missing})
        rows.need(got == sorted(e.missing), "missing items", sorted(e.missing), got, "@gaps")


def _check_wording(e: Expectation, plan: Plan, rows: _Rows) -> None:
    """What alerts say, the notes on how answers were read, and derived findings."""
    details = {a.code: a.detail for a in plan.alerts}
    for code, phrases in (e.alert_says or {}).items():
        for phrase in phrases:
            rows.need(phrase in details.get(code, ""), f"alert {code} says '{phrase}'",
                      "said", details.get(code, "(no such alert)"), code)
    if e.answer_notes is not None:
        kinds = sorted({n.kind for n in plan.answer_notes})
        rows.need(kinds == sorted(set(e.answer_notes)), "notes on how answers were read",
                  sorted(set(e.answer_notes)), kinds, "@gaps")
    if e.findings:
        facts = {f.name: f.value for f in plan.facts}
        derived = plan.derived_values
        for name, value in e.findings.items():
            actual = derived.get(name, facts.get(name, "(absent)"))
            rows.need(actual == value, f"finding {name}", value, actual, name)


def run_scenarios(
    evaluator: Evaluator,
    root: Path,
    reader: BundleReader | None = None,
    only: set[str] | None = None,
) -> list[ScenarioOutcome]:
    """Run every scenario of the knowledge base at ``root``; never raises for one scenario."""
    outcomes = []
    for sc, rel, line in load_scenarios(root):
        if only and sc.id not in only:
            continue
        out = ScenarioOutcome(sc, rel, line)
        as_of = sc.as_of or DEFAULT_AS_OF
        started = time.perf_counter()
        try:
            if sc.bundle is not None:
                if reader is None:
                    raise MovementCDSError("this runner cannot read FHIR bundles")
                path = (root / rel).parent / sc.bundle
                if not path.is_file():
                    raise MovementCDSError(f"bundle file not found: {sc.bundle}")
                patient = reader(path, as_of)
            else:
                patient = PatientFacts.build(f"Patient/{sc.id}", as_of, _facts_of(sc, evaluator))
            out.inputs = patient.facts
            out.plan = evaluator.evaluate(patient)
            out.rows = check_expectations(sc, out.plan)
            out.failures = [r.line() for r in out.rows if not r.passed]
        except MovementCDSError as err:
            out.error = f"{type(err).__name__}: {err}"
        out.seconds = time.perf_counter() - started
        outcomes.append(out)
    return outcomes


def scenario_case(outcome: ScenarioOutcome, explainer: Explainer | None = None) -> CaseOutcome:
    """A scenario outcome as a report case; a failed one carries the explanation of what
    actually came out for every item its failed expectations name."""
    text = None
    if explainer is not None and outcome.plan is not None and not outcome.passed:
        text = explain_rows(explainer, outcome.plan, outcome.rows, outcome.inputs)
    sc = outcome.scenario
    return CaseOutcome("scenario", sc.id, outcome.file, outcome.line, outcome.passed,
                       tuple(outcome.rows), outcome.error, text, outcome.seconds)


def explain_rows(explainer: Explainer, plan: Plan, rows: list[ExpectationRow],
                 inputs: tuple[Fact, ...] = ()) -> str:
    """The explain tree (or why-not) of each item the failed rows name, once each."""
    subjects = list(dict.fromkeys(s for r in rows if not r.passed for s in r.subjects))
    parts: list[str] = []
    whole = explainer.explain_plan(plan, inputs or None)
    groups = {
        "@held": [i for i in whole.items if i.kind == "alert" and "holds" in i.outcome],
        "@referral": [i for i in whole.items if i.kind == "alert" and "referral" in i.outcome],
        "@gaps": [i for i in whole.items if i.kind == "data-gap"],
    }
    for s in subjects:
        if s in groups:
            items = groups[s]
            if not items:
                parts.append({"@held": "No alert holds exercise.",
                              "@referral": "No alert calls for a referral.",
                              "@gaps": "No data-gap rule fired."}[s] + "\n")
            parts.extend("\n".join(render_item(i)) + "\n" for i in items)
        elif s == "@exercises":
            heads = [f"{i.kind.upper()} {i.id} ({i.outcome})" for i in whole.items
                     if i.kind in ("exercise", "deferred", "avoid")]
            parts.append("\n".join(heads or ["No exercise was recommended."]) + "\n")
        else:
            try:
                parts.append(render_target(explainer.why(plan, s, inputs or None)))
            except ExplainTargetError as e:
                parts.append(f"{e}\n")
    return "\n".join(parts)
