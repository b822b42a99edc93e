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
    """Records firings; returns the derived facts that are new (to assert in the session).

    A firing is kept as the rank of its ``Derivation`` in the knowledge base's sorted list
    of them (``CompiledKnowledgeBase.derivation_ranks``): the sorted, de-duplicated tuples
    of the result are then sorts of small ints."""

    def __init__(self, compiled: CompiledKnowledgeBase) -> None:
        self._compiled = compiled
        self._ranks, self._ordered = compiled.derivation_ranks
        self._values: dict[str, Any] = {}
        self._firings: set[int] = set()
        self._by_name: dict[str, set[int]] = {}

    def fire(self, rule_index: int, term_index: int) -> list[tuple[str, Any]]:
        rule = self._compiled.rules[rule_index]
        rank = self._ranks[rule_index][term_index]
        self._firings.add(rank)
        new: list[tuple[str, Any]] = []
        for name, value in rule.derives:
            ranks = self._by_name.get(name)
            if ranks is None:
                ranks = self._by_name[name] = set()
            ranks.add(rank)
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
        ordered = self._ordered
        derived = {
            name: DerivedFact(name, self._values[name], tuple(ordered[r] for r in sorted(rs)))
            for name, rs in sorted(self._by_name.items())
        }
        return EngineResult(self._compiled.name, derived,
                            tuple(ordered[r] for r in sorted(self._firings)))
