"""Safety rule 13 (docs/architecture.md): a rule's terms that test only the input message
are the alternatives of one ``$or`` pattern (``CompiledKnowledgeBase.alternatives``), and
the runner records the terms that hold, checked against how often durable fired."""

from __future__ import annotations

import json

import durable_rules_engine
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds import CompiledKnowledgeBase, EngineError, Fact, evaluate_reference
from cds._compiler import CompiledRule, Literal
from cds._engine import RuleEngine

_NAMES = ("a", "b", "c", "d", "e")


def _wide_rule_kb() -> CompiledKnowledgeBase:
    """A rule of 40 input-only terms (several patterns' worth), with prefixes of each
    other, ``in`` and absence tests; beside it, terms that cannot be alternatives: one on
    a derived fact and one that waits for a stratum marker."""
    terms: list[tuple[Literal, ...]] = []
    for i, n in enumerate(_NAMES):
        for v in range(4):
            terms.append((Literal(n, "is", v),))
            terms.append((Literal(n, "is", v), Literal(_NAMES[(i + 1) % 5], "in", [v, v + 1])))
    terms[7] = (Literal("a", "missing"), Literal("b", "ge", 2))
    rules = (
        CompiledRule("WIDE", 0, 0, tuple(terms), (("x", True),)),
        CompiledRule("MIXED", 0, 1, ((Literal("c", "is", 1),), (Literal("x", "is", True),
                                                                 Literal("d", "le", 1))),
                     (("y", True),)),
        CompiledRule("LATE", 1, 0, ((Literal("e", "is", 3),), (Literal("y", "missing"),
                                                               Literal("e", "lt", 2))),
                     (("z", True),)),
    )
    return CompiledKnowledgeBase("alternatives-wide@1.0", ("s0", "s1"), rules,
                                 frozenset(_NAMES) | {"x", "y", "z"})


_WIDE = _wide_rule_kb()


def test_a_rules_input_only_terms_share_patterns_within_durables_limits() -> None:
    """The 40 terms of WIDE are a few ``$or`` patterns, each of which durable accepts (it
    refuses a pattern of more than 31 expression entries); MIXED's term on a derived fact
    and LATE's term that waits for a marker (on its message) keep patterns of their own."""
    definition = _WIDE.durable_definition()
    packs = _WIDE.alternatives
    wide = sorted(ti for terms in packs.values() for ri, ti in terms if ri == 0)
    assert wide == list(range(40))
    assert 3 <= len(packs) <= 8
    assert all(len(definition[n]["all"]) == 1 for n in packs)
    assert "1:1" in definition and len(definition["1:1"]["all"]) == 2
    # LATE's second term reads y (derived a stratum before): one pattern on marker 1's
    # message (``CompiledKnowledgeBase.folded``)
    assert (2, 1) in _WIDE.folded and list(definition["2:1"]["all"][0]) == ["mk1_0"]
    # MIXED's other term, "c is 1", is also one of WIDE's: the same alternative
    shared = [group for groups in _WIDE.alternative_groups.values() for group in groups
              if (1, 0) in group]
    assert len(shared) == 1 and len(shared[0]) == 2 and shared[0][0][0] == 0
    assert "1:0" not in definition
    # LATE's first term, "e is 3", is one of WIDE's too; its second is folded, alone
    assert any((2, 0) in group and group[0][0] == 0 for groups in
               _WIDE.alternative_groups.values() for group in groups)
    assert (2, 1) not in {t for terms in packs.values() for t in terms}
    RuleEngine(_WIDE)  # durable accepts the ruleset


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_NAMES), st.integers(min_value=0, max_value=4)))
def test_alternatives_give_the_reference_evaluators_results(values: dict[str, int]) -> None:
    """Any values of the five facts (none, one or several alternatives holding, in one
    pattern or several): durable's result, firings and the facts each names included, is
    the reference evaluator's, and no check fails."""
    facts = [Fact(n, v) for n, v in sorted(values.items())]
    assert RuleEngine(_WIDE).evaluate(facts) == evaluate_reference(_WIDE, facts)


