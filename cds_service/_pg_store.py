"""PostgreSQL as the shared store of several service hosts (``database = "postgresql://..."``).

One database holds what SQLite keeps per host: card records and feedback (``cards``,
``feedback``), the audit trail and the release archive (``audit_record``, ``kb_release``,
append-only by trigger), and the used-token (``jti``) cache (``used_token``), so a token
used on one host is refused on every other, and the feedback report covers every host.

SQLAlchemy Core 2 over psycopg 3 (a small connection pool per process, ``pool_pre_ping``).
The schema is Alembic's (``movement-cds db upgrade``, ``cds_service._db``); a store refuses
to open a database whose schema is not the one this version writes, saying to run it.

:class:`PostgresStore` has the methods of ``SQLiteFeedbackStore`` that the service and the
commands use (``write_jobs`` for ``QueuedFeedbackStore``, ``summary_by_rule``,
``audit_records``, ``release_archive``, ``ping``); a server that cannot be reached raises
``StoreUnavailable`` (the queue retries), anything else ``StoreError``.
:class:`PostgresReplayCache` is ``cds_service._replay.ReplayCache`` in the shared database:
"remember, or say it was seen" is one atomic ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``.
Nothing logged or raised carries a token, a patient value or the connection password.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Engine, create_engine, exc, text

from cds_service._feedback_store import (
    AUDIT_COLUMNS,
    RELEASE_COLUMNS,
    SUMMARY_QUERY,
    Job,
    RuleFeedback,
    StoreError,
    StoreUnavailable,
    card_job,
    feedback_job,
    job_rows,
    summarise,
)

__all__ = ["PostgresReplayCache", "PostgresStore", "sqlalchemy_url"]

_FEEDBACK_COLUMNS: Final = (
    "service_id", "card_uuid", "outcome", "override_reason_system", "override_reason_code",
    "override_reason_display", "override_user_comment", "accepted_suggestions",
    "outcome_timestamp", "received_at")
_CARD_COLUMNS: Final = ("card_uuid", "rule_ids", "knowledge_base", "created_at")


def _insert(table: str, columns: Sequence[str], conflict: str | None = None) -> Any:
    sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
           f"VALUES ({', '.join(':' + c for c in columns)})")
    return text(sql + (f" ON CONFLICT ({conflict}) DO NOTHING" if conflict else ""))


_WRITES: Final = {
    "cards": (_insert("cards", _CARD_COLUMNS, "card_uuid"), _CARD_COLUMNS),
    "feedback": (_insert("feedback", _FEEDBACK_COLUMNS), _FEEDBACK_COLUMNS),
    "audit": (_insert("audit_record", AUDIT_COLUMNS), AUDIT_COLUMNS),
    "release": (_insert("kb_release", RELEASE_COLUMNS, "digest"), RELEASE_COLUMNS),
}


def sqlalchemy_url(database_url: str) -> str:
    """The SQLAlchemy URL of a configured database URL: ``postgresql://`` and
    ``postgres://`` use psycopg 3 (SQLAlchemy's own default would be psycopg2)."""
    scheme, sep, rest = database_url.partition("://")
    lowered = scheme.lower()
    if lowered in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg{sep}{rest}"
    if lowered.startswith("postgresql+"):
        raise ValueError(f"PostgreSQL driver {scheme.split('+', 1)[1]!r} is not supported; "
                         "use postgresql:// (psycopg 3)")
    return database_url


def _where(database_url: str) -> str:
    """host:port/db of a URL, never its password."""
    from sqlalchemy.engine import make_url

    u = make_url(sqlalchemy_url(database_url))
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database or ''}"


#: Server-side limits on each connection: a statement waits at most ``LOCK_TIMEOUT`` for a
#: lock another session holds (a migration, a CREATE INDEX, a DBA's LOCK TABLE) and runs at
#: most ``STATEMENT_TIMEOUT``; past that it fails like an unreachable server (the used-token
#: check refuses the token, the queue retries), never a call waiting without end.
LOCK_TIMEOUT: Final = "2s"
STATEMENT_TIMEOUT: Final = "15s"


