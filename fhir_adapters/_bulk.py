"""FHIR Bulk Data export in, one input Bundle per patient out (population runs, issue 16).

``group_export(source, work_dir)`` reads an export and writes hash buckets to
``work_dir/buckets/bucket-NNNNN.ndjson``: one line per patient,
``{"patient": "<Patient.id>", "bundle": <Bundle>}``, every patient in exactly one bucket.
``read_bucket(path)`` yields ``(patient id, bundle)`` from one of them.

Input
    ``source`` is either a directory of NDJSON files named by resource type (``Patient.ndjson``,
    ``Observation.000.ndjson``, ``Observation.ndjson.gz``: the type is the name up to the first
    dot; files not named ``*.ndjson``/``*.ndjson.gz`` are ignored and logged), or a completed
    ``$export`` status manifest (a JSON file with ``output[].type`` and ``output[].url``). A
    manifest's URLs are local: ``file://`` URLs, or paths relative to the manifest's folder;
    anything else (``https://...``) is a ``BulkExportError``. There the type comes from
    ``output[].type``, whatever the file is called. Gzip is recognised by its magic bytes.

Every line is checked on its own, with the library's strict JSON parser (``parse_json``:
no duplicate keys, no lone surrogates, valid UTF-8). A line is, exactly one of:

* **grouped**: a Patient with an id (the first line of its bundle), or a resource that
  refers to an exported Patient;
* an **orphan** (``work_dir/orphans.ndjson``): a resource that refers to no exported Patient
  (``reason``: ``patient-not-in-export``, ``not-a-patient-reference`` such as ``Group/7``, or
  ``no-patient-reference``, a resource without ``subject``/``patient``);
* **rejected** (``work_dir/rejected.ndjson``): not valid JSON, not a resource (no
  ``resourceType``), a resource of another type than its file holds, a Patient without an id,
  or a second Patient with an id already seen (of several, the one whose text sorts first is
  kept, so the choice does not depend on file order).

Blank lines are not resources and are skipped. So for every export
``sum(f.resources for f in input_files) == resources in buckets + orphan_count +
rejected_count``. Orphan and rejected records carry file, line, resource type and id, the
reference and a reason: never the resource's clinical content.

References
    ``subject.reference`` (else ``patient.reference``) names the patient as ``Patient/<id>``,
    an absolute ``<base>/Patient/<id>``, either with a ``/_history/<v>`` suffix, or
    ``urn:uuid:<id>`` (exporters that use UUIDs as ids write this form). A Patient whose id is
    a UUID gets ``fullUrl: urn:uuid:<id>`` in its bundle, so the reader (``read_bundle``)
    matches such references; references are never rewritten.

Buckets
    A patient's bucket is ``bucket_of(id, buckets)``: the first 8 bytes of the SHA-256 of
    the UTF-8 id, big-endian, modulo ``buckets`` (stable across runs, machines and
    versions). Within a bucket, patients are sorted by id (code point order); within a
    bundle the Patient comes first, then Observations, Conditions, CarePlans, then any
    other type by name, each by id and then by text. The lines are the input lines as
    they were (no re-serialisation), so the buckets depend only on the set of resources,
    not on how they were split into files or ordered.

Memory
    The export is never held in memory. Pass one streams every file, checks each line and
    appends it, in batches of a few MB, to its bucket's spill file (Arrow IPC, under
    ``work_dir/spill``); pass two reads one bucket at a time, sorts it with pyarrow, writes
    its patients and deletes the spill. Memory is therefore a fixed ~40 MB (pyarrow, the
    batches) plus up to ~10 times the largest bucket (the sort, its copies, the bundle being
    written), whatever the size of the export: pick ``buckets`` so that a bucket is a few
    MB (export size / 4 MB). With ``memory_limit_mb``, a bucket larger than an eighth of it
    is a ``BulkExportError`` naming the bucket, instead of a process that outgrows its
    memory. Needs the ``population`` extra (pyarrow).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import unquote, urlparse

import orjson

from fhir_adapters._errors import BulkExportError, PopulationExtraMissingError
from fhir_adapters._json_text import JSONTextError, parse_json

__all__ = [
    "BulkExportError",
    "GroupedExport",
    "InputFile",
    "bucket_of",
    "group_export",
    "read_bucket",
]

log = logging.getLogger("movement_cds.population")

#: Order of resource types within a patient's bundle; other types follow, by name.
TYPE_RANK: Final = {"Patient": 0, "Observation": 1, "Condition": 2, "CarePlan": 3}
_OTHER_RANK: Final = 4
_TYPE_NAME: Final = re.compile(r"[A-Z][A-Za-z]{0,63}\Z")
_PATIENT_REF: Final = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]+)?\Z")
_URN_UUID: Final = "urn:uuid:"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_BATCH_BYTES: Final = 4 << 20  # lines held before they are spilled to the bucket files
_BATCH_ROWS: Final = 512


@dataclass(frozen=True)
class InputFile:
    """One file of the export: ``resources`` counts its non-blank lines (each is grouped,
    an orphan or rejected); ``sha256`` is of the file as stored (compressed if it is)."""

    path: Path
    resource_type: str
    sha256: str
    resources: int


@dataclass(frozen=True)
class GroupedExport:
    """What ``group_export`` wrote. ``buckets`` has exactly as many files as asked for
    (some may be empty); ``patients`` counts the bundles in them."""

    buckets: tuple[Path, ...]
    input_files: tuple[InputFile, ...]
    patients: int
    orphans: Path
    orphan_count: int
    rejected: Path
    rejected_count: int
    grouped_resources: int = field(default=0)


def bucket_of(patient_id: str, buckets: int) -> int:
    """The bucket of a patient id: stable wherever and whenever it is computed."""
    digest = hashlib.sha256(patient_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def patient_id_of(reference: str) -> str | None:
    """The Patient id a reference names (``Patient/<id>``, ``<base>/Patient/<id>``, with or
    without ``/_history/<v>``, or ``urn:uuid:<id>``), else None."""
    if reference.startswith(_URN_UUID):
        rest = reference[len(_URN_UUID):]
        return rest if _is_uuid(rest) else None
    m = _PATIENT_REF.search(reference)
    return m.group(1) if m else None


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower() and len(text) == 36
    except ValueError:
        return False


# --- finding the files ---------------------------------------------------------------------


def _type_from_name(path: Path) -> str:
    name = path.name
    stem = name.split(".", 1)[0]
    if not _TYPE_NAME.match(stem):
        raise BulkExportError(
            f"{path}: the file name does not start with a FHIR resource type "
            "(Patient.ndjson, Observation.000.ndjson, Condition.ndjson.gz)")
    return stem


def _from_directory(source: Path) -> list[tuple[Path, str]]:
    files, ignored = [], []
    for p in sorted(source.iterdir()):
        if p.is_file() and p.name.endswith((".ndjson", ".ndjson.gz")):
            files.append((p, _type_from_name(p)))
        else:
            ignored.append(p.name)
    if ignored:
        log.info("bulk input %s: %d entries not named *.ndjson or *.ndjson.gz ignored: %s",
                 source, len(ignored), ", ".join(ignored[:20]))
    if not files:
        raise BulkExportError(f"{source}: no *.ndjson or *.ndjson.gz files")
    return files


def _from_manifest(manifest: Path) -> list[tuple[Path, str]]:
    try:
        doc = json.loads(manifest.read_bytes())
    except (OSError, ValueError) as e:
        raise BulkExportError(f"{manifest}: not a readable JSON $export manifest ({e})") from None
    outputs = doc.get("output") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        raise BulkExportError(f"{manifest}: not a $export manifest (no output array)")
    files = []
    for i, out in enumerate(outputs):
        where = f"{manifest}: output[{i}]"
        if not isinstance(out, dict) or not isinstance(out.get("type"), str) \
                or not isinstance(out.get("url"), str):
            raise BulkExportError(f"{where} has no type and url strings")
        rtype = out["type"]
        if not _TYPE_NAME.match(rtype):
            raise BulkExportError(f"{where}: type is not a FHIR resource type")
        files.append((_local_path(manifest, out["url"], where), rtype))
    for key in ("error", "deleted"):
        extra = doc.get(key)
        if isinstance(extra, list) and extra:
            log.warning("bulk manifest %s: %d '%s' files not read", manifest, len(extra), key)
    if not files:
        raise BulkExportError(f"{manifest}: the manifest lists no output files")
    return files


def _local_path(manifest: Path, url: str, where: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise BulkExportError(f"{where}: file URL on another host ({parsed.netloc})")
        return Path(unquote(parsed.path))
    if parsed.scheme:
        raise BulkExportError(
            f"{where}: only local files can be read (file:// URLs or paths relative to the "
            f"manifest), not {parsed.scheme}: URLs; download the export first")
    path = Path(unquote(url))
    return path if path.is_absolute() else manifest.parent / path


def _sorted_files(files: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """By type, then name without the compression suffix: plain and gzip exports of the same
    files are read in the same order."""
    return sorted(files, key=lambda f: (f[1], f[0].name.removesuffix(".gz"), str(f[0])))


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, stripped line) of every non-blank line, gzip or not."""
    n = 0
    try:
        with path.open("rb") as raw:
            stream: IO[bytes] | gzip.GzipFile = raw
            if raw.read(2) == _GZIP_MAGIC:
                stream = gzip.GzipFile(fileobj=raw, mode="rb")
            raw.seek(0)
            for line in stream:
                n += 1
                text = line.strip()
                if text:
                    yield n, text
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        where = f"{path}: after line {n}" if n else f"{path}"
        raise BulkExportError(f"{where}: cannot be read ({type(e).__name__}: "
                              f"{getattr(e, 'strerror', None) or e})") from None


