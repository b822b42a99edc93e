"""Configuration, start-up checks, authentication wiring and feedback (in process), and a
bounded schemathesis run against the OpenAPI document."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from cds_service._app import create_app, load_engine
from cds_service._config import ConfigError, load_config, parse_config
from tests.service.conftest import (
    ROOT,
    STARTER_KB,
    check_response,
    free_port,
    resources,
    searchset,
    start_service,
    stop_service,
    write_config,
)

PV = "/cds-services/movement-cds-patient-view"


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "movement_cds", "serve", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("text,message", [
    ("[service]\n", "[service] base_url: is required"),
    ('[service]\nbase_url = "ftp://x"\n', "absolute http(s) URL"),
    ('[service]\nbase_url = "http://x"\nbogus = 1\n', "unknown key"),
    ('[service]\nbase_url = "http://x"\nengine_cache_size = -1\n', "engine_cache_size"),
    ('[service]\nbase_url = "http://x"\nengine_cache_size = "big"\n', "engine_cache_size"),
    ('[service]\nbase_url = "http://x"\nbalance_connections = "yes"\n', "balance_connections"),
    ('[service]\nbase_url = "http://x"\nmax_body_bytes = -1\n',
     "[service] max_body_bytes: must be greater than 0"),
    ('[service]\nbase_url = "http://x"\n[auth]\nrequired = false\n', "--insecure-no-auth"),
    ('[service]\nbase_url = "http://x"\n', "at least one [[auth.issuers]]"),
    ('[service]\nbase_url = "http://x"\n[[auth.issuers]]\niss = "a"\n', "exactly one of"),
    ("not toml [", "not valid TOML"),
    # key paths in every message (issue 13 part 8)
    ('[service]\nbase_url = "http://x"\n[fhir]\nallowed_servers = ["https://a.org", '
     '"https://b.org/fhir"]\n', "[fhir] allowed_servers[1]: not an origin"),
    ('[service]\nbase_url = "http://x"\n[fhir]\nallowed_servers = ["ftp://a.org"]\n',
     "[fhir] allowed_servers[0]: not an origin"),
    ('[service]\nbase_url = "http://x"\n[fhir]\nallowed_servers = "https://a.org"\n',
     "[fhir] allowed_servers: must be a list"),
    ('[service]\nbase_url = "http://x"\n[fhir]\nallowed = []\n', "unknown key in [fhir]: allowed"),
    ('[service]\nbase_url = "http://x"\nreload_check_seconds = 90000\n',
     "[service] reload_check_seconds: must be a number from 0 (off) to 86400"),
    ('[service]\nbase_url = "http://x"\n[[auth.issuers]]\niss = "a"\njwks_url = "https://a/j"\n'
     '[[auth.issuers]]\niss = "b"\njwks_url = "ftp://b/j"\n',
     "[[auth.issuers]] #2 jwks_url: must be an absolute http(s) URL"),
    ('[service]\nbase_url = "http://x"\n[[auth.issuers]]\niss = "a"\njwks_url = "https://a/j"\n'
     'tenants = [""]\n', "[[auth.issuers]] #1 tenants[0]: must not be empty"),
    ('[service]\nbase_url = "http://x"\n[auth]\nreplay_database = 3\n',
     "[auth] replay_database: must be a string"),
    ('[service]\nbase_url = "http://x"\ndrain_seconds = 0\n',
     "[service] drain_seconds: must be greater than 0"),
    ('[service]\nbase_url = "http://x"\ndrain_seconds = 7200\n',
     "[service] drain_seconds: must be a number from 0 (not included) to 3600"),
    ('[service]\nbase_url = "http://x"\ndrain_seconds = nan\n',
     "[service] drain_seconds: Input should be a finite number"),
])
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        load_config(p)


def test_good_config(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    p = tmp_path / "c.toml"
    p.write_text('[service]\nbase_url = "https://cds.example.org/"\ndatabase = "sqlite:///x"\n'
                 'cors_origins = ["https://ehr.example.org"]\n'
                 '[auth]\nrequired = true\n'
                 '[[auth.issuers]]\niss = "https://ehr.example.org"\njwks_file = "jwks.json"\n'
                 'tenants = ["a"]\n'
                 '[[auth.issuers]]\niss = "https://other"\njwks_url = "https://other/jwks"\n')
    c = load_config(p)
    assert c.base_url == "https://cds.example.org" and c.auth_required
    assert c.issuers[0].jwks_file == jwks and c.issuers[0].tenants == ("a",)
    assert c.issuers[1].jwks_url == "https://other/jwks"


def test_allowed_servers_are_exact_normalised_origins(tmp_path: Path) -> None:
    c = parse_config({"service": {"base_url": "http://x"}, "auth": {"required": False},
                      "fhir": {"allowed_servers": ["HTTPS://EHR.Example.org:443/",
                                                   "http://127.0.0.1:8080", "http://[::1]"]}},
                     insecure_no_auth=True)
    assert c.allowed_servers == {"https://ehr.example.org", "http://127.0.0.1:8080",
                                 "http://[::1]"}
    assert parse_config({"service": {"base_url": "http://x"}, "auth": {"required": False}},
                        insecure_no_auth=True).allowed_servers == frozenset()


def test_replay_database_default_and_explicit(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    issuer = '[[auth.issuers]]\niss = "https://ehr"\njwks_file = "jwks.json"\n'
    p = tmp_path / "c.toml"
    p.write_text('[service]\nbase_url = "https://cds"\n'
                 f'database = "sqlite:///{tmp_path}/data/fb.db"\n' + issuer)
    assert load_config(p).replay_database == tmp_path / "data" / "replay-cache.sqlite3"
    p.write_text('[service]\nbase_url = "https://cds"\n' + issuer)  # no feedback database
    assert load_config(p).replay_database == tmp_path / "replay-cache.sqlite3"
    p.write_text('[service]\nbase_url = "https://cds"\n[auth]\nreplay_database = "r/x.db"\n'
                 + issuer)
    assert load_config(p).replay_database == tmp_path / "r" / "x.db"


def test_documented_config_example_is_valid(tmp_path: Path) -> None:
    """The annotated example in docs/integrators/cds-hooks.md loads (its knowledge-base
    directory swapped for one that exists here), and its database URL names the absolute
    path its comment promises (``sqlite:////...``: four slashes)."""
    import re
    import tomllib

    doc = (ROOT / "docs" / "integrators" / "cds-hooks.md").read_text(encoding="utf-8")
    block = re.search(r"## Configuration \(TOML\)\s+```toml\n(.*?)```", doc, re.S)
    assert block, "no TOML example under '## Configuration (TOML)'"
    text = block.group(1)
    database = tomllib.loads(text)["service"]["database"]
    assert database.startswith("sqlite:////"), database  # an absolute path
    kb = tomllib.loads(text)["service"]["knowledge_base"]
    p = tmp_path / "service.toml"
    p.write_text(text.replace(kb, str(STARTER_KB)), encoding="utf-8")
    c = load_config(p)
    assert c.database == database and c.allowed_servers and c.issuers


def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[service]\nbase_url = "http://x"\n[auth]\nrequired = false\n')
    r = serve("--config", str(p), "--port", str(free_port()))
    assert r.returncode == 1
    assert "--insecure-no-auth" in r.stderr and "Traceback" not in r.stderr


def test_serve_with_workers_refuses_an_unusable_replay_cache_at_once(tmp_path: Path) -> None:
    """The parent checks [auth] before any worker starts: one line, exit 1."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    p = tmp_path / "c.toml"
    p.write_text(f'[service]\nbase_url = "http://127.0.0.1"\nknowledge_base = "{STARTER_KB}"\n'
                 f'[auth]\nreplay_database = "{tmp_path}/missing-dir/replay.db"\n'
                 '[[auth.issuers]]\niss = "https://ehr"\njwks_file = "jwks.json"\n')
    r = serve("--config", str(p), "--port", str(free_port()), "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert "cannot open the replay cache" in r.stderr and "Traceback" not in r.stderr
    assert "worker not started" not in r.stderr  # stopped before any worker


def test_insecure_no_auth_warns_loudly_and_service_lines_are_logged(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port)
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--log-level", "info"],
                             port, log=log)
        try:
            patient = resources("no-red-flags.json", "Patient")[0]
            body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": "Practitioner/p1", "patientId": patient["id"]},
                    "prefetch": {"patient": patient,
                                 "observations": searchset(
                                     resources("no-red-flags.json", "Observation")),
                                 "conditions": searchset([]), "careplan": None}}
            r = httpx.post(f"http://127.0.0.1:{port}{PV}", json=body, timeout=30)
            assert r.status_code == 200, r.text
        finally:
            stop_service(proc)
    text = log_path.read_text(errors="replace")
    assert "WARNING: AUTHENTICATION IS OFF (--insecure-no-auth)" in text
    # the service's own logger reaches the output (not only uvicorn's access lines)
    assert "movement_cds.service: movement-cds-patient-view" in text
    assert "heap settled:" in text  # the worker froze its loaded engine before serving
    assert patient["id"] not in text  # ids of calls, not of patients


def test_serve_log_level_warning_hides_access_lines(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port)
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--log-level",
                              "warning"], port, log=log)
        stop_service(proc)
    text = log_path.read_text(errors="replace")
    assert "GET /cds-services" not in text and "INFO:" not in text
    assert "AUTHENTICATION IS OFF" in text  # the banner is not a log line: always shown


def test_serve_refuses_failing_scenarios(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(STARTER_KB, kb)
    scen = next(iter(sorted((kb / "scenarios").glob("*.yaml"))))
    text = scen.read_text()
    assert "exercise-held: true" in text or "exercise-held: false" in text
    text = text.replace("exercise-held: true", "exercise-held: XX").replace(
        "exercise-held: false", "exercise-held: true").replace("exercise-held: XX",
                                                               "exercise-held: false")
    scen.write_text(text)
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", port)
    cfg.write_text(cfg.read_text().replace(str(STARTER_KB), str(kb)))
    r = serve("--config", str(cfg), "--insecure-no-auth", "--port", str(port))
    assert r.returncode == 1
    assert "scenario tests fail" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_broken_knowledge_base(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(STARTER_KB, kb)
    (kb / "manifest.yaml").write_text("id: [unclosed\n")
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", port)
    cfg.write_text(cfg.read_text().replace(str(STARTER_KB), str(kb)))
    r = serve("--config", str(cfg), "--insecure-no-auth", "--port", str(port))
    assert r.returncode == 1
    assert "does not load" in r.stderr and "Traceback" not in r.stderr


# --- in process: auth wiring and feedback --------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Any:
    return load_engine(_config(), run_scenarios=False)


def _config() -> Any:
    return parse_config({"service": {"base_url": "https://cds.example.org/base",
                                     "knowledge_base": str(STARTER_KB)},
                         "auth": {"required": False}}, insecure_no_auth=True)


class FakeVerifier:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []

    def verify(self, header: str | None, audience: str) -> dict[str, Any]:
        self.calls.append((header, audience))
        if header != "Bearer good":
            raise ValueError("refused")
        return {"iss": "x"}


class FakeStore:
    def __init__(self) -> None:
        self.added: list[tuple[str, list[dict[str, Any]], datetime]] = []
        self.cards: list[Any] = []

    def add(self, service_id: str, items: list[dict[str, Any]], received_at: datetime) -> int:
        self.added.append((service_id, items, received_at))
        return len(items)

    def record_cards(self, service_id: str, cards: list[dict[str, Any]],
                     issued_at: datetime) -> None:
        self.cards.append((service_id, cards))


def asgi(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="https://cds.example.org")


@pytest.mark.anyio
async def test_auth_401_has_empty_detail(engine: Any) -> None:
    v = FakeVerifier()
    app = create_app(_config(), engine=engine, verifier=v, store=FakeStore())
    async with asgi(app) as c:
        for method, path in [("GET", "/cds-services"), ("POST", PV),
                             ("POST", PV + "/feedback")]:
            r = check_response(await c.request(method, path, json={},
                                               headers={"Authorization": "Bearer bad"}))
            assert r.status_code == 401
            assert r.json() == {"resourceType": "OperationOutcome",
                                "issue": [{"severity": "error", "code": "login"}]}
        r = await c.get("/cds-services", headers={"Authorization": "Bearer good"})
        assert r.status_code == 200
    assert v.calls[0] == ("Bearer bad", "https://cds.example.org/base/cds-services")
    assert v.calls[1][1] == "https://cds.example.org/base" + PV


@pytest.mark.anyio
async def test_feedback_stored(engine: Any, tmp_path: Path) -> None:
    from cds_service._feedback_store import UNRECORDED_CARD, open_store
    from tests.service.test_hooks_service import call

    store = open_store(f"sqlite:///{tmp_path / 'feedback.db'}")
    app = create_app(_config(), engine=engine, verifier=None, store=store)
    async with asgi(app) as c:
        cards = check_response(await c.post(PV, json=call())).json()["cards"]
        plan = cards[-1]
        fb = {"feedback": [
            {"card": plan["uuid"], "outcome": "accepted", "outcomeTimestamp":
             "2026-11-02T09:00:00Z",
             "acceptedSuggestions": [{"id": plan["suggestions"][0]["uuid"]}]},
            {"card": cards[0]["uuid"], "outcome": "overridden",
             "outcomeTimestamp": "2026-11-02T09:01:00Z",
             "overrideReason": {"reason": plan["overrideReasons"][0],
                                "userComment": "seen yesterday"}}]}
        r = check_response(await c.post(PV + "/feedback", json=fb))
        assert r.status_code == 200 and r.json() == {"stored": 2}
        for bad in [{"feedback": []}, {"feedback": [{"card": "x", "outcome": "accepted",
                                                     "outcomeTimestamp": "2026-11-02"}]},
                    {"feedback": [{"card": "x", "outcome": "maybe",
                                   "outcomeTimestamp": "2026-11-02T09:00:00Z"}]}]:
            assert check_response(await c.post(PV + "/feedback", json=bad)).status_code == 400
    # a real SQLite file: feedback joins back to the rules behind each card
    summary = {r.rule_id: r for r in store.summary_by_rule()}
    assert UNRECORDED_CARD not in summary
    # the override was on the cauda equina card: it is counted against the rule behind it
    assert summary["RF-01-CES"].overridden == 1
    assert summary["RF-01-CES"].override_reasons[0].code == "clinical-judgement"
    store.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_schemathesis_bounded(engine: Any) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(_config(), engine=engine, verifier=None, store=FakeStore())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    from starlette.testclient import TestClient

    with TestClient(app, base_url="https://cds.example.org") as tc:
        for op in schema.get_all_operations():
            operation = op.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url="https://cds.example.org")
                r = tc.request(kwargs.pop("method"), kwargs.pop("url"),
                               **{k: v for k, v in kwargs.items()
                                  if k in ("headers", "params", "json", "content")})
                assert r.status_code < 500, (case.method, case.path, r.status_code)
                body = r.json()
                from tests.service.conftest import c1_violations

                assert c1_violations(body) == []
                if not 200 <= r.status_code < 300:
                    assert body["resourceType"] == "OperationOutcome"

            check()
