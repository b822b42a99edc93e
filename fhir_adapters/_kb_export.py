"""The knowledge base as FHIR Clinical Reasoning artifacts (issue #5 part 7).

``export_knowledge_base(kb, directory)`` writes, so that other FHIR tooling can read what the
rules say (``docs/knowledge-base-format.md`` "FHIR export" documents every choice):

* ``PlanDefinition-<stratum>.json``: one per pathway (a stratum of the manifest that has
  rules), ``type`` ``eca-rule``; one ``action`` per rule, in evaluation order, with the rule
  id as ``action.id``, its title and description, its ``when`` as an ``applicability``
  condition whose ``expression`` is in the documented language
  ``text/x-movement-cds-condition`` (``CONDITION_LANGUAGE``) with the same condition in plain
  words as ``expression.description``, its evidence as ``documentation`` (RelatedArtifact
  ``citation``, with a URL for PMID, PMCID, DOI and URL ids) and one nested action per output
  of its ``then`` (alert -> ``code`` from the alert CodeSystem; recommend ->
  ``definitionCanonical`` to the exercise's ActivityDefinition; every output also carries the
  ``rule-output`` extension, which says machine-readably what it does);
* ``ActivityDefinition-<exercise>.json``: one per catalog exercise, ``kind``
  ``ServiceRequest``, ``intent`` ``proposal``, ``code`` from the exercise CodeSystem, how
  often in ``timingTiming``, how much in the ``exercise-dose`` extension the CarePlan uses;
* ``CodeSystem-{screen,exercise,alert}.json`` from ``export_terminology``;
* ``Questionnaire-red-flag-screen.json`` (every fact marked ``red-flag``) and
  ``Questionnaire-startback.json`` (``startback-item-1`` ... ``-9``, coded with LOINC's
  panel ``91349-1``), generated from the fact catalog: one item per fact, ``linkId`` = the
  fact's name, ``text`` = its ``question``, ``code`` = its coding and ``also-coded`` codes
  (the STarT Back items' LOINC codes), ``type`` from the fact's type (boolean, integer,
  decimal, choice). A QuestionnaireResponse to them (or to a LOINC form whose linkIds end
  in the LOINC item codes) is read like Observations
  (``_questionnaire_response``); a questionnaire with no fact in this knowledge base is not
  written;
* ``Library-<kb-id>.json``: the index (``asset-collection``), one ``composed-of``
  RelatedArtifact per file above. Its ``url|version`` is exactly the CarePlan's
  ``instantiatesUri``, so a plan points at the release that made it.

Every resource has ``url``, ``version`` (the knowledge-base version), ``name``, ``title``,
``status`` (the manifest's), ``publisher`` and, when ``CHANGELOG.md`` dates the release,
``date``; each is validated with its ``fhir.resources.R4B`` model before anything is written
(``OutputValidationError`` otherwise). Files of these four kinds left in ``directory`` by an
earlier export and not written now are removed, so the directory is exactly one release.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fhir.resources.R4B.activitydefinition import ActivityDefinition
from fhir.resources.R4B.library import Library
from fhir.resources.R4B.plandefinition import PlanDefinition
from fhir.resources.R4B.questionnaire import Questionnaire
from pydantic import ValidationError

from cds import ExerciseDose, KnowledgeBase, evidence_url
from cds.authoring import (
    CHANGELOG_FILE,
    AllOf,
    AnyOf,
    AtLeast,
    FactTest,
    NoneOf,
    Param,
    ParamTest,
    parse_changelog,
)
from fhir_adapters._code_systems import code_systems
from fhir_adapters._errors import OutputValidationError
from fhir_adapters._outbound import dose_extension
from fhir_adapters._terminology import (
    ACTIVITY_DEFINITION_BASE,
    ALERT_SYSTEM,
    EXERCISE_SYSTEM,
    EXT_RULE_OUTPUT,
    EXT_RULE_PRIORITY,
    KNOWLEDGE_BASE_BASE,
    LIBRARY_TYPE,
    PLAN_DEFINITION_BASE,
    PLAN_DEFINITION_TYPE,
    QUESTIONNAIRE_BASE,
    STARTBACK_PANEL,
)

if TYPE_CHECKING:  # the rule language's names this module only annotates with
    from cds.authoring import (
        Action,
        Condition,
        Evidence,
        ExerciseDefinition,
        FactDefinition,
        Rule,
    )

__all__ = [
    "ACTIVITY_DEFINITION_BASE",
    "CONDITION_LANGUAGE",
    "EXT_RULE_OUTPUT",
    "EXT_RULE_PRIORITY",
    "PLAN_DEFINITION_BASE",
    "export_knowledge_base",
    "knowledge_base_resources",
    "questionnaires",
    "render_condition",
    "render_condition_words",
]

CONDITION_LANGUAGE: Final = "text/x-movement-cds-condition"
_KINDS: Final = ("PlanDefinition", "ActivityDefinition", "CodeSystem", "Questionnaire",
                 "Library")
_ITEM_TYPE: Final = {"boolean": "boolean", "integer": "integer", "decimal": "decimal",
                     "code": "choice"}

# --- conditions as text --------------------------------------------------------------------

_OPS: Final = {"is": "=", "is-not": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
               "in": "in", "not-in": "not in"}
_WORDS: Final = {"is": "is", "is-not": "is not", "lt": "is below", "le": "is at most",
                 "gt": "is above", "ge": "is at least", "in": "is one of",
                 "not-in": "is none of"}


def _literal(v: Any) -> str:
    if isinstance(v, Param):
        return f"${v.param}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_condition(cond: Condition, top: bool = True) -> str:
    """The condition in ``text/x-movement-cds-condition``: ``fact = value``, ``!=``, ``<``,
    ``<=``, ``>``, ``>=``, ``in [..]``, ``not in [..]``, ``fact present``, ``fact missing``,
    ``param(name) = value``, ``(a and b)``, ``(a or b)``, ``not a``, ``at-least(n; a, b)``;
    ``$name`` is a manifest parameter; strings are single-quoted."""
    if isinstance(cond, FactTest):
        op, v = cond.operator()
        if op in ("present", "missing"):
            return f"{cond.fact} {op}"
        return f"{cond.fact} {_OPS[op]} {_literal(v)}"
    if isinstance(cond, ParamTest):
        return f"param({cond.param}) = {_literal(cond.is_)}"
    if isinstance(cond, NoneOf):
        return "not " + render_condition(cond.not_, top=False)
    if isinstance(cond, AtLeast):
        inner = ", ".join(render_condition(c, top=True) for c in cond.of)
        return f"at-least({_literal(cond.at_least)}; {inner})"
    word, items = (" and ", cond.all) if isinstance(cond, AllOf) else (" or ", cond.any)
    assert isinstance(cond, AllOf | AnyOf)
    if len(items) == 1:
        return render_condition(items[0], top)
    text = word.join(render_condition(c, top=False) for c in items)
    return text if top else f"({text})"


def render_condition_words(cond: Condition, kb: KnowledgeBase) -> str:
    """The same condition in plain words, naming each fact by its catalog description and
    each parameter with its default value."""

    def label(name: str) -> str:
        base, _, side = name.partition(".")
        if base in ("alert", "recommend", "veto", "gap", "note", "limit"):
            return f"{base} {side}"
        d = kb.facts.get(name) or kb.facts.get(base)
        if d is None:
            return name
        text = " ".join(d.description.split()).split(": ")[0].rstrip(".")
        if len(text) > 100:
            text = text[:100].rsplit(" ", 1)[0] + "…"
        if name not in kb.facts and side:
            text += f" ({side})"
        return f"{text} [{name}]"

    def derived(name: str) -> bool:
        base = name.partition(".")[0]
        d = kb.facts.get(name)
        return (d is not None and d.derived) or base in (
            "alert", "recommend", "veto", "gap", "note", "limit")

    def value(v: Any) -> str:
        if isinstance(v, Param):
            p = kb.parameters.get(v.param)
            return f"parameter {v.param}" + (f" (default {_literal(p.value)})" if p else "")
        if isinstance(v, list):
            return ", ".join(value(x) for x in v)
        return _literal(v).strip("'")

    def words(c: Condition) -> str:
        if isinstance(c, FactTest):
            op, v = c.operator()
            if op == "present":
                return f"{label(c.fact)} " + ("was derived by an earlier rule"
                                              if derived(c.fact) else "is recorded")
            if op == "missing":
                return f"{label(c.fact)} " + ("was not derived by an earlier rule"
                                              if derived(c.fact) else "has no usable answer")
            return f"{label(c.fact)} {_WORDS[op]} {value(v)}"
        if isinstance(c, ParamTest):
            return f"this deployment sets parameter {c.param} to {value(c.is_)}"
        if isinstance(c, NoneOf):
            return f"it is known that not ({words(c.not_)})"
        if isinstance(c, AtLeast):
            return f"at least {value(c.at_least)} of: " + "; ".join(
                f"({words(x)})" for x in c.of)
        head, items = ("all of", c.all) if isinstance(c, AllOf) else ("any of", c.any)
        assert isinstance(c, AllOf | AnyOf)
        if len(items) == 1:
            return words(items[0])
        return f"{head}: " + "; ".join(f"({words(x)})" for x in items)

    text = words(cond)
    return text[:1].upper() + text[1:] + "."


# --- helpers -------------------------------------------------------------------------------


def _name(*parts: str) -> str:
    """A computable name (FHIR cnl-0: ``[A-Z]([A-Za-z0-9_]){0,254}``)."""
    words = [w for p in parts for w in re.split(r"[^A-Za-z0-9]+", p) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Unnamed"
    return name if name[0].isalpha() else "X" + name


def _canonical(base: str, ident: str, kb: KnowledgeBase) -> str:
    return f"{base}/{ident}|{kb.manifest.version}"


def _header(kb: KnowledgeBase, rtype: str, ident: str, url: str, name: str, title: str,
            description: str, day: str | None) -> dict[str, Any]:
    m = kb.manifest
    out: dict[str, Any] = {
        "resourceType": rtype, "id": ident, "url": url, "version": m.version, "name": name,
        "title": title.strip(), "status": m.status,
        "description": description.strip(),
    }
    if day:
        out["date"] = day
    if m.publisher:
        out["publisher"] = m.publisher
    return out


def _release_date(kb: KnowledgeBase) -> str | None:
    path = kb.root / CHANGELOG_FILE
    try:
        log = parse_changelog(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    entry = log.entry(kb.manifest.version)
    return entry.date.isoformat() if entry is not None and entry.date is not None else None


def _evidence(e: Evidence) -> dict[str, Any]:
    display = f"Evidence tag {e.tag.value}, strength {e.strength.value}" + (
        f", grade {e.grade}" if e.grade else "")
    out: dict[str, Any] = {"type": "citation", "label": e.id, "display": display,
                           "citation": " ".join(e.citation.split())
                           + (f" Note: {' '.join(e.note.split())}" if e.note else "")}
    url = evidence_url(e.id)
    if url:
        out["url"] = url
    return out


def _value_ext(url: str, v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"url": url, "valueBoolean": v}
    if isinstance(v, int):
        return {"url": url, "valueInteger": v}
    if isinstance(v, float):
        return {"url": url, "valueDecimal": v}
    return {"url": url, "valueString": str(v)}


def _output_ext(kind: str, *subs: dict[str, Any]) -> dict[str, Any]:
    return {"url": EXT_RULE_OUTPUT,
            "extension": [{"url": "kind", "valueCode": kind}, *subs]}


def _vetoed(kb: KnowledgeBase, a: Action) -> list[ExerciseDefinition]:
    v = a.veto
    assert v is not None
    return [ex for ex in kb.exercises.values()
            if (not v.direction or set(v.direction) & set(ex.direction))
            and (not v.load or ex.load in v.load)
            and (not v.surface or ex.surface in v.surface)]


def _output_action(kb: KnowledgeBase, a: Action) -> dict[str, Any]:
    """One output of a rule's ``then`` as a nested action."""
    kind = a.kind()
    if a.finding or a.classification:
        f = a.finding or a.classification
        assert f is not None
        return {"title": f"Derive {f.name} = {_literal(f.value)}",
                "description": f"Sets the {kind} {f.name} to {_literal(f.value)}; later "
                               "rules read it.",
                "extension": [_output_ext(kind, {"url": "fact", "valueString": f.name},
                                          _value_ext("value", f.value))]}
    if a.alert:
        al = a.alert
        display = kb.alerts[al.code].display.strip() if al.code in kb.alerts else al.code
        holds = bool(al.holds_exercise) or (
            al.referral is not None and al.referral.priority.value in ("stat", "asap",
                                                                         "urgent"))
        subs: list[dict[str, Any]] = [{"url": "level", "valueCode": al.level.value},
                {"url": "holds-exercise", "valueBoolean": holds}]
        text = " ".join(al.detail.split())
        if al.referral is not None:
            subs.append({"url": "referral-to", "valueString": al.referral.to})
            text += (f" Referral proposed: {al.referral.priority.value}, to "
                     f"{al.referral.to}.")
        out: dict[str, Any] = {
            "title": f"Alert: {display} ({al.level.value})",
            "description": text,
            "textEquivalent": " ".join(al.mitigation.split()),
            "code": [{"coding": [{"system": ALERT_SYSTEM, "code": al.code,
                                  "display": display}], "text": display}],
            "extension": [_output_ext(kind, *subs)],
        }
        if al.referral is not None:
            out["priority"] = al.referral.priority.value
        return out
    if a.recommend:
        r = a.recommend
        ex = kb.exercises[r.exercise]
        out = {"title": f"Propose: {ex.title.strip()}",
               "description": " ".join(r.why.split()),
               "definitionCanonical": _canonical(ACTIVITY_DEFINITION_BASE, ex.id, kb),
               "extension": [_output_ext(kind, {"url": "exercise", "valueCode": ex.id})]}
        if r.dose is not None:
            dose = ExerciseDose.of(ex.dose, r.dose)
            out["textEquivalent"] = f"Dose for this rule: {dose.describe()}"
            out["extension"].append(dose_extension(dose, fold_space=True))
        return out
    if a.veto:
        v = a.veto
        props = [(k, [x.value for x in vals]) for k, vals in
                 (("direction", v.direction), ("load", v.load), ("surface", v.surface)) if vals]
        what = "; ".join(f"{k} {' or '.join(vals)}" for k, vals in props)
        now = ", ".join(ex.id for ex in _vetoed(kb, a)) or "none in this catalog"
        return {"title": f"Do not perform: every exercise with {what}",
                "description": f"{' '.join(v.why.split())} (Matches by property, so new "
                               f"catalog exercises are covered; in this release: {now}.)",
                "extension": [_output_ext(kind, *({"url": k, "valueCode": x}
                                                  for k, vals in props for x in vals))]}
    if a.data_gap:
        g = a.data_gap
        return {"title": f"Report missing answers: {', '.join(g.facts)}",
                "description": " ".join(g.detail.split()),
                "extension": [_output_ext(kind, *({"url": "fact", "valueString": f}
                                                  for f in g.facts))]}
    if a.safety_net:
        return {"title": "Add safety-netting advice",
                "textEquivalent": " ".join(a.safety_net.text.split()),
                "extension": [_output_ext(kind)]}
    if a.plan_limit:
        lim = a.plan_limit.max_exercises
        sub = ({"url": "max-exercises-parameter", "valueString": lim.param}
               if isinstance(lim, Param) else {"url": "max-exercises", "valueInteger": lim})
        return {"title": f"Limit the plan to {_literal(lim)} exercises",
                "description": " ".join(a.plan_limit.why.split()),
                "extension": [_output_ext(kind, sub)]}
    return _generic_output(kind, a)


