"""The audit trail: what advice the service gave, and why, shown and replayed months later.

Every advice call (a ``200`` of ``POST /cds-services/{id}``) writes one ``audit_record``
row: ``hookInstance``, when, the service, the knowledge-base release
(``{kb-id}@{version}``) and its content digest, the movement-cds version, the evaluation
instant (``as_of``, to the microsecond), the SHA-256 of the canonical input and of the
response body, and each card's uuid, indicator code and the rules behind it. With
``[audit] store_inputs = true`` (the default) the canonical input and the response body
themselves are kept too, so the call can be replayed; ``false`` keeps their digests only.

Replay is byte-identical because everything the answer depends on is pinned: the input (the
canonical input is the Bundle the rules saw, after prefetch and FHIR reads: the EHR need not
be asked again), the release (loaded from the release archive by its digest, which is
checked; so are the stored input and response against their recorded digests), the
evaluation instant (``as_of``: the plan's dates, check-in window and
follow-up timing derive from it), the service id (card uuids are UUID v5 of the service,
the subject and the content; resource ids in the suggestions derive from the content, so
nothing random is in an answer). The movement-cds version is recorded: a replay by another
version says so, since code changes can change the answer.

The release archive (``kb_release``) holds every knowledge-base release the service served,
as a gzip'd tar of its directory, keyed by the same digest the service computes over the
files (``kb_digest``): written when a release goes live (start, hot reload), before it
answers. Both tables are append-only: database triggers refuse ``UPDATE`` and ``DELETE``
(and, on PostgreSQL, ``TRUNCATE``); nothing in this package updates or deletes them.

The canonical input is JSON with sorted keys and no spaces (orjson; the standard library
for a value orjson cannot write, such as an integer beyond 64 bits), and the digest is the
SHA-256 of exactly the stored text.
"""

from __future__ import annotations

import base64
import difflib
import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from cds import knowledge_base_files
from cds_service._errors import AuditError

__all__ = [
    "AuditError",
    "Replayed",
    "archive_release",
    "audit_job",
    "canonical",
    "extract_release",
    "instant",
    "kb_digest",
    "release_job",
    "replay",
    "sha256",
]


def canonical(value: Any) -> bytes:
    """JSON with sorted keys and no spaces (see the module docstring)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def instant(moment: datetime) -> str:
    """UTC, to the microsecond, ``Z``: what ``as_of`` is recorded as and replayed from."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- the release archive ------------------------------------------------------------------------

