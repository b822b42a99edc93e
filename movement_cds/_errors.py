"""Every error movement-cds raises on purpose, in one tree.

Each subclasses a built-in type callers already catch, under one root, so ``except
MovementCDSError`` catches all of them and ``except ValueError`` still catches bad input::

    MovementCDSError (Exception)                       cds
    ├── InvalidInputError (ValueError)                 cds: the patient data cannot be evaluated
    │   └── InvalidBundleError                         fhir_adapters: .operation_outcome says
    │                                                  why, entry by entry
    ├── KnowledgeBaseError (ValueError)                cds: the rules/catalog files are
    │                                                  unusable; .problems has file:line:column
    ├── EngineError (RuntimeError)                     cds: the rule engine failed; no advice
    ├── ExplainTargetError (LookupError)               cds: ``explain`` of an unknown id
    ├── JSONTextError (ValueError)                     fhir_adapters: unusable JSON text; .path
    ├── OutputValidationError (RuntimeError)           fhir_adapters: an output failed R4
    │                                                  validation (a bug, never returned)
    ├── UndocumentedRedFlagError (ValueError)          fhir_adapters: a red-flag item the
    │   └── UnclassifiedRedFlagError                   synthetic population has no rate for
    ├── BulkExportError (ValueError)                   fhir_adapters: a FHIR Bulk Data export
    │                                                  that cannot be read at all
    ├── FactCatalogError (ValueError)                  fhir_adapters: the FHIR input builder
    │                                                  was asked for a fact (or value) the
    │                                                  knowledge base's catalog does not define
    ├── PopulationExtraMissingError (ImportError)      fhir_adapters: ``population`` needs
    │                                                  the 'population' extra (pyarrow)
    ├── KnowledgeBaseLoadError (ValueError)            movement_cds: a release given to
    │                                                  ``kb diff``/``kb profile`` is unusable
    ├── ProfileError (ValueError)                      movement_cds: no population can be
    │                                                  made for this knowledge base
    ├── HandoutExtraMissingError (ImportError)         movement_cds: a PDF handout needs the
    │                                                  'handout' extra (WeasyPrint, Pango)
    ├── PopulationInputError (ValueError)              movement_cds: a population input that
    │                                                  cannot be read (names file and line)
    ├── PopulationRunError (ValueError)                movement_cds: a population run that
    │                                                  cannot start, finish or resume
    ├── RunnerError (RuntimeError)                     movement_cds: the tasks cannot be run
    │                                                  (scheduler, extra, a failing task)
    └── ServiceError                                   cds_service (the CDS Hooks service)
        ├── ConfigError (ValueError)                   the configuration file is unusable
        ├── StartupError (RuntimeError)                the service cannot start
        ├── ReloadRefused (RuntimeError)               a new release was not taken live
        ├── AuthError (PermissionError)                the request is not authenticated (401)
        ├── ReplayStoreError (OSError)                 the used-token cache cannot be read
        │                                              or written (the token is refused)
        ├── StoreError (OSError)                       the service's database cannot be
        │   │                                          written or read
        │   └── StoreUnavailable                       ... now (busy, unreachable): retried
        ├── AuditError (LookupError)                   an audit record cannot be shown or
        │                                              replayed
        ├── PrefetchError                              needed data cannot be had (412/400)
        └── ApiError                                   an HTTP error answer with its
                                                       OperationOutcome

One errors module per package defines its part of the tree: ``cds._errors``,
``fhir_adapters._errors``, this module and ``cds_service._errors``; tests/test_errors.py
pins the tree to this drawing. Exceptions used only inside one module for control flow
(their names start with ``_``) never leave it and are not part of the tree.
"""

from __future__ import annotations

from pathlib import Path

from cds import MovementCDSError

__all__ = [
    "HandoutExtraMissingError",
    "KnowledgeBaseLoadError",
    "PopulationInputError",
    "PopulationRunError",
    "ProfileError",
    "RunnerError",
]


class KnowledgeBaseLoadError(MovementCDSError, ValueError):
    """One of the two knowledge bases cannot be used; ``which`` is "OLD" or "NEW"."""

    def __init__(self, which: str, root: Path, problems: list[str]) -> None:
        self.which, self.root, self.problems = which, root, problems
        n = len(problems)
        first = f": {problems[0]}" if problems else ""
        name = f"{which} knowledge base" if which else "knowledge base"
        super().__init__(f"{name} {root} is invalid ({n} problem(s)){first}")


class ProfileError(MovementCDSError, ValueError):
    """The population cannot be made for this knowledge base (its red-flag items)."""


class HandoutExtraMissingError(MovementCDSError, ImportError):
    """A PDF handout needs the ``handout`` extra (WeasyPrint, and the system's Pango)."""


class RunnerError(MovementCDSError, RuntimeError):
    """The tasks cannot be run: the scheduler is unreachable, the extra is missing, a task
    failed (the message names it) or kept killing its workers."""


class PopulationInputError(MovementCDSError, ValueError):
    """The population input cannot be read; the message names the file (and line)."""


class PopulationRunError(MovementCDSError, ValueError):
    """The run cannot start or finish (an output directory holding another run, a setting
    that differs from the run being resumed); the message says what to do."""
