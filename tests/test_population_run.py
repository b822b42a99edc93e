"""``movement-cds population run`` on Dask (issue 16 parts 2-4 and 7): real worker processes
(a 2-worker LocalCluster, and ``dask scheduler`` / ``dask worker`` started as commands on
loopback), a worker killed mid-patient, an interrupted run resumed, and every output Bundle
checked against ``movement-cds evaluate`` on sampled patients.

The inputs are bucket files written here in the format of ``fhir_adapters.group_export``
(tests/population_helpers.py), from the seeded synthetic population.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

pytest.importorskip("distributed")
pa_parquet = pytest.importorskip("pyarrow.parquet")

from cds import Evaluator, Plan, load_knowledge_base  # noqa: E402
from fhir_adapters import InvalidBundleError, read_bundle  # noqa: E402
from movement_cds import DecisionSupport, Where, run_population  # noqa: E402
from movement_cds._cli import app  # noqa: E402
from movement_cds._population_input import bucket_entries  # noqa: E402
from movement_cds._population_run import (  # noqa: E402
    CRASH_HOOK_ENV,
    QUARANTINE_AFTER,
    SUMMARY_COLUMNS,
    _strikes,
)
from tests.conftest import STARTER  # noqa: E402
from tests.population_helpers import AS_OF, AS_OF_TEXT, write_buckets  # noqa: E402

BIN = Path(sys.executable).parent
PATIENTS, BUCKETS = 36, 4
NO_PATIENT = {"resourceType": "Bundle", "type": "collection", "entry": []}
runner = CliRunner()


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """36 synthetic patients in 4 buckets, one Bundle without a Patient and one line that is
    not JSON."""
    root = tmp_path_factory.mktemp("population") / "in"
    by_id = write_buckets(root, PATIENTS, BUCKETS, extra={"no-patient": NO_PATIENT},
                          raw_lines={1: "{not json"})
    return root, by_id


@pytest.fixture(scope="module")
def local_run(population: tuple[Path, dict[str, Any]],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run: a 2-worker LocalCluster through the library call."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_population(population[0], out, as_of=AS_OF, where=Where(workers=2, dask=True))
    return out


def _lines(out: Path) -> dict[str, list[str]]:
    return {p.name: gzip.decompress(p.read_bytes()).decode().splitlines()
            for p in sorted((out / "bundles").glob("part-*.ndjson.gz"))}


def _subject(line: str) -> str:
    doc = json.loads(line)
    plan = next(e["resource"] for e in doc["entry"]
                if e["resource"]["resourceType"] == "CarePlan")
    return str(plan["subject"]["reference"]).removeprefix("Patient/")


def _summary(out: Path) -> list[dict[str, Any]]:
    return list(pa_parquet.read_table(out / "summary.parquet").to_pylist())


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- outputs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sampled_bundles_are_byte_for_byte_what_evaluate_gives(
        local_run: Path, population: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    by_subject = {_subject(x): x for lines in _lines(local_run).values() for x in lines}
    assert len(by_subject) == PATIENTS  # every patient once; the two bad ones have none
    for pid in random.Random(16).sample(sorted(by_subject), 3):
        source = tmp_path / f"{pid}.json"
        source.write_text(json.dumps(population[1][pid]))
        r = runner.invoke(app, ["evaluate", str(source), "--as-of", AS_OF_TEXT, "--quiet",
                                "--out", str(tmp_path / f"{pid}-out.json")])
        assert r.exit_code == 0, r.stderr
        expected = json.loads((tmp_path / f"{pid}-out.json").read_text())
        assert by_subject[pid] == _canonical(expected), pid


def _expected_row(plan: Plan) -> dict[str, Any]:
    prios = [a.referral.priority for a in plan.alerts if a.referral is not None]
    return {
        "alerts": sorted({a.code for a in plan.alerts}),
        "top_referral": min(prios, key=("stat", "asap", "urgent", "routine").index)
        if prios else "none",
        "proposed_exercises": [x.exercise_id for x in plan.exercises
                               if x.status == "proposed"],
        "held_exercises": [x.exercise_id for x in plan.exercises if x.status == "on-hold"],
        "error": None,
    }


@pytest.mark.slow
def test_summary_has_one_row_per_patient_matching_its_plan(
        local_run: Path, population: tuple[Path, dict[str, Any]]) -> None:
    rows = _summary(local_run)
    assert tuple(pa_parquet.read_schema(local_run / "summary.parquet").names) == \
        SUMMARY_COLUMNS
    assert len(rows) == PATIENTS + 2
    assert [r["bucket"] for r in rows] == sorted(r["bucket"] for r in rows)
    support = DecisionSupport()
    by_id = {r["patient"]: r for r in rows}
    for pid in random.Random(3).sample(sorted(population[1].keys() - {"no-patient"}), 8):
        plan = support.evaluate(population[1][pid], as_of=AS_OF).plan
        row = by_id[pid]
        assert {k: row[k] for k in _expected_row(plan)} == _expected_row(plan), pid
        assert row["knowledge_base"] == support.kb.ruleset_name
        assert row["as_of"] == AS_OF
        assert row["level_of_concern"] == plan.derived_values.get(
            "classification.red-flag-concern")
    held = sum(1 for r in rows if r["held_exercises"])
    assert 0 < held < PATIENTS  # the sample has both kinds (the checks above can fail)


@pytest.mark.slow
def test_bad_patients_are_error_rows_with_their_operation_outcome(local_run: Path) -> None:
    errors = [json.loads(x) for x in (local_run / "errors.ndjson").read_text().splitlines()]
    assert sorted(e["error"] for e in errors) == ["input-refused", "unreadable-line"]
    refused = next(e for e in errors if e["error"] == "input-refused")
    assert refused["patient"] == "no-patient"
    assert refused["outcome"]["resourceType"] == "OperationOutcome"
    assert "Patient" in refused["outcome"]["issue"][0]["diagnostics"]
    line = next(e for e in errors if e["error"] == "unreadable-line")
    assert line["bucket"] == 1 and "line" in line["outcome"]["issue"][0]["diagnostics"]
    rows = {r["patient"]: r for r in _summary(local_run)}
    assert rows["no-patient"]["error"] == "input-refused"
    assert rows["no-patient"]["alerts"] == [] and rows["no-patient"]["top_referral"] is None


@pytest.mark.slow
def test_manifest_names_inputs_digests_counts_and_versions(
        local_run: Path, population: tuple[Path, dict[str, Any]]) -> None:
    import hashlib

    m = json.loads((local_run / "manifest.json").read_text())
    files = {Path(f["path"]).name: f for f in m["input"]["files"]}
    for p in sorted(population[0].glob("*.ndjson")):
        assert files[p.name]["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert m["counts"]["patients"] == PATIENTS + 2
    assert m["counts"]["evaluated"] == PATIENTS
    assert m["counts"]["errors_by_code"] == {"input-refused": 1, "unreadable-line": 1}
    levels = Counter(r["level_of_concern"] or "unknown" for r in _summary(local_run)
                     if r["error"] is None)
    assert m["counts"]["level_of_concern"] == dict(levels)
    assert m["as_of"] == AS_OF_TEXT
    assert {"movement-cds", "dask", "distributed", "pyarrow"} <= m["versions"].keys()
    assert m["where"].startswith("Dask LocalCluster, 2 worker")
    assert len(m["workers"]) == 2 and all(w["peak_rss_mb"] > 0 for w in m["workers"])


# --- the command line: crash injection, interruption ------------------------------------------


def _run_cli(inp: Path, out: Path, *extra: str, env: dict[str, str] | None = None,
             ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "movement-cds"), "population", "run", str(inp), "--out", str(out),
         "--as-of", AS_OF_TEXT, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _same_outputs(a: Path, b: Path) -> None:
    for name in sorted(p.name for p in (a / "bundles").iterdir()):
        assert (a / "bundles" / name).read_bytes() == (b / "bundles" / name).read_bytes(), name
    assert sorted(p.name for p in (a / "bundles").iterdir()) == \
        sorted(p.name for p in (b / "bundles").iterdir())
    assert (a / "errors.ndjson").read_bytes() == (b / "errors.ndjson").read_bytes()
    assert pa_parquet.read_table(a / "summary.parquet").equals(
        pa_parquet.read_table(b / "summary.parquet"))
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    skip = {"buckets_run_this_time", "buckets_skipped_as_finished"}
    assert {k: v for k, v in ma["counts"].items() if k not in skip} == \
        {k: v for k, v in mb["counts"].items() if k not in skip}


@pytest.mark.slow
def test_a_worker_killed_mid_patient_quarantines_the_patient_and_the_run_goes_on(
        local_run: Path, population: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    victim = sorted(population[1].keys() - {"no-patient"})[7]
    out = tmp_path / "out"
    proc = _run_cli(population[0], out, "--workers", "2", env={CRASH_HOOK_ENV: victim})
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    rows = {r["patient"]: r for r in _summary(out)}
    assert rows[victim]["error"] == "worker-died"
    errors = [json.loads(x) for x in (out / "errors.ndjson").read_text().splitlines()]
    assert [e["error"] for e in errors if e["patient"] == victim] == ["worker-died"]
    bucket = rows[victim]["bucket"]
    log = out / "work" / "progress" / f"part-{bucket:05d}.log"
    # the worker died QUARANTINE_AFTER times on this patient (the log says so), then the
    # bucket's other patients were evaluated
    assert _strikes(log, _last_run(log)) == Counter({victim: QUARANTINE_AFTER})
    mates = [r for r in rows.values() if r["bucket"] == bucket and r["patient"] != victim]
    assert mates and all(r["error"] in (None, "unreadable-line", "input-refused")
                         for r in mates)
    # every other output is the uninterrupted run's
    clean = {r["patient"]: r for r in _summary(local_run)}
    assert {p: r for p, r in rows.items() if p != victim} == \
        {p: r for p, r in clean.items() if p != victim}
    want = {x for lines in _lines(local_run).values() for x in lines
            if _subject(x) != victim}
    assert {x for lines in _lines(out).values() for x in lines} == want
    assert b"worker-died 1" in stdout


def _last_run(log: Path) -> str:
    runs = [json.loads(x)["run"] for x in log.read_text().splitlines() if '"attempt"' in x]
    return str(runs[-1])


@pytest.mark.slow
def test_an_interrupted_run_resumed_gives_the_outputs_of_one_run(
        local_run: Path, population: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    inp = tmp_path / "in"
    shutil.copytree(population[0], inp)
    reference = tmp_path / "reference"
    shutil.copytree(local_run, reference)
    out = tmp_path / "out"
    proc = _run_cli(inp, out, "--workers", "1")
    done = out / "work" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (done.is_dir() and any(done.iterdir())):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # the run process, mid-run
    proc.communicate(timeout=30)
    finished = len(list(done.iterdir()))
    assert 1 <= finished < BUCKETS, finished
    assert not (out / "summary.parquet").exists()
    again = runner.invoke(app, ["population", "run", str(inp), "--out", str(out)])
    assert again.exit_code == 1 and "--resume" in again.stderr  # without --resume: refused
    resumed = _run_cli(inp, out, "--workers", "1", "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err.decode()[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["buckets_skipped_as_finished"] == finished
    # the reference ran on another copy of the same input: same bucket numbering and bytes
    _same_outputs(reference, out)


def test_strikes_count_the_attempts_of_this_run_that_died_on_each_patient(
        tmp_path: Path) -> None:
    log = tmp_path / "part.log"
    lines = [{"attempt": "a", "run": "r1"}, {"start": "p1"},  # died on p1 (another run)
             {"attempt": "b", "run": "r2"}, {"start": "p1"}, {"start": "p2"},  # died on p2
             {"attempt": "c", "run": "r2"}, {"start": "p1"}, {"start": "p2"}, {"end": True},
             {"attempt": "d", "run": "r2"}, {"start": "p2"}]  # died on p2 again
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert _strikes(log, "r2") == Counter({"p2": 2})
    assert _strikes(log, "r1") == Counter({"p1": 1})
    assert _strikes(tmp_path / "missing.log", "r2") == Counter()


attempts = st.lists(st.tuples(st.sampled_from(["r1", "r2"]),
                               st.lists(st.sampled_from(["p1", "p2", "p3"]), max_size=4),
                               st.booleans()), max_size=8)


@settings(max_examples=60, deadline=None)
@given(attempts)
def test_strikes_blame_the_last_patient_of_each_dead_attempt_of_the_run(
        tmp_path_factory: pytest.TempPathFactory,
        runs: list[tuple[str, list[str], bool]]) -> None:
    log = tmp_path_factory.mktemp("log") / "part.log"
    lines = []
    for run, started, died in runs:
        lines.append({"attempt": "x", "run": run})
        lines += [{"start": p} for p in started]
        if not died:
            lines.append({"end": True})
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    for run in ("r1", "r2"):
        assert _strikes(log, run) == Counter(
            started[-1] for r, started, died in runs if r == run and died and started)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=6))
def test_any_bucket_line_is_a_patient_or_a_problem_never_an_exception(
        tmp_path_factory: pytest.TempPathFactory, raw: list[bytes]) -> None:
    path = tmp_path_factory.mktemp("bucket") / "b.ndjson"
    path.write_bytes(b"".join(x + b"\n" for x in raw))
    entries = list(bucket_entries(path))
    assert len(entries) == sum(1 for x in raw if x.strip())
    for e in entries:
        assert (e.bundle is None) == bool(e.problem)
        assert e.problem == "" or f"line {e.line}" in e.problem


# --- a real scheduler and worker on loopback --------------------------------------------------


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker`` (one process, one thread) as commands on
    127.0.0.1; the scheduler's address from its scheduler file. Both stopped after."""
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_a_run_against_a_scheduler_address_gives_the_local_runs_outputs(
        dask_cluster: str, local_run: Path, population: tuple[Path, dict[str, Any]],
        tmp_path: Path) -> None:
    inp = tmp_path / "in"
    shutil.copytree(population[0], inp)
    reference = tmp_path / "reference"
    shutil.copytree(local_run, reference)
    out = tmp_path / "out"
    r = runner.invoke(app, ["population", "run", str(inp), "--out", str(out), "--as-of",
                            AS_OF_TEXT, "--scheduler", dask_cluster])
    assert r.exit_code == 0, r.stderr
    _same_outputs(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["where"] == f"Dask scheduler {dask_cluster}"
    # kb profile on the same scheduler, over the same real population: the figures of
    # the summary (reference engine there, durable-rules here)
    r = runner.invoke(app, ["kb", "profile", "--json", "--input", str(inp), "--as-of",
                            AS_OF_TEXT, "--scheduler", dask_cluster])
    assert r.exit_code == 0, r.stderr
    profile = json.loads(r.stdout)
    rows = [x for x in _summary(out) if x["error"] is None]
    assert profile["patients"] == PATIENTS + 2
    assert profile["population_input"] == str(inp)
    tops = Counter(x["top_referral"] for x in rows)
    assert {k: v["patients"] for k, v in profile["referral"].items() if v["patients"]} == \
        dict(tops)


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "words", "code"), [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "exclude each other", 2),
    (["--scheduler", "127.0.0.1:8786"], "not an address", 2),
    (["--as-of", "2026-11-02"], "time zone", 2),
])
def test_bad_arguments_fail_in_one_line(args: list[str], words: str, code: int,
                                        population: tuple[Path, dict[str, Any]],
                                        tmp_path: Path) -> None:
    r = runner.invoke(app, ["population", "run", str(population[0]), "--out",
                            str(tmp_path / "o"), *args])
    assert r.exit_code == code and words in r.stderr, r.stderr


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line_not_a_hang(
        population: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    r = runner.invoke(app, ["population", "run", str(population[0]), "--out",
                            str(tmp_path / "o"), "--as-of", AS_OF_TEXT, "--scheduler",
                            f"tcp://127.0.0.1:{port}"])
    assert r.exit_code == 1 and "cannot connect to the Dask scheduler" in r.stderr, r.stderr
    assert time.monotonic() - started < 40


def test_resume_with_another_as_of_or_a_foreign_directory_is_refused(
        population: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    (out / "work" / "run.json").write_text(json.dumps(
        {"input": str(population[0].resolve()), "kb": None, "as_of": AS_OF_TEXT}))
    r = runner.invoke(app, ["population", "run", str(population[0]), "--out", str(out),
                            "--resume", "--as-of", "2026-12-01T00:00:00Z"])
    assert r.exit_code == 1 and "as_of" in r.stderr, r.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    r = runner.invoke(app, ["population", "run", str(population[0]), "--out", str(other)])
    assert r.exit_code == 1 and "not empty" in r.stderr, r.stderr


# --- from a Bulk Data export: population synth, grouped, then run -----------------------------


@pytest.mark.slow
def test_a_bulk_export_is_grouped_then_run_with_its_files_and_orphans_in_the_manifest(
        tmp_path: Path) -> None:
    import hashlib

    from fhir_adapters import group_export, read_bucket, synth_export
    from knowledge_base import bundled_path

    export = tmp_path / "export"
    synth_export(export, patients=24, seed=5, as_of=AS_OF,
                 kb=load_knowledge_base(bundled_path()))
    out = tmp_path / "out"
    r = runner.invoke(app, ["population", "run", str(export), "--out", str(out), "--as-of",
                            AS_OF_TEXT, "--workers", "1", "--buckets", "4"])
    assert r.exit_code == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["input"]["kind"] == "bulk-export" and m["counts"]["buckets"] == 4
    files = {Path(f["path"]).name: f for f in m["input"]["files"]}
    assert files and all(
        f["sha256"] == hashlib.sha256((export / name).read_bytes()).hexdigest()
        for name, f in files.items())
    # the same grouping done independently: same patients, orphans and rejected lines
    g = group_export(export, tmp_path / "again", buckets=4)
    assert m["counts"]["patients"] == g.patients == 24
    assert (m["input"]["orphans"], m["input"]["rejected"]) == (g.orphan_count,
                                                               g.rejected_count)
    assert g.orphan_count > 0 and g.rejected_count > 0  # synth writes some on purpose
    rows = {x["patient"]: x for x in _summary(out)}
    support = DecisionSupport()
    pid, bundle = next(read_bucket(g.buckets[0]))
    want = support.evaluate(bundle, as_of=AS_OF)
    assert rows[pid]["alerts"] == sorted({a.code for a in want.plan.alerts})
    lines = gzip.decompress((out / "bundles" / "part-00000.ndjson.gz").read_bytes())
    assert _canonical(want.bundle) in lines.decode().splitlines()


# --- kb diff over a real population -----------------------------------------------------------


def test_kb_diff_over_an_input_population_counts_what_an_independent_evaluation_counts(
        population: tuple[Path, dict[str, Any]], kb_copy: Path, tmp_path: Path) -> None:
    rules = kb_copy / "rules" / "movement-screen.yaml"
    text = rules.read_text()
    removed = """      - recommend:
          exercise: dead-bug-eccentric
          why: >-
            Slow, controlled lowering trains the trunk to stay steady while the legs move.
"""
    assert text.count(removed) == 1
    rules.write_text(text.replace(removed, ""))
    report = tmp_path / "diff.json"
    r = runner.invoke(app, ["kb", "diff", str(STARTER), str(kb_copy), "--input",
                            str(population[0]), "--as-of", AS_OF_TEXT, "--json", str(report)])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(report.read_text())
    assert doc["population_input"] == str(population[0])
    section = doc["input_population"]
    assert section["patients"] == PATIENTS + 2
    kb = load_knowledge_base(STARTER)
    ev = Evaluator(kb, "reference")
    expected = []
    for pid, bundle in sorted(population[1].items()):
        try:
            plan = ev.evaluate(read_bundle(bundle, kb=kb, as_of=AS_OF))
        except InvalidBundleError:
            continue
        if "dead-bug-eccentric" in {x.exercise_id for x in plan.exercises}:
            expected.append(pid)
    proposed = next(c for c in section["changes"] if c["category"] == "proposed")
    assert proposed["item"] == "dead-bug-eccentric" and proposed["patients"] == len(expected)
    assert expected and {e["patient"] for e in proposed["examples"]} <= \
        {f"patient {p}" for p in expected}
    assert "Input population:" in r.stdout
