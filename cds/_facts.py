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

__all__ = ["Derivation", "DerivedFact", "Fact", "PatientFacts", "Scalar"]

Scalar = bool | int | float | str


@dataclass(frozen=True, order=True)
class Fact:
    """One value about the patient; ``sources`` are references of the records behind it."""

    name: str
    value: Scalar
    sources: tuple[str, ...] = ()
    preliminary: bool = False


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

    def by_name(self) -> dict[str, Fact]:
        return {f.name: f for f in self.facts}

    @staticmethod
    def build(
        subject: str,
        as_of: datetime,
        facts: Iterable[Fact],
        issues: Iterable[InputIssue] = (),
        follow_up: FollowUp | None = None,
    ) -> PatientFacts:
        """Sort facts and issues so that the same data in any order is the same object."""
        ordered = tuple(sorted(facts, key=lambda f: f.name))
        names = [f.name for f in ordered]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate facts: {sorted(dup)}")
        return PatientFacts(
            subject=subject,
            as_of=as_of,
            facts=ordered,
            issues=tuple(sorted(issues, key=lambda i: (i.location or "", i.code, i.message))),
            follow_up=follow_up,
        )
