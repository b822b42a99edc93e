"""The plan in plain words, for the clinician reading a terminal or a note.

Layout: a header (who, as of when, which rules; every date in the patient's time zone when
the input gives one, else UTC, said once), then the clinician's part (findings as numbers,
progress across visits, alerts, exercises with their reasons, changes since the last plan as
a table, what was left out and why, missing data, input notes), then the patient's part
(what to do, the pain guide, the check-in, safety-netting) without rule ids, evidence ids or
Observation ids. A paragraph several exercises share (the pain guide, a reason, a deferral
reason) is written once and referred to. Lines wrap at spaces only, never inside an id.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence

from cds import (
    Fact,
    Plan,
    ProgressPoint,
    human_date,
    human_instant,
    progress_by_measure,
    show_number,
)
from movement_cds._progress_chart import sparkline

__all__ = ["render_summary", "shared_paragraphs", "split_sentences"]

_LEVEL = {
    "emergency": "EMERGENCY",
    "urgent": "URGENT",
    "caution": "CAUTION",
    "information": "NOTE",
}
_PRIORITY = {
    "stat": "stat (emergency, same day)",
    "asap": "asap (same-day urgent assessment)",
    "urgent": "urgent (within about two weeks)",
    "routine": "routine",
}
# why an item is missing, when the reader knows more than "not asked"
_MISSING_BECAUSE = {
    "unreadable": " - an answer was received but could not be read",
    "undated-no": " - answered NO without a date",
    "stale-no": " - the last answer is too old to count",
    "discordant": " - a YES and a later NO disagree",
}
_PAIN_SPLIT = ". Pain: "
_SENTENCE_END = re.compile(r"(?<=[.!?)])\s+(?=[A-Z(])")
_FMS = ("deep-squat", "hurdle-step", "inline-lunge", "shoulder-mobility", "active-slr",
        "trunk-stability-pushup", "rotary-stability")
_DEFAULT_WIDTH = 92


class _Out:
    """Lines, wrapped at ``width`` on spaces only: an id (``Observation/obs-pain-now``,
    ``CL-05-CHRONIC-LEG``) is never split, even when longer than the line."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.lines: list[str] = []

    def line(self, text: str = "") -> None:
        self.lines.append(text)

    def wrap(self, text: str, indent: str = "    ", rest: str | None = None) -> None:
        self.lines.append(textwrap.fill(
            " ".join(text.split()), width=self.width, initial_indent=indent,
            subsequent_indent=rest if rest is not None else " " * len(indent),
            break_on_hyphens=False, break_long_words=False))

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph (a closing parenthesis may end one)."""
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def shared_paragraphs(texts: Sequence[str]) -> tuple[list[str], list[list[int | str]]]:
    """Paragraphs that two or more of ``texts`` share, each once, and each text as a list of
    its parts: an int (the index of a shared paragraph) or its own words. Shared paragraphs
    are runs of consecutive sentences found in the same texts."""
    sentences = [split_sentences(t) for t in texts]
    where: dict[str, set[int]] = {}
    for i, ss in enumerate(sentences):
        for s in ss:
            where.setdefault(s, set()).add(i)
    shared: list[str] = []
    index: dict[str, int] = {}
    parts: list[list[int | str]] = []
    for ss in sentences:
        mine: list[int | str] = []
        run: list[str] = []
        key: frozenset[int] = frozenset()
        for s in [*ss, ""]:
            k = frozenset(where.get(s, ()))
            if run and (k != key or not s):
                para = " ".join(run)
                if len(key) > 1:
                    n = index.setdefault(para, len(shared))
                    if n == len(shared):
                        shared.append(para)
                    mine.append(n)
                else:
                    mine.append(para)
                run = []
            if s:
                run.append(s)
                key = k
        parts.append(mine)
    return shared, parts


def _facts(plan: Plan) -> dict[str, Fact]:
    return {f.name: f for f in plan.facts}


def _when(plan: Plan, *names: str) -> str:
    recorded = dict(plan.recorded)
    dates = sorted({human_date(recorded[n], plan.time_zone) for n in names if n in recorded})
    return f" ({', '.join(dates)})" if dates else ""


def _findings(out: _Out, plan: Plan) -> None:
    """Numbers first: pain, ODI, STarT Back, FMS, the red-flag answers, with their dates."""
    facts, derived = _facts(plan), plan.derived_values
    out.line("FINDINGS (as read from the input; dates recorded)")
    rows: list[tuple[str, str]] = []
    if "pain-now" in facts:
        rows.append(("Pain now", f"{show_number(float(facts['pain-now'].value))}/10"
                     + _when(plan, "pain-now")))
    if "odi-score" in facts:
        rows.append(("ODI", f"{show_number(float(facts['odi-score'].value))}%"
                     + _when(plan, "odi-score")))
    if "startback-total" in facts:
        sb = f"total {facts['startback-total'].value}/9"
        if "startback-psychosocial" in facts:
            sb += f", psychosocial {facts['startback-psychosocial'].value}/5"
        risk = derived.get("classification.startback-risk")
        sb += f": {risk} risk" if risk else ""
        items = [f"startback-item-{i}" for i in range(1, 10)]
        rows.append(("STarT Back", sb + _when(plan, "startback-total", *items)))
    fms = _fms_text(facts)
    if fms:
        rows.append(("FMS", fms + _when(plan, *(f"fms-{t}" for t in _FMS))))
    classes = [f"{n.split('.', 1)[1]} {v}" for n, v in plan.derived
               if n.startswith("classification.")]
    if classes:
        rows.append(("Classified", "; ".join(classes)))
    for label, value in rows:
        out.wrap(value, f"  {label:<12}", " " * 14)
    _red_flag_rows(out, plan, facts)
    out.line()


def _fms_text(facts: Mapping[str, Fact]) -> str:
    parts = []
    for test in _FMS:
        f = facts.get(f"fms-{test}")
        if f is None:
            continue
        left, right = facts.get(f"fms-{test}.left"), facts.get(f"fms-{test}.right")
        sides = f" (L{left.value} R{right.value})" if left and right else ""
        parts.append(f"{test.replace('-', ' ')} {f.value}{sides}")
    if not parts:
        return ""
    total = facts.get("fms-total")
    head = f"total {total.value}/21" if total is not None else "total not known"
    return f"{head}: " + ", ".join(parts)


def _red_flag_rows(out: _Out, plan: Plan, facts: Mapping[str, Fact]) -> None:
    """Each red-flag question with its answer and date, grouped by answer and date."""
    recorded = dict(plan.recorded)
    names = [n for n, d in plan.fact_descriptions.items() if "red-flag screen" in d]
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        f = facts.get(name)
        if f is None:
            key = "not answered (see MISSING)"
        else:
            word = "YES" if f.value is True else "NO"
            day = (human_date(recorded[name], plan.time_zone) if name in recorded
                   else "date unknown")
            key = f"{word} on {day}"
        groups.setdefault(key, []).append(name.removeprefix("rf-").replace("-", " "))
    for n, key in enumerate(sorted(groups, key=lambda k: (not k.startswith("YES"), k))):
        label = "Red flags" if n == 0 else ""
        out.wrap(f"{key}: {', '.join(groups[key])}", f"  {label:<12}", " " * 14)


def _progress(out: _Out, plan: Plan) -> None:
    """A small table: one row per measure, one column per visit date; ``*`` marks the value
    the decision read, the others were superseded (or too old)."""
    series = progress_by_measure(plan.progress)
    if not any(len(s) >= 2 for s in series.values()):
        return
    days = sorted({p.when.date() for s in series.values() for p in s})
    day_text = {p.when.date(): human_date(p.when, plan.time_zone)
                for s in series.values() for p in s}
    out.line("PROGRESS ACROSS VISITS (* = the value this plan used; others superseded)")
    head = f"  {'':<16}" + "".join(f"{day_text[d]:>13}" for d in days) + "  trend"
    out.line(head)
    for measure, points in series.items():
        by_day = {p.when.date(): p for p in points}
        cells = "".join(f"{_cell(by_day.get(d)):>13}" for d in days)
        out.line(f"  {_MEASURE_SHORT[measure]:<16}{cells}  {sparkline(points)}")
    sources = [f"{_MEASURE_SHORT[m]}: " + ", ".join(s for p in pts for s in p.sources)
               for m, pts in series.items()]
    out.wrap("From: " + "; ".join(sources))
    out.line()


_MEASURE_SHORT = {"pain": "Pain now /10", "odi": "ODI %", "adherence": "Sessions done %"}


def _cell(p: ProgressPoint | None) -> str:
    if p is None:
        return "-"
    mark = "*" if p.used else (" (old)" if p.role == "stale" else "")
    return f"{show_number(p.value)}{mark}"


def _alerts(out: _Out, plan: Plan) -> None:
    if not plan.alerts:
        return
    out.line("ALERTS")
    for a in plan.alerts:
        out.line(f"  [{_LEVEL[a.level]}] {a.display}")
        out.wrap(a.detail)
        if a.referral:
            out.wrap(f"Referral: {_PRIORITY[a.referral.priority]} to {a.referral.to}")
        out.wrap(f"Plan: {a.mitigation}")
        out.wrap(f"Rules: {', '.join(a.rule_ids)}; evidence: "
                 + ", ".join(e.id for e in a.evidence))
        if a.sources:
            out.wrap(f"From: {', '.join(a.sources)}")
    out.line()


def _dose_and_pain(dose_text: str) -> tuple[str, str]:
    dose, _, pain = dose_text.partition(_PAIN_SPLIT)
    return dose.rstrip(".") + ".", pain


def _exercises(out: _Out, plan: Plan, parts: list[list[int | str]]) -> None:
    if plan.exercise_held:
        out.wrap("EXERCISE ON HOLD: a red-flag alert calls for referral first; the exercises "
                 "below are shown for reference only.", "")
        out.line()
    if not plan.exercises:
        if not plan.exercise_held:
            out.line("EXERCISES: none proposed by the rules for these findings.")
            out.line()
        return
    out.line("EXERCISES" + (" (on hold)" if plan.exercise_held else " (proposed)")
             + ": dose, reasons, provenance (instructions: in the patient part)")
    for n, (e, mine) in enumerate(zip(plan.exercises, parts, strict=True), 1):
        out.line(f"  {n}. {e.title}")
        out.wrap(f"Dose: {_dose_and_pain(e.dose.describe())[0]}")
        out.wrap("Why: " + _refer(mine))
        tags = ", ".join(f"{x.id} [{x.tag}, {x.strength}]" for x in e.evidence)
        out.wrap(f"Rules: {', '.join(e.rule_ids)}; evidence: {tags}")
        if e.sources:
            out.wrap(f"From: {', '.join(e.sources)}")
    out.line()


def _changes(out: _Out, plan: Plan, titles: Mapping[str, str],
             parts: list[list[int | str]]) -> None:
    """A short table (exercise, change), then each change's reason and provenance."""
    if plan.replaces is None:
        return
    out.line(f"CHANGES SINCE THE LAST PLAN ({plan.replaces})")
    if not plan.changes:
        out.line("  No exercise changes.")
        out.line()
        return
    names = [titles.get(c.exercise_id, c.exercise_id) for c in plan.changes]
    tw = min(40, max(len(n) for n in names))
    out.line(f"  {'#':<3}{'Exercise':<{tw}}  Change")
    for n, (c, name) in enumerate(zip(plan.changes, names, strict=True), 1):
        what = c.kind.upper() + (f" ({c.variable})" if c.variable else "")
        if c.previous_exercise_id:
            what += f", was {titles.get(c.previous_exercise_id, c.previous_exercise_id)}"
        out.line(f"  {n:<3}{name:<{tw}}  {what}")
    for n, (c, mine) in enumerate(zip(plan.changes, parts, strict=True), 1):
        text = f"{n}. Why: {_refer(mine)}"
        if c.previous_dose is not None:
            text += f" Previous dose: {_dose_and_pain(c.previous_dose.describe())[0]}"
        if c.rule_ids:
            text += f" Rules: {', '.join(c.rule_ids)}."
        if c.sources:
            text += f" From: {', '.join(c.sources)}"
        out.wrap(text, "  ", "     ")
    out.line()


