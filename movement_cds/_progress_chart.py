"""Progress across visits, drawn: an SVG chart (pure Python, no external images or fonts)
and a terminal sparkline.

``progress_chart_svg(points)`` takes the plan's ``progress`` (``Evaluation.plan.progress``,
or any ``ProgressPoint``s) and returns one self-contained ``<svg>`` element: one small panel
per measure (pain 0-10, ODI 0-100 %, sessions done 0-100 %), a line through the values in
date order, a dot per value (hollow when the decision did not read it: superseded or too
old), the value written by each dot, the date under it, and axes with their scale. Every
point carries ``data-measure``, ``data-value``, ``data-date`` and ``data-role`` attributes so
tests (and scripts) can read the chart back without a screenshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Final

from cds import MEASURES, ProgressPoint, human_date, progress_by_measure, show_number

__all__ = ["progress_chart_svg", "sparkline"]

_PANEL_W: Final = 300
_PANEL_H: Final = 176
_LEFT: Final = 40  # room for the y labels
_TOP: Final = 38  # room for the title and the top value label
_BOTTOM: Final = 46  # room for the dates and the legend
_RIGHT: Final = 16
_GAP: Final = 20
_BARS: Final = "▁▂▃▄▅▆▇█"


def _x_positions(points: Sequence[ProgressPoint], span: tuple[datetime, datetime],
                 left: float, width: float) -> list[float]:
    """By date, on one time axis for every panel (visits line up); the middle when every
    value is from one instant."""
    first, last = span
    total = (last - first).total_seconds()
    if total <= 0:
        return [left + width / 2 for _ in points]
    return [left + width * (p.when - first).total_seconds() / total for p in points]


def _y(value: float, low: float, high: float, top: float, height: float) -> float:
    clipped = min(max(value, low), high)
    return top + height * (1 - (clipped - low) / (high - low))


def _axes(x0: float, y0: float, w: float, h: float, low: float, high: float) -> list[str]:
    out = []
    for tick in (low, (low + high) / 2, high):
        ty = _y(tick, low, high, y0, h)
        out.append(f'<text class="y-label" x="{x0 - 6:.1f}" y="{ty + 4:.1f}" '
                   f'text-anchor="end" font-size="11">{show_number(tick)}</text>')
        out.append(f'<line class="grid" x1="{x0:.1f}" y1="{ty:.1f}" x2="{x0 + w:.1f}" '
                   f'y2="{ty:.1f}" stroke="#ddd"/>')
    return [
        *out,
        f'<line class="axis x-axis" x1="{x0:.1f}" y1="{y0 + h:.1f}" x2="{x0 + w:.1f}" '
        f'y2="{y0 + h:.1f}" stroke="#444"/>',
        f'<line class="axis y-axis" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x0:.1f}" '
        f'y2="{y0 + h:.1f}" stroke="#444"/>']


def _panel(measure: str, points: Sequence[ProgressPoint], left: float,
           span: tuple[datetime, datetime], zone: str | None) -> list[str]:
    info = MEASURES[measure]  # type: ignore[index]
    x0, y0 = left + _LEFT, _TOP
    w, h = _PANEL_W - _LEFT - _RIGHT, _PANEL_H - _TOP - _BOTTOM
    out = [f'<g class="panel" data-measure="{measure}">',
           f'<text class="title" x="{left + _PANEL_W / 2:.1f}" y="16" text-anchor="middle" '
           f'font-size="13" font-weight="bold">{escape(info.label)}</text>',
           *_axes(x0, y0, w, h, info.low, info.high)]
    xs = _x_positions(points, span, x0 + 24, w - 48)
    ys = [_y(p.value, info.low, info.high, y0, h) for p in points]
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        out.append(f'<polyline class="trend" points="{path}" fill="none" stroke="#1f5fa8" '
                   'stroke-width="2"/>')
    for p, x, y in zip(points, xs, ys, strict=True):
        day = human_date(p.when, zone)
        fill = "#1f5fa8" if p.used else "#fff"
        out.append(
            f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" '
            f'stroke="#1f5fa8" stroke-width="2" data-measure="{measure}" '
            f'data-value="{show_number(p.value)}" data-date="{escape(day)}" data-role="{p.role}">'
            f'<title>{escape(info.label)}: {show_number(p.value)} on {escape(day)} ({p.role})'
            '</title></circle>')
        out.append(f'<text class="value-label" x="{x:.1f}" y="{y - 8:.1f}" '
                   f'text-anchor="middle" font-size="11">{show_number(p.value)}</text>')
        out.append(f'<text class="x-label" x="{x:.1f}" y="{y0 + h + 16:.1f}" '
                   f'text-anchor="middle" font-size="10">{escape(day)}</text>')
    out.append("</g>")
    return out


def progress_chart_svg(points: Iterable[ProgressPoint], time_zone: str | None = None,
                       *, title: str = "Progress across visits") -> str:
    """The series as one SVG element (text), a panel per measure that has a value; dates in
    ``time_zone`` (an IANA name, the plan's ``time_zone``), else UTC. An empty series gives a
    small SVG saying there is nothing to show yet."""
    series = progress_by_measure(points)
    width = max(1, len(series)) * (_PANEL_W + _GAP) - _GAP
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="progress-chart" '
            f'width="{width}" height="{_PANEL_H}" viewBox="0 0 {width} {_PANEL_H}" '
            f'role="img" aria-label="{escape(title)}" font-family="sans-serif">')
    body = [f"<title>{escape(title)}</title>"]
    if not series:
        body.append(f'<text x="{width / 2:.1f}" y="{_PANEL_H / 2:.1f}" text-anchor="middle" '
                    'font-size="13">No scores recorded yet</text>')
    if series:
        body.append(f'<text class="legend" x="{_LEFT}" y="{_PANEL_H - 6}" font-size="10">'
                    "Filled dot: the value this plan used. Hollow dot: an earlier value "
                    "(superseded) or one too old to use.</text>")
    whens = [p.when for pts in series.values() for p in pts]
    span = (min(whens), max(whens)) if whens else (datetime.now(UTC), datetime.now(UTC))
    for i, (measure, pts) in enumerate(series.items()):
        body += _panel(measure, pts, i * (_PANEL_W + _GAP), span, time_zone)
    return "\n".join([head, *body, "</svg>"]) + "\n"


def sparkline(points: Sequence[ProgressPoint]) -> str:
    """The values of one measure as block characters on its own scale (``▇▅▃``)."""
    if not points:
        return ""
    info = MEASURES[points[0].measure]
    span = info.high - info.low
    return "".join(_BARS[min(len(_BARS) - 1, int((min(max(p.value, info.low), info.high)
                                                   - info.low) / span * len(_BARS)))]
                   for p in points)