# --- pass one: check every line, spill it to its bucket -------------------------------------

_SPILL_COLUMNS: Final = ("pid", "rank", "rtype", "rid", "file", "line", "ref", "raw")
_Row = tuple[str, int, str, str | None, int, int, str | None, bytes]


def _spill_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("pid", pa.string()), ("rank", pa.uint8()), ("rtype", pa.string()),
                      ("rid", pa.string()), ("file", pa.int32()), ("line", pa.int64()),
                      ("ref", pa.string()), ("raw", pa.binary())])


class _Records:
    """An NDJSON file of orphan or rejected records (file, line, type, id, ...)."""

    def __init__(self, path: Path, files: list[tuple[Path, str]]) -> None:
        self.path, self.files, self.count = path, files, 0
        self.out = path.open("wb")

    def add(self, file: int, line: int, rtype: str | None, rid: str | None,
            **more: str | None) -> None:
        self.out.write(orjson.dumps({"file": str(self.files[file][0]), "line": line,
                                     "resourceType": rtype, "id": rid, **more}) + b"\n")
        self.count += 1

    def close(self) -> None:
        self.out.close()


class _Spiller:
    """Checks each line; a resource that names a patient goes to that patient's bucket's
    spill file (Arrow IPC) in batches of about ``_BATCH_BYTES`` in all; the others are
    rejected or orphans at once."""

    def __init__(self, spill_dir: Path, buckets: int, orphans: _Records,
                 rejected: _Records) -> None:
        self.spill_dir, self.buckets = spill_dir, buckets
        self.orphans, self.rejected = orphans, rejected
        self.rows: list[list[_Row]] = [[] for _ in range(buckets)]
        self.writers: dict[int, Any] = {}
        self.pending = 0

    def line(self, file: int, expected: str, n: int, text: bytes) -> None:
        try:
            res = _parse(text)
        except JSONTextError as e:
            self.rejected.add(file, n, None, None, reason=f"not valid JSON: {e}")
            return
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if not isinstance(rtype, str) or not _TYPE_NAME.match(rtype):
            self.rejected.add(file, n, None, None, reason="not a FHIR resource (no resourceType)")
            return
        rid = res.get("id") if isinstance(res.get("id"), str) else None
        if rtype != expected:
            self.rejected.add(file, n, rtype, rid,
                              reason=f"resourceType {rtype} in a file of {expected} resources")
            return
        ref = None
        if rtype == "Patient":
            if not rid:
                self.rejected.add(file, n, rtype, None, reason="a Patient without an id")
                return
            pid: str | None = rid
        else:
            ref = _reference(res)
            pid = patient_id_of(ref) if ref is not None else None
            if pid is None:
                reason = "no-patient-reference" if ref is None else "not-a-patient-reference"
                self.orphans.add(file, n, rtype, rid, reference=ref, reason=reason)
                return
        assert pid is not None
        self.rows[bucket_of(pid, self.buckets)].append(
            (pid, TYPE_RANK.get(rtype, _OTHER_RANK), rtype, rid, file, n, ref, text))
        self.pending += len(text) + 100
        if self.pending >= _BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        schema = _spill_schema()
        for k, rows in enumerate(self.rows):
            if not rows:
                continue
            if k not in self.writers:
                self.writers[k] = pa.ipc.new_stream(str(self.spill_dir / f"{k:05d}.arrow"),
                                                    schema)
            columns = zip(*rows, strict=True)
            self.writers[k].write_batch(pa.record_batch(
                [pa.array(v, type=f.type) for v, f in zip(columns, schema, strict=True)],
                schema=schema))
            self.rows[k] = []
        self.pending = 0

    def close(self) -> None:
        self.flush()
        for w in self.writers.values():
            w.close()


