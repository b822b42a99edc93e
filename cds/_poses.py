"""The start and end pose of every exercise in the bundled knowledge base, keyed by its id.

Each entry reads the exercise's ``position`` and ``instructions`` in the knowledge base
(``knowledge_base/exercises.yaml``, ``knowledge_base/exercises/``) as a side view facing
right (see ``cds._figure``): where the body starts and where the movement takes it.
``tests/test_handout_figures.py`` fails when the knowledge base gains an exercise without an
entry here, when an entry names no exercise, and when a start pose does not match the
exercise's stated position (lying face up or down, on hands and knees, kneeling, sitting,
standing).
"""

from __future__ import annotations

from cds._figure import Pose, Prop, exercise_svg

__all__ = ["POSES", "exercise_figure_svg", "pose_for"]

# building blocks (angles in degrees: 0 forward/right, 90 up, -90 down)
_ARM_DOWN = (-94.0, -88.0)
_LEG_DOWN = (-90.0, -90.0)
_ARM_ALONG_SUPINE = (-3.0, 0.0)  # lying face up (head left): arms along the body
_CROOK = (48.0, -55.0)  # lying face up: knees bent, feet flat


def _standing(**kw: object) -> Pose:
    base: dict[str, object] = {"trunk": 90.0, "arm": _ARM_DOWN, "leg": _LEG_DOWN}
    base.update(kw)
    return Pose(**base)  # type: ignore[arg-type]


def _supine(**kw: object) -> Pose:
    base: dict[str, object] = {"trunk": 180.0, "head": 176.0, "arm": _ARM_ALONG_SUPINE,
                               "leg": _CROOK, "foot": 0.0}
    base.update(kw)
    return Pose(**base)  # type: ignore[arg-type]


def _prone(**kw: object) -> Pose:
    base: dict[str, object] = {"trunk": 0.0, "head": 2.0, "arm": (180.0, 180.0),
                               "leg": (180.0, 180.0), "foot": -100.0}
    base.update(kw)
    return Pose(**base)  # type: ignore[arg-type]


def _quadruped(**kw: object) -> Pose:
    base: dict[str, object] = {"trunk": 4.0, "head": 10.0, "arm": (-90.0, -90.0),
                               "leg": (-90.0, 180.0), "foot": 180.0}
    base.update(kw)
    return Pose(**base)  # type: ignore[arg-type]


def _sitting(**kw: object) -> Pose:
    base: dict[str, object] = {"trunk": 90.0, "arm": (-80.0, -20.0), "leg": (0.0, -90.0),
                               "props": (Prop("chair"),)}
    base.update(kw)
    return Pose(**base)  # type: ignore[arg-type]


_SQUAT_LEG = (-25.0, -112.0)
_SIDE_PLANK_DOWN = {"trunk": 28.0, "head": 30.0, "arm": (-90.0, 0.0), "arm_far": (-60.0, -10.0)}

