"""CDS Hooks prefetch and fhirServer fetching: one input Bundle for ``DecisionSupport``.

Prefetch keys (templates: ``prefetch_templates``; CDS Hooks C6):

``patient``        ``Patient/{{context.patientId}}`` (an instance read: a Patient resource)
``observations``   ``Observation?patient={{context.patientId}}&code=<every coded fact and
                   the follow-up response codes>`` with ``_sort=-date`` and ``_count``
``conditions``     ``Condition?patient={{context.patientId}}&code=<every condition fact>``
``careplan``       ``CarePlan?patient={{context.patientId}}&instantiates-uri:below=<the
                   project's knowledge-base URI>&_sort=-_lastUpdated&_count=1``: the
                   previous plan of a follow-up (with the response Observations it makes
                   the evaluation revise that plan; see docs/integrators/follow-up.md)

Each prefetch situation (C7) is handled distinctly:

* key **absent** (the client chose not to fill it): fetched from ``fhirServer`` with the
  bearer token of ``fhirAuthorization``; without a ``fhirServer``: 412.
* value **null** (the client has no data): no resources for a search key; for ``patient``
  a 412 (the patient cannot be had, and the input contract needs exactly one Patient).
* an **OperationOutcome** (the client hit an error): treated like an absent key (fetched
  from ``fhirServer``, else 412), and the 412 says the client reported an error.
* a **searchset with zero entries**: searched, found nothing; no resources, no fetch.
* a searchset with a ``next`` link: the rest is fetched from ``fhirServer`` (same origin
  only: the token is never sent elsewhere); without a ``fhirServer``: 412, since the
  missing pages may hold the latest answer to a red-flag question.

Entries whose ``search.mode`` is ``outcome`` and resources of another type (``_include``)
are dropped; duplicates (same type and id, e.g. overlapping pages) are kept once. CarePlans
not made by this project (``instantiatesUri`` outside ``KNOWLEDGE_BASE_BASE``) are dropped.

fhirServer calls: ``httpx`` with a per-call timeout (``fhir_timeout_seconds``), all calls of
one request within ``fetch_budget_seconds``, at most ``max_pages`` pages per key. Any
failure (network, timeout, non-200, not JSON, wrong resource type, budget or page limit)
is a ``PrefetchError`` with status 412. A malformed prefetch value is a 400.
Diagnostics name keys and HTTP statuses, never patient data or tokens.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import httpx

from cds import KnowledgeBase
from fhir_adapters._inbound import FOLLOW_UP_CODES, InputMap
from fhir_adapters._outbound import KNOWLEDGE_BASE_BASE

__all__ = [
    "FHIR_ID",
    "PrefetchError",
    "PrefetchKey",
    "build_input_bundle",
    "prefetch_keys",
    "prefetch_templates",
]

FHIR_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PLACEHOLDER: Final = re.compile(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}")
_MAX_RESPONSE_BYTES: Final = 20 * 1024 * 1024


class PrefetchError(Exception):
    """Needed data cannot be had (412) or a prefetch value is malformed (400)."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics


@dataclass(frozen=True)
class PrefetchKey:
    key: str
    resource_type: str
    template: str
    single: bool  # an instance read (one resource), not a search


def prefetch_keys(kb: KnowledgeBase) -> tuple[PrefetchKey, ...]:
    """The prefetch keys, built from the knowledge base's coded facts."""
    imap = InputMap.from_knowledge_base(kb)
    # every coded fact, and the follow-up response codes (read against the previous plan)
    obs = ",".join(sorted({f"{s}|{c}" for s, c in (*imap.observations, *FOLLOW_UP_CODES)}))
    cond = ",".join(sorted(f"{s}|{c}" for s, c in imap.conditions))
    pid = "{{context.patientId}}"
    keys = [
        PrefetchKey("patient", "Patient", f"Patient/{pid}", True),
        PrefetchKey("observations", "Observation",
                    f"Observation?patient={pid}&code={obs}&_sort=-date&_count=200", False),
    ]
    if cond:
        keys.append(PrefetchKey("conditions", "Condition",
                                f"Condition?patient={pid}&code={cond}&_count=100", False))
    keys.append(PrefetchKey(
        "careplan", "CarePlan",
        f"CarePlan?patient={pid}&instantiates-uri:below={KNOWLEDGE_BASE_BASE}/{kb.manifest.id}"
        "&_sort=-_lastUpdated&_count=1", False))
    return tuple(keys)


