"""durable-rules' alpha network has two limits an evaluation must never meet (safety rule 11).

Its matcher walks the network depth first with a stack of 64 nodes and fails the assert
past it (error 303). Input facts are tested on one message
(``CompiledKnowledgeBase.packed_keys``), so many tests on it can be pending at once: the
compiler bounds the stack (``alpha_stack_bound``, every test taken to hold) and refuses at
load time a knowledge base over ``_STACK_LIMIT``. And it lists the patterns ending at one
node in 256 entries that must end in a 0, reading past a full list: the compiler refuses
more than ``_SHARED_LIMIT`` (``alpha_patterns_per_node``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import durable_rules_engine
import pytest
from typer.testing import CliRunner

from cds import (
    CompiledKnowledgeBase,
    Fact,
    KnowledgeBaseError,
    evaluate_reference,
    load_knowledge_base,
)
from cds._compiler import _STACK_LIMIT, CompiledRule, Literal, compile_knowledge_base
from cds._engine import _WARM_UP, _WARM_UP_RULE, RuleEngine, _warm_up
from knowledge_base import bundled_path
from movement_cds._cli import app

_VERSION = itertools.count(1)


def _thresholds(n: int) -> CompiledKnowledgeBase:
    """n rules, each ``pain ge k``: a pain above every threshold passes all n tests, each a
    child of the same node."""
    rules = tuple(CompiledRule(f"R{k}", 0, 0, ((Literal("pain", "ge", k),),), ((f"x{k}", True),))
                  for k in range(n))
    return CompiledKnowledgeBase(f"alpha-stack@0.{next(_VERSION)}", ("s0",), rules,
                                 frozenset({"pain"} | {f"x{k}" for k in range(n)}))


def test_the_bundled_knowledge_base_is_within_the_bound() -> None:
    kb = load_knowledge_base(bundled_path())
    for scope in ("patient", "exercise-response"):
        compiled = compile_knowledge_base(kb, scope)
        assert compiled.alpha_stack_bound <= _STACK_LIMIT
        compiled.durable_definition()


def test_a_knowledge_base_over_the_bound_is_refused_at_load_time() -> None:
    compiled = _thresholds(70)
    assert compiled.alpha_stack_bound > _STACK_LIMIT
    with pytest.raises(KnowledgeBaseError, match="too many ways at once"):
        compiled.durable_definition()


def _asserts(compiled: CompiledKnowledgeBase) -> str:
    """Assert to durable, with the limit unchecked, the input message of a pain above every
    threshold: "ok" or durable's error."""
    unchecked = compiled._definition(compiled._groups, compiled.folded)[0]
    definition = unchecked | {_WARM_UP: _WARM_UP_RULE}
    handle = durable_rules_engine.create_ruleset(compiled.name, json.dumps(definition))
    _warm_up(handle)  # safety rule 9, as the engine does
    key = compiled.packed_keys["pain"][2]
    groups = "".join(f',"{g}":1' for g in compiled.chunk_groups(0))
    message = f'{{"sid":"s1","id":"f:c0","h":1,"c0":1{groups},"{key}":100}}'
    try:
        durable_rules_engine.assert_facts(handle, f"[{message}]")
        return "ok"
    except Exception as e:  # durable raises a bare Exception with its error code
        return str(e)
    finally:
        try:
            durable_rules_engine.delete_state(handle, "s1")
        except Exception:
            pass


def test_the_bound_is_real_and_never_below_durable() -> None:
    """The control: given to durable unchecked, 70 thresholds fail with error 303 (its
    stack is full). Around durable's 64 the bound is at most two above the stack durable
    really fills (it fails from 64 thresholds, bound 66), never below it: each rule set
    with a bound of 64 or less is taken."""
    outcomes = {n: (_thresholds(n).alpha_stack_bound, _asserts(_thresholds(n)))
                for n in (40, 60, 62, 63, 64, 70)}
    assert "303" in outcomes[70][1]
    for n, (bound, outcome) in outcomes.items():
        assert (outcome == "ok") == (bound <= 65), (n, bound, outcome)


def test_kb_validate_reports_a_knowledge_base_over_the_bound(kb_copy: Path) -> None:
    """An author sees the limit at ``kb validate``, not at an evaluation: one rule whose
    condition is any of 70 thresholds on one fact is 70 terms, each a test under the same
    node."""
    rules = kb_copy / "rules" / "movement-screen.yaml"
    text = rules.read_text()
    old = "      fact: fms-rotary-stability\n      le: {param: fms-deficit-max-score}\n"
    assert old in text
    many = ", ".join(f"{{fact: fms-rotary-stability, ge: {-k}}}" for k in range(1, 71))
    rules.write_text(text.replace(old, f"      any: [{many}]\n", 1))
    result = CliRunner().invoke(app, ["kb", "validate", str(kb_copy)])
    assert result.exit_code == 1, result.output
    assert "too many ways at once" in result.output