def test_several_alternatives_holding_are_each_recorded() -> None:
    """a = 1 and b = 2 satisfy three terms of WIDE, in two of its patterns: each is a
    firing of its own, naming the facts it read, as in the reference."""
    facts = [Fact("a", 1), Fact("b", 2)]
    result = RuleEngine(_WIDE).evaluate(facts)
    wide = [f for f in result.firings if f.rule_id == "WIDE"]
    assert sorted(f.used for f in wide) == [("a",), ("a", "b"), ("b",)]
    packs = {n for n, terms in _WIDE.alternatives.items()
             if {(0, 2), (0, 3), (0, 12)} & set(terms)}
    assert len(packs) == 2
    assert result == evaluate_reference(_WIDE, facts)


def _two_terms() -> RuleEngine:
    rules = (CompiledRule("R", 0, 0, ((Literal("a", "is", True),), (Literal("b", "is", 5),)),
                          (("x", True),)),)
    compiled = CompiledKnowledgeBase("alternatives-two@1.0", ("s0",), rules,
                                     frozenset({"a", "b", "x"}))
    assert compiled.alternatives == {"0:0": ((0, 0), (0, 1))}
    return RuleEngine(compiled)


def test_an_alternative_durable_reads_otherwise_fails_the_evaluation() -> None:
    """durable reads 1 as true; the reference does not (``Evaluator.derive`` refuses such a
    value before either runs; here the runner gets it directly). With a = 1 alone durable
    fires R while none of its terms holds: the evaluation fails, naming the rule. With b =
    5 as well, the term that holds is the one recorded, as in the reference."""
    run = _two_terms()
    with pytest.raises(EngineError, match="none of their conditions holds") as caught:
        run.evaluate([Fact("a", 1)])
    assert "'R'" in str(caught.value)
    for facts in ([Fact("a", 1), Fact("b", 5)], [Fact("a", True)],
                  [Fact("a", True), Fact("b", 5)], [Fact("b", 4)]):
        assert run.evaluate(facts) == evaluate_reference(run.compiled, facts)


def test_an_alternative_durable_misses_fails_the_evaluation() -> None:
    """durable reads an integer beyond 64 bits as 2**63 - 1 (tests/test_review_engine2.py):
    it misses "v > 2**63" for v = 2**64, which the reference takes. In one pattern with
    "w is true", durable fires once while two terms hold: the evaluation fails, naming
    the rules, rather than recording a firing durable did not find."""
    rules = (CompiledRule("BIG", 0, 0, ((Literal("v", "gt", 2**63),),), (("x", True),)),
             CompiledRule("W", 0, 0, ((Literal("w", "is", True),),), (("y", True),)))
    compiled = CompiledKnowledgeBase("alternatives-missed@1.0", ("s0",), rules,
                                     frozenset({"v", "w", "x", "y"}))
    assert list(compiled.alternatives.values()) == [((0, 0), (1, 0))]
    run = RuleEngine(compiled)
    with pytest.raises(EngineError, match="disagree") as caught:
        run.evaluate([Fact("v", 2**64), Fact("w", True)])
    assert caught.value.details == ["BIG", "W"]
    facts = [Fact("v", 2**62), Fact("w", True)]
    assert run.evaluate(facts) == evaluate_reference(compiled, facts)


def test_packing_alternatives_is_needed_for_durables_expression_list() -> None:
    """30 terms with an ``in`` test each (an ``$or`` of two entries) are five patterns of
    six alternatives; as one pattern durable refuses the ruleset (error 113)."""
    terms = tuple((Literal(f"v{i:02d}", "in", [1, 2]),) for i in range(30))
    rules = (CompiledRule("IN", 0, 0, terms, (("x", True),)),)
    compiled = CompiledKnowledgeBase("alternatives-in@1.0", ("s0",), rules,
                                     frozenset({f"v{i:02d}" for i in range(30)} | {"x"}))
    definition = compiled.durable_definition()
    assert len(compiled.alternatives) == 5
    run = RuleEngine(compiled)
    for k in (0, 7, 29):
        facts = [Fact(f"v{k:02d}", 2), Fact("v03", 3)]
        assert run.evaluate(facts) == evaluate_reference(compiled, facts)
    alternatives = [alt for rule in definition.values() if "in0_0" in rule["all"][0]
                    for alt in rule["all"][0]["in0_0"]["$and"][1]["$or"]]
    one = {"all": [{"in0_0": {"$and": [{"$ex": {"c0": 1}}, {"$or": alternatives}]}}]}
    with pytest.raises(Exception, match="113"):
        durable_rules_engine.create_ruleset("alternatives-in-one@1.0", json.dumps({"r": one}))


