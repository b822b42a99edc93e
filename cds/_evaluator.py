"""One evaluation in the decision core: facts in, plan out."""

from __future__ import annotations

from typing import Literal

from cds._compiler import CompiledKnowledgeBase, compile_knowledge_base
from cds._engine import RuleEngine
from cds._engine_result import EngineResult
from cds._errors import InvalidInputError
from cds._facts import PatientFacts
from cds._knowledge_base import KnowledgeBase
from cds._plan import Plan, resolve_plan
from cds._reference import evaluate_reference
from cds._scores import derive_scores

__all__ = ["Evaluator"]


class Evaluator:
    """Compiles a knowledge base once and evaluates patients against it.

    ``engine="durable"`` runs durable-rules (production); ``"reference"`` runs the plain-Python
    oracle, which must give the same result.
    """

    def __init__(
        self, kb: KnowledgeBase, engine: Literal["durable", "reference"] = "durable"
    ) -> None:
        self.kb = kb
        self.compiled: CompiledKnowledgeBase = compile_knowledge_base(kb)
        self.engine_kind = engine
        self._engine = RuleEngine(self.compiled) if engine == "durable" else None
        self._bilateral = {n for n, d in kb.facts.items() if d.bilateral}

    def prepare(self, patient: PatientFacts) -> PatientFacts:
        """Add computed scores (lower side, asymmetry, clearing tests, totals)."""
        facts = derive_scores(list(patient.facts), self._bilateral)
        return PatientFacts(patient.subject, patient.as_of, tuple(facts), patient.issues,
                            patient.extras)

    def derive(self, patient: PatientFacts) -> EngineResult:
        unknown = sorted({f.name for f in patient.facts} - self.compiled.fact_names
                         - {f.name for f in patient.facts if "." in f.name})
        if unknown:
            from cds._errors import InputIssue

            raise InvalidInputError(
                [InputIssue("error", "not-supported", f"unknown fact '{n}'") for n in unknown]
            )
        facts = list(patient.facts)
        if self._engine is not None:
            return self._engine.evaluate(facts)
        return evaluate_reference(self.compiled, facts)

    def evaluate(self, patient: PatientFacts) -> Plan:
        prepared = self.prepare(patient)
        return resolve_plan(self.kb, prepared, self.derive(prepared))
