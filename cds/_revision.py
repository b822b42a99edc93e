"""Follow-up: revising the previous plan from what the patient reported (issue 6).

The knowledge base decides, the code only applies: the per-exercise rules (scope
``exercise-response``) say progress, hold, regress, swap or stop for each exercise of the
previous plan; this module turns the most cautious decision into a dose or an exercise,
one variable at a time and always inside the catalog, driven by the ``follow-up-*``
parameters. It starts from the ordinary evaluation of today's facts, so red flags,
precautions and vetoes are re-checked at every visit and override every decision:

- a holding alert puts every exercise on hold (each gets a ``stopped`` change naming it);
- a vetoed exercise is stopped;
- a missing response is never read as "fine": the exercise continues at the same dose;
- an exercise stopped at a follow-up is listed as "avoid" and not proposed again, unless a
  clinician restarts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cds._dose import ExerciseDose
from cds._engine_result import EngineResult
from cds._errors import InputIssue, InvalidInputError
from cds._facts import Derivation, Fact, PatientFacts
from cds._followup import CheckIn, ExerciseChange, PreviousExercise, PreviousPlan
from cds._kb_schema import AdjustAction, ExerciseDefinition
from cds._knowledge_base import KnowledgeBase
from cds._plan import (
    AvoidedExercise,
    DeferredExercise,
    EvidenceRef,
    Plan,
    PlannedExercise,
    plan_limit,
)

if TYPE_CHECKING:  # names only in annotations
    from cds._followup import ChangeKind, ExerciseResponse, FollowUp

__all__ = [
    "DECISION_SEVERITY",
    "follow_up_patient_facts",
    "harder_step",
    "previous_plan_of",
    "regress_step",
    "response_facts",
    "revise_plan",
    "with_check_in",
]

# the most cautious decision wins
DECISION_SEVERITY = {"progress": 1, "hold": 2, "regress": 3, "swap": 4, "stop": 5}
_DOSE_VARS = ("repetitions", "sets", "hold-seconds")
_RATING_WORDS = {"better": "better", "same": "the same", "worse": "worse"}


# --- facts --------------------------------------------------------------------------------


def _check(resp: ExerciseResponse) -> list[InputIssue]:
    bad: list[InputIssue] = []
    where = f"response[{resp.exercise_id}]"
    if resp.pain_during is not None and not 0 <= resp.pain_during <= 10:
        bad.append(InputIssue("error", "value", f"pain during must be 0-10, got "
                              f"{resp.pain_during}", where))
    for name, v in (("sessions done", resp.sessions_done),
                    ("sessions prescribed", resp.sessions_prescribed)):
        if v is not None and v < 0:
            bad.append(InputIssue("error", "value", f"{name} must not be negative", where))
    for name, r in (("next morning", resp.next_morning),
                    ("perceived effect", resp.perceived_effect)):
        if r is not None and r not in _RATING_WORDS:
            bad.append(InputIssue("error", "value", f"{name} must be better, same or worse, "
                                  f"got {r!r}", where))
    return bad


def check_follow_up(fu: FollowUp) -> None:
    """Refuse responses the rules cannot read (clear errors, never a guess)."""
    issues: list[InputIssue] = []
    seen: set[str] = set()
    for r in fu.responses:
        if r.exercise_id in seen:
            issues.append(InputIssue("error", "duplicate", "more than one response for "
                                     f"exercise '{r.exercise_id}'", f"response[{r.exercise_id}]"))
        seen.add(r.exercise_id)
        issues += _check(r)
    ids = [e.exercise_id for e in fu.previous.exercises]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        issues.append(InputIssue("error", "duplicate",
                                 f"the previous plan lists exercises more than once: {dup}"))
    if issues:
        raise InvalidInputError(issues)


def follow_up_patient_facts(fu: FollowUp) -> list[Fact]:
    """Patient-level facts the follow-up rules read: adherence over every exercise with both
    counts, and whether any exercise peripheralised (missing when nobody said)."""
    out: list[Fact] = []
    counted = [r for r in fu.responses
               if r.sessions_done is not None and r.sessions_prescribed is not None]
    prescribed = sum(r.sessions_prescribed or 0 for r in counted)
    if prescribed > 0:
        done = sum(r.sessions_done or 0 for r in counted)
        src = tuple(sorted({s for r in counted for s in r.sources}))
        out.append(Fact("followup-adherence", round(min(done / prescribed, 10.0), 4), src))
    said = [r for r in fu.responses if r.peripheralization is not None]
    if said:
        spread = [r for r in said if r.peripheralization]
        src = tuple(sorted({s for r in (spread or said) for s in r.sources}))
        out.append(Fact("followup-peripheralization", bool(spread), src))
    return out


def response_facts(prev: PreviousExercise, resp: ExerciseResponse | None,
                   as_of: datetime) -> list[Fact]:
    """The facts the per-exercise rules read for one exercise of the previous plan."""
    src = resp.sources if resp else ()
    out = [Fact("response-previous-bad", int(prev.consecutive_bad))]
    if prev.since is not None:
        weeks = max(0.0, (as_of - prev.since).total_seconds() / (7 * 86400))
        out.append(Fact("response-weeks-on-exercise", round(weeks, 4)))
    if resp is None:
        return out
    if resp.pain_during is not None:
        out.append(Fact("response-pain-during", int(resp.pain_during), src))
    if resp.next_morning is not None:
        out.append(Fact("response-next-morning", resp.next_morning, src))
    if resp.sessions_done is not None:
        out.append(Fact("response-sessions-done", int(resp.sessions_done), src))
    if resp.sessions_prescribed is not None:
        out.append(Fact("response-sessions-prescribed", int(resp.sessions_prescribed), src))
    if resp.sessions_done is not None and resp.sessions_prescribed:
        ratio = min(resp.sessions_done / resp.sessions_prescribed, 10.0)
        out.append(Fact("response-sessions-ratio", round(ratio, 4), src))
    if resp.perceived_effect is not None:
        out.append(Fact("response-perceived-effect", resp.perceived_effect, src))
    if resp.peripheralization is not None:
        out.append(Fact("response-peripheralization", bool(resp.peripheralization), src))
    return out


# --- doses --------------------------------------------------------------------------------


def _param(kb: KnowledgeBase, name: str, default: float) -> float:
    return float(kb.parameter(name)) if name in kb.parameters else default


def _order(kb: KnowledgeBase) -> list[str]:
    fallback = [*_DOSE_VARS, "exercise"]
    name = "follow-up-progression-order"
    raw = str(kb.parameter(name)) if name in kb.parameters else ",".join(fallback)
    out = [v.strip() for v in raw.split(",") if v.strip() in fallback]
    return out or fallback


def _hold_step(hold: int, kb: KnowledgeBase) -> int:
    return max(1, math.ceil(hold * _param(kb, "follow-up-hold-step-percent", 25) / 100))


def harder_step(kb: KnowledgeBase, ex: ExerciseDefinition, dose: ExerciseDose,
                blocked: Iterable[str] = ()) -> tuple[str, ExerciseDose, str] | None:
    """One progression: exactly one dose variable up (to its cap), else the catalog's harder
    version at its default dose; None when neither is possible."""
    blocked = set(blocked)
    default = ExerciseDose.of(ex.dose)
    for var in _order(kb):
        if var == "repetitions" and dose.repetitions is not None:
            cap = int(_param(kb, "follow-up-repetitions-max", 12))
            if dose.repetitions < cap:
                step = int(_param(kb, "follow-up-repetitions-step", 2))
                return ex.id, replace(dose, repetitions=min(cap, dose.repetitions + step)), var
        elif var == "sets" and dose.sets is not None:
            if dose.sets < int(_param(kb, "follow-up-sets-max", 3)):
                return ex.id, replace(dose, sets=dose.sets + 1), var
        elif var == "hold-seconds" and dose.hold_seconds is not None:
            base = default.hold_seconds or dose.hold_seconds
            cap = int(base * _param(kb, "follow-up-hold-max-factor", 2))
            if dose.hold_seconds < cap:
                new = min(cap, dose.hold_seconds + _hold_step(dose.hold_seconds, kb))
                return ex.id, replace(dose, hold_seconds=new), var
        elif var == "exercise" and ex.harder and ex.harder in kb.exercises \
                and ex.harder not in blocked:
            return ex.harder, ExerciseDose.of(kb.exercises[ex.harder].dose), var
    return None


def regress_step(kb: KnowledgeBase, ex: ExerciseDefinition, dose: ExerciseDose,
                 blocked: Iterable[str] = ()) -> tuple[str, ExerciseDose, str] | None:
    """One regression, never leaving the catalog: undo a progression (one variable back
    towards the catalog dose), else the catalog's easier version, else one variable below
    the catalog dose down to its floor; None when nothing can be reduced (stop)."""
    blocked = set(blocked)
    default = ExerciseDose.of(ex.dose)
    order = [v for v in _order(kb) if v != "exercise"]
    r_step = int(_param(kb, "follow-up-repetitions-step", 2))
    for var in reversed(order):  # undo the latest progression first
        if var == "hold-seconds" and dose.hold_seconds and default.hold_seconds \
                and dose.hold_seconds > default.hold_seconds:
            new = max(default.hold_seconds, dose.hold_seconds - _hold_step(dose.hold_seconds, kb))
            return ex.id, replace(dose, hold_seconds=new), var
        if var == "sets" and dose.sets and default.sets and dose.sets > default.sets:
            return ex.id, replace(dose, sets=dose.sets - 1), var
        if var == "repetitions" and dose.repetitions and default.repetitions \
                and dose.repetitions > default.repetitions:
            return ex.id, replace(dose, repetitions=max(default.repetitions,
                                                        dose.repetitions - r_step)), var
    if ex.easier and ex.easier in kb.exercises and ex.easier not in blocked:
        return ex.easier, ExerciseDose.of(kb.exercises[ex.easier].dose), "exercise"
    for var in order:
        if var == "repetitions" and dose.repetitions is not None:
            floor = int(_param(kb, "follow-up-repetitions-min", 4))
            if dose.repetitions > floor:
                return ex.id, replace(dose, repetitions=max(floor, dose.repetitions - r_step)), var
        elif var == "sets" and dose.sets is not None and dose.sets > 1:
            return ex.id, replace(dose, sets=dose.sets - 1), var
        elif var == "hold-seconds" and dose.hold_seconds is not None:
            floor = int(_param(kb, "follow-up-hold-min-seconds", 2))
            if dose.hold_seconds > floor:
                new = max(floor, dose.hold_seconds - _hold_step(dose.hold_seconds, kb))
                return ex.id, replace(dose, hold_seconds=new), var
    return None


def chain_relatives(kb: KnowledgeBase, ex_id: str) -> set[str]:
    """The exercise, its easier versions and its harder versions (following the chains)."""
    out = {ex_id}
    for rel in ("easier", "harder"):
        cur = ex_id
        while cur in kb.exercises:
            nxt = getattr(kb.exercises[cur], rel)
            if nxt is None or nxt in out:
                break
            out.add(nxt)
            cur = nxt
    return out


def harder_versions(kb: KnowledgeBase, ex_id: str) -> list[str]:
    """Its harder versions, nearest first (the catalog's progression chain)."""
    out: list[str] = []
    cur = kb.exercises[ex_id].harder if ex_id in kb.exercises else None
    while cur is not None and cur in kb.exercises and cur not in out and cur != ex_id:
        out.append(cur)
        cur = kb.exercises[cur].harder
    return out


def swap_candidate(kb: KnowledgeBase, ex: ExerciseDefinition, blocked: set[str],
                   preferred: Iterable[str]) -> str | None:
    """A same-goal (same purpose) catalog exercise in another direction or position, not
    one of its own easier or harder versions, not blocked; one the evaluation of today's
    facts recommends first."""
    pref = list(preferred)
    relatives = chain_relatives(kb, ex.id)
    cands = [
        c for c in kb.exercises.values()
        if c.purpose == ex.purpose and c.id not in relatives and c.id not in blocked
        and (set(c.direction) != set(ex.direction) or c.position != ex.position)
    ]
    cands.sort(key=lambda c: (pref.index(c.id) if c.id in pref else len(pref), c.id))
    return cands[0].id if cands else None


# --- texts --------------------------------------------------------------------------------


def _model_text(kb: KnowledgeBase) -> str:
    safe = int(_param(kb, "follow-up-pain-safe-max", 2))
    ok = int(_param(kb, "follow-up-pain-acceptable-max", 5))
    return (f"Pain-monitoring model: pain during 0-{safe}/10 safe, {safe + 1}-{ok} acceptable, "
            f"above {ok} too much, and settled by the next morning (Silbernagel 2007, Thomee "
            "1997 [S]; extrapolated to low back pain, Smith 2017 [R]).")


def _seen(resp: ExerciseResponse | None) -> str:
    if resp is None:
        return "No response recorded."
    parts = []
    if resp.pain_during is not None:
        parts.append(f"pain during {resp.pain_during}/10")
    if resp.next_morning is not None:
        parts.append(f"next morning {_RATING_WORDS[resp.next_morning]}")
    if resp.sessions_done is not None or resp.sessions_prescribed is not None:
        d = "?" if resp.sessions_done is None else resp.sessions_done
        p = "?" if resp.sessions_prescribed is None else resp.sessions_prescribed
        parts.append(f"{d} of {p} sessions done")
    if resp.perceived_effect is not None:
        parts.append(f"feels {_RATING_WORDS[resp.perceived_effect]}")
    if resp.peripheralization is not None:
        parts.append("leg symptoms spread further" if resp.peripheralization
                     else "no spreading leg symptoms")
    return ("Reported: " + ", ".join(parts) + ".") if parts else "Response empty."


def _missing_items(resp: ExerciseResponse | None) -> list[str]:
    if resp is None:
        return ["every item"]
    names = (("pain during", resp.pain_during), ("next morning", resp.next_morning),
             ("sessions done", resp.sessions_done),
             ("sessions prescribed", resp.sessions_prescribed),
             ("leg symptoms spreading", resp.peripheralization))
    return [n for n, v in names if v is None]


def _dose_change(var: str, old: ExerciseDose, new: ExerciseDose, old_title: str,
                 new_title: str) -> str:
    if var == "exercise":
        return f"{old_title} -> {new_title}"
    attr = {"repetitions": "repetitions", "sets": "sets", "hold-seconds": "hold_seconds"}[var]
    return f"{var} {getattr(old, attr)} -> {getattr(new, attr)}"


def _short(dose: ExerciseDose) -> str:
    """The dose in words without the pain guidance (the plan carries that)."""
    return dose.describe().split(". Pain:")[0] + "."


def _patient_dose_words(var: str, new: ExerciseDose, title: str) -> str:
    if var == "exercise":
        return f"Your new exercise is: {title}, {_short(new)}"
    return f"Now: {_short(new)}"


# --- the revision -------------------------------------------------------------------------


@dataclass
class _Item:
    exercise_id: str
    dose: ExerciseDose
    change: ExerciseChange
    from_previous: bool
    order: int


def _decision(kb: KnowledgeBase, result: EngineResult | None
              ) -> tuple[str | None, list[tuple[str, AdjustAction]], bool]:
    """The most cautious decision the per-exercise rules made, the rules behind it, and
    whether the response was bad (DS-02)."""
    if result is None:
        return None, [], False
    adjusts: list[tuple[str, AdjustAction]] = []
    for name in sorted(result.derived):
        if name.startswith("adjust."):
            rid = name.split(".", 1)[1]
            adjusts += [(rid, a.adjust) for a in kb.rule(rid).then if a.adjust is not None]
    bad = bool(result.derived.get("response-bad") and result.derived["response-bad"].value)
    if not adjusts:
        return None, [], bad
    top = max(DECISION_SEVERITY[a.decision] for _, a in adjusts)
    order = {r.id: i for i, r in enumerate(kb.rules)}
    winners = sorted(((r, a) for r, a in adjusts if DECISION_SEVERITY[a.decision] == top),
                     key=lambda ra: order[ra[0]])
    return winners[0][1].decision, winners, bad


@dataclass(frozen=True)
class _Reviewed:
    """One exercise of the previous plan at this follow-up: its response and the decision
    the per-exercise rules made for it."""

    prev: PreviousExercise
    order: int
    response: ExerciseResponse | None
    since: datetime | None
    decision: str | None
    winners: list[tuple[str, AdjustAction]]
    consecutive_bad: int

    @classmethod
    def of(cls, kb: KnowledgeBase, prev: PreviousExercise, order: int,
           response: ExerciseResponse | None, result: EngineResult | None,
           created: datetime | None) -> _Reviewed:
        decision, winners, bad = _decision(kb, result)
        answered = response is not None and (response.pain_during is not None
                                             or response.next_morning is not None)
        carried_bad = prev.consecutive_bad + 1 if bad else (0 if answered else
                                                            prev.consecutive_bad)
        return cls(prev, order, response, prev.since or created, decision, winners, carried_bad)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(sorted(self.response.sources)) if self.response else ()

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(sorted({r for r, _ in self.winners}))

    @property
    def why(self) -> str:
        return " ".join(dict.fromkeys(a.why for _, a in self.winners))

    @property
    def told(self) -> str:
        """What the deciding rules tell the patient (empty when they say nothing)."""
        return next((a.patient for _, a in self.winners if a.patient), "")

    def change(self, kind: ChangeKind, patient_text: str, clinician_text: str, *,
               rule_ids: tuple[str, ...] | None = None, exercise_id: str | None = None,
               previous_id: str | None = None, variable: str | None = None,
               dose: ExerciseDose | None = None, consecutive_bad: int | None = None,
               since: datetime | None = None) -> ExerciseChange:
        """The change of this exercise; what is not given keeps the previous exercise's
        value (``since``: when it started, unless the exercise starts anew)."""
        return ExerciseChange(
            exercise_id=exercise_id or self.prev.exercise_id, kind=kind,
            previous_exercise_id=previous_id, variable=variable,
            patient_text=patient_text, clinician_text=clinician_text,
            rule_ids=self.rule_ids if rule_ids is None else rule_ids,
            sources=self.sources, previous_dose=self.prev.dose,
            consecutive_bad=self.consecutive_bad if consecutive_bad is None
            else consecutive_bad,
            since=self.since if since is None else since,
            dose=dose, decision=self.decision)


def _unread(prev: PreviousExercise) -> str:
    return "" if prev.dose else " The previous dose could not be read; the catalog dose is used."


def _unlisted_responses(fu: FollowUp, previous_ids: set[str]) -> list[InputIssue]:
    """A warning for each response naming an exercise the previous plan does not list."""
    return [InputIssue(
        "warning", "not-found", f"a response names exercise '{r.exercise_id}', which "
        "the previous plan does not list; it was not used", f"response[{r.exercise_id}]")
        for r in sorted(fu.responses, key=lambda r: r.exercise_id)
        if r.exercise_id not in previous_ids]


@dataclass
class _Revision:
    """The revision under way: what each previous exercise became, and what today's
    evaluation adds. The steps of ``revise_plan`` are its methods, in the order run."""

    kb: KnowledgeBase
    base: Plan
    prev_plan: PreviousPlan
    as_of: datetime
    items: list[_Item] = field(default_factory=list)
    changes_out: list[ExerciseChange] = field(default_factory=list)  # exercises that leave
    stopped_avoid: list[AvoidedExercise] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)  # exercise ids in the revised plan
    removed: set[str] = field(default_factory=set)  # taken out (never re-added as new)
    not_tolerated: set[str] = field(default_factory=set)  # regressed/swapped/stopped
    new_deferred: list[DeferredExercise] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.holding = [a for a in self.base.alerts if a.holds_exercise]
        self.avoid_now = {a.exercise_id: a for a in self.base.avoid}
        self.prev_avoided = set(self.prev_plan.avoided)
        self.previous_ids = {e.exercise_id for e in self.prev_plan.exercises}
        self.live = [e for e in self.prev_plan.exercises if e.status != "stopped"]
        self.model = _model_text(self.kb)

    @property
    def held(self) -> bool:
        return bool(self.holding)

    def keep(self, ex_id: str, dose: ExerciseDose, change: ExerciseChange, order: int) -> None:
        self.items.append(_Item(ex_id, dose, change, True, order))
        self.taken.add(ex_id)

    def drop(self, ex_id: str, change: ExerciseChange,
             avoided: AvoidedExercise | None = None) -> None:
        self.changes_out.append(change)
        if avoided is not None:
            self.stopped_avoid.append(avoided)
        self.removed.add(ex_id)

    # --- step 1: each exercise of the previous plan ------------------------------------

    def revise(self, r: _Reviewed) -> None:
        ex = self.kb.exercises.get(r.prev.exercise_id)
        if ex is None:
            self.drop(r.prev.exercise_id, r.change(
                "stopped", "Stop this exercise: it is no longer in the exercise catalog. "
                "Your clinician will suggest another.",
                f"'{r.prev.exercise_id}' is not in the catalog of {self.kb.ruleset_name}; "
                "stopped.", rule_ids=()))
            return
        dose = r.prev.dose or ExerciseDose.of(ex.dose)
        if self.held:
            self._hold_for_alert(r, ex, dose)
        elif ex.id in self.avoid_now:
            av = self.avoid_now[ex.id]
            self.drop(ex.id, r.change(
                "stopped", f"Stop this exercise: {av.reason}",
                f"Vetoed by today's evaluation ({', '.join(av.rule_ids)}): {av.reason} "
                f"{_seen(r.response)}", rule_ids=av.rule_ids))
        elif r.decision is None:
            self._continue(r, ex, dose)
        else:
            self._apply_decision(r, ex, dose)

    def _hold_for_alert(self, r: _Reviewed, ex: ExerciseDefinition,
                        dose: ExerciseDose) -> None:
        codes = ", ".join(a.code for a in self.holding)
        self.keep(ex.id, dose, r.change(
            "stopped", "Stop all your exercises for now and follow your clinician's advice "
            "about the referral; they will tell you when to restart.",
            f"Exercise held: {codes} (holding alert, re-checked at this follow-up). "
            f"{_seen(r.response)}",
            rule_ids=tuple(sorted({x for a in self.holding for x in a.rule_ids})),
            dose=dose), r.order)

    def _continue(self, r: _Reviewed, ex: ExerciseDefinition, dose: ExerciseDose) -> None:
        """No rule decided anything: same dose (a missing answer is never read as fine)."""
        if r.prev.status == "on-hold":
            self.keep(ex.id, dose, r.change(
                "continued", f"You can now start this exercise: {_short(dose)}",
                "Was on hold in the previous plan; no holding alert now, so it starts at "
                f"the same dose.{_unread(r.prev)}", dose=dose, since=self.as_of), r.order)
            return
        missing = _missing_items(r.response)
        note = ("no response recorded" if r.response is None else
                "response incomplete (missing: " + ", ".join(missing) + ")"
                if missing else "no rule called for a change")
        self.keep(ex.id, dose, r.change(
            "continued", "Carry on with this exercise as before. Tell your clinician "
            "how it goes: pain during it, the next morning, and how many sessions you "
            "did.", f"Continued at the same dose: {note}; not progressed, since a "
            f"missing answer is never read as fine. {_seen(r.response)}{_unread(r.prev)}",
            dose=dose), r.order)

    def _blocked(self) -> set[str]:
        """Exercise ids a step or swap may not move to now."""
        return (set(self.avoid_now) | self.prev_avoided | self.taken | self.removed
                | {e.exercise_id for e in self.live})

    def _apply_decision(self, r: _Reviewed, ex: ExerciseDefinition,
                        dose: ExerciseDose) -> None:
        base_text = f"{r.why} {_seen(r.response)} {self.model}{_unread(r.prev)}"
        blocked = self._blocked()
        if r.decision == "progress":
            self._progress(r, ex, dose, base_text, blocked)
        elif r.decision == "hold":
            self.keep(ex.id, dose, r.change(
                "held", f"{r.told} {_short(dose)}", f"{base_text} Held at the same dose.",
                dose=dose), r.order)
        elif r.decision == "regress":
            self._regress(r, ex, dose, base_text, blocked)
        elif r.decision == "swap":
            self._swap(r, ex, base_text, blocked)
        else:  # stop
            self.not_tolerated.add(ex.id)
            self.drop(ex.id, r.change("stopped", r.told or "Stop this exercise.", base_text),
                      _avoided(self.kb, ex, "Stopped at follow-up: " + r.why, r.rule_ids,
                               r.sources))

    def _progress(self, r: _Reviewed, ex: ExerciseDefinition, dose: ExerciseDose,
                  base_text: str, blocked: set[str]) -> None:
        step = harder_step(self.kb, ex, dose, blocked) if r.prev.dose is not None else None
        if step is not None:
            self._step(r, ex, dose, base_text, ("progressed", "Progressed one variable"), step)
            return
        reason = ("the previous dose could not be read, so it is not progressed"
                  if r.prev.dose is None else
                  "it is already at the top of its progression in the catalog")
        self.keep(ex.id, dose, r.change(
            "held", "Keep this exercise as it is; it is going well.",
            f"{base_text} Held: {reason}.", dose=dose), r.order)

    def _regress(self, r: _Reviewed, ex: ExerciseDefinition, dose: ExerciseDose,
                 base_text: str, blocked: set[str]) -> None:
        self.not_tolerated.add(ex.id)
        step = regress_step(self.kb, ex, dose, blocked)
        if step is not None:
            self._step(r, ex, dose, base_text, ("regressed", "Regressed one step"), step)
            return
        self.drop(ex.id, r.change(
            "stopped", "Stop this exercise for now: it cannot be made any easier. "
            "Your clinician will suggest another.",
            f"{base_text} Stopped: no easier version and the dose is at its floor."),
            _avoided(self.kb, ex, "Stopped at follow-up: it could not be made easier after "
                     "a bad response.", r.rule_ids, r.sources))

    def _swap(self, r: _Reviewed, ex: ExerciseDefinition, base_text: str,
              blocked: set[str]) -> None:
        self.not_tolerated.add(ex.id)
        new_id = swap_candidate(self.kb, ex, blocked, self._recommended())
        self.removed.add(ex.id)
        self.stopped_avoid.append(_avoided(self.kb, ex, "Swapped at follow-up: " + r.why,
                                           r.rule_ids, r.sources))
        if new_id is None:
            self.changes_out.append(r.change(
                "stopped", f"{r.told} Your clinician will choose the new exercise with you.",
                f"{base_text} No same-goal exercise in another direction or position is "
                "available (catalog, vetoes, avoided); stopped. Clinician: please choose "
                "an alternative."))
            return
        new_ex = self.kb.exercises[new_id]
        new_dose = ExerciseDose.of(new_ex.dose)
        self.keep(new_ex.id, new_dose, r.change(
            "swapped", f"{r.told} Your new exercise is: {new_ex.title}. {_short(new_dose)}",
            f"{base_text} Swapped {ex.title} -> {new_ex.title} (same purpose: "
            f"{ex.purpose}; direction {'/'.join(d.value for d in new_ex.direction)}, "
            f"position {new_ex.position}).",
            exercise_id=new_ex.id, previous_id=ex.id, variable="exercise", dose=new_dose,
            consecutive_bad=0, since=self.as_of), r.order)

    def _recommended(self) -> list[str]:
        return ([pe.exercise_id for pe in self.base.exercises]
                + [d.exercise_id for d in self.base.deferred])

    def _step(self, r: _Reviewed, ex: ExerciseDefinition, dose: ExerciseDose, base_text: str,
              how: tuple[ChangeKind, str], step: tuple[str, ExerciseDose, str]) -> None:
        """A progression or regression step: a dose variable, or the harder/easier version,
        which then takes the previous one's place."""
        (kind, verb), (new_id, new_dose, var) = how, step
        title = self.kb.exercises[new_id].title
        self.keep(new_id, new_dose, r.change(
            kind, f"{r.told} {_patient_dose_words(var, new_dose, title)}",
            f"{base_text} {verb}: {_dose_change(var, dose, new_dose, ex.title, title)}.",
            exercise_id=new_id, previous_id=ex.id if new_id != ex.id else None,
            variable=var, dose=new_dose, since=r.since if new_id == ex.id else self.as_of),
            r.order)
        if new_id != ex.id:
            self.removed.add(ex.id)

    # --- step 2: what today's evaluation recommends that the previous plan did not cover --

    def add_recommended(self) -> None:
        covered = set(self.taken)
        for i in list(self.taken):
            covered |= chain_relatives(self.kb, i)
        # a harder version of an exercise that was just not tolerated is not started as new
        too_hard = {h: i for i in sorted(self.not_tolerated)
                    for h in harder_versions(self.kb, i)}
        purposes = {self.kb.exercises[i].purpose for i in self.taken}
        for pe in self.base.candidates or self.base.exercises:
            if pe.exercise_id in self.taken or pe.exercise_id in self.removed \
                    or pe.exercise_id in self.previous_ids or pe.exercise_id in self.prev_avoided:
                continue
            reason = self._not_new_reason(pe, too_hard, covered, purposes)
            if reason is not None:
                self.new_deferred.append(DeferredExercise(pe.exercise_id, pe.title, reason,
                                                          pe.rule_ids))
                continue
            purposes.add(pe.purpose)
            self.taken.add(pe.exercise_id)
            self.items.append(_Item(pe.exercise_id, pe.dose, ExerciseChange(
                exercise_id=pe.exercise_id, kind="new", previous_exercise_id=None,
                variable=None, patient_text=f"New exercise: {pe.title}, {_short(pe.dose)}",
                clinician_text=f"New: recommended by today's evaluation. {pe.rationale}",
                rule_ids=pe.rule_ids, sources=pe.sources, since=self.as_of, dose=pe.dose),
                False, len(self.live) + len(self.items)))

    def _not_new_reason(self, pe: PlannedExercise, too_hard: dict[str, str],
                        covered: set[str], purposes: set[str]) -> str | None:
        if pe.exercise_id in too_hard:
            easier = self.kb.exercises[too_hard[pe.exercise_id]].title
            return (f"a harder version of {easier}, which was not tolerated at this "
                    "follow-up: not started now")
        if pe.exercise_id in covered:
            return "a harder or easier version of it is already in the plan"
        if pe.purpose in purposes:
            return f"same purpose ({pe.purpose}) as an exercise already in the plan"
        return None

    # --- step 3: a minimal programme (or any size limit) ---------------------------------

    def apply_limit(self) -> list[_Item]:
        """The items kept (highest value first: the previous plan's exercises, then today's
        ranking), in plan order; the others are left out with a reason."""
        limit, limit_why = plan_limit(self.kb, dict(self.base.derived), len(self.items))
        rank = {pe.exercise_id: i for i, pe in enumerate(self.base.exercises)}
        rank.update({d.exercise_id: len(rank) + i for i, d in enumerate(self.base.deferred)})

        def value(it: _Item) -> tuple[int, int, int]:
            near = [rank[x] for x in chain_relatives(self.kb, it.exercise_id) if x in rank]
            return (0 if it.from_previous else 1, min(near) if near else len(rank) + 1,
                    it.order)

        kept = sorted(self.items, key=value)[:limit] if len(self.items) > limit \
            else list(self.items)
        kept_ids = {id(it) for it in kept}
        for it in self.items:
            if id(it) not in kept_ids:
                self._leave_out(it, limit, limit_why)
        kept.sort(key=lambda it: it.order)
        return kept

    def _leave_out(self, it: _Item, limit: int, limit_why: str) -> None:
        if it.from_previous:
            self.changes_out.append(replace(
                it.change, kind="stopped", variable=None, dose=None,
                patient_text="Leave this exercise out for now: fewer exercises are easier to "
                "keep up.", clinician_text=f"Left out: beyond {limit} exercises: {limit_why}. "
                f"(It would have been: {it.change.kind}.)"))
        else:
            self.new_deferred.append(DeferredExercise(
                it.exercise_id, self.kb.exercises[it.exercise_id].title,
                f"beyond {limit} exercises: {limit_why}", it.change.rule_ids))

    # --- step 4: the revised lists -------------------------------------------------------

    def planned(self, kept: list[_Item]) -> list[PlannedExercise]:
        out: list[PlannedExercise] = []
        base_by_id = {pe.exercise_id: pe for pe in self.base.exercises}
        for it in kept:
            ex = self.kb.exercises[it.exercise_id]
            b = base_by_id.get(ex.id)
            rids = tuple(sorted(set(it.change.rule_ids) | set(b.rule_ids if b else ())))
            srcs = tuple(sorted(set(it.change.sources) | set(b.sources if b else ())))
            rationale = it.change.clinician_text if b is None or it.change.kind == "new" \
                else f"{it.change.clinician_text} {b.rationale}"
            out.append(PlannedExercise(
                ex.id, ex.title, ex.purpose, ex.instructions,
                tuple(d.value for d in ex.direction), ex.load.value, ex.surface.value,
                it.dose, "on-hold" if self.held else "proposed", rationale, rids, srcs,
                _evidence(self.kb, rids)))
        return out

    def avoid(self) -> list[AvoidedExercise]:
        """Today's vetoes, exercises stopped now, and what the previous plan said to avoid."""
        avoid = list(self.base.avoid)
        listed = set(self.avoid_now)
        for a in self.stopped_avoid:
            if a.exercise_id not in listed and a.exercise_id not in self.taken:
                avoid.append(a)
                listed.add(a.exercise_id)
        for ex_id in sorted(self.prev_avoided):
            if ex_id in listed or ex_id in self.taken or ex_id not in self.kb.exercises:
                continue
            avoid.append(_avoided(
                self.kb, self.kb.exercises[ex_id], "Listed as not to do in the previous plan; "
                "restart only on the clinician's decision.", (), (self.prev_plan.reference,)))
            listed.add(ex_id)
        avoid.sort(key=lambda a: a.exercise_id)
        return avoid

    def deferred(self, planned: list[PlannedExercise]) -> list[DeferredExercise]:
        """What today's rules recommended but the revised plan leaves out, with the
        revision's own reasons (the first-plan selection's reasons no longer apply)."""
        final_ids = {p.exercise_id for p in planned}
        handled = final_ids | {x.exercise_id for x in self.new_deferred}
        out = [d for d in self.new_deferred if d.exercise_id not in final_ids]
        if self.held:  # nothing is added while exercise is held: keep today's list as it was
            out += [d for d in self.base.deferred if d.exercise_id not in handled]
        return out


