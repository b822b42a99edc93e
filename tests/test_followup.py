"""Follow-up (issue 6): the per-exercise rules, the revision, the knowledge-base checks."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from cds import (
    Evaluator,
    ExerciseDose,
    ExerciseResponse,
    Fact,
    FollowUp,
    InvalidInputError,
    KnowledgeBase,
    KnowledgeBaseError,
    PatientFacts,
    Plan,
    PreviousExercise,
    PreviousPlan,
    compile_knowledge_base,
    load_knowledge_base,
)
from cds._facts import Scalar
from cds._revision import harder_step, previous_plan_of, regress_step
from knowledge_base import bundled_path
from tests.patients import AS_OF

CLEAR = {f"rf-{n}": False for n in (
    "saddle-anaesthesia", "bladder-dysfunction", "bowel-dysfunction", "bilateral-leg-symptoms",
    "progressive-weakness", "foot-drop", "fever", "cancer-history", "significant-trauma",
    "unexplained-weight-loss")}
MOVEMENT_CONTROL = {**CLEAR, "pain-now": 6, "odi-score": 30, "episode-duration": 200}
GOOD = {"pain_during": 2, "next_morning": "same", "sessions_done": 6,
        "sessions_prescribed": 6, "perceived_effect": "better", "peripheralization": False}


def patient(facts: dict[str, Scalar] | None = None, follow_up: FollowUp | None = None,
            days: float = 0) -> PatientFacts:
    values: dict[str, Scalar] = MOVEMENT_CONTROL if facts is None else facts
    return PatientFacts.build(
        "Patient/p", AS_OF + timedelta(days=days),
        [Fact(k, v, (f"Observation/{k}",)) for k, v in values.items()], follow_up=follow_up)


def follow(plan: Plan, days: float = 7, facts: dict[str, Scalar] | None = None,
           **per_exercise: dict[str, Scalar]) -> PatientFacts:
    """The next visit: per_exercise maps exercise ids (underscored) to responses; 'all' to
    every other exercise."""
    prev = previous_plan_of(plan, "CarePlan/1")
    default = per_exercise.get("all")
    responses = []
    for e in prev.exercises:
        r = per_exercise.get(e.exercise_id.replace("-", "_"), default)
        if r is not None:
            responses.append(ExerciseResponse(e.exercise_id, **r,  # type: ignore[arg-type]
                                              sources=(f"Observation/r-{e.exercise_id}",)))
    return patient(facts, FollowUp(prev, tuple(responses)),
                   days=(plan.as_of - AS_OF).total_seconds() / 86400 + days)


def change(plan: Plan, ex: str):  # type: ignore[no-untyped-def]
    return next(c for c in plan.changes if ex in (c.exercise_id, c.previous_exercise_id))


# --- the rules and the revision -----------------------------------------------------------


def test_follow_up_rules_compile_to_their_own_ruleset(kb: KnowledgeBase) -> None:
    base = compile_knowledge_base(kb)
    per_exercise = compile_knowledge_base(kb, "exercise-response")
    assert per_exercise.name == f"{kb.ruleset_name}/follow-up"
    ids = {r.rule_id for r in per_exercise.rules}
    assert {"DS-01-PROGRESS", "DS-02-PAIN-DURING", "DS-04-PERIPHERALISATION"} <= ids
    assert not ids & {r.rule_id for r in base.rules}
    assert "DS-05-MINIMAL-PROGRAMME" in {r.rule_id for r in base.rules}
    assert "response-pain-during" not in base.fact_names


def test_a_good_response_progresses_and_explains_in_two_voices(durable: Evaluator) -> None:
    first = durable.evaluate(patient())
    assert first.replaces is None and first.changes == ()
    assert first.check_in is not None
    assert first.check_in.start == AS_OF + timedelta(hours=48)
    assert first.check_in.end == AS_OF + timedelta(hours=72)
    second = durable.evaluate(follow(first, all=GOOD))
    assert second.replaces == "CarePlan/1"
    c = change(second, "glute-bridge")
    assert (c.kind, c.variable, c.rule_ids) == ("progressed", "repetitions", ("DS-01-PROGRESS",))
    assert c.previous_dose is not None and c.previous_dose.repetitions == 10
    assert c.dose is not None and c.dose.repetitions == 12
    assert c.patient_text.startswith("This exercise went well") and "Now: 3 sets of 12" in \
        c.patient_text
    assert "Pain-monitoring model: pain during 0-2/10 safe, 3-5 acceptable, above 5" in \
        c.clinician_text
    assert "pain during 2/10" in c.clinician_text and "repetitions 10 -> 12" in c.clinician_text
    assert c.sources == ("Observation/r-glute-bridge",)
    planned = next(p for p in second.exercises if p.exercise_id == "glute-bridge")
    assert "Observation/r-glute-bridge" in planned.sources
    assert "DS-01-PROGRESS" in planned.rule_ids
    assert any(e.id == "PMCID:PMC5739826" for e in planned.evidence)  # Smith 2017


def test_thresholds_are_parameters(kb: KnowledgeBase) -> None:
    """Pain 6 regresses with the defaults and progresses when governance raises the
    acceptable level to 6: the threshold lives in the knowledge base, not in code."""
    bad = {**GOOD, "pain_during": 6}
    default = Evaluator(kb, "reference")
    first = default.evaluate(patient())
    assert change(default.evaluate(follow(first, all=bad)), "glute-bridge").kind == "regressed"
    raised = Evaluator(load_knowledge_base(
        bundled_path(), {"follow-up-pain-acceptable-max": 6}), "reference")
    first = raised.evaluate(patient())
    assert change(raised.evaluate(follow(first, all=bad)), "glute-bridge").kind == "progressed"


def test_most_cautious_decision_wins(reference: Evaluator) -> None:
    first = reference.evaluate(patient())
    # progress conditions hold, but leg symptoms spread and it feels worse: stop wins
    plan = reference.evaluate(follow(first, all=GOOD, glute_bridge={
        **GOOD, "peripheralization": True, "perceived_effect": "worse"}))
    c = change(plan, "glute-bridge")
    assert c.kind == "stopped" and c.rule_ids == ("DS-04-PERIPHERALISATION",)
    assert "glute-bridge" in {a.exercise_id for a in plan.avoid}
    assert "follow-up-recheck-red-flags" in {a.code for a in plan.alerts}


def test_missing_responses_are_never_fine(reference: Evaluator) -> None:
    first = reference.evaluate(patient())
    plan = reference.evaluate(follow(first, glute_bridge={"pain_during": 1}))
    c = change(plan, "glute-bridge")
    assert c.kind == "continued"
    assert "response incomplete (missing: next morning, sessions done" in c.clinician_text
    assert "no response recorded" in change(plan, "dead-bug-eccentric").clinician_text
    assert plan.check_in is None  # nothing new or changed
    # the bad-response count is carried, not reset, when nothing was answered
    first = replace(first, changes=())
    prev = previous_plan_of(first, "CarePlan/1")
    prev = replace(prev, exercises=tuple(replace(e, consecutive_bad=1) for e in prev.exercises))
    plan = reference.evaluate(patient(follow_up=FollowUp(prev, ()), days=7))
    assert change(plan, "glute-bridge").consecutive_bad == 1


def test_new_red_flag_overrides_every_decision(durable: Evaluator) -> None:
    first = durable.evaluate(patient())
    plan = durable.evaluate(follow(first, facts={**MOVEMENT_CONTROL, "rf-fever": True,
                                                 "rf-bladder-dysfunction": True}, all=GOOD))
    assert plan.exercise_held
    assert {p.status for p in plan.exercises} == {"on-hold"}
    assert {c.kind for c in plan.changes} == {"stopped"}
    assert all("suspected-cauda-equina" in c.clinician_text for c in plan.changes)
    assert plan.check_in is None
    # held exercises keep their dose, so they resume where they were
    assert {p.exercise_id: p.dose for p in plan.exercises} == \
        {p.exercise_id: p.dose for p in first.exercises}


def test_on_hold_exercises_resume_when_the_hold_lifts(reference: Evaluator) -> None:
    held = reference.evaluate(patient({**MOVEMENT_CONTROL, "rf-bladder-dysfunction": True}))
    assert held.exercise_held and held.exercises
    plan = reference.evaluate(follow(held))
    assert not plan.exercise_held
    assert {c.kind for c in plan.changes if c.exercise_id in
            {p.exercise_id for p in held.exercises}} == {"continued"}
    assert plan.check_in is not None  # starting is a change for the patient


def test_a_veto_today_stops_a_previous_exercise(reference: Evaluator) -> None:
    first = reference.evaluate(patient())
    assert "dead-bug-eccentric" in {p.exercise_id for p in first.exercises}
    prev = previous_plan_of(first, "CarePlan/1")
    prev = replace(prev, exercises=(*prev.exercises, PreviousExercise(
        "anti-extension-bridge-unstable", None, "proposed")))
    pregnant = {**MOVEMENT_CONTROL, "condition-pregnancy": True}
    plan = reference.evaluate(patient(pregnant, FollowUp(prev, ()), days=7))
    c = change(plan, "anti-extension-bridge-unstable")
    assert c.kind == "stopped" and c.rule_ids
    assert "anti-extension-bridge-unstable" not in {p.exercise_id for p in plan.exercises}


def test_responses_are_checked(reference: Evaluator) -> None:
    first = reference.evaluate(patient())
    prev = previous_plan_of(first, "CarePlan/1")
    ex = prev.exercises[0].exercise_id
    for responses, message in (
        ((ExerciseResponse(ex, pain_during=11),), "pain during must be 0-10"),
        ((ExerciseResponse(ex), ExerciseResponse(ex)), "more than one response"),
        ((ExerciseResponse(ex, sessions_done=-1),), "must not be negative"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            reference.evaluate(patient(follow_up=FollowUp(prev, responses), days=7))
    plan = reference.evaluate(patient(follow_up=FollowUp(prev, (
        ExerciseResponse("cat-camel", pain_during=1),)), days=7))
    assert any("cat-camel" in i.message and i.severity == "warning" for i in plan.issues)


def test_unknown_previous_exercise_is_stopped_not_guessed(reference: Evaluator) -> None:
    prev = PreviousPlan("CarePlan/9", AS_OF, None, (PreviousExercise("no-such", None,
                                                                     "proposed"),))
    plan = reference.evaluate(patient(follow_up=FollowUp(prev, ()), days=7))
    assert change(plan, "no-such").kind == "stopped"


def test_previous_plan_round_trip_carries_state(reference: Evaluator) -> None:
    first = reference.evaluate(patient())
    prev = previous_plan_of(first, "CarePlan/1")
    assert prev.created == AS_OF and prev.ruleset == first.knowledge_base
    assert {e.exercise_id for e in prev.exercises} == {p.exercise_id for p in first.exercises}
    assert all(e.since == AS_OF and e.consecutive_bad == 0 for e in prev.exercises)
    second = reference.evaluate(follow(first, all={**GOOD, "pain_during": 8}))
    prev2 = previous_plan_of(second, "CarePlan/2")
    by_id = {e.exercise_id: e for e in prev2.exercises}
    assert by_id["glute-bridge"].consecutive_bad == 1
    assert by_id["glute-bridge"].since == AS_OF  # same exercise, less dose: same "since"


# --- doses ----------------------------------------------------------------------------------


def test_progression_follows_the_configured_order(kb: KnowledgeBase) -> None:
    ex = kb.exercises["side-plank-knees"]  # hold only: 3 sets, no repetitions
    dose = ExerciseDose.of(ex.dose)
    step = harder_step(kb, ex, dose)
    assert step is not None and step[2] == "hold-seconds" and step[1].hold_seconds == 19
    top = replace(dose, hold_seconds=30)
    assert harder_step(kb, ex, top) == ("side-plank-full", ExerciseDose.of(
        kb.exercises["side-plank-full"].dose), "exercise")
    assert harder_step(kb, ex, top, blocked={"side-plank-full"}) is None


def test_regression_undoes_progression_then_easier_then_floor(kb: KnowledgeBase) -> None:
    ex = kb.exercises["glute-bridge"]
    dose = ExerciseDose.of(ex.dose)
    assert regress_step(kb, ex, replace(dose, repetitions=12))[1:] == (  # type: ignore[index]
        replace(dose, repetitions=10), "repetitions")
    assert regress_step(kb, ex, dose)[0] == "abdominal-bracing-supine"  # type: ignore[index]
    step = regress_step(kb, ex, dose, blocked={"abdominal-bracing-supine"})
    assert step is not None and step[1].repetitions == 8
    floor = replace(dose, repetitions=4, sets=1, hold_seconds=2)
    assert regress_step(kb, ex, floor, blocked={"abdominal-bracing-supine"}) is None


# --- the knowledge-base checks --------------------------------------------------------------


def _add(kb_copy: Path, name: str, text: str) -> None:
    (kb_copy / name).parent.mkdir(exist_ok=True)
    (kb_copy / name).write_text(text)


RESPONSE_FACT = """facts:
  - name: response-pain-during
    type: integer
    scope: exercise-response
    min: 0
    max: 10
    description: pain during
