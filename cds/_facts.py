"""Facts: what the engine reasons over, and what it derived.

A ``Fact`` is one named value about the patient (``rf-saddle-anaesthesia = true``,
``pain-now = 7``) with the references of the source records it came from, so every piece of
advice can be traced back to what the clinician recorded. Names come from the knowledge
base's fact catalog; this module knows nothing of FHIR.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cds._errors import InputIssue
from cds._followup import FollowUp
from cds._progress import ProgressPoint

__all__ = ["AnswerNote", "Derivation", "DerivedFact", "Fact", "PatientFacts", "Scalar"]

Scalar = bool | int | float | str

#: What a value of each catalog type is, in the words of the errors that name it
VALUE_KINDS = {"boolean": "a boolean", "integer": "a number", "decimal": "a number",
               "code": "a code (text)"}


def of_kind(value: object, kind: str) -> bool:
    """Whether ``value`` is ``kind`` (a ``VALUE_KINDS`` value): a bool is a boolean and
    never a number; an int or a float a number; a str a code."""
    if isinstance(value, bool):
        return kind == "a boolean"
    if isinstance(value, int | float):
        return kind == "a number"
    return isinstance(value, str) and kind == "a code (text)"


@dataclass(frozen=True, order=True)
class Fact:
    """One value about the patient; ``sources`` are references of the records behind it."""

    name: str
    value: Scalar
    sources: tuple[str, ...] = ()
    preliminary: bool = False


@dataclass(frozen=True, order=True)
class AnswerNote:
    """What the clinician must know about how an answer was read, in plain words.

    The front end writes one when a red-flag answer is stale but positive ("reported YES on
    3 Oct 2026, not re-assessed since"), undated, contradicted by a later answer, or could
    not be read, and when an age threshold used the oldest age a partial birth date allows.
    ``facts`` are the fact names the note is about (the item, and the summary fact such as
    ``red-flag-discordant`` that carries it into the rules); an alert whose rules read any of
    them carries the note's text. ``kind`` is a stable code: stale-yes, undated-yes,
    discordant, contradicted, unreadable, undated-no, stale-no, partial-birth-date.
    """

    facts: tuple[str, ...]
    kind: str
    text: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, order=True)
class Derivation:
    """One firing of one rule: the facts it read and the facts whose absence it relied on."""

    rule_id: str
    used: tuple[str, ...]
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class DerivedFact:
    """A fact a rule produced, with every firing that produced it (sorted, deterministic)."""

    name: str
    value: Scalar
    derivations: tuple[Derivation, ...]

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(sorted({d.rule_id for d in self.derivations}))


@dataclass(frozen=True)
class PatientFacts:
    """Everything the decision core knows about one patient at one instant.

    ``issues`` are what the front end ignored or could not use (reported, never dropped).
    """

    subject: str
    as_of: datetime
    facts: tuple[Fact, ...]
    issues: tuple[InputIssue, ...] = ()
    extras: Mapping[str, object] = field(default_factory=dict)
    # the previous plan and the patient's responses to it, when this is a follow-up visit
    follow_up: FollowUp | None = None
    # how answers were read where the clinician must be told (stale, undated, contradicted,
    # unreadable red-flag answers; a partial birth date at an age threshold)
    answer_notes: tuple[AnswerNote, ...] = ()
    # every dated value of the progress measures the input holds, earlier visits' included
    progress: tuple[ProgressPoint, ...] = ()
    # when the answer behind each fact read from an Observation was recorded (by name)
    recorded: tuple[tuple[str, datetime], ...] = ()
    # the patient's IANA time zone when the input gives one (for showing dates), else None
    time_zone: str | None = None

    def by_name(self) -> dict[str, Fact]:
        return {f.name: f for f in self.facts}

    @staticmethod
    def build(
        subject: str,
        as_of: datetime,
        facts: Iterable[Fact],
        issues: Iterable[InputIssue] = (),
        follow_up: FollowUp | None = None,
        answer_notes: Iterable[AnswerNote] = (),
        *,
        progress: Iterable[ProgressPoint] = (),
        recorded: Iterable[tuple[str, datetime]] = (),
        time_zone: str | None = None,
        extras: Mapping[str, object] | None = None,
    ) -> PatientFacts:
        """Sort facts, issues, notes, progress points and recording times so that the same
        data in any order is the same object."""
        ordered = tuple(sorted(facts, key=lambda f: f.name))
        names = [f.name for f in ordered]
        if len(set(names)) != len(names):
            dup = {n for n in names if names.count(n) > 1}
            raise ValueError(f"duplicate facts: {sorted(dup)}")
        return PatientFacts(
            subject=subject,
            as_of=as_of,
            facts=ordered,
            issues=tuple(sorted(issues, key=lambda i: (i.location or "", i.code, i.message))),
            follow_up=follow_up,
            answer_notes=tuple(sorted(set(answer_notes))),
            progress=tuple(sorted(progress)),
            recorded=tuple(sorted(recorded)),
            time_zone=time_zone,
            extras=extras if extras is not None else {},
        )
