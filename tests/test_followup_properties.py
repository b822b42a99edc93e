"""Properties of the follow-up loop on random previous plans and responses (hypothesis)."""

from __future__ import annotations

import random
from dataclasses import fields, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import (
    Evaluator,
    ExerciseChange,
    ExerciseDose,
    Fact,
    FollowUp,
    KnowledgeBase,
    PatientFacts,
    Plan,
    load_knowledge_base,
)
from cds._facts import Scalar
from cds._revision import harder_versions, regress_step
from knowledge_base import bundled_path
from tests.patients import AS_OF, CLEAR_RED_FLAGS, follow_up_strategy

KB = load_knowledge_base(bundled_path())
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BACKGROUND = st.sampled_from([
    {"pain-now": 6, "odi-score": 30, "episode-duration": 200},
    {"pain-now": 8},
    {"pain-now": 2, "odi-score": 10, "episode-duration": 400},
    {"pain-now": 5, "condition-pregnancy": True},
])
ACCEPTABLE = int(KB.parameter("follow-up-pain-acceptable-max"))


def _patient(fu: FollowUp, background: dict[str, Scalar],
             red_flag: str | None = None) -> PatientFacts:
    values = {**CLEAR_RED_FLAGS, **background}
    if red_flag:
        values[red_flag] = True
    return PatientFacts.build("Patient/p", AS_OF,
                              [Fact(k, v, (f"Observation/{k}",)) for k, v in values.items()],
                              follow_up=fu)


def _change_of(plan: Plan, ex_id: str) -> ExerciseChange:
    hits = [c for c in plan.changes if c.previous_exercise_id == ex_id] or [
        c for c in plan.changes if c.exercise_id == ex_id and c.kind != "new"]
    assert len(hits) == 1, (ex_id, plan.changes)
    return hits[0]


@given(follow_up_strategy(KB), BACKGROUND)
@SETTINGS
def test_follow_up_properties(reference: Evaluator, fu: FollowUp,
                              background: dict[str, Scalar]) -> None:
    plan = reference.evaluate(_patient(fu, background))
    live = [e for e in fu.previous.exercises if e.status != "stopped"]
    # every previous exercise has exactly one change, and every plan exercise is in the catalog
    for e in live:
        _change_of(plan, e.exercise_id)
    assert all(p.exercise_id in KB.exercises for p in plan.exercises)
    assert not {p.exercise_id for p in plan.exercises} & {a.exercise_id for a in plan.avoid}
    for r in fu.responses:
        c = _change_of(plan, r.exercise_id)
        # too much pain during, or worse the next morning: never progressed
        if (r.pain_during is not None and r.pain_during > ACCEPTABLE) \
                or r.next_morning == "worse":
            assert c.kind != "progressed", (r, c)
        # ... and no harder version of it is started as a new exercise
        if (r.pain_during is not None and r.pain_during > ACCEPTABLE) \
                or r.next_morning == "worse" or r.peripheralization:
            started = {c.exercise_id for c in plan.changes if c.kind == "new"}
            assert not started & set(harder_versions(KB, r.exercise_id)), (r, started)
        # peripheralisation: always stopped, and the red flags are to be re-checked
        if r.peripheralization:
            assert c.kind == "stopped", (r, c)
            assert r.exercise_id not in {p.exercise_id for p in plan.exercises
                                         if p.status == "proposed"}
            assert "follow-up-recheck-red-flags" in {a.code for a in plan.alerts}
    for c in plan.changes:
        if c.kind == "progressed":
            assert c.previous_dose is not None and c.dose is not None
            if c.variable == "exercise":  # the harder version, at its default dose
                assert c.previous_exercise_id is not None
                assert KB.exercises[c.previous_exercise_id].harder == c.exercise_id
            else:  # exactly one dose variable changed, and it went up
                diff = [f.name for f in fields(ExerciseDose)
                        if getattr(c.previous_dose, f.name) != getattr(c.dose, f.name)]
                assert diff == [c.variable.replace("-", "_")], (c.previous_dose, c.dose)
                assert getattr(c.dose, diff[0]) > getattr(c.previous_dose, diff[0])
        if c.kind == "regressed" and c.variable != "exercise" and c.previous_dose is not None:
            # (an unreadable previous dose is None: the catalog dose is reduced, and said so)
            assert c.dose is not None
            diff = [f.name for f in fields(ExerciseDose)
                    if getattr(c.previous_dose, f.name) != getattr(c.dose, f.name)]
            assert c.variable is not None and diff == [c.variable.replace("-", "_")]
            assert c.dose.frequency == c.previous_dose.frequency  # frequency kept


@given(follow_up_strategy(KB), BACKGROUND,
       st.sampled_from(["rf-bladder-dysfunction", "rf-saddle-anaesthesia", "rf-foot-drop"]))
@SETTINGS
def test_a_holding_red_flag_holds_everything(reference: Evaluator, fu: FollowUp,
                                             background: dict[str, Scalar],
                                             red_flag: str) -> None:
    plan = reference.evaluate(_patient(fu, background, red_flag))
    assert plan.exercise_held
    assert all(p.status == "on-hold" for p in plan.exercises)
    assert all(c.kind == "stopped" for c in plan.changes)
    assert plan.check_in is None


@given(follow_up_strategy(KB), BACKGROUND, st.randoms(use_true_random=False))
@SETTINGS
def test_same_input_in_any_order_is_the_same_plan(reference: Evaluator, fu: FollowUp,
                                                  background: dict[str, Scalar],
                                                  rnd: random.Random) -> None:
    p = _patient(fu, background)
    responses = list(fu.responses)
    rnd.shuffle(responses)
    facts = list(p.facts)
    rnd.shuffle(facts)
    q = PatientFacts.build(p.subject, p.as_of, facts,
                           follow_up=replace(fu, responses=tuple(responses)))
    assert reference.evaluate(p) == reference.evaluate(q)


@given(follow_up_strategy(KB), BACKGROUND)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_durable_agrees_with_reference_on_follow_ups(
    durable: Evaluator, reference: Evaluator, fu: FollowUp, background: dict[str, Scalar]
) -> None:
    p = _patient(fu, background)
    a, b = durable.prepare(p), reference.prepare(p)
    assert durable.derive_follow_up(a) == reference.derive_follow_up(b)
    assert durable.evaluate(p) == reference.evaluate(p)


@given(st.sampled_from(sorted(KB.exercises)), st.integers(1, 4), st.integers(1, 16),
       st.integers(1, 900), st.sets(st.sampled_from(sorted(KB.exercises)), max_size=4))
@SETTINGS
def test_following_the_regression_chain_never_leaves_the_catalog(
    kb: KnowledgeBase, start: str, sets: int, reps: int, hold: int, blocked: set[str]
) -> None:
    ex = kb.exercises[start]
    dose = ExerciseDose.of(ex.dose)
    dose = replace(dose, sets=sets, repetitions=reps if dose.repetitions else None,
                   hold_seconds=hold if dose.hold_seconds else None)
    for _ in range(500):
        step = regress_step(kb, ex, dose, blocked)
        if step is None:
            return  # the end of the chain: stop
        ex_id, dose, _var = step
        # in the catalog; a move to another exercise never to a blocked one
        assert ex_id in kb.exercises and (ex_id == ex.id or ex_id not in blocked)
        ex = kb.exercises[ex_id]
    raise AssertionError(f"regression from {start} did not terminate")
