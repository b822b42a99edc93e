"""Which stratum marker each durable-rules term waits for (``CompiledKnowledgeBase.waits_for``),
and that durable still gives the reference evaluator's result on every fact set.

The rule set is built by hand, small enough to draw every combination of its inputs: it has
absence tests on input facts (no marker: a test on the input message), on facts derived one and two
strata earlier, value tests on derived facts of the same and earlier strata, and a rule with
several terms (as ``at-least`` compiles to). A term that waited for a marker too early, or for
none when it tests an absence, fires in durable on a fact set where the reference does not.
"""

from __future__ import annotations

import itertools
from typing import Any

from cds import CompiledKnowledgeBase, Fact, evaluate_reference
from cds._compiler import CompiledRule, Literal
from cds._engine import RuleEngine

_VERSION = itertools.count(1)


def L(fact: str, op: str, value: Any = None) -> Literal:
    return Literal(fact, op, value)


RULES = (
    # stratum 0
    CompiledRule("R0", 0, 0, ((L("a", "is", True),),), (("x", True),)),
    CompiledRule("R0B", 0, 1, ((L("b", "missing"), L("c", "gt", 3)),), (("y", True),)),
    # stratum 1
    CompiledRule("R1", 1, 0, ((L("d", "is", True), L("x", "missing")),), (("z", True),)),
    CompiledRule("R1B", 1, 1, ((L("c", "ge", 2), L("x", "is", True)),), (("w", True),)),
    CompiledRule("R1C", 1, 2, ((L("a", "is", True), L("d", "is", True)),
                               (L("a", "is", True), L("c", "ge", 1)),
                               (L("c", "ge", 1), L("d", "is", True))), (("k", True),)),
    # stratum 2
    CompiledRule("R2", 2, 0, ((L("w", "is", True), L("y", "missing"), L("z", "missing")),),
                 (("v", True),)),
    CompiledRule("R2B", 2, 1, ((L("z", "is", True),),), (("u", True),)),
    CompiledRule("R2C", 2, 2, ((L("d", "is-not", True), L("y", "missing")),), (("t", True),)),
    CompiledRule("R2D", 2, 3, ((L("k", "is", True), L("b", "missing")),), (("n", True),)),
)


def _compiled(rules: tuple[CompiledRule, ...] = RULES) -> CompiledKnowledgeBase:
    names = {lit.fact for r in rules for t in r.terms for lit in t}
    names |= {n for r in rules for n, _ in r.derives}
    return CompiledKnowledgeBase(f"test-markers@0.{next(_VERSION)}", ("s0", "s1", "s2"),
                                 rules, frozenset(names))


COMPILED = _compiled()
ENGINE = RuleEngine(COMPILED)


def test_each_term_waits_for_the_marker_after_which_its_absent_facts_are_final() -> None:
    waits = {r.rule_id: w for r, w in zip(COMPILED.rules, COMPILED.waits_for, strict=True)}
    assert waits == {
        "R0": (None,),  # value tests only: fires whenever its facts are there
        "R0B": (None,),  # absence of an input fact: a test on the input message
        # the terms reading derived facts, all of earlier strata, are folded: each waits
        # for its own stratum's marker and is tested on its message
        "R1": (1,),  # absence of x, derived in stratum 0: final after stratum 0
        "R1B": (1,),
        "R1C": (None, None, None),
        "R2": (2,),  # z is derived in stratum 1
        "R2B": (2,),
        "R2C": (2,),  # y is derived in stratum 0; folded, its own stratum's marker
        "R2D": (2,),  # k is derived in stratum 1, b is an input fact
    }
    assert COMPILED.folded == {(2, 0), (3, 0), (5, 0), (6, 0), (7, 0), (8, 0)}
    assert COMPILED.markers == (1, 2)


def test_a_term_reading_a_fact_of_its_own_stratum_is_not_folded() -> None:
    """A term that reads a fact derived in its own stratum (or both before and in it)
    cannot be tested on its marker's message, which is sent before that fact may come:
    it keeps its join, and its marker only if an absence needs one."""
    rules = (
        CompiledRule("A0", 0, 0, ((L("c", "ge", 5),),), (("m", True),)),
        CompiledRule("A1", 1, 0, ((L("d", "is", True),),), (("p", True),)),
        CompiledRule("B1", 1, 1, ((L("p", "is", True), L("m", "missing")),), (("q", True),)),
        CompiledRule("C1", 1, 2, ((L("p", "is", True), L("m", "is", True)),), (("r", True),)),
    )
    compiled = _compiled(rules)
    assert compiled.folded == frozenset()
    assert compiled.waits_for == ((None,), (None,), (1,), (None,))


def test_a_fact_derived_in_two_strata_keeps_its_readers_and_producers_on_their_own_markers(
) -> None:
    """m is derived in strata 0 and 2 and read in stratum 1: its reader waits for marker 1
    and its stratum-2 producer for marker 2, the order every term kept before terms could
    go without a marker."""
    rules = (
        CompiledRule("M0", 0, 0, ((L("c", "ge", 5),),), (("m", True),)),
        CompiledRule("M1", 1, 0, ((L("m", "is", True),),), (("r", True),)),
        CompiledRule("M2", 2, 0, ((L("d", "is", True),),), (("m", True),)),
    )
    assert _compiled(rules).waits_for == ((None,), (1,), (2,))


# typed as the knowledge base's fact catalog types them (durable and the reference agree on
# typed facts; a bool where a number is tested is the front end's to refuse); every
# combination is run, 360 in all
_BOOLS = (None, True, False)
_B_VALUES = (None, True, False, "x", 3)
_NUMBERS = (None, 0, 1, 2, 3, 4, 5, 2.5)


def test_durable_agrees_with_the_reference_on_every_fact_set() -> None:
    for a, b, c, d in itertools.product(_BOOLS, _B_VALUES, _NUMBERS, _BOOLS):
        facts = [Fact(n, v) for n, v in (("a", a), ("b", b), ("c", c), ("d", d))
                 if v is not None]
        assert ENGINE.evaluate(facts) == evaluate_reference(COMPILED, facts), facts
