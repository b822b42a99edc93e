"""Safety rule 9: a ruleset's first session fires the warm-up rule, whatever the rules are.

durable-rules 2.0.28 never clears the pool its session records live in, and deleting a
session frees the two action-context pointers of its record if they are not null: a pool
slot no firing session ever used frees whatever bytes were there ("free(): invalid
pointer", an abort, or a corrupted heap). The engine used to warm a new ruleset up with facts
it built to fire one of the knowledge base's own rules, and found none for a rule set whose
rules only test ``is-not`` (the random knowledge bases of ``tests/test_review_engine2.py``
aborted the process that way). Each check runs in a child process, since the failure is an
abort; the control run switches the warm-up off and must abort.
"""

from __future__ import annotations

import subprocess
import sys

from cds import CompiledKnowledgeBase, Fact, evaluate_reference
from cds._compiler import CompiledRule, Literal
from cds._engine import RuleEngine

# 30 new rulesets, each first evaluated on facts that fire none of its rules: only is-not
# tests, which no fact value built from the rule itself satisfies
CHILD = """
import sys
from cds import CompiledKnowledgeBase, Fact, evaluate_reference
from cds._compiler import CompiledRule, Literal
import cds._engine as engine
if sys.argv[1] == "off":
    engine._warm_up = lambda handle: None
for k in range(30):
    rules = (CompiledRule("R", 0, 0, ((Literal("a", "is-not", True),),), (("x", True),)),)
    compiled = CompiledKnowledgeBase(f"warm-up-{k}@1.0", ("s0",), rules,
                                     frozenset({"a", "x"}))
    run = engine.RuleEngine(compiled)
    for facts in ([Fact("a", True)], [], [Fact("a", False)]):
        assert run.evaluate(facts) == evaluate_reference(compiled, facts), facts
print("ok")
"""


def _child(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True,
                          text=True, timeout=300)


def test_a_first_session_that_fires_none_of_the_rules_does_not_abort_the_process() -> None:
    out = _child("on")
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr[-800:]


def test_without_the_warm_up_the_same_child_aborts() -> None:
    """The control: the check above can fail. 30 rulesets are enough for the garbage in
    the never-used records to be freed at least once."""
    out = _child("off")
    assert out.returncode != 0, "durable-rules no longer aborts: revisit safety rule 9"


def test_the_warm_up_rule_is_part_of_every_ruleset_and_no_fact_fires_it() -> None:
    rules = (CompiledRule("R", 0, 0, ((Literal("warm-up", "present"),),), (("x", True),)),)
    compiled = CompiledKnowledgeBase("warm-up-named@1.0", ("s0",), rules,
                                     frozenset({"warm-up", "x"}))
    engine = RuleEngine(compiled)  # a fact named like the warm-up property fires its rule
    facts = [Fact("warm-up", 1)]
    assert engine.evaluate(facts) == evaluate_reference(compiled, facts)
    assert [f.rule_id for f in engine.evaluate(facts).firings] == ["R"]

