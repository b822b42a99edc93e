"""Compiling a knowledge base into durable-rules rulesets (and the form the oracle reads).

Conditions become disjunctive normal form: each rule is one or more *terms*, each a
conjunction of *literals* on single facts. ``not`` is pushed down to the leaves with the
three-valued reading the authors are promised: a test on a missing fact is never true, so
``not (pain > 5)`` becomes ``pain <= 5`` and still needs ``pain`` to be present. The only
tests that need a fact to be absent are ``missing`` (and a negated ``present``); they compile
to durable-rules negation, which is gated on a stratum marker (engine safety rule 4).
"""

from __future__ import annotations

import json
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
_CHUNK = 200  # input facts per message: durable takes at most 255 properties in one
_STACK_LIMIT = 56  # durable-rules' alpha stack holds 64 nodes; 8 kept spare
# entries of durable's expression list per pattern: it refuses a ruleset at 32
# (MAX_SEQUENCE_EXPRESSIONS; each $and and $or takes two); 1 kept spare
_EXPRESSIONS = 30
# patterns ending at one alpha node: durable's list of them holds 255 and a 0; 5 spare
_SHARED_LIMIT = 250
# a durable-rules definition, the bound of its alpha stack, the most patterns ending at one
# alpha node, and the rules that stand for several terms (``alternatives``)
# terms alike but for their tests on one input message: the marker they wait for, their
# other patterns, and each term (rule and term index) with its tests on that message
_Alike = tuple[int | None, list[dict[str, Any]],
               list[tuple[tuple[int, int], list[dict[str, Any]]]]]
