"""The checks ``kb validate`` adds on top of loading: what loads but cannot be right.

Loading (``load_knowledge_base``) already refuses what breaks the format: bad YAML, unknown
fields, unknown facts, codes, exercises and alert codes, duplicate ids, stratification
errors, rules without evidence. This module adds, each pinned to file:line:column with a
plain sentence:

- rules that can never fire: a test on a derived fact that no rule which can itself fire
  produces (with that value), a test no value in the fact's range can pass, an input fact
  that no input carries (error for the fact, warning for the rule);
- a recommendation and a veto of the same exercise whose conditions can hold together
  (warning, naming both rules and a witness patient checked by evaluating it; authors
  acknowledge an intended override with ``overrides: [RULE-ID]`` on the vetoing rule);
- rules that no scenario ``covers`` (warning), and scenarios that name rules, facts,
  exercises or alert codes the knowledge base does not have (error: such an expectation
  would pass without testing anything);
- evidence that has no identifier (warning, so ``--strict`` fails): an evidence ``id``
  that names no source (``GUIDELINE:TBD``, ``GUIDELINE:unknown``, ...), since a reviewer
  must be able to find every source a rule names; and evidence whose citation says
  "identifier unverified" but is not tagged M (an unverified identifier is unverified
  evidence; knowledge brief revision v2, evidence hygiene).

``plain_problems`` rewrites the loader's problems into the words an informaticist uses and
points "unknown ..." problems at the exact line of the misspelt name, with near matches.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from cds._compiler import CompiledKnowledgeBase, CompiledRule
from cds._compiler import Literal as Lit
from cds._errors import KnowledgeBaseError, KnowledgeBaseProblem, MovementCDSError
from cds._facts import Fact
from cds._kb_schema import (
    AllOf,
    AnyOf,
    AtLeast,
    Condition,
    FactDefinition,
    FactTest,
    NoneOf,
    ParamTest,
    Rule,
)
from cds._knowledge_base import KnowledgeBase, Located, _position, _read
from cds._reference import evaluate_reference, literal_holds

__all__ = ["COMPUTED_INPUTS", "lint_knowledge_base", "plain_problems"]

# Inputs that carry no code of their own: demographics the FHIR reader takes from the Patient
# resource, and totals computed from recorded items before the rules run (cds/_scores.py).
COMPUTED_INPUTS = frozenset({
    "age", "age-oldest-possible", "sex", "fms-total", "startback-total", "startback-psychosocial",
    "followup-adherence", "followup-peripheralization",  # from the follow-up responses
    # the red-flag answer states the FHIR reader sets (input contract v2)
    "red-flag-discordant", "red-flag-unreadable", "red-flag-unreadable-holding",
})
# GUIDELINE: names that identify nothing (compared lower case, '-' and '_' dropped)
_PLACEHOLDER_NAMES = frozenset({
    "none", "unknown", "tbd", "tba", "todo", "na", "missing", "placeholder", "unverified",
    "notknown", "noidentifier", "noid", "nosource", "source", "reference", "ref", "citation",
    "guideline", "x", "xx", "xxx",
})
_MAX_EXPANSIONS = 256  # input-level cases per rule when looking for a witness
_MAX_WITNESS_TRIES = 400


# --- where things are in the YAML -------------------------------------------------------------


@dataclass
class _Sources:
    """Raw YAML documents of a knowledge base, to point at the exact node of a problem."""

    root: Path
    docs: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (file, index)

    @staticmethod
    def read(root: Path) -> _Sources:
        src = _Sources(root)
        sink: list[KnowledgeBaseProblem] = []
        for path in sorted((root / "rules").glob("*.yaml")) if (root / "rules").is_dir() else []:
            rel = str(path.relative_to(root))
            doc = _read(path, root, sink)
            src.docs[rel] = doc
            seq = doc.get("rules") if isinstance(doc, dict) else None
            for i, node in enumerate(seq if isinstance(seq, list) else []):
                if isinstance(node, dict) and isinstance(node.get("id"), str):
                    src.rules.setdefault(str(node["id"]), (rel, i))
        return src

    def rule_node(self, rule_id: str) -> Any:
        if rule_id not in self.rules:
            return None
        rel, i = self.rules[rule_id]
        return self.docs[rel]["rules"][i]

    def at(self, rule_id: str, loc: tuple[Any, ...] = ()) -> Located:
        if rule_id not in self.rules:
            return Located("rules/", None, None)
        rel, i = self.rules[rule_id]
        line, col = _position(self.docs[rel], ("rules", i, *loc))
        return Located(rel, line, col)

    def find(self, rule_id: str, needle: str, keys: tuple[str, ...] = ()) -> Located:
        """The first place (document order) in a rule whose value is ``needle`` (under one of
        ``keys`` if given), or the rule itself."""
        node = self.rule_node(rule_id)
        for loc in _search(node, needle, keys, ()):
            return self.at(rule_id, loc)
        return self.at(rule_id)


def _search(node: Any, needle: str, keys: tuple[str, ...], loc: tuple[Any, ...]
            ) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if (not keys or k in keys) and (v == needle or (isinstance(v, list) and needle in v)):
                yield (*loc, k)
            yield from _search(v, needle, keys, (*loc, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _search(v, needle, keys, (*loc, i))


def _fact_test_paths(cond: Condition, loc: tuple[Any, ...]) -> Iterator[tuple[FactTest,
                                                                               tuple[Any, ...]]]:
    """Every fact test in a condition with its YAML path, in document order."""
    if isinstance(cond, FactTest):
        yield cond, loc
    elif isinstance(cond, AllOf):
        for i, c in enumerate(cond.all):
            yield from _fact_test_paths(c, (*loc, "all", i))
    elif isinstance(cond, AnyOf):
        for i, c in enumerate(cond.any):
            yield from _fact_test_paths(c, (*loc, "any", i))
    elif isinstance(cond, NoneOf):
        yield from _fact_test_paths(cond.not_, (*loc, "not"))
    elif isinstance(cond, AtLeast):
        for i, c in enumerate(cond.of):
            yield from _fact_test_paths(c, (*loc, "of", i))


def _has_param_test(cond: Condition) -> bool:
    if isinstance(cond, ParamTest):
        return True
    if isinstance(cond, AllOf | AnyOf):
        return any(_has_param_test(c) for c in (cond.all if isinstance(cond, AllOf)
                                                else cond.any))
    if isinstance(cond, AtLeast):
        return any(_has_param_test(c) for c in cond.of)
    if isinstance(cond, NoneOf):
        return _has_param_test(cond.not_)
    return False


# --- the values a fact can take ---------------------------------------------------------------


def _base(kb: KnowledgeBase, name: str) -> tuple[FactDefinition | None, str]:
    if name in kb.facts:
        return kb.facts[name], ""
    prefix, _, rest = name.partition(".")
    return kb.facts.get(prefix), rest


def _candidates(kb: KnowledgeBase, name: str, lits: list[Lit]) -> list[Any]:
    """Values worth trying for an input fact: its codes, booleans, or numbers at and around
    every bound the tests and the catalog name."""
    d, part = _base(kb, name)
    if part == "lbp-provoked":
        return [True, False]
    if d is None:
        return []
    if d.type == "boolean":
        return [True, False]
    if d.type == "code":
        return list(d.codes or [])
    lo, hi = d.min, d.max
    if part == "asymmetry":
        lo, hi = 0.0, (hi - lo if hi is not None and lo is not None else None)
    points: set[float] = set()
    for b in (lo, hi):
        if b is not None:
            points.add(float(b))
    for lit in lits:
        vals = lit.value if isinstance(lit.value, list) else [lit.value]
        for v in vals:
            if isinstance(v, int | float) and not isinstance(v, bool):
                points.update({float(v), float(v) - 1, float(v) + 1, float(v) - 0.5,
                               float(v) + 0.5})
    if not points:
        points = {0.0, 1.0}
    out: list[Any] = []
    for p in sorted(points):
        if (lo is not None and p < lo) or (hi is not None and p > hi):
            continue
        if d.type == "integer":
            if not p.is_integer():
                continue
            out.append(int(p))
        else:
            out.append(p)
    return out


def _choose(kb: KnowledgeBase, name: str, lits: list[Lit], prefer: Any = None
            ) -> tuple[bool, Any]:
    """(satisfiable, value) for an input fact under ``lits``; value None means "leave it
    missing". ``prefer`` is tried first (a side takes its test's final score if it can)."""
    if all(lit.op == "missing" for lit in lits):
        return True, None
    if any(lit.op == "missing" for lit in lits):
        return False, None
    first = [] if prefer is None else [prefer]
    for v in first + _candidates(kb, name, lits):
        if all(literal_holds(lit, {name: v}) for lit in lits):
            return True, v
    return False, None