"""


def test_scopes_are_checked(kb_copy: Path) -> None:
    _add(kb_copy, "facts/follow-up.yaml", RESPONSE_FACT)
    _add(kb_copy, "rules/follow-up.yaml", """rules:
  - id: DS-01-WRONG-SCOPE
    title: a patient rule reading a response fact
    stratum: precautions
    when: {fact: response-pain-during, le: 5}
    then: [{safety-net: {text: t}}]
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: weak}]
  - id: DS-02-ADJUST-IN-PATIENT
    title: adjust in a patient rule
    stratum: precautions
    when: {fact: pain-now, le: 5}
    then: [{adjust: {decision: progress, why: w}}]
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: weak}]
  - id: DS-03-ALERT-PER-EXERCISE
    title: an alert from a per-exercise rule
    scope: exercise-response
    stratum: precautions
    when: {fact: response-pain-during, gt: 5}
    then: [{alert: {code: core-red-flags-unanswered, level: caution, detail: d,
                     mitigation: m}}]
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: weak}]
""")
    with pytest.raises(KnowledgeBaseError) as e:
        load_knowledge_base(kb_copy)
    text = str(e.value)
    assert "DS-01-WRONG-SCOPE: reads 'response-pain-during', a per-exercise response fact" in text
    assert "DS-02-ADJUST-IN-PATIENT: adjust is for per-exercise rules" in text
    assert "DS-03-ALERT-PER-EXERCISE: a per-exercise rule (scope exercise-response) may only " \
        "derive findings and adjust; not alert" in text
    assert "rules/follow-up.yaml:" in text


def test_a_looping_regression_chain_is_refused(kb_copy: Path) -> None:
    path = kb_copy / "exercises.yaml"
    text = path.read_text()
    assert "    harder: dead-bug-eccentric\n" in text
    # controlled-pelvic-tilt gets an easier version whose easier version is itself
    path.write_text(text.replace("    harder: dead-bug-eccentric\n",
                                 "    harder: dead-bug-eccentric\n    easier: bird-dog-breathing\n",
                                 1))
    with pytest.raises(KnowledgeBaseError, match="the easier chain loops back to it"):
        load_knowledge_base(kb_copy)


def test_a_follow_up_rule_runs_per_exercise_in_a_starter_kb(kb_copy: Path) -> None:
    """The machinery is data-driven: a new per-exercise rule in another knowledge base."""
    _add(kb_copy, "facts/follow-up.yaml", RESPONSE_FACT)
    _add(kb_copy, "rules/follow-up.yaml", """rules:
  - id: DS-09-TOO-MUCH
    title: regress above 3
    scope: exercise-response
    stratum: precautions
    when: {fact: response-pain-during, gt: 3}
    then: [{adjust: {decision: regress, why: too much, patient: easier now}}]
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: weak}]
""")
    kb = load_knowledge_base(kb_copy)
    for engine in ("durable", "reference"):
        ev = Evaluator(kb, engine)  # type: ignore[arg-type]
        prev = PreviousPlan("CarePlan/1", AS_OF, None, (
            PreviousExercise("dead-bug-eccentric", ExerciseDose.of(
                kb.exercises["dead-bug-eccentric"].dose), "proposed"),))
        pf = PatientFacts.build("Patient/p", AS_OF + timedelta(days=7), [
            *(Fact(k, v) for k, v in CLEAR.items() if k in kb.facts), Fact("pain-now", 3)],
            follow_up=FollowUp(prev, (ExerciseResponse("dead-bug-eccentric", pain_during=4),)))
        plan = ev.evaluate(pf)
        c = change(plan, "dead-bug-eccentric")
        assert (c.kind, c.exercise_id, c.rule_ids) == (
            "regressed", "controlled-pelvic-tilt", ("DS-09-TOO-MUCH",))
        assert c.patient_text.startswith("easier now")


FIRST_SESSION_FIRES_NOTHING = """
import json, sys
from cds import Fact, compile_knowledge_base, load_knowledge_base
from cds._engine import RuleEngine
kb = load_knowledge_base(sys.argv[1])
engine = RuleEngine(compile_knowledge_base(kb, sys.argv[2]))
quiet = [Fact(k, v) for k, v in json.loads(sys.argv[3]).items()]
for _ in range(3):
    assert engine.evaluate(quiet).firings == ()
print("ok")
"""


@pytest.mark.parametrize("scope", ["exercise-response", "patient"])
def test_a_first_session_that_fires_nothing_does_not_abort_the_process(
    kb_copy: Path, scope: str
) -> None:
    """durable-rules 2.0.28 aborts the process (free(): invalid pointer) when a ruleset's
    first session fires nothing; the engine warms each new ruleset up with facts that fire
    a rule (safety rule 9). Run in a child process, since the failure is an abort."""
    import json
    import subprocess
    import sys

    if scope == "patient":  # the starter KB: the ten core answers "no" fire nothing
        root, quiet = str(kb_copy), CLEAR
    else:
        root, quiet = str(bundled_path()), {"response-previous-bad": 0}
    out = subprocess.run(
        [sys.executable, "-c", FIRST_SESSION_FIRES_NOTHING, root, scope, json.dumps(quiet)],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "ok"