def _parse(text: bytes) -> Any:
    """``parse_json(text)``, fast for the usual compact line: text that ``orjson`` reads and
    writes back byte for byte holds no duplicate key, lone surrogate, NaN or huge integer
    (each would not come back the same), so the strict parser is needed only otherwise."""
    try:
        value = orjson.loads(text)
        if orjson.dumps(value) == text:
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        pass
    return parse_json(text)


def _reference(res: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        ref = res.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


# --- the whole grouping -------------------------------------------------------------------


def group_export(source: Path, work_dir: Path, *, buckets: int = 64,
                 memory_limit_mb: int | None = None) -> GroupedExport:
    """Group the export at ``source`` (a directory or an ``$export`` manifest) per patient
    into ``buckets`` bucket files under ``work_dir`` (see the module docstring). With
    ``memory_limit_mb``, a bucket whose spill file is larger than an eighth of it is a
    ``BulkExportError`` (use more buckets) rather than a process that outgrows its memory."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise BulkExportError(f"buckets must be 1 to {MAX_BUCKETS} (got {buckets})")
    if memory_limit_mb is not None and memory_limit_mb < 16:
        raise BulkExportError(f"memory limit must be at least 16 MB (got {memory_limit_mb})")
    files = _input_files(Path(source))
    _need_pyarrow()
    work_dir = Path(work_dir)
    bucket_dir, spill_dir = work_dir / "buckets", work_dir / "spill"
    _remove(spill_dir)
    bucket_dir.mkdir(parents=True, exist_ok=True)
    spill_dir.mkdir(parents=True)
    for old in bucket_dir.glob("bucket-*.ndjson"):
        old.unlink()
    orphans = _Records(work_dir / "orphans.ndjson", files)
    rejected = _Records(work_dir / "rejected.ndjson", files)
    clock = _Clock()
    try:
        inputs = _spill(files, spill_dir, buckets, orphans, rejected)
        clock.lap("read and checked %d lines", sum(f.resources for f in inputs))
        limit = None if memory_limit_mb is None else (memory_limit_mb << 20) // 8
        writer = _BucketWriter(bucket_dir, buckets)
        for k in range(buckets):
            _group_bucket(spill_dir / f"{k:05d}.arrow", k, writer, orphans, rejected, limit)
        writer.close()
        clock.lap("%d patients (%d resources) in %d buckets; %d orphans, %d rejected",
                  writer.patients, writer.resources, buckets, orphans.count, rejected.count)
    finally:
        orphans.close()
        rejected.close()
        _remove(spill_dir)
    return GroupedExport(writer.paths, inputs, writer.patients, orphans.path, orphans.count,
                         rejected.path, rejected.count, writer.resources)


#: at most this many buckets (each has a spill file open while the export is read)
MAX_BUCKETS: Final = 1000


class _Clock:
    """Logs how long each stage took (ids and counts only)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self, what: str, *args: object) -> None:
        now = time.perf_counter()
        log.info("grouping: " + what + " in %.1f s", *args, now - self.last)
        self.last = now