# --- reachability -----------------------------------------------------------------------------


@dataclass
class _Reach:
    """Which derived facts (with which values) some rule that can fire produces."""

    kb: KnowledgeBase
    compiled: CompiledKnowledgeBase
    producible: dict[str, set[Any]] = field(default_factory=dict)
    can_fire: set[str] = field(default_factory=set)

    def input_ok(self, name: str) -> bool:
        """An input fact some input can carry (an uncoded one is reported once, for the
        fact, not again for every rule that reads it)."""
        d, _part = _base(self.kb, name)
        return d is not None and not d.derived

    def derived_name(self, name: str) -> bool:
        d, _ = _base(self.kb, name)
        return (d is not None and d.derived) or name.partition(".")[0] in (
            "alert", "recommend", "veto", "gap", "note", "limit") or d is None

    def literal_reason(self, lit: Lit, group: list[Lit]) -> str | None:
        """Why this test can never hold (None: it can)."""
        if lit.op == "missing":
            return None
        if self.derived_name(lit.fact):
            values = self.producible.get(lit.fact)
            if not values:
                return f"no rule that can fire derives '{lit.fact}'"
            if not any(all(literal_holds(x, {lit.fact: v}) for x in group if x.op != "missing")
                       for v in values):
                shown = ", ".join(sorted(repr(v) for v in values))
                return (f"'{_describe(lit)}' can never hold: rules derive '{lit.fact}' only "
                        f"as {shown}")
            return None
        if not self.input_ok(lit.fact):
            return f"no input carries '{lit.fact}' (it has no coding)"
        ok, _ = _choose(self.kb, lit.fact, [x for x in group if x.op != "missing"])
        if not ok:
            d, _part = _base(self.kb, lit.fact)
            rng = "" if d is None else (
                f" ({lit.fact} is one of {d.codes})" if d.codes else
                f" ({lit.fact} ranges {_fmt(d.min)} to {_fmt(d.max)})")
            return f"'{' and '.join(_describe(x) for x in group)}' can never hold{rng}"
        return None

    def term_reason(self, term: tuple[Lit, ...]) -> tuple[Lit, str] | None:
        groups: dict[str, list[Lit]] = {}
        for lit in term:
            groups.setdefault(lit.fact, []).append(lit)
        for lit in term:
            why = self.literal_reason(lit, groups[lit.fact])
            if why is not None:
                return lit, why
        return None

    def run(self) -> None:
        changed = True
        while changed:
            changed = False
            for r in self.compiled.rules:
                if r.rule_id in self.can_fire:
                    continue
                if any(self.term_reason(t) is None for t in r.terms):
                    self.can_fire.add(r.rule_id)
                    changed = True
                    for name, value in r.derives:
                        self.producible.setdefault(name, set()).add(value)


