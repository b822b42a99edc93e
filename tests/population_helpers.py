"""Grouped populations for the population-runner tests: bucket files in the format of
``fhir_adapters.group_export`` (``{"patient": id, "bundle": Bundle}`` per line, sorted by
patient id), made from the seeded synthetic population."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_adapters import synthetic_bundle

AS_OF = datetime(2026, 11, 2, 9, tzinfo=UTC)
AS_OF_TEXT = "2026-11-02T09:00:00+00:00"


def patient_id(bundle: dict[str, Any]) -> str:
    return str(next(e["resource"]["id"] for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "Patient"))


def write_buckets(root: Path, patients: int, buckets: int, *, seed: int = 1,
                  extra: dict[str, dict[str, Any]] | None = None,
                  raw_lines: dict[int, str] | None = None) -> dict[str, dict[str, Any]]:
    """``patients`` synthetic patients hashed into ``buckets`` files ``bucket-NNNNN.ndjson``
    under ``root``; ``extra`` adds patients by id (bad ones, say); ``raw_lines`` appends a
    line as it is to a bucket. Returns every patient's input Bundle by id."""
    root.mkdir(parents=True, exist_ok=True)
    by_id = {patient_id(b): b for b in (synthetic_bundle(seed, i, AS_OF)
                                        for i in range(patients))}
    by_id.update(extra or {})
    parts: list[list[str]] = [[] for _ in range(buckets)]
    for pid in sorted(by_id):
        parts[zlib.crc32(pid.encode()) % buckets].append(
            json.dumps({"patient": pid, "bundle": by_id[pid]}, sort_keys=True))
    for n, line in (raw_lines or {}).items():
        parts[n].append(line)
    for n, lines in enumerate(parts):
        (root / f"bucket-{n:05d}.ndjson").write_text("".join(x + "\n" for x in lines))
    return by_id
