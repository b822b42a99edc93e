"""Card records and feedback (the schema before the audit trail).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from cds_service._schema import run_revision

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_revision(op.get_bind(), revision)  # the statements: cds_service._schema
