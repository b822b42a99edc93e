"""Every exercise in the knowledge base has a generated drawing, and the drawing shows the
position the knowledge base states (cds/_poses.py, cds/_figure.py)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds import exercise_figure_svg, load_knowledge_base
from cds._figure import Pose, joints
from cds._poses import POSES
from knowledge_base import bundled_path

KB = load_knowledge_base(bundled_path())
SVG = "{http://www.w3.org/2000/svg}"


def test_every_exercise_in_the_knowledge_base_has_a_drawing_and_no_drawing_is_stale() -> None:
    assert sorted(set(KB.exercises) - set(POSES)) == [], "exercises without a drawing"
    assert sorted(set(POSES) - set(KB.exercises)) == [], "drawings of no exercise"


def _angle(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.degrees(math.atan2(b[1] - a[1], b[0] - a[0])) % 360


def _posture(pose: Pose) -> set[str]:
    """What a start pose looks like, read off the placed joints (y up, floor at 0)."""
    j = joints(pose)
    trunk = _angle(j["hip"], j["shoulder"])
    upright = 45 <= trunk <= 135
    hip = j["hip"][1]
    knees_down = min(j["knee_near"][1], j["knee_far"][1]) < 4
    hands_down = min(j["hand_near"][1], j["hand_far"][1]) < 4
    feet_down = min(j["ankle_near"][1], j["ankle_far"][1], j["toe_near"][1],
                    j["toe_far"][1]) < 6
    out = set()
    if 155 <= trunk <= 205 and j["head"][1] < 20:
        out.add("supine")  # head to the left of the hips, lying
    if (trunk <= 35 or trunk >= 340) and hip < 30 and j["head"][1] > j["hip"][1] - 5:
        out.add("prone")
        out.add("side lying")  # the side plank is drawn from the front
    if (trunk <= 20 or trunk >= 340) and knees_down and hands_down and hip > 30:
        out.add("quadruped")
    if trunk >= 45 and knees_down:
        out.add("kneeling")
    seat = any(p.kind in ("chair", "bike") and p.at == "hip" and not p.dx for p in pose.props)
    if upright and (25 <= hip <= 60 or (seat and hip >= 25)) and feet_down:
        out.add("sitting")
    if trunk >= 50 and hip > 60 and feet_down:
        out.add("standing")
    return out


_KEYWORDS = ("prone", "supine", "side lying", "quadruped", "kneeling", "sitting", "standing",
             "walking")


@pytest.mark.parametrize("exercise_id", sorted(POSES))
def test_the_start_pose_matches_the_position_in_the_knowledge_base(exercise_id: str) -> None:
    position = KB.exercises[exercise_id].position or ""
    words = [k for k in _KEYWORDS if k in position]
    assert words, f"{exercise_id}: position {position!r} has no known posture word"
    want = "standing" if words[0] == "walking" else words[0]
    start, _ = POSES[exercise_id]
    assert want in _posture(start), (exercise_id, position, _posture(start))


@pytest.mark.parametrize("exercise_id", sorted(POSES))
def test_each_drawing_shows_a_movement_and_renders_two_frames(exercise_id: str) -> None:
    start, end = POSES[exercise_id]
    a, b = joints(start), joints(end)
    moved = max(math.dist(a[k], b[k]) for k in a) + abs(start.back - end.back)
    assert moved > 1.5, f"{exercise_id}: start and end are the same picture"
    svg = exercise_figure_svg(exercise_id, KB.exercises[exercise_id].title)
    assert svg is not None
    root = ET.fromstring(svg)
    frames = root.findall(f"{SVG}g[@class='frame']")
    assert [f.get("data-frame") for f in frames] == ["start", "then"]
    for f in frames:
        strokes = f.findall(f".//{SVG}line[@class='near']") + f.findall(f".//{SVG}path")
        assert len(strokes) >= 6, exercise_id  # body, neck, near arm and leg at least
        assert f.findall(f".//{SVG}circle[@class='head']")


def test_an_exercise_the_table_does_not_know_gets_no_drawing() -> None:
    assert exercise_figure_svg("no-such-exercise", "x") is None


@settings(max_examples=60, deadline=None)
@given(st.floats(-180, 180), st.floats(-180, 180), st.floats(-180, 180),
       st.floats(-180, 180), st.floats(-180, 180), st.floats(-15, 15))
def test_any_pose_rests_on_the_floor_and_draws_inside_its_box(
        trunk: float, arm0: float, arm1: float, leg0: float, leg1: float,
        back: float) -> None:
    pose = Pose(trunk=trunk, arm=(arm0, arm1), leg=(leg0, leg1), back=back)
    j = joints(pose)
    lowest = min(min(y for _, y in j.values()), j["head"][1] - 9.0)
    assert abs(lowest) < 1e-6  # something touches the floor, nothing is below it
    root = ET.fromstring(__import__("cds._figure", fromlist=["exercise_svg"])
                         .exercise_svg(pose, pose, "t"))
    width, height = (float(x) for x in root.get("viewBox", "").split()[2:])
    assert width > 0 and height > 0
