"""``movement-cds handout INPUT --out FILE.html|FILE.pdf [--as-of ISO]``: the patient handout.

INPUT is an input Bundle (evaluated at ``--as-of``, which is then required) or an output
Bundle of ``movement-cds evaluate`` (``--as-of`` refused): the content tells which. The
extension of ``--out`` picks the format; a PDF needs the ``handout`` extra and says so
without it. Exit status as for ``evaluate``: 2 unusable input (the OperationOutcome on
standard output), 1 anything else, one line on standard error, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from movement_cds._cli_common import (
    KbOption,
    app,
    evaluation_errors,
    fail,
    read_input,
    write_output,
)

_FORMATS = (".html", ".htm", ".pdf")


@app.command()
def handout(
    file: Annotated[str, typer.Argument(
        help="An input Bundle (with --as-of) or an output Bundle of movement-cds; '-' for "
             "standard input.")],
    out: Annotated[Path, typer.Option(
        "--out", help="Where to write the handout: FILE.html, or FILE.pdf (needs the "
                      "'handout' extra).")],
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Evaluation instant for an input Bundle (ISO 8601 with a time "
                        "zone).")] = None,
    kb: KbOption = None,
) -> None:
    """Write the patient handout (plain words, pictures, schedule, log) as HTML or PDF."""
    from movement_cds._api import DecisionSupport
    from movement_cds._errors import HandoutExtraMissingError
    from movement_cds._handout_api import handout_html, handout_pdf

    suffix = out.suffix.lower()
    if suffix not in _FORMATS:
        fail(f"--out {out}: the name must end in .html or .pdf")
    try:
        with evaluation_errors("no handout written"):
            support = DecisionSupport(kb)
            html = handout_html(read_input(file), as_of=as_of, support=support)
            data = handout_pdf(html) if suffix == ".pdf" else html.encode("utf-8")
    except HandoutExtraMissingError as e:
        fail(str(e))
    write_output(out, data)
    typer.echo(f"handout written to {out}", err=True)
