"""The arithmetic before the rules (cds/_scores.py), and the FMS scoring variants.

Scores: lower side, asymmetry, clearing tests (per side for the shoulder), FMS total,
STarT Back totals. Variants: the bundled knowledge base compiled with ``fms-scoring`` =
``standard`` (the default, ``lbp-specific``, is covered by scenarios/movement-screen.yaml);
a different parameter set is a distinct ruleset, so both live in one process.
"""

from __future__ import annotations

import pytest

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts, Plan, load_knowledge_base
from cds._facts import Scalar
from cds._scores import derive_scores
from knowledge_base import bundled_path
from tests.patients import AS_OF

BILATERAL = {"fms-hurdle-step", "fms-inline-lunge", "fms-shoulder-mobility", "fms-active-slr",
             "fms-rotary-stability", "pattern-lateral-bend", "clear-shoulder", "slr-angle",
             "myotome-strength"}


def scores(*facts: Fact) -> dict[str, object]:
    return {f.name: f.value for f in derive_scores(list(facts), BILATERAL)}


def f(name: str, value: Scalar, src: str | None = None, prelim: bool = False) -> Fact:
    return Fact(name, value, (src or f"Observation/{name}",), prelim)


# --- lower side and asymmetry --------------------------------------------------------------


def test_lower_side_counts_and_asymmetry_is_the_difference() -> None:
    s = scores(f("fms-hurdle-step.left", 3), f("fms-hurdle-step.right", 1))
    assert s["fms-hurdle-step"] == 1 and s["fms-hurdle-step.asymmetry"] == 2


def test_equal_sides_have_asymmetry_zero() -> None:
    s = scores(f("fms-inline-lunge.left", 2), f("fms-inline-lunge.right", 2))
    assert s["fms-inline-lunge"] == 2 and s["fms-inline-lunge.asymmetry"] == 0


def test_a_top_level_value_only_is_the_final_score_without_asymmetry() -> None:
    s = scores(f("fms-active-slr", 2))
    assert s["fms-active-slr"] == 2 and "fms-active-slr.asymmetry" not in s


def test_one_side_only_gives_that_side_as_an_upper_bound_and_no_asymmetry() -> None:
    s = scores(f("fms-rotary-stability.left", 3))
    assert s["fms-rotary-stability"] == 3 and "fms-rotary-stability.asymmetry" not in s


def test_a_top_level_value_and_sides_give_the_lowest_of_all() -> None:
    s = scores(f("fms-hurdle-step", 2), f("fms-hurdle-step.left", 1))
    assert s["fms-hurdle-step"] == 1
    s = scores(f("fms-hurdle-step", 1), f("fms-hurdle-step.left", 3),
               f("fms-hurdle-step.right", 2))
    assert s["fms-hurdle-step"] == 1 and s["fms-hurdle-step.asymmetry"] == 1


def test_decimal_bilateral_facts_take_the_lower_side() -> None:
    s = scores(f("slr-angle.left", 95.0), f("slr-angle.right", 70.5))
    assert s["slr-angle"] == 70.5 and s["slr-angle.asymmetry"] == 24.5


def test_sources_and_preliminary_status_are_carried() -> None:
    out = {x.name: x for x in derive_scores(
        [f("fms-hurdle-step.left", 3, "Observation/h"),
         f("fms-hurdle-step.right", 1, "Observation/h", prelim=True)], BILATERAL)}
    assert out["fms-hurdle-step"].sources == ("Observation/h",)
    assert out["fms-hurdle-step"].preliminary and out["fms-hurdle-step.asymmetry"].preliminary


def test_lbp_provoked_flags_pass_through_untouched() -> None:
    s = scores(f("fms-hurdle-step.left", 2), f("fms-hurdle-step.right", 2),
               f("fms-hurdle-step.lbp-provoked", True))
    assert s["fms-hurdle-step.lbp-provoked"] is True and s["fms-hurdle-step"] == 2


# --- clearing tests ------------------------------------------------------------------------


def test_painful_extension_clearing_scores_the_push_up_0() -> None:
    out = {x.name: x for x in derive_scores(
        [f("fms-trunk-stability-pushup", 3, "Observation/tspu"),
         f("clear-spinal-extension", True, "Observation/ext")], BILATERAL)}
    assert out["fms-trunk-stability-pushup"].value == 0
    assert out["fms-trunk-stability-pushup"].sources == ("Observation/ext", "Observation/tspu")