def _fmt(v: float | None) -> str:
    if v is None:
        return "?"
    return str(int(v)) if float(v).is_integer() else str(v)


def _describe(lit: Lit) -> str:
    if lit.op in ("present", "missing"):
        return f"{lit.fact} is {'recorded' if lit.op == 'present' else 'missing'}"
    v = lit.value
    shown = "[" + ", ".join(map(_show, v)) + "]" if isinstance(v, list) else _show(v)
    return f"{lit.fact} {lit.op} {shown}"


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# --- recommend + veto overlap -----------------------------------------------------------------


def _expand(reach: _Reach, term: tuple[Lit, ...], depth: int = 0) -> list[tuple[Lit, ...]]:
    """A term over derived facts as terms over inputs: each positive test on a derived fact is
    replaced by a term of a rule that derives a value passing it (tests of absence on
    derived facts are left to the final evaluation)."""
    out: list[tuple[Lit, ...]] = [()]
    for lit in term:
        if not reach.derived_name(lit.fact):
            out = [(*t, lit) for t in out]
            continue
        if lit.op == "missing":
            continue
        if depth > 6:
            return []
        options: list[tuple[Lit, ...]] = []
        for r in reach.compiled.rules:
            if r.rule_id not in reach.can_fire:
                continue
            for name, value in r.derives:
                if name == lit.fact and literal_holds(lit, {name: value}):
                    for t in r.terms:
                        options.extend(_expand(reach, t, depth + 1)[:16])
        out = [a + b for a, b in product(out, options)][:_MAX_EXPANSIONS]
        if not out:
            return []
    return out