_TEXT_FIELDS: Final = ("why", "detail", "text", "patient")


def _generic_output(kind: str, a: Action) -> dict[str, Any]:
    """Any other kind of output (e.g. a follow-up ``adjust``): its plain-text fields as
    description (``why``/``detail``/``text``) and textEquivalent (``patient``), every other
    field as a sub-extension of ``rule-output`` named after it."""
    payload = next(v for v in a.__dict__.values() if v is not None)
    data = payload.model_dump(by_alias=True, exclude_none=True, mode="json")
    subs: list[dict[str, Any]] = []
    for key, v in data.items():
        if key in _TEXT_FIELDS:
            continue
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, dict | list):
                item = json.dumps(item, sort_keys=True)
            subs.append(_value_ext(key, item))
    summary = ", ".join(str(v) for k, v in data.items()
                        if k not in _TEXT_FIELDS and isinstance(v, str | int | float))
    out: dict[str, Any] = {"title": kind.replace("-", " ").capitalize()
                           + (f": {summary}" if summary else ""),
                           "extension": [_output_ext(kind, *subs)]}
    text = next((data[k] for k in ("why", "detail", "text") if k in data), None)
    if text:
        out["description"] = " ".join(str(text).split())
    if data.get("patient"):
        out["textEquivalent"] = " ".join(str(data["patient"]).split())
    return out


