"""``movement-cds population``: a whole population (a FHIR Bulk Data export) at once.

``population run INPUT --out DIR``: every patient evaluated on Dask ``distributed`` (a local
cluster of worker processes by default, or an existing scheduler with ``--scheduler``); see
``movement_cds._population_run`` for the outputs and docs/population.md for running on a
cluster. Progress goes to standard error (a bar with patients per second on a terminal,
otherwise a line about every 10%), the summary counts to standard output. Exit status: 0 when
the run finished (patients that could not be evaluated are rows of errors.ndjson, not a
failure); 2 for a bad argument or input; 1 when the run cannot go on (the scheduler is
unreachable, the output directory holds another run, the extra is missing).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fhir_adapters import InvalidBundleError
from movement_cds._cli_common import KbOption, app, fail
from movement_cds._runner import Where

if TYPE_CHECKING:
    from movement_cds._population_input import PopulationInput

population_app = typer.Typer(no_args_is_help=True,
                             help="Evaluate a whole population (a FHIR Bulk Data export).")
app.add_typer(population_app, name="population")

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


@population_app.command("run")
def population_run(
    source: Annotated[Path, typer.Argument(
        metavar="INPUT", help="A FHIR Bulk Data export (directory of NDJSON files or $export "
        "manifest), or a directory of grouped bucket files.")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Output directory.")],
    as_of: Annotated[str | None, typer.Option(
        "--as-of", metavar="ISO", help="Evaluation instant, ISO 8601 with a time zone "
        "(default: now, recorded for --resume).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, metavar="N",
        help="Local Dask worker processes, one thread each (default: CPU count).")] = None,
    scheduler: SchedulerOption = None,
    kb: KbOption = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Finish the run in --out: skip the buckets already done.")] = False,
    buckets: Annotated[int, typer.Option(
        "--buckets", min=1, metavar="N", help="Buckets (tasks) a Bulk export is grouped "
        "into.")] = 64,
) -> None:
    """Evaluate every patient of INPUT: output Bundles, summary.parquet, errors.ndjson and
    manifest.json in DIR."""
    from movement_cds._api import parse_instant
    from movement_cds._cli_kb_diff import progress_reporter
    from movement_cds._population_input import PopulationInputError
    from movement_cds._population_run import PopulationRunError, run_population
    from movement_cds._runner import RunnerError

    require_population_extra()
    where = where_from_options(workers, scheduler, dask=True,
                               default_workers=max(1, os.cpu_count() or 1))
    when = None
    if as_of is not None:
        try:
            when = parse_instant(as_of)
        except InvalidBundleError as e:
            fail(f"--as-of: {e.issues[0].message if e.issues else e}", code=2)
    try:
        with progress_reporter("population run", unit="patients", rate=True) as progress:
            report = run_population(source, out, as_of=when, where=where, kb=kb,
                                    resume=resume, buckets=buckets, progress=progress)
    except PopulationInputError as e:
        fail(str(e), code=2)
    except (PopulationRunError, RunnerError) as e:
        fail(str(e))
    sys.stdout.write(format_counts(report.manifest))


def format_counts(manifest: dict[str, object]) -> str:
    """The manifest's counts in a few lines."""
    c = manifest["counts"]
    t = manifest["timings"]
    assert isinstance(c, dict) and isinstance(t, dict)
    lines = [
        f"patients: {c['patients']} in {c['buckets']} bucket(s) "
        f"({c['buckets_skipped_as_finished']} already done), evaluated {c['evaluated']}, "
        f"errors {c['errors']}",
        f"evaluated this run in {t['evaluate_s']:.1f} s, {t['patients_per_s']} patients/s",
    ]
    for key in ("errors_by_code", "level_of_concern", "top_referral"):
        if c[key]:
            lines.append(f"{key.replace('_', ' ')}: " + ", ".join(
                f"{k} {v}" for k, v in c[key].items()))
    lines.append(f"exercise held: {c['exercise_held']}")
    return "\n".join(lines) + "\n"