def _witness(reach: _Reach, kb: KnowledgeBase, a: str, b: str) -> list[Fact] | None:
    """Input facts for which rules ``a`` and ``b`` both fire (checked by evaluating them)."""
    compiled = reach.compiled
    by_id = {r.rule_id: r for r in compiled.rules}
    ra, rb = by_id[a], by_id[b]
    xa = [x for t in ra.terms for x in _expand(reach, t)][:_MAX_EXPANSIONS]
    xb = [x for t in rb.terms for x in _expand(reach, t)][:_MAX_EXPANSIONS]
    tries = 0
    for ta, tb in product(xa, xb):
        groups: dict[str, list[Lit]] = {}
        for lit in ta + tb:
            groups.setdefault(lit.fact, []).append(lit)
        facts: list[Fact] = []
        chosen: dict[str, Any] = {}
        ok = True
        # whole tests before their sides, so a side can take the test's score
        for name, lits in sorted(groups.items(), key=lambda g: ("." in g[0], g[0])):
            sat, value = _choose(kb, name, lits, chosen.get(name.partition(".")[0]))
            chosen[name] = value
            if not sat:
                ok = False
                break
            if value is not None:
                facts.append(Fact(name, value))
        if not ok:
            continue
        tries += 1
        if tries > _MAX_WITNESS_TRIES:
            return None
        fired = {d.rule_id for d in evaluate_reference(compiled, facts).firings}
        if a in fired and b in fired:
            return facts
    return None


# --- the lint ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioRef:
    """What the lint needs of one scenario: where it is and what it names."""

    id: str
    file: str
    line: int | None
    column: int | None
    covers: tuple[str, ...]
    names: tuple[tuple[str, str, int | None, int | None], ...]  # (kind, name, line, col)