def test_painful_extension_clearing_scores_0_even_without_a_push_up_score() -> None:
    assert scores(f("clear-spinal-extension", True))["fms-trunk-stability-pushup"] == 0


def test_painless_clearing_changes_nothing() -> None:
    s = scores(f("fms-trunk-stability-pushup", 3), f("clear-spinal-extension", False),
               f("fms-rotary-stability.left", 2), f("fms-rotary-stability.right", 3),
               f("clear-spinal-flexion", False))
    assert s["fms-trunk-stability-pushup"] == 3 and s["fms-rotary-stability"] == 2


def test_painful_flexion_clearing_scores_the_whole_rotary_test_0() -> None:
    s = scores(f("fms-rotary-stability.left", 3), f("fms-rotary-stability.right", 2),
               f("clear-spinal-flexion", True))
    assert s["fms-rotary-stability"] == 0
    assert s["fms-rotary-stability.left"] == 0 and s["fms-rotary-stability.right"] == 0


def test_painful_flexion_clearing_with_a_top_level_rotary_score() -> None:
    s = scores(f("fms-rotary-stability", 3), f("clear-spinal-flexion", True))
    assert s["fms-rotary-stability"] == 0 and "fms-rotary-stability.left" not in s


def test_shoulder_clearing_is_per_side() -> None:
    s = scores(f("fms-shoulder-mobility.left", 3), f("fms-shoulder-mobility.right", 2),
               f("clear-shoulder.left", True), f("clear-shoulder.right", False))
    assert s["fms-shoulder-mobility.left"] == 0 and s["fms-shoulder-mobility.right"] == 2
    assert s["fms-shoulder-mobility"] == 0 and s["fms-shoulder-mobility.asymmetry"] == 2
    # a boolean bilateral test: painful on either side is painful; no asymmetry
    assert s["clear-shoulder"] is True and "clear-shoulder.asymmetry" not in s


def test_shoulder_clearing_on_one_side_with_a_top_level_shoulder_score() -> None:
    # the final score becomes 0 even though the other side was never recorded
    s = scores(f("fms-shoulder-mobility", 3), f("clear-shoulder.right", True))
    assert s["fms-shoulder-mobility"] == 0 and s["fms-shoulder-mobility.right"] == 0
    assert "fms-shoulder-mobility.left" not in s


def test_shoulder_clearing_without_a_side_zeroes_the_final_score_only() -> None:
    # which side hurt is unknown: the sides stay as recorded and no asymmetry is made up
    s = scores(f("fms-shoulder-mobility.left", 3), f("fms-shoulder-mobility.right", 2),
               f("clear-shoulder", True))
    assert s["fms-shoulder-mobility"] == 0
    assert s["fms-shoulder-mobility.left"] == 3 and s["fms-shoulder-mobility.right"] == 2
    assert "fms-shoulder-mobility.asymmetry" not in s


def test_painless_shoulder_clearing_on_both_sides_is_false() -> None:
    s = scores(f("clear-shoulder.left", False), f("clear-shoulder.right", False))
    assert s["clear-shoulder"] is False


def test_painless_shoulder_clearing_on_one_side_only_is_unknown() -> None:
    assert "clear-shoulder" not in scores(f("clear-shoulder.left", False))


# --- FMS total -----------------------------------------------------------------------------


def _seven(score: int = 2, **override: int) -> list[Fact]:
    """The seven FMS tests, every side at ``score``; ``override`` by fact name."""
    values = {"fms-deep-squat": score, "fms-trunk-stability-pushup": score}
    for t in ("fms-hurdle-step", "fms-inline-lunge", "fms-shoulder-mobility", "fms-active-slr",
              "fms-rotary-stability"):
        values |= {f"{t}.left": score, f"{t}.right": score}
    return [f(k, v) for k, v in (values | override).items()]


def test_fms_total_is_the_sum_of_the_seven_final_scores() -> None:
    assert scores(*_seven(2))["fms-total"] == 14
    assert scores(*_seven(3))["fms-total"] == 21


