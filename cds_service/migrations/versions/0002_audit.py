"""The audit trail, the release archive (both append-only) and, on PostgreSQL, the
used-token cache shared by every host (SQLite keeps that in a file of its own).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

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
"""

_SQLITE = (
    "CREATE TABLE IF NOT EXISTS audit_record (\n"
    "    id            INTEGER PRIMARY KEY AUTOINCREMENT," + _AUDIT_COLUMNS + ")",
    "CREATE INDEX IF NOT EXISTS audit_record_hook_instance ON audit_record (hook_instance)",
    """CREATE TABLE IF NOT EXISTS kb_release (
    digest      TEXT PRIMARY KEY,
    release     TEXT NOT NULL,
    archived_at TEXT NOT NULL,
    archive     BLOB NOT NULL       -- tar.gz of the knowledge-base directory
)""",
    """CREATE TRIGGER IF NOT EXISTS audit_record_no_update BEFORE UPDATE ON audit_record
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_record_no_delete BEFORE DELETE ON audit_record
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS kb_release_no_update BEFORE UPDATE ON kb_release
BEGIN SELECT RAISE(ABORT, 'the release archive is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS kb_release_no_delete BEFORE DELETE ON kb_release
BEGIN SELECT RAISE(ABORT, 'the release archive is append-only'); END""",
    # REPLACE deletes the row it conflicts with without firing a DELETE trigger
    """CREATE TRIGGER IF NOT EXISTS audit_record_no_replace BEFORE INSERT ON audit_record
WHEN EXISTS (SELECT 1 FROM audit_record WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS kb_release_no_replace BEFORE INSERT ON kb_release
WHEN EXISTS (SELECT 1 FROM kb_release WHERE digest = NEW.digest)
BEGIN SELECT RAISE(IGNORE); END""",
)

_POSTGRESQL = (
    "CREATE TABLE audit_record (\n"
    "    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY," + _AUDIT_COLUMNS + ")",
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


def upgrade() -> None:
    bind = op.get_bind()
    for statement in _SQLITE if bind.dialect.name == "sqlite" else _POSTGRESQL:
        bind.exec_driver_sql(statement)  # as written: no bind parameters
