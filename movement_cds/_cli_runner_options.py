"""Command-line options and helpers shared by the commands that run populations on the
shared runner (``movement_cds._runner``): ``population run``, ``kb diff``, ``kb profile``.

``--scheduler ADDRESS`` (a Dask scheduler), ``--input BULK_DIR`` (a real population instead
of the synthetic one), and the check that the ``population`` extra is installed. Kept apart
from the command modules so that each of them can import it (no import cycle).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from movement_cds._cli_common import fail
from movement_cds._runner import Where

if TYPE_CHECKING:
    from movement_cds._population_input import PopulationInput

__all__ = ["InputOption", "SchedulerOption", "population_input", "require_population_extra",
           "where_from_options"]

SchedulerOption = Annotated[
    str | None,
    typer.Option("--scheduler", metavar="ADDRESS",
                 help="Run on this Dask scheduler (tcp://host:8786) instead of on this "
                 "machine; the workers must see the input and output paths."),
]


def require_population_extra() -> None:
    """Exit 1 with one line naming the extra when Dask or pyarrow is missing."""
    missing = [m for m in ("distributed", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"{' and '.join(missing)} not installed: pip install "
             "'movement-cds[population]'")


def where_from_options(workers: int | None, scheduler: str | None, *, dask: bool,
                       default_workers: int) -> Where:
    """The runner's ``Where`` for ``--workers`` / ``--scheduler`` (exit 2 when both)."""
    if workers is not None and scheduler is not None:
        fail("--workers and --scheduler exclude each other (the scheduler's workers run "
             "the tasks)", code=2)
    if scheduler is not None:
        if "://" not in scheduler:
            fail(f"--scheduler: {scheduler!r} is not an address such as tcp://host:8786",
                 code=2)
        return Where(scheduler=scheduler)
    return Where(workers=workers or default_workers, dask=dask)


InputOption = Annotated[
    Path | None,
    typer.Option("--input", metavar="BULK_DIR",
                 help="Run a real population (a FHIR Bulk Data export, or grouped bucket "
                 "files) instead of the synthetic one."),
]


@contextmanager
def population_input(source: Path | None,
                     scheduler: str | None) -> Iterator[PopulationInput | None]:
    """``--input`` as bucket files (grouped into a temporary directory, removed after; with
    ``--scheduler`` the workers must see it: set TMPDIR to a shared filesystem), or None.
    Exit 2 naming the file when it cannot be read; 1 when the extra is missing."""
    if scheduler is not None:
        require_population_extra()
    if source is None:
        yield None
        return
    from movement_cds._population_input import PopulationInputError, open_population

    with tempfile.TemporaryDirectory(prefix="movement-cds-input-") as tmp:
        try:
            pop = open_population(source, Path(tmp))
        except PopulationInputError as e:
            fail(str(e), code=2)
        yield pop
