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
``questionnaireResponses``  ``QuestionnaireResponse?patient={{context.patientId}}&_sort=
                   -authored&_count=50`` (R4 search parameters ``patient`` and
                   ``authored``): the red-flag screen and STarT Back sent as questionnaires
                   (fhir_adapters/_questionnaire_response.py). OPTIONAL (below).

Each prefetch situation (C7) is handled distinctly:

* key **absent** (the client chose not to fill it): fetched from ``fhirServer`` with the
  bearer token of ``fhirAuthorization``; without a ``fhirServer``: 412.
* value **null** (the client has no data): no resources for a search key; for ``patient``
  a 412 (the patient cannot be had, and the input contract needs exactly one Patient).
* an **OperationOutcome** (the client hit an error): treated like an absent key (fetched
  from ``fhirServer``, else 412), and the 412 says the client reported an error.
* a **searchset with zero entries**: searched, found nothing; no resources, no fetch.
* a searchset with a ``next`` link: the rest is fetched from ``fhirServer`` (same origin
  and base path only: the token is never sent elsewhere); without a ``fhirServer``: 412,
  since the missing pages may hold the latest answer to a red-flag question.

An **optional** key (``PrefetchKey.optional``: ``questionnaireResponses``, added after
integrations that do not fill it were live) differs in one situation only: **absent** or
an **OperationOutcome** and no ``fhirServer`` goes on without it (situation
``absent-optional`` or ``client-error-optional``, logged by key name) instead of a 412; an
EHR that keeps its red-flag screen as Observations loses nothing, and one that keeps it as
QuestionnaireResponses and does not fill the key gets the "red-flag questions unanswered"
caution, never a silent "no red flags". With a ``fhirServer`` it is fetched like any other
key, and a failed fetch is the same 412: a failing server is not "no data" (it may hold a
red-flag yes). A QuestionnaireResponse about another patient reaches the input contract,
which refuses the call (422 naming the entry), as for an Observation.

Entries whose ``search.mode`` is ``outcome`` and resources of another type (``_include``)
are dropped; duplicates (same type and id, e.g. overlapping pages) are kept once. CarePlans
not made by this project (``instantiatesUri`` outside ``KNOWLEDGE_BASE_BASE``) are dropped.

fhirServer (issue 13: secure by default). A ``fhirServer`` is contacted only when its origin
is in ``[fhir] allowed_servers`` (none by default); otherwise the call goes on as if it had
none, and the ``fhirAuthorization`` token is dropped. The token is sent to that origin
only: paging links and redirects (at most 3) are normalised (percent-decoded, dot segments
resolved) and must stay on the origin and under fhirServer's base path. Bodies are read as
they stream in and inflated (gzip, deflate) in 1 MiB steps, never past 20 MiB. Every call
has the client's timeout (``fhir_timeout_seconds``), and all calls of one request share
``budget_seconds``; at most ``max_pages`` pages per key.

Any way a fetch can fail (network, timeout, HTTP status, redirect or link off the server,
size, not JSON, wrong resource type, page limit, budget) gives the same 412 naming the keys
the call lacks and nothing about what the network did (no probing of a network through the
service); the detail goes to the log (key names, statuses, exception names; never a URL, it
holds the patient id, nor a token). A malformed prefetch value is a 400.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx

from cds import KnowledgeBase
from cds_service._config import origin_of
from cds_service._errors import PrefetchError
from fhir_adapters import (
    KNOWLEDGE_BASE_BASE,
    JSONTextError,
    input_codes,
    own_careplan,
    parse_json,
)

__all__ = [
    "FHIR_ID",
    "PrefetchError",
    "PrefetchKey",
    "build_input_bundle",
    "prefetch_keys",
    "prefetch_templates",
]

log = logging.getLogger("movement_cds.service")

FHIR_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PLACEHOLDER: Final = re.compile(r"\{\{\s*context\.([A-Za-z]+)\s*\}\}")
_MAX_RESPONSE_BYTES: Final = 20 * 1024 * 1024


