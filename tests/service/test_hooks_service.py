"""The CDS Hooks service under uvicorn on loopback: discovery, cards, prefetch situations
(C7), the fhirServer fetch path, 412, and every error as an OperationOutcome (C21).
Every response passes the C1 checker (``CheckedClient``)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from tests.service.conftest import (
    FHIR_TOKEN,
    CheckedClient,
    FhirData,
    resources,
    searchset,
)

PV = "/cds-services/movement-cds-patient-view"
CES = "cauda-equina.json"


def prefetch_for(name: str) -> dict[str, Any]:
    return {"patient": resources(name, "Patient")[0],
            "observations": searchset(resources(name, "Observation")),
            "conditions": searchset(resources(name, "Condition")),
            "careplan": None,
            "questionnaireResponses": searchset(resources(name, "QuestionnaireResponse"))}


def call(name: str = CES, *, hook: str = "patient-view", **extra: Any) -> dict[str, Any]:
    pid = resources(name, "Patient")[0]["id"]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()),
                            "context": {"userId": "Practitioner/p1", "patientId": pid},
                            "prefetch": prefetch_for(name)}
    body.update(extra)
    return body


def stable(response: dict[str, Any]) -> list[dict[str, Any]]:
    """Cards without the suggested resources (their ids and dates follow the as-of instant,
    which is the time of the call) and without the link to the handout page (new per call)."""
    out = []
    for c in response["cards"]:
        c = dict(c)
        # the patient handout page has a new random id on every call
        c["links"] = [k for k in c.get("links", []) if "/handouts/" not in k["url"]]
        for s in c.pop("suggestions", []):
            c.setdefault("suggested", []).append(
                [s["uuid"], s["label"]] + [a["resource"]["resourceType"] for a in s["actions"]])
        out.append(c)
    return out


def fhir_auth(token: str = FHIR_TOKEN) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "movement-cds"}


def test_discovery(client: CheckedClient) -> None:
    r = client.get("/cds-services")
    assert r.status_code == 200
    services = r.json()["services"]
    assert {s["hook"] for s in services} == {
        "patient-view", "encounter-start", "encounter-discharge", "order-sign"}
    for s in services:
        assert s["id"] and s["description"] and s["title"]
        assert set(s["prefetch"]) == {"patient", "observations", "conditions", "careplan",
                                      "questionnaireResponses"}
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert s["prefetch"]["questionnaireResponses"] == (
            "QuestionnaireResponse?patient={{context.patientId}}&_sort=-authored&_count=50")
        for q in s["prefetch"].values():
            assert "{{context.patientId}}" in q


def test_red_flag_card_first_then_plan(client: CheckedClient, service_url: str) -> None:
    r = client.post(PV, json=call())
    assert r.status_code == 200
    cards = r.json()["cards"]
    assert cards[0]["indicator"] == "critical"
    assert cards[0]["source"]["topic"]["code"] == "suspected-cauda-equina"
    plan = cards[-1]
    assert plan["indicator"] == "info"
    assert plan["selectionBehavior"] == "at-most-one"
    [sugg] = plan["suggestions"]
    assert sugg["isRecommended"] is True
    types = [a["resource"]["resourceType"] for a in sugg["actions"]]
    assert types[0] == "CarePlan" and "ServiceRequest" in types
    assert all(a["type"] == "create" and a["description"] for a in sugg["actions"])
    careplan = sugg["actions"][0]["resource"]
    assert careplan["status"] == "draft" and careplan["intent"] == "proposal"
    for c in cards:
        assert len(c["summary"]) < 140
        assert c["source"]["label"] == "starter-fixture@0.1.0"
        uuid.UUID(c["uuid"])
        for o in c["overrideReasons"]:
            assert o["display"] and o["code"] and o["system"]
        for link in c.get("links", []):
            assert link["type"] == "absolute"  # evidence, or the handout page (the service's)
            assert link["url"].startswith(("https://", f"{service_url}/handouts/"))


def test_card_uuids_stable_for_same_input(client: CheckedClient) -> None:
    a = client.post(PV, json=call()).json()["cards"]
    b = client.post(PV, json=call()).json()["cards"]  # another hookInstance, later
    assert [c["uuid"] for c in a] == [c["uuid"] for c in b]
    other = client.post(PV, json=call("no-red-flags.json")).json()["cards"]
    assert {c["uuid"] for c in a}.isdisjoint(c["uuid"] for c in other)


@pytest.mark.parametrize("hook,sid", [("encounter-start", "movement-cds-encounter-start"),
                                      ("encounter-discharge",
                                       "movement-cds-encounter-discharge")])
def test_encounter_hooks_need_encounter(client: CheckedClient, hook: str, sid: str) -> None:
    body = call(hook=hook)
    assert client.post(f"/cds-services/{sid}", json=body).status_code == 400
    body["context"]["encounterId"] = "enc-1"
    assert client.post(f"/cds-services/{sid}", json=body).status_code == 200


def test_order_sign_only_for_physio_referral(client: CheckedClient) -> None:
    url = "/cds-services/movement-cds-order-sign"
    body = call(hook="order-sign")
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": {
                                          "resourceType": "MedicationRequest",
                                          "status": "draft"}}]}
    r = client.post(url, json=body)
    assert r.status_code == 200 and r.json() == {"cards": []}
    body["context"]["draftOrders"]["entry"].append({"resource": {
        "resourceType": "ServiceRequest", "status": "draft", "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "308447003",
                             "display": "Referral to physiotherapist"}]}}})
    r = client.post(url, json=body)
    assert r.status_code == 200 and r.json()["cards"][0]["indicator"] == "critical"
    del body["context"]["draftOrders"]
    assert client.post(url, json=body).status_code == 400


# --- C7: every prefetch situation ----------------------------------------------------------


def test_null_searches_mean_no_data(client: CheckedClient) -> None:
    body = call()
    body["prefetch"]["observations"] = None
    body["prefetch"]["conditions"] = None
    r = client.post(PV, json=body)
    assert r.status_code == 200
    codes = [c["source"]["topic"]["code"] for c in r.json()["cards"]]
    assert "suspected-cauda-equina" not in codes  # nothing recorded, nothing read as yes


def test_empty_searchset_is_searched_found_nothing(client: CheckedClient) -> None:
    body = call()
    body["prefetch"]["observations"] = searchset([])
    empty = client.post(PV, json=body)
    body["prefetch"]["observations"] = None
    null = client.post(PV, json=body)
    assert empty.status_code == null.status_code == 200
    assert stable(empty.json()) == stable(null.json())


def test_null_patient_is_412(client: CheckedClient) -> None:
    body = call()
    body["prefetch"]["patient"] = None
    r = client.post(PV, json=body)
    assert r.status_code == 412


@pytest.mark.parametrize("situation", ["absent", "operation-outcome", "paged"])
def test_unfetchable_data_is_412(client: CheckedClient, situation: str) -> None:
    body = call()
    if situation == "absent":
        del body["prefetch"]["observations"]
    elif situation == "operation-outcome":
        body["prefetch"]["observations"] = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "timeout"}]}
    else:
        body["prefetch"]["observations"]["link"] = [
            {"relation": "next", "url": "http://127.0.0.1:9/fhir/Observation?page=2"}]
    r = client.post(PV, json=body)
    assert r.status_code == 412
    assert "observations" in r.json()["issue"][0]["diagnostics"]


def test_fetch_path_equals_prefetch(client: CheckedClient,
                                    fhir_server: tuple[str, FhirData]) -> None:
    base, data = fhir_server
    data.load(CES)
    data.page_size = 4  # the observations come in several pages
    full = client.post(PV, json=call()).json()
    body = call(fhirServer=base, fhirAuthorization=fhir_auth())
    del body["prefetch"]
    data.requests.clear()
    r = client.post(PV, json=body)
    assert r.status_code == 200, r.json()
    assert stable(r.json()) == stable(full)
    assert any("_offset=" in p for p in data.requests)  # paging was followed


def test_operation_outcome_prefetch_is_fetched(client: CheckedClient,
                                               fhir_server: tuple[str, FhirData]) -> None:
    base, data = fhir_server
    data.load(CES)
    body = call(fhirServer=base, fhirAuthorization=fhir_auth())
    full = client.post(PV, json=call()).json()
    body["prefetch"]["observations"] = {"resourceType": "OperationOutcome",
                                        "issue": [{"severity": "error", "code": "timeout"}]}
    data.requests.clear()
    r = client.post(PV, json=body)
    assert r.status_code == 200 and stable(r.json()) == stable(full)
    assert all(p.startswith("/fhir/Observation") for p in data.requests)


def test_wrong_fhir_token_is_412(client: CheckedClient,
                                 fhir_server: tuple[str, FhirData]) -> None:
    base, data = fhir_server
    data.load(CES)
    body = call(fhirServer=base, fhirAuthorization=fhir_auth("wrong"))
    del body["prefetch"]["patient"]
    r = client.post(PV, json=body)
    assert r.status_code == 412
    # what is missing, not what the server answered (issue 13 finding 5: no network probe)
    assert r.json()["issue"][0]["diagnostics"] == (
        "patient: needed, not (fully) prefetched, and could not be read from fhirServer")
    assert "401" not in r.text and "wrong" not in r.text


def test_slow_fhir_server_is_412_within_budget(client: CheckedClient,
                                               fhir_server: tuple[str, FhirData]) -> None:
    base, data = fhir_server
    data.load(CES)
    data.delay = 2.5  # over the 2 s per-call timeout
    try:
        body = call(fhirServer=base, fhirAuthorization=fhir_auth())
        del body["prefetch"]["observations"]
        r = client.post(PV, json=body)
    finally:
        data.delay = 0.0
    assert r.status_code == 412


# --- input contract and C5 / C21 errors ----------------------------------------------------


def test_input_contract_applies(client: CheckedClient) -> None:
    body = call()
    obs = copy.deepcopy(body["prefetch"]["observations"]["entry"][0]["resource"])
    obs["id"] = "someone-else"
    obs["subject"] = {"reference": "Patient/another"}
    body["prefetch"]["observations"]["entry"].append({"resource": obs})
    r = client.post(PV, json=body)
    assert r.status_code == 422
    assert r.json()["issue"][0]["code"] == "business-rule"


def test_patient_must_match_context(client: CheckedClient) -> None:
    body = call()
    body["context"]["patientId"] = "not-this-one"
    assert client.post(PV, json=body).status_code == 400


def _bad_bodies() -> list[tuple[str, Any]]:
    good = call()
    out: list[tuple[str, Any]] = []
    for k in ("hook", "hookInstance", "context"):
        b = copy.deepcopy(good)
        del b[k]
        out.append((f"no-{k}", b))
    out.append(("wrong-hook", {**good, "hook": "order-select"}))
    out.append(("bad-uuid", {**good, "hookInstance": "nope"}))
    out.append(("context-array", {**good, "context": []}))
    out.append(("no-patient", {**good, "context": {"userId": "Practitioner/1"}}))
    out.append(("bad-patient-id", {**good, "context": {"userId": "u", "patientId": "a/b"}}))
    out.append(("auth-no-server", {**good, "fhirAuthorization": fhir_auth()}))
    out.append(("auth-bad-type", {**good, "fhirServer": "http://127.0.0.1:9/fhir",
                                  "fhirAuthorization": {**fhir_auth(), "token_type": "MAC"}}))
    out.append(("bad-server", {**good, "fhirServer": "not a url"}))
    out.append(("prefetch-array", {**good, "prefetch": []}))
    out.append(("patient-not-patient", {**good, "prefetch": {
        **good["prefetch"], "patient": {"resourceType": "Observation"}}}))
    out.append(("array-body", [good]))
    out.append(("string-body", "hello"))
    return out


@pytest.mark.parametrize("name,body", _bad_bodies(), ids=[n for n, _ in _bad_bodies()])
def test_bad_requests_are_400(client: CheckedClient, name: str, body: Any) -> None:
    assert client.post(PV, json=body).status_code == 400


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff\xfe", b"[" * 100000, b'{"hook": NaN}'])
def test_malformed_json_is_400(client: CheckedClient, raw: bytes) -> None:
    r = client.post(PV, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_oversized_body_is_413(client: CheckedClient) -> None:
    body = call()
    body["padding"] = "x" * 300_000
    assert client.post(PV, json=body).status_code == 413

    def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b" " * 10_000

    r = client.post(PV, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_service_and_method(client: CheckedClient) -> None:
    assert client.post("/cds-services/nope", json=call()).status_code == 404
    assert client.get(PV).status_code == 405
    assert client.get("/nothing-here").status_code == 404
    assert client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404


def test_feedback_without_store_is_503(client: CheckedClient) -> None:
    fb = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-02T09:00:00Z"}]}
    assert client.post(PV + "/feedback", json=fb).status_code == 503
    assert client.post(PV + "/feedback", json={"feedback": "x"}).status_code == 400


def test_feedback_items_are_checked_by_the_stores_one_validator(client: CheckedClient) -> None:
    """The app and the store share ``validate_feedback``: an item the store would refuse (a
    date without a time) is a 400 naming it, even with no store configured (the app's own
    copy of the rules used to let it through to the 503)."""
    fb = {"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-02",
                        "acceptedSuggestions": [{"id": "s"}]}]}
    r = client.post(PV + "/feedback", json=fb)
    assert r.status_code == 400
    assert "feedback[0].outcomeTimestamp" in r.json()["issue"][0]["diagnostics"]
