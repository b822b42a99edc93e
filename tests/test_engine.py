"""The compiler, the durable-rules runner and the reference evaluator."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import (
    EngineError,
    Evaluator,
    Fact,
    KnowledgeBase,
    KnowledgeBaseError,
    PatientFacts,
    compile_knowledge_base,
    load_knowledge_base,
)
from cds._compiler import Literal, _dnf
from cds._kb_schema import Rule
from tests.patients import AS_OF, fact_strategy

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _when(cond: object) -> list[tuple[Literal, ...]]:
    rule = Rule.model_validate({
        "id": "XX-01", "title": "t", "stratum": "s", "when": cond,
        "then": [{"finding": {"name": "f"}}],
        "evidence": [{"id": "PMID:1", "citation": "c", "tag": "M", "strength": "weak"}],
    })
    return _dnf(rule.when, False, lambda name: 7)


def test_not_is_three_valued_and_keeps_presence() -> None:
    assert _when({"not": {"fact": "pain-now", "gt": 5}}) == [(Literal("pain-now", "le", 5.0),)]
    assert _when({"not": {"fact": "x", "present": True}}) == [(Literal("x", "missing", None),)]


def test_de_morgan_and_distribution() -> None:
    terms = _when({"not": {"any": [{"fact": "a", "is": True},
                                   {"all": [{"fact": "b", "lt": 2}, {"fact": "c", "in": ["x"]}]}]}})
    assert terms == [
        (Literal("a", "is-not", True), Literal("b", "ge", 2.0)),
        (Literal("a", "is-not", True), Literal("c", "not-in", ["x"])),
    ]


def test_parameters_are_resolved_at_compile_time(starter_kb: KnowledgeBase) -> None:
    compiled = compile_knowledge_base(starter_kb)
    rule = next(r for r in compiled.rules if r.rule_id == "MV-01-ROTARY")
    assert rule.terms == ((Literal("fms-rotary-stability", "le", 1),),)


def _patient(*facts: Fact) -> PatientFacts:
    return PatientFacts.build("Patient/p", AS_OF, facts)


def test_missing_is_never_normal(starter: Evaluator, starter_reference: Evaluator) -> None:
    # nothing answered: the gap alert fires, no emergency, nothing proposed from thin air
    for ev in (starter, starter_reference):
        plan = ev.evaluate(_patient())
        assert [a.code for a in plan.alerts] == ["core-red-flags-unanswered"]
        assert plan.data_gaps[0].missing  # every core item named
        assert len(plan.data_gaps[0].missing) == 10


def test_durable_and_reference_agree_on_a_busy_patient(
    starter: Evaluator, starter_reference: Evaluator
) -> None:
    durable, reference = starter, starter_reference
    p = durable.prepare(_patient(
        Fact("rf-saddle-anaesthesia", True, ("Observation/1",)),
        Fact("fms-rotary-stability.left", 1, ("Observation/2",)),
        Fact("fms-rotary-stability.right", 3, ("Observation/2",)),
        Fact("repeated-flexion-response", "peripheralizes", ("Observation/3",)),
        Fact("pattern-lateral-bend", 1, ("Observation/4",)),
        Fact("pain-now", 4, ("Observation/5",)),
    ))
    a, b = durable.derive(p), reference.derive(p)
    assert a == b
    assert "alert.suspected-cauda-equina" in a.derived
    assert a.derived["recommend.loaded-spinal-rotation"].derivations[0].used == (
        "finding.lateral-bend-deficit", "pain-now")


def test_no_background_threads_and_sessions_are_deleted(durable: Evaluator) -> None:
    before = threading.active_count()
    p = durable.prepare(_patient(Fact("rf-fever", False, ("Observation/1",))))
    # 1,500 sessions made and deleted (failing ones: test_review_engine.py)
    for _ in range(1500):
        durable.derive(p)
    assert threading.active_count() == before


def _write_conflicting_kb(kb_copy: Path, version: str) -> KnowledgeBase:
    manifest = kb_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("version: 0.1.0", f"version: {version}"))
    facts = kb_copy / "facts.yaml"
    facts.write_text(facts.read_text() + """  - name: finding.severity
    type: code
    description: test-only finding with two values
    derived: true
    codes: [low, high]