@dataclass(frozen=True)
class PrefetchKey:
    key: str
    resource_type: str
    template: str
    single: bool  # an instance read (one resource), not a search
    optional: bool = False  # absent (or client error) and no fhirServer: go on without it


def prefetch_keys(kb: KnowledgeBase) -> tuple[PrefetchKey, ...]:
    """The prefetch keys, built from the knowledge base's coded facts."""
    codes = input_codes(kb)  # every coded fact, and the follow-up response codes
    obs = ",".join(sorted(f"{s}|{c}" for s, c in codes.observations))
    cond = ",".join(sorted(f"{s}|{c}" for s, c in codes.conditions))
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
    keys.append(PrefetchKey(
        "questionnaireResponses", "QuestionnaireResponse",
        f"QuestionnaireResponse?patient={pid}&_sort=-authored&_count=50", False,
        optional=True))
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


class _FetchFailed(Exception):
    """fhirServer did not provide what was asked. ``str(e)`` is the detail for the log
    (statuses, exception names, sizes; never a URL, which holds the patient id); the client
    is only told which keys could not be had."""


_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS: Final = 3
_INFLATE_STEP: Final = 1024 * 1024
_SAFE_PATH: Final = "/:@!$&'()*+,;=-._~"
_PERCENT: Final = re.compile(r"%[0-9A-Fa-f]{2}")  # still encoded after one decoding


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on an already percent-decoded path."""
    out: list[str] = []
    for seg in path.split("/")[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    tail = "/" if path.endswith(("/.", "/..")) else ""
    return "/" + "/".join(out) + tail


def _normal_path(raw_path: str) -> str:
    """A path with percent-encoding decoded (``%2e%2e`` is ``..``, ``%2f`` is ``/``) and
    dot segments resolved: what a server that decodes before routing would see. A path
    still encoded after one decoding (``%252e``) is refused: no FHIR id needs it."""
    decoded = unquote(raw_path or "/")
    if "\\" in decoded or "\x00" in decoded or _PERCENT.search(decoded):
        raise _FetchFailed("a backslash, NUL or double percent-encoding in a link path")
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    return _remove_dot_segments(decoded)


@dataclass
class _Fetcher:
    """Reads from one ``fhirServer``: only under its origin and base path (paging links and
    same-server redirects are normalised first), the body inflated under ``max_bytes`` as
    it streams in, the access token sent to that origin only."""

    client: httpx.AsyncClient
    server: str
    token: str | None
    max_pages: int
    max_bytes: int = _MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        origin = origin_of(self.server)
        if origin is None:
            raise ValueError("fhirServer has no http(s) origin")
        self.origin = origin
        self.base_path = _normal_path(urlsplit(self.server).path).rstrip("/") + "/"

    def on_server(self, url: str) -> str:
        """``url`` (relative to fhirServer or absolute), normalised, if it is under
        fhirServer's origin and base path; ``_FetchFailed`` otherwise."""
        absolute = urljoin(self.server.rstrip("/") + "/", url)
        parts = urlsplit(absolute)
        if origin_of(absolute) != self.origin:
            raise _FetchFailed("a link or redirect leaves fhirServer's origin; not followed")
        path = _normal_path(parts.path)
        if not (path.rstrip("/") + "/").startswith(self.base_path):
            raise _FetchFailed("a link or redirect leaves fhirServer's base path; not followed")
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.origin}{quote(path, safe=_SAFE_PATH)}{query}"

    async def get(self, url: str) -> dict[str, Any]:
        """The FHIR resource at ``url`` (a URL ``on_server`` returned)."""
        for _hop in range(_MAX_REDIRECTS + 1):
            status, location, body = await self._read(url)
            if status in _REDIRECTS and location:
                url = self.on_server(location)
                continue
            if status != 200:
                raise _FetchFailed(f"HTTP {status}")
            try:  # the same strict reading as a request body (duplicate keys, surrogates)
                value = parse_json(body)
            except JSONTextError as bad:
                raise _FetchFailed(f"the answer is not usable JSON ({bad.code})") from None
            if not isinstance(value, dict):
                raise _FetchFailed("the answer is not a FHIR resource")
            return value
        raise _FetchFailed(f"more than {_MAX_REDIRECTS} redirects")

    async def _read(self, url: str) -> tuple[int, str | None, bytes | bytearray]:
        headers = {"Accept": "application/fhir+json", "Accept-Encoding": "gzip, deflate"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self.client.stream("GET", url, headers=headers,
                                          follow_redirects=False) as r:
                if r.status_code != 200:
                    return r.status_code, r.headers.get("location"), b""
                return 200, None, await self._body(r)
        except httpx.TimeoutException:
            raise _FetchFailed("timed out") from None
        except httpx.HTTPError as e:
            raise _FetchFailed(f"unreachable ({type(e).__name__})") from None

    async def _body(self, r: httpx.Response) -> bytearray:
        """The body, inflated step by step and never past ``max_bytes`` (a compressed
        answer is limited by what it inflates to, not by what it weighs on the wire)."""
        encoding = r.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise _FetchFailed(f"unsupported content-encoding {encoding[:20]!r}")
        inflate = zlib.decompressobj(wbits=47) if encoding != "identity" else None
        body = bytearray()
        async for raw in r.aiter_raw():
            if inflate is None:
                body += raw
            else:
                data = raw
                while data:
                    try:
                        body += inflate.decompress(data, _INFLATE_STEP)
                    except zlib.error:
                        raise _FetchFailed("the compressed answer is corrupt") from None
                    data = inflate.unconsumed_tail
                    if len(body) > self.max_bytes:
                        break
            if len(body) > self.max_bytes:
                raise _FetchFailed(f"the answer is over {self.max_bytes} bytes")
        if inflate is not None:
            body += inflate.flush()
            if len(body) > self.max_bytes:
                raise _FetchFailed(f"the answer is over {self.max_bytes} bytes")
        return body

    def url(self, query: str) -> str:
        return self.on_server(query.lstrip("/"))


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
                  *, fetched: bool = False) -> list[dict[str, Any]]:
    """Entries of a searchset and of its following pages. ``fetched``: ``first`` came
    from fhirServer (a problem with it is then fhirServer's, not the client's)."""
    if _resource_type(first) != "Bundle":
        if fetched:
            raise _FetchFailed(f"{spec.key}: the answer is not a Bundle")
        raise PrefetchError(400, "structure", f"prefetch {spec.key} must be a Bundle")
    entries = _page_entries(spec, first, fetched)
    bundle, pages = first, 1
    while True:
        link = _has_next(bundle)
        if link is None:
            return entries
        if fetcher is None:
            raise PrefetchError(412, "incomplete",
                                f"prefetch {spec.key} has more pages and there is no "
                                "fhirServer this service may read them from")
        pages += 1
        if pages > fetcher.max_pages:
            raise _FetchFailed(f"{spec.key}: more than {fetcher.max_pages} pages")
        bundle = await fetcher.get(fetcher.on_server(link))
        if _resource_type(bundle) != "Bundle":
            raise _FetchFailed(f"{spec.key}: a page is not a Bundle")
        entries += _page_entries(spec, bundle, True)