def revise_plan(kb: KnowledgeBase, patient: PatientFacts, base: Plan,
                decisions: Mapping[str, EngineResult]) -> Plan:
    """The revised plan: ``base`` (today's facts, evaluated as a first visit) applied to the
    previous plan with each exercise's decision; ``decisions`` by previous exercise id."""
    fu = patient.follow_up
    assert fu is not None
    rev = _Revision(kb, base, fu.previous, patient.as_of)
    issues = list(base.issues) + _unlisted_responses(fu, rev.previous_ids)
    responses = {r.exercise_id: r for r in fu.responses}
    firings: list[Derivation] = list(base.firings)
    for n, prev in enumerate(rev.live):
        result = decisions.get(prev.exercise_id)
        if result is not None:
            firings += result.firings
        rev.revise(_Reviewed.of(kb, prev, n, responses.get(prev.exercise_id), result,
                                fu.previous.created))
    if not rev.held:
        rev.add_recommended()
    kept = rev.apply_limit()
    planned = rev.planned(kept)
    plan = replace(
        base, exercises=tuple(planned), avoid=tuple(rev.avoid()),
        deferred=tuple(rev.deferred(planned)), issues=tuple(issues),
        firings=tuple(sorted(set(firings))), replaces=fu.previous.reference,
        changes=tuple([it.change for it in kept] + rev.changes_out))
    return with_check_in(kb, plan)


