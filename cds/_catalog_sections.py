"""Sections of the HTML catalog that read the fact catalog and the red-flag rules.

``facts_section(kb)``: every question in plain words (the fact catalog's ``question``), in
groups (red-flag screen, questionnaires, examination and movement screen, recorded
conditions, follow-up responses, the patient record), each with its code, its answers, how
long an answer counts and the rules that read it; anchors ``#fact-<name>``.

``red_flag_overview(kb)``: one table row per rule that raises a red-flag alert (a rule of
the ``red-flags`` stratum or with an ``RF-`` id that raises an alert): pathway (the alert's
display), presentation (the rule's title), level, action (referral priority and where,
whether exercise is held) and evidence. Rows are grouped by pathway, most severe first.

``search_synonyms_json(kb)``: the knowledge base's search synonyms
(``search-synonyms.yaml``) as JSON for the page's search script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape

from cds._kb_schema import AlertAction, FactDefinition, Rule, evidence_url
from cds._knowledge_base import KnowledgeBase, condition_facts

__all__ = [
    "RedFlagRow",
    "answers_in_words",
    "evidence_ident",
    "facts_section",
    "question_groups",
    "red_flag_overview",
    "red_flag_rows",
    "rule_questions",
    "search_synonyms_json",
]

_HOLDING = frozenset({"stat", "asap", "urgent"})  # the plan's safety policy (cds._plan)
_LEVEL_ORDER = {"emergency": 0, "urgent": 1, "caution": 2, "information": 3}
_GROUPS = (
    ("red-flags", "Red-flag screen",
     "Asked at every visit. A yes never expires silently; an unanswered question is never "
     "read as no."),
    ("questionnaires", "Questionnaires and scores", ""),
    ("examination", "Examination and movement screen", ""),
    ("conditions", "Recorded conditions", "Read from the patient's Condition records."),
    ("follow-up", "Follow-up: how each exercise went",
     "Asked about each exercise of the previous plan."),
    ("record", "From the patient record", ""),
)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _words(text: str | None) -> str:
    return " ".join((text or "").split())


def _group_of(name: str, d: FactDefinition) -> str:
    if d.red_flag is not None:
        return "red-flags"
    if name.startswith("condition-"):
        return "conditions"
    if d.scope != "patient" or name.startswith("response-"):
        return "follow-up"
    if name.startswith(("startback-", "odi-", "phq2-", "pain-", "episode-", "symptom-")):
        return "questionnaires"
    if d.coding is not None:
        return "examination"
    return "record"


def _readers(kb: KnowledgeBase) -> dict[str, list[str]]:
    """Fact name (bilateral parts folded into the fact) -> ids of the rules that read it."""
    out: dict[str, list[str]] = {}
    for r in kb.rules:
        for test, _neg in condition_facts(r.when):
            base = test.fact.split(".")[0] if not test.fact.startswith(
                ("finding.", "classification.")) else test.fact
            readers = out.setdefault(base, [])
            if r.id not in readers:
                readers.append(r.id)
    return out


def answers_in_words(d: FactDefinition) -> str:
    if d.type == "boolean":
        return "yes / no"
    if d.type == "code":
        return ", ".join(d.codes or ())
    rng = ""
    if d.min is not None and d.max is not None:
        lo = int(d.min) if float(d.min).is_integer() else d.min
        hi = int(d.max) if float(d.max).is_integer() else d.max
        rng = f"{lo} to {hi}"
    unit = f" {d.unit}" if d.unit and not d.unit.startswith("{") else ""
    return f"{'a whole number' if d.type == 'integer' else 'a number'} {rng}{unit}".strip()


def _fact_item(name: str, d: FactDefinition, readers: list[str]) -> str:
    codes = [c for c in ((d.coding,) if d.coding else ()) + tuple(d.also_coded)]
    code_text = ", ".join(f"<code>{_e(c.system)}|{_e(c.code)}</code>" for c in codes)
    flags = []
    if d.red_flag is not None:
        flags.append(f'<span class="tag tag-flag">red flag, {_e(d.red_flag)}</span>')
    if d.lifelong:
        flags.append('<span class="tag">lifelong: a yes is never erased</span>')
    if d.hold_when_unreadable:
        flags.append('<span class="tag">an unreadable answer holds exercise</span>')
    age = ""
    if d.max_age_days is not None:
        limit = (f'<a href="#param-{_e(d.max_age_days.param)}"><code>'
                 f"{_e(d.max_age_days.param)}</code></a> days (a parameter)"
                 if hasattr(d.max_age_days, "param") else f"{_e(d.max_age_days)} days")
        age = (f" A no counts for {limit}; a yes never expires silently." if d.red_flag
               else f" An answer counts for {limit}.")
    links = ", ".join(f'<a href="#{_e(r)}">{_e(r)}</a>' for r in readers) or "no rule"
    return "".join([
        f'<article class="item fact" id="fact-{_e(name)}">',
        f'<h4 class="question"><a class="anchor" href="#fact-{_e(name)}">'
        f"{_e(_words(d.question))}</a></h4>",
        f'<p class="meta"><code>{_e(name)}</code> {" ".join(flags)}</p>',
        f"<p>{_e(_words(d.description))}</p>",
        f"<p><strong>Answer</strong>: {_e(answers_in_words(d))}"
        + (" (left and right)" if d.bilateral else "") + f".{age}</p>",
        f"<p><strong>Code</strong>: {code_text}</p>" if code_text else "",
        f"<p><strong>Read by</strong>: {links}</p>",
        "</article>",
    ])


def facts_section(kb: KnowledgeBase) -> list[str]:
    """The questions section: every input fact that has a question, in plain words."""
    readers = _readers(kb)
    groups = question_groups(kb)
    html = ['<section id="facts"><h2>Questions</h2>',
            f"<p>{sum(len(g[3]) for g in groups)} questions and findings the rules read, in "
            "plain words, with the code that carries each answer. A question with no usable "
            "answer is missing, never read as normal.</p>"]
    for key, title, intro, items in groups:
        html.append(f'<div class="group"><h3 id="facts-{key}">{_e(title)}</h3>'
                    + (f'<p class="muted">{_e(intro)}</p>' if intro else ""))
        html += [_fact_item(n, d, readers.get(n, [])) for n, d in items]
        html.append("</div>")
    html.append("</section>")
    return html


def rule_questions(kb: KnowledgeBase, rule: Rule) -> str:
    """The questions a rule reads, in plain words, as hidden text: not shown, but the
    search box finds the rule by them ("incontinence" finds RF-01-CES)."""
    names = dict.fromkeys(t.fact.split(".")[0] for t, _neg in condition_facts(rule.when))
    words = [_words(kb.facts[n].question) for n in names
             if n in kb.facts and kb.facts[n].question]
    if not words:
        return ""
    return f'<span class="search-text" hidden>{_e(" ".join(words))}</span>'


def _red_flag_rules(kb: KnowledgeBase) -> list[tuple[Rule, int]]:
    """(rule, index of its alert action) for every rule that raises a red-flag alert."""
    out = []
    for r in kb.rules:
        if r.stratum != "red-flags" and not r.id.startswith("RF-"):
            continue
        out += [(r, i) for i, a in enumerate(r.then) if a.alert is not None]
    return out


def evidence_ident(ev_id: str, *, code: bool = False) -> str:
    """An evidence id (in ``<code>`` if asked), linked to its source where it names one."""
    url = evidence_url(ev_id)
    text = f"<code>{_e(ev_id)}</code>" if code else _e(ev_id)
    return (f'<a class="evidence" href="{_e(url)}" rel="noopener noreferrer" '
            f'target="_blank">{text}</a>' if url else text)


def _evidence_links(rule: Rule) -> str:
    parts = []
    for ev in rule.evidence:
        ident = evidence_ident(ev.id)
        parts.append(f"{ident} <span class=\"tag tag-{_e(ev.tag.value)}\">"
                     f"{_e(ev.tag.value)}</span>")
    return "<br>".join(parts)


@dataclass(frozen=True)
class RedFlagRow:
    """One row of the red-flag overview: a rule and the alert it raises."""

    rule: Rule
    alert: AlertAction
    pathway: str  # the alert's display

    @property
    def holds(self) -> bool:
        al = self.alert
        return al.holds_exercise or bool(al.referral and al.referral.priority.value in _HOLDING)


def red_flag_rows(kb: KnowledgeBase) -> list[RedFlagRow]:
    """The red-flag overview's rows: by pathway (in the order the rules first raise it),
    most severe level first, then rule id."""
    rows = []
    for r, j in _red_flag_rules(kb):
        al = r.then[j].alert
        assert al is not None
        rows.append(RedFlagRow(r, al, kb.alerts[al.code].display if al.code in kb.alerts
                               else al.code))
    first_seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        first_seen.setdefault(row.alert.code, i)
    return sorted(rows, key=lambda x: (first_seen[x.alert.code],
                                       _LEVEL_ORDER.get(x.alert.level.value, 9), x.rule.id))


QuestionGroup = tuple[str, str, str, list[tuple[str, FactDefinition]]]


def question_groups(kb: KnowledgeBase) -> list[QuestionGroup]:
    """(key, title, intro, [(fact name, definition)]) for every group of questions, in the
    fact catalog's order: every input fact that has a question."""
    asked = {n: d for n, d in kb.facts.items() if not d.derived and d.question}
    out = []
    for key, title, intro in _GROUPS:
        items = [(n, d) for n, d in asked.items() if _group_of(n, d) == key]
        if items:
            out.append((key, title, intro, items))
    return out


