"""The clinical catalog as one static HTML page a clinician can browse and search offline.

``render_catalog_html(kb, scenarios)`` returns the page: a red-flag overview table (pathway,
presentation, level, action, evidence), the questions in plain words (``cds._catalog_sections``),
rules (stratum, conditions in plain words, outputs, evidence with links, the scenarios that
specify each), exercises (properties, dose, easier/harder chain, the rules that recommend or
avoid each, and a picture when a drawing function is given), alerts (the rules that raise
each) and parameters (default, range, evidence tag; unverified [M] ones flagged). Every
question, rule, exercise, alert and parameter has an anchor (``#fact-rf-fever``,
``catalog.html#RF-01-CES``, ``#bird-dog-breathing``, ``#alert-<code>``, ``#param-<name>``).

Exercise pictures: ``render_catalog_html(..., exercise_picture=f)`` with ``f(exercise)``
returning an SVG element as text (or ``None`` for no picture) puts that SVG in each
exercise's entry (``<figure class="picture">``). The SVG is inserted as given, so ``f`` must
be the project's own drawing code, never text from outside. Without ``f`` the page has no
pictures; ``movement_cds._docs.catalog_pages`` (``kb docs``) passes ``cds.exercise_figure_svg``,
the patient handout's line drawings.

Search: every word typed must occur in an entry's text; a word (or a whole search) that is a
term of a synonym group of the knowledge base (``search-synonyms.yaml``: UK and US spellings,
everyday words) also matches the group's other terms, so "incontinence" finds "leaking" and
"anesthesia" finds "anaesthesia".

One self-contained file: inline CSS and a few lines of JavaScript (a search box that filters
as you type), nothing loaded from the network, so it works from ``file://`` on a ward PC.
The only external URLs are evidence links (PubMed, PMC, doi.org, or the URL the rule
cites), opened on click. Every text from the knowledge base is escaped. The output is
deterministic (the staleness test compares it byte for byte).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from html import escape
from typing import Any

from cds._catalog_docs import Segment, condition_parts, value_segments
from cds._catalog_sections import (
    evidence_ident,
    facts_section,
    red_flag_overview,
    rule_questions,
    search_synonyms_json,
)
from cds._kb_schema import (
    Condition,
    ExerciseDefinition,
    Param,
    Rule,
    evidence_url,
)
from cds._knowledge_base import KnowledgeBase
from cds._plan import ExerciseDose

__all__ = ["ExercisePicture", "evidence_url", "render_catalog_html"]

#: The hook for exercise pictures: exercise -> an SVG element as text, or None for none.
ExercisePicture = Callable[[ExerciseDefinition], str | None]


_HOLDING = frozenset({"stat", "asap", "urgent"})  # the plan's safety policy (cds._plan)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _words(text: str | None) -> str:
    return " ".join((text or "").split())


def _segments(segments: Iterable[Segment]) -> str:
    return "".join(f"<code>{_e(t)}</code>" if code else _e(t) for t, code in segments)


def _condition(cond: Condition) -> str:
    segments, children = condition_parts(cond)
    inner = "".join(_condition(c) for c in children)
    return f"<li>{_segments(segments)}" + (f"<ul>{inner}</ul>" if inner else "") + "</li>"


def _params_in(node: Any) -> set[str]:
    """Parameter names a rule refers to anywhere (conditions, thresholds, limits)."""
    if isinstance(node, dict):
        found = {node["param"]} if isinstance(node.get("param"), str) else set()
        for v in node.values():
            found |= _params_in(v)
        return found
    if isinstance(node, list):
        return set().union(*(_params_in(v) for v in node)) if node else set()
    return set()


def _rule_link(rule_id: str) -> str:
    return f'<a href="#{_e(rule_id)}">{_e(rule_id)}</a>'


def _exercise_link(kb: KnowledgeBase, ex_id: str) -> str:
    ex = kb.exercises.get(ex_id)
    title = f" ({_e(ex.title)})" if ex else ""
    return f'<a href="#{_e(ex_id)}"><code>{_e(ex_id)}</code></a>{title}'


def _outputs(kb: KnowledgeBase, rule: Rule) -> list[str]:
    out = []
    for a in rule.then:
        if a.finding or a.classification:
            f = a.finding or a.classification
            assert f is not None
            out.append(f"derives <code>{_e(f.name)}</code> = "
                       f"{_segments(value_segments(f.value))}")
        elif a.alert:
            al = a.alert
            ref = (f"; referral <strong>{_e(al.referral.priority.value)}</strong> to "
                   f"{_e(al.referral.to)}" if al.referral else "")
            if al.holds_exercise or (al.referral and al.referral.priority.value in _HOLDING):
                ref += "; <strong>holds exercise</strong>"
            out.append(f'alert <a href="#alert-{_e(al.code)}"><code>{_e(al.code)}</code></a> '
                       f'(<span class="lvl-{_e(al.level.value)}">{_e(al.level.value)}</span>'
                       f"{ref}): {_e(_words(al.detail))}")
        elif a.recommend:
            out.append(f"recommends {_exercise_link(kb, a.recommend.exercise)}: "
                       f"{_e(_words(a.recommend.why))}")
        elif a.veto:
            v = a.veto
            props = v.described()
            hits = [e.id for e in sorted(kb.exercises.values(), key=lambda x: x.id)
                    if v.covers(e)]
            listed = ", ".join(_exercise_link(kb, h) for h in hits) or "none in the catalog"
            out.append(f"avoids every exercise with {_e(props)}: {_e(_words(v.why))} "
                       f'<span class="muted">Today: {listed}.</span>')
        elif a.data_gap:
            facts = ", ".join(f"<code>{_e(x)}</code>" for x in a.data_gap.facts)
            out.append(f"reports missing: {facts}")
        elif a.safety_net:
            out.append(f"safety-netting: {_e(_words(a.safety_net.text))}")
        elif a.plan_limit:
            out.append(f"limits the programme to "
                       f"{_segments(value_segments(a.plan_limit.max_exercises))} exercises: "
                       f"{_e(_words(a.plan_limit.why))}")
        elif a.adjust:
            told = (f' <span class="muted">The patient is told: '
                    f"&ldquo;{_e(_words(a.adjust.patient))}&rdquo;</span>"
                    if a.adjust.patient else "")
            out.append(f"<strong>{_e(a.adjust.decision)}</strong> this exercise: "
                       f"{_e(_words(a.adjust.why))}{told}")
    return out


def _evidence(rule: Rule) -> str:
    items = []
    for ev in rule.evidence:
        ident = evidence_ident(ev.id, code=True)
        grade = f", grade {_e(ev.grade)}" if ev.grade else ""
        tag = (f'<span class="tag tag-{_e(ev.tag.value)}" title="evidence tag">'
               f"{_e(ev.tag.value)}</span>")
        note = f' <span class="muted">{_e(_words(ev.note))}</span>' if ev.note else ""
        items.append(f"<li>{ident} {tag} {_e(ev.strength.value)}{grade}. "
                     f"{_e(_words(ev.citation))}{note}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _rules(kb: KnowledgeBase, scenarios: dict[str, list[str]]) -> list[str]:
    html = ['<section id="rules"><h2>Rules</h2>',
            f"<p>{len(kb.rules)} rules in evaluation order, by stratum. Evidence tags: "
            '<span class="tag tag-R">R</span> read in the source, '
            '<span class="tag tag-S">S</span> secondary summary, '
            '<span class="tag tag-M">M</span> unverified (configurable, and said so in the '
            "output). A condition on a missing fact is never true: missing data is never read "
            "as normal.</p>"]
    for stratum in kb.manifest.strata:
        rules = [r for r in kb.rules if r.stratum == stratum]
        if not rules:
            continue
        html.append(f'<div class="group"><h3 id="stratum-{_e(stratum)}">Stratum '
                    f"<code>{_e(stratum)}</code></h3>")
        for r in rules:
            loc = kb.locations.get(f"rules:{r.id}")
            where = f"{loc.file}:{loc.line}" if loc else ""
            specs = scenarios.get(r.id, [])
            cover = (", ".join(f"<code>{_e(s)}</code>" for s in specs) if specs
                     else '<span class="warn">none</span>')
            html += [
                f'<article class="item rule" id="{_e(r.id)}">',
                f'<h4><a class="anchor" href="#{_e(r.id)}">{_e(r.id)}</a> {_e(r.title)}</h4>',
                rule_questions(kb, r),
                f'<p class="meta">Stratum <code>{_e(r.stratum)}</code>, priority '
                f"{r.priority}. Source <code>{_e(where)}</code>."
                + (" Evaluated once per exercise of the previous plan (scope "
                   "<code>exercise-response</code>)." if r.scope != "patient" else "")
                + "</p>",
                f"<p>{_e(_words(r.description))}</p>" if r.description else "",
                f"<h5>When</h5><ul>{_condition(r.when)}</ul>",
                "<h5>Then</h5><ul>" + "".join(f"<li>{o}</li>" for o in _outputs(kb, r))
                + "</ul>",
                f"<h5>Evidence</h5>{_evidence(r)}",
                f"<p><strong>Scenarios</strong>: {cover}</p>",
                "</article>",
            ]
        html.append("</div>")
    html.append("</section>")
    return html


def _chain(kb: KnowledgeBase, ex: ExerciseDefinition) -> str:
    """The whole regression/progression chain through this exercise, easiest first."""
    back: list[str] = []
    cur, seen = ex.easier, {ex.id}
    while cur and cur in kb.exercises and cur not in seen:
        back.insert(0, cur)
        seen.add(cur)
        cur = kb.exercises[cur].easier
    fwd: list[str] = []
    cur = ex.harder
    while cur and cur in kb.exercises and cur not in seen:
        fwd.append(cur)
        seen.add(cur)
        cur = kb.exercises[cur].harder
    if not back and not fwd:
        return "none (no easier or harder exercise)"
    parts = [f'<a href="#{_e(x)}">{_e(x)}</a>' for x in back]
    parts.append(f"<strong>{_e(ex.id)}</strong>")
    parts += [f'<a href="#{_e(x)}">{_e(x)}</a>' for x in fwd]
    return " → ".join(parts) + " (easier → harder)"


def _picture(ex: ExerciseDefinition, exercise_picture: ExercisePicture | None) -> str:
    svg = exercise_picture(ex) if exercise_picture is not None else None
    if not svg:
        return ""
    return (f'<figure class="picture" aria-label="{_e(ex.title)}">{svg}'
            f"<figcaption>{_e(ex.title)}</figcaption></figure>")


def _exercises(kb: KnowledgeBase, exercise_picture: ExercisePicture | None) -> list[str]:
    html = ['<section id="exercises"><h2>Exercises</h2>',
            f"<p>{len(kb.exercises)} exercises. Properties (direction, load, surface) are "
            "what precautions veto by, so a new exercise is covered without touching the "
            "rules.</p>"]
    for ex in sorted(kb.exercises.values(), key=lambda x: x.id):
        recs = [r.id for r in kb.rules for a in r.then
                if a.recommend and a.recommend.exercise == ex.id]
        vetoes = [r.id for r in kb.rules for a in r.then
                  if a.veto and a.veto.covers(ex)]
        dose = ExerciseDose.of(ex.dose)
        eq = ", ".join(ex.equipment) if ex.equipment else "none"
        html += [
            f'<article class="item exercise" id="{_e(ex.id)}">',
            f'<h4><a class="anchor" href="#{_e(ex.id)}">{_e(ex.id)}</a> {_e(ex.title)}</h4>',
            _picture(ex, exercise_picture),
            '<table class="props"><tr><th>purpose</th><th>direction</th><th>load</th>'
            "<th>surface</th><th>position</th><th>equipment</th></tr>"
            f"<tr><td>{_e(ex.purpose)}</td>"
            f"<td>{_e(', '.join(d.value for d in ex.direction))}</td>"
            f"<td>{_e(ex.load.value)}</td><td>{_e(ex.surface.value)}</td>"
            f"<td>{_e(ex.position)}</td><td>{_e(eq)}</td></tr></table>",
            f"<p>{_e(_words(ex.instructions))}</p>",
            f"<p><strong>Dose</strong>: {_e(dose.describe())}</p>",
            f"<p><strong>Chain</strong>: {_chain(kb, ex)}</p>",
            "<p><strong>Recommended by</strong>: "
            + (", ".join(_rule_link(r) for r in dict.fromkeys(recs)) or "no rule") + "</p>",
            "<p><strong>Avoided by</strong>: "
            + (", ".join(_rule_link(r) for r in dict.fromkeys(vetoes)) or "no rule") + "</p>",
            "</article>",
        ]
    html.append("</section>")
    return html


def _alerts(kb: KnowledgeBase) -> list[str]:
    html = ['<section id="alerts"><h2>Alerts</h2>',
            f"<p>{len(kb.alerts)} alert codes. An alert that calls for a stat, asap or urgent "
            "referral puts every exercise on hold.</p>"]
    for code, al in sorted(kb.alerts.items()):
        raised = []
        for r in kb.rules:
            for a in r.then:
                if a.alert and a.alert.code == code:
                    ref = (f", referral {_e(a.alert.referral.priority.value)}"
                           if a.alert.referral else "")
                    raised.append(f"{_rule_link(r.id)} ({_e(a.alert.level.value)}{ref})")
        html += [
            f'<article class="item alert" id="alert-{_e(code)}">',
            f'<h4><a class="anchor" href="#alert-{_e(code)}"><code>{_e(code)}</code></a> '
            f"{_e(al.display)}</h4>",
            f"<p>{_e(_words(al.definition))}</p>",
            "<p><strong>Raised by</strong>: " + (", ".join(raised) or "no rule") + "</p>",
            "</article>",
        ]
    html.append("</section>")
    return html


def _parameters(kb: KnowledgeBase) -> list[str]:
    used: dict[str, list[str]] = {}
    for r in kb.rules:
        for pname in sorted(_params_in(r.model_dump(mode="json", by_alias=True))):
            used.setdefault(pname, []).append(r.id)
    for name, d in sorted(kb.facts.items()):
        if isinstance(d.max_age_days, Param):
            used.setdefault(d.max_age_days.param, []).append(f"fact {name} (maximum age)")
    html = ['<section id="parameters"><h2>Parameters</h2>',
            "<p>Thresholds a deployment may override (clinical governance). Those tagged "
            '<span class="tag tag-M">M</span> are unverified expert choices and must stay '
            "configurable. A plan made with overrides names its knowledge base "
            "<code>{id}@{version}+p{digest}</code>.</p>"]
    for name, p in sorted(kb.parameters.items()):
        rng = "any" if p.min is None and p.max is None else f"{_fmt(p.min)} to {_fmt(p.max)}"
        flag = (' <span class="tag tag-M" title="unverified: configurable">M, unverified</span>'
                if p.tag.value == "M" else
                f' <span class="tag tag-{_e(p.tag.value)}">{_e(p.tag.value)}</span>')
        users = used.get(name, [])
        links = ", ".join(_rule_link(u) if not u.startswith("fact ") else _e(u)
                          for u in users) or "nothing"
        html += [
            f'<article class="item parameter" id="param-{_e(name)}">',
            f'<h4><a class="anchor" href="#param-{_e(name)}"><code>{_e(name)}</code></a>'
            f"{flag}</h4>",
            f"<p>Default {_segments(value_segments(p.value))}; range {_e(rng)}.</p>",
            f"<p>{_e(_words(p.description))}</p>",
            f"<p><strong>Used by</strong>: {links}</p>",
            "</article>",
        ]
    html.append("</section>")
    return html


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return str(int(x)) if float(x).is_integer() else str(x)


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f}
header{position:sticky;top:0;background:#f4f6f8;border-bottom:1px solid #ccd;padding:.6em 1em;
z-index:1}
header h1{font-size:1.2em;margin:0 0 .3em}
nav a{margin-right:1em}
#q{width:min(40em,90%);font-size:1em;padding:.35em .5em}
#count{margin-left:.8em;color:#555}
main{padding:0 1em 4em;max-width:70em}
article.item{border:1px solid #dde;border-radius:6px;padding:.4em .9em;margin:.8em 0}
article.item:target{outline:3px solid #f5b800}
h4{margin:.3em 0}
h5{margin:.6em 0 .2em;font-size:.95em}
.meta,.muted{color:#555}
.warn{color:#a40000;font-weight:bold}
code{background:#f0f0f3;padding:0 .2em;border-radius:3px}
.tag{display:inline-block;border-radius:3px;padding:0 .35em;font-size:.85em;font-weight:bold}
.tag-R{background:#d9f2d9}.tag-S{background:#e3ecfa}.tag-M{background:#ffe3b3}
.lvl-emergency,.lvl-urgent{color:#a40000;font-weight:bold}
table.props{border-collapse:collapse;font-size:.9em}
table.props th,table.props td{border:1px solid #dde;padding:.15em .5em;text-align:left}
a.anchor{text-decoration:none}
.hidden{display:none}
h4.question{font-size:1.05em}
.tag-flag{background:#fbd5d5}
table.overview{border-collapse:collapse;font-size:.9em;width:100%}
table.overview th,table.overview td{border:1px solid #dde;padding:.25em .5em;text-align:left;
vertical-align:top}
table.overview thead th{background:#f4f6f8;position:sticky;top:0}
figure.picture{float:right;margin:0 0 .5em 1em;width:300px;max-width:40%}
figure.picture svg{width:100%;height:auto}
figure.picture figcaption{font-size:.8em;color:#555;text-align:center}
article.item::after{content:"";display:block;clear:both}
section,.group h3,article.item,tr.item{scroll-margin-top:14em}
"""