def _digest_of(files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _read_all(root: Path) -> list[tuple[str, bytes]]:
    out = []
    for f in knowledge_base_files(root):
        try:
            out.append((str(f.relative_to(root)), f.read_bytes()))
        except OSError:
            continue  # removed while we looked: the digest says what was read
    return out


def kb_digest(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes."""
    return _digest_of(_read_all(root))


def archive_release(root: Path) -> tuple[str, bytes]:
    """``(digest, tar.gz)`` of the directory, from one reading of its files: the archive
    holds exactly what the digest covers. The same content gives the same bytes."""
    files = _read_all(root)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return _digest_of(files), raw.getvalue()


def extract_release(archive: bytes, digest: str, dest: Path) -> Path:
    """Unpack an archived release into ``dest``; ``AuditError`` unless its content has
    ``digest``."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise AuditError(f"the archived release {digest[:12]} cannot be unpacked "
                         f"({type(e).__name__})") from None
    found = kb_digest(dest)
    if found != digest:
        raise AuditError(f"the archived release {digest[:12]} has other content "
                         f"({found[:12]}): the archive is corrupt")
    return dest


def release_job(release: str, digest: str, archive: bytes,
                archived_at: datetime | None = None) -> dict[str, Any]:
    """A queue job writing one release into the archive (kept if already there)."""
    when = instant(archived_at or datetime.now(UTC))
    return {"kind": "release", "rows": [[digest, release, when,
                                         base64.b64encode(archive).decode("ascii")]]}


# --- records -------------------------------------------------------------------------------------

def audit_job(*, hook_instance: str, service_id: str, release: str, digest: str,
              software: str, as_of: datetime, call_input: bytes, output: bytes,
              cards: list[dict[str, Any]], store_inputs: bool,
              recorded_at: datetime | None = None) -> dict[str, Any]:
    """A queue job writing one audit record. ``cards``: ``{"uuid", "code", "rules"}``."""
    row = [hook_instance, instant(recorded_at or datetime.now(UTC)), service_id, release,
           digest, software, instant(as_of), sha256(call_input),
           call_input.decode() if store_inputs else None, sha256(output),
           output.decode() if store_inputs else None,
           canonical(cards).decode()]
    return {"kind": "audit", "rows": [row]}


def card_summary(card_rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audit's view of ``cds_service._cards.card_rules``: uuid, code and rules."""
    return [{"uuid": r["card"], "code": r["code"], "rules": list(r["rule_ids"])}
            for r in card_rules]


def show(record: dict[str, Any]) -> dict[str, Any]:
    """A record as JSON for ``movement-cds audit show`` (the input and output parsed)."""
    out = dict(record)
    out["cards"] = json.loads(record["cards"])
    for key in ("input", "output"):
        out[key] = json.loads(record[key]) if record[key] is not None else None
    return out


# --- replay ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Replayed:
    """One record replayed: identical, or the unified diff of the two answers."""

    record: dict[str, Any]
    output: bytes
    identical: bool
    diff: str
    software_now: str


def _pretty(text: bytes | str) -> list[str]:
    return json.dumps(json.loads(text), indent=2, sort_keys=True).splitlines(keepends=True)


def replay_one(store: Any, record: dict[str, Any], software_now: str) -> Replayed:
    """Re-evaluate one record's input with its release, at its ``as_of``."""
    from cds_service._app import (
        add_handout_link,
        advise,
        engine_for_replay,
        recorded_handout_link,
    )

    if record["input"] is None:
        raise AuditError(f"audit record of {record['hook_instance']} has no stored input "
                         "([audit] store_inputs was false): only its digests can be shown")
    for key in ("input", "output"):  # what is replayed and compared is what was recorded
        stored = record[key]
        if stored is not None and sha256(stored.encode()) != record[f"{key}_digest"]:
            raise AuditError(f"audit record of {record['hook_instance']}: the stored {key} "
                             f"does not match its recorded digest: the record was altered")
    archived = store.release_archive(record["kb_digest"])
    if archived is None:
        raise AuditError(f"release {record['release']} ({record['kb_digest'][:12]}) is not "
                         "in the release archive")
    with tempfile.TemporaryDirectory(prefix="movement-cds-replay-") as tmp:
        root = extract_release(archived[1], record["kb_digest"], Path(tmp) / "kb")
        engine = engine_for_replay(root)
        call_input = json.loads(record["input"])
        recorded = (record["output"] or "").encode()
        # the patient handout link is a per-call capability URL, not advice: put it back
        handout = recorded_handout_link(recorded)
        body = advise(engine, record["service_id"], call_input,
                      parse_instant(record["as_of"]),
                      link=(lambda cards, _r: add_handout_link(cards, dict(handout)))
                      if handout else None)[0]
    same = body == recorded and sha256(body) == record["output_digest"]
    diff = "" if same else "".join(difflib.unified_diff(
        _pretty(recorded), _pretty(body), "recorded", "replayed"))
    return Replayed(record, body, same, diff, software_now)


def replay(store: Any, hook_instance: str, software_now: str) -> list[Replayed]:
    """Every record of ``hook_instance`` replayed; ``AuditError`` if there is none."""
    records = store.audit_records(hook_instance)
    if not records:
        raise AuditError(f"no audit record for hookInstance {hook_instance}")
    return [replay_one(store, r, software_now) for r in records]
