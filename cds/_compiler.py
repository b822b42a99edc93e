"""Compiling a knowledge base into durable-rules rulesets (and the form the oracle reads).

Conditions become disjunctive normal form: each rule is one or more *terms*, each a
conjunction of *literals* on single facts. ``not`` is pushed down to the leaves with the
three-valued reading the authors are promised: a test on a missing fact is never true, so
``not (pain > 5)`` becomes ``pain <= 5`` and still needs ``pain`` to be present. The only
tests that need a fact to be absent are ``missing`` (and a negated ``present``); they compile
to durable-rules negation, which is gated on a stratum marker (engine safety rule 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations, product
from typing import Any

from cds._errors import KnowledgeBaseError, KnowledgeBaseProblem
from cds._facts import Derivation
from cds._kb_schema import AllOf, AtLeast, Condition, FactTest, NoneOf, Param, ParamTest, Scope
from cds._knowledge_base import KnowledgeBase, derived_names

__all__ = [
    "FOLLOW_UP_SUFFIX",
    "CompiledKnowledgeBase",
    "CompiledRule",
    "Literal",
    "compile_knowledge_base",
]

FOLLOW_UP_SUFFIX = "/follow-up"

_NEGATE = {
    "is": "is-not", "is-not": "is", "lt": "ge", "le": "gt", "gt": "le", "ge": "lt",
    "in": "not-in", "not-in": "in", "present": "missing", "missing": "present",
}
_MAX_TERMS = 128


@dataclass(frozen=True)
class Literal:
    fact: str
    op: str
    value: Any = None

    def describe(self) -> str:
        if self.op in ("present", "missing"):
            return f"{self.fact} {self.op}"
        return f"{self.fact} {self.op} {self.value!r}"


@dataclass(frozen=True)
class CompiledRule:
    rule_id: str
    stratum: int
    priority: int
    terms: tuple[tuple[Literal, ...], ...]
    derives: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class CompiledKnowledgeBase:
    name: str
    strata: tuple[str, ...]
    rules: tuple[CompiledRule, ...]
    fact_names: frozenset[str]

    @cached_property
    def derivations(self) -> tuple[tuple[Derivation, ...], ...]:
        """Per rule, per term: what one firing records (facts read, absences relied on)."""
        return tuple(
            tuple(
                Derivation(
                    rule.rule_id,
                    tuple(sorted({lit.fact for lit in term if lit.op != "missing"})),
                    tuple(sorted({lit.fact for lit in term if lit.op == "missing"})),
                )
                for term in rule.terms
            )
            for rule in self.rules
        )

    @property
    def read_names(self) -> frozenset[str]:
        """Facts some rule reads; no other fact can change a result."""
        return frozenset(lit.fact for r in self.rules for t in r.terms for lit in t)

    @cached_property
    def durable_keys(self) -> dict[str, tuple[str, str]]:
        """The two properties each fact read by a rule is asserted under in durable-rules,
        its group and its own (``{"sid":..,"id":"f:pain-now","g3":1,"f12":7}``).

        durable's alpha network finds the tests for a message by property name: at each
        node, every property of the message is looked up in a table of the node's children
        (hashed by property name, linear probing from one of 32 start slots), so a lookup
        walks about as many entries as the node has children. One shared ``n`` property
        made every fact run the name test of every fact; a property per fact under the
        root made each of a message's properties walk ~130 entries; a group property
        (~sqrt(n) groups) under the root, then the fact's own property under its group,
        keeps both tables short (input facts' assert 150 -> 100 us in an A/B)."""
        names = sorted(self.read_names)
        groups = max(1, math.isqrt(len(names)))
        return {n: (f"g{i % groups}", f"f{i}") for i, n in enumerate(names)}

    @cached_property
    def waits_for(self) -> tuple[tuple[int | None, ...], ...]:
        """Per rule, per term: the stratum marker the term waits for in durable-rules (None:
        no marker; safety rule 4 in docs/architecture.md).

        The reference evaluator runs strata in order. A term fires in durable exactly when
        it fires there, in whatever order the facts arrive, when (a) every fact it reads
        with a value test is derived only in its own or earlier strata, so that fact is
        final by the end of the term's stratum and never arrives later, and (b) nothing
        it derives is read by a rule of an earlier stratum (which could otherwise see the
        fact before its stratum's turn). Such a term's value tests hold at the end of its
        stratum iff they hold at any time (facts are never retracted or changed within
        an evaluation), so it needs no marker at all if it tests no absence, and otherwise
        only the marker after which every fact it needs absent is final: marker 0 (sent
        with the input facts, after them) for a fact no rule derives, else the marker
        after the last stratum that derives one (the loader refuses an absence test on a
        fact derived in the reader's stratum or later). A term with no literal (a parameter
        test that holds) waits for marker 0: durable fires no rule without a pattern. Any
        other term waits for its own stratum's marker, as every term did before. (A value
        test on a fact derived both before and after the reader's stratum is the one case
        where durable and the reference can differ: the reader fires when the later
        producer's fact arrives. The loader refuses it; ``tests/test_engine_markers.py``
        pins the markers such terms get.)"""
        produced_in: dict[str, list[int]] = {}
        read_in: dict[str, list[int]] = {}
        for rule in self.rules:
            for name, _ in rule.derives:
                produced_in.setdefault(name, []).append(rule.stratum)
            for fact in {lit.fact for t in rule.terms for lit in t}:
                read_in.setdefault(fact, []).append(rule.stratum)

        def marker(rule: CompiledRule, term: tuple[Literal, ...]) -> int | None:
            s = rule.stratum
            if (any(lit.op != "missing" and max(produced_in.get(lit.fact, [0])) > s
                    for lit in term)
                    or any(min(read_in.get(n, [s])) < s for n, _ in rule.derives)):
                return s
            final = [max(produced_in[lit.fact]) + 1 if lit.fact in produced_in else 0
                     for lit in term if lit.op == "missing"]
            if not term:  # a term that always holds (a parameter test) needs a pattern
                return 0  # to match in durable: marker 0, sent whatever the facts
            return max(final) if final else None

        return tuple(tuple(marker(r, t) for t in r.terms) for r in self.rules)

    @cached_property
    def markers(self) -> tuple[int, ...]:
        """The stratum markers some term waits for, in order: only these are sent."""
        return tuple(sorted({m for ms in self.waits_for for m in ms if m is not None}))

    def durable_definition(self) -> dict[str, dict[str, Any]]:
        """The durable-rules ruleset definition, without actions (the runner adds them)."""
        out: dict[str, dict[str, Any]] = {}
        keys = self.durable_keys
        always: set[str] = set()  # facts some pattern takes whatever their value
        for ri, rule in enumerate(self.rules):
            for ti, term in enumerate(rule.terms):
                patterns: list[dict[str, Any]] = []
                marker = self.waits_for[ri][ti]
                if marker is not None:
                    patterns.append({"ctl": {"stratum": marker}})
                for pi, (fact, lits) in enumerate(_group(term)):
                    if all(lit.op in ("present", "missing") for lit in lits):
                        always.add(fact)
                    # every pattern on a fact starts with "its group's property exists",
                    # then "its own property exists" (``durable_keys``)
                    exists = _exists(*keys[fact])
                    if lits[0].op == "missing":
                        patterns.append({f"a{pi}$not": exists})
                    else:
                        tests = [t for lit in lits for t in _durable_tests(lit, keys[fact][1])]
                        patterns.append({f"p{pi}": {"$and": exists["$and"] + tests}})
                # pri: lower fires first, stored unsigned; explicit multiples of 10 (rule 8)
                pri = 10 * (rule.stratum * 100 + rule.priority)
                out[f"{ri}:{ti}"] = {"all": patterns, "pri": pri}
        # sinks: every fact is handled whatever its value (markers are sent only when some
        # term waits for them); a sink never completes its join, so it never fires. A fact
        # some term tests for presence or absence alone is always handled: no sink
        for fact, (group, key) in keys.items():
            if fact in always:
                continue
            out[f"sink:{fact}"] = {"all": [{"m": _exists(group, key)},
                                           {"never": {"$ex": {"never-asserted": 1}}}],
                                   "pri": 10 * 10_000}
        return out


def _exists(group: str, key: str) -> dict[str, Any]:
    return {"$and": [{"$ex": {group: 1}}, {"$ex": {key: 1}}]}


def _group(term: tuple[Literal, ...]) -> list[tuple[str, list[Literal]]]:
    groups: dict[str, list[Literal]] = {}
    for lit in term:
        groups.setdefault(lit.fact, []).append(lit)
    return sorted(groups.items())


def _durable_tests(lit: Literal, key: str) -> list[dict[str, Any]]:
    v = lit.value
    match lit.op:
        case "present":
            return []
        case "is":
            return [{key: v}]
        case "is-not":
            return [{"$neq": {key: v}}]
        case "lt":
            return [{"$lt": {key: v}}]
        case "le":
            return [{"$lte": {key: v}}]
        case "gt":
            return [{"$gt": {key: v}}]
        case "ge":
            return [{"$gte": {key: v}}]
        case "in":
            return [{"$or": [{key: x} for x in v]}] if len(v) > 1 else [{key: v[0]}]
        case "not-in":
            return [{"$neq": {key: x}} for x in v]
    raise AssertionError(lit.op)


def _dnf(cond: Condition, neg: bool, resolve: Any) -> list[tuple[Literal, ...]]:
    if isinstance(cond, FactTest):
        op, operand = cond.operator()
        if isinstance(operand, Param):
            operand = resolve(operand.param)
        if neg:
            op = _NEGATE[op]
        if op in ("present", "missing"):
            operand = None
        return [(Literal(cond.fact, op, operand),)]
    if isinstance(cond, NoneOf):
        return _dnf(cond.not_, not neg, resolve)
    if isinstance(cond, AtLeast):
        return _at_least(cond, neg, resolve)
    if isinstance(cond, ParamTest):
        holds = resolve(cond.param) == cond.is_
        return [()] if holds != neg else []
    children = cond.all if isinstance(cond, AllOf) else cond.any
    conjunctive = isinstance(cond, AllOf) != neg
    parts = [_dnf(c, neg, resolve) for c in children]
    if not conjunctive:
        return [t for p in parts for t in p]
    out = []
    for combo in product(*parts):
        out.append(tuple(lit for term in combo for lit in term))
        if len(out) > _MAX_TERMS:
            break
    return out


def _at_least(cond: AtLeast, neg: bool, resolve: Any) -> list[tuple[Literal, ...]]:
    """k of n definitely true; negated: definitely fewer than k, i.e. n-k+1 definitely false."""
    k = int(resolve(cond.at_least.param)) if isinstance(cond.at_least, Param) else cond.at_least
    n = len(cond.of)
    if neg:
        k = n - k + 1
    if k <= 0:
        return [()]
    if k > n:
        return []
    parts = [_dnf(c, neg, resolve) for c in cond.of]
    out: list[tuple[Literal, ...]] = []
    for chosen in combinations(range(n), k):
        for combo in product(*(parts[i] for i in chosen)):
            out.append(tuple(lit for term in combo for lit in term))
            if len(out) > _MAX_TERMS:
                return out
    return out


def _satisfiable(term: tuple[Literal, ...]) -> bool:
    for _, lits in _group(term):
        ops = {lit.op for lit in lits}
        if "missing" in ops and ops != {"missing"}:
            return False
    return True


def _canonical(term: tuple[Literal, ...]) -> tuple[Literal, ...]:
    uniq = {(lit.fact, lit.op, repr(lit.value)): lit for lit in term}
    return tuple(uniq[k] for k in sorted(uniq))


def compile_knowledge_base(kb: KnowledgeBase, scope: Scope = "patient") -> CompiledKnowledgeBase:
    """Compile the rules of one scope: ``patient`` (the ruleset ``{kb}@{version}``) or
    ``exercise-response`` (the per-exercise follow-up rules, ``{kb}@{version}/follow-up``,
    run once per exercise of the previous plan)."""
    order = {s: i for i, s in enumerate(kb.manifest.strata)}
    rules: list[CompiledRule] = []
    problems: list[KnowledgeBaseProblem] = []
    for rule in kb.rules:
        if rule.scope != scope:
            continue
        terms_raw = _dnf(rule.when, False, kb.parameter)
        if len(terms_raw) > _MAX_TERMS:
            loc = kb.locations.get(f"rules:{rule.id}")
            problems.append(
                KnowledgeBaseProblem(
                    loc.file if loc else "rules/", loc.line if loc else None, None,
                    f"rule {rule.id}: condition expands to more than {_MAX_TERMS} cases; "
                    "split it into several rules",
                )
            )
            continue
        seen: list[tuple[Literal, ...]] = []
        for t in terms_raw:
            c = _canonical(t)
            if _satisfiable(c) and c not in seen:
                seen.append(c)
        derives = []
        for a, name in zip(rule.then, derived_names(rule), strict=True):
            value: Any = True
            if a.finding is not None:
                value = a.finding.value
            elif a.classification is not None:
                value = a.classification.value
            derives.append((name, value))
        rules.append(
            CompiledRule(rule.id, order[rule.stratum], rule.priority, tuple(seen), tuple(derives))
        )
    if problems:
        raise KnowledgeBaseError(problems)
    names = {n for n, d in kb.facts.items()
             if d.scope == scope or (scope == "exercise-response" and not d.derived)}
    for r in rules:
        names.update(n for n, _ in r.derives)
    name = kb.ruleset_name + (FOLLOW_UP_SUFFIX if scope == "exercise-response" else "")
    return CompiledKnowledgeBase(name, tuple(kb.manifest.strata), tuple(rules),
                                 frozenset(names))
