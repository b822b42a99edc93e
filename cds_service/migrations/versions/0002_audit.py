"""The audit trail, the release archive (both append-only) and, on PostgreSQL, the
used-token cache shared by every host (SQLite keeps that in a file of its own).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from cds_service._schema import run_revision

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(op.get_bind(), revision)  # the statements: cds_service._schema