def scenario_refs(root: Path) -> list[ScenarioRef]:
    """Every scenario's covers and the rules, facts, exercises and alert codes it names, with
    positions (read raw: a scenario that does not load is reported by the scenario loader)."""
    out: list[ScenarioRef] = []
    sink: list[KnowledgeBaseProblem] = []
    kinds = {
        "alerts": "alert", "alerts-include": "alert", "alerts-exclude": "alert",
        "exercises": "exercise", "exercises-include": "exercise",
        "exercises-exclude": "exercise", "avoid-include": "exercise",
        "fires": "rule", "does-not-fire": "rule", "missing": "fact", "findings": "fact",
    }
    sdir = root / "scenarios"
    for path in sorted(sdir.glob("*.yaml")) if sdir.is_dir() else []:
        rel = str(path.relative_to(root))
        doc = _read(path, root, sink)
        seq = doc.get("scenarios") if isinstance(doc, dict) else None
        for i, node in enumerate(seq if isinstance(seq, list) else []):
            if not isinstance(node, dict) or not isinstance(node.get("id"), str):
                continue
            line, col = _position(doc, ("scenarios", i))
            names: list[tuple[str, str, int | None, int | None]] = []
            covers = node.get("covers") or []
            for j, rid in enumerate(covers if isinstance(covers, list) else []):
                ln, cl = _position(doc, ("scenarios", i, "covers", j))
                names.append(("covers", str(rid), ln, cl))
            facts = node.get("facts")
            if isinstance(facts, dict):
                for k in facts:
                    ln, cl = _position(doc, ("scenarios", i, "facts", k))
                    names.append(("input", str(k), ln, cl))
            expect = node.get("expect")
            for key, kind in kinds.items():
                v = expect.get(key) if isinstance(expect, dict) else None
                items = list(v) if isinstance(v, list | dict) else []
                for j, name in enumerate(items):
                    ln, cl = _position(doc, ("scenarios", i, "expect", key,
                                             name if isinstance(v, dict) else j))
                    names.append((kind, str(name), ln, cl))
            out.append(ScenarioRef(str(node["id"]), rel, line, col,
                                   tuple(str(c) for c in covers if isinstance(covers, list)),
                                   tuple(names)))
    return out


def lint_knowledge_base(
    kb: KnowledgeBase, compiled: CompiledKnowledgeBase, *, scenarios: bool = True,
    facts: bool = True,
) -> list[KnowledgeBaseProblem]:
    """The checks listed in the module docstring, errors and warnings, in file order, for the
    rules in ``compiled`` (one scope). ``scenarios`` and ``facts`` switch off the checks that
    are about the whole knowledge base (run them once when linting several scopes)."""
    src = _Sources.read(kb.root)
    reach = _Reach(kb, compiled)
    reach.run()
    # rules of this compiled scope (follow-up rules are compiled and checked separately)
    crules = {r.rule_id: r for r in compiled.rules}
    rules = [r for r in kb.rules if r.id in crules]
    out: list[KnowledgeBaseProblem] = []
    if facts:
        out.extend(_uncarried_inputs(kb, rules))
    out.extend(_never_firing(kb, rules, crules, reach, src))
    out.extend(_veto_overlaps(kb, rules, reach, src))
    for rule in rules:
        out.extend(_evidence_checks(rule.id, rule.evidence, src))
    if scenarios:
        out.extend(_scenario_checks(kb, compiled, src))
    return sorted(out, key=lambda p: (p.file, p.line or 0, p.column or 0, p.message))


def _warning(loc: Located, msg: str) -> KnowledgeBaseProblem:
    return KnowledgeBaseProblem(loc.file, loc.line, loc.column, msg, "warning")


def _uncarried_inputs(kb: KnowledgeBase, rules: list[Rule]) -> Iterator[KnowledgeBaseProblem]:
    """Input facts no input can carry (no coding, not computed) that a rule reads."""
    for d in kb.facts.values():
        if getattr(d, "scope", "patient") != "patient":
            continue
        if not d.derived and d.coding is None and d.name not in COMPUTED_INPUTS:
            readers = [r.id for r in rules
                       if any(t.fact.partition(".")[0] == d.name
                              for t, _ in _fact_test_paths(r.when, ("when",)))]
            if readers:
                loc = kb.locations.get(f"facts:{d.name}", Located("facts.yaml", None, None))
                yield _warning(
                    loc, f"fact '{d.name}' is an input but has no coding, so no input can "
                    f"carry it; rules {', '.join(readers)} read it and can never see it (add "
                    "coding: {system, code}; declare it derived: true if a rule derives it; "
                    "or, if the program computes it, list it in cds/_kb_lint.py "
                    "COMPUTED_INPUTS)")


