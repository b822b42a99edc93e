"""Card records and feedback (the schema before the audit trail).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQLITE = (
    """CREATE TABLE IF NOT EXISTS cards (
    card_uuid      TEXT PRIMARY KEY,
    rule_ids       TEXT NOT NULL,      -- JSON array of knowledge-base rule ids
    knowledge_base TEXT NOT NULL,      -- rule set name and version
    created_at     TEXT NOT NULL       -- UTC instant
)""",
    """CREATE TABLE IF NOT EXISTS feedback (
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
)""",
    "CREATE INDEX IF NOT EXISTS feedback_card ON feedback (card_uuid)",
)

_POSTGRESQL = (
    """CREATE TABLE cards (
    card_uuid      TEXT PRIMARY KEY,
    rule_ids       TEXT NOT NULL,
    knowledge_base TEXT NOT NULL,
    created_at     TEXT NOT NULL
)""",
    """CREATE TABLE feedback (
    id                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service_id              TEXT NOT NULL,
    card_uuid               TEXT NOT NULL,
    outcome                 TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
    override_reason_system  TEXT,
    override_reason_code    TEXT,
    override_reason_display TEXT,
    override_user_comment   TEXT,
    accepted_suggestions    TEXT,
    outcome_timestamp       TEXT NOT NULL,
    received_at             TEXT NOT NULL
)""",
    "CREATE INDEX feedback_card ON feedback (card_uuid)",
)


def upgrade() -> None:
    bind = op.get_bind()
    for statement in _SQLITE if bind.dialect.name == "sqlite" else _POSTGRESQL:
        bind.exec_driver_sql(statement)  # as written: no bind parameters
