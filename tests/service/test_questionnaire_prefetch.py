"""The optional ``questionnaireResponses`` prefetch key: a red-flag screen kept as a FHIR
QuestionnaireResponse reaches the rules through the CDS Hooks service (prefetched or read
from fhirServer); a client that does not fill the key still gets an answer (with the
"red-flag questions unanswered" caution, never a silent "no red flags"); the mandatory keys
are unchanged; a failed fetch and another patient's questionnaire are refused."""

from __future__ import annotations

import asyncio
import copy
import functools
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds import KnowledgeBase, load_knowledge_base
from cds_service._prefetch import PrefetchError, build_input_bundle, prefetch_keys
from tests.service.conftest import (
    FHIR_TOKEN,
    STARTER_KB,
    CheckedClient,
    FhirData,
    resources,
    searchset,
)

PV = "/cds-services/movement-cds-patient-view"
NRF = "no-red-flags.json"  # every red-flag question answered no, by Observations
PID = "pat-nrf"
SADDLE = "rf-saddle-anaesthesia"  # a cauda equina item: one yes is an emergency
QR_KEY = "questionnaireResponses"
ALL_KEYS = ("patient", "observations", "conditions", "careplan", QR_KEY)


@functools.cache
def _kb() -> KnowledgeBase:
    return load_knowledge_base(STARTER_KB)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def screen(qr_id: str = "qr-screen-1", patient: str = PID) -> dict[str, Any]:
    """The red-flag screen as a questionnaire: saddle anaesthesia answered yes, now."""
    return {"resourceType": "QuestionnaireResponse", "id": qr_id,
            "questionnaire": "http://movement-cds.org/fhir/Questionnaire/red-flag-screen",
            "status": "completed", "subject": {"reference": f"Patient/{patient}"},
            "authored": _now(),
            "item": [{"linkId": SADDLE, "answer": [{"valueBoolean": True}]}]}


def observations() -> list[dict[str, Any]]:
    """The example's Observations, dated now, without the saddle anaesthesia question (the
    EHR keeps that answer in the questionnaire only)."""
    out = []
    for o in resources(NRF, "Observation"):
        if o["code"]["coding"][0]["code"] == SADDLE:
            continue
        o = copy.deepcopy(o)
        o["effectiveDateTime"] = _now()
        out.append(o)
    return out


def call(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/p1", "patientId": PID},
        "prefetch": {"patient": resources(NRF, "Patient")[0],
                     "observations": searchset(observations()),
                     "conditions": searchset(resources(NRF, "Condition")),
                     "careplan": None,
                     QR_KEY: searchset([screen()])}}
    body.update(extra)
    return body


def fhir_auth(token: str = FHIR_TOKEN) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "movement-cds"}


def topics(r: Any) -> list[str]:
    return [c["source"]["topic"]["code"] for c in r.json()["cards"]]


def assert_emergency(r: Any) -> None:
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    assert cards[0]["indicator"] == "critical"
    assert cards[0]["source"]["topic"]["code"] == "suspected-cauda-equina"
    assert cards[-1]["summary"].startswith("Exercise on hold")


def test_prefetched_questionnaire_yes_is_an_emergency(client: CheckedClient) -> None:
    assert_emergency(client.post(PV, json=call()))


def test_questionnaire_other_resource_types_are_dropped(client: CheckedClient) -> None:
    """An Observation in the questionnaire search (an ``_include``) is not read from it: its
    yes would otherwise be an emergency."""
    body = call()
    stray = copy.deepcopy(resources("cauda-equina.json", "Observation")[0])
    stray["subject"] = {"reference": f"Patient/{PID}"}
    stray["effectiveDateTime"] = _now()
    body["prefetch"][QR_KEY] = searchset([stray])
    r = client.post(PV, json=body)
    assert r.status_code == 200, r.text
    assert "suspected-cauda-equina" not in topics(r)


@pytest.mark.parametrize("situation", ["absent", "operation-outcome"])
def test_optional_key_unfilled_goes_on_mandatory_keys_do_not(client: CheckedClient,
                                                             situation: str) -> None:
    body = call()
    if situation == "absent":
        del body["prefetch"][QR_KEY]
    else:
        body["prefetch"][QR_KEY] = {"resourceType": "OperationOutcome",
                                    "issue": [{"severity": "error", "code": "timeout"}]}
    r = client.post(PV, json=body)
    assert r.status_code == 200, r.text
    codes = topics(r)
    assert "suspected-cauda-equina" not in codes  # the yes was not sent
    assert "core-red-flags-unanswered" in codes  # and saddle anaesthesia is not read as no
    del body["prefetch"]["observations"]  # the same call without a mandatory key
    r = client.post(PV, json=body)
    assert r.status_code == 412
    assert r.json()["issue"][0]["diagnostics"].startswith("observations is needed")