def _rule_action(kb: KnowledgeBase, rule: Rule) -> dict[str, Any]:
    outputs = [_output_action(kb, a) for a in rule.then]
    description = " ".join((rule.description or "").split()) or "; ".join(
        o["title"] for o in outputs)
    return {
        "id": rule.id,
        "title": f"{rule.id}: {rule.title.strip()}",
        "description": description,
        "extension": [{"url": EXT_RULE_PRIORITY, "valueInteger": rule.priority}],
        "condition": [{"kind": "applicability", "expression": {
            "language": CONDITION_LANGUAGE,
            "expression": render_condition(rule.when),
            "description": render_condition_words(rule.when, kb),
        }}],
        "documentation": [_evidence(e) for e in rule.evidence],
        "groupingBehavior": "logical-group",
        "selectionBehavior": "all",
        "action": outputs,
    }


# --- the resources -------------------------------------------------------------------------


def _plan_definition(kb: KnowledgeBase, stratum: str, rules: list[Rule],
                     day: str | None) -> dict[str, Any]:
    m = kb.manifest
    words = stratum.replace("-", " ")
    pd = _header(
        kb, "PlanDefinition", stratum, f"{PLAN_DEFINITION_BASE}/{stratum}",
        _name(m.id, stratum), f"{m.title}: {words}",
        f"The {words} rules of {m.id}@{m.version}, in evaluation order (stratum "
        f"{m.strata.index(stratum) + 1} of {len(m.strata)}: {', '.join(m.strata)}). Each "
        "action is one rule: its condition in the documented expression language "
        f"{CONDITION_LANGUAGE} and in words, its evidence, and one nested action per "
        "output. A test on a fact with no usable answer is never true, not even under "
        "'not': missing data is never read as normal. Every output is a proposal for a "
        "licensed clinician.", day)
    pd["type"] = {"coding": [{"system": PLAN_DEFINITION_TYPE, "code": "eca-rule",
                              "display": "ECA Rule"}]}
    pd["library"] = [_canonical(KNOWLEDGE_BASE_BASE, m.id, kb)]
    pd["action"] = [_rule_action(kb, r) for r in rules]
    return pd


