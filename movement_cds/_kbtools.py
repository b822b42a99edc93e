"""Glue for the knowledge-base tools: scenario runs that may read FHIR vignettes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cds import Evaluator, KnowledgeBase, PatientFacts
from cds._scenarios import BundleReader, ScenarioOutcome, run_scenarios
from fhir_adapters import read_bundle

__all__ = ["fhir_reader", "run_all_scenarios"]


def fhir_reader(kb: KnowledgeBase) -> BundleReader:
    """Reads a scenario's ``bundle:`` file with the production FHIR adapter."""

    def read(path: Path, as_of: datetime) -> PatientFacts:
        return read_bundle(path.read_bytes(), kb=kb, as_of=as_of)

    return read


def run_all_scenarios(
    evaluator: Evaluator, root: Path, only: set[str] | None = None
) -> list[ScenarioOutcome]:
    return run_scenarios(evaluator, root, fhir_reader(evaluator.kb), only)
