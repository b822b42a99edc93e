"""Alembic migrations of the service's database (``movement-cds db upgrade``)."""