def test_the_bundled_knowledge_base_has_fewer_patterns() -> None:
    """What the alternatives and the folded terms are for: durable allocates every
    pattern's state (~10 KB) in every new session. The bundled knowledge base's 439 terms
    are fewer than 150 patterns (588 with a pattern per term; 212 without folded terms),
    and some folded terms are alternatives of one pattern on a marker's message."""
    from cds import load_knowledge_base
    from cds._compiler import compile_knowledge_base
    from knowledge_base import bundled_path

    compiled = compile_knowledge_base(load_knowledge_base(bundled_path()))
    definition = compiled.durable_definition()
    patterns = sum(len(r["all"]) for r in definition.values())
    terms = sum(len(r.terms) for r in compiled.rules)
    assert terms > 400 and patterns < 150, (terms, patterns)
    assert compiled.alternatives and len(compiled.folded) > 40
    assert any(any(alias.startswith("mk") for p in definition[name]["all"] for alias in p)
               for name in compiled.alternatives)


# values that one reading or another might take for each other: 1, 1.0 and True; 0, -0.0
# and False; "1" and 1; a list and its item; NaN
_TRICKY = (True, False, 1, 0, 1.0, 0.0, -0.0, 2, 2.5, -1, "1", "a", "", None, [1],
           float("nan"), float("inf"))
_VALUES = st.sampled_from(_TRICKY) | st.integers(-3, 3) | st.floats(allow_nan=True)
_LITERAL_VALUES = st.sampled_from([v for v in _TRICKY if v == v and v != [1]]) | st.floats(
    allow_nan=False)


@settings(max_examples=1500, deadline=None)
@given(op=st.sampled_from(["missing", "present", "is", "is-not", "lt", "le", "gt", "ge",
                           "in", "not-in"]),
       scalar=_LITERAL_VALUES, listed=st.lists(_LITERAL_VALUES, min_size=1, max_size=3),
       given_values=st.dictionaries(st.sampled_from(["f", "g"]), _VALUES, min_size=1,
                                    max_size=2))
def test_a_literals_test_is_the_reference_evaluators_reading(
        op: str, scalar: object, listed: list[object], given_values: dict[str, object]) -> None:
    """``literal_test`` (the runner's test of an alternative's literal, written out for the
    common forms) holds exactly where ``literal_holds`` does, for any value of the fact
    (absent, a boolean, an integer, a float (NaN too), a text, a list) and any literal."""
    from cds._reference import literal_holds, literal_test

    lit = Literal("f", op, listed if op in ("in", "not-in") else scalar)
    assert literal_test(lit)(given_values) == literal_holds(lit, given_values)


_LITERALS = st.builds(
    lambda fact, op, scalar, listed: Literal(fact, op, listed if op in ("in", "not-in")
                                             else scalar),
    st.sampled_from(["f", "g", "h"]),
    st.sampled_from(["missing", "present", "is", "is-not", "lt", "le", "gt", "ge", "in",
                     "not-in"]),
    _LITERAL_VALUES, st.lists(_LITERAL_VALUES, min_size=1, max_size=3))


@settings(max_examples=300, deadline=None)
@given(terms=st.lists(st.lists(_LITERALS, max_size=4), min_size=1, max_size=14),
       given_values=st.dictionaries(st.sampled_from(["f", "g", "h"]), _VALUES, max_size=3),
       data=st.data())
def test_the_terms_holding_are_the_reference_evaluators(
        terms: list[list[Literal]], given_values: dict[str, object],
        data: st.DataObject) -> None:
    """``holding`` (one function written for a pack's terms, each distinct literal tested
    once) gives, in order, exactly the terms all of whose literals ``literal_holds`` reads
    as holding; terms repeat literals of other terms (drawn again from the ones before),
    and a term with no literal always holds."""
    from cds._reference import holding, literal_holds

    seen = [lit for term in terms for lit in term]
    if seen:  # literals shared between terms, as the at-least-N expansions share them
        terms = [term + data.draw(st.lists(st.sampled_from(seen), max_size=2))
                 for term in terms]
    named = [(f"t{k}", term) for k, term in enumerate(terms)]
    want = [name for name, term in named
            if all(literal_holds(lit, given_values) for lit in term)]
    assert holding(named)(given_values) == want