def _refer(mine: list[int | str]) -> str:
    """A reason: its own words, and ``[R2]`` for a paragraph written once under REASONS."""
    return " ".join(f"[R{p + 1}]" if isinstance(p, int) else p for p in mine)


def _shared_list(out: _Out, shared: list[str], exercises: list[list[int | str]],
                 changes: list[list[int | str]]) -> None:
    """The reasons several exercises or changes share, once each, with who refers to them."""
    if not shared:
        return
    out.line("REASONS SHARED BY SEVERAL EXERCISES OR CHANGES (written once, referred to by "
             "number)")
    for i, para in enumerate(shared):
        users = [f"exercise {n}" for n, mine in enumerate(exercises, 1) if i in mine]
        users += [f"change {n}" for n, mine in enumerate(changes, 1) if i in mine]
        out.wrap(f"[R{i + 1}] ({', '.join(users)}) {para}", "  ", "    ")
    out.line()


def _check_in(out: _Out, plan: Plan, titles: Mapping[str, str]) -> None:
    ci = plan.check_in
    if ci is None or plan.exercise_held:
        return
    out.line("CHECK-IN")
    out.wrap(f"Between {human_instant(ci.start, plan.time_zone)} and "
             f"{human_instant(ci.end, plan.time_zone)}: {ci.reason}")
    if ci.exercise_ids:
        out.wrap("About: " + ", ".join(titles.get(x, x) for x in ci.exercise_ids))
    out.line()


