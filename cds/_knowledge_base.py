"""Loading a knowledge base from its YAML files, with every error pinned to file:line:column.

A knowledge base is a directory::

    manifest.yaml      id, version, title, status, strata, parameters, safety-net
    facts.yaml         facts:      the fact catalog (inputs and derived findings)
    exercises.yaml     exercises:  the exercise catalog
    alerts.yaml        alerts:     the alert codes
    rules/*.yaml       rules:      the rules, any number of files
    search-synonyms.yaml  synonyms: optional; words the catalog's search treats as the same
    scenarios/*.yaml   scenario tests (read by the test runner, not here)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from cds._errors import KnowledgeBaseError, KnowledgeBaseProblem
from cds._kb_cache import cache_dir, cache_key, read_cached, write_cached
from cds._kb_schema import (
    AlertDefinition,
    AllOf,
    AnyOf,
    AtLeast,
    Condition,
    ExerciseDefinition,
    FactDefinition,
    FactTest,
    Manifest,
    NoneOf,
    Param,
    ParameterDefinition,
    ParamTest,
    Rule,
    SynonymGroup,
)

__all__ = [
    "KnowledgeBase",
    "Located",
    "condition_facts",
    "derived_names",
    "load_knowledge_base",
    "tests_absence",
]

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("movement_cds.kb")
_VALUE_OPS = ("is", "is-not", "in", "not-in")


@dataclass(frozen=True)
class Located:
    file: str
    line: int | None
    column: int | None


@dataclass
class KnowledgeBase:
    """A loaded, cross-checked knowledge base. ``rules`` are in evaluation order."""

    root: Path
    manifest: Manifest
    facts: dict[str, FactDefinition]
    exercises: dict[str, ExerciseDefinition]
    alerts: dict[str, AlertDefinition]
    rules: list[Rule]
    locations: dict[str, Located] = field(default_factory=dict)
    warnings: list[KnowledgeBaseProblem] = field(default_factory=list)
    parameter_overrides: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, ParameterDefinition] = field(default_factory=dict)
    search_synonyms: list[SynonymGroup] = field(default_factory=list)
    _by_id: dict[str, Rule] = field(default_factory=dict, repr=False, compare=False)
    derived_cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ruleset_name(self) -> str:
        """``{kb-id}@{version}``; with parameter overrides, ``+p`` and a digest of them, so a
        plan made with changed thresholds is never mistaken for one made with the defaults."""
        name = f"{self.manifest.id}@{self.manifest.version}"
        if self.parameter_overrides:
            canon = json.dumps(self.parameter_overrides, sort_keys=True)
            name += "+p" + hashlib.sha256(canon.encode()).hexdigest()[:8]
        return name

    def rule(self, rule_id: str) -> Rule:
        by_id = self._by_id
        if len(by_id) != len(self.rules):
            by_id.clear()
            by_id.update((r.id, r) for r in self.rules)
        return by_id[rule_id]

    def parameter(self, name: str) -> Any:
        if name in self.parameter_overrides:
            return self.parameter_overrides[name]
        return self.parameters[name].value


# --- YAML with positions ------------------------------------------------------------------


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _read(path: Path, root: Path, problems: list[KnowledgeBaseProblem]) -> Any:
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    try:
        with path.open(encoding="utf-8") as fh:
            return _yaml().load(fh)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problems.append(
            KnowledgeBaseProblem(
                rel,
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
                f"not valid YAML: {e.problem or e.context}",
            )
        )
    except (OSError, UnicodeDecodeError) as e:
        problems.append(KnowledgeBaseProblem(rel, None, None, f"cannot read: {e}"))
    except Exception as e:  # ruamel raises a few non-Marked errors (duplicate keys...)
        problems.append(KnowledgeBaseProblem(rel, None, None, f"not valid YAML: {e}"))
    return None


def _position(node: Any, loc: tuple[Any, ...]) -> tuple[int | None, int | None]:
    """Line and column (1-based) of the deepest node on ``loc`` that exists in the YAML."""
    line = col = None
    cur = node
    if hasattr(cur, "lc"):
        line, col = cur.lc.line + 1, cur.lc.col + 1
    for step in loc:
        if isinstance(cur, dict) and step in cur:
            try:
                line, col = cur.lc.key(step)  # type: ignore[attr-defined]
                line, col = line + 1, col + 1
            except Exception:
                pass
            cur = cur[step]
        elif isinstance(cur, list) and isinstance(step, int) and 0 <= step < len(cur):
            try:
                line, col = cur.lc.item(step)  # type: ignore[attr-defined]
                line, col = line + 1, col + 1
            except Exception:
                pass
            cur = cur[step]
    return line, col


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _validate(
    model: type[M],
    node: Any,
    rel: str,
    base_loc: tuple[Any, ...],
    doc: Any,
    problems: list[KnowledgeBaseProblem],
) -> M | None:
    try:
        return model.model_validate(_plain(node))
    except ValidationError as e:
        for err in e.errors():
            loc = base_loc + tuple(err["loc"])
            line, col = _position(doc, loc)
            path = ".".join(str(p) for p in err["loc"]) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(KnowledgeBaseProblem(rel, line, col, f"{path}: {msg}"))
        return None


def _items(
    doc: Any, key: str, rel: str, problems: list[KnowledgeBaseProblem]
) -> Iterator[tuple[int, Any]]:
    if doc is None:
        return
    if not isinstance(doc, dict) or key not in doc:
        line, col = _position(doc, ())
        problems.append(KnowledgeBaseProblem(rel, line, col, f"expected a top-level '{key}:' list"))
        return
    seq = doc[key]
    if not isinstance(seq, list):
        line, col = _position(doc, (key,))
        problems.append(KnowledgeBaseProblem(rel, line, col, f"'{key}' must be a list"))
        return
    yield from enumerate(seq)


# --- condition helpers --------------------------------------------------------------------


def condition_facts(cond: Condition) -> Iterator[tuple[FactTest, bool]]:
    """Every fact test in a condition, with whether it sits under an odd number of ``not``."""

    def walk(c: Condition, neg: bool) -> Iterator[tuple[FactTest, bool]]:
        if isinstance(c, FactTest):
            yield c, neg
        elif isinstance(c, AllOf):
            for x in c.all:
                yield from walk(x, neg)
        elif isinstance(c, AnyOf):
            for x in c.any:
                yield from walk(x, neg)
        elif isinstance(c, NoneOf):
            yield from walk(c.not_, not neg)
        elif isinstance(c, AtLeast):
            for x in c.of:
                yield from walk(x, neg)

    yield from walk(cond, False)


def _param_tests(cond: Condition) -> Iterator[ParamTest]:
    if isinstance(cond, ParamTest):
        yield cond
    elif isinstance(cond, AllOf | AnyOf):
        for x in cond.all if isinstance(cond, AllOf) else cond.any:
            yield from _param_tests(x)
    elif isinstance(cond, AtLeast):
        for x in cond.of:
            yield from _param_tests(x)
    elif isinstance(cond, NoneOf):
        yield from _param_tests(cond.not_)


def tests_absence(test: FactTest, negated: bool) -> bool:
    """Whether the test can only be decided once it is known that a fact will not appear."""
    op, _ = test.operator()
    return (op == "missing" and not negated) or (op == "present" and negated)


def derived_names(rule: Rule) -> list[str]:
    """Names of the facts a rule's actions derive."""
    out: list[str] = []
    for a in rule.then:
        if a.finding:
            out.append(a.finding.name)
        elif a.classification:
            out.append(a.classification.name)
        elif a.alert:
            out.append(f"alert.{a.alert.code}")
        elif a.recommend:
            out.append(f"recommend.{a.recommend.exercise}")
        elif a.veto:
            out.append(f"veto.{rule.id}")
        elif a.data_gap:
            out.append(f"gap.{rule.id}")
        elif a.safety_net:
            out.append(f"note.{rule.id}")
        elif a.plan_limit:
            out.append(f"limit.{rule.id}")
        elif a.adjust:
            out.append(f"adjust.{rule.id}")
    return out