@pytest.mark.parametrize("shared", [1, 2])
def test_a_term_many_rules_share_is_packed_once(shared: int) -> None:
    """Found by review: 60 rules that each have the same term (one condition shared by
    many rules: "pregnant", or the two terms "a is 1" / "b is 1") besides one of their own.
    Were each copy an alternative in another pack, each pack's ``$or`` node would hang off
    the one alpha node those tests end at, and durable's matcher pushes every such link:
    the stack bound reached 63 and the knowledge base was refused. Now the 60 copies are
    one alternative of one pack (they hold together; durable fires it once for all); the
    bound stays low and durable equals the reference."""
    common = [(Literal("pregnant", "is", True),), (Literal("b", "is", 1),)][:shared]
    rules = tuple(CompiledRule(f"R{k}", 0, 0, (*common, (Literal(f"f{k:02d}", "gt", 5),)),
                               ((f"x{k}", True),)) for k in range(60))
    names = {"pregnant", "b"} | {f"f{k:02d}" for k in range(60)} | {f"x{k}" for k in range(60)}
    compiled = CompiledKnowledgeBase(f"alternatives-shared@1.{shared}", ("s0",), rules,
                                     frozenset(names))
    groups = [group for gs in compiled.alternative_groups.values() for group in gs
              if group[0][1] < shared]
    assert sorted(len(group) for group in groups) == [60] * shared  # each common term once
    assert all(len({ti for _, ti in group}) == 1 for group in groups)
    assert compiled.alpha_stack_bound <= 20
    run = RuleEngine(compiled)
    for facts in ([Fact("pregnant", True), Fact("f01", 7)], [Fact("b", 1)], [Fact("f59", 6)],
                  [Fact("pregnant", False), Fact("b", 2), Fact("f00", 5)]):
        assert run.evaluate(facts) == evaluate_reference(compiled, facts), facts


def _shared_part_kb() -> CompiledKnowledgeBase:
    """Terms of one rule alike but for their tests on input facts: G's read the derived
    fact d of their own stratum (and so join its message); N's also wait for marker 1 and
    need z (derived a stratum before) absent. F's read only facts derived in earlier
    strata: folded, they are tested on marker 2's message, any rule's as alternatives."""
    rules = (
        CompiledRule("Z", 0, 1, ((Literal("y", "is", 1),),), (("z", True),)),
        CompiledRule("D", 1, 0, ((Literal("x", "is", 1),),), (("d", True),)),
        CompiledRule("G", 1, 1, ((Literal("d", "is", True), Literal("a", "is", 1)),
                                 (Literal("d", "is", True), Literal("b", "gt", 2)),
                                 (Literal("d", "is", True), Literal("c", "in", [1, 2])),
                                 (Literal("d", "is", True), Literal("a", "missing"))),
                     (("g", True),)),
        CompiledRule("N", 1, 2, ((Literal("z", "missing"), Literal("d", "is", True),
                                  Literal("a", "is", 2)),
                                 (Literal("z", "missing"), Literal("d", "is", True),
                                  Literal("b", "le", 1)),
                                 (Literal("z", "missing"), Literal("d", "is", True),
                                  Literal("c", "is", 3))),
                     (("n", True),)),
        CompiledRule("F", 2, 0, ((Literal("d", "is", True), Literal("a", "is", 1)),
                                 (Literal("z", "missing"), Literal("b", "gt", 2)),
                                 (Literal("d", "is", True), Literal("z", "missing"),
                                  Literal("c", "in", [1, 2])),
                                 (Literal("g", "is", True), Literal("a", "missing")),
                                 (Literal("n", "missing"), Literal("d", "is", True))),
                     (("f", True),)),
        CompiledRule("E", 2, 1, ((Literal("g", "is", True), Literal("n", "missing"),
                                  Literal("b", "ge", 1)),), (("e", True),)),
    )
    return CompiledKnowledgeBase("alternatives-shared-part@1.1", ("s0", "s1", "s2"), rules,
                                 frozenset({"x", "y", "a", "b", "c", "d", "z", "g", "n",
                                            "f", "e"}))


_SHARED_PART = _shared_part_kb()