def _never_firing(
    kb: KnowledgeBase, rules: list[Rule], crules: dict[str, CompiledRule], reach: _Reach,
    src: _Sources,
) -> Iterator[KnowledgeBaseProblem]:
    """Rules that can never fire, at the fact test that stops them (the loader has already
    said so for a rule that reads an unreachable derived fact)."""
    already = {w.message.split(":")[0] for w in kb.warnings if "(unreachable)" in w.message}
    for rule in rules:
        if rule.id in reach.can_fire:
            continue
        cr = crules[rule.id]
        if not cr.terms:
            if _has_param_test(rule.when):
                continue  # switched off by configuration (a param test), on purpose
            yield _warning(
                src.at(rule.id, ("when",)),
                f"rule {rule.id} can never fire: its condition contradicts itself (for example "
                "a fact that must be both missing and recorded)")
            continue
        if f"rule {rule.id}" in already:
            continue
        found = reach.term_reason(cr.terms[0])
        if found is None:  # pragma: no cover - run() would have marked it
            continue
        lit, why = found
        paths = [p for t, p in _fact_test_paths(rule.when, ("when",)) if t.fact == lit.fact]
        loc = src.at(rule.id, (*paths[0], "fact")) if paths else src.at(rule.id)
        more = " (and in every other case of its condition)" if len(cr.terms) > 1 else ""
        yield _warning(loc, f"rule {rule.id} can never fire: {why}{more}")


def _veto_overlaps(
    kb: KnowledgeBase, rules: list[Rule], reach: _Reach, src: _Sources
) -> Iterator[KnowledgeBaseProblem]:
    """A recommendation and a veto of the same exercise that can hold together (with a
    witness patient), and ``overrides`` entries that acknowledge no such pair."""
    recs: dict[str, list[str]] = {}
    for r in rules:
        for a in r.then:
            if a.recommend is not None:
                recs.setdefault(a.recommend.exercise, []).append(r.id)
    for v in rules:
        acknowledged = set(getattr(v, "overrides", None) or [])
        pairs: dict[str, list[str]] = {}
        for a in v.then:
            if a.veto is None:
                continue
            for ex in sorted(kb.exercises.values(), key=lambda e: e.id):
                if a.veto.covers(ex):
                    for rid in recs.get(ex.id, []):
                        if rid != v.id:
                            pairs.setdefault(rid, []).append(ex.id)
        for rid in sorted(acknowledged):
            if rid not in pairs:
                yield _warning(
                    src.find(v.id, rid, ("overrides",)),
                    f"rule {v.id}: overrides names '{rid}', which recommends nothing this "
                    "rule vetoes (remove it from overrides)")
        for rid, exercises in sorted(pairs.items()):
            if rid in acknowledged or v.id not in reach.can_fire or rid not in reach.can_fire:
                continue
            witness = _witness(reach, kb, rid, v.id)
            if witness is None:
                continue
            shown = ", ".join(f"{f.name} = {_show(f.value)}" for f in witness) or "(no facts)"
            where = kb.locations.get(f"rules:{rid}")
            at = f" ({where.file}:{where.line})" if where else ""
            yield _warning(
                src.at(v.id),
                f"rule {rid}{at} recommends {', '.join(dict.fromkeys(exercises))} and rule "
                f"{v.id} vetoes it; both fire for a patient with {shown}. The veto wins (the "
                f"exercise is listed as 'do not perform'). If that is intended, add "
                f"'overrides: [{rid}]' to {v.id}")


def has_identifier(evidence_id: str) -> bool:
    """Whether an evidence id identifies a source a reviewer can find: a PMID, PMCID, DOI,
    ISBN or URL, or a GUIDELINE: name that names a document (not a placeholder)."""
    scheme, _, value = evidence_id.partition(":")
    if scheme != "GUIDELINE":
        return bool(value.strip())
    name = re.sub(r"[-_.\s]", "", value).lower()
    return len(name) >= 3 and name not in _PLACEHOLDER_NAMES and not set(name) <= {"x", "?"}


