"""A FHIR Bulk Data export grouped per patient (issue 16 part 1) and the synthetic exports
that feed it (part 6): real files on disk, real gzip, real subprocesses for the memory check."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import KnowledgeBase, MovementCDSError
from fhir_adapters import (
    BulkExportError,
    GroupedExport,
    bucket_of,
    group_export,
    read_bucket,
    read_bundle,
    synth_export,
    synth_patient,
)
from tests.fhir_factory import kb as load_kb

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SEED = 5
PATIENTS = 60
BUCKETS = 7


def canonical(resource: dict[str, Any]) -> bytes:
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def grouped(g: GroupedExport) -> dict[str, list[dict[str, Any]]]:
    """patient id -> resources of its bundle, checking where each patient is on the way."""
    out: dict[str, list[dict[str, Any]]] = {}
    for k, path in enumerate(g.buckets):
        ids = []
        for pid, bundle in read_bucket(path):
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
            assert bucket_of(pid, len(g.buckets)) == k
            assert pid not in out, f"{pid} in two buckets"
            resources = [e["resource"] for e in bundle["entry"]]
            assert resources[0] == {**resources[0], "resourceType": "Patient", "id": pid}
            assert all(r["resourceType"] != "Patient" for r in resources[1:])
            out[pid] = resources
            ids.append(pid)
        assert ids == sorted(ids)
    return out


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load_kb()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, kb: KnowledgeBase) -> Path:
    out = tmp_path_factory.mktemp("synth") / "plain"
    synth_export(out, patients=PATIENTS, seed=SEED, as_of=AS_OF, kb=kb, lines_per_file=700)
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, export: Path) -> GroupedExport:
    return group_export(export, tmp_path_factory.mktemp("work"), buckets=BUCKETS)


# --- synth -> group_export -> read_bucket -------------------------------------------------------


def test_every_patient_gets_exactly_the_resources_synth_wrote_for_it(
        plain: GroupedExport, kb: KnowledgeBase) -> None:
    by_patient = grouped(plain)
    assert plain.patients == PATIENTS == len(by_patient)
    for index in range(PATIENTS):
        written = synth_patient(SEED, index, AS_OF, kb)
        pid = written[0]["id"]
        assert sorted(map(canonical, by_patient[pid])) == sorted(map(canonical, written)), pid


def test_nothing_is_lost_and_bad_lines_are_where_synth_put_them(
        export: Path, plain: GroupedExport, kb: KnowledgeBase, tmp_path: Path) -> None:
    report = synth_export(tmp_path / "again", patients=PATIENTS, seed=SEED, as_of=AS_OF, kb=kb,
                          lines_per_file=700)
    assert {k for k, _, _ in report.bad} == {"broken-json", "orphan", "wrong-type"}
    lines_in = sum(f.resources for f in plain.input_files)
    assert lines_in == sum(n for _, _, n in report.files)
    assert lines_in == plain.grouped_resources + plain.orphan_count + plain.rejected_count
    assert plain.grouped_resources == sum(len(r) for r in grouped(plain).values())
    orphans = [json.loads(x) for x in plain.orphans.read_text().splitlines()]
    rejected = [json.loads(x) for x in plain.rejected.read_text().splitlines()]
    assert len(orphans) == plain.orphan_count and len(rejected) == plain.rejected_count
    where = {(Path(r["file"]).name, r["line"]): r for r in orphans + rejected}
    for kind, name, line in report.bad:
        record = where.pop((name, line))
        assert name.startswith("Observation.")
        if kind == "orphan":
            assert record["reason"] == "patient-not-in-export"
            assert record["reference"].startswith("Patient/syn-missing-")
        elif kind == "wrong-type":
            assert record["resourceType"] == "Condition"
            assert "in a file of Observation resources" in record["reason"]
        else:
            assert record["reason"].startswith("not valid JSON")
    assert where == {}  # nothing else was refused
    for record in orphans + rejected:  # where and why, never clinical content
        assert set(record) <= {"file", "line", "resourceType", "id", "reference", "reason"}


def test_synth_is_deterministic_and_has_history_follow_ups_and_reference_forms(
        export: Path, kb: KnowledgeBase, tmp_path: Path) -> None:
    synth_export(tmp_path, patients=PATIENTS, seed=SEED, as_of=AS_OF, kb=kb, lines_per_file=700)
    names = sorted(p.name for p in export.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.startswith("Observation.")] == [
        f"Observation.{i:03d}.ndjson" for i in range(len(names) - 4)]
    for name in names:
        assert (export / name).read_bytes() == (tmp_path / name).read_bytes(), name
    everything = [r for i in range(PATIENTS) for r in synth_patient(SEED, i, AS_OF, kb)]
    refs = [r["subject"]["reference"] for r in everything if "subject" in r]
    assert any(x.startswith("urn:uuid:") for x in refs)
    assert any(x.startswith("https://") for x in refs)
    assert any(x.startswith("Patient/") for x in refs)
    assert any("-hist-" in r["id"] for r in everything)
    assert any(r["resourceType"] == "CarePlan" for r in everything)
    assert len({(r["resourceType"], r["id"]) for r in everything}) == len(everything)


def test_grouped_bundles_are_read_as_one_patient_each_with_follow_ups(
        plain: GroupedExport, kb: KnowledgeBase) -> None:
    """The reader accepts every grouped bundle as it is (urn:uuid and absolute references
    match the Patient), and a patient with a previous CarePlan of ours is a follow-up."""
    follow_ups = uuids = 0
    for path in plain.buckets:
        for pid, bundle in read_bucket(path):
            facts = read_bundle(bundle, kb=kb, as_of=AS_OF)
            has_plan = any(e["resource"]["resourceType"] == "CarePlan"
                           for e in bundle["entry"])
            assert (facts.follow_up is not None) == has_plan, pid
            follow_ups += has_plan
            uuids += bundle["entry"][0].get("fullUrl") == f"urn:uuid:{pid}"
    assert follow_ups > 0 and uuids > 0


def test_gzip_and_manifest_inputs_give_the_same_buckets(
        export: Path, plain: GroupedExport, kb: KnowledgeBase, tmp_path: Path) -> None:
    gz = tmp_path / "gz"
    synth_export(gz, patients=PATIENTS, seed=SEED, as_of=AS_OF, kb=kb, lines_per_file=700,
                 compress=True)
    assert all(p.name.endswith(".ndjson.gz") for p in gz.glob("*.ndjson*"))
    assert gzip.decompress((gz / "Patient.ndjson.gz").read_bytes()) == (
        export / "Patient.ndjson").read_bytes()
    # an absolute file:// manifest somewhere else
    absolute = json.loads((gz / "manifest.json").read_text())
    for out in absolute["output"]:
        out["url"] = (gz / out["url"]).as_uri()
    (tmp_path / "elsewhere.json").write_text(json.dumps(absolute))
    for source in (gz, gz / "manifest.json", export / "manifest.json",
                   tmp_path / "elsewhere.json"):
        other = group_export(source, tmp_path / f"work-{source.name}", buckets=BUCKETS)
        assert [p.read_bytes() for p in other.buckets] == [
            p.read_bytes() for p in plain.buckets], source
        assert (other.patients, other.orphan_count, other.rejected_count) == (
            plain.patients, plain.orphan_count, plain.rejected_count)
    digests = {f.path.name: f.sha256 for f in plain.input_files}
    assert len(digests) == len(plain.input_files) and all(len(d) == 64 for d in digests.values())


# --- bucket assignment -------------------------------------------------------------------------


def test_bucket_assignment_is_pinned() -> None:
    """The SHA-256 rule, pinned: a change would move patients between buckets of a resumed
    run."""
    assert [bucket_of(f"syn-{i}", 64) for i in range(8)] == [10, 35, 9, 21, 16, 49, 56, 45]
    assert bucket_of("0d6f1b5e-8a1c-4c7e-9b7a-2f4d3c1a9e10", 1000) == 503


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=5000))
def test_bucket_of_is_in_range_and_only_depends_on_the_id(pid: str, n: int) -> None:
    assert 0 <= bucket_of(pid, n) < n
    assert bucket_of(pid, n) == bucket_of(str(pid), n)
    assert bucket_of(pid, 1) == 0


# --- arbitrary small exports ---------------------------------------------------------------------

REF_FORMS = ("Patient/{}", "https://ehr.example.org/fhir/Patient/{}",
             "http://other.example/base/Patient/{}/_history/2")


@st.composite
def small_exports(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, bytes, str | None]]]:
    """Patients and (file type, line, patient id the line belongs to or None)."""
    n = draw(st.integers(min_value=1, max_value=8))
    pids = [str(uuid.UUID(int=draw(st.integers(0, 2**64)))) if draw(st.booleans())
            else f"p{draw(st.integers(0, 10**6))}" for _ in range(n)]
    pids = list(dict.fromkeys(pids))
    lines: list[tuple[str, bytes, str | None]] = [
        ("Patient", orjson.dumps({"resourceType": "Patient", "id": p}), p) for p in pids]
    for j in range(draw(st.integers(min_value=0, max_value=25))):
        rtype = draw(st.sampled_from(["Observation", "Condition", "CarePlan", "Encounter"]))
        pid = draw(st.sampled_from([*pids, "absent"]))
        form = draw(st.sampled_from(REF_FORMS + (("urn:uuid:{}",) if "-" in pid else ())))
        key = "patient" if rtype == "Encounter" and draw(st.booleans()) else "subject"
        res = {"resourceType": rtype, "id": f"r{j}", key: {"reference": form.format(pid)},
               "status": draw(st.sampled_from(["final", "amended"]))}
        lines.append((rtype, orjson.dumps(res), None if pid == "absent" else pid))
    return pids, lines


def write_export(directory: Path, lines: list[tuple[str, bytes, str | None]], split: int,
                 compress: bool) -> None:
    by_type: dict[str, list[bytes]] = {}
    for rtype, text, _ in lines:
        by_type.setdefault(rtype, []).append(text)
    for rtype, texts in by_type.items():
        for part in range(0, len(texts), split):
            body = b"\n".join(texts[part:part + split]) + b"\n"
            name = f"{rtype}.{part // split:03d}.ndjson"
            if compress:
                (directory / (name + ".gz")).write_bytes(gzip.compress(body, mtime=0))
            else:
                (directory / name).write_bytes(body)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_exports(), st.randoms(use_true_random=False), st.integers(1, 6),
       st.booleans(), st.integers(1, 5))
def test_buckets_depend_only_on_the_resources_not_on_files_or_order(
        export: tuple[list[str], list[tuple[str, bytes, str | None]]], rnd: Any, split: int,
        compress: bool, buckets: int) -> None:
    pids, lines = export
    shuffled = list(lines)
    rnd.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        a.mkdir()
        b.mkdir()
        write_export(a, lines, 1000, False)
        write_export(b, shuffled, split, compress)
        ga = group_export(a, Path(tmp, "wa"), buckets=buckets)
        gb = group_export(b, Path(tmp, "wb"), buckets=buckets)
        assert [p.read_bytes() for p in ga.buckets] == [p.read_bytes() for p in gb.buckets]
        by_patient = grouped(ga)
        expected = Counter((pid, text) for _, text, pid in lines if pid is not None)
        got = Counter((pid, orjson.dumps(r)) for pid, rs in by_patient.items() for r in rs)
        assert got == expected
        assert ga.orphan_count == sum(1 for _, _, pid in lines if pid is None)
        assert ga.rejected_count == 0 and ga.patients == len(pids)


# --- what is reported, and what cannot be read at all ------------------------------------------

BAD_EXPORT = {
    "Patient.ndjson": [
        '{"resourceType":"Patient","id":"p1"}',
        '{"resourceType": "Patient", "id": "p2"}',
        '{"resourceType":"Patient","id":"p1","gender":"male"}',
        "",
        '{"resourceType":"Observation","id":"x","subject":{"reference":"Patient/p1"}}',
        "{broken",
        '{"resourceType":"Patient"}',
        '["not", "a", "resource"]',
    ],
    "Observation.000.ndjson": [
        '{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}',
        '{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/nobody"}}',
        '{"resourceType":"Observation","id":"o3","subject":{"reference":"Group/7"}}',
        '{"resourceType":"Observation","id":"o4"}',
        '{"resourceType":"Observation","id":"o5","a":1,"a":2}',
        '{"resourceType":"Observation","id":"o6","note":"\\ud800"}',
    ],
}


def test_rejected_and_orphan_lines_name_file_line_and_reason(tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    for name, lines in BAD_EXPORT.items():
        (src / name).write_text("\n".join(lines) + "\n")
    (src / "README.txt").write_text("not part of the export")
    g = group_export(src, tmp_path / "work", buckets=3)
    assert g.patients == 2 and g.grouped_resources == 3
    assert [(f.path.name, f.resources) for f in g.input_files] == [
        ("Observation.000.ndjson", 6), ("Patient.ndjson", 7)]
    assert grouped(g)["p1"] == [{"resourceType": "Patient", "id": "p1", "gender": "male"}]
    orphans = {(r["line"], r["reason"], r["reference"])
               for r in map(json.loads, g.orphans.read_text().splitlines())}
    assert orphans == {(2, "patient-not-in-export", "Patient/nobody"),
                       (3, "not-a-patient-reference", "Group/7"),
                       (4, "no-patient-reference", None)}
    rejected = {(Path(r["file"]).name, r["line"]): r["reason"]
                for r in map(json.loads, g.rejected.read_text().splitlines())}
    assert rejected.keys() == {("Observation.000.ndjson", 5), ("Observation.000.ndjson", 6),
                               ("Patient.ndjson", 1), ("Patient.ndjson", 5),
                               ("Patient.ndjson", 6), ("Patient.ndjson", 7),
                               ("Patient.ndjson", 8)}
    assert "'a' appears twice" in rejected[("Observation.000.ndjson", 5)]
    assert "surrogate" in rejected[("Observation.000.ndjson", 6)]
    assert rejected[("Patient.ndjson", 1)].endswith("the one kept is "
                                                    f"{src / 'Patient.ndjson'}:3")
    assert "resourceType Observation in a file of Patient" in rejected[("Patient.ndjson", 5)]
    assert rejected[("Patient.ndjson", 7)] == "a Patient without an id"
    assert rejected[("Patient.ndjson", 8)] == "not a FHIR resource (no resourceType)"
    assert "\\ud800" not in g.rejected.read_text()


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing", "no such directory or manifest file"),
    (lambda d: (d / "data.ndjson").write_text("{}") and d,
     "does not start with a FHIR resource type"),
    (lambda d: (d / "m.json").write_text('{"transactionTime": "x"}') and d / "m.json",
     "no output array"),
    (lambda d: (d / "m.json").write_text(json.dumps({"output": [
        {"type": "Patient", "url": "https://fhir.example/files/1.ndjson"}]})) and d / "m.json",
     "output[0]: only local files can be read"),
    (lambda d: (d / "m.json").write_text(json.dumps({"output": [
        {"type": "Patient", "url": "gone.ndjson"}]})) and d / "m.json", "gone.ndjson"),
    (lambda d: (d / "Patient.ndjson.gz").write_bytes(
        gzip.compress(b'{"resourceType":"Patient","id":"a"}\n' * 50)[:60]) and d,
     "Patient.ndjson.gz"),
    (lambda d: d, "no *.ndjson or *.ndjson.gz files"),
])
def test_an_unreadable_export_is_one_clear_error(tmp_path: Path, make: Any,
                                                 message: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(BulkExportError) as err:
        group_export(make(src), tmp_path / "work")
    assert message in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, MovementCDSError)


# --- memory ------------------------------------------------------------------------------------

CHILD = """
import json, sys
from pathlib import Path
import pyarrow.compute, pyarrow.ipc  # noqa: F401  (loaded before the baseline)
from fhir_adapters import group_export

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

