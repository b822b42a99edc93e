"""What every ``movement-cds`` command module shares: the Typer apps and the ways to fail.

Command modules import ``app`` or ``kb_app`` from here and register themselves; ``_cli``
imports them all. Failing always means one line on standard error and an exit status, never
a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from cds import EngineError, InputIssue, KnowledgeBaseError
from fhir_adapters import InvalidBundleError

__all__ = [
    "BundleArgument", "KbOption", "app", "as_of_flag", "evaluation_errors", "fail", "fail_input",
    "kb_app", "read_input", "terminology_app", "write_output",
]

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Exercise decision support for persistent low back pain (FHIR R4 in, CarePlan out).",
)
terminology_app = typer.Typer(no_args_is_help=True, help="The project's FHIR terminology.")
kb_app = typer.Typer(no_args_is_help=True, help="Work with knowledge bases.")
app.add_typer(terminology_app, name="terminology")
app.add_typer(kb_app, name="kb")

KbOption = Annotated[
    Path | None,
    typer.Option("--kb", help="Knowledge-base directory (default: the bundled one).",
                 file_okay=False),
]

BundleArgument = Annotated[
    str, typer.Argument(help="FHIR R4 Bundle (JSON); '-' for standard input.")
]


def as_of_flag(after: str) -> Any:
    """The ``--as-of`` option, its help "Evaluation instant, ISO 8601 with a time zone"
    followed by ``after`` (what the command does with it)."""
    return typer.Option("--as-of", help=f"Evaluation instant, ISO 8601 with a time zone{after}")


def fail_input(err: InvalidBundleError) -> NoReturn:
    sys.stdout.write(json.dumps(err.operation_outcome, indent=2, sort_keys=True) + "\n")
    first = err.issues[0].message if err.issues else "invalid input"
    typer.echo(f"movement-cds: input cannot be evaluated: {first}", err=True)
    raise typer.Exit(2)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"movement-cds: {message}", err=True)
    raise typer.Exit(code)


def as_of_option(text: str | None) -> datetime | None:
    """``--as-of`` read as an instant (``None`` when not given); a bad one is one line and
    exit 2."""
    if text is None:
        return None
    from movement_cds._api import parse_instant

    try:
        return parse_instant(text)
    except InvalidBundleError as e:
        fail(f"--as-of: {e.issues[0].message if e.issues else e}", code=2)


@contextmanager
def evaluation_errors(
    nothing: str, also: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """An evaluation's failures as the command's one line and exit status: unusable input 2
    (its OperationOutcome on standard output), an invalid knowledge base 1, a failed engine
    (or one of ``also``) 1 with "rule engine failed; ``nothing``"."""
    engine: tuple[type[Exception], ...] = (EngineError, *also)
    try:
        yield
    except InvalidBundleError as e:
        fail_input(e)
    except KnowledgeBaseError as e:
        fail(str(e))
    except engine as e:
        fail(f"rule engine failed; {nothing}: {e}")


def write_output(out: Path, data: bytes) -> None:
    """Write a command's output file (its folder made if needed); failing says why."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}")


def read_input(file: str) -> bytes:
    try:
        if file == "-":
            return sys.stdin.buffer.read()
        return Path(file).read_bytes()
    except OSError as e:
        raise InvalidBundleError(
            [InputIssue("fatal", "not-found", f"cannot read {file}: {e.strerror or e}")]
        ) from None


