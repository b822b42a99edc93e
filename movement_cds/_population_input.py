"""A real population as bucket files: what ``population run``, ``kb diff --input`` and
``kb profile --input`` read.

The input is either a FHIR Bulk Data export (a directory of NDJSON files named by resource
type, or a completed ``$export`` status manifest), which ``fhir_adapters.group_export``
groups per patient into hash buckets on disk (:func:`_group_export`), or a directory of
bucket files grouped earlier (``population run`` leaves them in ``DIR/work/grouped/buckets``),
used as they are.

A bucket file is plain NDJSON, one line per patient, sorted by patient id::

    {"patient": "<id>", "bundle": <the patient's input Bundle>}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_adapters import BulkExportError, group_export
from movement_cds._errors import PopulationInputError

__all__ = [
    "BucketEntry",
    "PopulationInput",
    "PopulationInputError",
    "bucket_entries",
    "is_grouped",
    "open_population",
    "sha256_file",
]


@dataclass(frozen=True)
class InputFileInfo:
    path: str
    resource_type: str  # "bucket" for an already grouped input
    sha256: str
    resources: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.resource_type, "sha256": self.sha256,
                "resources": self.resources}


@dataclass(frozen=True)
class PopulationInput:
    """The population as bucket files (bucket ``n`` is ``buckets[n]``)."""

    source: Path
    kind: str  # "bulk-export" | "grouped"
    buckets: tuple[Path, ...]
    patients: int
    files: tuple[InputFileInfo, ...]
    orphans: int = 0  # resources referring to no exported Patient
    rejected: int = 0  # lines the grouping refused
    orphans_path: str | None = None
    rejected_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.source), "kind": self.kind, "patients": self.patients,
            "buckets": len(self.buckets), "files": [f.to_json() for f in self.files],
            "orphans": self.orphans, "orphans_file": self.orphans_path,
            "rejected": self.rejected, "rejected_file": self.rejected_path,
        }


@dataclass(frozen=True)
class BucketEntry:
    """One line of a bucket file: a patient, or ``problem`` when the line is unusable."""

    line: int
    patient: str
    bundle: dict[str, Any] | None
    problem: str = ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bucket_entries(path: Path) -> Iterator[BucketEntry]:
    """The patients of a bucket file, in file order. A line that is not a bucket line
    (``{"patient": id, "bundle": {...}}``) comes out with ``problem`` set, never raised."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                yield BucketEntry(n, "", None, f"{path.name} line {n}: not JSON")
                continue
            pid = doc.get("patient") if isinstance(doc, dict) else None
            bundle = doc.get("bundle") if isinstance(doc, dict) else None
            if not isinstance(pid, str) or not isinstance(bundle, dict):
                yield BucketEntry(n, pid if isinstance(pid, str) else "", None,
                                  f"{path.name} line {n}: not a bucket line "
                                  "(\"patient\" text and \"bundle\" object)")
                continue
            yield BucketEntry(n, pid, bundle)


def _first_line(path: Path) -> bytes:
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                return raw
    return b""


def is_grouped(source: Path) -> bool:
    """A directory whose ``*.ndjson`` files are bucket files (the first line of the first
    one has "patient" and "bundle"), rather than a Bulk Data export (FHIR resources)."""
    if not source.is_dir():
        return False
    files = sorted(source.glob("*.ndjson"))
    if not files:
        return False
    try:
        doc = json.loads(_first_line(files[0]) or b"null")
    except (ValueError, OSError):
        return False
    return isinstance(doc, dict) and "patient" in doc and "bundle" in doc


def _from_grouped(source: Path) -> PopulationInput:
    buckets = tuple(sorted(source.glob("*.ndjson")))
    files = []
    patients = 0
    for b in buckets:
        with b.open("rb") as f:
            lines = sum(1 for raw in f if raw.strip())
        patients += lines
        files.append(InputFileInfo(str(b), "bucket", sha256_file(b), lines))
    return PopulationInput(source, "grouped", buckets, patients, tuple(files))


def _group_export(source: Path, work_dir: Path, buckets: int) -> PopulationInput:
    """The one call of ``fhir_adapters.group_export``: a Bulk Data export grouped per
    patient into ``buckets`` bucket files under ``work_dir``."""
    g = group_export(source, work_dir, buckets=buckets)
    files = tuple(InputFileInfo(str(f.path), f.resource_type, f.sha256, f.resources)
                  for f in g.input_files)
    return PopulationInput(source, "bulk-export", g.buckets, g.patients, files,
                           g.orphan_count, g.rejected_count, str(g.orphans), str(g.rejected))


def open_population(source: Path, work_dir: Path, *, buckets: int = 64) -> PopulationInput:
    """``source`` as bucket files: used as they are when already grouped, else grouped from
    the Bulk Data export into ``work_dir``. Raises ``PopulationInputError`` naming the
    file."""
    if not source.exists():
        raise PopulationInputError(f"{source}: no such file or directory")
    try:
        if is_grouped(source):
            return _from_grouped(source)
        return _group_export(source, work_dir, buckets)
    except BulkExportError as e:
        raise PopulationInputError(str(e)) from None
    except OSError as e:
        raise PopulationInputError(f"cannot read {e.filename or source}: "
                                   f"{e.strerror or e}") from None
