"""Schema migrations of the service's database, SQLite or PostgreSQL (Alembic).

The migrations ship in the package (``cds_service/migrations``); ``movement-cds db upgrade
--database URL`` (or ``--config FILE``) brings a database to the schema this version
writes. PostgreSQL needs it before the first start (the store refuses a database at another
revision); an SQLite file also creates its tables itself when the service opens it (one
host, nothing to coordinate), and ``db upgrade`` on it is harmless: the migrations create
only what is missing, then record the revision.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Engine, exc

from cds_service._feedback_store import StoreError, StoreUnavailable

__all__ = ["SCHEMA_HEAD", "alembic_config", "check_schema", "current_revision", "upgrade"]

#: The Alembic revision this version reads and writes (tests check it is the head).
SCHEMA_HEAD: Final = "0002"


def alembic_config(database_url: str) -> Any:
    """An Alembic ``Config`` for the packaged migrations and this database."""
    from alembic.config import Config

    from cds_service._pg_store import sqlalchemy_url

    cfg = Config()
    cfg.set_main_option("script_location", "cds_service:migrations")
    # configparser interpolation: a literal % (an escaped password) must be doubled
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return cfg


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine, where: str) -> None:
    """``StoreError`` unless the database is at ``SCHEMA_HEAD`` (``StoreUnavailable`` if it
    cannot be reached)."""
    try:
        revision = current_revision(engine)
    except exc.OperationalError as e:
        orig = getattr(e, "orig", None) or e
        raise StoreUnavailable(f"database {where} unreachable "
                               f"({type(orig).__name__})") from None
    if revision != SCHEMA_HEAD:
        raise StoreError(f"database {where} has schema revision {revision or 'none'}, this "
                         f"version needs {SCHEMA_HEAD}: run 'movement-cds db upgrade'")


def upgrade(database_url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database to ``revision``; ``(revision before, revision after)``.
    ``StoreError`` (``StoreUnavailable``: cannot connect) naming the database, not its
    password."""
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from cds_service._pg_store import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(database_url), poolclass=NullPool)
    try:
        before = current_revision(engine)
        with engine.begin() as conn:
            cfg = alembic_config(database_url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return before, current_revision(engine)
    except exc.OperationalError as e:
        orig = getattr(e, "orig", None) or e
        raise StoreUnavailable(f"cannot migrate the database ({type(orig).__name__}: "
                               f"{str(orig).strip().splitlines()[0][:200]})") from None
    except exc.SQLAlchemyError as e:
        orig = getattr(e, "orig", None) or e
        raise StoreError(f"migration failed ({type(orig).__name__}: "
                         f"{str(orig).strip().splitlines()[0][:200]})") from None
    finally:
        engine.dispose()
