"""The ``movement-cds`` command line.

Exit status: 0 success; 2 unusable input (the OperationOutcome is printed on standard output,
a one-line reason on standard error); 1 any other failure (knowledge base invalid, engine
error), with a one-line reason and never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cds import KnowledgeBaseError, MovementCDSError, load_knowledge_base
from fhir_adapters import export_terminology
from knowledge_base import bundled_path
from movement_cds._cli_common import (
    BundleArgument,
    KbOption,
    app,
    as_of_flag,
    evaluation_errors,
    fail,
    kb_app,
    read_input,
    terminology_app,
    write_output,
)


@app.command()
def evaluate(
    file: BundleArgument,
    as_of: Annotated[str | None, as_of_flag(
        " (default: now). Ages and 'how old is this finding' use it.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the output Bundle here, not stdout.")
    ] = None,
    kb: KbOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No summary on stderr.")] = False,
    strict_fhir: Annotated[
        bool,
        typer.Option("--strict-fhir", help="Also validate every input resource with the "
                     "fhir.resources R4B models, including parts the rules never read."),
    ] = False,
) -> None:
    """Evaluate one patient: output Bundle as JSON on stdout (or --out), summary on stderr."""
    from movement_cds._api import DecisionSupport

    with evaluation_errors("no advice returned"):
        support = DecisionSupport(kb, strict_fhir=strict_fhir)
        result = support.evaluate(read_input(file), as_of=as_of)
    text = result.to_json()
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        write_output(out, (text + "\n").encode("utf-8"))
    if not quiet:
        sys.stderr.write(result.summary)
        if out is not None:
            sys.stderr.write(f"\nFHIR output written to {out}\n")


@terminology_app.command("export")
def terminology_export(
    directory: Annotated[Path, typer.Argument(help="Directory to write CodeSystem-*.json into.")],
    kb: KbOption = None,
) -> None:
    """Write the project's CodeSystems (screen, exercise, alert, plan-change) as FHIR R4
    JSON."""
    try:
        base = load_knowledge_base(kb or bundled_path())
        paths = export_terminology(base, directory)
    except KnowledgeBaseError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {directory}: {e.strerror or e}")
    for p in paths:
        typer.echo(str(p))


@kb_app.command("schema")
def kb_schema(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON Schemas into this directory.")
    ] = None,
) -> None:
    """Export the knowledge-base file format as JSON Schema (for editors)."""
    from cds.authoring import schemas

    docs = schemas()
    if out is None:
        sys.stdout.write(json.dumps(docs, indent=2, sort_keys=True) + "\n")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in docs.items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        typer.echo(str(path))


# --- command modules: each registers its commands on ``app`` / ``kb_app`` when imported -------
# One line per module; keep them sorted.
from movement_cds import _cli_registry  # noqa: E402,F401

# --- commands from the packages above this one (the CDS Hooks service: ``serve``, ``feedback``)
# Each distribution that adds commands names a function ``register(app)`` in this entry-point
# group; this package never imports them by name (``cds_service`` is a layer above it).
PLUGIN_GROUP = "movement_cds.cli"


def _register_plugins() -> None:
    """Every library command runs even if a plugin cannot load: its failure is one line on
    standard error (which plugin, the error's type), never a traceback."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()(app)
        except Exception as e:
            typer.echo(f"movement-cds: commands from {ep.value} not loaded "
                       f"({type(e).__name__}: {e})", err=True)


_register_plugins()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: never a traceback, whatever goes wrong."""
    try:
        return app(args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except MovementCDSError as e:
        typer.echo(f"movement-cds: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # a bug: say so in one line, not a traceback
        typer.echo(f"movement-cds: internal error ({type(e).__name__}); please report it",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
