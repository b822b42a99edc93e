"""The plan: what the clinician is shown, resolved from what the rules derived.

Order and size: recommendations backed by evidence read in a source (tag R or S, strength
moderate or strong) come before expert heuristics, then by rule order (stratum, priority);
one exercise per purpose; at most the smallest programme limit that applies. What is left
out is listed as deferred, with the reason.

The safety policy lives here, not in the rules, so no knowledge base can switch it off:
- an alert that calls for a ``stat``, ``asap`` or ``urgent`` referral (or says it holds
  exercise) puts every exercise on hold: the referral is the plan;
- an exercise whose properties match any veto is never proposed; it is listed as "avoid";
- a data gap is reported as missing, never read as normal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds._dose import ExerciseDose
from cds._engine_result import EngineResult
from cds._errors import InputIssue
from cds._facts import AnswerNote, Derivation, DerivedFact, Fact, PatientFacts
from cds._followup import CheckIn, ExerciseChange
from cds._kb_schema import Evidence, Param, VetoAction
from cds._knowledge_base import KnowledgeBase
from cds._progress import ProgressPoint

__all__ = [
    "AvoidedExercise",
    "DataGap",
    "DeferredExercise",
    "EvidenceRef",
    "ExerciseDose",
    "Plan",
    "PlanAlert",
    "PlannedExercise",
    "Referral",
    "alert_holds_exercise",
    "resolve_plan",
]

HOLDING_PRIORITIES = frozenset({"stat", "asap", "urgent"})
_LEVEL_ORDER = {"emergency": 0, "urgent": 1, "caution": 2, "information": 3}
_PRIORITY_ORDER = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}


@dataclass(frozen=True)
class EvidenceRef:
    id: str
    citation: str
    tag: str
    strength: str
    grade: str | None = None

    @staticmethod
    def of(e: Evidence) -> EvidenceRef:
        return EvidenceRef(e.id, e.citation, e.tag.value, e.strength.value, e.grade)


@dataclass(frozen=True)
class Referral:
    priority: str  # stat | asap | urgent | routine
    to: str


@dataclass(frozen=True)
class PlanAlert:
    code: str
    display: str
    level: str  # emergency | urgent | caution | information
    detail: str
    mitigation: str
    referral: Referral | None
    holds_exercise: bool
    rule_ids: tuple[str, ...]
    sources: tuple[str, ...]
    evidence: tuple[EvidenceRef, ...]
    # how the answers behind this alert were read, where the clinician must know (a stale,
    # undated, contradicted or unreadable red-flag answer); also appended to ``detail``
    answer_notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedExercise:
    exercise_id: str
    title: str
    purpose: str
    instructions: str
    direction: tuple[str, ...]
    load: str
    surface: str
    dose: ExerciseDose
    status: str  # "proposed" | "on-hold"
    rationale: str
    rule_ids: tuple[str, ...]
    sources: tuple[str, ...]
    evidence: tuple[EvidenceRef, ...]


@dataclass(frozen=True)
class AvoidedExercise:
    exercise_id: str
    title: str
    direction: tuple[str, ...]
    load: str
    surface: str
    reason: str
    rule_ids: tuple[str, ...]
    sources: tuple[str, ...]
    evidence: tuple[EvidenceRef, ...]


@dataclass(frozen=True)
class DeferredExercise:
    """Recommended by a rule but left out of this plan, with the reason (never dropped)."""

    exercise_id: str
    title: str
    reason: str
    rule_ids: tuple[str, ...]


@dataclass(frozen=True)
class DataGap:
    rule_id: str
    missing: tuple[str, ...]  # fact names
    detail: str


@dataclass(frozen=True)
class Plan:
    subject: str
    as_of: datetime
    kb_id: str
    kb_version: str
    kb_title: str
    alerts: tuple[PlanAlert, ...]
    exercises: tuple[PlannedExercise, ...]
    avoid: tuple[AvoidedExercise, ...]
    data_gaps: tuple[DataGap, ...]
    safety_net: tuple[str, ...]
    issues: tuple[InputIssue, ...]
    facts: tuple[Fact, ...]
    firings: tuple[Derivation, ...]
    fact_descriptions: dict[str, str]
    ruleset: str = ""
    derived: tuple[tuple[str, object], ...] = ()
    deferred: tuple[DeferredExercise, ...] = ()
    # follow-up: the plan this one revises (its input reference), what changed per exercise
    # and why, and the proposed check-in after a new or changed exercise
    replaces: str | None = None
    changes: tuple[ExerciseChange, ...] = ()
    check_in: CheckIn | None = None
    # every exercise a rule recommended and no veto ruled out, best first, before the
    # one-per-purpose and size limits: what a follow-up revision may add from
    candidates: tuple[PlannedExercise, ...] = ()
    # every note on how an answer was read (shown first: stale, undated, contradicted or
    # unreadable red-flag answers; a partial birth date at an age threshold)
    answer_notes: tuple[AnswerNote, ...] = ()
    # progress across visits (every dated pain, ODI and adherence value), when each fact's
    # answer was recorded, and the patient's time zone: as the front end read them
    progress: tuple[ProgressPoint, ...] = ()
    recorded: tuple[tuple[str, datetime], ...] = ()
    time_zone: str | None = None

    @property
    def knowledge_base(self) -> str:
        """The exact rules that made this plan: ``{kb-id}@{version}`` (``+p…`` when a
        deployment overrode thresholds)."""
        return self.ruleset or f"{self.kb_id}@{self.kb_version}"

    @property
    def derived_values(self) -> dict[str, object]:
        """Findings and classifications the rules derived, by name."""
        return dict(self.derived)

    @property
    def exercise_held(self) -> bool:
        return any(a.holds_exercise for a in self.alerts)

    @property
    def referrals(self) -> tuple[PlanAlert, ...]:
        return tuple(a for a in self.alerts if a.referral is not None)


def alert_holds_exercise(kb: KnowledgeBase, code: str, rule_ids: Iterable[str]) -> bool:
    """Whether alert ``code``, raised by ``rule_ids``, holds all exercise: some rule's
    action for it calls for a stat, asap or urgent referral, or says holds-exercise (the
    plan's rule; also how a reader of the output Bundle tells, from each DetectedIssue's
    code and source rules). A rule id the knowledge base lacks holds nothing."""
    for rid in rule_ids:
        try:
            then = kb.rule(rid).then
        except KeyError:
            continue
        for a in then:
            alert = a.alert
            if alert is not None and alert.code == code and (
                    bool(alert.holds_exercise) or (alert.referral is not None and
                    alert.referral.priority.value in HOLDING_PRIORITIES)):
                return True
    return False


def _ranks(kb: KnowledgeBase) -> dict[str, tuple[int, int]]:
    """Evidence first: a recommendation backed by read evidence (R or S) of moderate or
    strong strength ranks before expert heuristics; then rule order (stratum, priority).
    Computed once per knowledge base."""
    cached = kb.derived_cache.get("plan-ranks")
    if cached is None:
        def tier(rule_id: str) -> int:
            backed = any(e.tag.value in ("R", "S") and e.strength.value in ("strong", "moderate")
                         for e in kb.rule(rule_id).evidence)
            return 0 if backed else 1

        cached = {r.id: (tier(r.id), i) for i, r in enumerate(kb.rules)}
        kb.derived_cache["plan-ranks"] = cached
    ranks: dict[str, tuple[int, int]] = cached
    return ranks


_EVIDENCE_MEMO = 4096  # rule-id combinations whose evidence list is remembered


# PlannedExercise's fields up to the dose
_ExerciseHead = tuple[str, str, str, str, tuple[str, ...], str, str, ExerciseDose]


@dataclass(frozen=True)
class _ActionIndex:
    """The rules' actions of each kind, in rule order: what resolve_plan looks up per
    derived fact instead of walking every rule on every call."""

    gaps: tuple[tuple[str, Any], ...]
    vetoes: tuple[tuple[str, VetoAction], ...]
    notes: tuple[tuple[str, str], ...]
    limits: tuple[tuple[str, Any], ...]
    fact_descriptions: dict[str, str]
    evidence: dict[tuple[str, ...], tuple[EvidenceRef, ...]]
    # (exercise, rule ids) -> (rank, PlannedExercise fields up to the dose, rationale):
    # what only the knowledge base decides
    recommended: dict[tuple[str, tuple[str, ...]], tuple[tuple[int, int], _ExerciseHead, str]]
    # fired veto rules -> (exercise, the vetoes covering it): the catalog walk, once
    vetoed: dict[tuple[str, ...], tuple[tuple[Any, tuple[tuple[str, VetoAction], ...]], ...]]


def _action_index(kb: KnowledgeBase) -> _ActionIndex:
    cached = kb.derived_cache.get("plan-actions")
    if cached is None:
        pairs = [(rule.id, a) for rule in kb.rules for a in rule.then]
        cached = _ActionIndex(
            gaps=tuple((rid, a.data_gap) for rid, a in pairs if a.data_gap),
            vetoes=tuple((rid, a.veto) for rid, a in pairs if a.veto is not None),
            notes=tuple((rid, a.safety_net.text) for rid, a in pairs if a.safety_net),
            limits=tuple((rid, a.plan_limit) for rid, a in pairs if a.plan_limit),
            # shared by every plan of this knowledge base: read, never written
            fact_descriptions={n: d.description for n, d in kb.facts.items()},
            evidence={},
            recommended={},
            vetoed={},
        )
        kb.derived_cache["plan-actions"] = cached
    index: _ActionIndex = cached
    return index


def plan_limit(kb: KnowledgeBase, derived: Mapping[str, object], default: int) -> tuple[int, str]:
    """The smallest programme size that applies (the parameter, or a plan-limit that fired),
    with its reason; ``default`` when none applies."""
    limits: list[tuple[int, str]] = []
    if "plan-max-exercises" in kb.parameters:
        limits.append((int(kb.parameter("plan-max-exercises")), "the programme size limit"))
    for rid, pl in _action_index(kb).limits:
        if f"limit.{rid}" in derived:
            m = pl.max_exercises
            n = int(kb.parameter(m.param)) if isinstance(m, Param) else m
            limits.append((n, pl.why))
    return min(limits) if limits else (default, "")


def _sources_of(ds: tuple[Derivation, ...], facts: Mapping[str, Fact],
                derived: Mapping[str, Any], seen: frozenset[str]) -> set[str]:
    """The observations behind derivations, through derived facts. A module function, not a
    closure: a closure that calls itself is a reference cycle, and one per call left the
    plan's facts to the garbage collector (in the service: a ~12 ms collection every ~150
    requests, holding up every request in flight)."""
    out: set[str] = set()
    for d in ds:
        for name in d.used:
            if name in facts:
                out.update(facts[name].sources)
            elif name in derived and name not in seen:
                out |= _sources_of(derived[name].derivations, facts, derived, seen | {name})
    return out


def _facts_read(ds: tuple[Derivation, ...], derived: Mapping[str, Any],
                seen: frozenset[str]) -> set[str]:
    """Every fact name behind derivations (present or relied on as absent), through derived
    facts; a module function for the reason given at ``_sources_of``."""
    out: set[str] = set()
    for d in ds:
        for name in (*d.used, *d.absent):
            out.add(name.partition(".")[0] if name not in derived else name)
            if name in derived and name not in seen:
                out |= _facts_read(derived[name].derivations, derived, seen | {name})
    return out


def _with_notes(detail: str, notes: list[str]) -> str:
    return f"{detail} How the answers were read: {' '.join(notes)}" if notes else detail


def _gap_wording(kb: KnowledgeBase, missing: list[str],
                 notes: Mapping[str, list[AnswerNote]]) -> str:
    """The facts an alert's data gap names, worded by why each is missing: never the words
    of "not asked" for an answer that was received but could not be read, or was too old,
    or undated."""
    plain = [m for m in missing if m not in notes]
    parts = []
    if plain:
        names = ", ".join(kb.facts[m].description.split(" (")[0] for m in plain)
        parts.append(f"Unanswered: {names}.")
    parts += [n.text for m in missing for n in notes.get(m, ())]
    return " ".join(parts)


@dataclass
class _Resolution:
    """What ``resolve_plan`` reads while it turns derived facts into a Plan; its steps are
    the methods, in the order run."""

    kb: KnowledgeBase
    patient: PatientFacts
    derived: Mapping[str, DerivedFact]

    def __post_init__(self) -> None:
        self.facts = {f.name: f for f in self.patient.facts}
        self.index = _action_index(self.kb)
        # how answers were read: notes about missing facts word the data gaps; the others
        # go with every alert whose rules read the fact they are about
        self.notes_by_fact: dict[str, list[AnswerNote]] = {}
        for note in self.patient.answer_notes:
            for name in note.facts:
                self.notes_by_fact.setdefault(name, []).append(note)
        self.missing_notes = {n: v for n, v in self.notes_by_fact.items()
                              if n not in self.facts}

    def sources_of(self, ds: tuple[Derivation, ...]) -> set[str]:
        return _sources_of(ds, self.facts, self.derived, frozenset())

    def rule_evidence(self, rule_ids: tuple[str, ...]) -> tuple[EvidenceRef, ...]:
        known = self.index.evidence.get(rule_ids)
        if known is None:
            refs = {e.id: EvidenceRef.of(e) for rid in rule_ids
                    for e in self.kb.rule(rid).evidence}
            if len(self.index.evidence) >= _EVIDENCE_MEMO:
                self.index.evidence.clear()
            known = self.index.evidence[rule_ids] = tuple(refs[k] for k in sorted(refs))
        return known

    def firing_of(self, name: str
                  ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Derivation, ...]]:
        ds = self.derived[name].derivations
        rids = tuple(sorted({d.rule_id for d in ds}))
        return rids, tuple(sorted(self.sources_of(ds))), ds

    def data_gaps(self) -> list[DataGap]:
        """The data-gap rules that fired, with which of their named facts are missing."""
        return [DataGap(rid, tuple(f for f in gap.facts if f not in self.facts), gap.detail)
                for rid, gap in self.index.gaps if f"gap.{rid}" in self.derived]

    def alerts(self, gaps: list[DataGap]) -> list[PlanAlert]:
        """One alert per code, most serious first."""
        gap_by_rule = {g.rule_id: g for g in gaps}
        codes = sorted({n.split(".", 1)[1] for n in self.derived if n.startswith("alert.")})
        alerts = [self._alert(code, gap_by_rule) for code in codes]
        alerts.sort(key=lambda a: (_LEVEL_ORDER[a.level], _PRIORITY_ORDER[a.referral.priority]
                                   if a.referral else 9, a.code))
        return alerts

    def _alert(self, code: str, gap_by_rule: Mapping[str, DataGap]) -> PlanAlert:
        """The most severe firing's wording wins; rules and sources merge."""
        rids, srcs, _ = self.firing_of(f"alert.{code}")
        actions = [(rid, a.alert) for rid in rids for a in self.kb.rule(rid).then
                   if a.alert is not None and a.alert.code == code]
        actions.sort(key=lambda ra: (
            _LEVEL_ORDER[ra[1].level.value],
            _PRIORITY_ORDER[ra[1].referral.priority.value] if ra[1].referral else 9,
            ra[0],
        ))
        act = actions[0][1]
        referral = Referral(act.referral.priority.value, act.referral.to) if act.referral else None
        holds = alert_holds_exercise(self.kb, code, rids)
        detail = act.detail
        gap_missing = sorted({m for r, _ in actions if r in gap_by_rule
                              for m in gap_by_rule[r].missing})
        if gap_missing:
            detail = f"{detail} {_gap_wording(self.kb, gap_missing, self.missing_notes)}"
        said = self._alert_notes(f"alert.{code}", gap_missing)
        return PlanAlert(code, self.kb.alerts[code].display, act.level.value,
                         _with_notes(detail, said), act.mitigation, referral, holds, rids, srcs,
                         self.rule_evidence(rids), tuple(said))

    def _alert_notes(self, name: str, gap_missing: list[str]) -> list[str]:
        if not self.notes_by_fact:
            return []
        read = _facts_read(self.derived[name].derivations, self.derived, frozenset())
        return list(dict.fromkeys(
            n.text for f in sorted(read) if f not in gap_missing and f in self.facts
            for n in self.notes_by_fact.get(f, ())))

    def avoid(self) -> list[AvoidedExercise]:
        """Vetoes, by properties, over the whole catalog."""
        vetoes: list[tuple[str, VetoAction]] = [
            (rid, v) for rid, v in self.index.vetoes if f"veto.{rid}" in self.derived]
        fired = tuple(rid for rid, _ in vetoes)
        covered = self.index.vetoed.get(fired)
        if covered is None:
            covered = tuple(
                (ex, hits) for ex in sorted(self.kb.exercises.values(), key=lambda e: e.id)
                if (hits := tuple((rid, v) for rid, v in vetoes if v.covers(ex))))
            if len(self.index.vetoed) >= _EVIDENCE_MEMO:
                self.index.vetoed.clear()
            self.index.vetoed[fired] = covered
        avoid: list[AvoidedExercise] = []
        for ex, hits in covered:
            rids = tuple(sorted({rid for rid, _ in hits}))
            srcs = tuple(sorted({s for rid in rids for s in self.sources_of(
                self.derived[f"veto.{rid}"].derivations)}))
            avoid.append(AvoidedExercise(
                ex.id, ex.title, tuple(d.value for d in ex.direction), ex.load.value,
                ex.surface.value, " ".join(dict.fromkeys(v.why for _, v in hits)),
                rids, srcs, self.rule_evidence(rids)))
        return avoid

    def proposed(self, vetoed: set[str], held: bool) -> list[PlannedExercise]:
        """Every recommended exercise not vetoed, ordered by the best-priority rule that
        recommended it."""
        rank = _ranks(self.kb)
        proposed: list[tuple[tuple[int, int], PlannedExercise]] = []
        for name in sorted(n for n in self.derived if n.startswith("recommend.")):
            ex_id = name.split(".", 1)[1]
            if ex_id not in vetoed:
                proposed.append(self._recommended(ex_id, name, rank, held))
        proposed.sort(key=lambda p: (p[0], p[1].exercise_id))
        return [p for _, p in proposed]

    def _recommended(self, ex_id: str, name: str, rank: Mapping[str, tuple[int, int]],
                     held: bool) -> tuple[tuple[int, int], PlannedExercise]:
        ex = self.kb.exercises[ex_id]
        rids, srcs, _ = self.firing_of(name)
        known = self.index.recommended.get((ex_id, rids))
        if known is None:
            recs = [(rid, a.recommend) for rid in rids for a in self.kb.rule(rid).then
                    if a.recommend is not None and a.recommend.exercise == ex_id]
            recs.sort(key=lambda ra: rank[ra[0]])
            dose = ExerciseDose.of(ex.dose, recs[0][1].dose)
            known = (min(rank[r] for r in rids),
                     (ex.id, ex.title, ex.purpose, ex.instructions,
                      tuple(d.value for d in ex.direction), ex.load.value, ex.surface.value,
                      dose),
                     " ".join(dict.fromkeys(r.why for _, r in recs)))
            if len(self.index.recommended) >= _EVIDENCE_MEMO:
                self.index.recommended.clear()
            self.index.recommended[(ex_id, rids)] = known
        best, head, rationale = known
        return best, PlannedExercise(*head, "on-hold" if held else "proposed", rationale, rids,
                                     srcs, self.rule_evidence(rids))

    def focused(self, proposed: list[PlannedExercise]
                ) -> tuple[list[PlannedExercise], list[DeferredExercise]]:
        """A focused programme: one exercise per purpose, at most the smallest limit that
        applies; the others deferred with the reason."""
        limit, limit_why = plan_limit(self.kb, self.derived, len(proposed))
        kept: list[PlannedExercise] = []
        deferred: list[DeferredExercise] = []
        by_purpose: dict[str, PlannedExercise] = {}
        for pe in proposed:
            first = by_purpose.get(pe.purpose)
            if first is not None:
                deferred.append(DeferredExercise(
                    pe.exercise_id, pe.title,
                    f"same purpose ({pe.purpose}) as {first.title}, which ranks higher",
                    pe.rule_ids))
            elif len(kept) >= limit:
                deferred.append(DeferredExercise(
                    pe.exercise_id, pe.title, f"beyond {limit} exercises: {limit_why}",
                    pe.rule_ids))
            else:
                by_purpose[pe.purpose] = pe
                kept.append(pe)
        return kept, deferred

    def safety_net(self) -> tuple[str, ...]:
        notes = list(self.kb.manifest.safety_net)
        notes += [text for rid, text in self.index.notes if f"note.{rid}" in self.derived]
        return tuple(dict.fromkeys(notes))


