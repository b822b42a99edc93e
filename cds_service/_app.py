"""The CDS Hooks service: a FastAPI app (``create_app(config)``).

Routes (CDS Hooks 2.0; docs/integrators/cds-hooks.md; C1-C22 number the requirements):

``GET  /cds-services``                 discovery (C2, C3); the extension
                                       ``org.movement-cds.knowledge-base`` names the live
                                       knowledge-base release
``POST /cds-services/{id}``            call a service (C5-C15)
``POST /cds-services/{id}/feedback``   card feedback (C16), stored by ``FeedbackStore``
``GET  /handouts/{id}``                the patient handout page the plan card links to
                                       (``cds_service._handouts``: a random id, kept
                                       ``[handouts] ttl_seconds``; no authentication, the
                                       link is the capability; unknown or expired: 404)
``GET  /healthz``, ``/readyz``, ``/metrics``  for operators, no client token
                                       (``cds_service._operations``, docs/operations.md;
                                       ``/readyz`` answers a small JSON of its own)

Every call is authenticated by ``cds_service._auth.TokenVerifier`` (C17-C19) with the
audience ``base_url`` + the request path; a failure is a 401 whose OperationOutcome has no
detail. Every non-2xx answer is an OperationOutcome (C21); nothing in any answer is null or
empty (C1). Status codes: 400 a request that breaks C5 (not JSON, not an object, wrong
``hook``, missing or malformed ``context``, ``hookInstance``, ``fhirServer`` or
``fhirAuthorization``, or a malformed prefetch value), 401 authentication, 404 unknown
service (also a path with a trailing slash: never a redirect), 405 wrong method, 412 needed
data cannot be had (C8), 413 body over ``max_body_bytes``, 415 a compressed body, 422 the
data breaks the input contract (the OperationOutcome of ``InvalidBundleError``, unchanged),
500 an engine failure (never partial advice), 503 feedback storage not configured. The body
is parsed by the library's strict parser (``fhir_adapters.parse_json``): invalid UTF-8, a
lone surrogate or a key twice in one object is a 400 naming where. The HTTP layer's own
answers (408 request not received within the read timeout, 400 unparsable HTTP) come from
``cds_service._http_protocol``, also as OperationOutcomes.

Card records and feedback go through ``QueuedFeedbackStore`` (a bounded queue and a writer
thread): a locked database never holds up advice; the queue drains at shutdown.

Evaluation is CPU-bound and the rule engine allows one live session per process: each
process has one engine, used under a lock in the thread pool. Scale with processes
(``movement-cds serve --workers N``); each worker builds its app with ``app_from_env``,
loads the knowledge base and warms up before it accepts requests.

New knowledge-base versions go live without a restart and without dropping a request
(``LiveRelease``): at most every ``reload_check_seconds`` (and at once on SIGHUP) each worker
compares the knowledge-base directory's file list, sizes, inodes and modification times with
what it loaded; when they differ and the content digest does too, it loads, validates, runs
the scenario tests (plain-Python reference evaluator first, so a failing release never
registers a ruleset, then the rule engine), warms up, and only then swaps the engine
reference. That work runs in the thread pool, never on the event loop; the rule engine's
global lock still serialises every durable session, and the engine starts no thread of its
own. A request keeps the engine it started with. If anything fails, or the release has the
live ``{kb-id}@{version}`` with different content, the old engine stays and one WARNING line
says why.

Logs name services, hook instances, alert codes, counts, statuses and timings; never tokens,
patient ids or clinical values.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from fastapi.responses import JSONResponse as _StarletteJSON
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cds import (
    EngineError,
    Evaluator,
    InputIssue,
    KnowledgeBase,
    KnowledgeBaseError,
    MovementCDSError,
    check_changelog,
    knowledge_base_files,
    load_knowledge_base,
)
from cds_service._audit import (
    AuditError,
    archive_release,
    audit_job,
    canonical,
    card_summary,
    kb_digest,
    release_job,
)
from cds_service._cards import card_rules, plan_cards
from cds_service._config import ConfigError, ServiceConfig, load_config
from cds_service._errors import ApiError, ReloadRefused, StartupError
from cds_service._feedback_store import validate_feedback
from cds_service._handouts import HandoutStore
from cds_service._heap import settle_heap
from cds_service._metrics import UNKNOWN_SERVICE
from cds_service._operations import CallRecord, Observer, add_operations_routes
from cds_service._prefetch import (
    FHIR_ID,
    PrefetchError,
    PrefetchKey,
    build_input_bundle,
    prefetch_keys,
)
from fhir_adapters import JSONTextError, operation_outcome, parse_json
from movement_cds import InvalidBundleError, __version__, handout_html

__all__ = [
    "APP_FACTORY",
    "CONFIG_ENV",
    "KB_EXTENSION",
    "LiveRelease",
    "LoadedRelease",
    "ReloadRefused",
    "StartupError",
    "add_handout_link",
    "advise",
    "app_from_env",
    "check_auth",
    "create_app",
    "engine_for_replay",
    "kb_digest",
    "kb_fingerprint",
    "load_engine",
    "recorded_handout_link",
]

log = logging.getLogger("movement_cds.service")
#: How long a token check (signature, claims, the used-token cache) may take before the call
#: is refused (401): a hung database must not hang the call.
AUTH_DEADLINE_SECONDS: Final = 5.0

CONFIG_ENV: Final = "MOVEMENT_CDS_CONFIG"
APP_FACTORY: Final = "cds_service._app:app_from_env"  # each worker's app (uvicorn)
INSECURE_ENV: Final = "MOVEMENT_CDS_INSECURE_NO_AUTH"
SCENARIOS_CHECKED_ENV: Final = "MOVEMENT_CDS_SCENARIOS_CHECKED"
KB_EXTENSION: Final = "org.movement-cds.knowledge-base"

# SNOMED CT codes that make a draft ServiceRequest a physiotherapy referral (order-sign)
PHYSIO_CODES: Final = frozenset({
    "91251008",   # Physical therapy procedure
    "308447003",  # Referral to physiotherapist
    "1079101000000101",  # Referral to physiotherapy service (UK extension)
})
_PHYSIO_TEXT: Final = re.compile(r"physio|physical therap", re.IGNORECASE)


@dataclass(frozen=True)
class HookService:
    """One CDS service: its hook, its discovery text and the context fields it needs and
    reads; its id is ``movement-cds-{hook}``."""

    hook: str
    title: str
    description: str
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"movement-cds-{self.hook}"


SERVICES: Final = (
    HookService("patient-view",
                "Low back pain: red flags and exercise plan",
                "Checks the recorded red-flag answers and movement screen of a patient with "
                "persistent low back pain and proposes a draft exercise CarePlan and any "
                "referral, for clinician review.",
                ("userId", "patientId"), ("encounterId",)),
    HookService("encounter-start",
                "Low back pain: red flags before the visit",
                "At the start of an encounter: red-flag alerts, missing red-flag answers and "
                "the current draft exercise plan.",
                ("userId", "patientId", "encounterId"), ()),
    HookService("encounter-discharge",
                "Low back pain: exercise plan at discharge",
                "At discharge: the draft exercise CarePlan (home programme) and any open "
                "red-flag alert, for clinician review.",
                ("userId", "patientId", "encounterId"), ()),
    HookService("order-sign",
                "Low back pain: check a physiotherapy referral",
                "When a draft physiotherapy referral is signed: red flags that call for "
                "another pathway first, and the proposed exercise plan.",
                ("userId", "patientId", "draftOrders"), ("encounterId",)),
)
_BY_ID: Final = {s.id: s for s in SERVICES}


# --- errors ---------------------------------------------------------------------------------


def _outcome(code: str, diagnostics: str | None, severity: str = "error") -> dict[str, Any]:
    """The library's OperationOutcome; with no detail (a 401), the issue has no
    ``diagnostics`` at all (C1: nothing empty)."""
    body = operation_outcome([InputIssue(severity, code, diagnostics or "")])
    if not diagnostics:
        del body["issue"][0]["diagnostics"]
    return body


_HTTP_CODES: Final = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                      413: "too-costly", 415: "not-supported"}


def _error_response(exc: ApiError) -> JSONResponse:
    body = exc.outcome or _outcome(exc.code, exc.diagnostics)
    headers = ({"WWW-Authenticate": "Bearer"} if exc.status == 401
               else {"Accept-Encoding": "identity"} if exc.status == 415 else None)  # RFC 7694
    return JSONResponse(body, status_code=exc.status, headers=headers,
                        media_type="application/fhir+json")


# --- the loaded release --------------------------------------------------------------------


class LoadedRelease:
    """One knowledge-base release as this process loaded it: its ``DecisionSupport`` (the
    compiled rules, one rule engine), its prefetch keys and what identifies it; evaluations
    are serialised. (Variables holding one are still called ``engine``.)

    ``digest`` (content) and ``fingerprint`` (file metadata) describe the directory as it was
    when this release was loaded; ``loaded_at`` is when it went live."""

    def __init__(self, support: Any) -> None:
        from movement_cds import DecisionSupport

        assert isinstance(support, DecisionSupport)
        self.support = support
        self.kb = support.kb
        self.keys: tuple[PrefetchKey, ...] = prefetch_keys(self.kb)
        self._lock = threading.Lock()
        self.digest = ""
        self.fingerprint: Fingerprint = ()
        self.loaded_at = datetime.now(UTC)
        # its scenario tests passed (here or, for the same content, in the parent process)
        self.scenarios_passed = False

    def evaluate(self, bundle: dict[str, Any], as_of: datetime) -> Any:
        with self._lock:  # the cards need only the advice resources of the output Bundle
            return self.support.pipeline.evaluate(bundle, as_of, advice_only=True)

    @property
    def release(self) -> str:
        """``{kb-id}@{version}#{content digest}``: what a worker was checked against."""
        return f"{self.kb.ruleset_name}#{self.digest}"

    def describe(self) -> dict[str, Any]:
        """The discovery extension: which knowledge-base release answers."""
        m = self.kb.manifest
        return {"id": m.id, "version": m.version, "label": self.kb.ruleset_name,
                "title": m.title, "status": m.status,
                "loaded": self.loaded_at.isoformat(timespec="seconds").replace("+00:00", "Z")}