def _left_out(out: _Out, plan: Plan) -> None:
    """Deferred exercises grouped by their reason (each reason once), then the avoid list."""
    if plan.deferred:
        out.line("ALSO SUGGESTED BY THE RULES, LEFT OUT TO KEEP THE PROGRAMME FOCUSED")
        by_reason: dict[str, list[str]] = {}
        for d in plan.deferred:
            by_reason.setdefault(d.reason, []).append(d.title)
        for reason, names in by_reason.items():
            out.wrap(f"{'; '.join(names)}. Why: {reason}", "  - ")
        out.line()
    if plan.avoid:
        out.line("AVOID")
        for v in plan.avoid:
            out.line(f"  - {v.title}")
            out.wrap(f"Why: {v.reason} (rules: {', '.join(v.rule_ids)})")
            if v.sources:
                out.wrap(f"From: {', '.join(v.sources)}")
        out.line()


def _gaps_and_notes(out: _Out, plan: Plan) -> None:
    gaps = [g for g in plan.data_gaps if g.missing]
    if gaps:
        out.line("MISSING (not read as normal)")
        for g in gaps:
            for m in g.missing:
                said = "".join(dict.fromkeys(
                    _MISSING_BECAUSE.get(n.kind, "") for n in plan.answer_notes if m in n.facts))
                out.wrap(f"{plan.fact_descriptions.get(m, m)}{said} (rule {g.rule_id})", "  - ")
        out.line()
    if plan.issues:
        out.line("INPUT NOTES")
        for issue in plan.issues:
            where = f"{issue.location}: " if issue.location else ""
            out.wrap(f"{issue.severity}: {where}{issue.message}", "  - ")
        out.line()