_Definition = tuple[dict[str, dict[str, Any]], int, int,
                    dict[str, tuple[tuple[tuple[int, int], ...], ...]]]


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

    @cached_property
    def derivation_ranks(self) -> tuple[tuple[tuple[int, ...], ...], tuple[Derivation, ...]]:
        """Per rule, per term: the rank of its ``Derivation`` among the distinct ones, and
        those in ``Derivation`` order (rule id, facts used, facts absent): an engine result
        lists firings in that order (``FiringLog``)."""
        ordered = tuple(sorted({d for ds in self.derivations for d in ds},
                               key=lambda d: (d.rule_id, d.used, d.absent)))
        rank = {d: i for i, d in enumerate(ordered)}
        return tuple(tuple(rank[d] for d in ds) for ds in self.derivations), ordered

    @property
    def read_names(self) -> frozenset[str]:
        """Facts some rule reads; no other fact can change a result."""
        return frozenset(lit.fact for r in self.rules for t in r.terms for lit in t)

    @cached_property
    def derived_names(self) -> frozenset[str]:
        """Facts some rule derives (they may also be given as inputs: safety rule 10)."""
        return frozenset(n for r in self.rules for n, _ in r.derives)

    @cached_property
    def packed_keys(self) -> dict[str, tuple[int, str, str]]:
        """The input facts sent together: per fact read by a rule and derived by none, its
        input message (chunk), its group's property and its own property there
        (``{"sid":..,"id":"f:c0","h":1,"c0":1,"q0":1,"q1":1,..,"i3":7,"i9":"x"}``).

        Every evaluation's input facts go in one message per chunk of ``_CHUNK`` facts
        (durable takes at most 255 properties in a message), and a term's tests on them
        become one pattern per chunk with every test in it: a conjunction durable's alpha
        network checks on one message, where a pattern per fact needed a beta node (a
        join) each, and durable allocates and clears every beta node's frame pools and
        indexes for each new session (about 11 KB each). An absence test on such a fact is
        a test that its property is not there (``$nex``): the message is complete when it
        arrives, so that test needs no stratum marker (``waits_for``).

        Each fact's tests start with "its group's property exists" (every group's property
        is in every input message): durable walks its alpha network depth first with a
        stack of 64 nodes, pushing every child that matches, and without groups the input
        message's node had a child per fact (``alpha_stack_bound``). The group count is
        about the square root of the fact count, or, if that bound is over the limit, the
        one of a few tried that gives the lowest bound."""
        return _packed(self._input_names, self._groups)

    @property
    def chunks(self) -> int:
        """How many input messages every evaluation sends (at least one: a term with no
        test, or absence tests only, matches it)."""
        return 1 + max((c for c, _, _ in self.packed_keys.values()), default=0)

    def chunk_groups(self, chunk: int) -> tuple[str, ...]:
        """The group properties of one input message (all sent, whatever the facts)."""
        return tuple(sorted({g for c, g, _ in self.packed_keys.values() if c == chunk},
                            key=lambda g: int(g[1:])))

    @cached_property
    def _input_names(self) -> list[str]:
        """The facts that go in the input messages, in order (``packed_keys``)."""
        return sorted(self.read_names - self.derived_names)

    @cached_property
    def _groups(self) -> int:
        return self._groups_for(self.folded)

    def _groups_for(self, folded: frozenset[tuple[int, int]]) -> int:
        n = min(len(self._input_names), _CHUNK)
        root = max(1, math.isqrt(n))
        if self._definition(root, folded)[1] <= _STACK_LIMIT:
            return root
        tried = sorted({max(1, root // 2), root, 2 * root})
        return min(tried, key=lambda g: (self._definition(g, folded)[1], g))

    @property
    def alpha_stack_bound(self) -> int:
        """The most alpha nodes durable's matcher can have on its stack for this ruleset
        (every test assumed to hold; ``_alpha_stack``); durable fails an assert past 64."""
        return self._definition(self._groups, self.folded)[1]

    @cached_property
    def durable_keys(self) -> dict[str, tuple[str, str]]:
        """The two properties each fact read by a rule and derived by one (``packed_keys``
        has the others) is asserted under in durable-rules, one message per fact: its
        group and its own (``{"sid":..,"id":"d:finding.x","h":1,"g3":1,"f12":true}``).

        durable's alpha network finds the tests for a message by property name: at each
        node, every property of the message is looked up in a table of the node's children
        (hashed by property name, linear probing from one of 32 start slots), so a lookup
        walks about as many entries as the node has children. One shared ``n`` property
        made every fact run the name test of every fact; a property per fact under the
        root made each of a message's properties walk ~130 entries; a group property
        (~sqrt(n) groups) under the root, then the fact's own property under its group,
        keeps both tables short (input facts' assert 150 -> 100 us in an A/B, when every
        fact was a message of its own)."""
        names = sorted(self.read_names & self.derived_names)
        groups = max(1, math.isqrt(len(names)))
        return {n: (f"g{i % groups}", f"f{i}") for i, n in enumerate(names)}

    @cached_property
    def waits_for(self) -> tuple[tuple[int | None, ...], ...]:
        return self._waits(self.folded)

    def _waits(self, folded: frozenset[tuple[int, int]]
               ) -> tuple[tuple[int | None, ...], ...]:
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
        only the marker after which every fact it needs absent is final: none for an input
        fact (derived by no rule: it is a property of the input message, ``packed_keys``,
        which is complete when it arrives, first), else the marker after the last stratum
        that derives one (the loader refuses an absence test on a fact derived in the
        reader's stratum or later). A term with no literal (a parameter test that holds)
        is a pattern on the input message, which every evaluation sends: it needs no
        marker either. Any other term waits for its own stratum's marker, as every term
        did before. (A value test on a fact derived both before and after the reader's
        stratum is the one case where durable and the reference can differ: the reader
        fires when the later producer's fact arrives. The loader refuses it;
        ``tests/test_engine_markers.py`` pins the markers such terms get.)"""
        produced_in = self._produced_in
        read_in: dict[str, list[int]] = {}
        for rule in self.rules:
            for fact in {lit.fact for t in rule.terms for lit in t}:
                read_in.setdefault(fact, []).append(rule.stratum)

        def marker(ri: int, ti: int) -> int | None:
            rule, term = self.rules[ri], self.rules[ri].terms[ti]
            s = rule.stratum
            if ((ri, ti) in folded
                    or any(lit.op != "missing" and max(produced_in.get(lit.fact, [0])) > s
                    for lit in term)
                    or any(min(read_in.get(n, [s])) < s for n, _ in rule.derives)):
                return s
            # an input fact (derived by no rule) is in the input message, complete when
            # it arrives: its absence needs no marker
            final = [max(produced_in[lit.fact]) + 1
                     for lit in term if lit.op == "missing" and lit.fact in produced_in]
            return max(final) if final else None

        return tuple(tuple(marker(ri, ti) for ti in range(len(r.terms)))
                     for ri, r in enumerate(self.rules))

    @cached_property
    def folded(self) -> frozenset[tuple[int, int]]:
        """The terms tested on their stratum marker's message (rule and term index): each
        reads a derived fact, and every derived fact it reads is derived only in earlier
        strata. It waits for its own stratum's marker (``waits_for``), after which those
        facts are final, and the runner sends that marker with their values and those of
        the input facts such terms read (``marker_keys``): one pattern on one message
        instead of a join of one pattern per derived fact (and of the marker), as durable
        allocates every pattern's state in every new session. A marker's terms that are one
        pattern each share patterns as alternatives, as the input message's do.

        A knowledge base whose folded tests would take durable's alpha stack past its bound
        (rule 11: tests on several facts in one pattern count as one chain, where a join
        had one per fact; found by review) is not folded: it is laid out, and loads or is
        refused, as before folding."""
        candidates = self._fold_candidates
        if (candidates and self._definition(self._groups_for(candidates), candidates)[1]
                > _STACK_LIMIT):
            return frozenset()
        return candidates

    @cached_property
    def _produced_in(self) -> dict[str, list[int]]:
        """Per derived fact, the strata of the rules that derive it."""
        produced_in: dict[str, list[int]] = {}
        for rule in self.rules:
            for name, _ in rule.derives:
                produced_in.setdefault(name, []).append(rule.stratum)
        return produced_in

    @cached_property
    def _fold_candidates(self) -> frozenset[tuple[int, int]]:
        produced_in = self._produced_in
        folded: dict[int, list[tuple[int, int]]] = {}
        read: dict[int, set[str]] = {}
        for ri, r in enumerate(self.rules):
            for ti, t in enumerate(r.terms):
                if _reads_only_earlier(t, r.stratum, produced_in):
                    folded.setdefault(r.stratum, []).append((ri, ti))
                    read.setdefault(r.stratum, set()).update(lit.fact for lit in t)
        # a marker's message holds at most as many facts as an input message (``_CHUNK``);
        # past that its terms are joins, as before
        return frozenset(term for k, terms in folded.items() if len(read[k]) <= _CHUNK
                         for term in terms)

    @cached_property
    def marker_keys(self) -> dict[int, dict[str, tuple[str, str]]]:
        """Per stratum marker that folded terms wait for (``folded``): each fact they read,
        with the group property and its own property it has in that marker's message
        (``{"sid":..,"id":"s:2","stratum":2,"h":1,"u0":1,"u1":1,"v3":true}``), named apart
        from every other message's properties."""
        return self._marker_keys_of(self.folded)

    def _marker_keys_of(self, folded: frozenset[tuple[int, int]]
                        ) -> dict[int, dict[str, tuple[str, str]]]:
        read: dict[int, set[str]] = {}
        for ri, ti in folded:
            read.setdefault(self.rules[ri].stratum, set()).update(
                lit.fact for lit in self.rules[ri].terms[ti])
        out: dict[int, dict[str, tuple[str, str]]] = {}
        for k, names in sorted(read.items()):
            groups = max(1, math.isqrt(len(names)))
            out[k] = {n: (f"u{i % groups}", f"v{i}") for i, n in enumerate(sorted(names))}
        return out

    @cached_property
    def markers(self) -> tuple[int, ...]:
        """The stratum markers some term waits for, in order: only these are sent."""
        return tuple(sorted({m for ms in self.waits_for for m in ms if m is not None}))

    def durable_definition(self) -> dict[str, dict[str, Any]]:
        """The durable-rules ruleset definition, without actions (the runner adds them).

        A term is one pattern per input message it tests (``packed_keys``: every test on
        those facts in it), one per derived fact it reads, and its stratum marker if it
        waits for one (``waits_for``); a rule's terms that are one pattern on the input
        message and nothing else share patterns, as alternatives (``alternatives``). A
        knowledge base whose definition could overflow durable's alpha stack
        (``alpha_stack_bound``) is refused here, at load time, not by a failed
        evaluation."""
        definition, bound, shared, _ = self._definition(self._groups, self.folded)
        if bound > _STACK_LIMIT:
            raise KnowledgeBaseError([KnowledgeBaseProblem(
                "rules/", None, None,
                f"the {self.name} rules test the input facts in too many ways at once for "
                f"durable-rules' matcher: up to {bound} tests pending, at most "
                f"{_STACK_LIMIT}; split the facts the rules test together across fewer "
                "rules, or test fewer values of one fact")])
        if shared > _SHARED_LIMIT:
            raise KnowledgeBaseError([KnowledgeBaseProblem(
                "rules/", None, None,
                f"the {self.name} rules have {shared} conditions that durable-rules reads as "
                f"the same test (the same tests of the same facts, or the same stratum "
                f"marker), at most {_SHARED_LIMIT}; merge such rules, or give them "
                "different tests")])
        return definition

    @cached_property
    def _definitions(self) -> dict[tuple[int, frozenset[tuple[int, int]]], _Definition]:
        # (group count, folded terms) -> (definition, alpha stack bound, patterns at one
        # node, alternatives)
        return {}

    @property
    def alternatives(self) -> dict[str, tuple[tuple[int, int], ...]]:
        """The durable rules that stand for several terms (safety rule 13): by durable rule
        name, those terms as (rule index, term index), in the order of ``alternative_groups``
        (which says which terms are one alternative)."""
        return {name: tuple(t for terms in groups for t in terms)
                for name, groups in self.alternative_groups.items()}

    @property
    def alternative_groups(self) -> dict[str, tuple[tuple[tuple[int, int], ...], ...]]:
        """The durable rules that stand for several terms, by name: per alternative of its
        ``$or`` (or its one pattern), the terms whose tests on that message it is. Each is
        one pattern on a message (an input message, or a stratum marker's), for terms that
        test nothing else, of one rule or several, or for terms of one rule whose other
        patterns (on derived facts, the marker) are the same: one pattern instead of one
        per term, as durable allocates every pattern's state in every new session. Such
        terms need no order among them: each fires when the message arrives, and a fact
        they derive is asserted once every action ready has run. durable fires the rule at
        least once per alternative that holds, if it is the rule's one pattern;
        ``_engine`` records the terms whose literals hold (``_Firings``)."""
        return self._definition(self._groups, self.folded)[3]

    @property
    def alpha_patterns_per_node(self) -> int:
        """The most patterns that end at one node of durable's alpha network (``_Alpha``):
        durable holds them in a list of 256 entries that must end in a 0, and reads past a
        full one (safety rule 11)."""
        return self._definition(self._groups, self.folded)[2]

    def _definition(self, groups: int, folded: frozenset[tuple[int, int]]) -> _Definition:
        known = self._definitions.get((groups, folded))
        if known is None:
            known = self._definitions[groups, folded] = self._build(groups, folded)
        return known

    def _build(self, groups: int, folded: frozenset[tuple[int, int]]) -> _Definition:
        packed = _packed(self._input_names, groups)
        waits, marker_keys = self._waits(folded), self._marker_keys_of(folded)
        out: dict[str, dict[str, Any]] = {}
        # terms whose tests on the input facts are one pattern, by what else they have (no
        # marker and no other pattern: any rule's; else the same marker and the same other
        # patterns of one rule), each with its tests after "the chunk's message": the
        # alternatives of one ``$or`` pattern in one durable rule (``alternatives``)
        # (a folded term's tests are all on its marker's message, which the pattern's
        # first test names: any rule's folded terms of one marker are alike)
        alike: dict[tuple[Any, ...], _Alike] = {}
        for ri, rule in enumerate(self.rules):
            for ti, term in enumerate(rule.terms):
                marker = waits[ri][ti]
                if (ri, ti) in folded:  # waits for its own stratum's marker
                    inputs, others = self._term_patterns(term, {
                        n: (0, g, k) for n, (g, k) in marker_keys[rule.stratum].items()},
                        rule.stratum)
                    marker = None  # the pattern's own first test (``_term_patterns``)
                else:
                    inputs, others = self._term_patterns(term, packed)
                if len(inputs) == 1:
                    (alias, tested), = inputs[0].items()
                    tests = tested["$and"][1:]  # after the message's head
                    key = ((alias,) if marker is None and not others
                           else (alias, ri, marker, json.dumps(others, sort_keys=True)))
                    alike.setdefault(key, (marker, others, []))[2].append(((ri, ti), tests))
                    continue
                ctl = [{"ctl": {"stratum": marker}}] if marker is not None else []
                out[f"{ri}:{ti}"] = {"all": ctl + inputs + others, "pri": self._pri(ri)}
                if len(inputs) > 1:
                    # one message may match several of its patterns: durable's default
                    # (``dist`` 1) refuses a message twice in one match
                    out[f"{ri}:{ti}"]["dist"] = 0
        alternatives: dict[str, tuple[tuple[tuple[int, int], ...], ...]] = {}
        seen: set[str] = set()  # the tests of every alternative so far (_alternative_packs)
        for key, (marker, others, terms) in sorted(alike.items(),
                                                   key=lambda item: item[1][2][0][0]):
            ctl = [{"ctl": {"stratum": marker}}] if marker is not None else []
            alias = key[0]
            head = _message_head(alias)
            for pack in _alternative_packs(terms, seen, alias):
                (ri, ti), tests = pack[0][0][0], pack[0][1]
                name = f"{ri}:{ti}"
                either = tests if len(pack) == 1 else [
                    {"$or": [{"$and": tests} for _, tests in pack]}]
                out[name] = {"all": [*ctl, {alias: {"$and": [head, *either]}}, *others],
                             "pri": min(self._pri(ri) for terms, _ in pack
                                        for ri, _ in terms)}
                if len(pack) > 1 or len(pack[0][0]) > 1:
                    alternatives[name] = tuple(tuple(terms) for terms, _ in pack)
        # every durable rule in term order, as each term was once a rule of its own (durable
        # lays out its network in the order it reads the rules)
        out = dict(sorted(out.items(), key=lambda item: _order(item[0])))
        # the sink: every fact message has ``"h":1`` and is handled whatever its values (a
        # stratum marker is sent only when some term waits for it); it never completes its
        # join, so it never fires
        out["sink"] = {"all": [{"m": {"$ex": {"h": 1}}},
                               {"never": {"$ex": {"never-asserted": 1}}}],
                       "pri": 10 * 10_000}
        return (out, *_alpha_limits(out), alternatives)

    def _pri(self, rule_index: int) -> int:
        """A rule's durable ``pri``: lower fires first, stored unsigned; explicit multiples
        of 10 (safety rule 8)."""
        rule = self.rules[rule_index]
        return 10 * (rule.stratum * 100 + rule.priority)

    def _term_patterns(self, term: tuple[Literal, ...],
                       packed: dict[str, tuple[int, str, str]], marker: int | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A term's patterns on the input messages, and on derived facts; with ``marker``
        (a folded term: every fact it reads is in ``packed``), on that marker's message."""
        keys = self.durable_keys
        chunks: dict[int, list[list[dict[str, Any]]]] = {} if term else {0: []}
        patterns: list[dict[str, Any]] = []
        for fact, lits in _group(term):
            if fact in packed:
                chunk, group, key = packed[fact]
                # a value test needs the property there: a test on a missing fact is
                # never true (durable only reaches a test through the property it tests)
                chunks.setdefault(chunk, []).extend(
                    [[{"$ex": {group: 1}}, {"$nex": {key: 1}}]] if lits[0].op == "missing"
                    else _units([{"$ex": {group: 1}}, {"$ex": {key: 1}}],
                                [t for lit in lits for t in _durable_tests(lit, key)]))
                continue
            # a derived fact's pattern starts with "its group's property exists", then "its
            # own property exists" (``durable_keys``)
            exists = _exists(*keys[fact])
            if lits[0].op == "missing":
                patterns.append({f"a{len(patterns)}$not": exists})
                continue
            tests = [t for lit in lits for t in _durable_tests(lit, keys[fact][1])]
            for unit in _units(exists["$and"], tests):
                patterns.append({f"p{len(patterns)}": {"$and": unit}})
        aliases = [f"in{k}_" if marker is None else f"mk{marker}_" for k in sorted(chunks)]
        inputs = [{f"{alias}{i}": {"$and": [_message_head(f"{alias}{i}"), *tests]}}
                  for alias, units in zip(aliases, [chunks[k] for k in sorted(chunks)],
                                          strict=True)
                  for i, tests in enumerate(_packs(units))]
        return inputs, patterns


def _cost(test: dict[str, Any]) -> int:
    """The entries a test takes in durable's expression list of its pattern (an ``$or``
    opens and ends one; a test on a constant takes none)."""
    return 2 if "$or" in test else 0


def _units(head: list[dict[str, Any]], tests: list[dict[str, Any]]
           ) -> list[list[dict[str, Any]]]:
    """One fact's tests after ``head`` (which takes no entries), as few runs of them as
    durable takes in one pattern (``_packs``), each run after ``head``."""
    return [head + run for run in _packs([[t] for t in tests])]


def _packs(units: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """The facts' test units of one input message, packed in order into as few patterns as
    durable takes (``_EXPRESSIONS``); a term with several patterns on one message is a rule
    with ``dist`` 0 (``_build``)."""
    packs: list[list[dict[str, Any]]] = [[]]
    used = 2  # the pattern's own $and
    for unit in units:
        cost = sum(_cost(t) for t in unit)
        if packs[-1] and used + cost > _EXPRESSIONS:
            packs.append([])
            used = 2
        packs[-1].extend(unit)
        used += cost
    return packs


def _order(name: str) -> tuple[int, int]:
    ri, _, ti = name.partition(":")
    return int(ri), int(ti)


def _message_head(alias: str) -> dict[str, Any]:
    """A pattern's first test, naming the message it is on (its alias ``in{chunk}_{i}``:
    that input message; ``mk{marker}_{i}``: that stratum marker's)."""
    number = int(alias[2:].partition("_")[0])
    return {"$ex": {f"c{number}": 1}} if alias.startswith("in") else {"stratum": number}


# one alternative of a pack: the terms whose tests on the message are these tests
_Alternative = tuple[list[tuple[int, int]], list[dict[str, Any]]]


def _alternative_packs(terms: list[tuple[tuple[int, int], list[dict[str, Any]]]],
                       seen: set[str], alias: str) -> list[list[_Alternative]]:
    """Terms alike but for their tests on one message (rule and term index, and those
    tests), in order, packed into as few ``$or`` patterns as durable takes: its expression
    list holds the pattern's ``$and``, the ``$or`` and each alternative's ``$and`` (two
    entries each) and their tests' own (``_cost``), so about 13 alternatives a pack. Terms
    with the same tests are one alternative (the compiler writes each test one way,
    ``_durable_tests``): its terms hold together. A term with no test, or one too wide to
    be an alternative, is a pack of its own (with the terms that have the same tests), and
    so is a term with the same tests as an alternative of another call's packs (in
    ``seen``, shared by every call: alike terms with other patterns besides, or on another
    message): an alternative's last alpha node leads to its pack's ``$or`` node, and
    durable's matcher pushes each such link, so the same tests in many packs would hang
    many links on one node (safety rule 11's stack bound; found by review) where patterns
    of their own end there as before (rule 11's list of patterns)."""
    packs: list[list[_Alternative]] = []
    current: list[_Alternative] = []
    mine: dict[str, _Alternative] = {}  # this call's alternatives, by their tests
    used = 4  # the pattern's $and and the $or
    for term, tests in terms:
        cost = 2 + sum(_cost(t) for t in tests)
        key = alias.partition("_")[0] + repr(tests)  # on one message
        if key in mine:
            mine[key][0].append(term)
            continue
        if not tests or 4 + cost > _EXPRESSIONS or key in seen:
            packs.append([mine.setdefault(key, ([term], tests))])
            continue
        seen.add(key)
        if current and used + cost > _EXPRESSIONS:
            packs.append(current)
            current, used = [], 4
        current.append(mine.setdefault(key, ([term], tests)))
        used += cost
    return packs + ([current] if current else [])


def _packed(names: list[str], groups: int) -> dict[str, tuple[int, str, str]]:
    """name -> (chunk, group property, own property): ``_CHUNK`` facts per chunk, each
    chunk's facts spread over ``groups`` groups."""
    return {n: (i // _CHUNK, f"q{(i % _CHUNK) % groups}", f"i{i}")
            for i, n in enumerate(names)}


class _Alpha:
    """A node of durable's alpha network, as far as its matcher's stack depends on it."""

    __slots__ = ("depth", "ends", "forward", "next")

    def __init__(self) -> None:
        self.next: dict[str, _Alpha] = {}  # a test under this node: one node per test
        self.forward: list[_Alpha] = []  # an ``$or``'s join node, after each alternative
        self.ends = 0  # patterns whose tests end here (durable's beta list of the node)
        self.depth: int | None = None  # ``worst`` below this node, once worked out

    def add(self, test: dict[str, Any]) -> _Alpha:
        """The node after ``test`` under this one (durable's ``createAlpha``: a test
        already under the node is shared; each ``$or`` gets a new node its
        alternatives lead to, and the tests after it hang under that)."""
        (op, arg), = test.items()
        if op == "$and":
            node = self
            for t in arg:
                node = node.add(t)
            return node
        if op == "$or":
            joined = _Alpha()
            for t in arg:
                t_node = self.add(t)
                t_node.forward.append(joined)
            return joined
        # the compiler writes each test one way (``_durable_tests``), so its repr names it
        return self.next.setdefault(repr(test), _Alpha())

    def worst(self, pending: int) -> int:
        """The largest stack below this node: durable pops a node, then pushes every child
        whose test holds (here: every child), so a node's children wait while each
        sibling's subtree before them is walked. That is ``pending`` plus a depth of the
        node's own, worked out once per node: an ``$or``'s join node is reached through
        each alternative, and a chain of them had as many ways through as the products of
        their lengths (found by review: seconds, then minutes, to load)."""
        if self.depth is None:
            children = [*self.next.values(), *self.forward]
            self.depth = max([len(children)]
                             + [len(children) - 1 + child.worst(0) for child in children])
        return pending + self.depth


def _alpha_limits(definition: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """The ruleset's patterns laid out as durable lays out its alpha network: an upper
    bound of its matcher's stack (``handleAlpha``, 64 nodes) over every message, every test
    taken to hold (a message that makes every test true at once is the worst), and the most
    patterns that end at one node (its beta list: 256 entries, 0-terminated)."""
    root = _Alpha()
    ends: list[_Alpha] = []
    for rule in definition.values():
        for pattern in rule["all"]:
            (_, expression), = pattern.items()
            end = root.add(expression)
            end.ends += 1
            ends.append(end)
    return max(1, root.worst(0)), max(e.ends for e in ends)


def _reads_only_earlier(term: tuple[Literal, ...], stratum: int,
                        produced_in: dict[str, list[int]]) -> bool:
    """The term reads a derived fact, and only derived facts final before ``stratum``."""
    derived = [lit.fact for lit in term if lit.fact in produced_in]
    return bool(derived) and all(max(produced_in[f]) < stratum for f in derived)


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
