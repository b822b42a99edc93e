"""``movement-cds population run``: every patient of a population, evaluated on Dask.

The input (a Bulk Data export, grouped per patient into bucket files, see
``movement_cds._population_input``) is run one task per bucket on the shared runner
(``movement_cds._runner``: a Dask ``LocalCluster`` by default, or an existing scheduler).
Each task evaluates its patients with the same composition as ``movement-cds evaluate``
(``DecisionSupport(kb).evaluate(bundle, as_of=...)``, durable-rules engine, one knowledge
base loaded once per worker process), so a patient's output Bundle is the one ``evaluate``
gives at the same as-of instant.

Outputs in DIR (a task writes its bucket's files itself; with a remote scheduler DIR and the
input must be on a filesystem the workers share, at the same path):

* ``bundles/part-NNNNN.ndjson.gz``: one output Bundle per line (canonical JSON: sorted keys,
  no spaces), in bucket order; NNNNN is the bucket number; gzip with no name and no time, so
  the same run gives the same bytes;
* ``summary.parquet``: one row per patient (:data:`SUMMARY_COLUMNS`); each bucket writes
  ``work/summary/part-NNNNN.parquet`` and the end of the run combines them, in bucket order,
  into the single file (one row group per bucket);
* ``errors.ndjson``: ``{"patient", "bucket", "error", "outcome"}`` per patient that could not
  be evaluated, ``outcome`` its FHIR OperationOutcome;
* ``manifest.json``: the input files and their SHA-256, counts, timings, versions.

Failures: a patient that cannot be evaluated is an error row (:data:`ERROR_CODES`), never a
failed task. A worker process that dies mid-patient is re-run by Dask; the task keeps a
per-patient progress log (``work/progress/part-NNNNN.log``), so the re-run knows which
patient each dead attempt was evaluating, and a patient that killed
:data:`QUARANTINE_AFTER` attempts of this run is quarantined (error ``worker-died``, not
evaluated again) while the rest of the bucket goes on. A bucket is finished when its marker
``work/done/part-NNNNN.json`` exists (written last, atomically, after its outputs were renamed
into place); ``--resume`` skips finished buckets, so an interrupted run resumed gives the same
outputs as one uninterrupted run.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import resource
import shutil
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cds import EngineError, InputIssue, MovementCDSError, Plan
from fhir_adapters import InvalidBundleError, operation_outcome
from movement_cds._errors import PopulationRunError
from movement_cds._population_input import (
    BucketEntry,
    PopulationInput,
    bucket_entries,
    open_population,
)
from movement_cds._runner import POPULATION_EXTRA, RunnerError, Task, Where, run_tasks
from movement_cds._version import __version__

__all__ = [
    "CRASH_HOOK_ENV",
    "ERROR_CODES",
    "QUARANTINE_AFTER",
    "SUMMARY_COLUMNS",
    "BucketJob",
    "PopulationRunError",
    "RunReport",
    "evaluate_bucket",
    "run_population",
]

log = logging.getLogger("movement_cds.population")

#: TEST HOOK, for the crash-injection tests only: a worker about to evaluate the patient with
#: this id ends its process at once (``os._exit``), as a durable-rules abort does. Never set
#: it in production.
CRASH_HOOK_ENV: Final = "MOVEMENT_CDS_TEST_EXIT_ON_PATIENT"
#: Attempts of a bucket that must die on the same patient before it is quarantined (one death
#: may be the machine's, not the patient's: a killed or pre-empted worker).
QUARANTINE_AFTER: Final = 2
ERROR_CODES: Final = {
    "input-refused": "the input Bundle cannot be evaluated (its OperationOutcome says why)",
    "engine-failed": "the rule engine failed for this patient; no advice",
    "evaluation-failed": "evaluation stopped with an error of the decision support",
    "internal-error": "an unexpected error (a bug): its type is in the OperationOutcome",
    "worker-died": "the worker process died while evaluating this patient; quarantined",
    "unreadable-line": "the bucket line is not a patient (not JSON or not a bucket line)",
}
SUMMARY_COLUMNS: Final = ("patient", "bucket", "knowledge_base", "as_of", "level_of_concern",
                          "top_referral", "alerts", "proposed_exercises", "held_exercises",
                          "error")
_PRIORITY: Final = ("stat", "asap", "urgent", "routine")
_LEVEL_FACT: Final = "classification.red-flag-concern"


# --- paths ---------------------------------------------------------------------------------


def _part(n: int) -> str:
    return f"part-{n:05d}"


@dataclass(frozen=True)
class _Paths:
    out: Path

    @property
    def work(self) -> Path:
        return self.out / "work"

    def bundles(self, n: int) -> Path:
        return self.out / "bundles" / f"{_part(n)}.ndjson.gz"

    def summary(self, n: int) -> Path:
        return self.work / "summary" / f"{_part(n)}.parquet"

    def errors(self, n: int) -> Path:
        return self.work / "errors" / f"{_part(n)}.ndjson"

    def progress(self, n: int) -> Path:
        return self.work / "progress" / f"{_part(n)}.log"

    def done(self, n: int) -> Path:
        return self.work / "done" / f"{_part(n)}.json"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# --- in a worker: one bucket ----------------------------------------------------------------


@dataclass(frozen=True)
class BucketJob:
    """What a task needs to evaluate bucket ``number`` (all plain, picklable values)."""

    number: int
    source: str  # the bucket file
    out: str  # the run's output directory
    as_of: str  # ISO 8601
    kb: str | None  # knowledge-base directory; None: the bundled one
    run: str  # this invocation's token: progress logged by earlier invocations is not ours


_SUPPORT: dict[str | None, Any] = {}  # knowledge base -> DecisionSupport, per process


def _support(kb: str | None) -> Any:
    if kb not in _SUPPORT:
        from movement_cds._api import DecisionSupport

        _SUPPORT[kb] = DecisionSupport(kb)
    return _SUPPORT[kb]


class _ProgressLog:
    """A bucket's per-patient progress, appended unbuffered (``os.write`` on an
    ``O_APPEND`` descriptor), so a process that dies mid-patient leaves the patient's id as
    the last line of its attempt."""

    def __init__(self, path: Path, run: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.strikes = _strikes(path, run)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.write({"attempt": uuid.uuid4().hex, "run": run, "pid": os.getpid()})

    def write(self, doc: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(doc) + "\n").encode())

    def close(self) -> None:
        self.write({"end": True})
        os.close(self.fd)


def _strikes(path: Path, run: str) -> Counter[str]:
    """How many attempts of this run died while evaluating each patient: attempts whose last
    line is a ``start``."""
    out: Counter[str] = Counter()
    if not path.exists():
        return out
    current: str | None = None
    last: str | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(raw) if raw.strip() else {}
        if "attempt" in doc:
            if current == run and last is not None:
                out[last] += 1
            current, last = doc.get("run"), None
        elif "start" in doc:
            last = doc["start"]
        elif "end" in doc:
            last = None
    if current == run and last is not None:
        out[last] += 1
    return out


@dataclass
class _Bucket:
    """What a bucket's patients gave, as they are evaluated."""

    job: BucketJob
    kb_release: str
    as_of: datetime
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def row(self, pid: str, plan: Plan | None, error: str | None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "patient": pid, "bucket": self.job.number, "knowledge_base": self.kb_release,
            "as_of": self.as_of, "level_of_concern": None, "top_referral": None,
            "alerts": [], "proposed_exercises": [], "held_exercises": [], "error": error}
        if plan is not None:
            level = plan.derived_values.get(_LEVEL_FACT)
            prios = [a.referral.priority for a in plan.alerts if a.referral]
            row.update(
                level_of_concern=level if isinstance(level, str) else None,
                top_referral=min(prios, key=_PRIORITY.index) if prios else "none",
                alerts=sorted({a.code for a in plan.alerts}),
                proposed_exercises=[x.exercise_id for x in plan.exercises
                                    if x.status == "proposed"],
                held_exercises=[x.exercise_id for x in plan.exercises if x.status == "on-hold"])
            self.counts[f"level:{row['level_of_concern'] or 'unknown'}"] += 1
            self.counts[f"referral:{row['top_referral']}"] += 1
            self.counts["held"] += plan.exercise_held
            self.counts["evaluated"] += 1
        self.counts["patients"] += 1
        self.rows.append(row)
        return row

    def error(self, pid: str, code: str, outcome: dict[str, Any]) -> None:
        self.row(pid, None, code)
        self.counts[f"error:{code}"] += 1
        self.errors.append(_canonical({"patient": pid, "bucket": self.job.number,
                                       "error": code, "outcome": outcome}))


