"""The service database's schema, written once: each Alembic revision's statements, for
SQLite and for PostgreSQL.

The migrations (``cds_service/migrations/versions``) run one revision's statements
(``run_revision``); an SQLite store creates its tables itself from the same statements, every
revision in order (``SQLITE_SCHEMA``; they create only what is missing). A released
revision's statements never change: a schema change is a new revision here and a new
migration that runs it (and ``cds_service._db.SCHEMA_HEAD`` moves to it).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["REVISIONS", "SQLITE_SCHEMA", "run_revision"]

# --- 0001: card records and feedback -----------------------------------------------------------

_CARDS_COLUMNS = """
    card_uuid      TEXT PRIMARY KEY,
    rule_ids       TEXT NOT NULL,      -- JSON array of knowledge-base rule ids
    knowledge_base TEXT NOT NULL,      -- rule set name and version
    created_at     TEXT NOT NULL       -- UTC instant
)"""
_FEEDBACK_COLUMNS = """
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
)"""

_FEEDBACK_SQLITE = (
    "CREATE TABLE IF NOT EXISTS cards (" + _CARDS_COLUMNS,
    "CREATE TABLE IF NOT EXISTS feedback (\n"
    "    id                     INTEGER PRIMARY KEY AUTOINCREMENT," + _FEEDBACK_COLUMNS,
    "CREATE INDEX IF NOT EXISTS feedback_card ON feedback (card_uuid)",
)
_FEEDBACK_POSTGRESQL = (
    "CREATE TABLE cards (" + _CARDS_COLUMNS,
    "CREATE TABLE feedback (\n"
    "    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY," + _FEEDBACK_COLUMNS,
    "CREATE INDEX feedback_card ON feedback (card_uuid)",
)

# --- 0002: the audit trail, the release archive, PostgreSQL's shared used-token cache ----------

_AUDIT_COLUMNS = """
    hook_instance TEXT NOT NULL,
    recorded_at   TEXT NOT NULL,   -- UTC instant
    service_id    TEXT NOT NULL,
    release       TEXT NOT NULL,   -- {kb-id}@{version}
    kb_digest     TEXT NOT NULL,   -- SHA-256 of the release's files (kb_release.digest)
    software      TEXT NOT NULL,   -- movement-cds version that answered
    as_of         TEXT NOT NULL,   -- the evaluation instant, to the microsecond
    input_digest  TEXT NOT NULL,   -- SHA-256 of the canonical input
    input         TEXT,            -- the canonical input ([audit] store_inputs)
    output_digest TEXT NOT NULL,   -- SHA-256 of the response body
    output        TEXT,            -- the response body ([audit] store_inputs)
    cards         TEXT NOT NULL    -- JSON: [{uuid, code, rules}]
)"""


def _sqlite_refusal(name: str, event: str, table: str, message: str) -> str:
    return (f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {event} ON {table}\n"
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END")


_AUDIT_SQLITE = (
    "CREATE TABLE IF NOT EXISTS audit_record (\n"
    "    id            INTEGER PRIMARY KEY AUTOINCREMENT," + _AUDIT_COLUMNS,
    "CREATE INDEX IF NOT EXISTS audit_record_hook_instance ON audit_record (hook_instance)",
    """CREATE TABLE IF NOT EXISTS kb_release (
    digest      TEXT PRIMARY KEY,
    release     TEXT NOT NULL,
    archived_at TEXT NOT NULL,
    archive     BLOB NOT NULL       -- tar.gz of the knowledge-base directory
)""",
    _sqlite_refusal("audit_record_no_update", "UPDATE", "audit_record",
                    "audit records are append-only"),
    _sqlite_refusal("audit_record_no_delete", "DELETE", "audit_record",
                    "audit records are append-only"),
    _sqlite_refusal("kb_release_no_update", "UPDATE", "kb_release",
                    "the release archive is append-only"),
    _sqlite_refusal("kb_release_no_delete", "DELETE", "kb_release",
                    "the release archive is append-only"),
    # REPLACE deletes the row it conflicts with without firing a DELETE trigger: refuse the
    # insert instead (an archived release is kept as it is, like ON CONFLICT DO NOTHING)
    """CREATE TRIGGER IF NOT EXISTS audit_record_no_replace BEFORE INSERT ON audit_record
WHEN EXISTS (SELECT 1 FROM audit_record WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS kb_release_no_replace BEFORE INSERT ON kb_release
WHEN EXISTS (SELECT 1 FROM kb_release WHERE digest = NEW.digest)
BEGIN SELECT RAISE(IGNORE); END""",
)
_AUDIT_POSTGRESQL = (
    "CREATE TABLE audit_record (\n"
    "    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY," + _AUDIT_COLUMNS,
    "CREATE INDEX audit_record_hook_instance ON audit_record (hook_instance)",
    """CREATE TABLE kb_release (
    digest      TEXT PRIMARY KEY,
    release     TEXT NOT NULL,
    archived_at TEXT NOT NULL,
    archive     BYTEA NOT NULL
)""",
    """CREATE FUNCTION movement_cds_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
        MESSAGE = TG_TABLE_NAME || ' is append-only (' || TG_OP || ' refused)';
END $$""",
    *(f"""CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION movement_cds_append_only()""" for table in
      ("audit_record", "kb_release")),
    *(f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION movement_cds_append_only()""" for table in
      ("audit_record", "kb_release")),
    """CREATE TABLE used_token (
    iss     TEXT NOT NULL,
    jti     TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (iss, jti)
)""",
    "CREATE INDEX used_token_expires ON used_token (expires)",
)

#: Each revision's statements by dialect, in revision order.
REVISIONS: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "0001": {"sqlite": _FEEDBACK_SQLITE, "postgresql": _FEEDBACK_POSTGRESQL},
    "0002": {"sqlite": _AUDIT_SQLITE, "postgresql": _AUDIT_POSTGRESQL},
}

#: What an SQLite store runs when it opens its file: every revision, in order.
SQLITE_SCHEMA: Final = "".join(
    statement + ";\n" for revision in REVISIONS.values() for statement in revision["sqlite"])


def run_revision(bind: Any, revision: str) -> None:
    """A migration's ``upgrade``: that revision's statements for the connection's dialect
    (SQLite, else PostgreSQL), as written (no bind parameters)."""
    dialect = "sqlite" if bind.dialect.name == "sqlite" else "postgresql"
    for statement in REVISIONS[revision][dialect]:
        bind.exec_driver_sql(statement)
