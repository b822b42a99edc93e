"""The same store tests against both backends (issue 18): SQLite on one host, PostgreSQL
shared by many. Real databases only: an SQLite file, a throwaway PostgreSQL cluster
(``tests/service/pg_cluster.py``), racers with connections of their own on the shared
replay cache."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cds_service._audit import archive_release, audit_job, release_job
from cds_service._db import SCHEMA_HEAD, upgrade
from cds_service._errors import ReplayStoreError
from cds_service._feedback_store import (
    QueuedFeedbackStore,
    StoreError,
    StoreUnavailable,
    open_store,
)
from cds_service._replay import open_replay_cache
from tests.service.conftest import STARTER_KB
from tests.service.pg_cluster import cluster, new_database
from tests.service.test_feedback_store import KB, RECEIVED, accepted, populate

NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))


def raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on the database directly (not through the store), committed."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def an_audit_job(hook: str = "h-1", output: bytes = b'{"cards":[]}') -> dict[str, Any]:
    from datetime import UTC, datetime

    return audit_job(hook_instance=hook, service_id="svc", release=KB, digest="d" * 64,
                     software="0.1.0", as_of=datetime(2026, 11, 2, 9, 0, 0, 123456, UTC),
                     call_input=b'{"bundle":{}}', output=output,
                     cards=[{"uuid": "u-1", "code": "exercise-plan", "rules": ["R-1"]}],
                     store_inputs=True)


def test_feedback_summary_is_the_same_on_both(url: str) -> None:
    store = open_store(url)
    try:
        populate(store)
        store.record_cards([("card-a", ["SOMETHING-ELSE"], KB)])  # the first record stays
        summary = {s.rule_id: (s.accepted, s.overridden) for s in store.summary_by_rule()}
    finally:
        store.close()
    assert summary == {"(card not recorded)": (1, 0), "PLAN-CORE": (2, 4),
                       "PREC-ACUTE-FLARE": (0, 3), "RF-CAUDA-EQUINA": (1, 1)}


def test_a_batch_is_all_or_nothing(url: str) -> None:
    store = open_store(url)
    try:
        bad = an_audit_job()
        bad["rows"][0][2] = None  # service_id is NOT NULL
        from cds_service._feedback_store import card_job

        with pytest.raises((sqlite3.Error, StoreError)):
            store.write_jobs([card_job([("card-x", ["R"], KB)]), bad])
        assert raw(url, "SELECT count(*) FROM cards") == [(0,)]
        store.write_jobs([an_audit_job("h-1"), an_audit_job("h-1", b'{"cards":[1]}')])
        records = store.audit_records("h-1")
    finally:
        store.close()
    assert [r["output"] for r in records] == ['{"cards":[]}', '{"cards":[1]}']
    assert records[0]["as_of"] == "2026-11-02T09:00:00.123456Z"
    assert records[0]["cards"] == '[{"code":"exercise-plan","rules":["R-1"],"uuid":"u-1"}]'


@pytest.mark.parametrize("statement", [
    "UPDATE audit_record SET output = '{}'", "DELETE FROM audit_record",
    "UPDATE kb_release SET release = 'other'", "DELETE FROM kb_release"])
def test_audit_records_and_releases_are_append_only(url: str, statement: str) -> None:
    digest, archive = archive_release(STARTER_KB)
    with open_store(url) as store:
        store.write_jobs([an_audit_job(), release_job(KB, digest, archive)])
    with pytest.raises((sqlite3.Error, psycopg.Error), match="append-only"):
        raw(url, statement)
    assert raw(url, "SELECT count(*) FROM audit_record") == [(1,)]
    with open_store(url) as store:
        assert store.release_archive(digest) == (KB, archive)
        assert store.audit_records("h-1")[0]["output"] == '{"cards":[]}'


def test_truncate_is_refused_on_postgresql(postgres_url: str) -> None:
    with open_store(postgres_url) as store:
        store.write_jobs([an_audit_job()])
    for table in ("audit_record", "kb_release"):
        with pytest.raises(psycopg.Error, match="append-only"):
            raw(postgres_url, f"TRUNCATE {table}")
    assert raw(postgres_url, "SELECT count(*) FROM audit_record") == [(1,)]


def test_a_release_is_archived_once_by_its_digest(url: str) -> None:
    digest, archive = archive_release(STARTER_KB)
    assert archive_release(STARTER_KB) == (digest, archive)  # same content, same bytes
    with open_store(url) as store:
        store.write_jobs([release_job(KB, digest, archive)])
        store.write_jobs([release_job(KB, digest, archive)])  # another worker: kept once
        assert store.release_archive(digest) == (KB, archive)
        assert store.release_archive("0" * 64) is None
    assert raw(url, "SELECT count(*) FROM kb_release") == [(1,)]


def test_the_queue_writes_audit_records_on_both(url: str, tmp_path: Path) -> None:
    store = QueuedFeedbackStore(open_store(url), spill_path=tmp_path / "spill.jsonl")
    store.record_jobs([an_audit_job(f"h-{i}") for i in range(50)])
    store.add("svc", [accepted("c-1")], RECEIVED)
    store.close()
    assert raw(url, "SELECT count(*) FROM audit_record") == [(50,)]
    assert raw(url, "SELECT count(*) FROM feedback") == [(1,)]


def test_of_many_connections_exactly_one_may_use_a_jti_in_postgresql(
        postgres_url: str) -> None:
    """Each racer has its own cache (its own connections), as each host has: the database
    alone decides."""
    caches = [open_replay_cache(postgres_url) for _ in range(8)]
    barrier = threading.Barrier(len(caches), timeout=30)
    results: list[bool] = []

    def use(cache: Any) -> None:
        barrier.wait()
        results.append(cache.remember("iss", "one-jti", NOW + 60, NOW))

    threads = [threading.Thread(target=use, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert sorted(results) == [False] * 7 + [True]
        cache = caches[0]
        assert cache.entries() == {("iss", "one-jti")}
        assert cache.remember("iss", "one-jti", NOW + 200, NOW + 61)  # expired: a new token
        assert not cache.remember("iss", "one-jti", NOW + 200, NOW + 62)
    finally:
        for c in caches:
            c.close()


# --- migrations --------------------------------------------------------------------------------

def _sqlite_schema(path: Path) -> set[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                          "AND name NOT LIKE 'alembic%' AND name != 'sqlite_sequence'")
        return {(n, " ".join(s.split())) for n, s in rows}
    finally:
        db.close()


def test_sqlite_migrations_give_the_schema_the_store_creates(tmp_path: Path) -> None:
    migrated, opened = tmp_path / "migrated.db", tmp_path / "opened.db"
    assert upgrade(f"sqlite:///{migrated}") == (None, SCHEMA_HEAD)
    open_store(f"sqlite:///{opened}").close()
    assert _sqlite_schema(migrated) == _sqlite_schema(opened)
    assert upgrade(f"sqlite:///{opened}") == (None, SCHEMA_HEAD)  # tables there: recorded
    assert upgrade(f"sqlite:///{opened}") == (SCHEMA_HEAD, SCHEMA_HEAD)


def test_schema_head_is_the_last_migration() -> None:
    from alembic.script import ScriptDirectory

    from cds_service._db import alembic_config

    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads() == [SCHEMA_HEAD]


def test_postgresql_needs_db_upgrade_first(postgres_server: str) -> None:
    url = new_database(postgres_server, migrate=False)
    with pytest.raises(StoreError, match=r"revision none.*run 'movement-cds db upgrade'"):
        open_store(url)
    assert upgrade(url, "0001") == (None, "0001")
    with pytest.raises(StoreError, match="revision 0001, this version needs 0002"):
        open_store(url)
    assert upgrade(url) == ("0001", SCHEMA_HEAD)
    assert upgrade(url) == (SCHEMA_HEAD, SCHEMA_HEAD)
    open_store(url).close()


# --- a database that goes away --------------------------------------------------------------

@pytest.fixture
def own_cluster() -> Iterator[Any]:
    with cluster() as c:
        yield c


def test_postgresql_down_ping_fails_and_the_queue_keeps_every_write(
        own_cluster: Any, tmp_path: Path) -> None:
    url = new_database(own_cluster.url)
    store = QueuedFeedbackStore(open_store(url), spill_path=tmp_path / "spill.jsonl")
    tokens = open_replay_cache(url)
    try:
        store.ping()
        assert tokens.remember("iss", "before", NOW + 60, NOW)
        own_cluster.stop()
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(ReplayStoreError):  # the verifier then refuses the token
            tokens.remember("iss", "during", NOW + 60, NOW)
        store.record_jobs([an_audit_job("while-down")])
        store.add("svc", [accepted("c-down")], RECEIVED)
        time.sleep(0.5)  # the writer is retrying
        own_cluster.start()
        deadline = time.monotonic() + 20
        while store.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tokens.remember("iss", "during", NOW + 60, NOW)  # back: never recorded
    finally:
        store.close()
        tokens.close()
    assert raw(url, "SELECT hook_instance FROM audit_record") == [("while-down",)]
    assert raw(url, "SELECT card_uuid FROM feedback") == [("c-down",)]