POSES: dict[str, tuple[Pose, Pose]] = {
    # --- lying face up -----------------------------------------------------------------
    "controlled-pelvic-tilt": (_supine(back=-4.0), _supine(back=1.0, leg=(52.0, -57.0))),
    "diaphragmatic-breathing": (  # one hand on the belly, one on the chest
        _supine(arm=(28.0, -32.0), arm_far=(45.0, -75.0)),
        _supine(arm=(32.0, -30.0), arm_far=(45.0, -75.0), back=-3.0)),
    "abdominal-bracing-supine": (_supine(), _supine(arm=(28.0, -32.0), back=1.0)),
    "dead-bug-eccentric": (
        _supine(arm=(90.0, 90.0), leg=(90.0, 0.0), foot=80.0),
        _supine(arm=(165.0, 175.0), arm_far=(90.0, 90.0), leg=(12.0, 5.0), foot=90.0,
                leg_far=(90.0, 0.0), foot_far=80.0)),
    "knee-to-chest": (
        _supine(),
        _supine(leg=(128.0, 10.0), foot=90.0, arm=(62.0, 20.0))),
    "glute-bridge": (
        _supine(),
        _supine(trunk=200.0, head=185.0, leg=(22.0, -75.0), arm=(-22.0, -18.0))),
    "anti-extension-bridge-unstable": (
        _supine(props=(Prop("cushion", at="ankle_near"),)),
        _supine(trunk=200.0, head=185.0, leg=(22.0, -75.0), arm=(-22.0, -18.0),
                props=(Prop("cushion", at="ankle_near"),))),
    "supine-lumbar-rotation": (
        _supine(), _supine(leg=(30.0, -40.0), leg_far=(40.0, -50.0), trunk=182.0)),
    # --- lying face down ---------------------------------------------------------------
    "prone-lying-sustained": (
        _prone(), _prone(arm=(135.0, -45.0), trunk=14.0, head=20.0)),
    "prone-press-up": (
        _prone(arm=(135.0, -45.0)),
        _prone(trunk=52.0, head=60.0, arm=(-112.0, -70.0))),
    "front-plank": (
        _prone(trunk=12.0, head=14.0, arm=(-90.0, 0.0), leg=(199.0, 180.0), foot=90.0),
        _prone(trunk=9.0, head=10.0, arm=(-90.0, 0.0), leg=(189.0, 189.0), foot=-100.0)),
    # --- on hands and knees ----------------------------------------------------------
    "bird-dog-breathing": (
        _quadruped(),
        _quadruped(arm=(5.0, 5.0), arm_far=(-90.0, -90.0), leg=(-90.0, 180.0),
                   leg_far=(180.0, 180.0), foot_far=-90.0)),
    "quadruped-abdominal-bracing": (_quadruped(back=-2.0), _quadruped(back=2.0)),
    "cat-camel": (
        _quadruped(back=9.0, head=-50.0),
        _quadruped(back=-7.0, head=40.0)),
    "quadruped-rock-back": (
        _quadruped(),
        _quadruped(trunk=28.0, head=20.0, arm=(-55.0, -62.0), leg=(-28.0, 180.0))),
    # --- kneeling ------------------------------------------------------------------------
    "swiss-ball-rollout": (  # forearms on the ball, which rolls forward
        Pose(trunk=70.0, arm=(-70.0, -5.0), leg=(-90.0, 180.0), foot=180.0,
             props=(Prop("ball", at="hand_near", size=1.6, dx=-10.0),)),
        Pose(trunk=22.0, head=25.0, arm=(5.0, 5.0), leg=(-60.0, 180.0), foot=180.0,
             props=(Prop("ball", at="hand_near", size=1.4, dx=-12.0),))),
    "half-kneeling-hip-flexor-stretch": (
        Pose(trunk=90.0, arm=_ARM_DOWN, leg=(0.0, -90.0), leg_far=(-90.0, 180.0),
             foot_far=180.0),
        Pose(trunk=95.0, arm=_ARM_DOWN, leg=(-10.0, -80.0), leg_far=(-115.0, 180.0),
             foot_far=180.0)),
    # --- lying on the side (drawn from the front) ----------------------------------------
    "side-plank-knees": (
        Pose(**_SIDE_PLANK_DOWN, leg=(180.0, 180.0), foot=90.0),  # type: ignore[arg-type]
        Pose(trunk=12.0, head=14.0, arm=(-90.0, 0.0), arm_far=(-60.0, -10.0),
             leg=(199.0, 180.0), foot=90.0)),
    "side-plank-full": (
        Pose(**_SIDE_PLANK_DOWN, leg=(180.0, 180.0), foot=90.0),  # type: ignore[arg-type]
        Pose(trunk=10.0, head=12.0, arm=(-90.0, 0.0), arm_far=(-60.0, -10.0),
             leg=(190.0, 190.0), foot=120.0)),
    # --- sitting -------------------------------------------------------------------------
    "seated-flexion": (_sitting(), _sitting(trunk=25.0, head=-10.0, arm=(-80.0, -80.0))),
    "sit-to-stand": (
        _sitting(trunk=65.0, arm=(-60.0, -20.0)),
        _standing(props=(Prop("chair", dx=-14.0),))),
    "stationary-cycling": (
        Pose(trunk=75.0, arm=(-30.0, -10.0), leg=(10.0, -100.0), leg_far=(-50.0, -70.0),
             props=(Prop("bike"),)),
        Pose(trunk=75.0, arm=(-30.0, -10.0), leg=(-50.0, -70.0), leg_far=(10.0, -100.0),
             props=(Prop("bike"),))),
    # --- standing ------------------------------------------------------------------------
    "standing-extension": (
        _standing(arm=(-120.0, -60.0)),
        _standing(trunk=106.0, head=115.0, arm=(-140.0, -70.0))),
    "hip-hinge-dowel": (
        _standing(arm=(-60.0, 170.0), leg=(-88.0, -95.0), props=(Prop("dowel"),)),
        _standing(trunk=42.0, head=40.0, arm=(-110.0, 120.0), leg=(-78.0, -100.0),
                  props=(Prop("dowel"),))),
    "romanian-deadlift-dumbbell": (
        _standing(leg=(-88.0, -94.0), props=(Prop("weight", at="hand_near"),)),
        _standing(trunk=40.0, head=35.0, arm=(-92.0, -90.0), leg=(-76.0, -100.0),
                  props=(Prop("weight", at="hand_near"),))),
    "goblet-squat": (
        _standing(arm=(-70.0, 100.0), props=(Prop("box", dx=-14.0),
                                             Prop("weight", at="hand_near"))),
        _standing(trunk=62.0, head=75.0, arm=(-55.0, 110.0), leg=_SQUAT_LEG,
                  props=(Prop("box", dx=4.0), Prop("weight", at="hand_near")))),
    "single-leg-deadlift-band": (
        _standing(leg_far=(-80.0, -30.0), arm=(-20.0, -40.0),
                  props=(Prop("rail", at="hand_near"),)),
        _standing(trunk=12.0, head=10.0, leg_far=(180.0, 185.0), foot_far=-90.0,
                  arm=(-55.0, -40.0), arm_far=(-92.0, -90.0),
                  props=(Prop("rail", at="hand_near"),))),
    "loaded-spinal-rotation": (
        _standing(arm=(-20.0, 10.0), props=(Prop("band", at="hand_near"),)),
        _standing(arm=(-40.0, 60.0), arm_far=(-30.0, 40.0),
                  props=(Prop("band", at="hand_near"),))),
    "pallof-press": (
        _standing(arm=(-70.0, 100.0), leg=(-88.0, -94.0),
                  props=(Prop("band", at="hand_near", size=0.8),)),
        _standing(arm=(-5.0, 0.0), leg=(-88.0, -94.0),
                  props=(Prop("band", at="hand_near", size=0.5),))),
    "side-glide-wall": (
        _standing(arm=(-70.0, 120.0), props=(Prop("wall", at="elbow_far", size=1.0),)),
        _standing(trunk=96.0, arm=(-60.0, 130.0), leg=(-96.0, -90.0),
                  props=(Prop("wall", at="elbow_far"),))),
    "incline-plank": (
        Pose(trunk=60.0, arm=(-45.0, -90.0), leg=(-105.0, -105.0),
             props=(Prop("counter", at="hand_near"),)),
        Pose(trunk=52.0, arm=(-20.0, -90.0), leg=(232.0, 232.0), foot=-40.0,
             props=(Prop("counter", at="hand_near"),))),
    "supported-standing-balance": (
        _standing(arm=(-40.0, -30.0), props=(Prop("counter", at="hand_near"),)),
        _standing(arm=(-40.0, -30.0), leg_far=(-80.0, -110.0),
                  props=(Prop("counter", at="hand_near"),))),
    "single-leg-balance": (
        _standing(arm=(-40.0, -60.0), props=(Prop("rail", at="hand_near"),)),
        _standing(arm=(-40.0, -60.0), leg_far=(-70.0, -110.0),
                  props=(Prop("rail", at="hand_near"),))),
    "split-squat-supported": (
        _standing(leg=(-75.0, -95.0), leg_far=(-110.0, -100.0), foot_far=-30.0,
                  arm=(-40.0, -60.0), props=(Prop("rail", at="hand_near"),)),
        _standing(leg=(-20.0, -95.0), leg_far=(-105.0, 180.0), foot_far=-120.0,
                  arm=(-30.0, -60.0), props=(Prop("rail", at="hand_near"),))),
    # --- walking -------------------------------------------------------------------------
    "walking-programme": (
        _standing(leg=(-75.0, -95.0), leg_far=(-105.0, -110.0), arm=(-110.0, -100.0),
                  arm_far=(-70.0, -50.0)),
        _standing(leg=(-105.0, -110.0), leg_far=(-75.0, -95.0), arm=(-70.0, -50.0),
                  arm_far=(-110.0, -100.0))),
    "suitcase-carry": (
        _standing(leg=(-80.0, -95.0), leg_far=(-100.0, -105.0),
                  props=(Prop("weight", at="hand_near"),)),
        _standing(leg=(-100.0, -105.0), leg_far=(-80.0, -95.0),
                  props=(Prop("weight", at="hand_near"),))),
}


def pose_for(exercise_id: str) -> tuple[Pose, Pose] | None:
    """The (start, end) poses of an exercise, or None for one this table does not draw (an
    exercise from another knowledge base)."""
    return POSES.get(exercise_id)


def exercise_figure_svg(exercise_id: str, title: str) -> str | None:
    """The line drawing of an exercise (start and end position) as an inline SVG element, or
    None when the pose table has no entry for it."""
    poses = POSES.get(exercise_id)
    return exercise_svg(poses[0], poses[1], title) if poses else None
