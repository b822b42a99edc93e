"""Stick-figure line drawings of an exercise, generated from a pose (joint angles).

A ``Pose`` is a side view of a person facing right: the angle of each body segment in
degrees (0 points right, i.e. forwards; 90 up; -90 down), for the near limbs and the far
ones (the far limbs default to the near ones and are drawn lighter, behind). Forward
kinematics from the hip gives the joints; the figure is then set down so that its lowest
point rests on the floor line. ``Prop`` s (chair, box, ball, counter, band...) are drawn in
grey relative to the placed figure's joints.

``exercise_svg(start, end, title)`` draws two frames, "Start" and "Then", in one inline SVG
with a shared scale (no external image, no script), for the patient handout and the catalog.
The pose of every exercise is in ``cds._poses``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

__all__ = ["Pose", "Prop", "exercise_svg", "joints"]

# segment lengths (figure units; a standing figure is about 160 tall)
TRUNK, NECK, HEAD_R = 50.0, 6.0, 9.0
THIGH, SHIN, FOOT = 42.0, 40.0, 11.0
UPPER_ARM, FOREARM = 24.0, 22.0

Point = tuple[float, float]
Limb = tuple[float, float]  # (upper segment angle, lower segment angle)


@dataclass(frozen=True)
class Prop:
    """Equipment drawn beside the figure: ``kind`` and where (a joint name it hangs on)."""

    kind: str  # chair | box | ball | cushion | weight | dowel | counter | rail | wall | band | bike
    at: str = "hip"  # the joint it is placed against
    size: float = 1.0
    dx: float = 0.0  # moved forward (+) or back (-) from that joint


@dataclass(frozen=True)
class Pose:
    """Segment angles in degrees; ``*_far`` default to the near limb."""

    trunk: float
    arm: Limb
    leg: Limb
    head: float | None = None  # neck direction; default: along the trunk
    arm_far: Limb | None = None
    leg_far: Limb | None = None
    foot: float | None = None  # near foot angle; default: shin + 90
    foot_far: float | None = None
    back: float = 0.0  # > 0 rounds the back (flexion), < 0 arches it (extension)
    props: tuple[Prop, ...] = field(default=())


def _at(p: Point, angle: float, length: float) -> Point:
    a = math.radians(angle)
    return (p[0] + length * math.cos(a), p[1] + length * math.sin(a))


def _raw_joints(pose: Pose) -> dict[str, Point]:
    hip: Point = (0.0, 0.0)
    shoulder = _at(hip, pose.trunk, TRUNK)
    head_dir = pose.trunk if pose.head is None else pose.head
    j: dict[str, Point] = {"hip": hip, "shoulder": shoulder,
                           "head": _at(shoulder, head_dir, NECK + HEAD_R)}
    j["neck"] = _at(shoulder, head_dir, NECK)
    for side, arm, leg, foot in (
        ("near", pose.arm, pose.leg, pose.foot),
        ("far", pose.arm_far or pose.arm, pose.leg_far or pose.leg,
         pose.foot_far if pose.foot_far is not None else
         (pose.foot if pose.leg_far is None else None)),
    ):
        j[f"elbow_{side}"] = _at(shoulder, arm[0], UPPER_ARM)
        j[f"hand_{side}"] = _at(j[f"elbow_{side}"], arm[1], FOREARM)
        j[f"knee_{side}"] = _at(hip, leg[0], THIGH)
        j[f"ankle_{side}"] = _at(j[f"knee_{side}"], leg[1], SHIN)
        j[f"toe_{side}"] = _at(j[f"ankle_{side}"], leg[1] + 90 if foot is None else foot, FOOT)
    return j


def joints(pose: Pose) -> dict[str, Point]:
    """The joints of the pose, set down so the lowest point (head included) is on the floor
    (y = 0, y up)."""
    j = _raw_joints(pose)
    lowest = min(min(y for _, y in j.values()), j["head"][1] - HEAD_R)
    return {k: (x, y - lowest) for k, (x, y) in j.items()}


_SEGMENTS = (("shoulder", "neck"),)
_LIMBS = (("shoulder", "elbow"), ("elbow", "hand"), ("hip", "knee"), ("knee", "ankle"),
          ("ankle", "toe"))


def _prop_shapes(prop: Prop, j: dict[str, Point]) -> list[str]:
    """SVG elements (figure coordinates, y up: flipped by the caller's transform)."""
    x, y = j.get(prop.at, j["hip"])
    x += prop.dx
    s = prop.size
    if prop.kind in ("chair", "box"):
        seat = 38.0
        w = 34 * s
        out = [f'<rect x="{x - w * 0.7:.1f}" y="0" width="{w:.1f}" height="{seat:.1f}"/>']
        if prop.kind == "chair":
            out.append(f'<line x1="{x - w * 0.7:.1f}" y1="{seat:.1f}" x2="{x - w * 0.7:.1f}" '
                       f'y2="{seat + 40:.1f}"/>')
        return out
    if prop.kind == "ball":
        r = 20 * s
        return [f'<circle cx="{x:.1f}" cy="{r:.1f}" r="{r:.1f}"/>']
    if prop.kind == "cushion":
        return [f'<ellipse cx="{x:.1f}" cy="3" rx="{14 * s:.1f}" ry="3"/>']
    if prop.kind == "weight":
        return [f'<rect class="solid" x="{x - 5:.1f}" y="{y - 9:.1f}" width="10" height="9"/>']
    if prop.kind == "dowel":
        hx, hy = j["hip"]
        sx, sy = j["shoulder"]
        ang = math.atan2(sy - hy, sx - hx) + math.pi / 2
        dx, dy = 7 * math.cos(ang), 7 * math.sin(ang)
        return [f'<line x1="{hx - dx - (sx - hx) * 0.15:.1f}" y1="{hy - dy - (sy - hy) * 0.15:.1f}"'
                f' x2="{sx - dx + (sx - hx) * 0.5:.1f}" y2="{sy - dy + (sy - hy) * 0.5:.1f}"/>']
    if prop.kind in ("counter", "rail"):
        w = 40 if prop.kind == "counter" else 4
        return [f'<rect x="{x - 2:.1f}" y="0" width="{w}" height="{y:.1f}"/>']
    if prop.kind == "wall":
        return [f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{170 * s:.1f}"/>']
    if prop.kind == "band":
        return [f'<line class="thin" x1="{x:.1f}" y1="{y:.1f}" x2="{x - 60 * s:.1f}" '
                f'y2="{y:.1f}"/>',
                f'<rect x="{x - 64 * s:.1f}" y="{y - 6:.1f}" width="4" height="12"/>']
    if prop.kind == "bike":
        hx, hy = j["hip"]
        hand = j["hand_near"]
        return [f'<circle cx="{hx + 20:.1f}" cy="22" r="20"/>',
                f'<line x1="{hx:.1f}" y1="{hy - 3:.1f}" x2="{hx + 20:.1f}" y2="22"/>',
                f'<line x1="{hand[0]:.1f}" y1="{hand[1]:.1f}" x2="{hx + 30:.1f}" y2="22"/>']
    raise ValueError(f"unknown prop {prop.kind!r}")


def _spine(j: dict[str, Point], back: float) -> str:
    """The trunk, hip to shoulder: a curve bulging to the back side (the left of the
    hip-to-shoulder direction, for a figure facing right) by ``back`` units."""
    (hx, hy), (sx, sy) = j["hip"], j["shoulder"]
    length = math.hypot(sx - hx, sy - hy) or 1.0
    nx, ny = -(sy - hy) / length, (sx - hx) / length
    cx, cy = (hx + sx) / 2 + 2 * back * nx, (hy + sy) / 2 + 2 * back * ny
    return (f'<path class="near" fill="none" d="M{hx:.1f} {hy:.1f} '
            f'Q{cx:.1f} {cy:.1f} {sx:.1f} {sy:.1f}"/>')


def _figure(j: dict[str, Point], back: float) -> list[str]:
    out: list[str] = []
    for side in ("far", "near"):  # far limbs first, lighter, behind the body
        cls = "far" if side == "far" else "near"
        for a, b in _LIMBS:
            a_name = a if a in ("shoulder", "hip") else f"{a}_{side}"
            (x1, y1), (x2, y2) = j[a_name], j[f"{b}_{side}"]
            out.append(f'<line class="{cls}" x1="{x1:.1f}" y1="{y1:.1f}" '
                       f'x2="{x2:.1f}" y2="{y2:.1f}"/>')
        if side == "far":
            out.append(_spine(j, back))
            for a, b in _SEGMENTS:
                (x1, y1), (x2, y2) = j[a], j[b]
                out.append(f'<line class="near" x1="{x1:.1f}" y1="{y1:.1f}" '
                           f'x2="{x2:.1f}" y2="{y2:.1f}"/>')
    hx, hy = j["head"]
    out.append(f'<circle class="head" cx="{hx:.1f}" cy="{hy:.1f}" r="{HEAD_R}"/>')
    return out


def _bounds(j: dict[str, Point], props: tuple[Prop, ...]) -> tuple[float, float, float]:
    xs = [x for x, _ in j.values()] + [j["head"][0] - HEAD_R, j["head"][0] + HEAD_R]
    ys = [y for _, y in j.values()] + [j["head"][1] + HEAD_R]
    for p in props:  # room for the widest props
        x, y = j.get(p.at, j["hip"])
        if p.kind == "band":
            xs.append(x - 66 * p.size)
        elif p.kind in ("counter", "box", "chair"):
            xs += [x - 26 * p.size, x + 40]
            ys.append(y + (40 if p.kind == "chair" else 0))
        elif p.kind == "wall":
            ys.append(170 * p.size)
        elif p.kind == "ball":
            xs += [x + p.dx - 20 * p.size, x + p.dx + 20 * p.size]
            ys.append(40 * p.size + 2)
        elif p.kind == "bike":
            xs += [x - 22, x + 42]
            ys.append(44)
    return min(xs), max(xs), max(ys)


def exercise_svg(start: Pose, end: Pose, title: str, *, label_start: str = "Start",
                 label_end: str = "Then") -> str:
    """Two frames (start, end) of one exercise as an inline SVG element."""
    frames = [(label_start, start, joints(start)), (label_end, end, joints(end))]
    bounds = [_bounds(j, pose.props) for _, pose, j in frames]
    height = max(b[2] for b in bounds) + 14
    parts: list[str] = []
    x_off = 8.0
    for (label, pose, j), (lo, hi, _) in zip(frames, bounds, strict=True):
        width = hi - lo + 16
        tx = x_off - lo + 8
        body = "".join(s for p in pose.props for s in _prop_shapes(p, j))
        parts.append(
            f'<g class="frame" data-frame="{escape(label.lower())}">'
            f'<text x="{x_off + width / 2:.1f}" y="14" text-anchor="middle">{escape(label)}</text>'
            f'<g transform="translate({tx:.1f} {height + 18:.1f}) scale(1 -1)">'
            f'<g class="prop">{body}</g>{"".join(_figure(j, pose.back))}</g>'
            f'<line class="floor" x1="{x_off:.1f}" y1="{height + 18:.1f}" '
            f'x2="{x_off + width:.1f}" y2="{height + 18:.1f}"/></g>')
        x_off += width + 24
    total_w, total_h = x_off - 16, height + 26
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="exercise-figure" role="img" '
        f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" width="{total_w:.0f}" '
        f'height="{total_h:.0f}"><title>{escape(title)}: how to move</title>'
        '<style>.near,.far{stroke-width:5;stroke-linecap:round}.near{stroke:#1a1a1a}'
        '.far{stroke:#8a8a8a}.head{fill:#fff;stroke:#1a1a1a;stroke-width:4}'
        '.prop *{fill:none;stroke:#9a9a9a;stroke-width:3}.prop .solid{fill:#9a9a9a}'
        '.prop .thin{stroke-width:2;stroke-dasharray:4 3}.floor{stroke:#bbb;stroke-width:2}'
        'text{font:13px sans-serif;fill:#444}</style>'
        + "".join(parts) + "</svg>")