def advise(engine: LoadedRelease, service_id: str, call_input: dict[str, Any],
           as_of: datetime, *, link: Callable[[list[dict[str, Any]], Any], None] | None = None,
           ) -> tuple[bytes, list[dict[str, Any]], Any]:
    """The response body, cards and plan for a call's canonical input (``{"bundle": ...}``,
    or ``{"draftOrders": ...}`` for an order-sign call without a physiotherapy referral):
    what a call answers, and what ``movement-cds audit replay`` recomputes. The body is
    the bytes sent. ``link`` adds the patient handout link to the plan card (a per-call
    capability URL, not advice: replay puts back the recorded one)."""
    if "bundle" not in call_input:
        if _has_physio_referral(call_input["draftOrders"]):
            raise AuditError("the recorded draft orders now count as a physiotherapy "
                             "referral: this version decides differently")
        return orjson.dumps({"cards": []}), [], None
    result = engine.evaluate(call_input["bundle"], as_of)
    cards = plan_cards(result.plan, result.bundle, service_id)
    if link is not None and cards:
        link(cards, result)  # the handout page link: the service's own, or the recorded one
    return orjson.dumps({"cards": cards}), cards, result.plan


def engine_for_replay(root: Path) -> LoadedRelease:
    """An engine for an archived release (no scenario tests, no warm-up: replay only)."""
    from movement_cds import DecisionSupport

    try:
        engine = LoadedRelease(DecisionSupport(root, engine_cache_size=0))
    except MovementCDSError as e:
        raise AuditError(f"the archived release does not load: {e}") from None
    engine.digest = kb_digest(root)
    return engine


# --- what is on disk ------------------------------------------------------------------------

Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def kb_fingerprint(root: Path) -> Fingerprint:
    """Cheap (metadata only): every file's path, size, inode and modification time. Any
    change means "read it again"; ``kb_digest`` then says whether the content changed."""
    out = []
    for f in knowledge_base_files(root):
        try:
            st = f.stat()
        except OSError:
            continue  # removed while we looked: the next check sees the new state
        out.append((str(f.relative_to(root)), st.st_size, st.st_ino, st.st_dev,
                    st.st_mtime_ns))
    return tuple(out)


def _warm_up_bundle() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "id": "warm-up", "gender": "unknown",
                      "birthDate": "1980-01-01"}}]}


def _scenario_failures(evaluator: Evaluator, root: Path) -> str | None:
    """None when every scenario test passes, else why not (ids and file:line, no values)."""
    from movement_cds import run_all_scenarios

    try:
        outcomes = run_all_scenarios(evaluator, root)
    except KnowledgeBaseError as e:
        return "scenario tests do not load: " + "; ".join(str(p) for p in e.problems[:5])
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        return None
    lines = [f"{o.file}:{o.line or 0} {o.scenario.id}: " + (o.error or "; ".join(o.failures))
             for o in failed[:10]]
    return (f"{len(failed)} of {len(outcomes)} scenario tests fail "
            f"({evaluator.engine_kind}):\n  " + "\n  ".join(lines))


