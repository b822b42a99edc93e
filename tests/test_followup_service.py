"""Follow-ups through the CDS Hooks service (under uvicorn on loopback, bundled knowledge
base) and the command line (issue 6, part 5): the same inputs as a first visit, with the
previous CarePlan in the prefetch, fetched from fhirServer, or in the Bundle; and the
three-visit example series, evaluated from input to plans."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_adapters._terminology import EXT_EXERCISE_CHANGE, PLAN_CHANGE_SYSTEM
from tests.service.conftest import (
    FHIR_TOKEN,
    CheckedClient,
    FhirData,
    fhir_server,  # noqa: F401  (the tiny FHIR server fixture)
    free_port,
    start_service,
    stop_service,
)

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "examples" / "follow-up"
AS_OF = {1: "2026-11-02T11:00:00Z", 2: "2026-11-16T11:00:00Z", 3: "2026-11-30T11:00:00Z"}
PV = "/cds-services/movement-cds-patient-view"
RESPONSE_CODES = ("exercise-pain-during", "exercise-pain-next-morning",
                  "exercise-sessions-done", "exercise-sessions-prescribed",
                  "exercise-perceived-effect", "exercise-peripheralization")


def load(name: str) -> dict[str, Any]:
    return json.loads((SERIES / name).read_text())  # type: ignore[no-any-return]


def of_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def careplan(bundle: dict[str, Any]) -> dict[str, Any]:
    (cp,) = of_type(bundle, "CarePlan")
    return cp


def change_kinds(cp: dict[str, Any]) -> dict[str, str]:
    """exercise code -> change kind, from the exercise-change extensions."""
    out = {}
    for act in cp.get("activity", []):
        d = act.get("detail", {})
        for x in d.get("extension", []):
            if x["url"] == EXT_EXERCISE_CHANGE:
                (kind,) = [s["valueCoding"] for s in x["extension"] if s["url"] == "kind"]
                assert kind["system"] == PLAN_CHANGE_SYSTEM
                out[d["code"]["coding"][0]["code"]] = kind["code"]
    return out


def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
    b: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(items)}
    if items:
        b["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in items]
    return b


def request(visit: int, **prefetch: Any) -> dict[str, Any]:
    b = load(f"visit-{visit}.json")
    (patient,) = of_type(b, "Patient")
    cps = of_type(b, "CarePlan")
    body: dict[str, Any] = {
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/p1", "patientId": patient["id"]},
        "prefetch": {"patient": patient,
                     "observations": searchset(of_type(b, "Observation")),
                     "conditions": searchset(of_type(b, "Condition")),
                     "careplan": searchset(cps) if cps else None}}
    body["prefetch"].update(prefetch)
    return body


def plan_card(response: dict[str, Any]) -> dict[str, Any]:
    card = response["cards"][-1]
    assert card["source"]["topic"]["code"] == "exercise-plan"
    return card  # type: ignore[no-any-return]


def suggested_careplan(card: dict[str, Any]) -> dict[str, Any]:
    (suggestion,) = card["suggestions"]
    (cp,) = [a["resource"] for a in suggestion["actions"]
             if a["resource"]["resourceType"] == "CarePlan"]
    return cp  # type: ignore[no-any-return]


# --- the service, with the bundled knowledge base --------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory,
            fhir_server: tuple[str, FhirData]) -> Iterator[CheckedClient]:  # noqa: F811
    port = free_port()
    cfg = tmp_path_factory.mktemp("followup-svc") / "service.toml"
    origin = fhir_server[0].rsplit("/fhir", 1)[0]
    cfg.write_text("\n".join([
        "[service]", f'base_url = "http://127.0.0.1:{port}"', "max_body_bytes = 2000000",
        "fhir_timeout_seconds = 2.0", "fetch_budget_seconds = 5.0", "max_pages = 50", "",
        "[fhir]", f'allowed_servers = ["{origin}"]', "",
        "[auth]", "required = false", ""]))
    proc = start_service(["--config", str(cfg), "--insecure-no-auth"], port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            yield CheckedClient(c)
    finally:
        stop_service(proc)


def test_discovery_prefetches_the_previous_plan_and_the_responses(
        service: CheckedClient) -> None:
    for s in service.get("/cds-services").json()["services"]:
        query = s["prefetch"]["observations"]
        for code in RESPONSE_CODES:
            assert f"http://movement-cds.org/fhir/CodeSystem/screen|{code}" in query
        assert s["prefetch"]["careplan"].startswith("CarePlan?patient={{context.patientId}}")
        assert "instantiates-uri:below=http://movement-cds.org/fhir/KnowledgeBase/" in \
            s["prefetch"]["careplan"]


def test_follow_up_through_prefetch(service: CheckedClient) -> None:
    r = service.post(PV, json=request(2))
    assert r.status_code == 200
    card = plan_card(r.json())
    previous = careplan(load("visit-1-output.json"))
    assert card["summary"].startswith("Exercise plan revised:")
    assert len(card["summary"]) < 140
    assert f"**Changes since the last plan** (CarePlan/{previous['id']})" in card["detail"]
    assert "**Check-in**" in card["detail"]
    cp = suggested_careplan(card)
    assert cp["replaces"] == [{"reference": f"CarePlan/{previous['id']}"}]
    kinds = change_kinds(cp)
    # one line per exercise the revision touched, naming what changed
    for exercise, kind in kinds.items():
        title = next(c["display"] for a in cp["activity"]
                     for c in a.get("detail", {}).get("code", {}).get("coding", [])
                     if c["code"] == exercise)
        assert f"- **{title}**: {kind}" in card["detail"]
    assert card["suggestions"][0]["label"].startswith("Create the revised draft CarePlan")
    # the same follow-up as a first-visit request without the previous plan: no revision
    first = plan_card(service.post(PV, json=request(2, careplan=None)).json())
    assert "replaces" not in suggested_careplan(first)
    assert "Changes since the last plan" not in first["detail"]


def test_follow_up_fetched_from_fhir_server(
        service: CheckedClient, fhir_server: tuple[str, FhirData]) -> None:  # noqa: F811
    base, data = fhir_server
    b = load("visit-2.json")
    saved = data.resources, data.page_size
    data.resources = {}
    for e in b["entry"]:
        data.resources.setdefault(e["resource"]["resourceType"], []).append(e["resource"])
    data.page_size = 100
    try:
        body = request(2)
        del body["prefetch"]["observations"], body["prefetch"]["careplan"]
        body["fhirServer"] = base
        body["fhirAuthorization"] = {"access_token": FHIR_TOKEN, "token_type": "Bearer",
                                     "expires_in": 300, "scope": "patient/*.read",
                                     "subject": "movement-cds"}
        r = service.post(PV, json=body)
    finally:
        data.resources, data.page_size = saved
    assert r.status_code == 200
    fetched = suggested_careplan(plan_card(r.json()))
    prefetched = suggested_careplan(plan_card(service.post(PV, json=request(2)).json()))
    previous = careplan(load("visit-1-output.json"))
    assert fetched["replaces"] == [{"reference": f"CarePlan/{previous['id']}"}]
    assert change_kinds(fetched) == change_kinds(prefetched)


def test_foreign_careplan_in_the_prefetch_is_not_a_follow_up(service: CheckedClient) -> None:
    foreign = {"resourceType": "CarePlan", "id": "physio-own", "status": "active",
               "intent": "plan", "subject": {"reference": "Patient/pat-fu"}}
    r = service.post(PV, json=request(2, careplan=searchset([foreign])))
    assert r.status_code == 200
    card = plan_card(r.json())
    assert "replaces" not in suggested_careplan(card)
    assert card["summary"].startswith("Exercise plan proposed")


def test_another_patients_careplan_is_refused(service: CheckedClient) -> None:
    cp = dict(careplan(load("visit-1-output.json")), subject={"reference": "Patient/other"})
    r = service.post(PV, json=request(2, careplan=searchset([cp])))
    assert r.status_code == 422
    assert "another subject" in json.dumps(r.json())


# --- the command line and the three-visit series ---------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "movement_cds", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_evaluate_prints_the_changes_and_the_check_in(tmp_path: Path) -> None:
    out = tmp_path / "plan-2.json"
    r = run_cli("evaluate", str(SERIES / "visit-2.json"), "--as-of", AS_OF[2], "--out",
                str(out))
    assert r.returncode == 0, r.stderr
    previous = careplan(load("visit-1-output.json"))
    assert f"CHANGES SINCE THE LAST PLAN (CarePlan/{previous['id']})" in r.stderr
    assert "CHECK-IN\n" in r.stderr and "What changed, " in r.stderr
    # the command line gives exactly the committed output (the generator used the library)
    assert json.loads(out.read_text()) == load("visit-2-output.json")


def test_three_visits_revise_each_other() -> None:
    """visit 1 -> CarePlan 1; visit 2 = CarePlan 1 + responses -> CarePlan 2 replacing it;
    visit 3 = CarePlan 2 + responses -> CarePlan 3 replacing CarePlan 2."""
    plans = {v: careplan(load(f"visit-{v}-output.json")) for v in (1, 2, 3)}
    assert "replaces" not in plans[1]
    for v in (2, 3):
        given = of_type(load(f"visit-{v}.json"), "CarePlan")
        assert given == [plans[v - 1]]  # the previous output, exactly as it came out
        assert plans[v]["replaces"] == [{"reference": f"CarePlan/{plans[v - 1]['id']}"}]
        assert change_kinds(plans[v]), f"visit {v}: no exercise changes"
    # visit 2: the first went well, the second hurt, the third was done half the time
    assert sorted(change_kinds(plans[2]).values()) == ["held", "progressed", "regressed"]
    # visit 3: the first went well again; leg symptoms spread with the third: stopped
    kinds3 = change_kinds(plans[3])
    assert "progressed" in kinds3.values() and "stopped" in kinds3.values()
    for v in (2, 3):
        checks = [a["detail"] for a in plans[v]["activity"]
                  if a.get("detail", {}).get("kind") == "Appointment"]
        assert len(checks) == 1 and checks[0]["status"] == "not-started"