def _activity_definition(kb: KnowledgeBase, ex: ExerciseDefinition,
                         day: str | None) -> dict[str, Any]:
    dose = ExerciseDose.of(ex.dose)
    ad = _header(
        kb, "ActivityDefinition", ex.id, f"{ACTIVITY_DEFINITION_BASE}/{ex.id}",
        _name(ex.id), ex.title,
        f"{' '.join(ex.instructions.split())}\n\nDefault dose: {dose.describe()}", day)
    ad["purpose"] = (f"Goal family '{ex.purpose}' (a plan holds one exercise per goal "
                     "family).")
    equipment = ", ".join(ex.equipment) or "none"
    ad["usage"] = (f"Position: {ex.position}. Equipment: {equipment}. Direction: "
                   f"{', '.join(d.value for d in ex.direction)}; load: {ex.load.value}; "
                   f"surface: {ex.surface.value}.")
    ad["library"] = [_canonical(KNOWLEDGE_BASE_BASE, kb.manifest.id, kb)]
    ad["kind"] = "ServiceRequest"
    ad["intent"] = "proposal"
    ad["code"] = {"coding": [{"system": EXERCISE_SYSTEM, "code": ex.id,
                              "display": ex.title.strip()}], "text": ex.title.strip()}
    ad["timingTiming"] = {"repeat": {"frequency": dose.frequency, "period": dose.period,
                                     "periodUnit": dose.period_unit}}
    ad["participant"] = [{"type": "patient"}]
    ad["extension"] = [dose_extension(ex.dose, fold_space=True)]
    related = []
    for label, target in (("Easier (regression)", ex.easier),
                          ("Harder (progression)", ex.harder)):
        if target:
            related.append({"type": "documentation", "label": label,
                            "display": kb.exercises[target].title.strip(),
                            "resource": _canonical(ACTIVITY_DEFINITION_BASE, target, kb)})
    if related:
        ad["relatedArtifact"] = related
    return ad