def _warm_up(engine: LoadedRelease) -> None:
    result = engine.evaluate(_warm_up_bundle(), datetime.now(UTC))
    plan_cards(result.plan, result.bundle, "warm-up")


def _log_changelog(root: Path, name: str) -> None:
    problems = [p for p in check_changelog(root) if p.severity == "error"]
    if problems:
        log.warning("knowledge base %s: %s (run 'movement-cds kb validate')", name,
                    "; ".join(str(p) for p in problems[:3]))


def load_engine(config: ServiceConfig, *, run_scenarios: bool = True,
                checked_release: str | None = None) -> LoadedRelease:
    """Load the knowledge base, run its scenario tests, warm up; ``StartupError`` if any
    of it fails. ``checked_release`` (``LoadedRelease.release`` of the copy the parent process
    checked): scenarios are skipped when the directory still has that content, and a
    different content under the same ``{kb-id}@{version}`` is refused."""
    from knowledge_base import bundled_path
    from movement_cds import DecisionSupport

    root = Path(config.knowledge_base or bundled_path())
    fingerprint, digest = kb_fingerprint(root), kb_digest(root)
    checked_name, _, checked_digest = (checked_release or "").partition("#")
    try:
        support = DecisionSupport(root, engine_cache_size=config.engine_cache_size)
    except KnowledgeBaseError as e:
        lines = [str(p) for p in e.problems[:10]]
        raise StartupError(f"knowledge base {root} does not load:\n  " + "\n  ".join(lines)
                           ) from None
    except MovementCDSError as e:
        raise StartupError(f"knowledge base {root} does not load: {e}") from None
    name = support.kb.ruleset_name
    if checked_digest and checked_name == name and checked_digest != digest:
        raise StartupError(f"knowledge base {root}: its content changed but its version is "
                           f"still {name}; bump the version in manifest.yaml")
    if run_scenarios and digest != checked_digest:
        failure = _scenario_failures(support.evaluator, root)
        if failure is not None:
            raise StartupError(f"knowledge base {root}: {failure}")
    engine = _warmed_up(support, root, digest, fingerprint, run_scenarios, StartupError)
    log.info("knowledge base %s loaded, warmed up", name)
    return engine


def _candidate(root: Path, live: LoadedRelease, digest: str,
               fingerprint: Fingerprint) -> LoadedRelease:
    """A new engine for the release now in ``root``, validated and tested before anything
    else sees it; ``ReloadRefused`` saying why not."""
    from movement_cds import DecisionSupport

    try:
        kb: KnowledgeBase = load_knowledge_base(root)
    except KnowledgeBaseError as e:
        raise ReloadRefused("it does not load: " + "; ".join(str(p) for p in e.problems[:5])
                            ) from None
    name = kb.ruleset_name
    if name == live.kb.ruleset_name:
        raise ReloadRefused(f"its content differs from the live {name} under the same "
                            "version; bump the version in manifest.yaml (and add a "
                            "CHANGELOG.md section)")
    try:
        # the plain-Python oracle first: a release that fails never registers a ruleset
        failure = _scenario_failures(Evaluator(kb, "reference"), root)
        if failure is None:
            support = DecisionSupport(
                kb, engine_cache_size=live.support.evaluator.cache_size)
            failure = _scenario_failures(support.evaluator, root)
    except MovementCDSError as e:
        raise ReloadRefused(f"{name}: {e}") from None
    if failure is not None:
        raise ReloadRefused(f"{name}: {failure}")
    return _warmed_up(support, root, digest, fingerprint, True,
                      lambda why: ReloadRefused(f"{name}: {why}"))


def _warmed_up(support: Any, root: Path, digest: str, fingerprint: Fingerprint,
               scenarios_passed: bool, refuse: Callable[[str], Exception]) -> LoadedRelease:
    """The engine for a checked release, warmed up (``refuse(why)`` raised if the warm-up
    evaluation fails), its changelog logged: the last step of start and of reload."""
    engine = LoadedRelease(support)
    engine.digest, engine.fingerprint = digest, fingerprint
    engine.scenarios_passed = scenarios_passed
    try:
        _warm_up(engine)
    except MovementCDSError as e:
        raise refuse(f"warm-up evaluation failed: {e}") from None
    _log_changelog(root, engine.kb.ruleset_name)
    return engine


