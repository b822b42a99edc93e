"""Hypothesis strategies for random patients drawn from the fact catalog's value ranges."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from cds import Fact, KnowledgeBase, PatientFacts

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _value(defn: Any) -> st.SearchStrategy[Any]:
    if defn.type == "boolean":
        return st.booleans()
    if defn.type == "code":
        return st.sampled_from(defn.codes)
    lo = int(defn.min if defn.min is not None else 0)
    hi = int(defn.max if defn.max is not None else 100)
    if defn.type == "integer":
        return st.integers(lo, hi)
    return st.integers(lo, hi).map(float)


# computed from a follow-up's responses, not recorded: no FHIR form of their own
FOLLOW_UP_COMPUTED = frozenset({"followup-adherence", "followup-peripheralization"})


def fact_strategy(kb: KnowledgeBase, *, recorded_only: bool = False
                  ) -> st.SearchStrategy[list[Fact]]:
    """A random subset of input facts with valid values; bilateral ones sometimes per side.

    Red-flag items are weighted towards 'answered false' so that plans are often not held.
    ``recorded_only``: leave out the facts computed from follow-up responses (for patients
    written as FHIR Bundles).
    """
    items: list[st.SearchStrategy[list[Fact]]] = []
    for name, defn in sorted(kb.facts.items()):
        if defn.derived or defn.scope != "patient":  # response facts come per exercise
            continue
        if recorded_only and (name in FOLLOW_UP_COMPUTED or (
                defn.coding is None and name not in ("age", "sex"))):
            continue  # set by the FHIR reader from other input (age-oldest-possible, ...)
        val = _value(defn)
        if name.startswith("rf-"):
            val = st.sampled_from([False, False, False, False, True])
        src = (f"Observation/{name}",)
        one = val.map(lambda v, n=name, s=src: [Fact(n, v, s)])
        if defn.bilateral:
            sides = st.tuples(val, val).map(
                lambda lr, n=name: [Fact(f"{n}.left", lr[0], (f"Observation/{n}",)),
                                    Fact(f"{n}.right", lr[1], (f"Observation/{n}",))]
            )
            one = st.one_of(one, sides)
        items.append(st.one_of(st.just([]), one))
    return st.tuples(*items).map(lambda parts: [f for p in parts for f in p])


def patient_strategy(kb: KnowledgeBase) -> st.SearchStrategy[PatientFacts]:
    return fact_strategy(kb).map(lambda fs: PatientFacts.build("Patient/p", AS_OF, fs))


# --- follow-up (issue 6) -----------------------------------------------------------------

CLEAR_RED_FLAGS = {f"rf-{n}": False for n in (
    "saddle-anaesthesia", "bladder-dysfunction", "bowel-dysfunction", "bilateral-leg-symptoms",
    "progressive-weakness", "foot-drop", "fever", "cancer-history", "significant-trauma",
    "unexplained-weight-loss")}


def response_strategy(exercise_id: str) -> st.SearchStrategy[Any]:
    """A random response to one exercise; every item may be missing."""
    from cds import ExerciseResponse

    # a good response with one to three items changed at random (or left out), so that the
    # rules' boundaries are exercised: progressions happen, and so do bad responses
    rating = st.sampled_from(["better", "same", "worse"])
    good: dict[str, Any] = {"pain_during": 2, "next_morning": "same", "sessions_done": 6,
                            "sessions_prescribed": 6, "perceived_effect": "better",
                            "peripheralization": False}
    other: dict[str, st.SearchStrategy[Any]] = {
        "pain_during": st.one_of(st.integers(0, 10), st.sampled_from([5, 6, 7])),
        "next_morning": rating,
        "sessions_done": st.integers(0, 8), "sessions_prescribed": st.integers(0, 8),
        "perceived_effect": rating, "peripheralization": st.booleans()}
    changes = st.dictionaries(st.sampled_from(sorted(good)), st.none(), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries(
            {k: st.one_of(other[k], other[k], st.none()) for k in keys}))
    return changes.map(lambda ch: ExerciseResponse(
        exercise_id, **{**good, **ch}, sources=(f"Observation/r-{exercise_id}",)))


def follow_up_strategy(kb: KnowledgeBase) -> st.SearchStrategy[Any]:
    """A random previous plan (catalog exercises at random doses, times and bad-response
    counts) with random responses to some of its exercises."""
    from dataclasses import replace
    from datetime import timedelta

    from cds import ExerciseDose, FollowUp, PreviousExercise, PreviousPlan

    ids = sorted(kb.exercises)

    @st.composite
    def build(draw: st.DrawFn) -> FollowUp:
        chosen = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=6, unique=True))
        exercises = []
        for ex_id in chosen:
            dose = ExerciseDose.of(kb.exercises[ex_id].dose)
            dose = replace(
                dose,
                sets=draw(st.integers(1, 4)) if dose.sets else dose.sets,
                repetitions=draw(st.integers(1, 16)) if dose.repetitions else None,
                hold_seconds=draw(st.integers(1, 900)) if dose.hold_seconds else None)
            exercises.append(PreviousExercise(
                ex_id, draw(st.sampled_from([dose, dose, None])),
                draw(st.sampled_from(["proposed", "proposed", "on-hold"])),
                AS_OF - timedelta(days=draw(st.integers(0, 30))), draw(st.integers(0, 3))))
        responses = [draw(response_strategy(e)) for e in chosen if draw(st.booleans())]
        avoided = tuple(draw(st.lists(st.sampled_from(ids), max_size=2, unique=True)))
        prev = PreviousPlan("CarePlan/prev", AS_OF - timedelta(days=7), None,
                            tuple(exercises), avoided)
        return FollowUp(prev, tuple(responses))

    return build()