def _library(kb: KnowledgeBase, members: list[dict[str, Any]], day: str | None
             ) -> dict[str, Any]:
    m = kb.manifest
    params = "\n".join(
        f"- `{n}` = {_literal(p.value)} (tag {p.tag.value}"
        + (f", range {p.min:g}-{p.max:g}" if p.min is not None and p.max is not None else "")
        + f"): {' '.join(p.description.split())}"
        for n, p in sorted(kb.parameters.items()))
    text = (f"{' '.join((m.description or m.title).split())}\n\nThe knowledge base "
            f"{m.id}@{m.version} as FHIR Clinical Reasoning artifacts: one PlanDefinition "
            "per pathway, one ActivityDefinition per exercise, the CodeSystems and the "
            "Questionnaires (red-flag screen, STarT Back). A CarePlan "
            f"made by this release has instantiatesUri {KNOWLEDGE_BASE_BASE}/{m.id}|"
            f"{m.version}, which is this Library.")
    if params:
        text += ("\n\nParameters (a deployment may change them; conditions name them as "
                 f"$name):\n\n{params}")
    lib = _header(kb, "Library", m.id, f"{KNOWLEDGE_BASE_BASE}/{m.id}", _name(m.id),
                  m.title, text, day)
    lib["type"] = {"coding": [{"system": LIBRARY_TYPE, "code": "asset-collection",
                               "display": "Asset Collection"}]}
    lib["relatedArtifact"] = [
        {"type": "composed-of", "display": r["title"],
         "resource": f"{r['url']}|{r['version']}"} for r in members]
    return lib