def _evidence_checks(rule_id: str, evidence: list[Any], src: _Sources
                     ) -> list[KnowledgeBaseProblem]:
    out: list[KnowledgeBaseProblem] = []
    for i, ev in enumerate(evidence):
        loc = src.at(rule_id, ("evidence", i, "id"))
        if not has_identifier(ev.id):
            out.append(KnowledgeBaseProblem(
                loc.file, loc.line, loc.column,
                f"rule {rule_id}: evidence '{ev.id}' has no identifier: name the source by "
                "PMID:, PMCID:PMC, DOI:10., ISBN:, URL: or GUIDELINE:<document name>, so that "
                "a reviewer can find it (an unverifiable one is tagged M and its citation says "
                "'identifier unverified')", "warning"))
        if "identifier unverified" in ev.citation.lower() and ev.tag.value != "M":
            out.append(KnowledgeBaseProblem(
                loc.file, loc.line, loc.column,
                f"rule {rule_id}: evidence '{ev.id}' says 'identifier unverified' but is tagged "
                f"{ev.tag.value}: an unverified identifier is tagged M", "warning"))
    return out


def _scenario_checks(kb: KnowledgeBase, compiled: CompiledKnowledgeBase, src: _Sources
                     ) -> list[KnowledgeBaseProblem]:
    out: list[KnowledgeBaseProblem] = []
    refs = scenario_refs(kb.root)
    rule_ids = {r.id for r in kb.rules}
    covered: set[str] = set()
    facts_known = set(compiled.fact_names)
    universe = {
        "covers": rule_ids, "rule": rule_ids, "exercise": set(kb.exercises),
        "alert": set(kb.alerts), "fact": facts_known | set(kb.facts),
    }
    for sc in refs:
        covered.update(sc.covers)
        for kind, name, line, col in sc.names:
            if kind == "input":
                base = name.partition(".")[0]
                if name in kb.facts or (base in kb.facts and "." in name):
                    continue
                known = sorted(kb.facts)
                what = "fact"
            else:
                if name in universe[kind] or (kind == "fact" and _sub_name(kb, name)):
                    continue
                known = sorted(universe[kind])
                what = {"covers": "rule", "rule": "rule"}.get(kind, kind)
            near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            verb = "covers" if kind == "covers" else ("gives" if kind == "input" else "expects")
            out.append(KnowledgeBaseProblem(
                sc.file, line, col,
                f"scenario '{sc.id}' {verb} unknown {what} '{name}'{hint} (an expectation on "
                "a name the knowledge base does not have tests nothing)", "error"))
    out.extend(_trajectory_checks(kb, rule_ids, covered))
    for rule in kb.rules:
        if rule.id not in covered:
            loc = src.at(rule.id)
            out.append(KnowledgeBaseProblem(
                loc.file, loc.line, loc.column,
                f"rule {rule.id} has no scenario test: no scenario or trajectory lists it "
                "under 'covers'", "warning"))
    return out