def _fail(severity: str, code: str, message: str) -> dict[str, Any]:
    return operation_outcome([InputIssue(severity, code, message)])


def _evaluate_one(b: _Bucket, support: Any, entry: BucketEntry,
                  write: Callable[[str], object]) -> None:
    pid = entry.patient
    try:
        result = support.evaluate(entry.bundle, as_of=b.as_of)
    except InvalidBundleError as e:
        b.error(pid, "input-refused", e.operation_outcome)
        return
    except EngineError as e:
        b.error(pid, "engine-failed", _fail("fatal", "exception",
                                            f"rule engine failed: {e.message}"))
        return
    except MovementCDSError as e:
        b.error(pid, "evaluation-failed", _fail("fatal", "exception",
                                                f"evaluation failed: {type(e).__name__}"))
        return
    except Exception as e:  # a bug: one error row, the bucket goes on
        # the type only: an exception's text may quote the patient's data
        log.error("bucket %d: internal error (%s) for patient %s", b.job.number,
                  type(e).__name__, pid)
        b.error(pid, "internal-error", _fail("fatal", "exception",
                                             f"internal error ({type(e).__name__})"))
        return
    b.row(pid, result.plan, None)
    write(_canonical(result.bundle) + "\n")


def _evaluate_entries(b: _Bucket, support: Any, plog: _ProgressLog,
                      write: Callable[[str], object]) -> None:
    crash_on = os.environ.get(CRASH_HOOK_ENV)  # TEST HOOK (see CRASH_HOOK_ENV)
    for entry in bucket_entries(Path(b.job.source)):
        if entry.bundle is None:
            b.error(entry.patient, "unreadable-line",
                    _fail("error", "structure", entry.problem))
            continue
        if plog.strikes[entry.patient] >= QUARANTINE_AFTER:
            b.error(entry.patient, "worker-died", _fail(
                "fatal", "exception", f"the worker process died {QUARANTINE_AFTER} times "
                "while evaluating this patient; quarantined, not evaluated"))
            continue
        plog.write({"start": entry.patient})
        if crash_on is not None and entry.patient == crash_on:  # TEST HOOK
            os._exit(70)
        _evaluate_one(b, support, entry, write)