def red_flag_overview(kb: KnowledgeBase) -> list[str]:
    """The red-flag overview table (pathway, presentation, level, action, evidence)."""
    body = []
    for row in red_flag_rows(kb):
        r, al = row.rule, row.alert
        action = "no referral"
        if al.referral is not None:
            action = f"referral <strong>{_e(al.referral.priority.value)}</strong> to " \
                     f"{_e(al.referral.to)}"
        action += "; <strong>holds exercise</strong>" if row.holds else "; exercise continues"
        body.append(
            f'<tr class="item"><td><a href="#alert-{_e(al.code)}">{_e(row.pathway)}</a></td>'
            f'<td><a href="#{_e(r.id)}">{_e(r.id)}</a> {_e(r.title)}'
            f"{rule_questions(kb, r)}</td>"
            f'<td class="lvl-{_e(al.level.value)}">{_e(al.level.value)}</td>'
            f"<td>{action}</td><td>{_evidence_links(r)}</td></tr>")
    return [
        '<section id="red-flags"><h2>Red-flag overview</h2>',
        f"<p>{len(body)} red-flag presentations, by pathway, most severe first (generated "
        "from the rules). A stat, asap or urgent referral holds every exercise.</p>",
        '<table class="overview" id="red-flag-table"><thead><tr><th>pathway</th>'
        "<th>presentation</th><th>level</th><th>action</th><th>evidence</th></tr></thead>"
        "<tbody>" + "".join(body) + "</tbody></table>",
        "</section>",
    ]


def search_synonyms_json(kb: KnowledgeBase) -> str:
    """The synonym groups as a JSON list of lists, safe inside a <script> element."""
    text = json.dumps([list(g.terms) for g in kb.search_synonyms], ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