def test_fms_total_uses_the_lower_side_and_clearing_zeros() -> None:
    facts = _seven(3, **{"fms-hurdle-step.right": 1})
    facts.append(f("clear-spinal-extension", True))
    assert scores(*facts)["fms-total"] == 21 - 2 - 3


def test_fms_total_is_not_computed_when_a_side_is_missing() -> None:
    facts = [x for x in _seven(2) if x.name != "fms-active-slr.right"]
    assert "fms-total" not in scores(*facts)


def test_fms_total_counts_a_single_side_at_0_since_0_is_the_floor() -> None:
    facts = [x for x in _seven(2) if x.name != "fms-active-slr.right"]
    facts = [x for x in facts if x.name != "fms-active-slr.left"] + [f("fms-active-slr.left", 0)]
    assert scores(*facts)["fms-total"] == 12


def test_fms_total_is_computed_with_a_top_level_bilateral_score() -> None:
    facts = [x for x in _seven(2) if not x.name.startswith("fms-active-slr")]
    facts.append(f("fms-active-slr", 1))
    assert scores(*facts)["fms-total"] == 13


def test_fms_total_with_a_clearing_zero_and_the_parent_unrecorded() -> None:
    facts = [x for x in _seven(2) if not x.name.startswith("fms-shoulder-mobility")]
    facts.append(f("clear-shoulder.left", True))
    assert scores(*facts)["fms-total"] == 12


def test_a_sent_fms_total_wins() -> None:
    assert scores(*_seven(2), f("fms-total", 17))["fms-total"] == 17


def test_fms_total_is_not_computed_from_six_tests() -> None:
    facts = [x for x in _seven(2) if x.name != "fms-deep-squat"]
    assert "fms-total" not in scores(*facts)


# --- STarT Back ----------------------------------------------------------------------------


def _items(*agree: int) -> list[Fact]:
    return [f(f"startback-item-{i}", i in agree) for i in range(1, 10)]


def test_startback_totals_from_items() -> None:
    s = scores(*_items(1, 2, 5, 6, 9))
    assert s["startback-total"] == 5 and s["startback-psychosocial"] == 3


def test_startback_sent_totals_win() -> None:
    s = scores(*_items(1, 2, 5, 6, 9), f("startback-total", 7))
    assert s["startback-total"] == 7 and s["startback-psychosocial"] == 3


def test_startback_totals_need_all_nine_items() -> None:
    s = scores(*_items(5, 6, 7, 8)[:-1])
    assert "startback-total" not in s and "startback-psychosocial" not in s


# --- the two FMS scoring variants ----------------------------------------------------------


@pytest.fixture(scope="module")
def standard() -> KnowledgeBase:
    return load_knowledge_base(bundled_path(), {"fms-scoring": "standard"})


CLEAR = [f(n, False) for n in (
    "rf-saddle-anaesthesia", "rf-bladder-dysfunction", "rf-bowel-dysfunction",
    "rf-bilateral-leg-symptoms", "rf-progressive-weakness", "rf-foot-drop", "rf-fever",
    "rf-cancer-history", "rf-significant-trauma", "rf-unexplained-weight-loss")]


def plan_of(kb: KnowledgeBase, *facts: Fact) -> Plan:
    return Evaluator(kb, "reference").evaluate(PatientFacts.build("Patient/p", AS_OF,
                                                                  [*CLEAR, *facts]))


def fired(plan: Plan) -> set[str]:
    return {d.rule_id for d in plan.firings}


def test_the_default_scoring_is_lbp_specific(kb: KnowledgeBase, standard: KnowledgeBase) -> None:
    assert kb.parameter("fms-scoring") == "lbp-specific"
    assert standard.parameter("fms-scoring") == "standard"
    assert standard.ruleset_name.startswith(kb.ruleset_name + "+p")