def test_questionnaires_fetched_from_fhir_server(client: CheckedClient,
                                                 fhir_server: tuple[str, FhirData]) -> None:
    base, data = fhir_server
    data.resources = {"QuestionnaireResponse": [screen("qr-on-server")]}
    body = call(fhirServer=base, fhirAuthorization=fhir_auth())
    del body["prefetch"][QR_KEY]
    data.requests.clear()
    r = client.post(PV, json=body)
    assert data.requests and all(
        p.startswith(f"/fhir/QuestionnaireResponse?patient={PID}&_sort=-authored&_count=50")
        for p in data.requests)
    assert_emergency(r)


def test_questionnaires_fetched_with_paging(client: CheckedClient,
                                            fhir_server: tuple[str, FhirData]) -> None:
    """The yes is on the second page: paging applies to the optional key too."""
    base, data = fhir_server
    no = screen("qr-no")
    no["item"][0]["answer"] = [{"valueBoolean": False}]
    no["authored"] = "2020-01-01T00:00:00Z"  # older than the yes: the yes is the latest
    fillers = [{**copy.deepcopy(no), "id": f"qr-no-{i}"} for i in range(4)]
    data.resources = {"QuestionnaireResponse": [*fillers, screen("qr-page-2")]}
    data.page_size = 4
    body = call(fhirServer=base, fhirAuthorization=fhir_auth())
    del body["prefetch"][QR_KEY]
    data.requests.clear()
    r = client.post(PV, json=body)
    assert any("_offset=4" in p for p in data.requests)
    assert_emergency(r)


def test_failed_questionnaire_fetch_is_412(client: CheckedClient,
                                           fhir_server: tuple[str, FhirData]) -> None:
    """A failing server is not "no data": the optional key's failed fetch is a 412."""
    base, data = fhir_server
    data.resources = {"QuestionnaireResponse": [screen("qr-on-server")]}
    body = call(fhirServer=base, fhirAuthorization=fhir_auth("wrong"))
    del body["prefetch"][QR_KEY]
    r = client.post(PV, json=body)
    assert r.status_code == 412
    assert r.json()["issue"][0]["diagnostics"] == (
        f"{QR_KEY}: needed, not (fully) prefetched, and could not be read from fhirServer")


def test_another_patients_questionnaire_is_422(client: CheckedClient) -> None:
    body = call()
    body["prefetch"][QR_KEY] = searchset([screen(), screen("qr-someone-else", "another")])
    r = client.post(PV, json=body)
    assert r.status_code == 422, r.text
    issues = r.json()["issue"]
    named = [i for i in issues if "qr-someone-else" in i.get("diagnostics", "")]
    assert named and named[0]["code"] == "business-rule"
    assert "another subject" in named[0]["diagnostics"]


# --- every combination of absent keys, without fhirServer (no network: the function itself) --


@settings(max_examples=40, deadline=None)
@given(absent=st.sets(st.sampled_from(ALL_KEYS)), client_error=st.booleans())
def test_only_mandatory_keys_are_412_without_server(absent: set[str],
                                                    client_error: bool) -> None:
    """With no fhirServer, a call is a 412 exactly when a mandatory key is unfilled (absent,
    or an OperationOutcome); an unfilled optional key is recorded as such and goes on."""
    prefetch = call()["prefetch"]
    for k in absent:
        if client_error and k != "patient":
            prefetch[k] = {"resourceType": "OperationOutcome",
                           "issue": [{"severity": "error", "code": "timeout"}]}
        else:
            del prefetch[k]
    keys = prefetch_keys(_kb())
    try:
        bundle, situations = asyncio.run(build_input_bundle(
            keys, context={"patientId": PID}, prefetch=prefetch, fhir_server=None,
            access_token=None, client=None, budget_seconds=1, max_pages=1))
    except PrefetchError as e:
        assert e.status == 412
        assert absent - {QR_KEY}
        return
    assert absent <= {QR_KEY}
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    if absent:
        assert situations[QR_KEY].endswith("-optional")
        assert "QuestionnaireResponse" not in types
    else:
        assert situations[QR_KEY] == "prefetched" and "QuestionnaireResponse" in types
