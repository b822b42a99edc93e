"""durable-rules' alpha matcher walks its network depth first with a stack of 64 nodes and
fails the assert past it (error 303). Input facts are tested on one message
(``CompiledKnowledgeBase.packed_keys``), so many tests on it can be pending at once: the
compiler bounds the stack (``alpha_stack_bound``, every test taken to hold) and refuses at
load time a knowledge base over ``_STACK_LIMIT``, where an evaluation would have failed.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import durable_rules_engine
import pytest
from typer.testing import CliRunner

from cds import CompiledKnowledgeBase, KnowledgeBaseError, load_knowledge_base
from cds._compiler import _STACK_LIMIT, CompiledRule, Literal, compile_knowledge_base
from cds._engine import _WARM_UP, _WARM_UP_RULE, _warm_up
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
    definition = compiled._definition(compiled._groups)[0] | {_WARM_UP: _WARM_UP_RULE}
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
