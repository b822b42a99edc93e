"""Straight-line Python rules: the cost floor of issue 15's table. Benchmark only.

The compiled knowledge base turned into one generated Python function: every stratum in
order, inside a stratum the rules in an order where each rule comes after the rules whose
derived facts it reads (so one pass reaches the fixed point the reference evaluator loops
to), every term one ``if`` over a dict of fact values, with the reference evaluator's typed
comparisons (a bool never equals a number, a string only a string). Firings go through the
same ``FiringLog``, so the result is an ``EngineResult`` comparable with ``==``. A stratum
whose rules read each other in a cycle keeps a loop (none does in the bundled knowledge base).

The product never uses this: ``bench/speed.py`` checks that it gives the reference
evaluator's result on every patient it measures, then times the engine against it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cds import CompiledKnowledgeBase, EngineResult, Fact
from cds._compiler import Literal
from cds._engine_result import FiringLog

__all__ = ["straight_line"]


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(name: str, value: Any) -> str:
    """Python text: the value of ``name`` equals ``value`` in the reference's typed sense."""
    if isinstance(value, bool):
        return f"g({name!r}) is {value!r}"
    if isinstance(value, str):
        return f"g({name!r}) == {value!r}"
    return f"(type(g({name!r})) in _NUM and g({name!r}) == {value!r})"


def _test(lit: Literal) -> str:
    n, v = lit.fact, lit.value
    match lit.op:
        case "missing":
            return f"{n!r} not in v"
        case "present":
            return f"{n!r} in v"
        case "is":
            return _same(n, v)
        case "is-not":
            return f"({n!r} in v and not {_same(n, v)})"
        case "in":
            return "(" + " or ".join(_same(n, x) for x in v) + ")"
        case "not-in":
            return f"({n!r} in v and not (" + " or ".join(_same(n, x) for x in v) + "))"
    sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}[lit.op]
    if not _num(v):
        return "False"
    return f"(type(g({n!r})) in _NUM and g({n!r}) {sym} {v!r})"


def _ordered(compiled: CompiledKnowledgeBase, stratum: int) -> tuple[list[int], bool]:
    """Rule indexes of a stratum, producers before readers; and whether that was possible."""
    mine = [i for i, r in enumerate(compiled.rules) if r.stratum == stratum]
    produces = {i: {n for n, _ in compiled.rules[i].derives} for i in mine}
    reads = {i: {lit.fact for t in compiled.rules[i].terms for lit in t} for i in mine}
    out: list[int] = []
    left = list(mine)
    while left:
        ready = [i for i in left
                 if not any(reads[i] & produces[j] for j in left if j != i)]
        if not ready:
            return mine, False
        out += ready
        left = [i for i in left if i not in ready]
    return out, True


def _source(compiled: CompiledKnowledgeBase) -> str:
    lines = ["def run(v, log):", "    g = v.get"]
    for stratum in range(len(compiled.strata)):
        order, acyclic = _ordered(compiled, stratum)
        pad = "    "
        if not acyclic:
            lines += [f"{pad}fired = set()", f"{pad}again = True", f"{pad}while again:",
                      f"{pad}    again = False"]
            pad += "    "
        for ri in order:
            for ti, term in enumerate(compiled.rules[ri].terms):
                cond = " and ".join(_test(lit) for lit in term) or "True"
                if acyclic:
                    lines.append(f"{pad}if {cond}:")
                else:
                    lines.append(f"{pad}if ({ri}, {ti}) not in fired and {cond}:")
                    lines.append(f"{pad}    fired.add(({ri}, {ti})); again = True")
                lines.append(f"{pad}    for n, x in log.fire({ri}, {ti}): v[n] = x")
    return "\n".join(lines) + "\n"


def straight_line(compiled: CompiledKnowledgeBase) -> Callable[[list[Fact]], EngineResult]:
    """The compiled rules as one generated function of the facts."""
    scope: dict[str, Any] = {"_NUM": (int, float)}
    exec(compile(_source(compiled), f"<straight-line {compiled.name}>", "exec"), scope)
    run = scope["run"]

    def evaluate(facts: list[Fact]) -> EngineResult:
        log = FiringLog(compiled)
        run({f.name: f.value for f in facts}, log)
        return log.result()

    return evaluate
