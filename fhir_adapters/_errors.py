"""Every error the FHIR adapters raise (the whole tree is drawn in ``movement_cds._errors``)::

    cds.MovementCDSError
    ├── cds.InvalidInputError (ValueError)
    │   └── InvalidBundleError           .operation_outcome: a FHIR R4 OperationOutcome dict
    ├── JSONTextError (ValueError)       JSON text that cannot be used; .path says where
    ├── OutputValidationError (RuntimeError)  an output failed R4 validation: a bug
    ├── UndocumentedRedFlagError (ValueError) a red-flag item the synthetic population
    │   └── UnclassifiedRedFlagError          has no rate (or class) for
    ├── BulkExportError (ValueError)     a FHIR Bulk Data export that cannot be read at all
    ├── FactCatalogError (ValueError)    the FHIR input builder was asked for a fact, or a
    │                                    value, that the knowledge base's catalog does not define
    └── PopulationExtraMissingError (ImportError)  the 'population' extra is not installed
"""

from __future__ import annotations

import re
from typing import Any, Final

from cds import InputIssue, InvalidInputError, MovementCDSError

__all__ = [
    "BulkExportError",
    "FactCatalogError",
    "InvalidBundleError",
    "JSONTextError",
    "OutputValidationError",
    "PopulationExtraMissingError",
    "UnclassifiedRedFlagError",
    "UndocumentedRedFlagError",
    "format_path",
    "operation_outcome",
]


def _issue(i: InputIssue) -> dict[str, Any]:
    out: dict[str, Any] = {
        "severity": i.severity,
        "code": i.code,
        "diagnostics": i.message,
    }
    if i.location:
        out["expression"] = [i.location]
    return out


def operation_outcome(issues: list[InputIssue] | tuple[InputIssue, ...]) -> dict[str, Any]:
    """An R4 OperationOutcome with one issue per input issue (``expression`` names the entry)."""
    return {"resourceType": "OperationOutcome", "issue": [_issue(i) for i in issues]}


class InvalidBundleError(InvalidInputError):
    """The input cannot be evaluated; ``operation_outcome`` says why, entry by entry."""

    @property
    def operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


Path = tuple[str | int, ...]
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_KEY: Final = 64


class JSONTextError(MovementCDSError, ValueError):
    """JSON text that cannot be used. ``path`` says where (empty: the text as a whole; the
    message then gives the byte, or line and column); ``describe(root)`` is the message with
    the place written from ``root`` (``Bundle``, ``prefetch``...)."""

    def __init__(self, template: str, path: Path = (), code: str = "invalid",
                 at: Path | None = None) -> None:
        self.template = template  # "{where}" stands for the place
        self.path = path
        self.at = path if at is None else at
        self.code = code
        super().__init__(self.describe(""))

    def describe(self, root: str) -> str:
        return self.template.replace("{where}", format_path(root, self.at) or "the top level")

    def where(self, root: str) -> str:
        return format_path(root, self.path)


def format_path(root: str, path: Path) -> str:
    out = root
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _IDENTIFIER.match(seg):
            out += ("." if out else "") + seg
        else:
            out += ("." if out else "") + "`" + _printable(seg).replace("`", "\\`") + "`"
    return out


def _printable(key: str) -> str:
    """A key as it can be shown (ASCII, at most 64 characters)."""
    shown = key[:_MAX_KEY].encode("ascii", "backslashreplace").decode("ascii")
    return shown + ("..." if len(key) > _MAX_KEY else "")


class OutputValidationError(MovementCDSError, RuntimeError):
    """The output failed FHIR R4 validation: a bug in this module, never returned as advice."""


class UndocumentedRedFlagError(MovementCDSError, ValueError):
    """The fact catalog has a red-flag item the population has no documented rate for."""


class UnclassifiedRedFlagError(UndocumentedRedFlagError):
    """The fact catalog gives its red-flag items no class at all (a catalog older than the
    ``red-flag: specific|weak`` attribute)."""


class BulkExportError(MovementCDSError, ValueError):
    """The export cannot be read at all (a missing or unreadable file, a file name without a
    resource type, a manifest that is not one or points outside this machine, a broken gzip
    stream). One line naming the file; never patient data."""


class FactCatalogError(MovementCDSError, ValueError):
    """The FHIR input builder (``fhir_adapters._bundle_builder``) was asked for a fact the
    knowledge base's fact catalog does not define, one without an input code, or a value of
    another type than the catalog's: the generator and the knowledge base disagree."""


class PopulationExtraMissingError(MovementCDSError, ImportError):
    """The ``population`` extra (pyarrow) is not installed."""
