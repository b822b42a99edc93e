"""The clinical catalog, generated from the knowledge base so it can never drift from it.

``render_catalog(kb)`` returns Markdown pages by file name: ``rules.md`` (every rule by
stratum: conditions, outputs, evidence, the scenarios that specify it), ``exercises.md``
(the catalog with doses and regression chains), ``parameters.md`` (every configurable
threshold and its evidence tag), ``questions.md`` (every question in plain words, with its
code and answers) and ``red-flags.md`` (the red-flag overview: pathway, presentation,
level, action, evidence).
"""

from __future__ import annotations

from pathlib import Path

from cds._catalog_sections import answers_in_words, question_groups, red_flag_rows
from cds._kb_schema import (
    AllOf,
    AnyOf,
    AtLeast,
    Coding,
    Condition,
    FactTest,
    NoneOf,
    Param,
    ParamTest,
)
from cds._knowledge_base import KnowledgeBase
from cds._plan import ExerciseDose

__all__ = ["render_catalog", "write_catalog"]

_OP_WORDS = {
    "is": "is", "is-not": "is not", "lt": "<", "le": "≤", "gt": ">", "ge": "≥",
    "in": "is one of", "not-in": "is none of",
}


Segment = tuple[str, bool]  # (text, is a code/identifier)


def value_segments(v: object) -> list[Segment]:
    """A condition operand in words; identifiers and literal values are marked as code."""
    if isinstance(v, Param):
        return [("parameter ", False), (v.param, True)]
    if isinstance(v, list):
        out: list[Segment] = []
        for i, x in enumerate(v):
            out += [(", ", False)] if i else []
            out.append((str(x), True))
        return out
    if isinstance(v, bool):
        return [(str(v).lower(), True)]
    if isinstance(v, float) and v.is_integer():
        return [(str(int(v)), True)]
    return [(str(v), True)]


def condition_parts(cond: Condition) -> tuple[list[Segment], list[Condition]]:
    """One node of a condition in plain language, and its sub-conditions (shared by the
    Markdown and HTML catalogs so they always say the same thing)."""
    if isinstance(cond, FactTest):
        op, v = cond.operator()
        if op == "present":
            return [(cond.fact, True), (" is recorded", False)], []
        if op == "missing":
            return [(cond.fact, True), (" has no usable value", False)], []
        return [(cond.fact, True), (f" {_OP_WORDS[op]} ", False), *value_segments(v)], []
    if isinstance(cond, ParamTest):
        return [("parameter ", False), (cond.param, True), (" is ", False),
                *value_segments(cond.is_)], []
    if isinstance(cond, NoneOf):
        return [("not (definitely false):", False)], [cond.not_]
    if isinstance(cond, AtLeast):
        return [("at least ", False), *value_segments(cond.at_least), (" of:", False)], cond.of
    assert isinstance(cond, AllOf | AnyOf)
    if isinstance(cond, AllOf):
        return [("all of:", False)], cond.all
    return [("any of:", False)], cond.any


def _md(segments: list[Segment]) -> str:
    return "".join(f"`{t}`" if code else t for t, code in segments)


def _value(v: object) -> str:
    return _md(value_segments(v))


def render_condition(cond: Condition, depth: int = 0) -> list[str]:
    segments, children = condition_parts(cond)
    out = [f"{'  ' * depth}- {_md(segments)}"]
    for c in children:
        out += render_condition(c, depth + 1)
    return out


def _outputs(kb: KnowledgeBase, rule_id: str) -> list[str]:
    rule = kb.rule(rule_id)
    out = []
    for a in rule.then:
        if a.finding or a.classification:
            f = a.finding or a.classification
            assert f is not None
            out.append(f"- derives `{f.name}` = {_value(f.value)}")
        elif a.alert:
            al = a.alert
            ref = (f"; referral **{al.referral.priority.value}** to {al.referral.to}"
                   if al.referral else "")
            out.append(f"- alert `{al.code}` ({al.level.value}{ref}): {al.detail.strip()}")
        elif a.recommend:
            out.append(f"- recommends `{a.recommend.exercise}`: {a.recommend.why.strip()}")
        elif a.veto:
            v = a.veto
            out.append(f"- avoids every exercise with {v.described()}: {v.why.strip()}")
        elif a.data_gap:
            out.append(f"- reports missing: {', '.join(f'`{x}`' for x in a.data_gap.facts)}")
        elif a.safety_net:
            out.append(f"- safety-netting: {a.safety_net.text.strip()}")
        elif a.plan_limit:
            out.append(f"- limits the programme to {_value(a.plan_limit.max_exercises)} "
                       f"exercises: {a.plan_limit.why.strip()}")
        elif a.adjust:
            told = (f" The patient is told: \"{' '.join(a.adjust.patient.split())}\""
                    if a.adjust.patient else "")
            out.append(f"- **{a.adjust.decision}** this exercise: "
                       f"{' '.join(a.adjust.why.split())}{told}")
    return out


