"""``movement-cds kb docs``: rebuild the generated clinical catalog from a knowledge base.

Writes ``rules.md``, ``exercises.md``, ``parameters.md`` and ``catalog.html`` (one
self-contained, searchable page for clinicians, no network needed). ``--check`` writes
nothing and exits 1 when the committed pages are out of date (for CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cds import KnowledgeBaseError
from knowledge_base import bundled_path
from movement_cds._cli_common import fail, kb_app


@kb_app.command("docs")
def kb_docs(
    directory: Annotated[
        Path | None, typer.Argument(help="Knowledge-base directory (default: bundled).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where to write the pages.")] = Path(
        "docs/clinical"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if any page is stale.")
    ] = False,
) -> None:
    """Rebuild the clinical catalog (rules, exercises, parameters; Markdown and one
    searchable HTML page) from the knowledge base."""
    from cds.authoring import write_catalog
    from movement_cds._docs import catalog_pages

    root = directory or bundled_path()
    try:
        pages = catalog_pages(root)
    except KnowledgeBaseError as e:
        for p in e.problems:
            typer.echo(str(p), err=True)
        fail(f"knowledge base invalid: {root}")
    if check:
        stale = [name for name, text in sorted(pages.items())
                 if not (out / name).is_file()
                 or (out / name).read_text(encoding="utf-8") != text]
        if stale:
            fail(f"{out} is out of date ({', '.join(stale)}); run: movement-cds kb docs")
        typer.echo(f"{out}: {len(pages)} pages up to date")
        return
    try:
        paths = write_catalog(pages, out)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}")
    for path in paths:
        typer.echo(str(path))
