"""The reader's and the writer's public entry points, in a module that is not compiled:
``read_bundle``, ``write_bundle``, ``input_codes`` (and its ``InputCodes``), ``own_careplan``.

``setup.py`` compiles the reader (``_inbound.py``), the writer (``_outbound.py``) and the
output check with mypyc. A compiled module keeps no docstrings or signatures for ``help()``,
its classes cannot be copied or pickled as a dataclass can, and its functions refuse an
argument of another type than their annotation says (a flag given as ``1``). What callers
reach is therefore here: documented, plain dataclasses, each flag handed on as a ``bool``.
How the reader and the writer work is in the docstrings at the top of ``_inbound.py`` and
``_outbound.py`` (docs/integrators/input.md and output.md say it for integrators).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds import KnowledgeBase, PatientFacts, Plan, PreviousPlan
from fhir_adapters import _inbound, _outbound
from fhir_adapters._errors import OutputValidationError

__all__ = ["InputCodes", "input_codes", "own_careplan", "read_bundle", "write_bundle"]


def read_bundle(data: object, *, kb: KnowledgeBase, as_of: datetime | None = None,
                strict_fhir: bool = False) -> PatientFacts:
    """Map a FHIR R4 Bundle to ``PatientFacts`` (every rule: the docstring at the top of
    ``fhir_adapters/_inbound.py``; for integrators, docs/integrators/input.md).

    ``data`` is the Bundle as a dict, or its JSON text (str, bytes or bytearray); anything
    else is refused. ``as_of`` is the evaluation instant (default: now, UTC; a naive
    datetime is taken as UTC). ``strict_fhir=True`` also validates every resource with its
    ``fhir.resources.R4B`` model. Raises ``InvalidBundleError`` (and nothing else, whatever
    ``data`` holds) when the input cannot be evaluated.
    """
    return _inbound.read_patient_facts(data, kb, as_of, bool(strict_fhir))


def write_bundle(plan: Plan, kb: KnowledgeBase, *, previous: PreviousPlan | None = None,
                 full_validation: bool = False, advice_only: bool = False) -> dict[str, Any]:
    """The output Bundle (type ``collection``) for one plan, as a JSON-ready dict (what it
    holds: the docstring at the top of ``fhir_adapters/_outbound.py``; for integrators,
    docs/integrators/output.md).

    ``kb`` is the knowledge base that produced the plan (for fact codes and parameters).
    ``previous`` is the plan a follow-up revises (``PatientFacts.follow_up.previous``): the
    ``since`` of exercises that stay the same is carried over from it (without it, ``since``
    is the as-of instant).
    Deterministic: the same plan gives a byte-identical ``json.dumps(..., sort_keys=True)``.
    Raises ``ValueError`` if ``plan.as_of`` has no time zone, and ``OutputValidationError``
    if the result is not valid FHIR R4 (a bug). A plan holding a value of another type than
    its fields declare (a list where a ``Plan`` holds a tuple, a number for a text) is not
    supported: the compiled writer refuses it as an ``OutputValidationError`` that says so;
    the source (``MOVEMENT_CDS_PURE_PYTHON=1``) may write it as given.
    ``full_validation`` (internal, for cross-checks) validates the Bundle with
    ``Bundle.model_validate`` as a whole instead of shape by shape; both accept exactly the
    same Bundles. ``advice_only`` (the CDS Hooks service, whose cards carry only these)
    leaves out the OperationOutcome and the Provenance: the same Bundle id and the same
    CarePlan, ServiceRequests and DetectedIssues, byte for byte.
    """
    try:
        return _outbound.written_bundle(plan, kb, previous, bool(full_validation),
                                        bool(advice_only))
    except TypeError as e:  # the compiled writer reads each field as its declared type
        raise OutputValidationError(
            f"the plan holds a value of another type than its fields declare: {e}") from e


@dataclass(frozen=True)
class InputCodes:
    """The codes ``read_bundle`` reads for one knowledge base, as (system, code) pairs:
    a client that fetches a patient's record (e.g. CDS Hooks prefetch) asks for these."""

    observations: frozenset[tuple[str, str]]  # every coded fact, follow-up responses too
    conditions: frozenset[tuple[str, str]]


def input_codes(kb: KnowledgeBase) -> InputCodes:
    """Which Observation and Condition codes carry the facts of ``kb`` (and the follow-up
    responses, read against the previous plan)."""
    imap = _inbound.InputMap.from_knowledge_base(kb)
    return InputCodes(frozenset((*imap.observations, *_inbound.FOLLOW_UP_CODES)),
                      frozenset(imap.conditions))


def own_careplan(resource: Mapping[str, Any]) -> bool:
    """Made by this project: an instantiatesUri under the project's knowledge-base URI."""
    return _inbound.own_careplan(resource)
