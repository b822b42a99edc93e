"""The input message (``CompiledKnowledgeBase.packed_keys``): every input fact a rule reads
and none derives is a property of one message per evaluation, checked to come back whole."""

from __future__ import annotations

import durable_rules_engine
import pytest

import cds._engine as engine
from cds import CompiledKnowledgeBase, EngineError, Fact, evaluate_reference
from cds._compiler import CompiledRule, Literal
from cds._engine import RuleEngine


class _Losing:
    """durable's C layer, with ``get_facts`` losing part of what was asserted."""

    def __init__(self, real: object, lose: str, instead: str) -> None:
        self._real, self._lose, self._instead = real, lose, instead

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def get_facts(self, handle: int, sid: str) -> str:
        text: str = self._real.get_facts(handle, sid)  # type: ignore[attr-defined]
        return text.replace(self._lose, self._instead, 1)


def test_an_input_fact_lost_inside_the_engine_fails_the_evaluation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Safety rule 6: each input message must come back as it was sent, and each input
    fact sent alone by its id; a property missing from the input message, or a lone input
    fact missing, fails the evaluation and names the message or fact."""
    rules = (CompiledRule("R", 0, 0, ((Literal("a", "is", True),),), (("x", True),)),
             CompiledRule("S", 0, 0, ((Literal("x", "is", True), Literal("b", "present")),),
                          (("y", True),)))
    compiled = CompiledKnowledgeBase("lost-input@1.0", ("s0",), rules,
                                     frozenset({"a", "b", "x", "y"}))
    run = RuleEngine(compiled)
    facts = [Fact("a", True), Fact("b", 2), Fact("x", True)]  # x: derived, given as input
    assert run.evaluate(facts) == evaluate_reference(compiled, facts)
    b_key = compiled.packed_keys["b"][2]
    for lose, instead, named in ((f',"{b_key}":2', "", "f:c0"),
                                 ('"id":"f:x"', '"id":"d:x"', "f:x")):
        monkeypatch.setattr(engine, "_c", _Losing(durable_rules_engine, lose, instead))
        with pytest.raises(EngineError, match="lost inside the engine") as caught:
            run.evaluate(facts)
        assert caught.value.details == [named], caught.value
        monkeypatch.undo()


def test_more_input_facts_than_one_message_holds_go_in_several() -> None:
    """durable takes at most 255 properties in a message: 450 input facts go in 3 messages,
    and a term on facts of several is one pattern per message; durable equals the
    reference on fact sets that hold, miss or contradict each term."""
    import random

    names = [f"a{i:03d}" for i in range(450)]
    hits = [CompiledRule(f"HIT{n}", 0, 3, ((Literal(n, "is", 5),),), (("hit", True),))
            for n in names]
    rules = (
        CompiledRule("ACROSS", 0, 0, ((Literal("a000", "is", True), Literal("a449", "gt", 3),
                                       Literal("a210", "missing")),), (("x", True),)),
        CompiledRule("LATER", 0, 1, ((Literal("x", "is", True), Literal("a300", "le", 1)),),
                     (("y", True),)),
        CompiledRule("ABSENT", 0, 2, ((Literal("a401", "missing"),
                                       Literal("a402", "not-in", [1, 2])),), (("z", True),)),
        *hits,
    )
    compiled = CompiledKnowledgeBase("many-inputs@1.0", ("s0",), rules,
                                     frozenset(names) | {"x", "y", "z", "hit"})
    assert compiled.chunks == 3
    assert {compiled.packed_keys[n][0] for n in ("a000", "a210", "a449")} == {0, 1, 2}
    rng = random.Random(15)
    run = RuleEngine(compiled)
    read = ["a000", "a449", "a210", "a300", "a401", "a402"]
    fired = set()
    for _ in range(300):
        chosen = [n for n in read + rng.sample(names, 40) if rng.random() < 0.6]
        facts = [Fact(n, True if n == "a000" and rng.random() < 0.8 else rng.randint(0, 5))
                 for n in sorted(set(chosen))]
        result = run.evaluate(facts)
        assert result == evaluate_reference(compiled, facts), facts
        fired |= {f.rule_id for f in result.firings}
    assert {"ACROSS", "LATER", "ABSENT"} <= fired and len(fired) > 100


def test_a_term_with_more_tests_than_one_pattern_takes_is_split_over_several() -> None:
    """durable refuses a ruleset with a pattern of more than 31 entries in its expression
    list (each ``$and`` and ``$or`` takes two; an ``in`` is an ``$or``). A term with 20
    ``in`` tests on input facts is two patterns on the input message, in a rule that lets
    one message match both (``dist`` 0); durable equals the reference on fact sets that
    pass all 20, all but one, and miss one. The control: as one pattern, durable refuses
    the ruleset (error 113)."""
    import json
    import random

    term = tuple(Literal(f"b{i:02d}", "in", [1, 2]) for i in range(20))
    rules = (CompiledRule("WIDE", 0, 0, (term,), (("x", True),)),)
    compiled = CompiledKnowledgeBase("wide-term@1.0", ("s0",), rules,
                                     frozenset({f"b{i:02d}" for i in range(20)} | {"x"}))
    definition = compiled.durable_definition()
    assert len(definition["0:0"]["all"]) == 2 and definition["0:0"]["dist"] == 0
    run = RuleEngine(compiled)
    rng = random.Random(7)
    for k in range(60):
        values = {f"b{i:02d}": rng.choice([1, 2]) for i in range(20)}
        if k % 3 == 1:
            values[f"b{rng.randrange(20):02d}"] = 3
        elif k % 3 == 2:
            del values[f"b{rng.randrange(20):02d}"]
        facts = [Fact(n, v) for n, v in sorted(values.items())]
        assert run.evaluate(facts) == evaluate_reference(compiled, facts), values
    one = {"all": [{"in0": {"$and": [t for p in definition["0:0"]["all"]
                                     for t in p[next(iter(p))]["$and"]]}}]}
    with pytest.raises(Exception, match="113"):
        durable_rules_engine.create_ruleset("wide-term-one-pattern@1.0", json.dumps({"r": one}))


def test_a_fact_given_twice_is_refused_whichever_message_it_goes_in() -> None:
    """Two values for one fact: refused, not one of them read (an input fact in the input
    message, refused by the runner; a derived fact given as an input, alone, refused by
    durable as an id seen twice)."""
    rules = (CompiledRule("R", 0, 0, ((Literal("a", "is", True),),), (("x", True),)),
             CompiledRule("S", 0, 0, ((Literal("x", "is", True),),), (("y", True),)))
    compiled = CompiledKnowledgeBase("twice@1.0", ("s0",), rules, frozenset({"a", "x", "y"}))
    run = RuleEngine(compiled)
    for facts in ([Fact("a", True), Fact("a", False)], [Fact("x", True), Fact("x", True)]):
        with pytest.raises(EngineError, match="twice"):
            run.evaluate(facts)
    facts = [Fact("a", True)]
    assert run.evaluate(facts) == evaluate_reference(compiled, facts)  # the session is clean
