"""How much of an exercise: its own module so that the plan and the follow-up types can both
use it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from cds._kb_schema import DoseSpec

__all__ = ["ExerciseDose"]


@dataclass(frozen=True)
class ExerciseDose:
    """How much of an exercise: sets, repetitions or hold, tempo, how often, pain guidance."""

    sets: int | None
    repetitions: int | None
    hold_seconds: int | None
    tempo: str | None
    frequency: int
    period: int
    period_unit: str  # "d" | "wk"
    load: str | None
    pain_monitoring: str

    @staticmethod
    def of(default: DoseSpec, override: DoseSpec | None = None) -> ExerciseDose:
        # the same knowledge-base dose objects come back on every plan: remembered by
        # identity (the objects are kept, so an id is never reused while it is remembered)
        key = (id(default), id(override))
        known = _OF.get(key)
        if known is not None and known[0] is default and known[1] is override:
            return known[2]
        dose = ExerciseDose._of(default, override)
        if len(_OF) >= _OF_SIZE:
            _OF.clear()
        _OF[key] = (default, override, dose)
        return dose

    @staticmethod
    def _of(default: DoseSpec, override: DoseSpec | None) -> ExerciseDose:
        o = override.model_dump(exclude_none=True) if override else {}
        d = {**default.model_dump(exclude_none=True), **o}
        return ExerciseDose(
            sets=d.get("sets"),
            repetitions=d.get("repetitions"),
            hold_seconds=d.get("hold_seconds"),
            tempo=d.get("tempo"),
            frequency=d["frequency"],
            period=d["period"],
            period_unit=d["period_unit"],
            load=d.get("load"),
            pain_monitoring=d["pain_monitoring"],
        )

    def describe(self) -> str:
        parts = []
        if self.sets and self.repetitions:
            parts.append(f"{self.sets} sets of {self.repetitions} repetitions")
        elif self.sets and self.hold_seconds:
            parts.append(f"{self.sets} sets")
        elif self.repetitions:
            parts.append(f"{self.repetitions} repetitions")
        if self.hold_seconds:
            parts.append(f"hold {self.hold_seconds} seconds")
        if self.tempo:
            parts.append(f"tempo: {self.tempo}")
        if self.load:
            parts.append(f"load: {self.load}")
        unit = {"d": "day", "wk": "week"}[self.period_unit]
        per = unit if self.period == 1 else f"{self.period} {unit}s"
        times = {1: "once", 2: "twice"}.get(self.frequency, f"{self.frequency} times")
        parts.append(f"{times} per {per}")
        return ", ".join(parts) + f". Pain: {self.pain_monitoring}"


_OF_SIZE = 4096
_OF: dict[tuple[int, int], tuple[DoseSpec, DoseSpec | None, ExerciseDose]] = {}