class LiveRelease:
    """The hot-reloadable holder of the release requests use now (``engine``, a
    ``LoadedRelease``) and the check that replaces it by a new knowledge-base version (see
    the module docstring). ``check`` runs in a worker thread."""

    def __init__(self, engine: LoadedRelease, root: Path, interval: float, *,
                 settle: bool = False,
                 before_swap: Callable[[LoadedRelease, Path], None] | None = None) -> None:
        self.engine = engine
        self.before_swap = before_swap  # archives the release; raising refuses the swap
        self.root = root
        self.interval = interval
        self._seen = engine.fingerprint or kb_fingerprint(root)
        if not engine.digest:
            engine.digest = kb_digest(root)
        self._checking = threading.Lock()
        self.settle = settle  # settle_heap() after each swap (service workers)
        # called with (outcome, engine before the check) after every check (metrics)
        self.listeners: list[Callable[[str, LoadedRelease], None]] = []

    def check(self, force: bool = False) -> str:
        """Look for a new version and take it into service if it passes every check.
        Returns ``unchanged``, ``swapped``, ``refused``, ``changing`` (files still being
        written: looked at again next time) or ``busy`` (a check is already running)."""
        if not self._checking.acquire(blocking=False):
            return "busy"
        try:
            before = self.engine
            outcome = self._check(force)
            if outcome == "swapped" and self.settle:
                settle_heap()  # here, once the old engine is no longer held by the check
            for listener in self.listeners:
                listener(outcome, before)
            return outcome
        finally:
            self._checking.release()

    def _check(self, force: bool) -> str:
        fingerprint = kb_fingerprint(self.root)
        if fingerprint == self._seen and not force:
            return "unchanged"
        live = self.engine
        digest = kb_digest(self.root)
        if digest == live.digest:
            self._seen = fingerprint
            return "unchanged"
        started = time.perf_counter()
        try:
            candidate = _candidate(self.root, live, digest, fingerprint)
        except ReloadRefused as e:
            if kb_fingerprint(self.root) != fingerprint:
                log.info("knowledge base %s changed while it was read; looking again later",
                         self.root)
                return "changing"
            self._seen = fingerprint
            log.warning("knowledge-base reload refused, still serving %s: %s",
                        live.kb.ruleset_name, " ".join(str(e).split("\n")))
            return "refused"
        if kb_fingerprint(self.root) != fingerprint:
            log.info("knowledge base %s changed while it was tested; looking again later",
                     self.root)
            return "changing"
        if not self._archived(candidate, fingerprint):
            return "refused"
        candidate.loaded_at = datetime.now(UTC)
        self.engine = candidate  # one reference assignment: requests in flight keep theirs
        self._seen = fingerprint
        log.info("knowledge base %s live (was %s); checked in %.1f s",
                 candidate.kb.ruleset_name, live.kb.ruleset_name,
                 time.perf_counter() - started)
        return "swapped"

    def _archived(self, candidate: LoadedRelease, fingerprint: Fingerprint) -> bool:
        """Run ``before_swap`` (the release archive); False, logged, if it failed."""
        if self.before_swap is None:
            return True
        try:
            self.before_swap(candidate, self.root)
        except Exception as e:
            self._seen = fingerprint
            log.warning("knowledge-base reload refused, still serving %s: release %s could "
                        "not be archived (%s: %s)", self.engine.kb.ruleset_name,
                        candidate.kb.ruleset_name, type(e).__name__, e)
            return False
        return True

    async def watch(self, wake: asyncio.Event) -> None:
        """Runs on the event loop for the app's lifetime: a check every ``interval`` seconds
        (if not 0) and whenever ``wake`` is set (SIGHUP); the work itself in the thread pool."""
        while True:
            try:
                await asyncio.wait_for(wake.wait(), self.interval or None)
            except TimeoutError:
                pass
            forced = wake.is_set()
            wake.clear()
            try:
                await run_in_threadpool(self.check, forced)
            except Exception as e:  # a bug must not stop the service or later checks
                log.error("knowledge-base reload check failed (%s)", type(e).__name__,
                          exc_info=e)
                for listener in self.listeners:
                    listener("error", self.engine)


def _make_verifier(config: ServiceConfig) -> Any:
    if not config.auth_required and not config.issuers:
        return None  # nothing to check a token against: no thread hop per request
    try:
        auth = importlib.import_module("cds_service._auth")
    except ImportError:
        if config.auth_required:
            raise StartupError("authentication is required but cds_service._auth is "
                               "not available; use --insecure-no-auth for a demo") from None
        return None
    try:
        verifier = auth.TokenVerifier(list(config.issuers), config.auth_required,
                                      replay_cache=config.replay_database or ":memory:")
        log.info("used-token (jti) cache: %s", config.replay_database or "in memory")
        return verifier
    except (ValueError, OSError) as e:
        raise StartupError(f"[auth] configuration: {e}") from None


def check_auth(config: ServiceConfig) -> None:
    """Build (and close) the token verifier every worker will build, so that a bad
    ``[auth]`` setting (an unusable replay-cache path, a broken JWK Set file) stops
    ``movement-cds serve --workers N`` at once with one line, not each worker in turn."""
    verifier = _make_verifier(config)
    if verifier is not None:
        verifier.close()


def _log_fhir_access(config: ServiceConfig) -> None:
    if config.allowed_servers:
        log.info("fhirServer access: only %s ([fhir] allowed_servers)",
                 ", ".join(sorted(config.allowed_servers)))
    else:
        log.info("fhirServer access: off (no [fhir] allowed_servers); calls are answered "
                 "from their prefetch, and missing data is a 412")


def _open_store(config: ServiceConfig) -> Any:
    if not config.database:
        return None
    try:
        mod = importlib.import_module("cds_service._feedback_store")
    except ImportError:
        log.warning("feedback store module not available: feedback answers 503")
        return None
    try:
        # writes go through a queue and a writer thread: a locked database never holds up
        # advice, and nothing is lost (see QueuedFeedbackStore)
        return mod.QueuedFeedbackStore(mod.open_store(config.database),
                                       spill_path=config.spill_file,
                                       drain_seconds=config.drain_seconds)
    except Exception as e:  # a bad database URL stops the service at start
        raise StartupError(f"[service] database: cannot open ({type(e).__name__}: {e})"
                           ) from None


async def _record_cards_only(store: Any, rules: list[dict[str, Any]]) -> None:
    """A store without jobs (a test's stand-in): card records only, as before the audit."""
    record = getattr(store, "record_cards", None)
    if not callable(record) or not rules:
        return
    try:
        rows = [(r["card"], r["rule_ids"], r["knowledge_base"]) for r in rules]
        await run_in_threadpool(record, rows, datetime.now(UTC))
    except Exception as e:  # feedback bookkeeping never blocks advice
        log.warning("record_cards failed (%s)", type(e).__name__)


def _archive_first(recorder: Recorder | None, engine: LoadedRelease, root: Path,
                   own_store: Any) -> None:
    """The release about to serve goes into the archive first; ``StartupError`` if that
    fails (``[audit] required``) or the directory changed since it was loaded."""
    if recorder is None:
        return
    try:
        recorder.archive(engine, root)
    except Exception as e:
        if own_store is not None:
            own_store.close()
        raise StartupError(f"knowledge-base release {engine.kb.ruleset_name} could not be "
                           f"archived for the audit trail ({type(e).__name__}: {e})") from None


class Recorder:
    """What the service writes about its advice: card records (for feedback), audit
    records and the release archive (``cds_service._audit``). ``[audit] required``: written
    at once, and a failure is raised (the call answers 500, a start or reload is refused);
    otherwise queued (``QueuedFeedbackStore``: retried, spilled, never lost)."""

    def __init__(self, store: Any, config: ServiceConfig) -> None:
        self.required = config.audit_required
        self.store_inputs = config.audit_store_inputs
        self.within = 5.0  # required: seconds a busy database is retried before a 500
        self._store = store
        names = ("write_now", "write_jobs") if self.required else ("record_jobs",
                                                                   "write_jobs")
        found = [n for n in names if callable(getattr(store, n, None))]
        self._method = found[0] if found else None

    @property
    def audits(self) -> bool:
        """False for a store without jobs (tests' stand-ins): card records only."""
        return self._method is not None

    def write(self, jobs: list[Any]) -> None:
        if self._method == "write_now":
            self._store.write_now(jobs, within=self.within)
        elif self._method is not None:
            getattr(self._store, self._method)(jobs)

    def archive(self, engine: LoadedRelease, root: Path) -> None:
        """Put the release ``engine`` serves into the archive (before it answers)."""
        if not self.audits:
            return
        digest, data = archive_release(root)
        if digest != engine.digest:
            raise AuditError("the knowledge-base directory changed after it was loaded")
        self.write([release_job(engine.kb.ruleset_name, digest, data)])

    def call_jobs(self, hook_instance: str, service_id: str, engine: LoadedRelease,
                  as_of: datetime, call_input: bytes, body: bytes,
                  rules: list[dict[str, Any]]) -> list[Any]:
        """The card and audit jobs of one advice call."""
        from cds_service._feedback_store import card_job

        now = datetime.now(UTC)
        jobs = [card_job([(r["card"], r["rule_ids"], r["knowledge_base"]) for r in rules],
                         now)] if rules else []
        return [*jobs, audit_job(
            hook_instance=hook_instance, service_id=service_id,
            release=engine.kb.ruleset_name, digest=engine.digest, software=__version__,
            as_of=as_of, call_input=call_input, output=body, cards=card_summary(rules),
            store_inputs=self.store_inputs, recorded_at=now)]


