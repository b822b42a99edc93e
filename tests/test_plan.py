"""The plan resolver's safety policy, as properties and as examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts, load_knowledge_base
from cds._plan import HOLDING_PRIORITIES
from tests.patients import AS_OF, fact_strategy

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _plan(ev: Evaluator, *facts: Fact) -> object:
    return ev.evaluate(PatientFacts.build("Patient/p", AS_OF, facts))


@pytest.mark.slow  # ~5 s: CI runs it (make test), make test-fast leaves it out
@SETTINGS
@given(data=st.data())
def test_red_flags_always_hold_exercise(
    data: st.DataObject, durable: Evaluator, kb: KnowledgeBase
) -> None:
    plan = durable.evaluate(PatientFacts.build("Patient/p", AS_OF, data.draw(fact_strategy(kb))))
    holding = [a for a in plan.alerts
               if a.referral is not None and a.referral.priority in HOLDING_PRIORITIES]
    for a in holding:
        assert a.holds_exercise, a.code  # a holding referral always holds, whatever the KB says
    if any(a.holds_exercise for a in plan.alerts):
        assert plan.exercise_held
        assert all(e.status == "on-hold" for e in plan.exercises)
    else:
        assert not holding
        assert all(e.status == "proposed" for e in plan.exercises)


@pytest.mark.slow  # ~5 s: CI runs it (make test), make test-fast leaves it out
@SETTINGS
@given(data=st.data())
def test_a_vetoed_exercise_is_never_proposed(
    data: st.DataObject, durable: Evaluator, kb: KnowledgeBase
) -> None:
    plan = durable.evaluate(PatientFacts.build("Patient/p", AS_OF, data.draw(fact_strategy(kb))))
    avoided = {a.exercise_id for a in plan.avoid}
    assert avoided.isdisjoint(e.exercise_id for e in plan.exercises)
    if any(f.name == "repeated-flexion-response" and f.value == "peripheralizes"
           for f in plan.facts):
        flexion = {x.id for x in kb.exercises.values() if "flexion" in x.direction}
        assert flexion <= avoided
        assert all("flexion" not in e.direction for e in plan.exercises)


def test_cauda_equina_is_an_emergency_that_holds_everything(durable: Evaluator) -> None:
    plan = durable.evaluate(PatientFacts.build("Patient/p", AS_OF, [
        Fact("rf-bladder-dysfunction", True, ("Observation/bladder",)),
        Fact("fms-rotary-stability", 1, ("Observation/fms-rs",)),
    ]))
    first = plan.alerts[0]
    assert first.code == "suspected-cauda-equina" and first.level == "emergency"
    assert first.referral is not None and first.referral.priority == "stat"
    assert first.sources == ("Observation/bladder",)
    assert plan.exercises and all(e.status == "on-hold" for e in plan.exercises)


def test_bilateral_leg_symptoms_alone_are_not_cauda_equina(durable: Evaluator) -> None:
    plan = durable.evaluate(PatientFacts.build("Patient/p", AS_OF, [
        Fact("rf-bilateral-leg-symptoms", True, ("Observation/b",)),
        Fact("rf-progressive-weakness", False, ("Observation/w",)),
        Fact("rf-foot-drop", False, ("Observation/f",)),
    ]))
    assert "suspected-cauda-equina" not in [a.code for a in plan.alerts]


def test_recommendation_names_its_rule_and_observations(starter: Evaluator) -> None:
    plan = starter.evaluate(PatientFacts.build("Patient/p", AS_OF, [
        Fact("pattern-lateral-bend.left", 3, ("Observation/lb",)),
        Fact("pattern-lateral-bend.right", 1, ("Observation/lb",)),
        Fact("pain-now", 3, ("Observation/pain",)),
    ]))
    (rot,) = [e for e in plan.exercises if e.exercise_id == "loaded-spinal-rotation"]
    assert rot.rule_ids == ("SE-05-ROTATION",)
    assert rot.sources == ("Observation/lb", "Observation/pain")
    assert rot.evidence and rot.dose.frequency == 3


def test_a_new_flexion_exercise_is_vetoed_without_touching_the_rules(kb_copy: Path) -> None:
    manifest = kb_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("version: 0.1.0", "version: 0.1.0-newex"))
    cat = kb_copy / "exercises.yaml"
    cat.write_text(cat.read_text() + """  - id: seated-forward-bend
    title: Seated forward bend
    purpose: flexion-mobility
    instructions: Sit and bend forward.
    direction: [flexion, rotation]
    load: bodyweight
    surface: stable
    position: sitting
    dose: {sets: 1, repetitions: 5, frequency: 1, period: 1, period-unit: d,
           pain-monitoring: stop if leg pain spreads}