_MODELS: Final[dict[str, Any]] = {"PlanDefinition": PlanDefinition,
                                  "ActivityDefinition": ActivityDefinition,
                                  "Questionnaire": Questionnaire,
                                  "Library": Library}

# (id, title, description, which facts, the questionnaire's own code)
_QUESTIONNAIRES: Final = (
    ("red-flag-screen", "Red-flag screen for low back pain",
     "The red-flag questions, asked at every visit. A yes never expires silently and an "
     "unanswered question is never read as no.",
     lambda name, d: d.red_flag is not None, None),
    ("startback", "STarT Back Screening Tool",
     "The nine STarT Back items (agree = true; item 9: true for 'very much' or "
     "'extremely'); the totals are computed from them.",
     lambda name, d: name.startswith("startback-item-"), STARTBACK_PANEL),
)


def _questionnaire_item(name: str, d: FactDefinition) -> dict[str, Any]:
    assert d.coding is not None and d.question is not None
    item: dict[str, Any] = {
        "linkId": name, "text": " ".join(d.question.split()), "type": _ITEM_TYPE[d.type],
        "code": [{"system": c.system, "code": c.code, "display": c.display}
                 for c in (d.coding, *d.also_coded)]}
    if d.type == "code":
        item["answerOption"] = [{"valueCoding": {"system": d.coding.system, "code": c}}
                                for c in d.codes or ()]
    return item