class _Advice:
    """Answering an advice call once its input is known: evaluate, record (cards, audit),
    answer; the body sent is the body recorded."""

    def __init__(self, store: Any, recorder: Recorder | None,
                 handouts: HandoutStore | None = None, base_url: str = "") -> None:
        self.store = store
        self.recorder = recorder
        self.handouts = handouts
        self.base_url = base_url

    def _handout_link(self, service_id: str, hook_instance: str, current: LoadedRelease,
                      made: list[str]) -> Callable[[list[dict[str, Any]], Any], None] | None:
        """The link step of ``advise``: the page's id goes into ``made``."""
        handouts = self.handouts
        if handouts is None:
            return None

        def link(cards: list[dict[str, Any]], result: Any) -> None:
            try:
                made.append(_link_handout(cards, result, current, handouts, self.base_url))
            except Exception as e:  # the advice goes out without the page, never a 500
                log.warning("%s %s: no handout page (%s)", service_id, hook_instance,
                            type(e).__name__)
        return link

    async def answer(self, service_id: str, hook_instance: str, current: LoadedRelease,
                     call_input: dict[str, Any], started: float,
                     situations: dict[str, str] | None = None,
                     call: CallRecord | None = None) -> Response:
        as_of = datetime.now(UTC)
        input_text = canonical(call_input)  # before evaluation: what the rules were given
        pages: list[str] = []
        try:
            body, cards, plan = advise(current, service_id, call_input, as_of,
                                       link=self._handout_link(service_id, hook_instance,
                                                               current, pages))
        except InvalidBundleError as e:
            log.info("%s %s: 422 input contract (%d issues)", service_id, hook_instance,
                     len(e.issues))
            raise ApiError(422, "invalid", outcome=e.operation_outcome) from None
        except EngineError:
            log.error("%s %s: engine failure", service_id, hook_instance)
            raise ApiError(500, "exception", "the rule engine failed; no advice given"
                           ) from None
        if call is not None and plan is not None:
            call.cards, call.held = cards, plan.exercise_held
            call.referral_priorities = [a.referral.priority for a in plan.referrals]
        rules = card_rules(plan, cards) if plan is not None else []
        try:
            await self.record(service_id, hook_instance, current, as_of, input_text, body,
                              rules)
        except ApiError:  # no advice given ([audit] required): no page kept for it either
            if pages and self.handouts is not None:
                await run_in_threadpool(self.handouts.delete, pages)
            raise
        if situations is not None:
            log.info("%s %s: 200, %d cards (%s), %d resources in, prefetch %s, %.0f ms",
                     service_id, hook_instance, len(cards),
                     ",".join(k["source"]["topic"]["code"] for k in cards),
                     len(call_input["bundle"]["entry"]),
                     ",".join(f"{k}={v}" for k, v in situations.items()),
                     (time.perf_counter() - started) * 1000)
        return Response(body, media_type="application/json")

    async def record(self, service_id: str, hook_instance: str, current: LoadedRelease,
                     as_of: datetime, input_text: bytes, body: bytes,
                     rules: list[dict[str, Any]]) -> None:
        recorder = self.recorder
        if recorder is None or not recorder.audits:
            await _record_cards_only(self.store, rules)
            return
        try:
            jobs = recorder.call_jobs(hook_instance, service_id, current, as_of, input_text,
                                      body, rules)
            await run_in_threadpool(recorder.write, jobs)
        except Exception as e:
            if recorder.required:  # fail closed: no advice without its audit record
                log.error("%s %s: audit record not written (%s); no advice given",
                          service_id, hook_instance, type(e).__name__)
                raise ApiError(500, "exception", "the audit record could not be written; "
                               "no advice given") from None
            log.warning("%s %s: audit record not queued (%s)", service_id, hook_instance,
                        type(e).__name__)


# --- request checks -------------------------------------------------------------------------


class JSONResponse(_StarletteJSON):
    """Rendered by orjson: the same compact UTF-8 JSON as Starlette's, several times
    faster on a 40 kB plan card (see docs/performance.md)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def _read_json(request: Request, limit: int) -> Any:
    """The request body's JSON, parsed as the library parses JSON text (``parse_json``):
    400 naming where for text that is not JSON, not UTF-8, holds a lone surrogate or a key
    twice in one object; 413 over ``limit`` bytes; 415 for a compressed body."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, "not-supported", "compressed request bodies are not accepted "
                       "(Content-Encoding must be identity)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ApiError(413, "too-costly", f"request body over {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "too-costly", f"request body over {limit} bytes")
    except ClientDisconnect:  # nobody to answer: one INFO line, no traceback
        log.info("%s: client disconnected before the whole request body arrived (%d bytes)",
                 request.url.path, len(body))
        raise ApiError(400, "incomplete", "the client disconnected") from None
    if not body.strip():
        raise ApiError(400, "invalid", "the request body is empty")
    try:
        return parse_json(body)
    except JSONTextError as e:
        issue = InputIssue("error", e.code, e.describe(""), e.where("") if e.path else None)
        raise ApiError(400, e.code, outcome=operation_outcome([issue])) from None


