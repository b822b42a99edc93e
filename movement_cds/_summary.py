"""The plan in plain words, for the clinician reading a terminal or a note."""

from __future__ import annotations

import textwrap

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


def _wrap(text: str, indent: str = "    ") -> str:
    return textwrap.fill(" ".join(text.split()), width=92, initial_indent=indent,
                         subsequent_indent=" " * len(indent))


def render_summary(plan: Plan) -> str:
    out: list[str] = []
    out.append(f"movement-cds plan for {plan.subject}, as of {plan.as_of.isoformat()}")
    out.append(f"Knowledge base: {plan.kb_title} ({plan.knowledge_base})")
    out.append("A proposal for a licensed clinician to review; nothing here is an order.")
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
                out.append(f"  - {plan.fact_descriptions.get(m, m)}")
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
