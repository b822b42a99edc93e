"""The plan in plain words, for the clinician reading a terminal or a note."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

from cds import Plan

__all__ = ["render_summary"]

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


def _wrap(text: str, indent: str = "    ") -> str:
    return textwrap.fill(" ".join(text.split()), width=92, initial_indent=indent,
                         subsequent_indent=" " * len(indent))


def render_summary(plan: Plan, titles: Mapping[str, str] | None = None) -> str:
    """The plan in words; ``titles`` names exercises by id (the knowledge base's titles) for
    the follow-up sections, which may mention exercises no longer in the plan."""
    titles = {**{e.exercise_id: e.title for e in plan.exercises},
              **{a.exercise_id: a.title for a in plan.avoid}, **(titles or {})}
    out: list[str] = []
    out.append(f"movement-cds plan for {plan.subject}, as of {plan.as_of.isoformat()}")
    out.append(f"Knowledge base: {plan.kb_title} ({plan.knowledge_base})")
    out.append("A proposal for a licensed clinician to review; nothing here is an order.")
    out.append("")
    if plan.answer_notes:
        out.append("CHECK THESE ANSWERS FIRST (how the red-flag answers were read)")
        for answer in plan.answer_notes:
            out.append(_wrap(answer.text, "  - "))
        out.append("")
    if plan.alerts:
        out.append("ALERTS")
        for a in plan.alerts:
            out.append(f"  [{_LEVEL[a.level]}] {a.display}")
            out.append(_wrap(a.detail))
            if a.referral:
                out.append(_wrap(f"Referral: {_PRIORITY[a.referral.priority]} to {a.referral.to}"))
            out.append(_wrap(f"Plan: {a.mitigation}"))
            out.append(_wrap(f"Rules: {', '.join(a.rule_ids)}; evidence: "
                             + ", ".join(e.id for e in a.evidence)))
        out.append("")
    if plan.exercise_held:
        out.append("EXERCISE ON HOLD: a red-flag alert calls for referral first; the exercises "
                   "below are shown for reference only.")
        out.append("")
    if plan.exercises:
        out.append("EXERCISES" + (" (on hold)" if plan.exercise_held else ""))
        for n, e in enumerate(plan.exercises, 1):
            out.append(f"  {n}. {e.title}")
            out.append(_wrap(f"Dose: {e.dose.describe()}"))
            out.append(_wrap(f"How: {e.instructions}"))
            out.append(_wrap(f"Why: {e.rationale}"))
            tags = ", ".join(f"{x.id} [{x.tag}, {x.strength}]" for x in e.evidence)
            out.append(_wrap(f"Rules: {', '.join(e.rule_ids)}; evidence: {tags}"))
            if e.sources:
                out.append(_wrap(f"From: {', '.join(e.sources)}"))
        out.append("")
    elif not plan.exercise_held:
        out.append("EXERCISES: none proposed by the rules for these findings.")
        out.append("")
    if plan.replaces is not None:
        out.append(f"CHANGES SINCE THE LAST PLAN ({plan.replaces})")
        if not plan.changes:
            out.append("  No exercise changes.")
        for c in plan.changes:
            variable = f" ({c.variable})" if c.variable else ""
            previous = (f", was {titles.get(c.previous_exercise_id, c.previous_exercise_id)}"
                        if c.previous_exercise_id else "")
            out.append(f"  - {titles.get(c.exercise_id, c.exercise_id)}: "
                       f"{c.kind.upper()}{variable}{previous}")
            out.append(_wrap(f"For the patient: {c.patient_text}"))
            out.append(_wrap(f"Why: {c.clinician_text}"))
            if c.previous_dose is not None:
                was = c.previous_dose.describe().split(". Pain: ")[0]  # same pain guide
                out.append(_wrap(f"Previous dose: {was}"))
            if c.rule_ids:
                out.append(_wrap(f"Rules: {', '.join(c.rule_ids)}"))
            if c.sources:
                out.append(_wrap(f"From: {', '.join(c.sources)}"))
        out.append("")
    if plan.check_in is not None and not plan.exercise_held:
        ci = plan.check_in
        out.append("CHECK-IN")
        out.append(_wrap(f"Between {ci.start.isoformat()} and {ci.end.isoformat()}: "
                         f"{ci.reason}"))
        if ci.exercise_ids:
            out.append(_wrap("About: " + ", ".join(titles.get(x, x) for x in ci.exercise_ids)))
        out.append("")
    if plan.deferred:
        out.append("ALSO SUGGESTED BY THE RULES, LEFT OUT TO KEEP THE PROGRAMME FOCUSED")
        for d in plan.deferred:
            out.append(_wrap(f"{d.title}: {d.reason}", "  - "))
        out.append("")
    if plan.avoid:
        out.append("AVOID")
        for v in plan.avoid:
            out.append(f"  - {v.title}")
            out.append(_wrap(f"Why: {v.reason} (rules: {', '.join(v.rule_ids)})"))
        out.append("")
    gaps = [g for g in plan.data_gaps if g.missing]
    if gaps:
        out.append("MISSING (not read as normal)")
        for g in gaps:
            for m in g.missing:
                said = "".join(dict.fromkeys(
                    _MISSING_BECAUSE.get(n.kind, "") for n in plan.answer_notes if m in n.facts))
                out.append(f"  - {plan.fact_descriptions.get(m, m)}{said}")
        out.append("")
    if plan.issues:
        out.append("INPUT NOTES")
        for issue in plan.issues:
            where = f"{issue.location}: " if issue.location else ""
            out.append(_wrap(f"{issue.severity}: {where}{issue.message}", "  - "))
        out.append("")
    if plan.safety_net:
        out.append("SAFETY-NETTING")
        for note in plan.safety_net:
            out.append(_wrap(note, "  - "))
    return "\n".join(out).rstrip() + "\n"