""")
    kb = load_knowledge_base(kb_copy)
    plan = Evaluator(kb).evaluate(PatientFacts.build("Patient/p", AS_OF, [
        Fact("repeated-flexion-response", "peripheralizes", ("Observation/rfr",)),
    ]))
    assert "seated-forward-bend" in {a.exercise_id for a in plan.avoid}


def test_parameters_change_thresholds(kb_copy: Path) -> None:
    manifest = kb_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("version: 0.1.0", "version: 0.1.0-param"))
    strict = load_knowledge_base(kb_copy, {"fms-deficit-max-score": 2})
    p = PatientFacts.build("Patient/p", AS_OF, [Fact("fms-active-slr", 2, ("Observation/a",))])
    proposed = [e.exercise_id for e in Evaluator(strict).evaluate(p).exercises]
    assert "controlled-pelvic-tilt" in proposed
    default = load_knowledge_base(kb_copy)
    assert default.parameter("fms-deficit-max-score") == 1
    # both live in one process: the overridden one is a distinct, traceable ruleset
    assert strict.ruleset_name.startswith(default.ruleset_name + "+p")
    assert Evaluator(default).evaluate(p).exercises == ()


def test_one_exercise_per_purpose_and_programme_limit(kb_copy: Path) -> None:
    manifest = kb_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("version: 0.1.0", "version: 0.1.0-limit"))
    (kb_copy / "rules" / "limit.yaml").write_text("""rules:
  - id: XX-01-MINIMAL
    title: minimal programme when pain is low
    stratum: selection
    when: {fact: pain-now, le: 2}
    then:
      - plan-limit: {max-exercises: 2, why: low pain needs only a minimal programme}
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: weak}]
""")
    ev = Evaluator(load_knowledge_base(kb_copy))
    facts = [Fact("fms-rotary-stability", 1, ("Observation/r",)),   # bird-dog, dead-bug
             Fact("fms-active-slr", 1, ("Observation/a",)),         # pelvic tilt
             Fact("aberrant-movement", True, ("Observation/m",))]   # hinge
    wide = ev.evaluate(PatientFacts.build("Patient/p", AS_OF, [*facts, Fact("pain-now", 5)]))
    # dead-bug and the unstable bridge share a purpose with others only when both proposed
    purposes = [e.purpose for e in wide.exercises]
    assert len(purposes) == len(set(purposes))
    narrow = ev.evaluate(PatientFacts.build("Patient/p", AS_OF, [*facts, Fact("pain-now", 1)]))
    assert len(narrow.exercises) == 2
    assert [e.exercise_id for e in narrow.exercises] == [e.exercise_id for e in wide.exercises][:2]
    assert {d.exercise_id for d in narrow.deferred} == (
        {e.exercise_id for e in wide.exercises} - {e.exercise_id for e in narrow.exercises})
    assert all("minimal programme" in d.reason for d in narrow.deferred)


def test_evidence_backed_recommendations_outrank_heuristics(kb_copy: Path) -> None:
    manifest = kb_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("version: 0.1.0", "version: 0.1.0-tier"))
    (kb_copy / "rules" / "tier.yaml").write_text("""rules:
  - id: XX-01-HEURISTIC
    title: heuristic first by priority
    stratum: selection
    priority: 0
    when: {fact: pain-now, ge: 0}
    then: [{recommend: {exercise: goblet-squat, why: heuristic}}]
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: expert-opinion}]
  - id: XX-02-GRADED
    title: graded recommendation later by priority
    stratum: selection
    priority: 90
    when: {fact: pain-now, ge: 0}
    then: [{recommend: {exercise: hip-hinge-dowel, why: graded}}]
    evidence: [{id: "PMID:2", citation: c, tag: R, strength: strong, grade: A}]
  - id: XX-03-ONE
    title: room for one
    stratum: selection
    when: {fact: pain-now, ge: 0}
    then: [{plan-limit: {max-exercises: 1, why: test}}]
    evidence: [{id: "PMID:3", citation: c, tag: M, strength: weak}]
""")
    plan = Evaluator(load_knowledge_base(kb_copy)).evaluate(
        PatientFacts.build("Patient/p", AS_OF, [Fact("pain-now", 2)]))
    assert [e.exercise_id for e in plan.exercises] == ["hip-hinge-dowel"]
    assert [d.exercise_id for d in plan.deferred] == ["goblet-squat"]