def evaluate_bucket(job: BucketJob) -> dict[str, Any]:
    """Evaluate every patient of one bucket and write its outputs; returns its completion
    record (also written as the bucket's marker). A finished bucket is not run again."""
    paths = _Paths(Path(job.out))
    if paths.done(job.number).exists():
        return dict(json.loads(paths.done(job.number).read_text(encoding="utf-8")))
    started = time.monotonic()
    support = _support(job.kb)
    b = _Bucket(job, support.kb.ruleset_name, datetime.fromisoformat(job.as_of))
    plog = _ProgressLog(paths.progress(job.number), job.run)
    bundles = paths.bundles(job.number)
    bundles.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundles.with_name(f".{bundles.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="",
                                              mtime=0, compresslevel=6) as gz:
        _evaluate_entries(b, support, plog, lambda s: gz.write(s.encode("utf-8")))
    plog.close()
    _write_summary(paths.summary(job.number), b.rows)
    errors = paths.errors(job.number)
    errors.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(errors, "".join(e + "\n" for e in b.errors).encode("utf-8"))
    os.replace(tmp, bundles)
    record = {"bucket": job.number, "run": job.run, "knowledge_base": b.kb_release,
              "counts": dict(sorted(b.counts.items())),
              "seconds": round(time.monotonic() - started, 3),
              "worker": f"{socket.gethostname()}:{os.getpid()}",
              "peak_rss_mb": round(_peak_rss_mb(), 1)}
    paths.done(job.number).parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths.done(job.number), (json.dumps(record, sort_keys=True) + "\n").encode())
    return record


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# --- parquet ---------------------------------------------------------------------------------


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise RunnerError(f"pyarrow is not installed: {POPULATION_EXTRA}") from None
    return pyarrow


def summary_schema() -> Any:
    """The schema of ``summary.parquet`` (pyarrow)."""
    pa = _pyarrow()
    text, names = pa.string(), pa.list_(pa.string())
    return pa.schema([
        ("patient", text), ("bucket", pa.int32()), ("knowledge_base", text),
        ("as_of", pa.timestamp("us", tz="UTC")), ("level_of_concern", text),
        ("top_referral", text), ("alerts", names), ("proposed_exercises", names),
        ("held_exercises", names), ("error", text)])


def _write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    pa = _pyarrow()
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=summary_schema())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pa.parquet.write_table(table, tmp)
    os.replace(tmp, path)