def _limit_waits(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cur:  # SET, not options=: works through PgBouncer
        cur.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        cur.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    dbapi_connection.commit()  # a SET rolled back with its transaction would not stay


def connect(database_url: str) -> Engine:
    """A pooled engine for the URL (no connection is made yet)."""
    from sqlalchemy import event

    engine = create_engine(sqlalchemy_url(database_url), pool_pre_ping=True, pool_size=4,
                           max_overflow=4, connect_args={"connect_timeout": 5})
    event.listen(engine, "connect", _limit_waits)
    return engine


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """SQLAlchemy errors as ``StoreUnavailable`` (cannot reach) or ``StoreError``."""
    try:
        yield
    except exc.OperationalError as e:
        raise StoreUnavailable(f"{what}: database unavailable ({_reason(e)})") from None
    except exc.SQLAlchemyError as e:
        raise StoreError(f"{what}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    orig = getattr(e, "orig", None)
    first = str(orig or e).strip().splitlines()[0] if str(orig or e).strip() else ""
    return f"{type(orig or e).__name__}: {first[:200]}"


class PostgresStore:
    """The feedback, card, audit and release tables in one PostgreSQL database."""

    path: str | None = None  # no local file: the spill file is configured

    def __init__(self, database_url: str) -> None:
        from cds_service._db import check_schema

        self.where = _where(database_url)
        self._engine = connect(database_url)
        try:
            check_schema(self._engine, self.where)
        except BaseException:
            self._engine.dispose()
            raise

    def record_cards(self, cards: Sequence[tuple[str, Sequence[str], str]],
                     created_at: datetime | None = None) -> None:
        self.write_jobs([card_job(cards, created_at)])

    def add(self, service_id: str, items: list[dict[str, Any]],
            received_at: datetime) -> int:
        job = feedback_job(service_id, items, received_at)
        self.write_jobs([job])
        return len(job["rows"])

    def write_jobs(self, jobs: Sequence[Job]) -> None:
        """All jobs in one transaction (all or nothing)."""
        with _translated("write"), self._engine.begin() as conn:
            for job in jobs:
                statement, columns = _WRITES[job["kind"]]
                conn.execute(statement, [dict(zip(columns, row, strict=True))
                                         for row in job_rows(job)])

    def set_busy_timeout(self, seconds: float) -> None:
        """Nothing to set: the server queues concurrent writers itself."""

    def summary_by_rule(self) -> list[RuleFeedback]:
        with _translated("feedback summary"), self._engine.connect() as conn:
            rows = conn.execute(text(SUMMARY_QUERY)).all()
        return summarise([tuple(r) for r in rows])

    def audit_records(self, hook_instance: str) -> list[dict[str, Any]]:
        sql = text(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_record"
                   " WHERE hook_instance = :h ORDER BY id")
        with _translated("audit read"), self._engine.connect() as conn:
            rows = conn.execute(sql, {"h": hook_instance}).all()
        return [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in rows]

    def release_archive(self, digest: str) -> tuple[str, bytes] | None:
        sql = text("SELECT release, archive FROM kb_release WHERE digest = :d")
        with _translated("release archive read"), self._engine.connect() as conn:
            row = conn.execute(sql, {"d": digest}).first()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the database cannot be reached now."""
        with _translated(f"ping {self.where}"), self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_REMEMBER: Final = text(
    "INSERT INTO used_token (iss, jti, expires) VALUES (:iss, :jti, :until) "
    "ON CONFLICT (iss, jti) DO UPDATE SET expires = excluded.expires "
    "WHERE used_token.expires < :now")
_PURGE_EVERY_SECONDS: Final = 1.0


class PostgresReplayCache:
    """``ReplayCache`` (same methods, same meaning) in the shared database: one host's use
    of a token is seen by every host. Any database failure raises ``ReplayStoreError``
    (the verifier then refuses the token)."""

    def __init__(self, database_url: str, *, max_entries: int = 100_000) -> None:
        from cds_service._db import check_schema
        from cds_service._replay import ReplayStoreError

        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._error = ReplayStoreError
        self.path = _where(database_url)
        self._max = max_entries
        self._last_purge = float("-inf")
        self._lock = threading.Lock()
        self._engine = connect(database_url)
        try:
            check_schema(self._engine, self.path)
        except StoreError as e:
            self._engine.dispose()
            raise ReplayStoreError(f"cannot open the replay cache: {e}") from None

    def remember(self, iss: str, jti: str, until: float, now: float) -> bool:
        """Record this use; ``False`` if the pair was used before and has not expired."""
        try:
            with self._engine.begin() as conn:
                self._purge(conn, now)
                result = conn.execute(_REMEMBER, {"iss": iss, "jti": jti, "until": until,
                                                  "now": now})
                return bool(result.rowcount == 1)
        except exc.SQLAlchemyError as e:
            raise self._error(f"replay cache unavailable ({type(e).__name__})") from None

    def _purge(self, conn: Any, now: float) -> None:
        with self._lock:
            due = now - self._last_purge >= _PURGE_EVERY_SECONDS
            if due:
                self._last_purge = now
        if due:
            conn.execute(text("DELETE FROM used_token WHERE expires < :now"), {"now": now})
            conn.execute(text(
                "DELETE FROM used_token WHERE (iss, jti) IN (SELECT iss, jti FROM used_token"
                " ORDER BY expires DESC OFFSET :keep)"), {"keep": self._max})

    def entries(self) -> frozenset[tuple[str, str]]:
        with self._engine.connect() as conn:
            rows = conn.execute(text("SELECT iss, jti FROM used_token")).all()
        return frozenset((str(i), str(j)) for i, j in rows)

    def close(self) -> None:
        self._engine.dispose()