def questionnaires(kb: KnowledgeBase, day: str | None = None) -> list[dict[str, Any]]:
    """The Questionnaires generated from the fact catalog (module docstring)."""
    out = []
    for ident, title, description, wanted, code in _QUESTIONNAIRES:
        facts = [(n, d) for n, d in kb.facts.items()
                 if not d.derived and d.coding is not None and d.question and wanted(n, d)]
        if not facts:
            continue
        q = _header(kb, "Questionnaire", ident, f"{QUESTIONNAIRE_BASE}/{ident}",
                    _name(ident), title, description, day)
        q["subjectType"] = ["Patient"]
        if code is not None:
            q["code"] = [dict(code)]
        q["item"] = [_questionnaire_item(n, d) for n, d in facts]
        out.append(q)
    return out


def knowledge_base_resources(kb: KnowledgeBase) -> list[dict[str, Any]]:
    """Every resource of the export (PlanDefinitions in stratum order, ActivityDefinitions in
    catalog order, the CodeSystems, the Library last), each validated with its R4B model."""
    day = _release_date(kb)
    by_stratum: dict[str, list[Rule]] = {}
    for rule in kb.rules:  # already in evaluation order
        by_stratum.setdefault(rule.stratum, []).append(rule)
    members: list[dict[str, Any]] = [
        _plan_definition(kb, s, by_stratum[s], day) for s in kb.manifest.strata
        if s in by_stratum]
    members += [_activity_definition(kb, ex, day) for ex in kb.exercises.values()]
    members += questionnaires(kb, day)
    for r in members:
        try:
            _MODELS[r["resourceType"]].model_validate(r)
        except ValidationError as e:
            raise OutputValidationError(
                f"{r['resourceType']} {r['id']} is not valid FHIR R4: {e}") from e
    members += code_systems(kb)  # validated there
    library = _library(kb, members, day)
    try:
        Library.model_validate(library)
    except ValidationError as e:
        raise OutputValidationError(f"Library {library['id']} is not valid FHIR R4: {e}"
                                    ) from e
    return [*members, library]


def export_knowledge_base(kb: KnowledgeBase, directory: str | Path) -> list[Path]:
    """Write every resource as ``<ResourceType>-<id>.json`` into ``directory`` (created if
    needed) and remove older export files there that this release does not have; return the
    paths written, in ``knowledge_base_resources`` order."""
    resources = knowledge_base_resources(kb)  # validate everything before writing anything
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for r in resources:
        path = directory / f"{r['resourceType']}-{r['id']}.json"
        path.write_text(json.dumps(r, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        written.append(path)
    keep = set(written)
    for kind in _KINDS:
        for old in directory.glob(f"{kind}-*.json"):
            if old not in keep:
                old.unlink()
    return written