def _rules_page(kb: KnowledgeBase, scenarios: dict[str, list[str]]) -> str:
    lines = [f"# Rule catalog: {kb.manifest.title}", "",
             f"Knowledge base `{kb.ruleset_name}` ({kb.manifest.status}). Generated by "
             "`movement-cds kb docs`; do not edit by hand.", "",
             f"{len(kb.rules)} rules. Evidence tags: **R** read in the source, **S** "
             "secondary summary, **M** unverified (configurable, and said so in the output).",
             ""]
    for stratum in kb.manifest.strata:
        rules = [r for r in kb.rules if r.stratum == stratum]
        if not rules:
            continue
        lines += [f"## {stratum}", ""]
        for r in rules:
            loc = kb.locations.get(f"rules:{r.id}")
            lines += [f"### {r.id}: {r.title}", ""]
            if r.description:
                lines += [" ".join(r.description.split()), ""]
            where = f"`{loc.file}:{loc.line}`" if loc else ""
            scope = (" Evaluated once per exercise of the previous plan (scope "
                     "`exercise-response`)." if r.scope != "patient" else "")
            lines += [f"Priority {r.priority}. Source {where}.{scope}", "", "**When**", ""]
            lines += render_condition(r.when)
            lines += ["", "**Then**", "", *_outputs(kb, r.id), "", "**Evidence**", ""]
            for e in r.evidence:
                grade = f", grade {e.grade}" if e.grade else ""
                note = f" {' '.join(e.note.split())}" if e.note else ""
                lines.append(f"- `{e.id}` [{e.tag.value}, {e.strength.value}{grade}] "
                             f"{' '.join(e.citation.split())}{note}")
            specs = scenarios.get(r.id, [])
            lines += ["", "**Scenarios**: " + (", ".join(f"`{s}`" for s in specs)
                                               if specs else "none"), ""]
    return "\n".join(lines).rstrip() + "\n"


def _exercises_page(kb: KnowledgeBase) -> str:
    lines = ["# Exercise catalog", "",
             f"Knowledge base `{kb.ruleset_name}`. Generated by `movement-cds kb docs`.", "",
             f"{len(kb.exercises)} exercises. Properties are those of the exported "
             "CodeSystem: direction, load, surface.", "",
             "| exercise | purpose | direction | load | surface | easier | harder |",
             "|---|---|---|---|---|---|---|"]
    for e in sorted(kb.exercises.values(), key=lambda x: x.id):
        lines.append(
            f"| [{e.title}](#{e.id}) | {e.purpose} | "
            f"{', '.join(d.value for d in e.direction)} | {e.load.value} | {e.surface.value} | "
            f"{e.easier or ''} | {e.harder or ''} |"
        )
    lines.append("")
    for e in sorted(kb.exercises.values(), key=lambda x: x.id):
        dose = ExerciseDose.of(e.dose)
        eq = ", ".join(e.equipment) if e.equipment else "none"
        lines += [f"## {e.id}", "", f"**{e.title}**. Position: {e.position}. Equipment: {eq}.",
                  "", " ".join(e.instructions.split()), "", f"Dose: {dose.describe()}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _parameters_page(kb: KnowledgeBase) -> str:
    lines = ["# Configurable parameters", "",
             "Thresholds a deployment may override (clinical governance). A plan made with "
             "overrides names its knowledge base `{id}@{version}+p{digest}`.", "",
             "| parameter | default | range | tag | meaning |", "|---|---|---|---|---|"]
    for name, p in sorted(kb.parameters.items()):
        rng = "" if p.min is None and p.max is None else f"{p.min} to {p.max}"
        lines.append(f"| `{name}` | {_value(p.value)} | {rng} | {p.tag.value} | "
                     f"{' '.join(p.description.split())} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(c: Coding) -> str:
    """``system|code`` in a table cell (GFM: an escaped pipe does not split the cell)."""
    return f"`{c.system}\\|{c.code}`"


def _questions_page(kb: KnowledgeBase) -> str:
    lines = ["# Questions in plain words", "",
             f"Knowledge base `{kb.ruleset_name}`. Generated by `movement-cds kb docs`. Every "
             "question the rules read (the fact catalog's `question`), the fact it answers, "
             "the code that carries it and its answers. A question with no usable answer is "
             "missing, never read as normal.", ""]
    for _key, title, intro, items in question_groups(kb):
        lines += [f"## {title}", ""] + ([intro, ""] if intro else [])
        lines += ["| question | fact | code | answer |", "|---|---|---|---|"]
        for name, d in items:
            codes = ", ".join(_code(c) for c in ((d.coding,) if d.coding else ())
                              + tuple(d.also_coded))
            flag = f" (red flag, {d.red_flag})" if d.red_flag else ""
            lines.append(f"| {_cell(d.question or '')} | `{name}`{flag} | {codes} | "
                         f"{_cell(answers_in_words(d))} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _red_flags_page(kb: KnowledgeBase) -> str:
    rows = red_flag_rows(kb)
    lines = ["# Red-flag overview", "",
             f"Knowledge base `{kb.ruleset_name}`. Generated by `movement-cds kb docs` from the "
             f"rules: {len(rows)} red-flag presentations, by pathway, most severe first. A "
             "stat, asap or urgent referral holds every exercise.", "",
             "| pathway | presentation | level | action | evidence |", "|---|---|---|---|---|"]
    for row in rows:
        al = row.alert
        action = (f"referral **{al.referral.priority.value}** to {_cell(al.referral.to)}"
                  if al.referral else "no referral")
        action += "; **holds exercise**" if row.holds else "; exercise continues"
        evidence = ", ".join(f"`{e.id}` [{e.tag.value}]" for e in row.rule.evidence)
        lines.append(f"| {_cell(row.pathway)} (`{al.code}`) | `{row.rule.id}` "
                     f"{_cell(row.rule.title)} | {al.level.value} | {action} | {evidence} |")
    return "\n".join(lines) + "\n"


def render_catalog(kb: KnowledgeBase, scenarios: dict[str, list[str]]) -> dict[str, str]:
    """Markdown pages by file name. ``scenarios`` maps rule id -> scenario ids."""
    return {
        "rules.md": _rules_page(kb, scenarios),
        "exercises.md": _exercises_page(kb),
        "parameters.md": _parameters_page(kb),
        "questions.md": _questions_page(kb),
        "red-flags.md": _red_flags_page(kb),
    }


def write_catalog(pages: dict[str, str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in sorted(pages.items()):
        path = out / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