def _input_files(source: Path) -> list[tuple[Path, str]]:
    if source.is_dir():
        return _sorted_files(_from_directory(source))
    if source.is_file():
        return _sorted_files(_from_manifest(source))
    raise BulkExportError(f"{source}: no such directory or manifest file")


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise PopulationExtraMissingError(
            "grouping a Bulk Data export needs the population extra (pyarrow is missing): "
            "pip install 'movement-cds[population]'") from None


def _spill(files: list[tuple[Path, str]], spill_dir: Path, buckets: int, orphans: _Records,
           rejected: _Records) -> tuple[InputFile, ...]:
    spiller = _Spiller(spill_dir, buckets, orphans, rejected)
    inputs = []
    try:
        for index, (path, rtype) in enumerate(files):
            try:
                digest = _sha256(path)
            except OSError as e:
                raise BulkExportError(f"{path}: cannot be read ({e.strerror or e})") from None
            count = 0
            for n, text in _lines(path):
                spiller.line(index, rtype, n, text)
                count += 1
            inputs.append(InputFile(path, rtype, digest, count))
            log.info("bulk input %s: %d lines of %s", path.name, count, rtype)
    finally:
        spiller.close()
    return tuple(inputs)


def _group_bucket(spill: Path, k: int, writer: _BucketWriter, orphans: _Records,
                  rejected: _Records, limit: int | None) -> None:
    """Sort one bucket's spill file and write its patients; reject all but one Patient of
    each id (the one whose text sorts first) and report resources of absent patients."""
    import pyarrow as pa
    import pyarrow.compute as pc

    writer.to_bucket(k)
    if not spill.exists():
        return
    if limit is not None and spill.stat().st_size > limit:
        raise BulkExportError(
            f"bucket {k} holds {spill.stat().st_size / 2**20:.1f} MB, more than an eighth of "
            "the memory limit: group into more buckets")
    with pa.ipc.open_stream(str(spill)) as reader:
        table = reader.read_all()
    table = table.sort_by([("pid", "ascending"), ("rank", "ascending"), ("rtype", "ascending"),
                           ("rid", "ascending"), ("raw", "ascending")])
    is_patient = pc.equal(table["rtype"], "Patient")
    patients = table.filter(is_patient)
    first = _first_of_pid(patients)
    duplicates = patients.filter(pc.invert(first))
    if duplicates.num_rows:
        where = {r["pid"]: r for r in patients.filter(pc.and_(first, pc.is_in(
            patients["pid"], value_set=duplicates["pid"]))).to_pylist()}
        for row in duplicates.to_pylist():
            keep = where[row["pid"]]
            rejected.add(row["file"], row["line"], "Patient", row["rid"], reason=(
                f"a second Patient with id {row['pid']}: the one kept is "
                f"{rejected.files[keep['file']][0]}:{keep['line']}"))
    kept = patients.filter(first)["pid"]
    known = pc.is_in(table["pid"], value_set=kept)
    lost = pc.and_(pc.invert(is_patient), pc.invert(known))
    for row in table.filter(lost).sort_by([("file", "ascending"), ("line", "ascending")]
                                          ).to_pylist():
        orphans.add(row["file"], row["line"], row["rtype"], row["rid"], reference=row["ref"],
                    reason="patient-not-in-export")
    grouped = table.filter(pc.or_(pc.and_(is_patient, _first_of_pid(table)),
                                  pc.and_(pc.invert(is_patient), known)))
    for batch in grouped.select(["pid", "raw"]).to_batches(max_chunksize=_BATCH_ROWS):
        for pid, raw in zip(batch["pid"].to_pylist(), batch["raw"].to_pylist(), strict=True):
            writer.row(pid, raw)
    del table, grouped, patients
    pa.default_memory_pool().release_unused()  # back to the system before the next bucket


