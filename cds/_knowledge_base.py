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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from cds._errors import KnowledgeBaseError, KnowledgeBaseProblem
from cds._facts import VALUE_KINDS, of_kind
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
# the fact types whose value tests must have operands of the fact's kind (codes: above)
_TYPED_OPERANDS = frozenset({"boolean", "integer", "decimal"})


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
            where = "key"
        elif isinstance(cur, list) and isinstance(step, int) and 0 <= step < len(cur):
            where = "item"
        else:
            continue
        try:  # a map's key or a list's item, as ruamel's round-trip nodes keep them
            ln, cl = getattr(cur.lc, where)(step)
            line, col = ln + 1, cl + 1
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


def located_items(
    path: Path, root: Path, key: str, model: type[M], problems: list[KnowledgeBaseProblem]
) -> Iterator[tuple[M, Located]]:
    """Each item of the file's top-level ``key:`` list that validates as ``model``, with where
    it is written; what does not read or validate is added to ``problems``."""
    rel = str(path.relative_to(root))
    doc = _read(path, root, problems)
    for i, node in _items(doc, key, rel, problems):
        item = _validate(model, node, rel, (key, i), doc, problems)
        if item is not None:
            yield item, Located(rel, *_position(doc, (key, i)))


def load_cases(
    root: Path, key: str, model: type[M], what: str,
    check: Callable[[M], str | None] = lambda _: None,
) -> list[tuple[M, str, int | None]]:
    """Every item (with an ``id``) of ``root/key/*.yaml``'s ``key:`` lists, with its file and
    line: the scenarios and the trajectories. An id given twice, or an item ``check`` has a
    complaint about, is a problem; ``KnowledgeBaseError`` lists them all."""
    problems: list[KnowledgeBaseProblem] = []
    out: list[tuple[M, str, int | None]] = []
    seen: dict[str, str] = {}
    for path in sorted((root / key).glob("*.yaml")):
        for item, at in located_items(path, root, key, model, problems):
            ident = getattr(item, "id")  # noqa: B009 - any model with an id
            wrong = (f"duplicate {what} id '{ident}' (first in {seen[ident]})"
                     if ident in seen else check(item))
            if wrong:
                problems.append(KnowledgeBaseProblem(at.file, at.line, at.column, wrong))
                continue
            seen[ident] = at.file
            out.append((item, at.file, at.line))
    if problems:
        raise KnowledgeBaseError(problems)
    return out


