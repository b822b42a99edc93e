"""Operating the service, in process (the real app over ASGI, real SQLite files, real token
checks): /readyz failures, who may read /metrics, the [metrics] and [logging] keys, the
reasons of refused tokens, and the metrics of a knowledge-base reload."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds_service._app import create_app
from cds_service._auth import AuthError, TokenVerifier
from cds_service._config import ConfigError, IssuerConfig, parse_config
from cds_service._feedback_store import QueuedFeedbackStore, SQLiteFeedbackStore
from cds_service._metrics import AUTH_REASONS, auth_reason, render
from tests.service.conftest import STARTER_KB
from tests.service.jwt_keys import SigningKey, claims, jwks, token
from tests.service.test_hot_reload import bump
from tests.service.test_operations import samples, value

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(kb: Path = STARTER_KB, **tables: dict[str, Any]) -> Any:
    service = {"base_url": "https://cds.example.org", "knowledge_base": str(kb),
               **tables.pop("service", {})}
    return parse_config({"service": service, "auth": {"required": False}, **tables},
                        insecure_no_auth=True)


def client(app: Any, address: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                             base_url="http://cds.example.org")


# --- /readyz --------------------------------------------------------------------------------


async def test_not_ready_when_the_scenarios_were_not_run() -> None:
    app = create_app(config(), run_scenarios=False)
    async with client(app) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["failed"] == ["scenarios"]
    assert r.json()["checks"]["database"] == "not configured"


async def test_not_ready_when_the_database_file_is_gone(tmp_path: Path) -> None:
    db = tmp_path / "feedback.db"
    app = create_app(config(service={"database": f"sqlite:///{db}"}))
    try:
        async with client(app) as c:
            assert (await c.get("/readyz")).status_code == 200
            db.unlink()  # the volume was unmounted, the file removed
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert r.json() == {"status": "not ready", "failed": ["database"], "checks": {
                "knowledgeBase": "ok", "scenarios": "ok",
                "database": "failed: FileNotFoundError"}}
            assert (await c.get("/healthz")).status_code == 200  # alive all the same
    finally:
        app.state.store.close()


def test_ping_raises_when_the_store_cannot_answer(tmp_path: Path) -> None:
    store = QueuedFeedbackStore(SQLiteFeedbackStore(tmp_path / "fb.db"))
    store.ping()
    store.close()  # the writer stops, the connection closes
    with pytest.raises(RuntimeError, match="writer"):
        store.ping()
    inner = SQLiteFeedbackStore(tmp_path / "fb2.db")
    inner.close()
    with pytest.raises(Exception, match="unavailable"):  # StoreUnavailable (a closed connection)
        inner.ping()


# --- /metrics: who may read it ----------------------------------------------------------------


async def test_metrics_only_to_allowed_addresses() -> None:
    app = create_app(config(), run_scenarios=False)
    async with client(app) as c:
        assert (await c.get("/metrics")).status_code == 200
    for address in ("10.1.2.3", "192.168.0.7", "::ffff:10.9.9.9", "2001:db8::1"):
        async with client(app, address) as c:
            r = await c.get("/metrics")
        assert r.status_code == 403, address
        assert r.json()["resourceType"] == "OperationOutcome"
    opened = create_app(config(metrics={"allow_from": ["10.0.0.0/8", "2001:db8::/32"]}),
                        run_scenarios=False)
    for address, status in (("10.1.2.3", 200), ("::ffff:10.9.9.9", 200),
                            ("2001:db8::1", 200), ("127.0.0.1", 403), ("11.0.0.1", 403)):
        async with client(opened, address) as c:
            assert (await c.get("/metrics")).status_code == status, address


async def test_metrics_off() -> None:
    app = create_app(config(metrics={"enabled": False}), run_scenarios=False)
    async with client(app) as c:
        r = await c.get("/metrics")
        assert r.status_code == 404
        assert r.json()["resourceType"] == "OperationOutcome"
        assert (await c.get("/healthz")).status_code == 200


@pytest.mark.parametrize(("tables", "message"), [
    ({"metrics": {"allow_from": ["10.0.0.1/8"]}},
     "[metrics] allow_from[0]: not an IP address or network (CIDR): '10.0.0.1/8'"),
    ({"metrics": {"allow_from": ["everyone"]}}, "[metrics] allow_from[0]: not an IP"),
    ({"metrics": {"enabled": "yes"}}, "[metrics] enabled: must be true or false"),
    ({"metrics": {"port": 9100}}, "unknown key in [metrics]: port"),
    ({"logging": {"call_log": 1}}, "[logging] call_log: must be true or false"),
    ({"logging": {"format": "json"}}, "unknown key in [logging]: format"),
])
def test_config_errors_name_the_key(tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config(**tables)
    assert message in str(e.value)


def test_config_defaults_and_values() -> None:
    c = config()
    assert (c.metrics_enabled, c.call_log) == (True, False)
    assert [str(n) for n in c.metrics_allow_from] == ["127.0.0.0/8", "::1/128"]
    c = config(metrics={"enabled": False, "allow_from": ["10.0.0.7"]},
               logging={"call_log": True})
    assert (c.metrics_enabled, c.call_log) == (False, True)
    assert [str(n) for n in c.metrics_allow_from] == ["10.0.0.7/32"]


# --- refused tokens: each reason from the real verifier's own message -------------------------


def test_every_refusal_of_the_real_verifier_has_its_reason(tmp_path: Path) -> None:
    key, stranger = SigningKey("ES384"), SigningKey("ES384")
    iss, aud = "https://ehr.example.org", "https://cds.example.org/cds-services/x"
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(key)))
    verifier = TokenVerifier([IssuerConfig(iss, jwks_file=tmp_path / "jwks.json",
                                           tenants=("hospital-a",))], True)
    good = dict(iss=iss, aud=aud, tenant="hospital-a")
    now = int(time.time())
    replayed = token(key, claims(**good))
    verifier.verify(f"Bearer {replayed}", aud)
    cases = {
        "missing": None,
        "malformed": "Bearer not-a-jwt",
        "header": f"Bearer {token(key, claims(**good), typ='JOSE')}",
        "issuer": f"Bearer {token(key, claims(**{**good, 'iss': 'https://other.org'}))}",
        "audience": f"Bearer {token(key, claims(**{**good, 'aud': aud + '/feedback'}))}",
        "signature": f"Bearer {token(stranger, claims(**good), kid=key.kid)}",
        "expired": f"Bearer {token(key, claims(**good, iat=now - 900, exp=now - 600))}",
        "tenant": f"Bearer {token(key, claims(**{**good, 'tenant': 'hospital-b'}))}",
        "jti": f"Bearer {token(key, claims(**good, jti=None))}",
        "replay": f"Bearer {replayed}",
    }
    try:
        for reason, header in cases.items():
            with pytest.raises(AuthError) as e:
                verifier.verify(header, aud)
            assert auth_reason(str(e.value)) == reason, (reason, str(e.value))
    finally:
        verifier.close()
    assert set(cases) | {"replay-cache", "other"} == AUTH_REASONS


# --- reloads ----------------------------------------------------------------------------------


def test_a_reload_is_counted_and_the_release_gauge_moves(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(STARTER_KB, kb)
    app = create_app(config(kb))
    live = app.state.live
    before = samples(render().decode())
    bump(kb, "0.1.9-metrics")
    assert live.check() == "swapped"
    manifest = kb / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("version: 0.1.9-metrics", "version: 0.3"))
    assert live.check() == "refused"
    after = samples(render().decode())

    def delta(outcome: str) -> float:
        return (value(after, "movement_cds_knowledge_base_reloads_total", outcome=outcome)
                - value(before, "movement_cds_knowledge_base_reloads_total", outcome=outcome))

    assert (delta("swapped"), delta("refused")) == (1, 1)
    gauges = {dict(labels)["release"]: v for (name, labels), v in after.items()
              if name == "movement_cds_knowledge_base_info"}
    assert gauges["starter-fixture@0.1.9-metrics"] == 1
    assert gauges["starter-fixture@0.1.0"] == 0
