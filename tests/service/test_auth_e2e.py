"""CDS Hooks authentication end to end: the real service (``python -m movement_cds serve``
under uvicorn, auth required) on a loopback port, one issuer whose JWK Set is served over
real HTTP on 127.0.0.1, and real ES384 / RS384 tokens sent over HTTP. Valid tokens get 200;
every bad one gets a bare 401 (an OperationOutcome without detail); the service log never
contains a token that was sent."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import STARTER_KB, free_port, start_service, stop_service
from tests.service.jwt_keys import (
    JWKSServer,
    SigningKey,
    claims,
    hmac_token,
    jwks,
    serving,
    token,
    unsigned_token,
)
from tests.service.test_hooks_service import call

ISS = "https://ehr.example.org"
PV = "/cds-services/movement-cds-patient-view"
OTHER = "/cds-services/movement-cds-encounter-start"
BARE_401 = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login"}]}
START_TIMEOUT = 60.0


@dataclass
class Service:
    url: str
    log_path: Path
    es: SigningKey
    rs: SigningKey
    client: httpx.Client
    sent: list[str] = field(default_factory=list)  # every token put on the wire

    def claims_for(self, path: str, **overrides: Any) -> dict[str, Any]:
        return claims(**{"iss": ISS, "aud": self.url + path, **overrides})

    def send(self, method: str, path: str, tok: str | None, **kw: Any) -> httpx.Response:
        headers = {}
        if tok is not None:
            self.sent.append(tok)
            headers["Authorization"] = f"Bearer {tok}"
        return self.client.request(method, path, headers=headers, **kw)


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[tuple[JWKSServer, SigningKey, SigningKey]]:
    es, rs = SigningKey("ES384"), SigningKey("RS384")
    with serving(jwks(es, rs)) as server:
        yield server, es, rs


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory,
            jwks_server: tuple[JWKSServer, SigningKey, SigningKey]) -> Iterator[Service]:
    server, es, rs = jwks_server
    tmp = tmp_path_factory.mktemp("auth-e2e")
    port = free_port()
    cfg = tmp / "service.toml"
    cfg.write_text("\n".join([
        "[service]", f'base_url = "http://127.0.0.1:{port}"',
        f'knowledge_base = "{STARTER_KB}"', f'database = "sqlite:///{tmp / "fb.db"}"',
        "", "[auth]", "required = true", "",
        "[[auth.issuers]]", f'iss = "{ISS}"', f'jwks_url = "{server.url}"', ""]))
    log_path = tmp / "service.log"
    with open(log_path, "wb") as log:
        proc = start_service(["--config", str(cfg)], port, START_TIMEOUT, log=log,
                             any_answer=True)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20,
                              trust_env=False) as client:
                svc = Service(f"http://127.0.0.1:{port}", log_path, es, rs, client)
                yield svc
        finally:
            stop_service(proc)
    text = log_path.read_text(errors="replace")
    assert svc.sent, "no token was sent"
    assert '"POST /cds-services/movement-cds-patient-view HTTP/1.1" 401' in text  # captured
    assert "AUTHENTICATION IS OFF" not in text  # auth on: no insecure banner
    for tok in svc.sent:
        assert tok not in text, "the service log contains a token"
        for part in tok.split("."):
            if len(part) > 16:
                assert part not in text, "the service log contains part of a token"


def assert_bare_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json() == BARE_401
    assert r.headers["www-authenticate"] == "Bearer"


# -- accepted ------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_valid_token_gets_discovery_and_cards(service: Service, alg: str) -> None:
    key = service.es if alg == "ES384" else service.rs
    r = service.send("GET", "/cds-services", token(key, service.claims_for("/cds-services")))
    assert r.status_code == 200, r.text
    assert {s["id"] for s in r.json()["services"]} >= {PV.rsplit("/", 1)[1]}
    r = service.send("POST", PV, token(key, service.claims_for(PV)), json=call())
    assert r.status_code == 200, r.text
    assert r.json()["cards"]


def test_feedback_requires_auth(service: Service) -> None:
    cards = service.send("POST", PV, token(service.es, service.claims_for(PV)),
                         json=call()).json()["cards"]
    fb_path = PV + "/feedback"
    fb = {"feedback": [{"card": cards[0]["uuid"], "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-02T09:00:00Z"}]}
    assert_bare_401(service.send("POST", fb_path, None, json=fb))
    # a token for the service itself is not a token for its feedback endpoint
    assert_bare_401(service.send("POST", fb_path, token(service.es, service.claims_for(PV)),
                                 json=fb))
    r = service.send("POST", fb_path, token(service.rs, service.claims_for(fb_path)), json=fb)
    assert r.status_code == 200, r.text


def test_replayed_jti_is_refused(service: Service) -> None:
    tok = token(service.rs, service.claims_for(PV))
    assert service.send("POST", PV, tok, json=call()).status_code == 200
    assert_bare_401(service.send("POST", PV, tok, json=call()))


# -- refused -------------------------------------------------------------------------------

def _bad_tokens(svc: Service, path: str = PV) -> dict[str, str]:
    """Tokens that are bad in exactly one respect, for a call to ``path``."""
    now = int(time.time())
    stranger = SigningKey("ES384")  # a kid the issuer's JWK Set does not have
    other = OTHER if path != OTHER else PV
    return {
        "expired": token(svc.es, svc.claims_for(path, iat=now - 600, exp=now - 300)),
        "wrong-audience": token(svc.es, svc.claims_for(other)),
        "audience-other-host": token(svc.es, claims(iss=ISS, aud="https://cds.example.org"
                                                    + path)),
        "unknown-issuer": token(svc.es, svc.claims_for(path, iss="https://evil.example.org")),
        "alg-none": unsigned_token(svc.claims_for(path), svc.es.kid),
        "alg-none-with-signature": unsigned_token(svc.claims_for(path), svc.es.kid, "c2ln"),
        "hs256-random-secret": hmac_token(os.urandom(32), svc.claims_for(path), svc.rs.kid),
        "hs256-rsa-public-pem": hmac_token(svc.rs.public_pem(), svc.claims_for(path),
                                           svc.rs.kid),
        "hs256-ec-public-pem": hmac_token(svc.es.public_pem(), svc.claims_for(path),
                                          svc.es.kid),
        "unknown-kid": token(stranger, svc.claims_for(path)),
        "right-kid-wrong-key": token(SigningKey("ES384", kid=svc.es.kid),
                                     svc.claims_for(path)),
        "tampered-payload": _tampered(svc, path),
        "malformed-two-parts": "abc.def",
        "malformed-garbage": "not-a-jwt-at-all",
        "malformed-not-base64": "e30.e30!.e30",
        "malformed-four-parts": "e30.e30.e30.e30",
    }


def _tampered(svc: Service, path: str) -> str:
    h, _, s = token(svc.es, svc.claims_for(path)).split(".")
    other = token(svc.es, svc.claims_for(path, sub="someone-else")).split(".")[1]
    return f"{h}.{other}.{s}"


BAD = ["expired", "wrong-audience", "audience-other-host", "unknown-issuer", "alg-none",
       "alg-none-with-signature", "hs256-random-secret", "hs256-rsa-public-pem",
       "hs256-ec-public-pem", "unknown-kid", "right-kid-wrong-key", "tampered-payload",
       "malformed-two-parts", "malformed-garbage", "malformed-not-base64",
       "malformed-four-parts"]


@pytest.mark.parametrize("case", BAD)
def test_bad_token_is_bare_401(service: Service, case: str) -> None:
    tok = _bad_tokens(service)[case]
    assert_bare_401(service.send("POST", PV, tok, json=call()))


@pytest.mark.parametrize("case", BAD)
def test_bad_token_on_discovery_is_bare_401(service: Service, case: str) -> None:
    tok = _bad_tokens(service, "/cds-services")[case]
    assert_bare_401(service.send("GET", "/cds-services", tok))


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic dXNlcjpwYXNz",
                                    "Token abc.def.ghi"])
def test_missing_or_non_bearer_header_is_bare_401(service: Service,
                                                  header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert_bare_401(service.client.post(PV, json=call(), headers=headers))
    assert_bare_401(service.client.get("/cds-services", headers=headers))
