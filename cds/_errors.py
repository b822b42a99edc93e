"""Errors raised by the decision core.

Every error subclasses a built-in type that callers already catch::

    MovementCDSError (Exception)
    ├── KnowledgeBaseError (ValueError)    the rules, catalog or facts files are unusable
    ├── InvalidInputError (ValueError)     the patient data cannot be evaluated at all
    ├── EngineError (RuntimeError)         the rule engine failed; no advice is returned
    └── ExplainTargetError (LookupError)   ``explain`` was asked about an id the knowledge
                                           base does not have

``fhir_adapters`` adds ``InvalidBundleError(InvalidInputError)``, which carries the FHIR
OperationOutcome for the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "EngineError",
    "ExplainTargetError",
    "InputIssue",
    "InvalidInputError",
    "KnowledgeBaseError",
    "KnowledgeBaseProblem",
    "MovementCDSError",
]


class MovementCDSError(Exception):
    """Root of every error this project raises on purpose."""


@dataclass(frozen=True)
class KnowledgeBaseProblem:
    """One thing wrong in a knowledge-base file, pinned to where an editor can find it."""

    file: str
    line: int | None
    column: int | None
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.severity}: {self.message}"


class KnowledgeBaseError(MovementCDSError, ValueError):
    """The knowledge base cannot be used; ``problems`` says where and why."""

    def __init__(self, problems: list[KnowledgeBaseProblem]) -> None:
        self.problems = list(problems)
        head = "; ".join(str(p) for p in self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"knowledge base invalid: {head}{more}")


@dataclass(frozen=True)
class InputIssue:
    """One thing about the input that was ignored, preliminary, invalid or missing.

    ``location`` names the entry (for FHIR, ``Bundle.entry[3]`` plus the resource reference).
    ``severity`` uses FHIR's words (fatal, error, warning, information) because they are the
    clinic's words for it too.
    """

    severity: str
    code: str
    message: str
    location: str | None = None


class InvalidInputError(MovementCDSError, ValueError):
    """The input cannot be evaluated at all: nothing is returned but the issues."""

    def __init__(self, issues: list[InputIssue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(i.message for i in self.issues) or "invalid input")


@dataclass
class EngineError(MovementCDSError, RuntimeError):
    """The rule engine failed mid-evaluation. Partial advice is never returned."""

    message: str
    details: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        RuntimeError.__init__(self, self.message)

    def __str__(self) -> str:
        return self.message


class ExplainTargetError(MovementCDSError, LookupError):
    """The id asked about is not a rule, exercise, alert code or fact of this knowledge base."""

    def __init__(self, target: str, near: list[str]) -> None:
        self.target = target
        self.near = near
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        super().__init__(
            f"'{target}' is not a rule id, exercise id, alert code or fact of this knowledge "
            f"base{hint}"
        )
