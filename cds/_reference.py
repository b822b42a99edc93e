"""The plain-Python reference evaluator: the same compiled rules, no Rete.

It is the test oracle (durable-rules must agree with it on every patient) and the measure of
how far the engine is from the cost floor. Semantics: strata in order; inside a stratum,
fire every term whose literals all hold until nothing new is derived.
"""

from __future__ import annotations

from typing import Any

from cds._compiler import CompiledKnowledgeBase, Literal
from cds._engine_result import EngineResult, FiringLog
from cds._facts import Fact

__all__ = ["evaluate_reference", "literal_holds"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def literal_holds(lit: Literal, values: dict[str, Any]) -> bool:
    if lit.op == "missing":
        return lit.fact not in values
    if lit.fact not in values:
        return False
    v = values[lit.fact]
    match lit.op:
        case "present":
            return True
        case "is":
            return _same(v, lit.value)
        case "is-not":
            return not _same(v, lit.value)
        case "in":
            return any(_same(v, x) for x in lit.value)
        case "not-in":
            return not any(_same(v, x) for x in lit.value)
    if not (_num(v) and _num(lit.value)):
        return False
    match lit.op:
        case "lt":
            return bool(v < lit.value)
        case "le":
            return bool(v <= lit.value)
        case "gt":
            return bool(v > lit.value)
        case "ge":
            return bool(v >= lit.value)
    raise AssertionError(lit.op)


def evaluate_reference(compiled: CompiledKnowledgeBase, facts: list[Fact]) -> EngineResult:
    values: dict[str, Any] = {f.name: f.value for f in facts}
    log = FiringLog(compiled)
    for stratum in range(len(compiled.strata)):
        rules = [(i, r) for i, r in enumerate(compiled.rules) if r.stratum == stratum]
        fired: set[tuple[int, int]] = set()
        changed = True
        while changed:
            changed = False
            for ri, rule in rules:
                for ti, term in enumerate(rule.terms):
                    if (ri, ti) in fired:
                        continue
                    if all(literal_holds(lit, values) for lit in term):
                        fired.add((ri, ti))
                        changed = True
                        for name, value in log.fire(ri, ti):
                            values[name] = value
    return log.result()
