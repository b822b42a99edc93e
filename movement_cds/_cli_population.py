"""``movement-cds population ...``: a whole population from a FHIR Bulk Data export
(issue 16; docs/population.md).

This module owns the ``population`` sub-app; each command of it is defined here:

* ``synth``: write a synthetic Bulk Data export (``fhir_adapters.synth_export``);
* ``run``: evaluate every patient of an export on Dask ``distributed`` (a local cluster of
  worker processes by default, or an existing scheduler with ``--scheduler``); see
  ``movement_cds._population_run`` for the outputs. Exit status 0 when the run finished
  (patients that could not be evaluated are rows of errors.ndjson, not a failure); 2 for a
  bad argument or input; 1 when the run cannot go on (the scheduler is unreachable, the
  output directory holds another run, the extra is missing).

Exit status: 0 success; 2 a bad argument (one line naming it); 1 anything else (one line,
never a traceback). Progress goes to standard error (a live bar on a terminal, otherwise a
line about every 10%); the summary of what was written goes to standard output.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cds import KnowledgeBaseError, load_knowledge_base
from fhir_adapters import synth_export
from knowledge_base import bundled_path
from movement_cds._cli_common import KbOption, app, as_of_option, fail
from movement_cds._cli_kb_diff import progress_reporter
from movement_cds._cli_kb_profile import whole_number
from movement_cds._cli_runner_options import (
    SchedulerOption,
    require_population_extra,
    where_from_options,
)

__all__ = ["population_app"]

population_app = typer.Typer(
    no_args_is_help=True,
    help="Populations: FHIR Bulk Data exports, grouped per patient (docs/population.md).")
app.add_typer(population_app, name="population")


def _as_of(text: str | None) -> datetime:
    when = as_of_option(text)
    return when if when is not None else datetime.now(UTC).replace(microsecond=0)


@population_app.command("synth")
def synth(
    patients: Annotated[str, typer.Option("--patients", metavar="N",
                                          help="How many patients.")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", file_okay=False,
                                      help="Directory to write the export into (new or "
                                      "holding no *.ndjson files).")],
    seed: Annotated[str, typer.Option("--seed", metavar="S",
                                      help="Seed: the same seed, N and as-of give the same "
                                      "files.")] = "1",
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", metavar="ISO", help="The instant the data is dated before, "
                     "ISO 8601 with a time zone (default: now, to the second). Evaluate the "
                     "export at the same instant."),
    ] = None,
    compress: Annotated[bool, typer.Option("--gzip", help="Write .ndjson.gz files.")] = False,
    lines_per_file: Annotated[
        str, typer.Option("--lines-per-file", metavar="L",
                          help="Start a new Observation file after about L lines.")
    ] = "100000",
) -> None:
    """Write a synthetic FHIR Bulk Data export: Patient, Observation.NNN, Condition and
    CarePlan NDJSON files and a $export manifest.json, with history (superseded
    Observations), follow-ups (a previous CarePlan and responses) and a few bad lines (broken
    JSON, an Observation of a patient not in the export, a resource in the wrong file)."""
    n = whole_number("--patients", patients, 1)
    s = whole_number("--seed", seed, 0)
    split = whole_number("--lines-per-file", lines_per_file, 1)
    when = _as_of(as_of)
    if out.exists() and not out.is_dir():
        fail(f"--out: {out} is not a directory", code=2)
    if out.is_dir() and any(out.glob("*.ndjson*")):
        fail(f"--out: {out} already holds *.ndjson files (an export); choose a new directory",
             code=2)
    try:
        kb = load_knowledge_base(bundled_path())
    except KnowledgeBaseError as e:
        fail(str(e))
    start = time.monotonic()
    try:
        with progress_reporter("population synth") as progress:
            report = synth_export(out, patients=n, seed=s, as_of=when, kb=kb,
                                  compress=compress, lines_per_file=split, progress=progress)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}")
    seconds = time.monotonic() - start
    typer.echo(f"{report.patients} patients, as of {when.isoformat()}, seed {s}: "
               f"{sum(c for _, _, c in report.files)} lines in {len(report.files)} files "
               f"in {seconds:.1f} s")
    for rtype, path, count in report.files:
        typer.echo(f"  {path.name}: {count} lines ({rtype})")
    kinds = [k for k, _, _ in report.bad]
    typer.echo("bad lines on purpose: " + ", ".join(
        f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds)))
    typer.echo(f"manifest: {report.manifest}")


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
    from movement_cds._population_input import PopulationInputError
    from movement_cds._population_run import PopulationRunError, run_population
    from movement_cds._runner import RunnerError

    require_population_extra()
    where = where_from_options(workers, scheduler, dask=True,
                               default_workers=max(1, os.cpu_count() or 1))
    when = as_of_option(as_of)
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