def prefetch_templates(kb: KnowledgeBase) -> dict[str, str]:
    return {k.key: k.template for k in prefetch_keys(kb)}


def _fill(template: str, context: Mapping[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        v = context.get(m.group(1))
        if not isinstance(v, str) or not FHIR_ID.match(v):
            raise PrefetchError(400, "required", f"context.{m.group(1)} is needed as a FHIR id")
        return v

    return _PLACEHOLDER.sub(sub, template)


def _resource_type(v: Any) -> str | None:
    t: object = v.get("resourceType") if isinstance(v, dict) else None
    return t if isinstance(t, str) else None


@dataclass
class _Fetcher:
    client: httpx.AsyncClient
    server: str
    token: str | None
    max_pages: int

    def _same_origin(self, url: str) -> bool:
        a, b = urlsplit(self.server), urlsplit(url)
        base_path = a.path.rstrip("/") + "/"
        return (a.scheme, a.netloc) == (b.scheme, b.netloc) and (
            b.path.rstrip("/") + "/").startswith(base_path)

    async def get(self, key: str, url: str) -> dict[str, Any]:
        if not self._same_origin(url):
            raise PrefetchError(412, "security",
                                f"{key}: a paging link leaves fhirServer; not followed")
        headers = {"Accept": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            r = await self.client.get(url, headers=headers)
        except httpx.TimeoutException:
            raise PrefetchError(412, "timeout", f"{key}: fhirServer timed out") from None
        except httpx.HTTPError as e:
            raise PrefetchError(412, "transient",
                                f"{key}: fhirServer unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise PrefetchError(412, "not-found" if r.status_code == 404 else "processing",
                                f"{key}: fhirServer answered HTTP {r.status_code}")
        if len(r.content) > _MAX_RESPONSE_BYTES:
            raise PrefetchError(412, "too-costly", f"{key}: fhirServer response too large")
        try:
            body = r.json()
        except ValueError:
            raise PrefetchError(412, "processing", f"{key}: fhirServer sent no JSON") from None
        if not isinstance(body, dict):
            raise PrefetchError(412, "processing", f"{key}: fhirServer sent no FHIR resource")
        return body

    def url(self, query: str) -> str:
        return f"{self.server.rstrip('/')}/{query.lstrip('/')}"

    def next_url(self, bundle: dict[str, Any]) -> str | None:
        for link in bundle.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next" \
                    and isinstance(link.get("url"), str):
                return urljoin(self.server.rstrip("/") + "/", str(link["url"]))
        return None


def _entries(key: str, bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    raw = bundle.get("entry", [])
    if not isinstance(raw, list):
        raise PrefetchError(400, "structure", f"prefetch {key}: Bundle.entry is not an array")
    out = []
    for e in raw:
        if not isinstance(e, dict) or not isinstance(e.get("resource"), dict):
            continue
        search = e.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        if e["resource"].get("resourceType") != rtype:
            continue
        entry: dict[str, Any] = {"resource": e["resource"]}
        if isinstance(e.get("fullUrl"), str) and e["fullUrl"]:
            entry["fullUrl"] = e["fullUrl"]
        out.append(entry)
    return out


async def _search(spec: PrefetchKey, first: dict[str, Any], fetcher: _Fetcher | None,
                  pages: int = 1) -> list[dict[str, Any]]:
    """Entries of a searchset and of its following pages."""
    if _resource_type(first) != "Bundle":
        raise PrefetchError(412 if fetcher else 400, "structure",
                            f"{spec.key}: expected a Bundle, got {_resource_type(first)}")
    entries = _entries(spec.key, first, spec.resource_type)
    bundle = first
    while True:
        nxt = fetcher.next_url(bundle) if fetcher else _has_next(bundle)
        if nxt is None:
            return entries
        if fetcher is None:
            raise PrefetchError(412, "incomplete",
                                f"prefetch {spec.key} has more pages and there is no "
                                "fhirServer to read them from")
        pages += 1
        if pages > fetcher.max_pages:
            raise PrefetchError(412, "too-costly",
                                f"{spec.key}: more than {fetcher.max_pages} pages")
        bundle = await fetcher.get(spec.key, nxt)
        if _resource_type(bundle) != "Bundle":
            raise PrefetchError(412, "structure", f"{spec.key}: a page is not a Bundle")
        entries += _entries(spec.key, bundle, spec.resource_type)


def _has_next(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


async def _resolve(spec: PrefetchKey, prefetch: Mapping[str, Any], context: Mapping[str, Any],
                   fetcher: _Fetcher | None, situations: dict[str, str]
                   ) -> list[dict[str, Any]]:
    client_error = False
    if spec.key in prefetch:
        value = prefetch[spec.key]
        rtype = _resource_type(value)
        if value is None:
            situations[spec.key] = "null"
            if spec.single:
                raise PrefetchError(412, "not-found",
                                    f"prefetch {spec.key} is null: the client has no "
                                    f"{spec.resource_type}")
            return []
        if rtype == "OperationOutcome":
            situations[spec.key] = "client-error"
            client_error = True
        elif spec.single:
            if rtype != spec.resource_type:
                raise PrefetchError(400, "structure",
                                    f"prefetch {spec.key} must be a {spec.resource_type}")
            situations[spec.key] = "prefetched"
            return [{"resource": value}]
        elif rtype == "Bundle":
            entries = await _search(spec, value, fetcher)
            situations[spec.key] = "prefetched" if entries else "empty"
            return entries
        else:
            raise PrefetchError(400, "structure",
                                f"prefetch {spec.key} must be a Bundle, null or an "
                                "OperationOutcome")
    else:
        situations[spec.key] = "absent"
    if fetcher is None:
        why = "the client reported an error for it" if client_error else "it was not prefetched"
        raise PrefetchError(412, "incomplete",
                            f"{spec.key} is needed: {why}, and there is no fhirServer")
    body = await fetcher.get(spec.key, fetcher.url(_fill(spec.template, context)))
    situations[spec.key] += "+fetched"
    if spec.single:
        if _resource_type(body) != spec.resource_type:
            raise PrefetchError(412, "structure",
                                f"{spec.key}: fhirServer did not return a {spec.resource_type}")
        return [{"resource": body}]
    return await _search(spec, body, fetcher)


def _own_careplan(resource: dict[str, Any]) -> bool:
    uris = resource.get("instantiatesUri")
    return isinstance(uris, list) and any(
        isinstance(u, str) and u.startswith(KNOWLEDGE_BASE_BASE + "/") for u in uris)


async def build_input_bundle(
    keys: tuple[PrefetchKey, ...],
    *,
    context: Mapping[str, Any],
    prefetch: Mapping[str, Any],
    fhir_server: str | None,
    access_token: str | None,
    client: httpx.AsyncClient | None,
    budget_seconds: float,
    max_pages: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The input Bundle (type ``collection``) and, per key, how it was obtained.

    Raises ``PrefetchError``. The Patient's id must equal ``context.patientId``.
    """
    fetcher = (_Fetcher(client, fhir_server, access_token, max_pages)
               if fhir_server and client is not None else None)
    situations: dict[str, str] = {}
    try:
        async with asyncio.timeout(budget_seconds):
            results = await asyncio.gather(
                *(_resolve(k, prefetch, context, fetcher, situations) for k in keys))
    except TimeoutError:
        raise PrefetchError(412, "timeout",
                            "fetching from fhirServer took longer than the budget") from None
    entries: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    patient_id = context.get("patientId")
    for spec, found in zip(keys, results, strict=True):
        for e in found:
            res = e["resource"]
            if spec.key == "careplan" and not _own_careplan(res):
                continue
            rid = res.get("id")
            if isinstance(rid, str):
                if (spec.resource_type, rid) in seen:
                    continue
                seen.add((spec.resource_type, rid))
            if spec.single and rid != patient_id:
                raise PrefetchError(400, "business-rule",
                                    f"the {spec.resource_type} is not context.patientId")
            entries.append(e)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}, situations
