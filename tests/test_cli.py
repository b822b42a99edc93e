"""The command line, run for real as a subprocess (the installed console script's module)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
AS_OF = "2026-11-02T09:00:00Z"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "movement_cds", *args],
        input=stdin, capture_output=True, cwd=ROOT, timeout=120, check=False,
    )


def test_evaluate_writes_bundle_to_stdout_and_summary_to_stderr() -> None:
    r = run("evaluate", str(EXAMPLES / "cauda-equina.json"), "--as-of", AS_OF)
    assert r.returncode == 0, r.stderr.decode()
    bundle = json.loads(r.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[0] == "CarePlan" and "ServiceRequest" in kinds and "DetectedIssue" in kinds
    err = r.stderr.decode()
    assert "[EMERGENCY] Suspected cauda equina syndrome" in err
    assert "stat" in err and "EXERCISE ON HOLD" in err


def test_evaluate_out_file_and_reproducible(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "a" / "plan.json", tmp_path / "plan2.json"
    for out in (out1, out2):
        r = run("evaluate", str(EXAMPLES / "example-patient.json"), "--as-of", AS_OF,
                "--out", str(out), "--quiet")
        assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    assert out1.read_bytes() == out2.read_bytes()


def test_stdin_input() -> None:
    data = (EXAMPLES / "no-red-flags.json").read_bytes()
    r = run("evaluate", "-", "--as-of", AS_OF, "--quiet", stdin=data)
    assert r.returncode == 0
    assert json.loads(r.stdout)["entry"][0]["resource"]["resourceType"] == "CarePlan"


def test_unusable_input_exits_2_with_operation_outcome() -> None:
    r = run("evaluate", str(EXAMPLES / "invalid-other-patient.json"), "--as-of", AS_OF)
    assert r.returncode == 2
    outcome = json.loads(r.stdout)
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("Bundle.entry[" in x for i in outcome["issue"] for x in i.get("expression", []))
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("movement-cds: input cannot be evaluated")


def test_not_json_and_missing_file_exit_2_without_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\x00\xff{not json")
    for target in (str(junk), str(tmp_path / "nope.json")):
        r = run("evaluate", target)
        assert r.returncode == 2
        assert json.loads(r.stdout)["resourceType"] == "OperationOutcome"
        assert b"Traceback" not in r.stderr


def test_bad_as_of_exits_2() -> None:
    r = run("evaluate", str(EXAMPLES / "no-red-flags.json"), "--as-of", "yesterday")
    assert r.returncode == 2 and b"as-of" in r.stderr
    r = run("evaluate", str(EXAMPLES / "no-red-flags.json"), "--as-of", "2026-11-02T09:00:00")
    assert r.returncode == 2 and b"time zone" in r.stdout


def test_invalid_values_are_reported_not_fatal() -> None:
    r = run("evaluate", str(EXAMPLES / "invalid-values.json"), "--as-of", AS_OF)
    assert r.returncode == 0
    bundle = json.loads(r.stdout)
    outcomes = [e["resource"] for e in bundle["entry"]
                if e["resource"]["resourceType"] == "OperationOutcome"]
    assert outcomes and any(i["severity"] == "warning" for i in outcomes[0]["issue"])
    assert "INPUT NOTES" in r.stderr.decode()


def test_terminology_export(tmp_path: Path) -> None:
    r = run("terminology", "export", str(tmp_path / "terms"))
    assert r.returncode == 0
    names = sorted(p.name for p in (tmp_path / "terms").iterdir())
    assert names == ["CodeSystem-alert.json", "CodeSystem-exercise.json",
                     "CodeSystem-plan-change.json", "CodeSystem-screen.json"]


def test_kb_validate_reports_positions(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import STARTER

    kb = tmp_path / "kb"
    shutil.copytree(STARTER, kb)
    assert run("kb", "validate", str(kb)).returncode == 0
    rules = kb / "rules" / "classification.yaml"
    rules.write_text(rules.read_text().replace("is: peripheralizes", "is: peripheralises"))
    r = run("kb", "validate", str(kb))
    assert r.returncode == 1
    assert b"rules/classification.yaml:" in r.stderr and b"peripheralises" in r.stderr


def test_kb_schema_export(tmp_path: Path) -> None:
    r = run("kb", "schema", "--out", str(tmp_path))
    assert r.returncode == 0
    schema = json.loads((tmp_path / "rules.schema.json").read_text())
    assert "Rule" in schema["$defs"]
