"""The audit trail (issue 18 part 1): every advice call recorded, replayed byte-identical
from the release archive, ``[audit] store_inputs`` and ``[audit] required``.

The app runs in process over a real store (an SQLite file, or a database on the throwaway
PostgreSQL cluster); the commands run as subprocesses."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service._app import LiveRelease, LoadedRelease, Recorder, create_app, load_engine
from cds_service._audit import (
    AuditError,
    archive_release,
    audit_job,
    canonical,
    parse_instant,
    replay,
)
from cds_service._config import ConfigError, parse_config
from cds_service._feedback_store import QueuedFeedbackStore, open_store
from movement_cds import __version__
from tests.service.conftest import ROOT, STARTER_KB, check_response
from tests.service.test_feedback_queue import exclusive_lock
from tests.service.test_hooks_service import call
from tests.service.test_hot_reload import bump

PV = "/cds-services/movement-cds-patient-view"
OS = "/cds-services/movement-cds-order-sign"
MEDICATION_ONLY = {"resourceType": "Bundle", "type": "collection", "entry": [
    {"resource": {"resourceType": "MedicationRequest", "status": "draft"}}]}


def config(**audit: Any) -> Any:
    doc: dict[str, Any] = {"service": {"base_url": "https://cds.example.org",
                                       "knowledge_base": str(STARTER_KB)},
                           "auth": {"required": False}}
    if audit:
        doc["service"]["database"] = "sqlite:///unused.db"  # the store is passed in
        doc["audit"] = audit
    return parse_config(doc, insecure_no_auth=True)


@pytest.fixture(scope="module")
def engine() -> LoadedRelease:
    return load_engine(config(), run_scenarios=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return str(request.getfixturevalue("postgres_url"))


@contextlib.contextmanager
def app_client(engine: LoadedRelease, url: str, **audit: Any) -> Iterator[tuple[Any, Any]]:
    """The app over a queued store on ``url``; the store is drained when the block ends."""
    store = QueuedFeedbackStore(open_store(url), spill_path=None)
    app = create_app(config(**audit) if audit else config(store_inputs=True),
                     engine=engine, verifier=None, store=store)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                               base_url="https://cds.example.org")
    try:
        yield app, client
    finally:
        store.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_every_call_is_recorded_and_replays_byte_identical(engine: LoadedRelease,
                                                                 url: str) -> None:
    body, empty = call(), call(hook="order-sign")
    empty["context"]["draftOrders"] = MEDICATION_ONLY
    with app_client(engine, url) as (_app, client):
        async with client:
            r = check_response(await client.post(PV, json=body))
            r2 = check_response(await client.post(OS, json=empty))
    assert r.status_code == 200 and r2.status_code == 200 and r2.json() == {"cards": []}
    with open_store(url) as store:
        [rec] = store.audit_records(body["hookInstance"])
        assert rec["output"].encode() == r.content  # the bytes sent are the bytes kept
        assert rec["output_digest"] == sha(r.content)
        assert rec["input_digest"] == sha(rec["input"].encode())
        assert json.loads(rec["input"])["bundle"]["resourceType"] == "Bundle"
        assert (rec["service_id"], rec["release"], rec["kb_digest"], rec["software"]) == (
            "movement-cds-patient-view", engine.kb.ruleset_name, engine.digest, __version__)
        cards = json.loads(rec["cards"])
        assert [c["uuid"] for c in cards] == [c["uuid"] for c in r.json()["cards"]]
        assert all(c["rules"] for c in cards) and cards[0]["code"] == "suspected-cauda-equina"
        assert parse_instant(rec["as_of"]) <= parse_instant(rec["recorded_at"])
        assert store.release_archive(engine.digest) is not None  # archived at start
        for hook in (body["hookInstance"], empty["hookInstance"]):
            [done] = replay(store, hook, __version__)
            assert done.identical and done.diff == "", done.diff
        [rec2] = store.audit_records(empty["hookInstance"])
        assert json.loads(rec2["input"]) == {"draftOrders": MEDICATION_ONLY}


@pytest.mark.anyio
async def test_replay_pins_the_instant_and_shows_a_difference(engine: LoadedRelease,
                                                              tmp_path: Path) -> None:
    """A record whose as-of instant is a month later than the call's, with the call's
    answer: replay evaluates at the recorded instant, so the answers differ, and it says
    where (the CarePlan's dates and ids follow the instant)."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    body = call()
    with app_client(engine, url) as (_app, client):
        async with client:
            check_response(await client.post(PV, json=body))
    with open_store(url) as store:
        [rec] = store.audit_records(body["hookInstance"])
        store.write_jobs([audit_job(
            hook_instance="shifted", service_id=rec["service_id"], release=rec["release"],
            digest=rec["kb_digest"], software=rec["software"],
            as_of=parse_instant(rec["as_of"]) + timedelta(days=30),
            call_input=rec["input"].encode(), output=rec["output"].encode(),
            cards=json.loads(rec["cards"]), store_inputs=True)])
        [done] = replay(store, "shifted", __version__)
    assert not done.identical
    assert done.diff.startswith("--- recorded\n+++ replayed\n")
    assert any(line.startswith("-") and not line.startswith("---")
               for line in done.diff.splitlines())


@pytest.mark.anyio
async def test_store_inputs_off_keeps_digests_only(engine: LoadedRelease, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    body = call()
    with app_client(engine, url, store_inputs=False) as (_app, client):
        async with client:
            r = check_response(await client.post(PV, json=body))
    with open_store(url) as store:
        [rec] = store.audit_records(body["hookInstance"])
        assert rec["input"] is None and rec["output"] is None
        assert rec["output_digest"] == sha(r.content) and len(rec["input_digest"]) == 64
        with pytest.raises(AuditError, match="store_inputs was false"):
            replay(store, body["hookInstance"], __version__)
    kept = b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*"))
    patient = body["context"]["patientId"].encode()
    assert patient in json.dumps(body).encode() and patient not in kept  # no patient data


@pytest.mark.anyio
async def test_required_audit_fails_closed(engine: LoadedRelease, tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    url = f"sqlite:///{db}"
    body = call()
    with app_client(engine, url, required=True) as (app, client):
        app.state.recorder.within = 0.3
        async with client:
            with exclusive_lock(db):  # another process holds the write lock
                r = check_response(await client.post(PV, json=body))
            assert r.status_code == 500
            assert "audit record could not be written" in r.text and "cards" not in r.text
            ok = check_response(await client.post(PV, json=call()))
            assert ok.status_code == 200
    with open_store(url) as store:
        assert store.audit_records(body["hookInstance"]) == []  # no advice, no record


@pytest.mark.anyio
async def test_unrequired_audit_is_queued_while_locked_and_never_lost(
        engine: LoadedRelease, tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    url = f"sqlite:///{db}"
    body = call()
    with app_client(engine, url) as (_app, client):
        async with client:
            with exclusive_lock(db):
                r = check_response(await client.post(PV, json=body))
                assert r.status_code == 200  # advice does not wait for the database
    with open_store(url) as store:  # the queue drained when the lock went
        [rec] = store.audit_records(body["hookInstance"])
        assert rec["output"].encode() == r.content


def test_a_reload_archives_the_new_release_before_it_answers(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(STARTER_KB, kb)
    cfg = parse_config({"service": {"base_url": "https://cds.example.org",
                                    "knowledge_base": str(kb),
                                    "database": "sqlite:///unused.db"},
                        "auth": {"required": False}, "audit": {"required": True}},
                       insecure_no_auth=True)
    first = load_engine(cfg, run_scenarios=False)
    with open_store(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        recorder = Recorder(store, cfg)
        recorder.archive(first, kb)
        live = LiveRelease(first, kb, 0, before_swap=recorder.archive)
        bump(kb, "9.9.9")
        assert live.check(force=True) == "swapped"
        second = live.engine
        assert second.digest != first.digest
        for e in (first, second):
            archived = store.release_archive(e.digest)
            assert archived is not None and archived[0] == e.kb.ruleset_name
        # content-addressed: the archive of a release is the archive of its content
        assert archive_release(kb) == (second.digest, archived[1])


def test_a_release_that_cannot_be_archived_is_not_taken_into_service(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(STARTER_KB, kb)
    cfg = parse_config({"service": {"base_url": "https://cds.example.org",
                                    "knowledge_base": str(kb),
                                    "database": "sqlite:///unused.db"},
                        "auth": {"required": False}, "audit": {"required": True}},
                       insecure_no_auth=True)
    first = load_engine(cfg, run_scenarios=False)
    db = tmp_path / "audit.db"
    store = QueuedFeedbackStore(open_store(f"sqlite:///{db}"), spill_path=None)
    try:
        recorder = Recorder(store, cfg)
        recorder.within = 0.3
        live = LiveRelease(first, kb, 0, before_swap=recorder.archive)
        bump(kb, "9.9.9")
        with exclusive_lock(db):
            assert live.check(force=True) == "refused"
        assert live.engine is first
    finally:
        store.close()


# --- the canonical input -------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_canonical_text_reads_back_to_the_same_value_whatever_the_key_order(value: Any) -> None:
    text = canonical(value)
    assert json.loads(text) == value  # integers beyond 64 bits included
    if isinstance(value, dict):
        assert canonical(dict(reversed(list(value.items())))) == text


# --- configuration --------------------------------------------------------------------------

def test_audit_config() -> None:
    base = {"base_url": "https://cds.example.org"}
    with pytest.raises(ConfigError, match=r"\[audit\] required = true needs a \[service\] "
                       "database"):
        parse_config({"service": base, "audit": {"required": True},
                      "auth": {"required": False}}, insecure_no_auth=True)
    with pytest.raises(ConfigError, match=r"unknown key in \[audit\]: keep"):
        parse_config({"service": base, "audit": {"keep": True},
                      "auth": {"required": False}}, insecure_no_auth=True)
    with pytest.raises(ConfigError, match=r"\[audit\] store_inputs: must be true or false"):
        parse_config({"service": base, "audit": {"store_inputs": "no"},
                      "auth": {"required": False}}, insecure_no_auth=True)
    pg = "postgresql://cds@db.example.org/movement_cds"
    cfg = parse_config({"service": {**base, "database": pg}, "auth": {"issuers": [
        {"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks"}]}},
        base_dir=Path("/etc/movement-cds"))
    assert cfg.replay_database == pg  # the hosts share the used-token cache
    assert cfg.spill_file == Path("/etc/movement-cds/movement-cds-spill.jsonl")
    assert (cfg.audit_store_inputs, cfg.audit_required) == (True, False)


# --- the commands ---------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "movement_cds", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.anyio
async def test_audit_commands(engine: LoadedRelease, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    body = call()
    with app_client(engine, url) as (_app, client):
        async with client:
            r = check_response(await client.post(PV, json=body))
    hook = body["hookInstance"]
    with open_store(url) as store:  # the same call, recorded as if answered a day later
        [rec] = store.audit_records(hook)
        store.write_jobs([audit_job(
            hook_instance="shifted", service_id=rec["service_id"], release=rec["release"],
            digest=rec["kb_digest"], software=rec["software"],
            as_of=parse_instant(rec["as_of"]) + timedelta(days=1),
            call_input=rec["input"].encode(), output=rec["output"].encode(),
            cards=json.loads(rec["cards"]), store_inputs=True)])
    shown = run_cli("audit", "show", hook, "--database", url)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["hook_instance"] == hook and doc["output"] == r.json()
    assert doc["cards"][0]["rules"] == ["RF-01-CES"]
    done = run_cli("audit", "replay", hook, "--database", url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"byte-identical: {len(r.content)} bytes, sha256 {sha(r.content)}" in done.stdout
    differs = run_cli("audit", "replay", "shifted", "--database", url)
    assert differs.returncode == 1 and "DIFFERENT from the recorded answer" in differs.stdout
    assert "--- recorded" in differs.stdout and "Traceback" not in differs.stderr
    missing = run_cli("audit", "show", "no-such-call", "--database", url)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr == "movement-cds: no audit record for hookInstance no-such-call\n"
    upgraded = run_cli("db", "upgrade", "--database", url)
    assert upgraded.returncode == 0 and "upgraded: empty -> 0002" in upgraded.stdout


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
