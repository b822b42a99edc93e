"""Operating the service (issue 18 parts 3-5): /healthz, /readyz, /metrics and the JSON call
log, on the real service under uvicorn on loopback, with real client JWTs (ES384, the JWK
Set served on 127.0.0.1), a real FHIR server on loopback and a real SQLite feedback store.

Logs: a patient with distinctive details (id, name, birth date, observation values) goes
through every path (prefetch, fhirServer, 412, 422, 400, 401, feedback with a free-text
comment), then the whole captured output is searched for each detail and each token."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cds_service._app import SERVICES
from cds_service._metrics import AUTH_REASONS, INDICATORS, PRIORITIES, RELOAD_OUTCOMES
from tests.service.conftest import (
    FHIR_TOKEN,
    STARTER_KB,
    FhirData,
    example,
    free_port,
    searchset,
    start_service,
    stop_service,
)
from tests.service.jwt_keys import SigningKey, claims, jwks, serving, token

ISS = "https://ehr.example.org"
PV = "/cds-services/movement-cds-patient-view"

# the patient's details that must never reach a log
PATIENT_ID = "pt-sentinel-q7x2"
FAMILY, GIVEN, BIRTH = "Quigglesworth", "Xylophona", "1957-03-29"
HEIGHT, NOTE = "173.456", "obs-sentinel-k9v3"
COMMENT = f"{GIVEN} {FAMILY} declined"


def sentinel_resources() -> list[dict[str, Any]]:
    """The cauda equina example about a patient with distinctive details, and two extra
    Observations (a height, a free-text answer) that the service reads and ignores."""
    out = []
    for e in copy.deepcopy(example("cauda-equina.json"))["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Patient":
            r.update(id=PATIENT_ID, birthDate=BIRTH, name=[{"family": FAMILY, "given": [GIVEN]}])
        else:
            r["subject"] = {"reference": f"Patient/{PATIENT_ID}"}
        out.append(r)
    subject = {"reference": f"Patient/{PATIENT_ID}"}
    out.append({"resourceType": "Observation", "id": "obs-height", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "subject": subject, "effectiveDateTime": "2026-10-01T09:00:00Z",
                "valueQuantity": {"value": float(HEIGHT), "unit": "cm"}})
    out.append({"resourceType": "Observation", "id": "obs-note", "status": "final",
                "code": {"text": "patient's own words"}, "subject": subject,
                "effectiveDateTime": "2026-10-01T09:00:00Z", "valueString": NOTE})
    return out


def prefetch(resources: list[dict[str, Any]]) -> dict[str, Any]:
    of = lambda t: [r for r in resources if r["resourceType"] == t]  # noqa: E731
    return {"patient": of("Patient")[0], "observations": searchset(of("Observation")),
            "conditions": searchset(of("Condition")), "careplan": None}


def pv_call(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                            "context": {"userId": "Practitioner/p1", "patientId": PATIENT_ID}}
    body.update(extra)
    return body


@dataclass
class Service:
    url: str
    key: SigningKey
    log: Path
    database: Path
    tokens: list[str]

    def token(self, path: str, **overrides: Any) -> str:
        tok = token(self.key, claims(iss=ISS, aud=self.url + path, **overrides))
        self.tokens.append(tok)
        return tok

    def post(self, path: str, body: Any, tok: str | None = None) -> httpx.Response:
        tok = tok if tok is not None else self.token(path)
        return httpx.post(self.url + path, json=body, timeout=30,
                          headers={"Authorization": f"Bearer {tok}"} if tok else {})

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = httpx.get(self.url + "/metrics", timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return samples(r.text)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every ``movement_cds_*`` sample: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("movement_cds_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def write_service_config(path: Path, port: int, jwks_url: str, fhir_base: str,
                         database: Path) -> Path:
    origin = "/".join(fhir_base.split("/")[:3])
    path.write_text("\n".join([
        "[service]", f'base_url = "http://127.0.0.1:{port}"',
        f'knowledge_base = "{STARTER_KB}"', f'database = "sqlite:///{database}"', "",
        "[fhir]", f'allowed_servers = ["{origin}"]', "",
        "[auth]", "required = true", "",
        "[[auth.issuers]]", f'iss = "{ISS}"', f'jwks_url = "{jwks_url}"', "",
        "[logging]", "call_log = true", ""]))
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory,
            fhir_server: tuple[str, FhirData]) -> Iterator[Service]:
    key = SigningKey("ES384")
    tmp = tmp_path_factory.mktemp("operations")
    with serving(jwks(key)) as jwks_server:
        port = free_port()
        cfg = write_service_config(tmp / "service.toml", port, jwks_server.url,
                                   fhir_server[0], tmp / "feedback.db")
        log = tmp / "service.log"
        with log.open("wb") as out:  # standard output and error, as an operator keeps them
            proc = start_service(["--config", str(cfg), "--log-level", "debug"], port,
                                 log=out, any_answer=True)
        try:
            yield Service(f"http://127.0.0.1:{port}", key, log, tmp / "feedback.db", [])
        finally:
            stop_service(proc)


def test_health_and_readiness_need_no_token(service: Service) -> None:
    r = httpx.get(service.url + "/healthz", timeout=10)
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = httpx.get(service.url + "/readyz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "release": "starter-fixture@0.1.0", "checks": {
        "knowledgeBase": "ok", "scenarios": "ok", "database": "ok"}}
    # the CDS Hooks paths still need one
    assert httpx.get(service.url + "/cds-services", timeout=10).status_code == 401


def _every_path(service: Service, fhir_server: tuple[str, FhirData]) -> dict[str, int]:
    """One call down each path with the sentinel patient; the statuses."""
    base, data = fhir_server
    resources = sentinel_resources()
    data.resources = {}
    for r in resources:
        data.resources.setdefault(r["resourceType"], []).append(r)
    fhir_auth = {"access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
                 "scope": "patient/*.read", "subject": "movement-cds"}
    other = copy.deepcopy(resources)
    other[1]["subject"] = {"reference": "Patient/someone-else"}
    statuses = {
        "prefetch": service.post(PV, pv_call(prefetch=prefetch(resources))).status_code,
        "fhirServer": service.post(PV, pv_call(fhirServer=base,
                                               fhirAuthorization=fhir_auth)).status_code,
        "missing": service.post(PV, pv_call()).status_code,
        "other patient": service.post(PV, pv_call(prefetch=prefetch(other))).status_code,
        "bad hookInstance": service.post(PV, pv_call(hookInstance=f"{GIVEN} {BIRTH}",
                                                     prefetch=prefetch(resources))
                                         ).status_code,
        "expired token": service.post(PV, pv_call(prefetch=prefetch(resources)),
                                      service.token(PV, exp=1, iat=0)).status_code,
    }
    card = service.post(PV, pv_call(prefetch=prefetch(resources))).json()["cards"][0]["uuid"]
    statuses["feedback"] = service.post(PV + "/feedback", {"feedback": [
        {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-02T09:00:00Z",
         "overrideReason": {"userComment": COMMENT}}]}).status_code
    return statuses


def test_call_log_has_one_line_per_call_and_no_token_or_patient_data(
        service: Service, fhir_server: tuple[str, FhirData]) -> None:
    before = service.log.read_text(errors="replace").count('"event":"cds-call"')
    statuses = _every_path(service, fhir_server)
    assert statuses == {"prefetch": 200, "fhirServer": 200, "missing": 412,
                        "other patient": 422, "bad hookInstance": 400,
                        "expired token": 401, "feedback": 200}
    text = service.log.read_text(errors="replace")
    lines = [json.loads(x) for x in text.splitlines() if x.startswith('{"event":"cds-call"')]
    assert len(lines) - before == 7  # six calls above and the one before the feedback
    mine = lines[before:]
    assert [x["status"] for x in mine] == [200, 200, 412, 422, 400, 401, 200]
    for x in mine:
        assert set(x) == {"event", "time", "service", "hookInstance", "status", "code",
                          "durationMs", "release", "cards", "worker"}
        assert x["service"] == "movement-cds-patient-view" and x["durationMs"] >= 0
    assert mine[0]["cards"] >= 2 and mine[0]["release"] == "starter-fixture@0.1.0"
    assert mine[2]["code"] in ("incomplete", "not-found") and mine[2]["cards"] == 0
    assert mine[4]["hookInstance"] is None  # not a UUID: what was sent is not written
    assert mine[5]["hookInstance"] is None  # 401: the body is never read
    assert all(uuid.UUID(x["hookInstance"]) for i, x in enumerate(mine) if i not in (4, 5))

    secrets = [FHIR_TOKEN, PATIENT_ID, FAMILY, GIVEN, BIRTH, HEIGHT, NOTE, COMMENT,
               "Lindqvist", "1969-09-02"]  # and the example's own patient
    for tok in service.tokens:
        secrets += [tok, *(part for part in tok.split(".") if len(part) > 8)]
    found = [s for s in secrets if s in text]
    assert found == [], found
    assert '"value' not in text  # no FHIR value element, whatever its value


def test_metrics_count_calls_cards_referrals_holds_412_auth_and_feedback(
        service: Service, fhir_server: tuple[str, FhirData]) -> None:
    before = service.metrics()
    _every_path(service, fhir_server)
    # three more token failures, each for a reason of its own
    assert service.post(PV, {}, "").status_code == 401  # no Authorization header
    assert service.post(PV, {}, service.token("/elsewhere")).status_code == 401
    tok = service.token(PV)
    resources = sentinel_resources()
    assert service.post(PV, pv_call(prefetch=prefetch(resources)), tok).status_code == 200
    assert service.post(PV, pv_call(prefetch=prefetch(resources)), tok).status_code == 401
    # a path that names no service (here: the patient's name) is counted as "unknown"
    assert service.post(f"/cds-services/{FAMILY}", pv_call()).status_code == 404
    after = service.metrics()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    pv = "movement-cds-patient-view"
    assert delta("movement_cds_calls_total", service=pv, status="200") == 4
    for status in ("412", "422", "400"):
        assert delta("movement_cds_calls_total", service=pv, status=status) == 1
    assert delta("movement_cds_calls_total", service=pv, status="401") == 4
    assert delta("movement_cds_call_duration_seconds_count", service=pv) == 11
    assert delta("movement_cds_calls_total", service="unknown", status="404") == 1
    assert delta("movement_cds_precondition_failed_total", service=pv) == 1
    # cauda equina: a critical card, an emergency referral, all exercise held; and the plan
    assert delta("movement_cds_cards_total", service=pv, indicator="critical") == 4
    assert delta("movement_cds_cards_total", service=pv, indicator="info") == 4
    assert delta("movement_cds_red_flag_holds_total", service=pv) == 4
    assert sum(delta("movement_cds_referrals_total", service=pv, priority=p)
               for p in ("stat", "asap")) == 4
    assert delta("movement_cds_auth_failures_total", reason="expired") == 1
    assert delta("movement_cds_auth_failures_total", reason="missing") == 1
    assert delta("movement_cds_auth_failures_total", reason="audience") == 1
    assert delta("movement_cds_auth_failures_total", reason="replay") == 1
    assert delta("movement_cds_feedback_total", service=pv, outcome="overridden") == 1
    assert value(after, "movement_cds_knowledge_base_info",
                 release="starter-fixture@0.1.0",
                 digest=_digest_label(after)) == 1
    assert_closed_label_values(after)


def _digest_label(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    digests = [dict(labels)["digest"] for name, labels in m
               if name == "movement_cds_knowledge_base_info"]
    assert len(digests) == 1, digests
    return digests[0]


_LABELS = {
    "service": lambda v: v in {s.id for s in SERVICES} | {"unknown"},
    "status": lambda v: re.fullmatch(r"[1-5]\d\d", v) is not None,
    "indicator": lambda v: v in INDICATORS | {"other"},
    "priority": lambda v: v in PRIORITIES | {"other"},
    "reason": lambda v: v in AUTH_REASONS,
    "outcome": lambda v: v in RELOAD_OUTCOMES | {"accepted", "overridden", "other"},
    "release": lambda v: v == "starter-fixture@0.1.0",
    "digest": lambda v: re.fullmatch(r"[0-9a-f]{12}", v) is not None,
    "le": lambda v: v == "+Inf" or re.fullmatch(r"\d+(\.\d+)?", v) is not None,
}


def assert_closed_label_values(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]
                               ) -> None:
    """Every label of every sample has a known name and a value from its closed set."""
    bad = [(name, k, v) for name, labels in m for k, v in labels
           if k not in _LABELS or not _LABELS[k](v)]
    assert bad == [], bad
    assert m, "no movement_cds samples at all"
