"""One evaluation in the decision core: facts in, plan out."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Literal

from cds._compiler import CompiledKnowledgeBase, compile_knowledge_base
from cds._engine import RuleEngine
from cds._engine_result import EngineResult
from cds._errors import InputIssue, InvalidInputError
from cds._facts import VALUE_KINDS, Fact, PatientFacts, Scalar, of_kind
from cds._knowledge_base import KnowledgeBase
from cds._plan import Plan, resolve_plan
from cds._reference import evaluate_reference
from cds._revision import (
    check_follow_up,
    follow_up_patient_facts,
    response_facts,
    revise_plan,
    with_check_in,
)
from cds._scores import derive_scores

__all__ = ["Evaluator"]


class Evaluator:
    """Compiles a knowledge base once and evaluates patients against it.

    ``engine="durable"`` runs durable-rules (production); ``"reference"`` runs the plain-Python
    oracle, which must give the same result. The per-exercise follow-up rules are compiled
    into their own ruleset (``{kb}@{version}/follow-up``) and run once per exercise of the
    previous plan, through the same engine.
    """

    def __init__(
        self, kb: KnowledgeBase, engine: Literal["durable", "reference"] = "durable", *,
        cache_size: int = 0,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 or more, got {cache_size}")
        self.kb = kb
        # what the rules derived, by exact set of input facts (least recently used out):
        # the rules are a pure function of the facts, so the same facts (the same chart
        # opened again) need not go through the engine again; 0 = off
        self.cache_size = cache_size
        self.cache_hits = 0
        self._cache: OrderedDict[tuple[tuple[str, str, Scalar], ...], EngineResult] = (
            OrderedDict())
        self._cache_lock = threading.Lock()
        self.compiled: CompiledKnowledgeBase = compile_knowledge_base(kb)
        self.compiled_follow_up: CompiledKnowledgeBase = compile_knowledge_base(
            kb, "exercise-response")
        self.engine_kind = engine
        self._engine = RuleEngine(self.compiled) if engine == "durable" else None
        self._follow_up_engine = (RuleEngine(self.compiled_follow_up)
                                  if engine == "durable" and self.compiled_follow_up.rules
                                  else None)
        self._bilateral = {n for n, d in kb.facts.items() if d.bilateral}
        # the value type of each fact the catalog declares (and of its sides): a derived
        # fact given as an input too (durable read `1` as a "yes" there as well; found by
        # review)
        self._types = {f"{n}{side}": VALUE_KINDS[d.type] for n, d in kb.facts.items()
                       if d.type in VALUE_KINDS
                       for side in (("", ".left", ".right") if d.bilateral else ("",))}

    def prepare(self, patient: PatientFacts) -> PatientFacts:
        """Add computed scores (lower side, asymmetry, clearing tests, totals) and, at a
        follow-up, the patient-level response facts (adherence, peripheralisation)."""
        facts = derive_scores(list(patient.facts), self._bilateral)
        if patient.follow_up is not None:
            check_follow_up(patient.follow_up)
            have = {f.name for f in facts}
            facts += [f for f in follow_up_patient_facts(patient.follow_up)
                      if f.name not in have and f.name in self.compiled.fact_names]
            facts.sort(key=lambda f: f.name)
        return dataclasses.replace(patient, facts=tuple(facts))

    def derive(self, patient: PatientFacts) -> EngineResult:
        unknown = sorted({f.name for f in patient.facts} - self.compiled.fact_names
                         - {f.name for f in patient.facts if "." in f.name})
        if unknown:
            raise InvalidInputError(
                [InputIssue("error", "not-supported", f"unknown fact '{n}'") for n in unknown]
            )
        mistyped = [f"fact '{f.name}' must be {want}, not {type(f.value).__name__}"
                    for f in patient.facts
                    if (want := self._types.get(f.name)) and not of_kind(f.value, want)]
        if mistyped:
            # durable and the reference read a value of another type differently (durable:
            # rf-fever = 1 is true, "9" > 5; the reference: neither): refuse it, by name
            raise InvalidInputError([InputIssue("error", "value", m) for m in mistyped])
        facts = list(patient.facts)
        return _given_not_derived(facts, self._cached_run(facts))

    def _cached_run(self, facts: list[Fact]) -> EngineResult:
        if not self.cache_size:
            return self._run(facts)
        # names are unique in PatientFacts, so sorting never compares values
        key = tuple(sorted((f.name, type(f.value).__name__, f.value) for f in facts))
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return hit
        result = self._run(facts)
        with self._cache_lock:
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def _run(self, facts: list[Fact]) -> EngineResult:
        if self._engine is not None:
            return self._engine.evaluate(facts)
        return evaluate_reference(self.compiled, facts)

    def derive_follow_up(self, patient: PatientFacts) -> dict[str, EngineResult]:
        """The per-exercise rules' results, by exercise id of the previous plan (exercises the
        previous plan had already stopped are not evaluated)."""
        fu = patient.follow_up
        if fu is None or not self.compiled_follow_up.rules:
            return {}
        responses = {r.exercise_id: r for r in fu.responses}
        read = self.compiled_follow_up.read_names
        shared = [f for f in patient.facts if f.name in read]
        out: dict[str, EngineResult] = {}
        for prev in sorted(fu.previous.exercises, key=lambda e: e.exercise_id):
            if prev.status == "stopped":
                continue
            facts = shared + response_facts(prev, responses.get(prev.exercise_id),
                                             patient.as_of)
            if self._follow_up_engine is not None:
                out[prev.exercise_id] = self._follow_up_engine.evaluate(facts)
            else:
                out[prev.exercise_id] = evaluate_reference(self.compiled_follow_up, facts)
        return out

    def resolve(self, prepared: PatientFacts, result: EngineResult) -> Plan:
        """The plan from what the rules derived for ``prepared`` (``prepare``'s output):
        resolved with its check-in, or, at a follow-up, the revision of the previous plan
        (the per-exercise rules run here)."""
        base = resolve_plan(self.kb, prepared, result)
        if prepared.follow_up is None:
            return with_check_in(self.kb, base)
        return revise_plan(self.kb, prepared, base, self.derive_follow_up(prepared))

    def evaluate(self, patient: PatientFacts) -> Plan:
        prepared = self.prepare(patient)
        return self.resolve(prepared, self.derive(prepared))


def _given_not_derived(facts: list[Fact], result: EngineResult) -> EngineResult:
    """``result``, unless a fact given as an input is one the rules derived too. Only the
    library's own callers can give a derived fact (the FHIR reader never reads one; the
    knowledge base's scenarios give findings to test later rules alone), and where a rule
    derives it as well the engines read the two differently (the reference keeps the rules'
    value; durable keeps both and fires the readers of each): refuse it, by name."""
    given = {f.name for f in facts}
    both = sorted(set(result.derived) & given)
    if both:
        raise InvalidInputError([InputIssue(
            "error", "business-rule",
            f"fact '{n}' is given as an input, but the rules derive it too: leave it out, "
            "or give what it is derived from") for n in both])
    return result
