"""Progress across visits: pain, disability (ODI) and adherence, one value per visit.

The front end collects every dated value of these measures the input holds (earlier visits'
answers included) as ``ProgressPoint``s. The decision itself still reads one value per
fact, the latest valid one: a point says whether it is that value (``used``) or an earlier
one the decision did not read (``superseded``), so the trend never hides which value
counted. Nothing here knows FHIR: sources are the input's own references.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from zoneinfo import ZoneInfo

__all__ = [
    "MEASURES",
    "PROGRESS_FACTS",
    "Measure",
    "MeasureInfo",
    "ProgressPoint",
    "Role",
    "adherence_points",
    "human_date",
    "human_instant",
    "progress_by_measure",
    "show_number",
    "trend_text",
]

_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                  "Nov", "Dec")

Measure = Literal["pain", "odi", "adherence"]
Role = Literal["used", "superseded", "stale", "response"]


@dataclass(frozen=True)
class MeasureInfo:
    """How a measure is shown: its label, unit and the range of its axis."""

    label: str
    unit: str
    low: float
    high: float
    # True when a lower value is better (pain, disability); False for adherence
    lower_is_better: bool


MEASURES: Final[Mapping[Measure, MeasureInfo]] = {
    "pain": MeasureInfo("Pain now (0-10)", "/10", 0, 10, True),
    "odi": MeasureInfo("Disability, ODI (%)", "%", 0, 100, True),
    "adherence": MeasureInfo("Sessions done (% of prescribed)", "%", 0, 100, False),
}
# the catalog facts whose every dated value makes a series (fact name -> measure)
PROGRESS_FACTS: Final[Mapping[str, Measure]] = {"pain-now": "pain", "odi-score": "odi"}


@dataclass(frozen=True, order=True)
class ProgressPoint:
    """One value of one measure at one visit.

    ``role``: ``used`` (the value today's decision read), ``superseded`` (an earlier value,
    not read: a later one was), ``stale`` (the latest value, but older than the fact's age
    limit, so the decision counted it as missing) or ``response`` (adherence: computed from
    the follow-up responses of that day, ``sessions done / sessions prescribed``, summed
    over the exercises that reported both).
    """

    measure: Measure
    when: datetime
    value: float
    role: Role
    sources: tuple[str, ...] = ()
    superseded_by: str | None = None  # the source the decision read instead

    @property
    def used(self) -> bool:
        return self.role in ("used", "response")


def progress_by_measure(points: Iterable[ProgressPoint]) -> dict[Measure, list[ProgressPoint]]:
    """The points per measure, oldest first, in the order of ``MEASURES`` (measures without
    a point are left out)."""
    out: dict[Measure, list[ProgressPoint]] = {}
    for measure in MEASURES:
        series = sorted((p for p in points if p.measure == measure),
                        key=lambda p: (p.when, p.sources))
        if series:
            out[measure] = series
    return out


def adherence_points(
    reports: Iterable[tuple[datetime, str, str, int, str]], current: frozenset[str]
) -> list[ProgressPoint]:
    """Adherence per visit day from ``(when, exercise, field, value, source)`` reports, where
    ``field`` is ``done`` or ``prescribed``. A day's value is ``100 * sum(done) /
    sum(prescribed)`` over the exercises that reported both that day (prescribed > 0);
    ``current``: the sources the decision read (their day's point is ``response``, earlier
    days' are ``superseded``)."""
    days: dict[object, dict[str, dict[str, tuple[int, str, datetime]]]] = {}
    for when, exercise, field, value, source in reports:
        per = days.setdefault(when.date(), {}).setdefault(exercise, {})
        seen = per.get(field)
        if seen is None or (when, source) > (seen[2], seen[1]):
            per[field] = (value, source, when)
    points = []
    for _day, exercises in sorted(days.items(), key=lambda kv: str(kv[0])):
        pairs = [(x["done"], x["prescribed"]) for x in exercises.values()
                 if "done" in x and "prescribed" in x]
        prescribed = sum(p[0] for _, p in pairs)
        if not pairs or prescribed <= 0:
            continue
        done = sum(d[0] for d, _ in pairs)
        sources = tuple(sorted({s for d, p in pairs for s in (d[1], p[1])}))
        when = max(t for d, p in pairs for t in (d[2], p[2]))
        role: Role = "response" if set(sources) & current else "superseded"
        points.append(ProgressPoint("adherence", when, round(100 * done / prescribed, 1), role,
                                    sources))
    return points


def _local(when: datetime, zone: str | None) -> datetime:
    return when.astimezone(ZoneInfo(zone) if zone else UTC)


def human_date(when: datetime, zone: str | None = None) -> str:
    """``2 Nov 2026``: the day in the patient's IANA time zone, else in UTC."""
    t = _local(when, zone)
    return f"{t.day} {_MONTHS[t.month - 1]} {t.year}"


def human_instant(when: datetime, zone: str | None = None) -> str:
    """``2 Nov 2026 09:00``: date and time in the patient's IANA time zone, else UTC (the
    reader is told which once, not at every date)."""
    return f"{human_date(when, zone)} {_local(when, zone):%H:%M}"


def show_number(value: float) -> str:
    """A value as people write it: ``5``, ``77.8``."""
    return f"{value:g}"


def trend_text(measure: Measure, series: list[ProgressPoint], zone: str | None = None) -> str:
    """One line: ``Pain now (0-10): 5 (2 Nov 2026) -> 4 (16 Nov 2026) -> 3 (30 Nov
    2026)``."""
    steps = " -> ".join(f"{show_number(p.value)} ({human_date(p.when, zone)})" for p in series)
    return f"{MEASURES[measure].label}: {steps}"