def test_terms_alike_but_for_their_input_tests_share_one_rule() -> None:
    """G's four terms are one durable rule: the derived fact's pattern once, the input
    message's as four alternatives; N's three likewise, after their marker, with d's
    pattern and the absence of z. F's five terms and E's one (another rule's) are folded:
    the alternatives of one ``$or`` pattern on marker 2's message."""
    definition = _SHARED_PART.durable_definition()
    packs = {n: terms for n, terms in _SHARED_PART.alternatives.items()}
    assert packs["2:0"] == ((2, 0), (2, 1), (2, 2), (2, 3))
    assert packs["3:0"] == ((3, 0), (3, 1), (3, 2))
    assert [next(iter(p)) for p in definition["2:0"]["all"]] == ["in0_0", "p0"]
    assert [next(iter(p)) for p in definition["3:0"]["all"]] == ["ctl", "in0_0", "p0",
                                                                 "a1$not"]
    assert _SHARED_PART.folded == {(4, t) for t in range(5)} | {(5, 0)}
    assert packs["4:0"] == ((4, 0), (4, 1), (4, 2), (4, 3), (4, 4), (5, 0))
    assert [next(iter(p)) for p in definition["4:0"]["all"]] == ["mk2_0"]
    assert _SHARED_PART.markers == (1, 2)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={n: st.integers(0, 4) for n in "xyabc"}))
def test_alternatives_with_a_shared_part_give_the_reference_evaluators_results(
        values: dict[str, int]) -> None:
    """Any values of the input facts (d, z, g and n derived or not, none, one or several
    alternatives holding, on the input message or marker 2's): durable's result is the
    reference's."""
    facts = [Fact(n, v) for n, v in sorted(values.items())]
    result = RuleEngine(_SHARED_PART).evaluate(facts)
    assert result == evaluate_reference(_SHARED_PART, facts)


@pytest.mark.parametrize("given", [
    {"d": True, "a": 1}, {"d": True, "z": True, "c": 2}, {"g": True, "b": 1},
    {"n": True, "d": True, "x": 2}, {"d": "yes", "a": 1}])
def test_a_folded_term_reads_a_derived_fact_given_as_an_input(given: dict[str, object]
                                                             ) -> None:
    """A derived fact no rule derives for this patient may be given as an input (the
    scenarios' way to test later rules alone): marker 2's message carries the given value,
    and durable's result is the reference's (of another type than the rules derive too)."""
    facts = [Fact(n, v) for n, v in sorted(given.items())]
    assert RuleEngine(_SHARED_PART).evaluate(facts) == evaluate_reference(_SHARED_PART, facts)


def test_a_shared_part_that_does_not_hold_fires_no_alternative() -> None:
    """a = 1, b = 3 and c = 1 satisfy three of G's input alternatives, and G fires for
    each only when d is derived (x = 1); N's fire only while z is absent (y is not 1);
    F's folded terms fire for each alternative that holds on marker 2's message."""
    run = RuleEngine(_SHARED_PART)
    with_d = run.evaluate([Fact("a", 1), Fact("b", 3), Fact("c", 1), Fact("x", 1)])
    assert sorted(f.used for f in with_d.firings if f.rule_id == "G") == [
        ("a", "d"), ("b", "d"), ("c", "d")]
    without_d = run.evaluate([Fact("a", 1), Fact("b", 3), Fact("c", 1), Fact("x", 2)])
    assert not [f for f in without_d.firings if f.rule_id == "G"]
    assert not [f for f in without_d.firings if f.rule_id == "N"]
    several = run.evaluate([Fact("a", 2), Fact("b", 0), Fact("c", 3), Fact("x", 1)])
    assert sorted(f.used for f in several.firings if f.rule_id == "N") == [
        ("a", "d"), ("b", "d"), ("c", "d")]
    with_z = run.evaluate([Fact("a", 2), Fact("x", 1), Fact("y", 1)])
    assert not [f for f in with_z.firings if f.rule_id == "N"]
    # F's folded alternatives on marker 2's message, each recorded with what it read
    assert sorted((f.used, f.absent) for f in with_d.firings if f.rule_id == "F") == [
        (("a", "d"), ()), (("b",), ("z",)), (("c", "d"), ("z",)), (("d",), ("n",))]
    assert [(f.used, f.absent) for f in with_z.firings if f.rule_id == "F"] == [
        (("d",), ("n",))]  # z there: only the term without z's absence (n's absence)