""")
    rules = kb_copy / "rules" / "conflict.yaml"
    rules.write_text("""rules:
  - id: XX-01
    title: one value
    stratum: classification
    when: {fact: pain-now, ge: 0}
    then: [{classification: {name: finding.severity, value: low}}]
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: weak}]
  - id: XX-02
    title: another value
    stratum: classification
    when: {fact: pain-now, ge: 5}
    then: [{classification: {name: finding.severity, value: high}}]
    evidence: [{id: "PMID:1", citation: c, tag: M, strength: weak}]
""")
    return load_knowledge_base(kb_copy)


def test_errors_inside_actions_fail_the_evaluation(kb_copy: Path) -> None:
    kb = _write_conflicting_kb(kb_copy, "0.1.0-conflict")
    for engine in ("durable", "reference"):
        ev = Evaluator(kb, engine)  # type: ignore[arg-type]
        ev.evaluate(_patient(Fact("pain-now", 2, ("Observation/1",))))  # one value: fine
        with pytest.raises(EngineError, match=r"rules disagree on 'finding\.severity'"):
            ev.evaluate(_patient(Fact("pain-now", 7, ("Observation/1",))))
    # and the engine is usable afterwards (its session was cleaned up)
    plan = Evaluator(kb).evaluate(_patient(Fact("pain-now", 1, ("Observation/1",))))
    assert plan.kb_version == "0.1.0-conflict"


def test_a_changed_knowledge_base_needs_a_new_version(
    kb_copy: Path, starter_kb: KnowledgeBase
) -> None:
    kb = starter_kb
    Evaluator(kb)
    rules = kb_copy / "rules" / "classification.yaml"
    text = rules.read_text()
    assert "priority: 5" in text
    rules.write_text(text.replace("priority: 5", "priority: 6"))
    changed = load_knowledge_base(kb_copy)
    assert changed.ruleset_name == kb.ruleset_name
    with pytest.raises(KnowledgeBaseError, match="new version"):
        Evaluator(changed)


def test_unknown_fact_is_refused_not_ignored(durable: Evaluator) -> None:
    with pytest.raises(ValueError, match="unknown fact 'made-up'"):
        durable.derive(_patient(Fact("made-up", True, ())))


@SETTINGS
@given(data=st.data())
def test_durable_agrees_with_reference_on_random_patients(
    data: st.DataObject, durable: Evaluator, reference: Evaluator, kb: KnowledgeBase
) -> None:
    facts = data.draw(fact_strategy(kb))
    p = durable.prepare(_patient(*facts))
    result = durable.derive(p)
    assert result == reference.derive(p)
    # each list of firings in Derivation order (rule id, facts used, facts absent), each
    # firing once: both engines collect them the same way (FiringLog), so checked here
    for firings in (result.firings, *(d.derivations for d in result.derived.values())):
        keys = [(f.rule_id, f.used, f.absent) for f in firings]
        assert keys == sorted(set(keys)), keys


@SETTINGS
@given(data=st.data(), seed=st.integers())
def test_fact_order_never_changes_the_result(
    data: st.DataObject, seed: int, durable: Evaluator, kb: KnowledgeBase
) -> None:
    facts = data.draw(fact_strategy(kb))
    shuffled = list(facts)
    random.Random(seed).shuffle(shuffled)
    a = durable.evaluate(PatientFacts.build("Patient/p", AS_OF, facts))
    b = durable.evaluate(PatientFacts.build("Patient/p", AS_OF, shuffled))
    assert a == b


def test_at_least_expands_to_combinations_and_negates_three_valued() -> None:
    cond = {"at-least": 2, "of": [{"fact": "a", "is": True}, {"fact": "b", "is": True},
                                  {"fact": "c", "is": True}]}
    assert _when(cond) == [
        (Literal("a", "is", True), Literal("b", "is", True)),
        (Literal("a", "is", True), Literal("c", "is", True)),
        (Literal("b", "is", True), Literal("c", "is", True)),
    ]
    # definitely fewer than 2 true: at least 2 definitely false (unknowns do not count)
    assert _when({"not": cond}) == [
        (Literal("a", "is-not", True), Literal("b", "is-not", True)),
        (Literal("a", "is-not", True), Literal("c", "is-not", True)),
        (Literal("b", "is-not", True), Literal("c", "is-not", True)),
    ]


def test_at_least_must_be_possible() -> None:
    with pytest.raises(ValueError, match="between 1 and 2"):
        _when({"at-least": 3, "of": [{"fact": "a", "is": True}, {"fact": "b", "is": True}]})


def _alive(ev: Evaluator, sid: str) -> bool:
    """Whether durable-rules still holds the session ``sid`` of ``ev``'s ruleset."""
    import durable_rules_engine

    try:
        durable_rules_engine.get_facts(ev._engine._handle, sid)  # type: ignore[union-attr]
    except Exception:
        return False
    return True