def _combine(paths: _Paths, buckets: int) -> None:
    """``summary.parquet`` (one row group per bucket) and ``errors.ndjson``, in bucket
    order, from the buckets' parts; each written beside and renamed into place."""
    pa = _pyarrow()
    summary = paths.out / "summary.parquet"
    tmp = summary.with_name(f".{summary.name}.tmp")
    with pa.parquet.ParquetWriter(tmp, summary_schema()) as writer:
        for n in range(buckets):
            writer.write_table(pa.parquet.read_table(paths.summary(n), schema=summary_schema()))
    os.replace(tmp, summary)
    errors = paths.out / "errors.ndjson"
    tmp = errors.with_name(f".{errors.name}.tmp")
    with tmp.open("wb") as f:
        for n in range(buckets):
            f.write(paths.errors(n).read_bytes())
    os.replace(tmp, errors)


# --- the driver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunReport:
    """What a run did (also ``manifest.json``)."""

    out: Path
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, Any]:
        return dict(self.manifest["counts"])


def _settings(source: Path, kb: Path | None, as_of: datetime) -> dict[str, Any]:
    return {"input": str(source.resolve()), "kb": str(kb.resolve()) if kb else None,
            "as_of": as_of.isoformat()}


def _start(paths: _Paths, source: Path, kb: Path | None, as_of: datetime | None,
           resume: bool) -> dict[str, Any]:
    """The run's settings: new (``work/run.json`` written), or the recorded ones on
    ``resume``, which must match what was asked."""
    recorded = paths.work / "run.json"
    if recorded.exists():
        if not resume:
            raise PopulationRunError(f"{paths.out} holds an earlier run: --resume to finish "
                                     "it, or choose another --out")
        old = json.loads(recorded.read_text(encoding="utf-8"))
        asked = _settings(source, kb, as_of or datetime.fromisoformat(old["as_of"]))
        differ = [k for k in ("input", "kb", "as_of") if asked[k] != old[k]]
        if differ:
            raise PopulationRunError(
                f"--resume: {', '.join(differ)} differ(s) from the run in {paths.out} "
                f"({'; '.join(f'{k}: {old[k]}' for k in differ)})")
        return dict(old)
    if paths.out.exists() and any(p.name != "work" for p in paths.out.iterdir()):
        raise PopulationRunError(f"{paths.out} is not empty and holds no run: choose "
                                 "another --out")
    when = as_of or datetime.now(UTC).replace(microsecond=0)
    settings = _settings(source, kb, when)
    paths.work.mkdir(parents=True, exist_ok=True)
    _write_atomic(recorded, (json.dumps(settings, indent=2) + "\n").encode())
    return settings


def _population(paths: _Paths, source: Path, buckets: int) -> tuple[PopulationInput,
                                                                      list[int], float]:
    """The grouped input and each bucket's patients; grouped once per run (kept in
    ``work/input.json`` for ``--resume``)."""
    saved = paths.work / "input.json"
    if saved.exists():
        doc = json.loads(saved.read_text(encoding="utf-8"))
        pop = PopulationInput(Path(doc["source"]), doc["kind"],
                              tuple(Path(b) for b in doc["buckets"]), doc["patients"], (),
                              doc["orphans"], doc["rejected"], doc["orphans_file"],
                              doc["rejected_file"])
        return pop, list(doc["sizes"]), 0.0
    started = time.monotonic()
    grouped = paths.work / "grouped"
    if grouped.is_dir() and not source.resolve().is_relative_to(grouped.resolve()):
        shutil.rmtree(grouped)  # a grouping that an interruption left unfinished
    pop = open_population(source, grouped, buckets=buckets)
    sizes = [_count_lines(b) for b in pop.buckets]
    doc = {**pop.to_json(), "source": str(pop.source),
           "buckets": [str(b) for b in pop.buckets], "sizes": sizes}
    _write_atomic(saved, (json.dumps(doc, indent=2) + "\n").encode())
    return pop, sizes, time.monotonic() - started


def _remove_temporaries(paths: _Paths) -> None:
    """Half-written files of attempts an interrupted run left (``.NAME.*.tmp``); no task of
    this run has started yet."""
    for folder in (paths.out / "bundles", paths.work / "summary", paths.work / "errors",
                   paths.work / "done", paths.out):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for raw in f if raw.strip())


