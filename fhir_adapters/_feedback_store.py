"""Durable storage of CDS Hooks card feedback (spec point C16), readable back per rule.

Clinicians accept or override cards; ``POST {base}/cds-services/{id}/feedback`` reports it.
Rule authors read it back per knowledge-base rule: the service records, for every card it
returns, which rules produced it (:meth:`FeedbackStore.record_cards`), and feedback (which
names only the card ``uuid``) is joined back to rules through that record.

:class:`FeedbackStore` is the storage interface; :class:`SQLiteFeedbackStore` the built-in
backend (one file, WAL journal, ``synchronous=FULL``: a feedback POST answered 200 survives
a crash). A PostgreSQL backend implements the same protocol with the same two tables.

Feedback is validated before anything is written (:func:`validate_feedback`); one bad item
rejects the whole batch with a ``ValueError`` naming its index.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "UNRECORDED_CARD",
    "FeedbackStore",
    "OverrideReasonCount",
    "RuleFeedback",
    "SQLiteFeedbackStore",
    "open_store",
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

    def close(self) -> None: ...


# --- validation --------------------------------------------------------------------------------

def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{where} is longer than {MAX_TEXT} characters")
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


# --- SQLite ------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cards (
    card_uuid      TEXT PRIMARY KEY,
    rule_ids       TEXT NOT NULL,      -- JSON array of knowledge-base rule ids
    knowledge_base TEXT NOT NULL,      -- rule set name and version
    created_at     TEXT NOT NULL       -- UTC instant
);
CREATE TABLE IF NOT EXISTS feedback (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id             TEXT NOT NULL,
    card_uuid              TEXT NOT NULL,
    outcome                TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
    override_reason_system TEXT,
    override_reason_code   TEXT,
    override_reason_display TEXT,
    override_user_comment  TEXT,
    accepted_suggestions   TEXT,       -- JSON array of suggestion ids
    outcome_timestamp      TEXT NOT NULL,  -- UTC instant
    received_at            TEXT NOT NULL   -- UTC instant
);
CREATE INDEX IF NOT EXISTS feedback_card ON feedback (card_uuid);
"""


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
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise ValueError(f"cannot open feedback database {self.path}: {e}") from None
        self._lock = threading.Lock()

    def record_cards(self, cards: Sequence[tuple[str, Sequence[str], str]],
                     created_at: datetime | None = None) -> None:
        when = _utc(created_at or datetime.now(UTC), "created_at")
        rows = []
        for i, (card_uuid, rule_ids, kb) in enumerate(cards):
            _text(card_uuid, f"cards[{i}] uuid")
            if isinstance(rule_ids, str) or not all(isinstance(r, str) and r for r in rule_ids):
                raise ValueError(f"cards[{i}] rule ids must be a list of non-empty strings")
            _text(kb, f"cards[{i}] knowledge base")
            rows.append((card_uuid, json.dumps(list(rule_ids)), kb, when))
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO cards (card_uuid, rule_ids, knowledge_base, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (card_uuid) DO NOTHING", rows)

    def add(self, service_id: str, items: list[dict[str, Any]],
            received_at: datetime) -> int:
        _text(service_id, "service_id")
        received = _utc(received_at, "received_at")
        rows = validate_feedback(items)  # everything checked before anything is written
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO feedback (service_id, card_uuid, outcome, override_reason_system,"
                " override_reason_code, override_reason_display, override_user_comment,"
                " accepted_suggestions, outcome_timestamp, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(service_id, r.card_uuid, r.outcome, r.reason_system, r.reason_code,
                  r.reason_display, r.user_comment, r.accepted_suggestions,
                  r.outcome_timestamp, received) for r in rows])
        return len(rows)

    def summary_by_rule(self) -> list[RuleFeedback]:
        with self._lock:
            grouped = self._db.execute(
                "SELECT c.rule_ids, f.outcome, f.override_reason_system,"
                " f.override_reason_code, MAX(f.override_reason_display), COUNT(*)"
                " FROM feedback f LEFT JOIN cards c ON c.card_uuid = f.card_uuid"
                " GROUP BY c.rule_ids, f.outcome, f.override_reason_system,"
                " f.override_reason_code").fetchall()
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


def open_store(database_url: str, *, create: bool = True) -> SQLiteFeedbackStore:
    """The store a database URL names.

    ``sqlite:///<path>``: everything after the three slashes is the file path, so
    ``sqlite:///feedback.db`` is relative to the working directory and
    ``sqlite:////var/lib/movement-cds/feedback.db`` (or ``f"sqlite:///{abs_path}"``) is
    absolute; ``sqlite:///:memory:`` is a throwaway in-memory store. Other schemes raise
    ``ValueError``.
    """
    if not isinstance(database_url, str) or "://" not in database_url:
        raise ValueError(f"not a database URL: {database_url!r} "
                         f"(expected sqlite:///path/to/feedback.db)")
    scheme = database_url.split("://", 1)[0].lower()
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        raise ValueError("PostgreSQL feedback storage is not built in this version; "
                         "implement FeedbackStore (fhir_adapters._feedback_store) for it, "
                         "or use sqlite:///path/to/feedback.db")
    if scheme != "sqlite":
        raise ValueError(f"unsupported database URL scheme {scheme!r}; "
                         f"use sqlite:///path/to/feedback.db")
    if not database_url.startswith("sqlite:///"):
        raise ValueError("an SQLite URL has no host: sqlite:///relative.db or "
                         "sqlite:////absolute/path.db")
    path = database_url[len("sqlite:///"):]
    if not path or "?" in path or "#" in path:
        raise ValueError(f"sqlite URL needs a plain file path: {database_url!r}")
    return SQLiteFeedbackStore(path, create=create)