class _Reader:
    """A knowledge base's files read with positions, in a fixed order; every problem found is
    collected (in the order found) and every catalog entry's place kept as ``key:ident``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[KnowledgeBaseProblem] = []
        self.locations: dict[str, Located] = {}

    def need(self, name: str) -> Path:
        p = self.root / name
        if not p.is_file():
            self.problems.append(KnowledgeBaseProblem(name, None, None, "file is missing"))
        return p

    def manifest(self) -> Manifest | None:
        path = self.need("manifest.yaml")
        doc = _read(path, self.root, self.problems) if path.is_file() else None
        if doc is None:
            return None
        return _validate(Manifest, doc, "manifest.yaml", (), doc, self.problems)

    def catalog(self, fname: str, key: str, model: type[M], id_attr: str) -> dict[str, M]:
        """NAME.yaml, plus any NAME/*.yaml (one file per pathway, so authors don't collide)."""
        folder = self.root / key
        extra = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        main = self.need(fname) if not extra else self.root / fname
        return self._unique(([main] if main.is_file() else []) + extra, key, model, id_attr,
                            id_attr)

    def rules(self) -> list[Rule]:
        folder = self.root / "rules"
        files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        if not files:
            self.problems.append(
                KnowledgeBaseProblem("rules/", None, None, "no rule files (rules/*.yaml)"))
        return list(self._unique(files, "rules", Rule, "id", "rule id").values())

    def _unique(
        self, paths: list[Path], key: str, model: type[M], id_attr: str, what: str
    ) -> dict[str, M]:
        into: dict[str, M] = {}
        for path in paths:
            for item, at in located_items(path, self.root, key, model, self.problems):
                ident = getattr(item, id_attr)
                first = self.locations.get(f"{key}:{ident}")
                if ident in into:
                    self.problems.append(KnowledgeBaseProblem(
                        at.file, at.line, at.column, f"duplicate {what} '{ident}'"
                        + (f" (first at {first.file}:{first.line})" if first else "")))
                    continue
                into[ident] = item
                self.locations[f"{key}:{ident}"] = at
        return into

    def parameters(self, manifest: Manifest) -> dict[str, ParameterDefinition]:
        """The manifest's parameters, then those of parameters/*.yaml (a name once only)."""
        parameters = dict(manifest.parameters)
        folder = self.root / "parameters"
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            rel = str(path.relative_to(self.root))
            doc = _read(path, self.root, self.problems)
            table = doc.get("parameters") if isinstance(doc, dict) else None
            if not isinstance(table, dict):
                self.problems.append(
                    KnowledgeBaseProblem(rel, 1, 1, "expected a top-level 'parameters:' map"))
                continue
            for pname, node in table.items():
                loc = ("parameters", pname)
                pdef = _validate(ParameterDefinition, node, rel, loc, doc, self.problems)
                if pdef is None:
                    continue
                if pname in parameters:
                    line, col = _position(doc, loc)
                    self.problems.append(
                        KnowledgeBaseProblem(rel, line, col, f"duplicate parameter '{pname}'"))
                    continue
                parameters[str(pname)] = pdef
        return parameters


def _override_problems(
    overrides: dict[str, Any], parameters: dict[str, ParameterDefinition]
) -> Iterator[KnowledgeBaseProblem]:
    """A configured parameter value outside its declared range, or for no parameter."""
    for name, value in overrides.items():
        pd = parameters.get(name)
        if pd is not None and isinstance(value, int | float) and not isinstance(value, bool) and (
            (pd.min is not None and value < pd.min) or (pd.max is not None and value > pd.max)
        ):
            yield KnowledgeBaseProblem(
                "(configuration)", None, None,
                f"parameter '{name}' = {value} is outside its range [{pd.min}, {pd.max}]")
        if name not in parameters:
            yield KnowledgeBaseProblem(
                "(configuration)", None, None, f"unknown parameter '{name}'")


def _parse_knowledge_base(
    root: Path, parameter_overrides: dict[str, Any] | None
) -> KnowledgeBase:
    if not root.is_dir():
        raise KnowledgeBaseError(
            [KnowledgeBaseProblem(str(root), None, None, "not a knowledge-base directory")]
        )
    read = _Reader(root)
    problems = read.problems
    manifest = read.manifest()
    facts = read.catalog("facts.yaml", "facts", FactDefinition, "name")
    exercises = read.catalog("exercises.yaml", "exercises", ExerciseDefinition, "id")
    alerts = read.catalog("alerts.yaml", "alerts", AlertDefinition, "code")
    rules = read.rules()
    if manifest is None:
        problems.append(KnowledgeBaseProblem("manifest.yaml", None, None, "no usable manifest"))
        raise KnowledgeBaseError(problems)
    parameters = read.parameters(manifest)
    overrides = dict(parameter_overrides or {})
    problems.extend(_override_problems(overrides, parameters))
    kb = KnowledgeBase(
        root=root, manifest=manifest, facts=facts, exercises=exercises, alerts=alerts, rules=[],
        locations=read.locations, parameter_overrides=overrides, parameters=parameters,
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
    groups: list[SynonymGroup] = []
    seen: dict[str, int] = {}
    for group, at in located_items(path, root, "synonyms", SynonymGroup, problems):
        for term in group.terms:
            if term in seen:
                problems.append(KnowledgeBaseProblem(
                    at.file, at.line, at.column, f"search synonym '{term}' is already in the "
                    f"group at line {seen[term]}"))
            seen.setdefault(term, at.line or 0)
        groups.append(group)
    return groups


# --- cross-checks -------------------------------------------------------------------------

_RULE_PREFIXES = ("veto", "gap", "note", "limit", "adjust")


class _Problems(list[KnowledgeBaseProblem]):
    """The cross-checks' problems, each placed where its rule (or catalog entry) is written."""

    def __init__(self, kb: KnowledgeBase) -> None:
        super().__init__()
        self.kb = kb

    def at(self, key: str, default: str, msg: str, severity: str = "error") -> None:
        loc = self.kb.locations.get(key, Located(default, None, None))
        self.append(KnowledgeBaseProblem(loc.file, loc.line, loc.column, msg, severity))

    def rule(self, rule: Rule, msg: str, severity: str = "error") -> None:
        self.at(f"rules:{rule.id}", "rules/", f"rule {rule.id}: {msg}", severity)


def _cross_check(kb: KnowledgeBase, rules: list[Rule]) -> list[KnowledgeBaseProblem]:
    """What no single file's schema can see: names that must exist elsewhere, chains that
    must end, scopes that must agree and strata that must come in order."""
    out = _Problems(kb)
    strata = kb.manifest.strata
    order = {s: i for i, s in enumerate(strata)}
    if len(order) != len(strata):
        out.append(KnowledgeBaseProblem("manifest.yaml", None, None, "strata repeat a name"))
    _catalog_checks(kb, out)
    # which stratum produces each derived name
    producers: dict[str, set[int]] = {}
    for r in rules:
        if r.stratum not in order:
            out.rule(r, f"unknown stratum '{r.stratum}' (manifest lists {strata})")
            continue
        for name in derived_names(r):
            producers.setdefault(name, set()).add(order[r.stratum])
    for r in rules:
        _scope_checks(kb, r, out)
    rule_ids = {r.id for r in rules}
    for r in rules:
        for pt in _param_tests(r.when):
            if pt.param not in kb.parameters:
                out.rule(r, f"unknown parameter '{pt.param}'")
        if r.stratum in order:
            _condition_checks(kb, r, order[r.stratum], producers, rule_ids, out)
            _action_checks(kb, r, out)
    return out


def _catalog_checks(kb: KnowledgeBase, out: _Problems) -> None:
    """Facts' parameters exist; exercises' easier/harder chains name exercises and end."""
    for fd in kb.facts.values():
        if isinstance(fd.max_age_days, Param) and fd.max_age_days.param not in kb.parameters:
            out.at(f"facts:{fd.name}", "facts.yaml",
                   f"fact '{fd.name}': max-age-days names unknown parameter "
                   f"'{fd.max_age_days.param}'")
    for rel in ("easier", "harder"):
        # a progression or regression chain must end: the follow-up walks it
        for ex in kb.exercises.values():
            seen, cur = [ex.id], getattr(ex, rel)
            while cur is not None and cur in kb.exercises and cur not in seen:
                seen.append(cur)
                cur = getattr(kb.exercises[cur], rel)
            if cur is not None and cur == ex.id:
                out.at(f"exercises:{ex.id}", "exercises.yaml",
                       f"exercise '{ex.id}': the {rel} chain loops back to it "
                       f"({' -> '.join([*seen, cur])})")
    for ex in kb.exercises.values():
        for rel, target in (("easier", ex.easier), ("harder", ex.harder)):
            if target is not None and target not in kb.exercises:
                out.at(f"exercises:{ex.id}", "exercises.yaml",
                       f"exercise '{ex.id}': {rel} names unknown exercise '{target}'")


def _known(kb: KnowledgeBase, rule_ids: set[str], name: str) -> bool:
    """Whether a rule may read the fact name: a declared fact, or one the program derives."""
    if name in kb.facts:
        return True
    prefix, _, rest = name.partition(".")
    if prefix == "alert":
        return rest in kb.alerts
    if prefix == "recommend":
        return rest in kb.exercises
    if prefix in _RULE_PREFIXES:
        return rest in rule_ids
    base = kb.facts.get(prefix)
    if base is None:
        return False
    # per-side and asymmetry facts of bilateral tests; the LBP-provoked flag of a test
    if base.bilateral and rest in ("left", "right", "asymmetry"):
        return True
    return rest == "lbp-provoked" and prefix.startswith(("fms-", "pattern-"))


def _fact_scope(kb: KnowledgeBase, name: str) -> str:
    d = kb.facts.get(name)
    return d.scope if d is not None else "patient"


def _scope_checks(kb: KnowledgeBase, r: Rule, out: _Problems) -> None:
    """A per-exercise rule reads inputs and responses and derives findings and adjustments;
    a patient-level rule reads no response fact and adjusts nothing."""
    per_exercise = r.scope == "exercise-response"
    for test, _neg in condition_facts(r.when):
        fs = _fact_scope(kb, test.fact)
        d = kb.facts.get(test.fact)
        if not per_exercise and fs == "exercise-response":
            out.rule(r, f"reads '{test.fact}', a per-exercise response fact; give the rule "
                     "scope: exercise-response")
        elif per_exercise and fs == "patient" and (d is None or d.derived):
            out.rule(r, f"a per-exercise rule reads '{test.fact}', a patient-level finding; "
                     "it may read the patient's input facts and response facts only")
    for a in r.then:
        kind = a.kind()
        if per_exercise and kind not in ("finding", "classification", "adjust"):
            out.rule(r, "a per-exercise rule (scope exercise-response) may only derive "
                     f"findings and adjust; not {kind}")
        if not per_exercise and kind == "adjust":
            out.rule(r, "adjust is for per-exercise rules; give the rule scope: "
                     "exercise-response")
        for fa in (a.finding, a.classification):
            if fa is not None and fa.name in kb.facts and _fact_scope(kb, fa.name) != r.scope:
                out.rule(r, f"derives '{fa.name}' of scope {_fact_scope(kb, fa.name)} from a "
                         f"rule of scope {r.scope}")


def _condition_checks(
    kb: KnowledgeBase, r: Rule, mine: int, producers: dict[str, set[int]],
    rule_ids: set[str], out: _Problems,
) -> None:
    """Each fact test names a known fact, parameter and code, and reads what its own or an
    earlier stratum derives and no later one does (an absence only once nothing in its own
    or a later stratum can derive it)."""
    for test, negated in condition_facts(r.when):
        if not _known(kb, rule_ids, test.fact):
            out.rule(r, f"unknown fact '{test.fact}'")
            continue
        op, operand = test.operator()
        defn = kb.facts.get(test.fact)
        if isinstance(operand, Param):
            if operand.param not in kb.parameters:
                out.rule(r, f"unknown parameter '{operand.param}'")
        elif defn is not None and defn.type == "code" and op in _VALUE_OPS:
            values = operand if isinstance(operand, list) else [operand]
            bad = [v for v in values if v not in (defn.codes or [])]
            if bad:
                out.rule(r, f"'{test.fact}' has no code {bad}; allowed: {defn.codes}")
        elif defn is not None and defn.type in _TYPED_OPERANDS and op in _VALUE_OPS:
            # durable and the reference read a value of another type differently (durable:
            # true equals 1): refuse it here, as an input value of another type is refused
            # (found by review of issue 15)
            values = operand if isinstance(operand, list) else [operand]
            kind = VALUE_KINDS[defn.type]
            bad = [v for v in values if not of_kind(v, kind)]
            if bad:
                out.rule(r, f"'{test.fact}' is {kind}; it is never {bad}")
        if test.fact in producers:
            if tests_absence(test, negated) and max(producers[test.fact]) >= mine:
                out.rule(r, f"tests that '{test.fact}' is absent, but it is derived in the "
                         "same or a later stratum; move this rule to a later stratum")
            elif min(producers[test.fact]) > mine:
                out.rule(r, f"reads '{test.fact}', which is only derived later")
            elif max(producers[test.fact]) > mine:
                # the reference fires this rule once, at its stratum; durable would fire it
                # again when the later stratum's fact arrives: refuse the ambiguity
                out.rule(r, f"reads '{test.fact}', which a later stratum derives too; move "
                         "this rule after every stratum that derives it")
        elif defn is not None and defn.derived:
            out.rule(r, f"reads '{test.fact}', which no rule produces (unreachable)",
                     "warning")


def _action_checks(kb: KnowledgeBase, r: Rule, out: _Problems) -> None:
    """Each action names a known alert, exercise and fact, and a declared code."""
    for a in r.then:
        if a.alert and a.alert.code not in kb.alerts:
            out.rule(r, f"unknown alert code '{a.alert.code}'")
        if a.recommend and a.recommend.exercise not in kb.exercises:
            out.rule(r, f"unknown exercise '{a.recommend.exercise}'")
        for fa in (a.finding, a.classification):
            if fa is None:
                continue
            d = kb.facts.get(fa.name)
            if d is None or not d.derived:
                out.rule(r, f"derives '{fa.name}', which facts.yaml does not declare as a "
                         "derived fact")
            elif d.type == "code" and fa.value not in (d.codes or []):
                out.rule(r, f"'{fa.name}' has no code '{fa.value}'")
        if a.data_gap:
            for f in a.data_gap.facts:
                if f not in kb.facts:
                    out.rule(r, f"data-gap names unknown fact '{f}'")