# --- loading ------------------------------------------------------------------------------


def load_knowledge_base(
    root: str | Path, parameter_overrides: dict[str, Any] | None = None
) -> KnowledgeBase:
    """Load and cross-check a knowledge base; raise ``KnowledgeBaseError`` listing every
    problem found (not just the first).

    A knowledge base whose every file is byte for byte one that loaded before comes from
    the cache (``cds._kb_cache``: keyed by the digest of its content, the overrides and
    this code); anything else is parsed with positions, so problems keep file:line:col."""
    root = Path(root)
    key = None
    if root.is_dir() and cache_dir() is not None:
        try:
            key = cache_key(root, dict(parameter_overrides or {}))
        except (OSError, TypeError, ValueError):  # unreadable file, overrides that do not
            key = None  # serialise (keys of mixed types...): the loader says what is wrong
    if key is not None:
        hit = read_cached(key)
        if isinstance(hit, KnowledgeBase):
            hit.root = root
            log.debug("knowledge base %s from the cache", hit.ruleset_name)
            return hit
    kb = _parse_knowledge_base(root, parameter_overrides)
    if key is not None:
        write_cached(key, kb)
    return kb


def _parse_knowledge_base(
    root: Path, parameter_overrides: dict[str, Any] | None
) -> KnowledgeBase:
    problems: list[KnowledgeBaseProblem] = []
    if not root.is_dir():
        raise KnowledgeBaseError(
            [KnowledgeBaseProblem(str(root), None, None, "not a knowledge-base directory")]
        )

    def need(name: str) -> Path:
        p = root / name
        if not p.is_file():
            problems.append(KnowledgeBaseProblem(name, None, None, "file is missing"))
        return p

    manifest_path = need("manifest.yaml")
    manifest_doc = _read(manifest_path, root, problems) if manifest_path.is_file() else None
    manifest = (
        _validate(Manifest, manifest_doc, "manifest.yaml", (), manifest_doc, problems)
        if manifest_doc is not None
        else None
    )

    facts: dict[str, FactDefinition] = {}
    exercises: dict[str, ExerciseDefinition] = {}
    alerts: dict[str, AlertDefinition] = {}
    rules: list[Rule] = []
    locations: dict[str, Located] = {}

    def collect(
        fname: str, key: str, model: type[M], id_attr: str, into: dict[str, M]
    ) -> None:
        # NAME.yaml, plus any NAME/*.yaml (one file per pathway, so authors don't collide)
        extra = sorted((root / key).glob("*.yaml")) if (root / key).is_dir() else []
        main = need(fname) if not extra else root / fname
        for path in ([main] if main.is_file() else []) + extra:
            collect_file(path, key, model, id_attr, into)

    def collect_file(
        path: Path, key: str, model: type[M], id_attr: str, into: dict[str, M]
    ) -> None:
        fname = str(path.relative_to(root))
        doc = _read(path, root, problems)
        for i, node in _items(doc, key, fname, problems):
            item = _validate(model, node, fname, (key, i), doc, problems)
            if item is None:
                continue
            ident = getattr(item, id_attr)
            line, col = _position(doc, (key, i))
            if ident in into:
                first = locations.get(f"{key}:{ident}")
                problems.append(
                    KnowledgeBaseProblem(
                        fname, line, col,
                        f"duplicate {id_attr} '{ident}'"
                        + (f" (first at {first.file}:{first.line})" if first else ""),
                    )
                )
                continue
            into[ident] = item
            locations[f"{key}:{ident}"] = Located(fname, line, col)

    collect("facts.yaml", "facts", FactDefinition, "name", facts)
    collect("exercises.yaml", "exercises", ExerciseDefinition, "id", exercises)
    collect("alerts.yaml", "alerts", AlertDefinition, "code", alerts)

    rule_files = sorted((root / "rules").glob("*.yaml")) if (root / "rules").is_dir() else []
    if not rule_files:
        problems.append(KnowledgeBaseProblem("rules/", None, None, "no rule files (rules/*.yaml)"))
    seen_rules: dict[str, Located] = {}
    for path in rule_files:
        rel = str(path.relative_to(root))
        doc = _read(path, root, problems)
        for i, node in _items(doc, "rules", rel, problems):
            rule = _validate(Rule, node, rel, ("rules", i), doc, problems)
            line, col = _position(doc, ("rules", i))
            if rule is None:
                continue
            if rule.id in seen_rules:
                first = seen_rules[rule.id]
                problems.append(
                    KnowledgeBaseProblem(
                        rel, line, col,
                        f"duplicate rule id '{rule.id}' (first at {first.file}:{first.line})",
                    )
                )
                continue
            seen_rules[rule.id] = Located(rel, line, col)
            rules.append(rule)

    if manifest is None:
        problems.append(KnowledgeBaseProblem("manifest.yaml", None, None, "no usable manifest"))
        raise KnowledgeBaseError(problems)

    parameters = dict(manifest.parameters)
    pdir = root / "parameters"
    for path in sorted(pdir.glob("*.yaml")) if pdir.is_dir() else []:
        rel = str(path.relative_to(root))
        doc = _read(path, root, problems)
        table = doc.get("parameters") if isinstance(doc, dict) else None
        if not isinstance(table, dict):
            problems.append(
                KnowledgeBaseProblem(rel, 1, 1, "expected a top-level 'parameters:' map")
            )
            continue
        for pname, node in table.items():
            pdef = _validate(ParameterDefinition, node, rel, ("parameters", pname), doc, problems)
            if pdef is None:
                continue
            if pname in parameters:
                line, col = _position(doc, ("parameters", pname))
                problems.append(
                    KnowledgeBaseProblem(rel, line, col, f"duplicate parameter '{pname}'")
                )
                continue
            parameters[str(pname)] = pdef

    overrides = dict(parameter_overrides or {})
    for name, value in overrides.items():
        pd = parameters.get(name)
        if pd is not None and isinstance(value, int | float) and not isinstance(value, bool) and (
            (pd.min is not None and value < pd.min) or (pd.max is not None and value > pd.max)
        ):
            problems.append(KnowledgeBaseProblem(
                "(configuration)", None, None,
                f"parameter '{name}' = {value} is outside its range [{pd.min}, {pd.max}]"))
        if name not in parameters:
            problems.append(
                KnowledgeBaseProblem("(configuration)", None, None, f"unknown parameter '{name}'")
            )

    kb = KnowledgeBase(
        root=root, manifest=manifest, facts=facts, exercises=exercises, alerts=alerts, rules=[],
        locations={**locations, **{f"rules:{k}": v for k, v in seen_rules.items()}},
        parameter_overrides=overrides,
        parameters=parameters,
        search_synonyms=_synonyms(root, problems),
    )
    problems.extend(_cross_check(kb, rules))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise KnowledgeBaseError(problems)
    order = {s: i for i, s in enumerate(manifest.strata)}
    kb.rules = sorted(rules, key=lambda r: (order[r.stratum], r.priority, r.id))
    kb.warnings = [p for p in problems if p.severity != "error"]
    return kb