@pytest.mark.parametrize("engine", ["durable", "reference"])
def test_a_0_from_other_pain_is_a_deficit_only_under_standard_scoring(
    kb: KnowledgeBase, standard: KnowledgeBase, engine: str
) -> None:
    facts = [f("fms-trunk-stability-pushup", 0),
             f("fms-trunk-stability-pushup.lbp-provoked", False)]
    lbp = Evaluator(kb, engine).evaluate(  # type: ignore[arg-type]
        PatientFacts.build("Patient/p", AS_OF, [*CLEAR, *facts]))
    std = Evaluator(standard, engine).evaluate(  # type: ignore[arg-type]
        PatientFacts.build("Patient/p", AS_OF, [*CLEAR, *facts]))
    assert "MV-02-TSPU" not in fired(lbp) and "MV-19-PAIN-NOT-LBP" in fired(lbp)
    assert "dead-bug-eccentric" not in {e.exercise_id for e in lbp.exercises}
    assert {"MV-02-TSPU", "MV-19-PAIN-NOT-LBP", "SE-02-ANTI-EXTENSION"} <= fired(std)
    assert "dead-bug-eccentric" in {e.exercise_id for e in std.exercises}
    # the pain was not back pain: no direction is blocked under either scoring
    assert "MV-09-EXTENSION-PAINFUL" not in fired(lbp) | fired(std)


def test_standard_scoring_reads_a_0_of_unknown_source_as_back_pain(
    kb: KnowledgeBase, standard: KnowledgeBase
) -> None:
    facts = [f("fms-trunk-stability-pushup", 0)]
    std = plan_of(standard, *facts)
    assert {"MV-02-TSPU", "MV-09-EXTENSION-PAINFUL", "MV-10-NO-LOADED-EXTENSION"} <= fired(std)
    assert "prone-press-up" in {a.exercise_id for a in std.avoid}
    lbp = plan_of(kb, *facts)
    assert fired(lbp) & {"MV-02-TSPU", "MV-09-EXTENSION-PAINFUL"} == set()
    assert "MV-19-PAIN-NOT-LBP" in fired(lbp)


def test_a_test_that_increased_back_pain_is_a_finding_under_both(
    kb: KnowledgeBase, standard: KnowledgeBase
) -> None:
    facts = [f("pattern-lateral-bend", 0), f("pattern-lateral-bend.lbp-provoked", True),
             f("pain-now", 2)]
    for k in (kb, standard):
        p = plan_of(k, *facts)
        assert {"MV-06-LATERAL", "MV-14-LATERAL-BEND-PAINFUL", "SE-13-LATERAL-CONTROL"} <= fired(p)
        assert "MV-19-PAIN-NOT-LBP" not in fired(p)
        assert "loaded-spinal-rotation" not in {e.exercise_id for e in p.exercises}


def test_asymmetry_with_a_side_at_0_counts_only_under_standard_scoring(
    kb: KnowledgeBase, standard: KnowledgeBase
) -> None:
    facts = [f("fms-hurdle-step.left", 0), f("fms-hurdle-step.right", 3),
             f("fms-hurdle-step.lbp-provoked", False)]
    lbp, std = plan_of(kb, *facts), plan_of(standard, *facts)
    assert fired(lbp) & {"MV-04-SINGLE-LEG", "MV-08-POOR-BALANCE", "MV-17-ASYMMETRY"} == set()
    assert {"MV-04-SINGLE-LEG", "MV-08-POOR-BALANCE", "MV-17-ASYMMETRY"} <= fired(std)
    # a painful hurdle step never leads to the banded single-leg deadlift
    assert "SE-08-SINGLE-LEG-DEADLIFT" not in fired(std)


def test_painful_spinal_clearing_counts_as_back_pain_under_both(
    kb: KnowledgeBase, standard: KnowledgeBase
) -> None:
    for k in (kb, standard):
        p = plan_of(k, f("clear-spinal-extension", True), f("fms-trunk-stability-pushup", 3))
        assert {"MV-02-TSPU", "MV-09-EXTENSION-PAINFUL"} <= fired(p)
        assert "MV-19-PAIN-NOT-LBP" not in fired(p)


def test_the_fms_total_never_chooses_exercise(kb: KnowledgeBase) -> None:
    base = [f("fms-hurdle-step.left", 3), f("fms-hurdle-step.right", 3), f("pain-now", 2)]
    low, high = plan_of(kb, *base, f("fms-total", 9)), plan_of(kb, *base, f("fms-total", 20))
    assert "MV-18-FMS-TOTAL" in fired(low) and "MV-18-FMS-TOTAL" not in fired(high)
    assert [e.exercise_id for e in low.exercises] == [e.exercise_id for e in high.exercises]
    assert low.avoid == high.avoid
