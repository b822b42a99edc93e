"""Multi-visit trajectories (knowledge_base/trajectories/*.yaml) on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds import Evaluator, KnowledgeBase, KnowledgeBaseError
from cds._trajectories import (
    Trajectory,
    load_trajectories,
    run_trajectories,
    run_trajectory,
)
from knowledge_base import bundled_path


def test_every_trajectory_passes_on_both_engines_and_they_agree(
    durable: Evaluator, reference: Evaluator
) -> None:
    a = run_trajectories(durable, bundled_path())
    b = run_trajectories(reference, bundled_path())
    assert len(a) >= 10
    for out in a + b:
        assert out.passed, (out.id, out.file, out.line, out.error, out.failures)
    for x, y in zip(a, b, strict=True):
        assert len(x.plans) == len(x.trajectory.visits) >= 2
        for p, q in zip(x.plans, y.plans, strict=True):
            assert p == q, x.id


def test_the_required_courses_are_specified() -> None:
    ids = {t.id for t, _, _ in load_trajectories(bundled_path())}
    assert {
        "good-responses-progress-one-variable-twice",
        "hold-then-regress-then-swap",
        "peripheralisation-stops-the-exercise-and-rechecks-red-flags",
        "new-red-flag-at-visit-three-holds-everything",
        "poor-adherence-gives-a-minimal-programme",
        "missing-responses-continue-and-are-never-progressed",
    } <= ids


def test_every_follow_up_rule_is_covered_by_a_trajectory(kb: KnowledgeBase) -> None:
    covered = {r for t, _, _ in load_trajectories(bundled_path()) for r in t.covers}
    follow_up = {r.id for r in kb.rules if r.id.startswith("DS-")}
    assert follow_up and follow_up <= covered
    assert covered <= {r.id for r in kb.rules}


def test_a_wrong_expectation_fails_with_what_expected_and_got(reference: Evaluator) -> None:
    tr, rel, line = next(t for t in load_trajectories(bundled_path())
                         if t[0].id == "good-responses-progress-one-variable-twice")
    visits = list(tr.visits)
    wrong = visits[1].expect.model_copy(update={
        "variables": {"glute-bridge": "sets"}, "check_in": False})
    visits[1] = visits[1].model_copy(update={"expect": wrong})
    out = run_trajectory(reference, tr.model_copy(update={"visits": visits}), rel, line)
    assert not out.passed
    assert out.failures == [
        "visit 2: variable changed for glute-bridge: expected sets, got repetitions",
        "visit 2: check-in proposed: expected False, got True",
    ]
    assert out.file == "trajectories/progression.yaml" and out.line


def test_bad_trajectory_files_are_reported_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "trajectories").mkdir()
    (tmp_path / "trajectories" / "x.yaml").write_text("""trajectories:
  - id: one
    visits: [{facts: {}}, {responses: {a: {pain-during: 11}}}]
  - id: two
    visits: [{facts: {}}, {}]
  - id: two
    visits: [{facts: {}}, {expect: {changes: {a: grown}}}]
""")
    with pytest.raises(KnowledgeBaseError) as e:
        load_trajectories(tmp_path)
    text = str(e.value)
    assert "trajectories/x.yaml:3" in text and "pain-during" in text
    assert "trajectories/x.yaml:7" in text and "changes.a" in text
    (tmp_path / "trajectories" / "x.yaml").write_text("""trajectories:
  - id: two
    visits: [{facts: {}}, {}]
  - id: two
    visits: [{facts: {}}, {}]
""")
    with pytest.raises(KnowledgeBaseError, match=r"x.yaml:4:5: error: duplicate trajectory id"):
        load_trajectories(tmp_path)


def test_an_error_in_one_trajectory_is_reported_not_raised(reference: Evaluator) -> None:
    tr = Trajectory.model_validate({"id": "bad-fact", "visits": [
        {"facts": {"no-such-fact": 1}}, {}]})
    out = run_trajectory(reference, tr)
    assert not out.passed and out.error and "no-such-fact" in out.error