def _is_uuid(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        uuid.UUID(v)
    except ValueError:
        return False
    return True


def _absolute_url(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    from urllib.parse import urlsplit

    p = urlsplit(v)
    return p.scheme in ("http", "https") and bool(p.netloc)


def _check_request(service: HookService, body: Any) -> dict[str, Any]:
    """The checks of C5 and the hook's context; ``ApiError`` 400 otherwise."""
    def bad(msg: str, code: str = "invalid") -> ApiError:
        return ApiError(400, code, msg)

    if not isinstance(body, dict):
        raise bad("the request must be a JSON object", "structure")
    hook = body.get("hook")
    if not isinstance(hook, str):
        raise bad("hook is required", "required")
    if hook != service.hook:
        raise bad(f"this service answers the {service.hook} hook, not {hook[:40]!r}",
                  "not-supported")
    if "hookInstance" not in body:
        raise bad("hookInstance is required", "required")
    if not _is_uuid(body["hookInstance"]):
        raise bad("hookInstance must be a UUID")
    context = body.get("context")
    if not isinstance(context, dict):
        raise bad("context is required (an object)", "required")
    for name in service.required:
        if name not in context or context[name] is None:
            raise bad(f"context.{name} is required for {service.hook}", "required")
    for name in (*service.required, *service.optional):
        if name not in context or name == "draftOrders":
            continue
        v = context[name]
        if not isinstance(v, str) or not v.strip():
            raise bad(f"context.{name} must be a non-empty string")
    if not FHIR_ID.match(context["patientId"]):
        raise bad("context.patientId must be a FHIR id")
    if "encounterId" in context and not FHIR_ID.match(context["encounterId"]):
        raise bad("context.encounterId must be a FHIR id")
    if "draftOrders" in service.required:
        d = context["draftOrders"]
        if not isinstance(d, dict) or d.get("resourceType") != "Bundle":
            raise bad("context.draftOrders must be a FHIR Bundle")
        if not isinstance(d.get("entry", []), list):
            raise bad("context.draftOrders.entry must be an array")
    server = body.get("fhirServer")
    if server is not None and not _absolute_url(server):
        raise bad("fhirServer must be an absolute http(s) URL")
    auth = body.get("fhirAuthorization")
    if auth is not None:
        if server is None:
            raise bad("fhirServer is required when fhirAuthorization is present", "required")
        if not isinstance(auth, dict):
            raise bad("fhirAuthorization must be an object")
        for name in ("access_token", "token_type", "scope", "subject"):
            if not isinstance(auth.get(name), str) or not auth[name]:
                raise bad(f"fhirAuthorization.{name} is required (a string)", "required")
        if auth["token_type"] != "Bearer":
            raise bad("fhirAuthorization.token_type must be Bearer")
        exp = auth.get("expires_in")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= 0:
            raise bad("fhirAuthorization.expires_in must be a positive number", "required")
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise bad("prefetch must be an object")
    return body


def _has_physio_referral(draft_orders: dict[str, Any]) -> bool:
    for e in draft_orders.get("entry") or []:
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict) or res.get("resourceType") != "ServiceRequest":
            continue
        if res.get("status") not in ("draft", None):
            continue
        concepts = [res.get("code"), *(res.get("category") or [])]
        for c in concepts:
            if not isinstance(c, dict):
                continue
            if isinstance(c.get("text"), str) and _PHYSIO_TEXT.search(c["text"]):
                return True
            for coding in c.get("coding") or []:
                if isinstance(coding, dict) and (
                    coding.get("code") in PHYSIO_CODES
                    or (isinstance(coding.get("display"), str)
                        and _PHYSIO_TEXT.search(coding["display"]))):
                    return True
    return False


def _check_feedback(body: Any) -> list[dict[str, Any]]:
    """The call's feedback items, each checked by the store's one validator
    (``validate_feedback``) before anything else happens; a bad one is a 400 naming it."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) \
            or not body["feedback"]:
        raise ApiError(400, "invalid", "feedback must be a non-empty array")
    items: list[dict[str, Any]] = body["feedback"]
    try:
        validate_feedback(items)
    except ValueError as e:
        raise ApiError(400, "invalid", str(e)) from None
    return items


# --- OpenAPI (documentation and schemathesis) ------------------------------------------------

_OO_SCHEMA: Final = {"type": "object", "required": ["resourceType", "issue"],
                     "properties": {"resourceType": {"const": "OperationOutcome"},
                                    "issue": {"type": "array"}}}


# the handout page: never cached or indexed, no referrer leaks the capability URL, and the
# page (one self-contained document, no script) may load nothing
_HANDOUT_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'",
}


def _link_handout(cards: list[dict[str, Any]], result: Any, engine: LoadedRelease,
                  store: HandoutStore, base_url: str) -> str:
    """Keep the plan's patient handout page and link the plan card (the last card) to it;
    the page's id. The card's uuid stays that of its advice: the link is not part of it."""
    page = handout_html(result, support=engine.support)
    page_id = store.put(page)
    add_handout_link(cards, {"label": HANDOUT_LINK_LABEL, "url": f"{base_url}/handouts/{page_id}",
                             "type": "absolute"})
    return page_id


HANDOUT_LINK_LABEL: Final = "Patient handout: the exercises with pictures, a week plan and a log"


def add_handout_link(cards: list[dict[str, Any]], link: dict[str, Any]) -> None:
    """The handout link goes first among the plan card's (the last card's) links."""
    cards[-1]["links"] = [link, *cards[-1].get("links", [])]


def recorded_handout_link(body: bytes) -> dict[str, Any] | None:
    """The handout link a recorded answer carried (replay puts the same one back)."""
    try:
        cards = json.loads(body)["cards"]
        links = cards[-1].get("links", []) if cards else []
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return next((x for x in links if isinstance(x, dict)
                 and x.get("label") == HANDOUT_LINK_LABEL), None)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"description": "OperationOutcome",
                "content": {"application/fhir+json": {"schema": _OO_SCHEMA}}} for c in codes}


_CALL_BODY: Final = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["hook", "hookInstance", "context"],
               "properties": {
                   "hook": {"type": "string"},
                   "hookInstance": {"type": "string", "format": "uuid"},
                   "fhirServer": {"type": "string", "format": "uri"},
                   "fhirAuthorization": {"type": "object"},
                   "context": {"type": "object"},
                   "prefetch": {"type": "object"}}}}}}}
_FEEDBACK_BODY: Final = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["feedback"],
               "properties": {"feedback": {"type": "array", "items": {"type": "object"}}}}}}}}


# --- the app --------------------------------------------------------------------------------


def create_app(
    config: ServiceConfig,
    *,
    engine: LoadedRelease | None = None,
    verifier: Any = None,
    store: Any = None,
    http_client_factory: Callable[[], httpx.AsyncClient] | None = None,
    run_scenarios: bool = True,
    checked_release: str | None = None,
    settle: bool = False,
) -> FastAPI:
    """The CDS Hooks app. Loads (and warms up) the engine now unless one is given, so a
    worker never takes a request before it is ready. ``StartupError`` if it cannot start.
    ``verifier`` and ``store`` default to the ones the config describes. While the app runs
    (its lifespan), ``LiveRelease.watch`` takes new knowledge-base versions into service.
    ``settle`` (service workers, not tests): ``settle_heap()`` before the first request and
    after each reload, so full garbage collections do not walk the loaded engine."""
    svc = _service_parts(config, engine, verifier, store, run_scenarios=run_scenarios,
                         checked_release=checked_release, settle=settle)
    timeout = httpx.Timeout(config.fhir_timeout_seconds)

    def new_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    # redirect_slashes=False: ".../{id}/" is a 404 OperationOutcome, never a 307 whose
    # Location would be built from the request's Host header
    app = FastAPI(title="movement-cds CDS Hooks service", version="1.0.0",
                  lifespan=_lifespan(svc, http_client_factory or new_client, settle),
                  docs_url=None, redoc_url=None, redirect_slashes=False)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    _add_error_handlers(app)
    authenticate = _authenticator(svc)
    _add_advice_routes(app, svc, authenticate)
    _add_feedback_and_handout_routes(app, svc, authenticate)
    app.state.engine = svc.engine  # the one it started with; live.engine is the current one
    app.state.live = svc.live
    app.state.store = svc.store
    app.state.observer = svc.observer
    app.state.recorder = svc.recorder
    return app


@dataclass
class _Service:
    """What one app serves with (built by ``_service_parts``, used by its routes)."""

    config: ServiceConfig
    engine: LoadedRelease  # the one it started with
    live: LiveRelease  # the one requests use now
    verifier: Any
    store: Any
    own_store: bool  # the app closes (drains) only a store it opened
    handouts: HandoutStore | None
    recorder: Recorder | None
    advice: _Advice
    observer: Observer
    state: dict[str, Any]  # "http": the fhirServer client, while the app runs


def _service_parts(config: ServiceConfig, engine: LoadedRelease | None, verifier: Any,
                   store: Any, *, run_scenarios: bool, checked_release: str | None,
                   settle: bool) -> _Service:
    """The engine (loaded and warmed up unless given), the token verifier, the stores, the
    release archived before it serves, the reload watch and the metrics."""
    from knowledge_base import bundled_path

    engine = engine or load_engine(config, run_scenarios=run_scenarios,
                                   checked_release=checked_release)
    root = Path(config.knowledge_base or bundled_path())
    verifier = verifier if verifier is not None else _make_verifier(config)
    _log_fhir_access(config)
    own_store = store is None
    handouts = (HandoutStore(config.handout_database, config.handout_ttl_seconds)
                if config.handouts_enabled else None)
    store = store if store is not None else _open_store(config)
    recorder = Recorder(store, config) if store is not None else None
    _archive_first(recorder, engine, root, store if own_store else None)
    advice = _Advice(store, recorder, handouts, config.base_url)
    live = LiveRelease(engine, root, config.reload_check_seconds, settle=settle,
                      before_swap=recorder.archive if recorder is not None else None)
    observer = Observer.from_config(config)
    live.listeners.append(_reload_listener(live, observer))
    return _Service(config, engine, live, verifier, store, own_store, handouts, recorder,
                    advice, observer, {})


def _lifespan(svc: _Service, make_client: Callable[[], httpx.AsyncClient],
              settle: bool) -> Callable[[FastAPI], Any]:
    """The app's lifespan: the fhirServer client, the reload watch (every
    ``reload_check_seconds`` and on SIGHUP), and on the way out everything closed, the
    feedback queue drained."""
    live, observer = svc.live, svc.observer

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.state["http"] = make_client()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        hup = False
        try:  # only in the main thread of a process with signals (uvicorn's worker)
            loop.add_signal_handler(signal.SIGHUP, wake.set)
            hup = True
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass
        watcher = (asyncio.create_task(live.watch(wake), name="knowledge-base-reload")
                   if hup or live.interval else None)
        if watcher is not None:
            log.info("knowledge-base reload: every %s s%s", live.interval or "-",
                     " and on SIGHUP" if hup else "")
        if settle:
            settle_heap()
        observer.serving(*_release_labels(live.engine))
        try:
            yield
        finally:
            observer.stopped_serving(*_release_labels(live.engine))
            if watcher is not None:
                watcher.cancel()
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            await _close_parts(svc)

    return lifespan


async def _close_parts(svc: _Service) -> None:
    """The fhirServer client, the handout store, the verifier, and the feedback store if
    the app opened it (its queue written first: SIGTERM loses nothing)."""
    await svc.state["http"].aclose()
    if svc.handouts is not None:
        svc.handouts.close()
    close = getattr(svc.verifier, "close", None)
    if callable(close):
        close()
    store = svc.store
    if svc.own_store and store is not None:  # drains the feedback queue (SIGTERM)
        queued = getattr(store, "queued", None)
        if callable(queued) and queued():
            log.info("feedback: writing %d queued write(s) before exit", queued())
        await asyncio.to_thread(store.close)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answer is an OperationOutcome (C21)."""

    @app.exception_handler(ApiError)
    async def api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "processing")
        resp = _error_response(ApiError(exc.status_code, code, str(exc.detail)))
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, _exc: RequestValidationError) -> JSONResponse:
        return _error_response(ApiError(400, "invalid", "the request is malformed"))

    @app.exception_handler(Exception)
    async def unexpected(_r: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s", type(exc).__name__, exc_info=exc)
        return _error_response(ApiError(500, "exception", "internal error; no advice given"))


Authenticate = Callable[[Request], Awaitable[None]]


def _authenticator(svc: _Service) -> Authenticate:
    """The token check of every call (C17-C19): a 401 with no detail when it fails."""
    verifier, base_url, observer = svc.verifier, svc.config.base_url, svc.observer

    async def authenticate(request: Request) -> None:
        if verifier is None:
            return
        audience = base_url + request.url.path
        header = request.headers.get("authorization")
        try:
            # a deadline: a database that holds the connection open and never answers (the
            # used-token check) gives a 401 in bounded time, not a hung call; the thread is
            # abandoned, and the shared thread limiter bounds how many can be
            with anyio.fail_after(AUTH_DEADLINE_SECONDS):
                result = await anyio.to_thread.run_sync(
                    verifier.verify, header, audience, abandon_on_cancel=True)
                if inspect.isawaitable(result):
                    await result
        except Exception as e:
            log.info("authentication refused on %s (%s)", request.url.path, type(e).__name__)
            observer.auth_failed(str(e))
            raise ApiError(401, "login") from None

    return authenticate


def _discovery(current: LoadedRelease) -> dict[str, Any]:
    templates = {k.key: k.template for k in current.keys}
    ext = {KB_EXTENSION: current.describe()}
    return {"services": [
        {"hook": s.hook, "id": s.id, "title": s.title, "description": s.description,
         "prefetch": templates, "extension": ext} for s in SERVICES],
        "extension": ext}


def _add_advice_routes(app: FastAPI, svc: _Service, authenticate: Authenticate) -> None:
    """Discovery, the operators' routes and the service calls."""
    config, live, observer = svc.config, svc.live, svc.observer

    @app.get("/cds-services", responses=_responses(401))
    async def get_discovery(request: Request) -> JSONResponse:
        await authenticate(request)
        return JSONResponse(_discovery(live.engine))

    add_operations_routes(
        app, engine=lambda: live.engine, store=svc.store,
        metrics_enabled=config.metrics_enabled, allow_from=config.metrics_allow_from,
        forbidden=lambda text: _error_response(ApiError(403, "forbidden", text)))

    @app.post("/cds-services/{service_id}", openapi_extra=_CALL_BODY,
              responses=_responses(400, 401, 404, 412, 413, 422, 500))
    async def call_service(service_id: str, request: Request) -> Response:
        call = CallRecord(service_id if service_id in _BY_ID else UNKNOWN_SERVICE)
        return await observer.observe(call, _answer_call(svc, authenticate, service_id,
                                                         request, call))


async def _answer_call(svc: _Service, authenticate: Authenticate, service_id: str,
                       request: Request, call: CallRecord) -> Response:
    """One service call: checked, its input Bundle built (prefetch, fhirServer), answered."""
    config, advice = svc.config, svc.advice
    started = time.perf_counter()
    service = _BY_ID.get(service_id)
    if service is None:
        raise ApiError(404, "not-found", "no such CDS service")
    await authenticate(request)
    body = _check_request(service, await _read_json(request, config.max_body_bytes))
    hook_instance = call.hook_instance = body["hookInstance"]  # a UUID (checked)
    context = body["context"]
    current = svc.live.engine  # this request keeps it, whatever a reload does meanwhile
    call.release = current.kb.ruleset_name
    if service.hook == "order-sign" and not _has_physio_referral(context["draftOrders"]):
        log.info("%s %s: no draft physiotherapy referral; no cards", service.id,
                 hook_instance)
        return await advice.answer(service.id, hook_instance, current,
                                   {"draftOrders": context["draftOrders"]}, started,
                                   call=call)
    auth = body.get("fhirAuthorization")
    try:
        bundle, situations = await build_input_bundle(
            current.keys, context=context, prefetch=body.get("prefetch") or {},
            fhir_server=body.get("fhirServer"),
            access_token=auth["access_token"] if auth else None,
            client=svc.state.get("http"), budget_seconds=config.fetch_budget_seconds,
            max_pages=config.max_pages, allowed_servers=config.allowed_servers)
    except PrefetchError as e:
        log.info("%s %s: %d %s", service.id, hook_instance, e.status, e.code)
        raise ApiError(e.status, e.code, e.diagnostics) from None
    return await advice.answer(service.id, hook_instance, current, {"bundle": bundle},
                               started, situations, call)


def _add_feedback_and_handout_routes(app: FastAPI, svc: _Service,
                                     authenticate: Authenticate) -> None:
    """Card feedback (C16) and the patient handout pages."""
    store, observer, handouts = svc.store, svc.observer, svc.handouts
    max_body = svc.config.max_body_bytes

    @app.post("/cds-services/{service_id}/feedback", openapi_extra=_FEEDBACK_BODY,
              responses=_responses(400, 401, 404, 413, 503))
    async def feedback(service_id: str, request: Request) -> JSONResponse:
        if service_id not in _BY_ID:
            raise ApiError(404, "not-found", "no such CDS service")
        await authenticate(request)
        items = _check_feedback(await _read_json(request, max_body))
        if store is None:
            raise ApiError(503, "not-supported", "feedback storage is not configured")
        try:
            n = await run_in_threadpool(store.add, service_id, items, datetime.now(UTC))
        except ValueError as e:  # the store's own all-or-nothing validation names the item
            raise ApiError(400, "invalid", str(e)) from None
        except Exception as e:
            log.error("feedback store failed (%s)", type(e).__name__)
            raise ApiError(500, "exception", "feedback could not be stored") from None
        observer.feedback_stored(service_id, items)
        log.info("%s feedback: %d item(s) stored", service_id, len(items))
        return JSONResponse({"stored": int(n) if isinstance(n, int) else len(items)})

    @app.get("/handouts/{handout_id}", response_class=HTMLResponse, responses=_responses(404))
    async def get_handout(handout_id: str) -> HTMLResponse:
        page = (await run_in_threadpool(handouts.get, handout_id)
                if handouts is not None else None)
        if page is None:  # unknown, malformed or expired: the same answer, no detail
            raise ApiError(404, "not-found")
        return HTMLResponse(page, headers=_HANDOUT_HEADERS)


def _release_labels(engine: LoadedRelease) -> tuple[str, str]:
    return engine.kb.ruleset_name, engine.digest[:12]


def _reload_listener(live: LiveRelease, observer: Observer) -> Callable[[str, LoadedRelease], None]:
    def listener(outcome: str, before: LoadedRelease) -> None:
        observer.reload(outcome)
        if outcome == "swapped":
            observer.serving(*_release_labels(live.engine), old=_release_labels(before))
    return listener


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` workers: the config path is in ``MOVEMENT_CDS_CONFIG``
    (set by ``movement-cds serve``)."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise StartupError(f"{CONFIG_ENV} is not set")
    try:
        config = load_config(path, insecure_no_auth=os.environ.get(INSECURE_ENV) == "1")
    except ConfigError as e:
        raise StartupError(str(e)) from None
    # the parent checked the scenarios of the release it names here (legacy value "1": of
    # whatever is on disk); a worker (re)started later with another release runs them itself
    checked = os.environ.get(SCENARIOS_CHECKED_ENV)
    try:
        return create_app(config, run_scenarios=checked != "1",
                          checked_release=checked if checked and checked != "1" else None,
                          settle=True)
    except StartupError as e:  # one line, not a traceback; uvicorn keeps the old workers
        log.error("worker not started: %s", " ".join(str(e).split("\n")))
        raise SystemExit(3) from None  # uvicorn's STARTUP_FAILURE