def _trajectory_checks(kb: KnowledgeBase, rule_ids: set[str], covered: set[str]
                       ) -> list[KnowledgeBaseProblem]:
    """Multi-visit trajectories count as scenario tests of the rules they cover (adds to
    ``covered``); one that does not load, or covers an unknown rule, is an error."""
    from cds._trajectories import load_trajectories

    try:
        trajectories = load_trajectories(kb.root)
    except KnowledgeBaseError as e:
        return list(e.problems)
    out: list[KnowledgeBaseProblem] = []
    for tr, rel, line in trajectories:
        covered.update(tr.covers)
        for rid in tr.covers:
            if rid not in rule_ids:
                near = difflib.get_close_matches(rid, sorted(rule_ids), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                out.append(KnowledgeBaseProblem(
                    rel, line, None,
                    f"trajectory '{tr.id}' covers unknown rule '{rid}'{hint}", "error"))
    return out


def _sub_name(kb: KnowledgeBase, name: str) -> bool:
    base, _, part = name.partition(".")
    return base in kb.facts and part in ("left", "right", "asymmetry", "lbp-provoked")


# --- the loader's problems in plain words -----------------------------------------------------

_UNKNOWN = re.compile(
    r"^rule (?P<rule>\S+): unknown (?P<what>fact|exercise|alert code|parameter) '(?P<name>[^']+)'$"
)
_NO_CODE = re.compile(r"^rule (?P<rule>\S+): '(?P<fact>[^']+)' has no code \[(?P<bad>[^\]]*)\]")


def _catalog_names(root: Path, key: str, attr: str) -> list[str]:
    names: list[str] = []
    sink: list[KnowledgeBaseProblem] = []
    paths = [root / f"{key}.yaml"] + (sorted((root / key).glob("*.yaml"))
                                      if (root / key).is_dir() else [])
    for path in paths:
        if not path.is_file():
            continue
        doc = _read(path, root, sink)
        seq = doc.get(key) if isinstance(doc, dict) else None
        for node in seq if isinstance(seq, list) else []:
            if isinstance(node, dict) and isinstance(node.get(attr), str):
                names.append(str(node[attr]))
    return names


def plain_problems(root: Path, problems: list[KnowledgeBaseProblem]
                   ) -> list[KnowledgeBaseProblem]:
    """The loader's problems, reworded where pydantic's words are not an author's, and
    "unknown X" pointed at the misspelt name itself, with near matches."""
    try:
        src = _Sources.read(root)
    except MovementCDSError:  # pragma: no cover - _read never raises
        return problems
    catalogs = {
        "fact": _catalog_names(root, "facts", "name"),
        "exercise": _catalog_names(root, "exercises", "id"),
        "alert code": _catalog_names(root, "alerts", "code"),
    }
    keys = {"fact": ("fact", "facts"), "exercise": ("exercise",), "alert code": ("code",),
            "parameter": ("param",)}
    out: list[KnowledgeBaseProblem] = []
    for p in problems:
        msg = p.message
        m = _UNKNOWN.match(msg)
        if m and m["rule"] in src.rules:
            loc = src.find(m["rule"], m["name"], keys[m["what"]])
            near = difflib.get_close_matches(m["name"], catalogs.get(m["what"], []), n=3,
                                             cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            out.append(KnowledgeBaseProblem(loc.file, loc.line, loc.column, msg + hint,
                                            p.severity))
            continue
        m = _NO_CODE.match(msg)
        if m and m["rule"] in src.rules:
            bad = m["bad"].split(",")[0].strip().strip("'\"")
            loc = src.find(m["rule"], bad)
            out.append(KnowledgeBaseProblem(loc.file, loc.line, loc.column, msg, p.severity))
            continue
        out.append(_reword(root, p))
    return out


def _reword(root: Path, p: KnowledgeBaseProblem) -> KnowledgeBaseProblem:
    msg = p.message
    path, sep, detail = msg.partition(": ")
    if not sep:
        return p
    rule = _rule_at(root, p) if p.file.startswith("rules/") else None
    who = f"rule {rule}" if rule else "this item"
    if path == "evidence" and ("Field required" in detail or "at least 1 item" in detail):
        msg = (f"{who} has no evidence: every rule names at least one source under "
               "'evidence:' (id such as PMID:..., DOI:..., GUIDELINE:...; citation; tag R, S "
               "or M; strength)")
    elif detail == "Field required":
        msg = f"{who}: '{path}' is required but missing"
    elif detail == "Extra inputs are not permitted":
        msg = f"{who}: '{path.rsplit('.', 1)[-1]}' is not a field here (check the spelling)"
    elif detail.startswith("String should match pattern") and path.endswith("id") and rule:
        msg = f"{who}: {msg}"
    return KnowledgeBaseProblem(p.file, p.line, p.column, msg, p.severity)


def _rule_at(root: Path, p: KnowledgeBaseProblem) -> str | None:
    """The id of the rule whose YAML spans line ``p.line`` of ``p.file``."""
    if p.line is None:
        return None
    sink: list[KnowledgeBaseProblem] = []
    doc = _read(root / p.file, root, sink)
    seq = doc.get("rules") if isinstance(doc, dict) else None
    best = None
    for i, node in enumerate(seq if isinstance(seq, list) else []):
        line, _ = _position(doc, ("rules", i))
        if line is not None and line <= p.line and isinstance(node, dict):
            best = node.get("id")
    return str(best) if isinstance(best, str) else None
