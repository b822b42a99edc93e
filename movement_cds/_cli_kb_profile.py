"""``movement-cds kb profile [DIR]``: what a knowledge base does to a primary-care population.

The profile goes to standard output (text, or JSON with ``--json``); progress goes to standard
error (the same bar or ~10% lines as ``kb diff``). Exit status: 0 whether or not the goals are
met (a profile is information; the goals are printed beside the figures); 2 for a bad
argument (one line naming it); 1 when the knowledge base cannot be loaded.

The numeric options are read here rather than by Typer so that a bad value gives one line
("--patients: 'abc' is not a whole number"), not a usage box.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from knowledge_base import bundled_path
from movement_cds._cli_common import as_of_option, fail, kb_app
from movement_cds._cli_kb_diff import progress_reporter
from movement_cds._cli_runner_options import InputOption, SchedulerOption

DEFAULT_PATIENTS = 2000


def whole_number(option: str, text: str, minimum: int) -> int:
    """``text`` as an integer of at least ``minimum``, or exit 2 with one line naming
    ``option``."""
    try:
        value = int(text.strip())
    except ValueError:
        fail(f"{option}: {text!r} is not a whole number", code=2)
    if value < minimum:
        fail(f"{option}: must be at least {minimum} (got {value})", code=2)
    return value


@kb_app.command("profile")
def kb_profile(
    directory: Annotated[
        Path | None,
        typer.Argument(metavar="DIR", show_default=False,
                       help="Knowledge-base directory (default: the bundled one)."),
    ] = None,
    patients: Annotated[
        str, typer.Option("--patients", metavar="N",
                          help="Synthetic primary-care patients.")
    ] = str(DEFAULT_PATIENTS),
    as_json: Annotated[bool, typer.Option("--json", help="The profile as JSON on stdout.")] = False,
    seed: Annotated[
        str, typer.Option("--seed", metavar="S", help="Seed of the population.")
    ] = "1",
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", metavar="ISO",
                     help="Evaluation instant, ISO 8601 with a time zone (default "
                     "2026-11-02T09:00:00Z, so profiles are reproducible)."),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option("--workers", metavar="N", help="Worker processes (default: 1 below 2,000 "
                     "patients, else up to 4 by CPU count)."),
    ] = None,
    scheduler: SchedulerOption = None,
    input_dir: InputOption = None,
) -> None:
    """Run a knowledge base over a synthetic primary-care population (complete, current
    red-flag screens) and report, for clinical governance, the rates of each level of concern,
    referral priority, exercise held and rule, with the key safety figures and their goals."""
    from movement_cds._kb_profile import (
        KnowledgeBaseLoadError,
        ProfileError,
        profile_knowledge_base,
    )

    n = whole_number("--patients", patients, 1)
    s = whole_number("--seed", seed, 0)
    w = whole_number("--workers", workers, 1) if workers is not None else None
    when = as_of_option(as_of)
    root = directory if directory is not None else bundled_path()
    if not root.is_dir():
        fail(f"knowledge base {root} is not a directory", code=2)
    from movement_cds._cli_runner_options import population_input, where_from_options
    from movement_cds._runner import RunnerError

    where_from_options(w, scheduler, dask=False, default_workers=1)  # exclusive
    try:
        with population_input(input_dir, scheduler) as pop, progress_reporter(
                "kb profile", unit="patients" if pop else "synthetic patients") as progress:
            profile = profile_knowledge_base(root, patients=n, seed=s, as_of=when, workers=w,
                                             progress=progress, scheduler=scheduler,
                                             population=pop)
    except KnowledgeBaseLoadError as e:
        for p in e.problems:
            typer.echo(p, err=True)
        fail(str(e))
    except RunnerError as e:
        fail(str(e))
    except ProfileError as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(profile.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(profile.to_text())