def _next_sid() -> str:
    """The session id the engine's next evaluation takes (the counter is moved past it)."""
    from cds import _engine

    return f"s{next(_engine._SIDS) + 1}"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_evaluation_deletes_its_session_and_the_next_patient_starts_clean(
    data: st.DataObject, durable: Evaluator, reference: Evaluator, kb: KnowledgeBase
) -> None:
    """Safety rule 3: each evaluation runs in a new session, deleted when it ends (facts
    are never retracted: durable-rules 2.0.28 writes outside its memory when a fact a
    completed action matched is retracted; see ``test_the_engine_never_retracts_a_fact``)."""
    first = durable.prepare(_patient(*data.draw(fact_strategy(kb))))
    second = durable.prepare(_patient(*data.draw(fact_strategy(kb))))
    sid = _next_sid()
    durable.derive(first)
    assert not _alive(durable, sid)
    assert durable.derive(second) == reference.derive(second)
    assert durable.derive(durable.prepare(_patient())) == reference.derive(
        reference.prepare(_patient()))


def test_the_engine_never_retracts_a_fact() -> None:
    """durable-rules 2.0.28 leaves a completed action's frame in the location lists of the
    facts it matched; retracting such a fact walks the dead frame, and
    ``deleteMessageFromFrame`` reads past the frame's 16 message slots (it counts entries it
    has cleared itself), out of its pool into the next heap block, and zeroes two words it
    takes there for a match. Valgrind reports it ("Conditional jump or move depends on
    uninitialised value(s)" in ``deleteMessageFromFrame``, from ``retract_facts``); in the
    test suite it corrupted a pydantic-core validator, and a later garbage collection
    crashed (docs/architecture.md, "Memory safety of the C engine"). So the engine deletes
    sessions and calls none of durable's retract functions: this fails if one comes back."""
    import ast

    import cds._engine

    tree = ast.parse(Path(cds._engine.__file__).read_text(encoding="utf-8"))
    called = {node.func.attr for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "_c"}
    assert "delete_state" in called and "assert_facts" in called  # the scan sees the calls
    assert not {name for name in called if name.startswith("retract")}, called


def test_a_failed_evaluation_deletes_its_session(kb_copy: Path) -> None:
    kb = _write_conflicting_kb(kb_copy, "0.1.0-session")
    ev = Evaluator(kb)
    ev.evaluate(_patient(Fact("pain-now", 2, ("Observation/1",))))
    sid = _next_sid()
    with pytest.raises(EngineError, match="rules disagree"):
        ev.evaluate(_patient(Fact("pain-now", 7, ("Observation/1",))))
    assert not _alive(ev, sid)
    plan = ev.evaluate(_patient(Fact("pain-now", 1, ("Observation/1",))))
    assert plan.kb_version == "0.1.0-session"
