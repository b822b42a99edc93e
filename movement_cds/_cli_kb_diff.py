"""``movement-cds kb diff OLD NEW``: what a new knowledge-base version changes for patients.

The report goes to standard output (``--json FILE`` also writes it for machines); progress
goes to standard error (a live bar on a terminal, otherwise a line about every 10%). A diff
is information, so the exit status is 0 whatever changed, unless ``--fail-on-change`` (for
CI gating); 1 when either knowledge base cannot be loaded (the message names which).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from movement_cds._cli_common import as_of_flag, as_of_option, fail, kb_app
from movement_cds._cli_runner_options import InputOption, SchedulerOption

if TYPE_CHECKING:
    from movement_cds._kb_diff import DiffReport


@contextmanager
def progress_reporter(command: str, unit: str = "synthetic patients",
                      rate: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A progress callback on standard error: rich on a terminal, otherwise plain lines
    (``{command}: done/total {unit} (pct%), s``) about every 10%; ``rate``: with the
    {unit} per second since the start."""
    start = time.monotonic()
    # the count and time of the first call: a resumed run starts above 0, and the work
    # before it (grouping an export, starting workers) is not counted in the rate
    first: list[float] = []

    def speed(done: int) -> str:
        first[:] = first or [done, time.monotonic()]
        elapsed, n = time.monotonic() - first[1], done - first[0]
        return f"{n / elapsed:.0f}/s" if elapsed > 0 and n else "-/s"

    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [TextColumn(unit), BarColumn(), MofNCompleteColumn()]
        if rate:
            columns.append(TextColumn("{task.fields[rate]}"))
        with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(command, total=None, rate="-/s")

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, rate=speed(done))

            yield update
        return
    state = {"next": 0}

    def lines(done: int, total: int) -> None:
        if total <= 0 or done < state["next"]:
            return
        pct = 100 * done // total
        per_s = f", {speed(done)}" if rate else ""
        typer.echo(f"{command}: {done}/{total} {unit} ({pct}%), "
                   f"{time.monotonic() - start:.0f} s{per_s}", err=True)
        state["next"] = done + max(1, total // 10) if done < total else total + 1

    yield lines


@kb_app.command("diff")
def kb_diff(
    old: Annotated[Path, typer.Argument(help="Knowledge-base directory of the current version.")],
    new: Annotated[Path, typer.Argument(help="Knowledge-base directory of the new version.")],
    patients: Annotated[
        int, typer.Option("--patients", min=0, help="Synthetic patients to run (seeded).")
    ] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic population.")] = 1,
    as_of: Annotated[str | None, as_of_flag(
        ", for both versions (default 2026-11-02T09:00:00Z for the population and each "
        "scenario's own instant, so reports are reproducible).")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON to FILE.")
    ] = None,
    fail_on_change: Annotated[
        bool, typer.Option("--fail-on-change", help="Exit 1 when any output changes (CI).")
    ] = False,
    examples_dir: Annotated[
        Path | None,
        typer.Option("--examples-dir", help="Write the FHIR Bundle of every synthetic example "
                     "patient here (synthetic-N.json), to replay with evaluate or kb explain."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Worker processes (default: 1 below 2,000 "
                     "patients, else up to 4 by CPU count)."),
    ] = None,
    scheduler: SchedulerOption = None,
    input_dir: InputOption = None,
) -> None:
    """Run two knowledge-base versions over the scenarios and a synthetic population and
    report which outputs change, for how many patients, with examples."""
    from movement_cds._kb_diff import KnowledgeBaseLoadError, diff_knowledge_bases

    when = as_of_option(as_of)
    for which, path in (("OLD", old), ("NEW", new)):
        if not path.is_dir():
            fail(f"{which} knowledge base {path} is not a directory")
    from movement_cds._cli_runner_options import population_input, where_from_options
    from movement_cds._runner import RunnerError

    where_from_options(workers, scheduler, dask=False, default_workers=1)  # exclusive
    try:
        with population_input(input_dir, scheduler) as pop, progress_reporter(
                "kb diff", unit="patients" if pop else "synthetic patients") as progress:
            report = diff_knowledge_bases(old, new, patients=patients, seed=seed, as_of=when,
                                          workers=workers, progress=progress,
                                          scheduler=scheduler, population=pop)
    except KnowledgeBaseLoadError as e:
        for p in e.problems:
            typer.echo(f"{e.which}: {p}", err=True)
        fail(str(e))
    except RunnerError as e:
        fail(str(e))
    sys.stdout.write(report.to_text())
    _write_outputs(report, json_out, examples_dir)
    if fail_on_change and report.changed:
        raise typer.Exit(1)


def _write_outputs(report: DiffReport, json_out: Path | None,
                   examples_dir: Path | None) -> None:
    """``--json`` and ``--examples-dir``; exit 1 naming the path that cannot be written."""
    from movement_cds._kb_diff import write_examples

    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            fail(f"cannot write {json_out}: {e.strerror or e}")
    if examples_dir is not None:
        try:
            for path in write_examples(report, examples_dir):
                typer.echo(f"example patient written to {path}", err=True)
        except OSError as e:
            fail(f"cannot write {examples_dir}: {e.strerror or e}")
