"""What an evaluation derived, collected the same way by the engine and by the oracle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds._compiler import CompiledKnowledgeBase
from cds._errors import EngineError
from cds._facts import Derivation, DerivedFact

__all__ = ["EngineResult", "FiringLog"]


@dataclass(frozen=True)
class EngineResult:
    ruleset: str
    derived: dict[str, DerivedFact]
    firings: tuple[Derivation, ...]


class FiringLog:
    """Records firings; returns the derived facts that are new (to assert in the session)."""

    def __init__(self, compiled: CompiledKnowledgeBase) -> None:
        self._compiled = compiled
        self._values: dict[str, Any] = {}
        self._firings: list[Derivation] = []
        self._by_name: dict[str, list[Derivation]] = {}

    def fire(self, rule_index: int, term_index: int) -> list[tuple[str, Any]]:
        rule = self._compiled.rules[rule_index]
        d = self._compiled.derivations[rule_index][term_index]
        self._firings.append(d)
        new: list[tuple[str, Any]] = []
        for name, value in rule.derives:
            self._by_name.setdefault(name, []).append(d)
            if name in self._values:
                if self._values[name] != value or type(self._values[name]) is not type(value):
                    raise EngineError(
                        f"rules disagree on '{name}': {self._values[name]!r} and {value!r} "
                        f"(second from {rule.rule_id}); the knowledge base must not derive two "
                        "values for one fact",
                    )
                continue
            self._values[name] = value
            new.append((name, value))
        return new

    def result(self) -> EngineResult:
        derived = {
            name: DerivedFact(name, self._values[name], tuple(sorted(set(ds), key=_order)))
            for name, ds in sorted(self._by_name.items())
        }
        return EngineResult(self._compiled.name, derived,
                            tuple(sorted(set(self._firings), key=_order)))


def _order(d: Derivation) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``Derivation``'s own order (its fields in turn), compared as a tuple."""
    return d.rule_id, d.used, d.absent
