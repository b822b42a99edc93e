"""``movement-cds population synth`` run for real (issue 16 part 6): files, manifest,
determinism, and one line for every bad argument."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from cds import load_knowledge_base
from fhir_adapters import group_export, synth_export
from knowledge_base import bundled_path
from movement_cds._cli import app

ROOT = Path(__file__).resolve().parent.parent
AS_OF = "2026-11-02T09:00:00Z"


def synth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "movement_cds", "population", "synth", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


def test_synth_writes_a_bulk_export_with_its_manifest(tmp_path: Path) -> None:
    out = tmp_path / "export"
    r = synth("--patients", "40", "--out", str(out), "--seed", "3", "--as-of", AS_OF, "--gzip",
              "--lines-per-file", "400")
    assert r.returncode == 0, r.stderr
    assert "40 patients, as of 2026-11-02T09:00:00+00:00, seed 3" in r.stdout
    assert "1 broken-json" in r.stdout and "1 orphan" in r.stdout and "1 wrong-type" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["transactionTime"] == "2026-11-02T09:00:00+00:00"
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    listed = {o["url"]: o for o in manifest["output"]}
    assert set(listed) == {p.name for p in out.glob("*.ndjson.gz")}
    assert {"Patient.ndjson.gz", "Observation.000.ndjson.gz", "Observation.001.ndjson.gz",
            "Condition.ndjson.gz"} <= set(listed)
    assert listed["Patient.ndjson.gz"] == {"type": "Patient", "url": "Patient.ndjson.gz",
                                           "count": 40}
    g = group_export(out / "manifest.json", tmp_path / "work", buckets=4)
    counts = {f.path.name: f.resources for f in g.input_files}
    assert counts == {u: o["count"] for u, o in listed.items()}
    assert g.patients == 40 and (g.orphan_count, g.rejected_count) == (1, 2)

    # the same files as the library gives for the same arguments, byte for byte
    again = tmp_path / "again"
    synth_export(again, patients=40, seed=3, as_of=datetime(2026, 11, 2, 9, tzinfo=UTC),
                 kb=load_knowledge_base(bundled_path()), compress=True, lines_per_file=400)
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())
    for p in out.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "Patient.ndjson").write_text("")
    (tmp_path / "file").write_text("")
    for args, message in [
        (("--patients", "0", "--out", str(tmp_path / "a")), "--patients: must be at least 1"),
        (("--patients", "ten", "--out", str(tmp_path / "a")), "--patients: 'ten' is not"),
        (("--patients", "5", "--out", str(tmp_path / "a"), "--as-of", "yesterday"),
         "--as-of: as-of is not an ISO 8601 instant"),
        (("--patients", "5", "--out", str(tmp_path / "a"), "--as-of", "2026-11-02T09:00:00"),
         "--as-of: as-of needs a time zone"),
        (("--patients", "5", "--out", str(taken)), "already holds *.ndjson files"),
        (("--patients", "5", "--out", str(tmp_path / "a"), "--lines-per-file", "0"),
         "--lines-per-file: must be at least 1"),
    ]:
        r = CliRunner().invoke(app, ["population", "synth", *args])  # in process: quicker
        assert r.exit_code == 2, (args, r.stderr)
        assert r.stderr.startswith("movement-cds: ") and message in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists()
