"""FHIR-side errors: the one documented error type of the library's FHIR entry points.

    ValueError
    └── cds.InvalidInputError
        └── InvalidBundleError     carries .operation_outcome (a FHIR R4 OperationOutcome dict)
"""

from __future__ import annotations

from typing import Any

from cds import InputIssue, InvalidInputError

__all__ = ["InvalidBundleError", "operation_outcome"]


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
