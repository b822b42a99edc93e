"""What every ``movement-cds`` command module shares: the Typer apps and the ways to fail.

Command modules import ``app`` or ``kb_app`` from here and register themselves; ``_cli``
imports them all. Failing always means one line on standard error and an exit status, never
a traceback.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from cds import InputIssue
from fhir_adapters import InvalidBundleError

__all__ = ["KbOption", "app", "fail", "fail_input", "kb_app", "read_input", "terminology_app"]

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


def read_input(file: str) -> bytes:
    try:
        if file == "-":
            return sys.stdin.buffer.read()
        return Path(file).read_bytes()
    except OSError as e:
        raise InvalidBundleError(
            [InputIssue("fatal", "not-found", f"cannot read {file}: {e.strerror or e}")]
        ) from None


