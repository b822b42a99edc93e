"""``movement-cds kb export-fhir DIR``: the knowledge base as FHIR Clinical Reasoning
artifacts (PlanDefinition per pathway, ActivityDefinition per exercise, CodeSystems, a Library
index), so that other FHIR tooling can read what the rules say."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from cds import KnowledgeBaseError, compile_knowledge_base, load_knowledge_base
from knowledge_base import bundled_path
from movement_cds._cli_common import KbOption, fail, kb_app


@kb_app.command("export-fhir")
def kb_export_fhir(
    directory: Annotated[Path, typer.Argument(help="Directory to write the JSON files into "
                                              "(created; older export files are replaced).")],
    kb: KbOption = None,
) -> None:
    """Write the knowledge base as FHIR R4 PlanDefinitions, ActivityDefinitions, CodeSystems
    and a Library index (each validated before anything is written)."""
    from fhir_adapters import OutputValidationError, export_knowledge_base

    root = kb or bundled_path()
    try:
        base = load_knowledge_base(root)
        compile_knowledge_base(base)
    except KnowledgeBaseError as e:
        for p in e.problems:
            typer.echo(str(p), err=True)
        n = sum(1 for p in e.problems if p.severity == "error")
        fail(f"{n} error(s) in {root}; nothing exported")
    if directory.exists() and not directory.is_dir():
        fail(f"{directory} exists and is not a directory", 2)
    try:
        paths = export_knowledge_base(base, directory)
    except OutputValidationError as e:
        fail(f"export failed validation (a bug, please report it): {e}")
    except OSError as e:
        fail(f"cannot write {directory}: {e.strerror or e}")
    for path in paths:
        typer.echo(str(path))
    kinds = Counter(path.name.split("-", 1)[0] for path in paths)
    typer.echo(f"{base.ruleset_name}: " + ", ".join(f"{n} {k}" for k, n in kinds.items())
               + f" in {directory}", err=True)