def _first_of_pid(table: Any) -> Any:
    """True on each row whose pid differs from the row before (the table is sorted)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pid = table["pid"]
    if len(pid) == 0:
        return pa.array([], pa.bool_())
    previous = pa.concat_arrays([pa.array([None], pa.string()),
                                 pid.slice(0, len(pid) - 1).combine_chunks()])
    return pc.fill_null(pc.not_equal(pid, previous), True)


class _BucketWriter:
    """Writes the sorted rows out, one bundle line per patient, one file per bucket."""

    def __init__(self, bucket_dir: Path, buckets: int) -> None:
        self.paths = tuple(bucket_dir / f"bucket-{i:05d}.ndjson" for i in range(buckets))
        self.index = -1
        self.out: IO[bytes] | None = None
        self.pid: str | None = None
        self.entries: list[bytes] = []
        self.patients = 0
        self.resources = 0

    def row(self, pid: str, raw: bytes) -> None:
        if pid != self.pid:
            self.end_patient()
            self.pid = pid
            full = f'"fullUrl":"{_URN_UUID}{pid}",'.encode() if _is_uuid(pid) else b""
            self.entries.append(b"{" + full + b'"resource":' + raw + b"}")
        else:
            self.entries.append(b'{"resource":' + raw + b"}")
        self.resources += 1

    def end_patient(self) -> None:
        if self.pid is None or self.out is None:
            return
        self.out.write(b'{"patient":' + orjson.dumps(self.pid) + b',"bundle":{"resourceType":'
                       b'"Bundle","type":"collection","entry":[' + b",".join(self.entries)
                       + b"]}}\n")
        self.patients += 1
        self.pid, self.entries = None, []

    def to_bucket(self, bucket: int) -> None:
        self.end_patient()
        while self.index < bucket:
            if self.out is not None:
                self.out.close()
            self.index += 1
            self.out = self.paths[self.index].open("wb")

    def close(self) -> None:
        self.to_bucket(len(self.paths) - 1)
        if self.out is not None:
            self.out.close()


def read_bucket(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(patient id, input Bundle)`` for every patient of a bucket file, in file order."""
    with Path(path).open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                pid, bundle = doc["patient"], doc["bundle"]
            except (ValueError, KeyError, TypeError) as e:
                raise BulkExportError(f"{path}:{n}: not a bucket line ({type(e).__name__})"
                                      ) from None
            yield pid, bundle