def run_population(
    source: Path,
    out: Path,
    *,
    as_of: datetime | None = None,
    where: Where | None = None,
    kb: Path | None = None,
    resume: bool = False,
    buckets: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> RunReport:
    """Evaluate every patient of ``source`` into ``out`` (see the module docstring). Raises
    ``PopulationRunError``, ``PopulationInputError`` or ``RunnerError`` with a message naming
    what to fix."""
    started = time.monotonic()
    paths = _Paths(out)
    settings = _start(paths, source, kb, as_of, resume)
    pop, sizes, group_s = _population(paths, source, buckets)
    _remove_temporaries(paths)
    token = uuid.uuid4().hex
    todo = [n for n in range(len(pop.buckets)) if not paths.done(n).exists()]
    skipped = sum(sizes) - sum(sizes[n] for n in todo)
    tasks = [Task(evaluate_bucket, (BucketJob(n, str(pop.buckets[n]), str(out),
                                              settings["as_of"], settings["kb"], token),),
                  sizes[n], name=_part(n)) for n in todo]
    where = where or Where(workers=2, dask=True)

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(skipped + done, skipped + total)

    clock = {"start": time.monotonic()}
    started_workers = clock["start"]

    def ready() -> None:
        clock["ready"] = time.monotonic()

    run_tasks(tasks, where, report, lost_worker_retries=max(3, max(sizes, default=0)),
              on_ready=ready)
    evaluate_s = time.monotonic() - clock.get("ready", started_workers)
    combine_started = time.monotonic()
    _combine(paths, len(pop.buckets))
    timings = {"group_s": group_s,
               "start_workers_s": clock.get("ready", started_workers) - started_workers,
               "evaluate_s": evaluate_s,
               "combine_s": time.monotonic() - combine_started,
               "total_s": time.monotonic() - started,
               "evaluated_this_run": sum(t.size for t in tasks)}
    manifest = _manifest(paths, pop, settings, where, timings, len(todo))
    _write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return RunReport(out, manifest)


def _records(paths: _Paths, buckets: int) -> Iterator[dict[str, Any]]:
    for n in range(buckets):
        yield json.loads(paths.done(n).read_text(encoding="utf-8"))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"movement-cds": __version__, "python": sys.version.split()[0]}
    for dist in ("dask", "distributed", "pyarrow", "durable-rules"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _manifest(paths: _Paths, pop: PopulationInput, settings: dict[str, Any], where: Where,
              timings: dict[str, float], ran: int) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    release = None
    workers: dict[str, dict[str, Any]] = {}
    bucket_s = 0.0
    for rec in _records(paths, len(pop.buckets)):
        counts.update(rec["counts"])
        release = rec["knowledge_base"]
        bucket_s += rec["seconds"]
        w = workers.setdefault(rec["worker"], {"worker": rec["worker"], "buckets": 0,
                                               "peak_rss_mb": 0.0})
        w["buckets"] += 1
        w["peak_rss_mb"] = max(w["peak_rss_mb"], rec["peak_rss_mb"])
    saved = json.loads((paths.work / "input.json").read_text(encoding="utf-8"))
    rate = timings["evaluated_this_run"] / timings["evaluate_s"] if timings["evaluate_s"] else 0
    return {
        "command": "movement-cds population run",
        "as_of": settings["as_of"],
        "knowledge_base": {"directory": settings["kb"] or "bundled",
                           "release": release},
        "input": {k: v for k, v in saved.items() if k not in ("buckets", "sizes")},
        "where": where.describe(),
        "counts": _grouped_counts(counts, len(pop.buckets), ran),
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "bucket_seconds_total": round(bucket_s, 3),
                    "patients_per_s": round(rate, 1)},
        "workers": sorted(workers.values(), key=lambda w: str(w["worker"])),
        "versions": _versions(),
        "outputs": {"bundles": "bundles/part-NNNNN.ndjson.gz", "summary": "summary.parquet",
                    "errors": "errors.ndjson", "summary_columns": list(SUMMARY_COLUMNS)},
    }


def _grouped_counts(c: Counter[str], buckets: int, ran: int) -> dict[str, Any]:
    def section(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: v for k, v in sorted(c.items()) if k.startswith(prefix)}

    return {"buckets": buckets, "buckets_run_this_time": ran,
            "buckets_skipped_as_finished": buckets - ran,
            "patients": c["patients"], "evaluated": c["evaluated"],
            "errors": sum(section("error:").values()), "errors_by_code": section("error:"),
            "exercise_held": c["held"], "level_of_concern": section("level:"),
            "top_referral": section("referral:")}
