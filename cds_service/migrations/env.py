"""Alembic's environment for the service's database (run by ``cds_service._db.upgrade``)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

_LOCK_KEY = 0x6D6F76  # one migration at a time across hosts (PostgreSQL advisory lock)


def _run(connection: Any) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        context.run_migrations()


def _main() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "",
                           poolclass=NullPool)
    with engine.connect() as connection:
        _run(connection)


_main()