def _evidence(kb: KnowledgeBase, rule_ids: Iterable[str]) -> tuple[EvidenceRef, ...]:
    refs = {e.id: EvidenceRef.of(e) for rid in rule_ids for e in kb.rule(rid).evidence}
    return tuple(refs[k] for k in sorted(refs))


def _avoided(kb: KnowledgeBase, ex: ExerciseDefinition, reason: str,
             rule_ids: tuple[str, ...], sources: tuple[str, ...]) -> AvoidedExercise:
    return AvoidedExercise(ex.id, ex.title, tuple(d.value for d in ex.direction), ex.load.value,
                           ex.surface.value, reason, rule_ids, sources, _evidence(kb, rule_ids))


def with_check_in(kb: KnowledgeBase, plan: Plan) -> Plan:
    """Propose a check-in 48-72 h (parameters) after a new or changed exercise; none when
    exercise is held or the knowledge base has no check-in parameters."""
    if plan.exercise_held or "follow-up-check-in-start-hours" not in kb.parameters:
        return plan
    if plan.replaces is None:
        ids = [pe.exercise_id for pe in plan.exercises if pe.status == "proposed"]
        reason = "new exercises"
    else:
        changed = {c.exercise_id for c in plan.changes
                   if c.kind in ("new", "progressed", "regressed", "swapped")
                   or (c.kind == "continued" and c.since == plan.as_of)}
        ids = [pe.exercise_id for pe in plan.exercises
               if pe.status == "proposed" and pe.exercise_id in changed]
        reason = "new or changed exercises"
    if not ids:
        return plan
    start = plan.as_of + timedelta(hours=float(kb.parameter("follow-up-check-in-start-hours")))
    end_h = _param(kb, "follow-up-check-in-end-hours", 72)
    end = max(start, plan.as_of + timedelta(hours=end_h))
    return replace(plan, check_in=CheckIn(
        start, end, f"Check how the {reason} went: pain during, the next morning, sessions "
        "done (most people stop within days when an exercise feels like nothing or hurts).",
        tuple(ids)))


def previous_plan_of(plan: Plan, reference: str) -> PreviousPlan:
    """The previous-plan view of a plan this project produced: what the FHIR side reads
    back from the CarePlan, so a trajectory can run visit after visit without FHIR."""
    by_id = {c.exercise_id: c for c in plan.changes if c.kind != "stopped" or
             any(pe.exercise_id == c.exercise_id for pe in plan.exercises)}
    exercises = []
    for pe in plan.exercises:
        c = by_id.get(pe.exercise_id)
        exercises.append(PreviousExercise(
            exercise_id=pe.exercise_id, dose=pe.dose, status=pe.status,
            since=(c.since if c is not None and c.since is not None else plan.as_of),
            consecutive_bad=c.consecutive_bad if c is not None else 0))
    return PreviousPlan(reference=reference, created=plan.as_of, ruleset=plan.knowledge_base,
                        exercises=tuple(exercises),
                        avoided=tuple(a.exercise_id for a in plan.avoid))