def _synonyms(root: Path, problems: list[KnowledgeBaseProblem]) -> list[SynonymGroup]:
    """The catalog's search synonyms (``search-synonyms.yaml``, optional): each group checked
    with its position, and a term in two groups refused (a search must mean one thing)."""
    path = root / "search-synonyms.yaml"
    if not path.is_file():
        return []
    rel = path.name
    doc = _read(path, root, problems)
    groups: list[SynonymGroup] = []
    seen: dict[str, int] = {}
    for i, node in _items(doc, "synonyms", rel, problems):
        group = _validate(SynonymGroup, node, rel, ("synonyms", i), doc, problems)
        if group is None:
            continue
        line, col = _position(doc, ("synonyms", i))
        for term in group.terms:
            if term in seen:
                problems.append(KnowledgeBaseProblem(
                    rel, line, col, f"search synonym '{term}' is already in the group at "
                    f"line {seen[term]}"))
            seen.setdefault(term, line or 0)
        groups.append(group)
    return groups


def _cross_check(kb: KnowledgeBase, rules: list[Rule]) -> list[KnowledgeBaseProblem]:
    out: list[KnowledgeBaseProblem] = []

    def at(rule: Rule, msg: str, severity: str = "error") -> None:
        loc = kb.locations.get(f"rules:{rule.id}", Located("rules/", None, None))
        out.append(KnowledgeBaseProblem(loc.file, loc.line, loc.column, msg, severity))

    strata = kb.manifest.strata
    order = {s: i for i, s in enumerate(strata)}
    if len(order) != len(strata):
        out.append(KnowledgeBaseProblem("manifest.yaml", None, None, "strata repeat a name"))

    for fd in kb.facts.values():
        if isinstance(fd.max_age_days, Param) and fd.max_age_days.param not in kb.parameters:
            loc = kb.locations.get(f"facts:{fd.name}", Located("facts.yaml", None, None))
            out.append(KnowledgeBaseProblem(
                loc.file, loc.line, loc.column,
                f"fact '{fd.name}': max-age-days names unknown parameter "
                f"'{fd.max_age_days.param}'"))

    for rel in ("easier", "harder"):
        # a progression or regression chain must end: the follow-up walks it
        for ex in kb.exercises.values():
            seen, cur = [ex.id], getattr(ex, rel)
            while cur is not None and cur in kb.exercises and cur not in seen:
                seen.append(cur)
                cur = getattr(kb.exercises[cur], rel)
            if cur is not None and cur == ex.id:
                loc = kb.locations[f"exercises:{ex.id}"]
                out.append(KnowledgeBaseProblem(
                    loc.file, loc.line, loc.column,
                    f"exercise '{ex.id}': the {rel} chain loops back to it "
                    f"({' -> '.join([*seen, cur])})"))

    for ex in kb.exercises.values():
        for rel, target in (("easier", ex.easier), ("harder", ex.harder)):
            if target is not None and target not in kb.exercises:
                loc = kb.locations[f"exercises:{ex.id}"]
                out.append(
                    KnowledgeBaseProblem(
                        loc.file, loc.line, loc.column,
                        f"exercise '{ex.id}': {rel} names unknown exercise '{target}'",
                    )
                )

    # which stratum produces each derived name
    producers: dict[str, set[int]] = {}
    for r in rules:
        if r.stratum not in order:
            at(r, f"rule {r.id}: unknown stratum '{r.stratum}' (manifest lists {strata})")
            continue
        for name in derived_names(r):
            producers.setdefault(name, set()).add(order[r.stratum])

    def known(name: str) -> bool:
        if name in kb.facts:
            return True
        prefix, _, rest = name.partition(".")
        if prefix == "alert":
            return rest in kb.alerts
        if prefix == "recommend":
            return rest in kb.exercises
        if prefix in ("veto", "gap", "note", "limit", "adjust"):
            return any(r.id == rest for r in rules)
        base = kb.facts.get(prefix)
        if base is None:
            return False
        # per-side and asymmetry facts of bilateral tests; the LBP-provoked flag of a test
        if base.bilateral and rest in ("left", "right", "asymmetry"):
            return True
        return rest == "lbp-provoked" and prefix.startswith(("fms-", "pattern-"))

    def fact_scope(name: str) -> str:
        d = kb.facts.get(name)
        return d.scope if d is not None else "patient"

    for r in rules:
        per_exercise = r.scope == "exercise-response"
        for test, _neg in condition_facts(r.when):
            fs = fact_scope(test.fact)
            d = kb.facts.get(test.fact)
            if not per_exercise and fs == "exercise-response":
                at(r, f"rule {r.id}: reads '{test.fact}', a per-exercise response fact; give "
                   "the rule scope: exercise-response")
            elif per_exercise and fs == "patient" and (d is None or d.derived):
                at(r, f"rule {r.id}: a per-exercise rule reads '{test.fact}', a patient-level "
                   "finding; it may read the patient's input facts and response facts only")
        for a in r.then:
            kind = a.kind()
            if per_exercise and kind not in ("finding", "classification", "adjust"):
                at(r, f"rule {r.id}: a per-exercise rule (scope exercise-response) may only "
                   f"derive findings and adjust; not {kind}")
            if not per_exercise and kind == "adjust":
                at(r, f"rule {r.id}: adjust is for per-exercise rules; give the rule scope: "
                   "exercise-response")
            for fa in (a.finding, a.classification):
                if fa is not None and fa.name in kb.facts and fact_scope(fa.name) != r.scope:
                    at(r, f"rule {r.id}: derives '{fa.name}' of scope {fact_scope(fa.name)} "
                       f"from a rule of scope {r.scope}")

    for r in rules:
        for pt in _param_tests(r.when):
            if pt.param not in kb.parameters:
                at(r, f"rule {r.id}: unknown parameter '{pt.param}'")
        if r.stratum not in order:
            continue
        mine = order[r.stratum]
        for test, negated in condition_facts(r.when):
            if not known(test.fact):
                at(r, f"rule {r.id}: unknown fact '{test.fact}'")
                continue
            op, operand = test.operator()
            defn = kb.facts.get(test.fact)
            if isinstance(operand, Param):
                if operand.param not in kb.parameters:
                    at(r, f"rule {r.id}: unknown parameter '{operand.param}'")
            elif defn is not None and defn.type == "code" and op in _VALUE_OPS:
                values = operand if isinstance(operand, list) else [operand]
                bad = [v for v in values if v not in (defn.codes or [])]
                if bad:
                    at(r, f"rule {r.id}: '{test.fact}' has no code {bad}; allowed: {defn.codes}")
            if test.fact in producers:
                if tests_absence(test, negated) and max(producers[test.fact]) >= mine:
                    at(
                        r,
                        f"rule {r.id}: tests that '{test.fact}' is absent, but it is derived in "
                        "the same or a later stratum; move this rule to a later stratum",
                    )
                elif min(producers[test.fact]) > mine:
                    at(r, f"rule {r.id}: reads '{test.fact}', which is only derived later")
            elif defn is not None and defn.derived:
                at(r, f"rule {r.id}: reads '{test.fact}', which no rule produces (unreachable)",
                   "warning")
        for a in r.then:
            if a.alert and a.alert.code not in kb.alerts:
                at(r, f"rule {r.id}: unknown alert code '{a.alert.code}'")
            if a.recommend and a.recommend.exercise not in kb.exercises:
                at(r, f"rule {r.id}: unknown exercise '{a.recommend.exercise}'")
            for fa in (a.finding, a.classification):
                if fa is None:
                    continue
                d = kb.facts.get(fa.name)
                if d is None or not d.derived:
                    at(r, f"rule {r.id}: derives '{fa.name}', which facts.yaml does not declare "
                       "as a derived fact")
                elif d.type == "code" and fa.value not in (d.codes or []):
                    at(r, f"rule {r.id}: '{fa.name}' has no code '{fa.value}'")
            if a.data_gap:
                for f in a.data_gap.facts:
                    if f not in kb.facts:
                        at(r, f"rule {r.id}: data-gap names unknown fact '{f}'")
    return out