def _waiting_for_one_marker(n: int) -> CompiledKnowledgeBase:
    """n rules in stratum 1, each testing that d (derived in stratum 0) is missing and e
    (derived in stratum 1: not folded, ``CompiledKnowledgeBase.folded``) is there: all n
    wait for marker 1, so n patterns end at the one alpha node of ``stratum = 1``."""
    rules = [CompiledRule("D", 0, 0, ((Literal("x", "is", 1),),), (("d", True),)),
             CompiledRule("E", 1, 0, ((Literal("z", "is", 1),),), (("e", True),))]
    rules += [CompiledRule(f"R{k}", 1, 1, ((Literal("d", "missing"), Literal("e", "present"),
                                             Literal(f"y{k % 3}", "present")),),
                           ((f"a{k}", True),)) for k in range(n)]
    names = {"x", "d", "z", "e", "y0", "y1", "y2"} | {f"a{k}" for k in range(n)}
    return CompiledKnowledgeBase(f"shared-node@0.{next(_VERSION)}", ("s0", "s1"),
                                 tuple(rules), frozenset(names))


_FACT_SETS = ([Fact("x", 1), Fact("z", 1)], [Fact("y0", 1), Fact("z", 1)],
              [Fact("x", 0), Fact("y1", 1), Fact("z", 1)], [Fact("z", 1)], [])


def test_more_patterns_at_one_node_than_durable_lists_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """durable lists the patterns that end at an alpha node in 256 entries ending in a 0,
    and reads past a full list into the next one: with 256 rules waiting for one stratum
    marker, it fired rules whose condition did not hold (found by review). At most 250 are
    taken, and give the reference's results; 256 are refused at load time, naming the
    limit. The control: with the limit lifted, durable's result for 256 differs from the
    reference's."""
    taken = _waiting_for_one_marker(250)
    assert taken.alpha_patterns_per_node == 250
    engine = RuleEngine(taken)
    for facts in _FACT_SETS:
        assert engine.evaluate(facts) == evaluate_reference(taken, facts), facts
    refused = _waiting_for_one_marker(256)
    with pytest.raises(KnowledgeBaseError, match="the same test"):
        refused.durable_definition()
    monkeypatch.setattr("cds._compiler._SHARED_LIMIT", 10_000)
    unchecked = RuleEngine(refused)
    outcomes = [unchecked.evaluate(facts) == evaluate_reference(refused, facts)
                for facts in _FACT_SETS]
    assert not all(outcomes), "durable no longer misreads a full list: revisit rule 11"


def _in_chain(k: int, v: int, tag: str) -> CompiledKnowledgeBase:
    """One rule reading k facts derived a stratum before, each ``in`` v codes: folded, its
    tests are one chain on the marker's message (the ``$or`` of each ``in`` after the last),
    where unfolded each fact had a pattern of its own."""
    codes = [f"c{j}" for j in range(v)]
    rules = [CompiledRule(f"D{i}", 0, 0, ((Literal(f"x{i}", "in", codes),),),
                          ((f"d{i}", "c0"),)) for i in range(k)]
    rules.append(CompiledRule("ALL", 1, 0, (tuple(Literal(f"d{i}", "in", codes)
                                                  for i in range(k)),), (("alert", True),)))
    names = ({f"x{i}" for i in range(k)} | {f"d{i}" for i in range(k)} | {"alert"})
    return CompiledKnowledgeBase(f"in-chain-{tag}@{k}.{v}", ("s0", "s1"), tuple(rules),
                                 frozenset(names))


def test_folding_that_would_overflow_the_bound_keeps_the_joins() -> None:
    """Found by review: four derived facts each ``in`` 16 codes, folded, bound 64 (every
    ``$or`` counted as holding whole), and the knowledge base, taken before folding (bound
    22), was refused. Now such a knowledge base is not folded: it loads as before and equals
    the reference. A chain that fits stays folded; and the bound of a long chain of ``$or``
    joins is worked out once per node (before: 3**13 ways, seconds; 6**20 never ended)."""
    wide = _in_chain(4, 16, "wide")
    assert wide._fold_candidates and not wide.folded
    assert wide.alpha_stack_bound <= 56
    engine = RuleEngine(wide)
    for codes in (("c1", "c0", "c0", "c0"), ("c1", "c5", "c0", "c0"), ("c1", "c0", "c0")):
        facts = [Fact(f"x{i}", c) for i, c in enumerate(codes)]
        assert engine.evaluate(facts) == evaluate_reference(wide, facts), facts
    assert _in_chain(13, 3, "long").folded  # fits: folded
    assert not _in_chain(20, 6, "longer").folded  # over the bound folded: joins
