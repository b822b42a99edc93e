"""The plain-Python reference evaluator: the same compiled rules, no Rete.

It is the test oracle (durable-rules must agree with it on every patient) and the measure of
how far the engine is from the cost floor. Semantics: strata in order; inside a stratum,
fire every term whose literals all hold until nothing new is derived.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar, cast

from cds._compiler import CompiledKnowledgeBase, Literal
from cds._engine_result import EngineResult, FiringLog
from cds._facts import Fact

__all__ = ["evaluate_reference", "holding", "literal_holds", "literal_test"]


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
    """``literal_holds`` for one literal as a function of the values alone (``holding``)."""
    test = holding([(True, (lit,))])
    return lambda values: bool(test(values))


_T = TypeVar("_T")
# the comparisons written out (both numbers: a boolean is not one)
_OPERATORS: Final = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def holding(terms: Sequence[tuple[_T, Sequence[Literal]]]
            ) -> Callable[[dict[str, Any]], list[_T]]:
    """A function of the values giving, in order, each term whose literals all hold as
    ``literal_holds`` reads them (a term with none always holds).

    It is one function written for these terms (the runner's test of the alternatives a
    firing stands for, safety rule 13): each distinct literal is tested once, the common
    forms (an absence or presence, ``is`` a boolean, a text or a number, a comparison with
    a number) as Python expressions, any other by calling ``literal_holds``. Its text holds
    only local names, indexes and operators: facts, values and terms are bound to it as
    constants, so no text from a knowledge base is ever compiled.
    (tests/test_engine_alternatives.py checks it against ``literal_holds``.)"""
    constants: list[Any] = []

    def const(x: Any) -> str:
        constants.append(x)
        return f"c{len(constants) - 1}"

    lines: list[str] = []
    names: dict[tuple[str, str, str], str] = {}  # a literal (fact, op, value's repr) -> local
    for term, literals in terms:
        local = []
        for lit in literals:
            key = (lit.fact, lit.op, repr(lit.value))
            if key not in names:
                names[key] = f"l{len(names)}"
                lines.append(f"    {names[key]} = {_expression(lit, const)}")
            local.append(names[key])
        lines.append(f"    if {' and '.join(local) or 'True'}: held.append({const(term)})")
    source = (f"def bind({', '.join(f'c{i}' for i in range(len(constants)))}):\n"
              "  def test(values):\n    get = values.get\n    held = []\n"
              + "\n".join(lines)
              + "\n    return held\n  return test\n")
    namespace: dict[str, Any] = {"literal_holds": literal_holds, "_bool_str": (bool, str),
                                 "_int_float": (int, float)}
    exec(compile(source, "<cds._reference.holding>", "exec"), namespace)
    return cast(Callable[[dict[str, Any]], list[_T]], namespace["bind"](*constants))


def _expression(lit: Literal, const: Callable[[Any], str]) -> str:
    """``literal_holds(lit, values)`` as a Python expression (``holding``)."""
    op, value = lit.op, lit.value
    if op == "missing":
        return f"{const(lit.fact)} not in values"
    if op == "present":
        return f"{const(lit.fact)} in values"
    if op == "is" and isinstance(value, bool):  # _same: both booleans, equal
        return f"get({const(lit.fact)}) is {const(value)}"
    if op == "is" and isinstance(value, str):  # _same: both texts, equal
        return f"isinstance(_v := get({const(lit.fact)}), str) and _v == {const(value)}"
    if op == "is" and _num(value):  # _same: neither a boolean nor a text, equal
        f = const(lit.fact)
        return (f"{f} in values and not isinstance(_v := values[{f}], _bool_str) "
                f"and bool(_v == {const(value)})")
    if op in _OPERATORS and _num(value):
        return (f"isinstance(_v := get({const(lit.fact)}), _int_float) "
                f"and not isinstance(_v, bool) and bool(_v {_OPERATORS[op]} {const(value)})")
    return f"literal_holds({const(lit)}, values)"


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
