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
    The export is never held in memory: pass one streams every file and appends the checked
    lines in batches of a few MB to a DuckDB table on disk (``work_dir``); DuckDB then finds
    duplicates and orphans and sorts by bucket and patient out of core (``memory_limit_mb``
    is DuckDB's ``memory_limit``; it spills to ``work_dir``), and pass two streams the sorted
    rows out one patient at a time. Needs the ``population`` extra (duckdb, pyarrow).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlparse

import orjson

from cds import MovementCDSError
from fhir_adapters._json_text import JSONTextError, parse_json

if TYPE_CHECKING:
    import duckdb

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
_BATCH_BYTES: Final = 4 << 20  # text per batch appended to DuckDB
_FETCH_ROWS: Final = 512


class BulkExportError(MovementCDSError, ValueError):
    """The export cannot be read at all (a missing or unreadable file, a file name without a
    resource type, a manifest that is not one or points outside this machine, a broken gzip
    stream). One line naming the file; never patient data."""


class PopulationExtraMissingError(MovementCDSError, ImportError):
    """The ``population`` extra (duckdb, pyarrow) is not installed."""


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


# --- pass one: check every line, stage it in DuckDB -------------------------------------------

_STAGED: Final = ("pid", "rank", "rtype", "rid", "file", "line", "ref", "raw")
#: ``bucket_of`` in SQL: the first 8 bytes of the SHA-256 of the id, modulo the bucket count
#: (``buckets`` is set per connection)
_BUCKET_SQL: Final = ("CAST(CAST(('0x' || sha256(pid)[1:16]) AS UBIGINT) "
                      "% getvariable('buckets') AS INTEGER)")
_SCHEMA_SQL: Final = """
CREATE TABLE res (bucket INTEGER, pid VARCHAR, rank UTINYINT, rtype VARCHAR, rid VARCHAR,
                  file INTEGER, line BIGINT, ref VARCHAR, raw VARCHAR);
CREATE TABLE rej (file INTEGER, line BIGINT, rtype VARCHAR, rid VARCHAR, reason VARCHAR,
                  kfile INTEGER, kline BIGINT);
"""


class _Stager:
    """Checks lines and appends them to DuckDB in batches of about ``_BATCH_BYTES``."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.rows: list[tuple[str | None, int, str, str | None, int, int, str | None, str]] = []
        self.rejects: list[tuple[int, int, str | None, str | None, str]] = []
        self.pending = 0

    def line(self, file: int, expected: str, n: int, text: bytes) -> None:
        try:
            res = _parse(text)
        except JSONTextError as e:
            self.reject(file, n, None, None, f"not valid JSON: {e}")
            return
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if not isinstance(rtype, str) or not _TYPE_NAME.match(rtype):
            self.reject(file, n, None, None, "not a FHIR resource (no resourceType)")
            return
        rid = res.get("id") if isinstance(res.get("id"), str) else None
        if rtype != expected:
            self.reject(file, n, rtype, rid,
                        f"resourceType {rtype} in a file of {expected} resources")
            return
        if rtype == "Patient":
            if not rid:
                self.reject(file, n, rtype, None, "a Patient without an id")
                return
            pid, ref = rid, None
        else:
            ref = _reference(res)
            pid = patient_id_of(ref) if ref is not None else None
        raw = text.decode("utf-8")
        self.rows.append((pid, TYPE_RANK.get(rtype, _OTHER_RANK), rtype, rid, file, n, ref, raw))
        self.pending += len(raw) + 64
        if self.pending >= _BATCH_BYTES:
            self.flush()

    def reject(self, file: int, n: int, rtype: str | None, rid: str | None,
               reason: str) -> None:
        self.rejects.append((file, n, rtype, rid, reason))
        self.pending += 256
        if self.pending >= _BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            batch = pa.table(dict(zip(_STAGED, zip(*self.rows, strict=True), strict=True)))
            self.con.execute(f"INSERT INTO res SELECT {_BUCKET_SQL}, * FROM batch")
            del batch
            self.rows = []
        if self.rejects:
            self.con.executemany("INSERT INTO rej VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                                 self.rejects)
            self.rejects = []
        self.pending = 0


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
    into ``buckets`` bucket files under ``work_dir`` (see the module docstring)."""
    if buckets < 1:
        raise BulkExportError(f"buckets must be at least 1 (got {buckets})")
    files = _input_files(Path(source))
    work_dir = Path(work_dir)
    bucket_dir = work_dir / "buckets"
    bucket_dir.mkdir(parents=True, exist_ok=True)
    for old in bucket_dir.glob("bucket-*.ndjson"):
        old.unlink()
    db_path, spill = work_dir / "grouping.duckdb", work_dir / "grouping.tmp"
    _remove(db_path, spill)
    con = _connect(db_path, spill, memory_limit_mb)
    try:
        inputs = _stage(con, files, buckets)
        _reject_duplicate_patients(con)
        orphans, orphan_count = _write_orphans(con, files, work_dir / "orphans.ndjson")
        rejected = work_dir / "rejected.ndjson"
        rejected_count = _write_rejected(con, files, rejected)
        paths, patients, grouped = _write_buckets(con, bucket_dir, buckets)
    finally:
        con.close()
        _remove(db_path, spill)
    log.info("grouped %d patients (%d resources) into %d buckets; %d orphans, %d rejected",
             patients, grouped, buckets, orphan_count, rejected_count)
    return GroupedExport(paths, inputs, patients, orphans, orphan_count, rejected,
                         rejected_count, grouped)


def _input_files(source: Path) -> list[tuple[Path, str]]:
    if source.is_dir():
        return _sorted_files(_from_directory(source))
    if source.is_file():
        return _sorted_files(_from_manifest(source))
    raise BulkExportError(f"{source}: no such directory or manifest file")


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
            Path(f"{p}.wal").unlink(missing_ok=True)


def _connect(db_path: Path, spill: Path, memory_limit_mb: int | None
             ) -> duckdb.DuckDBPyConnection:
    try:
        import duckdb
        import pyarrow  # noqa: F401 (the staging batches)
    except ImportError as e:
        raise PopulationExtraMissingError(
            f"grouping a Bulk Data export needs the population extra ({e.name} is missing): "
            "pip install 'movement-cds[population]'") from None
    con = duckdb.connect(str(db_path))
    con.execute(f"SET temp_directory = '{_sql_text(str(spill))}'")
    con.execute("SET preserve_insertion_order = false")
    if memory_limit_mb is not None:
        if memory_limit_mb < 16:
            raise BulkExportError(f"memory limit must be at least 16 MB (got {memory_limit_mb})")
        con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
    con.execute(_SCHEMA_SQL)
    return con


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _stage(con: duckdb.DuckDBPyConnection, files: list[tuple[Path, str]],
           buckets: int) -> tuple[InputFile, ...]:
    con.execute(f"SET VARIABLE buckets = {int(buckets)}::UBIGINT")
    stager = _Stager(con)
    inputs = []
    for index, (path, rtype) in enumerate(files):
        try:
            digest = _sha256(path)
        except OSError as e:
            raise BulkExportError(f"{path}: cannot be read ({e.strerror or e})") from None
        count = 0
        for n, text in _lines(path):
            stager.line(index, rtype, n, text)
            count += 1
        inputs.append(InputFile(path, rtype, digest, count))
        log.info("bulk input %s: %d lines of %s", path.name, count, rtype)
    stager.flush()
    return tuple(inputs)


def _reject_duplicate_patients(con: duckdb.DuckDBPyConnection) -> None:
    """Of several Patients with one id, keep the one whose text sorts first."""
    con.execute("""
        CREATE TEMP TABLE dup AS
        WITH many AS (SELECT pid FROM res WHERE rtype = 'Patient'
                      GROUP BY pid HAVING count(*) > 1),
        ranked AS (
            SELECT r.file, r.line, r.rid, row_number() OVER w AS n,
                   first_value(r.file) OVER w AS kfile, first_value(r.line) OVER w AS kline
            FROM res r SEMI JOIN many USING (pid) WHERE r.rtype = 'Patient'
            WINDOW w AS (PARTITION BY r.pid ORDER BY r.raw, r.file, r.line))
        SELECT * FROM ranked WHERE n > 1""")
    con.execute("""
        INSERT INTO rej SELECT file, line, 'Patient', rid, 'duplicate', kfile, kline FROM dup;
        DELETE FROM res USING dup WHERE res.file = dup.file AND res.line = dup.line;
        DROP TABLE dup""")


_ORPHAN_WHERE: Final = """rtype <> 'Patient' AND (pid IS NULL OR pid NOT IN (
    SELECT pid FROM res WHERE rtype = 'Patient'))"""


def _write_orphans(con: duckdb.DuckDBPyConnection, files: list[tuple[Path, str]],
                   path: Path) -> tuple[Path, int]:
    cur = con.execute(f"""
        SELECT file, line, rtype, rid, ref,
               CASE WHEN ref IS NULL THEN 'no-patient-reference'
                    WHEN pid IS NULL THEN 'not-a-patient-reference'
                    ELSE 'patient-not-in-export' END
        FROM res WHERE {_ORPHAN_WHERE} ORDER BY file, line""")
    count = 0
    with path.open("w", encoding="utf-8") as out:
        while rows := cur.fetchmany(_FETCH_ROWS * 8):
            for file, line, rtype, rid, ref, reason in rows:
                out.write(json.dumps({
                    "file": str(files[file][0]), "line": line, "resourceType": rtype,
                    "id": rid, "reference": ref, "reason": reason}, ensure_ascii=False) + "\n")
            count += len(rows)
    con.execute(f"DELETE FROM res WHERE {_ORPHAN_WHERE}")
    return path, count


def _write_rejected(con: duckdb.DuckDBPyConnection, files: list[tuple[Path, str]],
                    path: Path) -> int:
    cur = con.execute("SELECT file, line, rtype, rid, reason, kfile, kline FROM rej "
                      "ORDER BY file, line")
    count = 0
    with path.open("w", encoding="utf-8") as out:
        while rows := cur.fetchmany(_FETCH_ROWS * 8):
            for file, line, rtype, rid, reason, kfile, kline in rows:
                if reason == "duplicate":
                    reason = (f"a second Patient with id {rid}: the one kept is "
                              f"{files[kfile][0]}:{kline}")
                out.write(json.dumps({
                    "file": str(files[file][0]), "line": line, "resourceType": rtype,
                    "id": rid, "reason": reason}, ensure_ascii=False) + "\n")
            count += len(rows)
    return count


class _BucketWriter:
    """Writes the sorted rows out, one bundle line per patient, one file per bucket."""

    def __init__(self, bucket_dir: Path, buckets: int) -> None:
        self.paths = tuple(bucket_dir / f"bucket-{i:05d}.ndjson" for i in range(buckets))
        self.index = -1
        self.out: io.TextIOWrapper | None = None
        self.pid: str | None = None
        self.entries: list[str] = []
        self.patients = 0
        self.resources = 0

    def row(self, bucket: int, pid: str, raw: str) -> None:
        if pid != self.pid:
            self.end_patient()
            self.to_bucket(bucket)
            self.pid = pid
            full = f'"fullUrl":"{_URN_UUID}{pid}",' if _is_uuid(pid) else ""
            self.entries.append(f"{{{full}\"resource\":{raw}}}")
        else:
            self.entries.append(f'{{"resource":{raw}}}')
        self.resources += 1

    def end_patient(self) -> None:
        if self.pid is None or self.out is None:
            return
        self.out.write(f'{{"patient":{json.dumps(self.pid, ensure_ascii=False)},'
                       '"bundle":{"resourceType":"Bundle","type":"collection","entry":['
                       + ",".join(self.entries) + "]}}\n")
        self.patients += 1
        self.pid, self.entries = None, []

    def to_bucket(self, bucket: int) -> None:
        while self.index < bucket:
            if self.out is not None:
                self.out.close()
            self.index += 1
            self.out = self.paths[self.index].open("w", encoding="utf-8")

    def close(self) -> None:
        self.end_patient()
        self.to_bucket(len(self.paths) - 1)
        if self.out is not None:
            self.out.close()


def _write_buckets(con: duckdb.DuckDBPyConnection, bucket_dir: Path,
                   buckets: int) -> tuple[tuple[Path, ...], int, int]:
    cur = con.execute("SELECT bucket, pid, raw FROM res "
                      "ORDER BY bucket, pid, rank, rtype, rid NULLS FIRST, raw")
    writer = _BucketWriter(bucket_dir, buckets)
    try:
        while rows := cur.fetchmany(_FETCH_ROWS):
            for bucket, pid, raw in rows:
                writer.row(bucket, pid, raw)
    finally:
        writer.close()
    return writer.paths, writer.patients, writer.resources


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