def resolve_plan(kb: KnowledgeBase, patient: PatientFacts, result: EngineResult) -> Plan:
    """Turn derived facts into a Plan under the safety policy above."""
    r = _Resolution(kb, patient, result.derived)
    gaps = r.data_gaps()
    alerts = r.alerts(gaps)
    avoid = r.avoid()
    proposed = r.proposed({a.exercise_id for a in avoid},
                          held=any(a.holds_exercise for a in alerts))
    kept, deferred = r.focused(proposed)
    return Plan(
        subject=patient.subject,
        as_of=patient.as_of,
        kb_id=kb.manifest.id,
        kb_version=kb.manifest.version,
        kb_title=kb.manifest.title,
        alerts=tuple(alerts),
        exercises=tuple(kept),
        avoid=tuple(avoid),
        data_gaps=tuple(gaps),
        safety_net=r.safety_net(),
        issues=patient.issues,
        facts=patient.facts,
        firings=result.firings,
        fact_descriptions=r.index.fact_descriptions,
        ruleset=kb.ruleset_name,
        derived=tuple((n, d.value) for n, d in sorted(result.derived.items())),
        deferred=tuple(deferred),
        candidates=tuple(proposed),
        answer_notes=patient.answer_notes,
        progress=patient.progress,
        recorded=patient.recorded,
        time_zone=patient.time_zone,
    )
