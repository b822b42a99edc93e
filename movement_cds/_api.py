"""The public Python facade: FHIR in, FHIR and a plain-language summary out."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cds import (
    EngineResult,
    Evaluator,
    InputIssue,
    KnowledgeBase,
    PatientFacts,
    Plan,
    load_knowledge_base,
)
from fhir_adapters import InvalidBundleError, read_bundle, write_bundle
from knowledge_base import bundled_path
from movement_cds._summary import render_summary

__all__ = [
    "DecisionSupport",
    "Evaluation",
    "Pipeline",
    "Steps",
    "default_support",
    "evaluate",
    "parse_instant",
]


def parse_instant(value: datetime | str | None) -> datetime | None:
    """An as-of instant: an aware datetime or an ISO 8601 string with a time zone."""
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except (ValueError, AttributeError):
            raise InvalidBundleError(
                [InputIssue("error", "value", f"as-of is not an ISO 8601 instant: {value!r}")]
            ) from None
    if dt.tzinfo is None:
        raise InvalidBundleError(
            [InputIssue("error", "value", "as-of needs a time zone (for example 'Z' for UTC)")]
        )
    return dt.astimezone(UTC)


@dataclass(frozen=True)
class Evaluation:
    """The result of one evaluation."""

    plan: Plan
    bundle: dict[str, Any]
    # exercise titles by id, for the follow-up lines about exercises no longer in the plan
    exercise_titles: Mapping[str, str] = field(default_factory=dict, repr=False,
                                               compare=False)

    @property
    def summary(self) -> str:
        return render_summary(self.plan, self.exercise_titles)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.bundle, indent=indent, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Steps:
    """One evaluation, step by step: the facts as read, the facts the rules were given
    (with computed scores and, at a follow-up, the response facts), what the rules derived,
    and the plan (at a follow-up, the revision of the previous plan)."""

    patient: PatientFacts
    prepared: PatientFacts
    result: EngineResult
    plan: Plan


class Pipeline:
    """The one composition of an evaluation: FHIR Bundle -> facts (``read``) -> rules ->
    plan, with the follow-up step (``run``) -> FHIR out (``write``). ``DecisionSupport``
    (and so the CDS Hooks service and ``population run``), ``kb diff`` and ``kb profile``
    all evaluate through it; the last two stop at the plan."""

    def __init__(self, evaluator: Evaluator, *, strict_fhir: bool = False) -> None:
        self.evaluator = evaluator
        self.kb = evaluator.kb
        self.strict_fhir = strict_fhir
        # exercise titles by id, for the follow-up lines about exercises no longer planned
        self.titles = {x.id: x.title for x in self.kb.exercises.values()}

    def read(self, bundle: dict[str, Any] | str | bytes, as_of: datetime) -> PatientFacts:
        """The patient's facts as this knowledge base's catalog reads them."""
        return read_bundle(bundle, kb=self.kb, as_of=as_of, strict_fhir=self.strict_fhir)

    def run(self, patient: PatientFacts) -> Steps:
        """Facts -> rules -> plan; at a follow-up (the Bundle held this project's previous
        CarePlan), the per-exercise rules run and the plan revises the previous one."""
        prepared = self.evaluator.prepare(patient)
        result = self.evaluator.derive(prepared)
        return Steps(patient, prepared, result, self.evaluator.resolve(prepared, result))

    def write(self, steps: Steps, *, advice_only: bool = False) -> dict[str, Any]:
        """The output Bundle (at a follow-up, its CarePlan ``replaces`` the previous one);
        ``advice_only``: without the OperationOutcome and the Provenance."""
        fu = steps.patient.follow_up
        return write_bundle(steps.plan, self.kb, previous=fu.previous if fu is not None else None,
                            advice_only=advice_only)

    def evaluate(self, bundle: dict[str, Any] | str | bytes,
                 as_of: datetime | str | None = None, *,
                 advice_only: bool = False) -> Evaluation:
        """Every step: read, run, write (``as_of`` default: now)."""
        instant = parse_instant(as_of) or datetime.now(UTC)
        steps = self.run(self.read(bundle, instant))
        return Evaluation(steps.plan, self.write(steps, advice_only=advice_only), self.titles)


class DecisionSupport:
    """A loaded knowledge base, compiled once; evaluate any number of patients with it.

    ``knowledge_base`` is a directory in the knowledge-base layout (default: the bundled one);
    ``parameters`` override the manifest's configurable thresholds (clinical governance).
    ``strict_fhir`` also validates every input resource with its ``fhir.resources.R4B`` model,
    including the parts the rules never read (slower; see ``fhir_adapters.read_bundle``).
    ``engine_cache_size`` keeps what the rules derived for that many distinct sets of input
    facts (least recently used out), so the same chart evaluated again skips the rule engine;
    the result is identical (the rules are a pure function of the facts). 0 (default): off.
    """

    def __init__(
        self,
        knowledge_base: str | Path | KnowledgeBase | None = None,
        *,
        parameters: dict[str, Any] | None = None,
        engine: Literal["durable", "reference"] = "durable",
        strict_fhir: bool = False,
        engine_cache_size: int = 0,
    ) -> None:
        if isinstance(knowledge_base, KnowledgeBase):
            if parameters:
                raise ValueError("parameters are applied when a knowledge base is loaded: pass "
                                 "its path (or load_knowledge_base(path, parameters)), not a "
                                 "loaded KnowledgeBase")
            self.kb = knowledge_base
        else:
            self.kb = load_knowledge_base(knowledge_base or bundled_path(), parameters)
        self.evaluator = Evaluator(self.kb, engine, cache_size=engine_cache_size)
        self.strict_fhir = strict_fhir
        self.pipeline = Pipeline(self.evaluator, strict_fhir=strict_fhir)

    def evaluate(
        self, bundle: dict[str, Any] | str | bytes, *, as_of: datetime | str | None = None
    ) -> Evaluation:
        """Evaluate one patient's FHIR R4 Bundle (dict or JSON text).

        A follow-up needs nothing else: when the Bundle holds the previous CarePlan this
        project made and the patient's response Observations, the plan revises it (the output
        CarePlan ``replaces`` it; see docs/integrators/follow-up.md).

        Raises ``InvalidBundleError`` (a ``ValueError``) with an OperationOutcome when the
        input cannot be evaluated, and ``EngineError`` if the engine fails; never returns
        partial advice. The CDS Hooks service's cards carry neither the OperationOutcome nor
        the Provenance: it calls ``self.pipeline.evaluate(..., advice_only=True)``.
        """
        return self.pipeline.evaluate(bundle, as_of)


_DEFAULT: DecisionSupport | None = None
_DEFAULT_LOCK = threading.Lock()


def default_support() -> DecisionSupport:
    """The bundled knowledge base, loaded once per process."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = DecisionSupport()
        return _DEFAULT


def evaluate(
    bundle: dict[str, Any] | str | bytes, *, as_of: datetime | str | None = None
) -> Evaluation:
    """Evaluate with the bundled knowledge base (loaded once per process)."""
    return default_support().evaluate(bundle, as_of=as_of)