def _page_entries(spec: PrefetchKey, bundle: dict[str, Any], fetched: bool
                  ) -> list[dict[str, Any]]:
    try:
        return _entries(spec.key, bundle, spec.resource_type)
    except PrefetchError as e:
        if fetched:
            raise _FetchFailed(e.diagnostics) from None
        raise


def _has_next(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" \
                and isinstance(link.get("url"), str) and link["url"]:
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
    if fetcher is None and spec.optional:
        situations[spec.key] += "-optional"
        log.info("prefetch %s: %s and no fhirServer; optional, the call goes on without it",
                 spec.key, situations[spec.key])
        return []
    if fetcher is None:
        why = "the client reported an error for it" if client_error else "it was not prefetched"
        raise PrefetchError(412, "incomplete",
                            f"{spec.key} is needed: {why}, and there is no fhirServer this "
                            "service may read it from")
    body = await fetcher.get(fetcher.url(_fill(spec.template, context)))
    situations[spec.key] += "+fetched"
    if spec.single:
        if _resource_type(body) != spec.resource_type:
            raise _FetchFailed(f"{spec.key}: the answer is not a {spec.resource_type}")
        return [{"resource": body}]
    return await _search(spec, body, fetcher, fetched=True)


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
    allowed_servers: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], dict[str, str]]:
    """The input Bundle (type ``collection``) and, per key, how it was obtained.

    ``fhir_server`` is used only when its origin is in ``allowed_servers`` (normalised
    origins, ``cds_service._config.origin_of``); otherwise the call goes on as if
    there were none. ``budget_seconds`` covers every fhirServer call (all keys, all pages).
    Raises ``PrefetchError``. The Patient's id must equal ``context.patientId``.
    """
    if fhir_server and origin_of(fhir_server) not in allowed_servers:
        log.info("fhirServer %s is not in [fhir] allowed_servers: not contacted, the call is "
                 "answered from its prefetch", _origin_for_log(fhir_server))
        fhir_server = access_token = None
    fetcher = (_Fetcher(client, fhir_server, access_token, max_pages)
               if fhir_server and client is not None else None)
    situations: dict[str, str] = {}
    tasks: list[asyncio.Task[list[dict[str, Any]]]] = []
    try:
        async with asyncio.timeout(budget_seconds), asyncio.TaskGroup() as group:
            tasks = [group.create_task(_resolve(k, prefetch, context, fetcher, situations))
                     for k in keys]
    except TimeoutError:
        raise _unreadable(keys, prefetch, f"over the {budget_seconds} s budget") from None
    except BaseExceptionGroup as group_error:
        raise _first_problem(group_error, keys, prefetch) from None
    results = [t.result() for t in tasks]
    entries: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    patient_id = context.get("patientId")
    for spec, found in zip(keys, results, strict=True):
        for e in found:
            res = e["resource"]
            if spec.key == "careplan" and not own_careplan(res):
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