def _pain_guides(plan: Plan) -> list[tuple[str, list[str]]]:
    """Each distinct pain guide once, with the exercises it is for."""
    guides: dict[str, list[str]] = {}
    for e in plan.exercises:
        pain = _dose_and_pain(e.dose.describe())[1]
        if pain:
            guides.setdefault(pain, []).append(e.title)
    return list(guides.items())


def _patient(out: _Out, plan: Plan, titles: Mapping[str, str]) -> None:
    """What the patient reads: no rule ids, no evidence ids, no Observation ids."""
    out.line("=" * min(out.width, 60))
    out.line("FOR THE PATIENT")
    if plan.exercise_held:
        out.wrap("Do not start the exercises below yet: your clinician needs to see you "
                 "first.", "  ")
    for n, e in enumerate(plan.exercises, 1):
        out.line(f"  {n}. {e.title}")
        out.wrap(f"How much: {_dose_and_pain(e.dose.describe())[0]}")
        out.wrap(f"How: {e.instructions}")
    guides = _pain_guides(plan)
    for pain, names in guides:
        which = ("every exercise above" if len(guides) == 1 and len(names) == len(plan.exercises)
                 else ", ".join(names))
        out.wrap(f"Pain guide (for {which}): {pain}", "  ")
    for c in plan.changes:
        out.wrap(f"What changed, {titles.get(c.exercise_id, c.exercise_id)}: "
                 f"{c.patient_text}", "  - ")
    if plan.avoid:
        out.wrap("Do not do: " + "; ".join(v.title for v in plan.avoid) + ".", "  ")
    ci = plan.check_in
    if ci is not None and not plan.exercise_held:
        out.wrap(f"Your clinician will check in with you between "
                 f"{human_instant(ci.start, plan.time_zone)} and "
                 f"{human_instant(ci.end, plan.time_zone)}.", "  ")
    if plan.safety_net:
        out.line("  When to get help:")
        for note in plan.safety_net:
            out.wrap(note, "  - ")


