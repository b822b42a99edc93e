"""Durable storage of CDS Hooks card feedback (spec point C16) and of the audit trail.

Clinicians accept or override cards; ``POST {base}/cds-services/{id}/feedback`` reports it.
Rule authors read it back per knowledge-base rule: the service records, for every card it
returns, which rules produced it (:meth:`FeedbackStore.record_cards`), and feedback (which
names only the card ``uuid``) is joined back to rules through that record.

:class:`FeedbackStore` is the storage interface; :class:`SQLiteFeedbackStore` the one-host
backend (one file, WAL journal, ``synchronous=FULL``: a committed write survives a crash);
``cds_service._pg_store.PostgresStore`` the shared one (``postgresql://``), with the same
tables. Both also keep the audit trail (``audit_record``: one row per advice call) and the
release archive (``kb_release``: every knowledge-base release served, by content digest),
append-only: triggers refuse UPDATE and DELETE on both (``cds_service._audit``). The service wraps
it in :class:`QueuedFeedbackStore`: writes go through a bounded queue to one writer thread
that retries while the database is locked, so a locked database never holds up advice;
a full queue spills to a file beside the database, and a clean shutdown drains the queue.

Feedback is validated before anything is written (:func:`validate_feedback`); one bad item
rejects the whole batch with a ``ValueError`` naming its index.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from cds_service._errors import StoreError, StoreUnavailable
from cds_service._schema import SQLITE_SCHEMA

__all__ = [
    "UNRECORDED_CARD",
    "FeedbackStore",
    "JobStore",
    "OverrideReasonCount",
    "QueuedFeedbackStore",
    "RuleFeedback",
    "SQLiteFeedbackStore",
    "StoreError",
    "StoreUnavailable",
    "open_store",
    "summarise",
    "validate_feedback",
]


#: The rule id under which feedback on cards this store never recorded is summarised.
UNRECORDED_CARD = "(card not recorded)"

MAX_TEXT = 4096
_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z"
)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class OverrideReasonCount:
    """How often one override reason was given. All three ``None``: overridden without a
    coded reason (at most a free-text comment)."""

    system: str | None
    code: str | None
    display: str | None
    count: int


@dataclass(frozen=True)
class RuleFeedback:
    """Feedback on the cards one rule contributed to. ``override_reasons`` most frequent
    first."""

    rule_id: str
    accepted: int
    overridden: int
    override_reasons: list[OverrideReasonCount] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "overrideReasons": [
                {k: v for k, v in (("system", r.system), ("code", r.code),
                                   ("display", r.display), ("count", r.count))
                 if v is not None}
                for r in self.override_reasons
            ],
        }


class FeedbackStore(Protocol):
    """Where feedback goes. Implementations are safe to call from several threads."""

    def record_cards(self, cards: Sequence[tuple[str, Sequence[str], str]],
                     created_at: datetime | None = None) -> None:
        """Remember ``(card uuid, rule ids, knowledge base)`` for cards being returned, so
        later feedback can be attributed to rules. A uuid recorded twice keeps its first
        record."""
        ...

    def add(self, service_id: str, items: list[dict[str, Any]],
            received_at: datetime) -> int:
        """Validate then store one feedback POST's items, all or nothing; the number
        stored. ``ValueError`` (naming the item index) if any item is invalid."""
        ...

    def summary_by_rule(self) -> list[RuleFeedback]:
        """Per rule id (sorted): accepted and overridden counts and override reasons."""
        ...

    def ping(self) -> None:
        """Return if the database answers now (``/readyz``); raise (any error) if not."""
        ...

    def close(self) -> None: ...


class JobStore(Protocol):
    """A database behind :class:`QueuedFeedbackStore` (SQLite or PostgreSQL)."""

    @property
    def path(self) -> str | None:
        """The SQLite file (``":memory:"``), None for a database server."""
        ...

    def write_jobs(self, jobs: Sequence[Job]) -> None: ...
    def set_busy_timeout(self, seconds: float) -> None: ...
    def summary_by_rule(self) -> list[RuleFeedback]: ...
    def audit_records(self, hook_instance: str) -> list[dict[str, Any]]: ...
    def release_archive(self, digest: str) -> tuple[str, bytes] | None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


# --- validation --------------------------------------------------------------------------------

def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{where} is longer than {MAX_TEXT} characters")
    if "\x00" in value:  # PostgreSQL text cannot hold it: refused now, not lost later
        raise ValueError(f"{where} contains a NUL character (U+0000)")
    return value


def _optional_text(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _instant(value: object, where: str) -> str:
    """An ISO 8601 instant (date, time to the second, zone), normalised to UTC."""
    if not isinstance(value, str) or not _INSTANT.match(value):
        raise ValueError(f"{where} must be an ISO 8601 instant with a time zone, "
                         f"e.g. 2026-11-02T09:00:00Z")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    frac = re.search(r"\.(\d+)", text)
    if frac and len(frac.group(1)) > 6:  # Python keeps microseconds
        text = text.replace(frac.group(0), "." + frac.group(1)[:6], 1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where} is not a valid date and time") from None
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class _Row:
    card_uuid: str
    outcome: str
    reason_system: str | None
    reason_code: str | None
    reason_display: str | None
    user_comment: str | None
    accepted_suggestions: str | None  # JSON array of suggestion ids
    outcome_timestamp: str


def _validate_item(item: object, i: int) -> _Row:
    where = f"feedback[{i}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a JSON object")
    card = _text(item.get("card"), f"{where}.card")
    outcome = item.get("outcome")
    if outcome not in ("accepted", "overridden"):
        raise ValueError(f"{where}.outcome must be 'accepted' or 'overridden'")
    suggestions: str | None = None
    if "acceptedSuggestions" in item:
        if outcome != "accepted":
            raise ValueError(f"{where}.acceptedSuggestions is only allowed when accepted")
        raw = item["acceptedSuggestions"]
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{where}.acceptedSuggestions must be a non-empty array")
        ids = []
        for j, s in enumerate(raw):
            if not isinstance(s, dict):
                raise ValueError(f"{where}.acceptedSuggestions[{j}] must be an object")
            ids.append(_text(s.get("id"), f"{where}.acceptedSuggestions[{j}].id"))
        suggestions = json.dumps(ids)
    system: str | None = None
    code: str | None = None
    display: str | None = None
    comment: str | None = None
    if "overrideReason" in item:
        if outcome != "overridden":
            raise ValueError(f"{where}.overrideReason is only allowed when overridden")
        reason = item["overrideReason"]
        if not isinstance(reason, dict) or not ("reason" in reason or "userComment" in reason):
            raise ValueError(f"{where}.overrideReason must be an object with 'reason' "
                             f"and/or 'userComment'")
        if "reason" in reason:
            coding = reason["reason"]
            if not isinstance(coding, dict):
                raise ValueError(f"{where}.overrideReason.reason must be a Coding object")
            code = _text(coding.get("code"), f"{where}.overrideReason.reason.code")
            system = _optional_text(coding.get("system"),
                                    f"{where}.overrideReason.reason.system")
            display = _optional_text(coding.get("display"),
                                     f"{where}.overrideReason.reason.display")
        if "userComment" in reason:
            comment = _text(reason["userComment"], f"{where}.overrideReason.userComment")
    timestamp = _instant(item.get("outcomeTimestamp"), f"{where}.outcomeTimestamp")
    return _Row(card, str(outcome), system, code, display, comment, suggestions, timestamp)


def validate_feedback(items: object) -> list[_Row]:
    """Check every item (CDS Hooks 2.0 Feedback); ``ValueError`` names the first bad one."""
    if not isinstance(items, list):
        raise ValueError("feedback must be an array")
    return [_validate_item(item, i) for i, item in enumerate(items)]


def _utc(moment: datetime, what: str) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A job: one write, validated, as JSON-able data (so it can wait in a queue or a spill file).
#   {"kind": "cards", "rows": [[card uuid, rule ids (JSON text), knowledge base, created]]}
#   {"kind": "feedback", "service": id, "received": instant, "rows": [[_Row fields...]]}
#   {"kind": "audit", "rows": [[AUDIT_COLUMNS values...]]}          (cds_service._audit)
#   {"kind": "release", "rows": [[digest, release, archived at, base64 tar.gz]]}
Job = dict[str, Any]

#: The columns of one audit record, in the order of an audit job's row.
AUDIT_COLUMNS = ("hook_instance", "recorded_at", "service_id", "release", "kb_digest",
                 "software", "as_of", "input_digest", "input", "output_digest", "output",
                 "cards")
RELEASE_COLUMNS = ("digest", "release", "archived_at", "archive")


def card_job(cards: Sequence[tuple[str, Sequence[str], str]],
             created_at: datetime | None = None) -> Job:
    when = _utc(created_at or datetime.now(UTC), "created_at")
    rows = []
    for i, (card_uuid, rule_ids, kb) in enumerate(cards):
        _text(card_uuid, f"cards[{i}] uuid")
        if isinstance(rule_ids, str) or not all(isinstance(r, str) and r for r in rule_ids):
            raise ValueError(f"cards[{i}] rule ids must be a list of non-empty strings")
        _text(kb, f"cards[{i}] knowledge base")
        rows.append([card_uuid, json.dumps(list(rule_ids)), kb, when])
    return {"kind": "cards", "rows": rows}


def feedback_job(service_id: str, items: list[dict[str, Any]], received_at: datetime) -> Job:
    _text(service_id, "service_id")
    received = _utc(received_at, "received_at")
    rows = validate_feedback(items)
    return {"kind": "feedback", "service": service_id, "received": received,
            "rows": [[r.card_uuid, r.outcome, r.reason_system, r.reason_code,
                      r.reason_display, r.user_comment, r.accepted_suggestions,
                      r.outcome_timestamp] for r in rows]}


def _job_size(job: Job) -> int:
    return len(job["rows"])


def summarise(grouped: Sequence[Sequence[Any]]) -> list[RuleFeedback]:
    """Per rule, from the rows of ``SUMMARY_QUERY`` (rule ids JSON, outcome, reason system,
    code, display, count), whichever database ran it."""
    accepted: dict[str, int] = defaultdict(int)
    overridden: dict[str, int] = defaultdict(int)
    reasons: dict[str, dict[tuple[str | None, str | None], list[Any]]] = defaultdict(dict)
    for rule_ids, outcome, system, code, display, count in grouped:
        rules = json.loads(rule_ids) if rule_ids is not None else [UNRECORDED_CARD]
        for rule in dict.fromkeys(rules):
            if outcome == "accepted":
                accepted[rule] += count
                continue
            overridden[rule] += count
            slot = reasons[rule].setdefault((system, code), [display, 0])
            slot[0] = slot[0] or display
            slot[1] += count
    out = []
    for rule in sorted(set(accepted) | set(overridden)):
        counted = [OverrideReasonCount(s, c, d, n)
                   for (s, c), (d, n) in reasons[rule].items()]
        counted.sort(key=lambda r: (-r.count, r.code is None, r.code or "", r.system or ""))
        out.append(RuleFeedback(rule, accepted[rule], overridden[rule], counted))
    return out


# --- SQLite ------------------------------------------------------------------------------------

_SQLITE_WRITES: dict[str, str] = {
    "cards": "INSERT INTO cards (card_uuid, rule_ids, knowledge_base, created_at) "
             "VALUES (?, ?, ?, ?) ON CONFLICT (card_uuid) DO NOTHING",
    "audit": f"INSERT INTO audit_record ({', '.join(AUDIT_COLUMNS)}) "
             f"VALUES ({', '.join('?' for _ in AUDIT_COLUMNS)})",
    "release": "INSERT INTO kb_release (digest, release, archived_at, archive) "
               "VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
}
_FEEDBACK_INSERT = (
    "INSERT INTO feedback (service_id, card_uuid, outcome,"
    " override_reason_system, override_reason_code,"
    " override_reason_display, override_user_comment,"
    " accepted_suggestions, outcome_timestamp, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
SUMMARY_QUERY = (
    "SELECT c.rule_ids, f.outcome, f.override_reason_system,"
    " f.override_reason_code, MAX(f.override_reason_display), COUNT(*)"
    " FROM feedback f LEFT JOIN cards c ON c.card_uuid = f.card_uuid"
    " GROUP BY c.rule_ids, f.outcome, f.override_reason_system,"
    " f.override_reason_code")


def job_rows(job: Job) -> list[list[Any]]:
    """A job's rows as database parameters (a release's archive decoded to bytes)."""
    if job["kind"] == "feedback":
        return [[job["service"], *row, job["received"]] for row in job["rows"]]
    if job["kind"] == "release":
        return [[*row[:3], base64.b64decode(row[3])] for row in job["rows"]]
    return [list(row) for row in job["rows"]]


class SQLiteFeedbackStore:
    """:class:`FeedbackStore` in one SQLite file. ``create=False`` refuses to create a
    missing database (for read-only tools such as the report command)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = str(path)
        if self.path != ":memory:" and not create and not Path(self.path).is_file():
            raise ValueError(f"no feedback database at {self.path}")
        try:
            self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 10000")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(f"feedback database {self.path} has schema version "
                                 f"{version}; this version reads {SCHEMA_VERSION}")
            self._db.executescript(SQLITE_SCHEMA)  # the migrations' statements
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise ValueError(f"cannot open feedback database {self.path}: {e}") from None
        self._lock = threading.Lock()

    def record_cards(self, cards: Sequence[tuple[str, Sequence[str], str]],
                     created_at: datetime | None = None) -> None:
        self.write_jobs([card_job(cards, created_at)])

    def add(self, service_id: str, items: list[dict[str, Any]],
            received_at: datetime) -> int:
        job = feedback_job(service_id, items, received_at)  # all checked before writing
        self.write_jobs([job])
        return len(job["rows"])

    def write_jobs(self, jobs: Sequence[Job]) -> None:
        """Write validated jobs (``card_job``, ``feedback_job``, audit and release jobs) in
        one transaction. ``sqlite3.OperationalError`` when the database is locked (nothing
        written)."""
        with self._lock, self._transaction():
            for job in jobs:
                sql = _SQLITE_WRITES.get(job["kind"], _FEEDBACK_INSERT)
                self._db.executemany(sql, job_rows(job))

    def audit_records(self, hook_instance: str) -> list[dict[str, Any]]:
        """Every audit record of one call (normally one), oldest first."""
        with self._lock:
            cur = self._db.execute(
                f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_record"
                " WHERE hook_instance = ? ORDER BY id", (hook_instance,))
            return [dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def release_archive(self, digest: str) -> tuple[str, bytes] | None:
        """``(release, tar.gz bytes)`` of an archived knowledge-base release, or None."""
        with self._lock:
            row = self._db.execute("SELECT release, archive FROM kb_release WHERE digest = ?",
                                   (digest,)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def set_busy_timeout(self, seconds: float) -> None:
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def summary_by_rule(self) -> list[RuleFeedback]:
        with self._lock:
            grouped = self._db.execute(SUMMARY_QUERY).fetchall()
        return summarise(grouped)

    def ping(self) -> None:
        """A read of both tables (``StoreUnavailable`` if it fails); ``OSError`` when the
        database file is gone (deleted, or its volume unmounted: the open connection would
        still read the old file)."""
        try:
            with self._lock:
                self._db.execute("SELECT 1 FROM cards LIMIT 1").fetchall()
                self._db.execute("SELECT 1 FROM feedback LIMIT 1").fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"feedback database unavailable ({type(e).__name__})"
                                   ) from None
        if self.path != ":memory:":
            os.stat(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def __enter__(self) -> SQLiteFeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def is_postgresql(database_url: str) -> bool:
    scheme = database_url.split("://", 1)[0].lower() if "://" in database_url else ""
    return scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+")


def open_store(database_url: str, *, create: bool = True) -> Any:
    """The store a database URL names.

    ``sqlite:///<path>``: everything after the three slashes is the file path, so
    ``sqlite:///feedback.db`` is relative to the working directory and
    ``sqlite:////var/lib/movement-cds/feedback.db`` (or ``f"sqlite:///{abs_path}"``) is
    absolute; ``sqlite:///:memory:`` is a throwaway in-memory store.
    ``postgresql://user@host:port/db`` (``postgres://``, ``postgresql+psycopg://``): the
    shared store (``cds_service._pg_store``; its schema comes from ``movement-cds db
    upgrade``). Other schemes raise ``ValueError``.
    """
    if not isinstance(database_url, str) or "://" not in database_url:
        raise ValueError(f"not a database URL: {database_url!r} "
                         f"(expected sqlite:///path/to/feedback.db)")
    scheme = database_url.split("://", 1)[0].lower()
    if is_postgresql(database_url):
        try:
            from cds_service._pg_store import PostgresStore
        except ImportError as e:
            raise ValueError(f"PostgreSQL needs the 'service' extra (pip install "
                             f"'movement-cds[service]'): {e}") from None
        return PostgresStore(database_url)
    if scheme != "sqlite":
        raise ValueError(f"unsupported database URL scheme {scheme!r}; "
                         f"use sqlite:///path/to/feedback.db or postgresql://...")
    if not database_url.startswith("sqlite:///"):
        raise ValueError("an SQLite URL has no host: sqlite:///relative.db or "
                         "sqlite:////absolute/path.db")
    path = database_url[len("sqlite:///"):]
    if not path or "?" in path or "#" in path:
        raise ValueError(f"sqlite URL needs a plain file path: {database_url!r}")
    return SQLiteFeedbackStore(path, create=create)


# --- off the request path ----------------------------------------------------------------------

_log = logging.getLogger("movement_cds.service")


#: How long past ``drain_seconds`` ``QueuedFeedbackStore.close`` waits for a writer that
#: is inside a database call before it abandons it (a busy database's retries end at the
#: deadline; one call past it means the call itself does not return).
STUCK_MARGIN: Final = 5.0


class QueuedFeedbackStore:
    """A :class:`FeedbackStore` whose writes never wait for the database.

    ``record_cards`` and ``add`` validate at once (``ValueError`` to the caller, as before),
    then put the write on a bounded queue and return; one writer thread drains the queue into
    the SQLite store, many jobs per transaction. While the database is locked (another
    process holds a write transaction, a backup...) the writer retries with a short backoff,
    for as long as it takes; nothing is dropped.

    Queue full (``max_queued`` jobs waiting): the job is appended to the spill file (JSON
    lines beside the database, ``<database>.spill.jsonl``) instead, never blocking the
    caller; the writer moves spilled jobs into the database once it can (and at the next
    start). Only if the spill file cannot be written either is the job lost: counted in
    ``lost`` and logged (WARNING, counts only).

    ``close`` drains the queue (SIGTERM: uvicorn's shutdown runs the app's lifespan end):
    it keeps retrying for up to ``drain_seconds``, then spills what is left, so a clean
    shutdown loses nothing. A writer stuck inside one database call (a server or proxy that
    holds the connection open and never answers, a network partition) is abandoned once
    ``drain_seconds`` and ``STUCK_MARGIN`` have passed: the write it was making and the queue
    are spilled, and ``close`` returns. If that write commits after all (its COMMIT reached
    the server before the connection hung, or it lands before the process exits), its rows
    are written again from the spill file at the next start: counted twice, never lost. A
    writer that stops on an unexpected error spills what it holds, and ``close`` spills
    the queue it leaves. A crash (SIGKILL, power loss) loses what was queued and not yet
    written (normally milliseconds' worth; the whole lock's worth while the database is
    locked).
    """

    def __init__(self, inner: JobStore, *, max_queued: int = 10_000,
                 spill_path: str | Path | None = None, drain_seconds: float = 60.0,
                 attempt_seconds: float = 0.25) -> None:
        self.inner = inner
        self.spill_path = (Path(spill_path) if spill_path is not None
                           else None if inner.path in (":memory:", None)
                           else Path(f"{inner.path}.spill.jsonl"))
        self.drain_seconds = drain_seconds
        self.spilled = 0  # jobs written to the spill file (this process)
        self.lost = 0     # rows lost: queue full and the spill file not writable
        self._queue: queue.Queue[Job] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._last_warning = 0.0
        self._spill_lock = threading.Lock()
        self._gate = threading.Lock()  # _put's enqueue vs close's stop (never held over I/O)
        self._state = threading.Lock()  # guards the two below, between writer and close
        self._writing: list[Job] = []  # the jobs of the database call in progress
        self._abandoned = False  # close gave up on a writer stuck in a database call
        inner.set_busy_timeout(attempt_seconds)  # short waits: the writer retries itself
        self._writer = threading.Thread(target=self._run, name="feedback-writer",
                                        daemon=True)
        self._writer.start()

    # the FeedbackStore interface
    def record_cards(self, cards: Sequence[tuple[str, Sequence[str], str]],
                     created_at: datetime | None = None) -> None:
        self._put(card_job(cards, created_at))

    def add(self, service_id: str, items: list[dict[str, Any]],
            received_at: datetime) -> int:
        job = feedback_job(service_id, items, received_at)
        self._put(job)
        return _job_size(job)

    def summary_by_rule(self) -> list[RuleFeedback]:
        return self.inner.summary_by_rule()

    def record_jobs(self, jobs: Sequence[Job]) -> None:
        """Queue validated jobs (audit records, release archives) like any other write."""
        for job in jobs:
            self._put(job)

    def write_now(self, jobs: Sequence[Job], within: float = 5.0) -> None:
        """Write at once, in one transaction, retrying a busy database for up to ``within``
        seconds (``[audit] required``); ``StoreError`` if it cannot be written."""
        deadline, delay = time.monotonic() + within, 0.01
        while True:
            try:
                self.inner.write_jobs(jobs)
                return
            except (sqlite3.OperationalError, StoreUnavailable) as e:
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"database busy or unreachable ({type(e).__name__})"
                                     ) from None
            except (sqlite3.Error, StoreError) as e:
                raise StoreError(f"write failed ({type(e).__name__})") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def audit_records(self, hook_instance: str) -> list[dict[str, Any]]:
        return self.inner.audit_records(hook_instance)

    def release_archive(self, digest: str) -> tuple[str, bytes] | None:
        return self.inner.release_archive(digest)

    def queued(self) -> int:
        return self._queue.qsize()

    def ping(self) -> None:
        """The database answers (``SQLiteFeedbackStore.ping``) and the writer is running."""
        if not self._writer.is_alive():
            raise RuntimeError("the feedback writer thread has stopped")
        self.inner.ping()

    def close(self) -> None:
        """Drain the queue (up to ``drain_seconds`` of retries, then spill), then close;
        a writer stuck in a call is abandoned (its writes spilled) and the store left open:
        the call holds it."""
        if self._stop.is_set():
            return
        with self._gate:  # from here on, _put spills: nothing enters the queue
            self._deadline = time.monotonic() + self.drain_seconds
            self._stop.set()
        self._writer.join(self.drain_seconds + STUCK_MARGIN)
        if self._writer.is_alive():
            self._abandon()
            return  # the stuck call holds the store (its lock): both go with the process
        left = self._take_all()  # queued as the writer ended, or after it died
        if left:
            self._spill(left)
        self.inner.close()

    def _abandon(self) -> None:
        """Spill the stuck writer's jobs and the queue; the writer, if its call ever
        returns, does nothing more."""
        with self._state:
            self._abandoned = True
            jobs = self._writing + self._take_all()
            self._writing = []
        _log.warning("feedback writer stuck in one database call for over %g s: %d "
                     "write(s) spilled, written at the next start", self.drain_seconds
                     + STUCK_MARGIN, len(jobs))
        if jobs:
            self._spill(jobs)

    def __enter__(self) -> QueuedFeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # callers' side
    def _put(self, job: Job) -> None:
        with self._gate:  # not between close's check of the queue and its stop
            if not self._stop.is_set():
                try:
                    self._queue.put_nowait(job)
                    return
                except queue.Full:
                    pass
        self._spill([job])  # queue full, or after close: nothing is written any more

    def _spill(self, jobs: list[Job]) -> None:
        rows = sum(_job_size(j) for j in jobs)
        try:
            if self.spill_path is None:
                raise OSError("no spill file for an in-memory database")
            lines = "".join(json.dumps(j, separators=(",", ":")) + "\n" for j in jobs)
            with self._spill_lock, self.spill_path.open("a", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # other worker processes spill here too
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
            self.spilled += len(jobs)
            self._warn(f"feedback queue full or draining: {len(jobs)} write(s) "
                       f"({rows} rows) spilled to {self.spill_path.name}; "
                       f"{self.spilled} spilled so far")
        except OSError as e:
            self.lost += rows
            self._warn(f"feedback queue full and the spill file is not writable "
                       f"({type(e).__name__}): {rows} rows lost, {self.lost} so far")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 1.0:  # at most one line a second, with totals
            self._last_warning = now
            _log.warning("%s", message)

    # the writer thread
    def _run(self) -> None:
        try:
            self._drain()
        except Exception as e:  # a bug or an unreadable spill line: spill, never lose
            with self._state:
                jobs, self._writing = self._writing, []
                if not self._abandoned:
                    _log.error("feedback writer stopped (%s); %d write(s) spilled, the "
                               "rest spilled at shutdown", type(e).__name__, len(jobs))
                    self._spill(jobs)

    def _drain(self) -> None:
        self._replay_spill()
        while True:
            jobs = self._take()
            if jobs:
                with self._state:
                    if self._abandoned:
                        self._spill(jobs)  # taken just as close gave up: never lost
                        return
                    self._writing = jobs
                outcome = self._write(jobs)
                with self._state:  # the jobs' fate decided in one step with close's
                    self._writing = []
                    if self._abandoned:  # close spilled these jobs already
                        return
                    if outcome is None:  # failed, and retrying will not help
                        self._spill(jobs)
                    elif not outcome:  # close's deadline passed, the database still busy
                        self._spill(jobs + self._take_all())
                        return
                if self._spill_waiting():
                    self._replay_spill()
            elif self._stop.is_set():
                return

    def _spill_waiting(self) -> bool:
        try:
            return self.spill_path is not None and self.spill_path.stat().st_size > 0
        except OSError:
            return False

    def _take(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.05)
        except queue.Empty:
            return []
        return [first, *self._take_all(limit=499)]

    def _take_all(self, limit: int = 1 << 30) -> list[Job]:
        out: list[Job] = []
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _write(self, jobs: list[Job]) -> bool | None:
        """Write, retrying while the database is busy: True once written, False once a
        draining close has waited ``drain_seconds``, None if the write failed for another
        reason (retrying will not help). The caller spills the jobs it did not write."""
        delay, since = 0.01, None
        while True:
            try:
                self.inner.write_jobs(jobs)
            except (sqlite3.OperationalError, StoreUnavailable) as e:
                if since is None:
                    since = time.monotonic()
                    _log.warning("feedback database busy (%s); retrying, %d write(s) "
                                 "waiting", " ".join(str(e).split()[:4]), len(jobs)
                                 + self._queue.qsize())
                if self._stop.is_set() and time.monotonic() >= self._deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            except (sqlite3.Error, StoreError) as e:  # not a lock: retrying will not help
                _log.error("feedback database write failed (%s); spilling %d write(s)",
                           type(e).__name__, len(jobs))
                return None
            if since is not None:
                _log.info("feedback database writable again after %.1f s",
                          time.monotonic() - since)
            return True

    def _replay_spill(self) -> None:
        """Move spilled jobs into the database (one transaction), then cut them from the
        file; left for later if the database is busy. One process replays at a time (a lock
        file); callers spilling meanwhile wait only for the short file reads and writes."""
        path = self.spill_path
        if path is None or not path.exists():
            return
        with open(str(path) + ".lock", "a") as guard:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another worker is replaying it
            with self._spill_lock, path.open("rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                taken = fh.read()
            jobs, bad = [], 0
            for line in taken.splitlines():
                try:
                    jobs.append(json.loads(line))
                except ValueError:
                    bad += 1  # a line cut short by a crash while it was written
            if jobs:
                try:
                    self.inner.write_jobs(jobs)
                except (sqlite3.Error, StoreError):
                    return  # still busy: next time
            with self._spill_lock, path.open("r+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                rest = fh.read()[len(taken):]  # spilled while we wrote: kept
                fh.seek(0)
                fh.write(rest)
                fh.truncate()
                fh.flush()
                os.fsync(fh.fileno())
        self.spilled = 0
        if jobs or bad:
            _log.info("feedback: %d spilled write(s) moved into the database%s", len(jobs),
                      f" ({bad} unreadable line(s) skipped)" if bad else "")