# Filters as you type: every whitespace-separated word must occur in an item's text (or a
# synonym of it: SYN, the knowledge base's search-synonyms.yaml). A whole search that is a
# phrase of a synonym group counts as one word. A link to an item that the filter hides
# clears the filter first.
_JS = """
(function () {
  var SYN = JSON.parse(document.getElementById('synonyms').textContent);
  var q = document.getElementById('q');
  var count = document.getElementById('count');
  var items = Array.prototype.slice.call(document.querySelectorAll('.item'));
  var groups = Array.prototype.slice.call(document.querySelectorAll('.group, section'));
  function alternatives(word) {
    var alts = [word];
    SYN.forEach(function (g) {
      if (g.indexOf(word) >= 0) { alts = alts.concat(g); }
    });
    return alts;
  }
  function words(text) {
    var whole = text.replace(/\\s+/g, ' ');
    var phrase = whole.indexOf(' ') > 0 && SYN.some(function (g) {
      return g.indexOf(whole) >= 0;
    });
    return phrase ? [whole] : whole.split(' ').filter(Boolean);
  }
  function apply() {
    var wanted = words(q.value.toLowerCase().trim()).map(alternatives);
    var shown = 0;
    items.forEach(function (el) {
      var text = el.textContent.toLowerCase();
      var ok = wanted.every(function (alts) {
        return alts.some(function (a) { return text.indexOf(a) >= 0; });
      });
      el.classList.toggle('hidden', !ok);
      if (ok) { shown += 1; }
    });
    groups.forEach(function (g) {
      var any = g.querySelector('.item:not(.hidden)');
      g.classList.toggle('hidden', !any);
    });
    count.textContent = wanted.length ? shown + ' of ' + items.length + ' shown' : '';
  }
  q.addEventListener('input', apply);
  window.addEventListener('hashchange', function () {
    var el = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (el && el.closest('.hidden')) { q.value = ''; apply(); el.scrollIntoView(); }
  });
})();
"""