def _header(out: _Out, plan: Plan) -> None:
    zone = (f"{plan.time_zone}, the patient's time zone: every date below" if plan.time_zone
            else "UTC: the input gives no time zone; every date below is in UTC")
    out.line(f"movement-cds plan for {plan.subject}")
    out.wrap(f"As of {human_instant(plan.as_of, plan.time_zone)} ({zone})", "")
    out.line(f"Knowledge base: {plan.kb_title} ({plan.knowledge_base})")
    out.line("A proposal for a licensed clinician to review; nothing here is an order.")
    out.line()
    if plan.answer_notes:
        out.line("CHECK THESE ANSWERS FIRST (how the red-flag answers were read)")
        for answer in plan.answer_notes:
            out.wrap(answer.text, "  - ")
        out.line()


def render_summary(plan: Plan, titles: Mapping[str, str] | None = None, *,
                   width: int = _DEFAULT_WIDTH) -> str:
    """The plan in words, wrapped at ``width`` columns (never inside an id); ``titles``
    names exercises by id (the knowledge base's titles) for the follow-up sections, which
    may mention exercises no longer in the plan."""
    titles = {**{e.exercise_id: e.title for e in plan.exercises},
              **{a.exercise_id: a.title for a in plan.avoid}, **(titles or {})}
    out = _Out(width)
    _header(out, plan)
    out.line("FOR THE CLINICIAN")
    out.line()
    _findings(out, plan)
    _progress(out, plan)
    _alerts(out, plan)
    texts = [e.rationale for e in plan.exercises] + [c.clinician_text for c in plan.changes]
    shared, parts = shared_paragraphs(texts)
    n = len(plan.exercises)
    _exercises(out, plan, parts[:n])
    _changes(out, plan, titles, parts[n:])
    _shared_list(out, shared, parts[:n], parts[n:])
    _check_in(out, plan, titles)
    _left_out(out, plan)
    _gaps_and_notes(out, plan)
    _patient(out, plan, titles)
    return out.text()