# the peak since this point (ru_maxrss would also count the parent's memory before exec)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")

base = status_kb("VmRSS")
g = group_export(Path(sys.argv[1]), Path(sys.argv[2]), buckets=int(sys.argv[3]),
                 memory_limit_mb=int(sys.argv[4]))
print(json.dumps({"base": base, "peak": status_kb("VmHWM"),
                  "in": sum(f.resources for f in g.input_files), "grouped": g.grouped_resources,
                  "orphans": g.orphan_count, "rejected": g.rejected_count,
                  "patients": g.patients}))
"""


def padded_export(directory: Path, patients: int, per_patient: int, pad: int) -> int:
    """An export of big Observations (a long note each); returns its size in bytes."""
    note = "n" * pad
    with (directory / "Patient.ndjson").open("wb") as p, \
            (directory / "Observation.000.ndjson").open("wb") as o:
        for i in range(patients):
            p.write(orjson.dumps({"resourceType": "Patient", "id": f"p{i}"}) + b"\n")
            for k in range(per_patient):
                o.write(orjson.dumps({
                    "resourceType": "Observation", "id": f"o{i}-{k}", "status": "final",
                    "subject": {"reference": f"Patient/p{i if k else i + patients}"},
                    "note": [{"text": note}]}) + b"\n")
    return sum(f.stat().st_size for f in directory.iterdir())


@pytest.mark.slow
def test_an_export_several_times_the_memory_limit_is_grouped_without_loss(
        tmp_path: Path) -> None:
    """~200 MB of export, a 32 MB limit (so a bucket may hold at most 4 MB): the grouping
    process grows by less than a quarter of the export, and every line is accounted for."""
    src = tmp_path / "export"
    src.mkdir()
    size = padded_export(src, patients=2000, per_patient=5, pad=20_000)
    assert size > 5 * (32 << 20)
    run = subprocess.run([sys.executable, "-c", CHILD, str(src), str(tmp_path / "work"), "96",
                          "32"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(run.stdout)
    assert r["in"] == 12_000 == r["grouped"] + r["orphans"] + r["rejected"]
    assert (r["patients"], r["orphans"], r["rejected"]) == (2000, 2000, 0)
    grown = (r["peak"] - r["base"]) * 1024
    assert grown < size / 4, f"grew by {grown >> 20} MB for a {size >> 20} MB export"
    assert not (tmp_path / "work" / "spill").exists()


def test_a_bucket_beyond_the_memory_limit_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    padded_export(src, patients=60, per_patient=5, pad=20_000)  # ~6 MB in one bucket
    with pytest.raises(BulkExportError, match=r"bucket 0 holds 5\.8 MB, more than an eighth"):
        group_export(src, tmp_path / "work", buckets=1, memory_limit_mb=16)
    g = group_export(src, tmp_path / "work", buckets=12, memory_limit_mb=16)
    assert g.patients == 60


def test_grouping_again_replaces_the_buckets(plain: GroupedExport, export: Path,
                                             tmp_path: Path) -> None:
    work = tmp_path / "work"
    group_export(export, work, buckets=BUCKETS + 3)
    again = group_export(export, work, buckets=BUCKETS)
    assert sorted(p.name for p in (work / "buckets").iterdir()) == [
        p.name for p in again.buckets]
    assert [p.read_bytes() for p in again.buckets] == [p.read_bytes() for p in plain.buckets]
    shutil.rmtree(work)
