"""Explanations: every output back to the input records, and why-not with three-valued
conditions (a missing fact is unknown and said to be missing, never read as false)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

from cds import Evaluator, KnowledgeBase, PatientFacts, Plan
from cds._explain import (
    Explainer,
    ExplainTargetError,
    ItemExplanation,
    RuleNode,
    trace_condition,
)
from cds._kb_schema import FactTest, NoneOf
from fhir_adapters import read_bundle
from movement_cds._cli import app
from tests.patients import AS_OF, patient_strategy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WHEN = "2026-11-02T09:00:00Z"


def explain(*args: str, engine: str = "reference") -> tuple[int, str, str]:
    """The command in-process; the reference engine unless asked (the durable ruleset's
    first build per process costs seconds; both engines are checked equal elsewhere)."""
    r = CliRunner().invoke(app, ["kb", "explain", "--engine", engine, *args])
    return r.exit_code, r.stdout, r.stderr


def evaluate(ev: Evaluator, example: str) -> tuple[PatientFacts, Plan, Explainer]:
    patient = read_bundle((EXAMPLES / example).read_bytes(), kb=ev.kb, as_of=AS_OF)
    return patient, ev.evaluate(patient), Explainer(ev.kb, ev.compiled)


def rule_ids(rules: tuple[RuleNode, ...]) -> set[str]:
    out: set[str] = set()
    for r in rules:
        out.add(r.rule_id)
        for f in r.facts:
            out |= rule_ids(f.because)
    return out


def test_cauda_equina_alert_reaches_the_observations(durable: Evaluator) -> None:
    patient, plan, ex = evaluate(durable, "cauda-equina.json")
    whole = ex.explain_plan(plan, patient.facts)
    alert = whole.item("alert", "suspected-cauda-equina")
    assert "referral stat" in alert.outcome and "holds all exercise" in alert.outcome
    assert {r.rule_id for r in alert.rules} == {"RF-01-CES"}
    assert set(alert.sources) == {"Observation/obs-rf-bladder-dysfunction",
                                  "Observation/obs-rf-saddle-anaesthesia"}
    facts = {f.name: f for r in alert.rules for f in r.facts}
    assert facts["rf-bladder-dysfunction"].status == "input"
    assert facts["rf-bladder-dysfunction"].value is True
    # a held exercise names what holds it
    held = [i for i in whole.items if i.kind == "exercise"]
    assert held and all("held by suspected-cauda-equina" in i.outcome for i in held)


def test_recommendation_chain_goes_through_derived_facts(durable: Evaluator) -> None:
    patient, plan, ex = evaluate(durable, "example-patient.json")
    whole = ex.explain_plan(plan, patient.facts)
    item = whole.item("exercise", "bird-dog-breathing")
    assert item.outcome == "proposed"
    # recommendation <- classification <- recorded items, and the chain ends at Observations
    assert "CL-01-TBC-MOVEMENT-CONTROL" in rule_ids(item.rules)
    assert "Observation/obs-episode-duration" in item.sources
    assert all(s.startswith(("Observation/", "Patient/", "Condition/")) for s in item.sources)
    # scores computed before the rules (lower side of a bilateral test) are marked as such
    asym = whole.item("alert", "fms-asymmetry")
    statuses = {f.name: f.status for r in asym.rules for f in r.facts}
    assert statuses["fms-active-slr.asymmetry"] == "computed"
    assert "Observation/obs-fms-active-slr" in asym.sources


def test_facts_relied_on_as_absent_are_shown_missing(durable: Evaluator) -> None:
    patient, plan, ex = evaluate(durable, "cauda-equina.json")
    item = ex.explain_plan(plan, patient.facts).item("exercise", "controlled-pelvic-tilt")
    missing = [f for r in item.rules for f in r.facts if f.status == "missing"]
    assert [f.name for f in missing] == ["finding.directional-preference"]
    code, out, _ = explain(str(EXAMPLES / "cauda-equina.json"), "--as-of", WHEN,
                           engine="durable")
    assert code == 0
    assert "finding.directional-preference: MISSING" in out
    assert "finding.directional-preference = false" not in out


def test_veto_and_deferral_are_explained(durable: Evaluator) -> None:
    patient, plan, ex = evaluate(durable, "flexion-precaution.json")
    whole = ex.explain_plan(plan, patient.facts)
    avoid = whole.item("avoid", "knee-to-chest")
    assert "PR-01-NO-FLEXION" in rule_ids(avoid.rules)
    assert avoid.sources == ("Observation/obs-repeated-flexion-response",)
    why = ex.why(plan, "knee-to-chest", patient.facts)
    assert not why.present and "matches a veto of PR-01-NO-FLEXION" in why.answer
    deferred = ex.why(plan, "standing-extension", patient.facts)
    assert "deferred: same purpose" in deferred.answer


def test_why_not_an_exercise_never_recommended(durable: Evaluator) -> None:
    patient, plan, ex = evaluate(durable, "cauda-equina.json")
    why = ex.why(plan, "bird-dog-breathing", patient.facts)
    assert not why.present and "was not recommended" in why.answer
    assert why.verdicts and not any(v.fired for v in why.verdicts)
    first = {v.rule_id: v.first_failing[0] for v in why.verdicts}
    # the rotary-stability route is unknown because the screen was not recorded
    leaf = first["SE-01-MOTOR-CONTROL"]
    assert leaf.truth == "unknown" and leaf.missing() == ("finding.rotary-stability-deficit",)
    upstream = dict(next(v for v in why.verdicts if v.rule_id == "SE-01-MOTOR-CONTROL").upstream)
    mv01 = upstream["finding.rotary-stability-deficit"][0]
    assert mv01.rule_id == "MV-01-ROTARY" and "fms-rotary-stability" in mv01.trace.missing()


def test_why_not_a_rule_with_false_conditions_shows_the_values(durable: Evaluator) -> None:
    patient, plan, ex = evaluate(durable, "no-red-flags.json")
    why = ex.why(plan, "rf-01-ces", patient.facts)  # rule ids are matched case-insensitively
    assert why.kind == "rule" and not why.present
    v = why.verdicts[0]
    assert v.trace.truth == "false"
    leaves = v.first_failing
    assert leaves[0].path == "when.any[0]" and leaves[0].seen == (
        ("rf-bladder-dysfunction", False),)
    code, out, _ = explain(str(EXAMPLES / "no-red-flags.json"), "--as-of", WHEN,
                           "--why-not", "RF-01-CES")
    assert code == 0
    assert out.startswith("RF-01-CES (Suspected cauda equina syndrome) did not fire: "
                          "'rf-bladder-dysfunction is true' is false "
                          "(saw rf-bladder-dysfunction = false)")
    assert "<-- first failing" in out


def test_why_for_what_did_happen(durable: Evaluator) -> None:
    patient, plan, ex = evaluate(durable, "cauda-equina.json")
    why = ex.why(plan, "RF-01-CES", patient.facts)
    assert why.present and why.verdicts[0].fired
    alert = ex.why(plan, "suspected-cauda-equina", patient.facts)
    assert alert.present and isinstance(alert.items[0], ItemExplanation)
    assert "Observation/obs-rf-saddle-anaesthesia" in alert.items[0].sources


def test_unknown_target_lists_near_matches(durable: Evaluator) -> None:
    _, plan, ex = evaluate(durable, "cauda-equina.json")
    with pytest.raises(ExplainTargetError) as err:
        ex.why(plan, "bird-dog")
    assert "bird-dog-breathing" in err.value.near
    code, _, stderr = explain(str(EXAMPLES / "cauda-equina.json"), "--why-not", "RF-01-CSE")
    assert code == 2 and "did you mean RF-01-CES" in stderr


def test_json_output_and_bad_input() -> None:
    code, out, _ = explain(str(EXAMPLES / "cauda-equina.json"), "--as-of", WHEN, "--json")
    assert code == 0
    doc = json.loads(out)
    alert = next(i for i in doc["items"] if i["id"] == "suspected-cauda-equina")
    assert "Observation/obs-rf-bladder-dysfunction" in alert["sources"]
    assert alert["rules"][0]["facts"][0]["sources"]
    code, out, _ = explain(str(EXAMPLES / "cauda-equina.json"), "--as-of", WHEN, "--json",
                           "--why-not", "bird-dog-breathing")
    assert code == 0 and json.loads(out)["rules"][0]["firstFailing"]
    code, out, stderr = explain(str(EXAMPLES / "invalid-other-patient.json"), "--as-of", WHEN)
    assert code == 2 and json.loads(out)["resourceType"] == "OperationOutcome"
    assert "Traceback" not in stderr


def test_not_of_a_missing_fact_is_unknown_never_true() -> None:
    cond = NoneOf.model_validate({"not": {"fact": "pain-now", "gt": 5}})
    assert trace_condition(cond, {}, lambda p: None).truth == "unknown"
    assert trace_condition(cond, {"pain-now": 3}, lambda p: None).truth == "true"
    assert trace_condition(cond, {"pain-now": 7}, lambda p: None).truth == "false"
    missing = FactTest.model_validate({"fact": "pain-now", "missing": True})
    assert trace_condition(missing, {}, lambda p: None).truth == "true"
    assert trace_condition(missing, {"pain-now": 0}, lambda p: None).truth == "false"


def test_trace_agrees_with_the_engine_on_random_patients(
    starter_reference: Evaluator, starter_kb: KnowledgeBase
) -> None:
    """A rule fired exactly when its traced condition is true (the same three-valued reading
    as the compiler), on the values its stratum saw; both evaluators agree on firing."""
    ex = Explainer(starter_kb, starter_reference.compiled)

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(patient_strategy(starter_kb))
    def check(patient: PatientFacts) -> None:
        plan = starter_reference.evaluate(patient)
        fired = {d.rule_id for d in plan.firings}
        for rule in starter_kb.rules:
            v = ex.why(plan, rule.id).verdicts[0]
            assert v.fired == (rule.id in fired)
            assert (v.trace.truth == "true") == v.fired, (rule.id, v.trace.to_json())
            if not v.fired:
                assert v.first_failing, rule.id

    check()


def test_trace_agrees_with_the_engine_on_the_bundled_rules(
    reference: Evaluator, kb: KnowledgeBase
) -> None:
    """The same on the bundled rules (at-least, is-not, missing, parameters)."""
    ex = Explainer(kb, reference.compiled)
    patient_ids = {r.rule_id for r in reference.compiled.rules}

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(patient_strategy(kb))
    def check(patient: PatientFacts) -> None:
        plan = reference.evaluate(patient)
        fired = {d.rule_id for d in plan.firings}
        for rule in kb.rules:
            if rule.id not in patient_ids:
                continue
            v = ex.why(plan, rule.id).verdicts[0]
            assert (v.trace.truth == "true") == (rule.id in fired), (rule.id, v.trace.to_json())

    check()


def test_a_broken_knowledge_base_fails_clearly(kb_copy: Path) -> None:
    (kb_copy / "rules" / "zz-broken.yaml").write_text("rules:\n  - id: [broken\n")
    code, out, stderr = explain(str(EXAMPLES / "no-red-flags.json"), "--as-of", WHEN,
                                "--kb", str(kb_copy))
    assert code == 1 and out == ""
    assert "knowledge base invalid: rules/zz-broken.yaml:3:1: error: not valid YAML" in stderr
    assert "Traceback" not in stderr