def render_catalog_html(kb: KnowledgeBase, scenarios: dict[str, list[str]],
                        exercise_picture: ExercisePicture | None = None) -> str:
    """The whole catalog page. ``scenarios`` maps rule id -> ids of scenarios covering it;
    ``exercise_picture`` draws each exercise (the pictures hook; module docstring)."""
    title = f"Clinical catalog: {kb.manifest.title}"
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Knowledge base <code>{_e(kb.ruleset_name)}</code> '
        f"({_e(kb.manifest.status)}). Generated by <code>movement-cds kb docs</code>; do not "
        "edit by hand. Every output is a proposal for a licensed clinician.</p>",
        '<nav><a href="#red-flags">Red flags</a><a href="#facts">Questions</a>'
        '<a href="#rules">Rules</a><a href="#exercises">Exercises</a>'
        '<a href="#alerts">Alerts</a><a href="#parameters">Parameters</a></nav>',
        '<p><input id="q" type="search" placeholder="Search: a question, symptom, rule id, '
        'exercise, evidence..." aria-label="Search the catalog" autocomplete="off">'
        '<span id="count" aria-live="polite"></span></p>',
        "</header><main>",
        *red_flag_overview(kb),
        *facts_section(kb),
        *_rules(kb, scenarios),
        *_exercises(kb, exercise_picture),
        *_alerts(kb),
        *_parameters(kb),
        "</main>",
        f'<script type="application/json" id="synonyms">{search_synonyms_json(kb)}</script>',
        f"<script>{_JS}</script></body></html>",
    ]
    return "\n".join(x for x in body if x) + "\n"
