"""The plain-Python reference evaluator: the same compiled rules, no Rete.

It is the test oracle (durable-rules must agree with it on every patient) and the measure of
how far the engine is from the cost floor. Semantics: strata in order; inside a stratum,
fire every term whose literals all hold until nothing new is derived.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from cds._compiler import CompiledKnowledgeBase, Literal
from cds._engine_result import EngineResult, FiringLog
from cds._facts import Fact

__all__ = ["evaluate_reference", "literal_holds", "literal_test"]


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


def literal_test(lit: Literal) -> Callable[[dict[str, Any]], bool]:
    """``literal_holds`` for one literal as a function of the values alone: the common
    forms (an absence or presence, ``is`` a boolean, a text or a number) written out, any
    other by ``literal_holds`` (tests/test_engine_alternatives.py checks both agree)."""
    fact, op, value = lit.fact, lit.op, lit.value
    if op == "missing":
        return lambda values: fact not in values
    if op == "present":
        return lambda values: fact in values
    if op == "is" and isinstance(value, bool):  # _same: both booleans, equal
        return lambda values: values.get(fact) is value
    if op == "is" and isinstance(value, str):  # _same: both texts, equal
        return lambda values: isinstance(v := values.get(fact), str) and v == value
    if op == "is" and _num(value):  # _same: neither a boolean nor a text, equal
        return lambda values: (fact in values and not isinstance(v := values[fact], bool | str)
                               and bool(v == value))
    compare = _COMPARE.get(op)
    if compare is not None and _num(value):  # both numbers (a boolean is not one), compared
        return lambda values: (isinstance(v := values.get(fact), int | float)
                               and not isinstance(v, bool) and bool(compare(v, value)))
    return lambda values: literal_holds(lit, values)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge}


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