def _needs_server(spec: PrefetchKey, prefetch: Mapping[str, Any]) -> bool:
    """Whether this key is read from fhirServer (decided by the prefetch alone)."""
    if spec.key not in prefetch:
        return True
    value = prefetch[spec.key]
    rtype = _resource_type(value)
    return rtype == "OperationOutcome" or (rtype == "Bundle" and _has_next(value) is not None)


def _unreadable(keys: tuple[PrefetchKey, ...], prefetch: Mapping[str, Any],
                detail: str) -> PrefetchError:
    """The one answer for every way fhirServer can fail (closed port, another service, an
    HTTP error, a timeout, an oversized or unusable answer): it names the keys the call
    lacks, never what the network did, so the service cannot be used to probe a network.
    What happened goes to the log (key names and statuses only)."""
    needed = [k.key for k in keys if _needs_server(k, prefetch)]
    log.info("fhirServer fetch failed: %s", detail)
    return PrefetchError(412, "incomplete",
                         f"{', '.join(needed) or 'data'}: needed, not (fully) prefetched, and "
                         "could not be read from fhirServer")


def _first_problem(group: BaseExceptionGroup[BaseException], keys: tuple[PrefetchKey, ...],
                   prefetch: Mapping[str, Any]) -> BaseException:
    """The error to answer with: the client's own (a malformed or null prefetch value) first,
    then a failed fetch; anything else is re-raised as it is."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop(0)
        if isinstance(e, BaseExceptionGroup):
            stack = list(e.exceptions) + stack
        else:
            flat.append(e)
    for e in flat:
        if isinstance(e, PrefetchError):
            return e
    for e in flat:
        if isinstance(e, _FetchFailed):
            return _unreadable(keys, prefetch, str(e))
    return flat[0] if flat else group


def _origin_for_log(url: str) -> str:
    origin = origin_of(url)
    return repr(origin[:100]) if origin else "(no origin)"
