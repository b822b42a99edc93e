"""Prometheus metrics of the CDS Hooks service (``GET /metrics``; docs/operations.md).

Every metric, its labels and their values (a closed set: no label ever carries a patient id,
a user id, a token, a hookInstance or any other caller-chosen text)::

    movement_cds_calls_total{service, status}         CDS Hooks calls answered
    movement_cds_call_duration_seconds{service}       histogram of the time to answer
    movement_cds_cards_total{service, indicator}      cards returned (info|warning|critical)
    movement_cds_referrals_total{service, priority}  referrals proposed (stat|asap|urgent|
                                                      routine)
    movement_cds_red_flag_holds_total{service}        calls whose plan holds all exercise
    movement_cds_precondition_failed_total{service}   412 answers: needed data not available
    movement_cds_auth_failures_total{reason}          refused client tokens (AUTH_REASONS)
    movement_cds_feedback_total{service, outcome}     feedback items stored (accepted|
                                                      overridden)
    movement_cds_knowledge_base_info{release, digest} 1 for the release a live worker serves
    movement_cds_knowledge_base_reloads_total{outcome}  reload checks that changed something
                                                      or tried to (swapped|refused|changing|
                                                      error)

``service`` is one of the four service ids or ``unknown`` (a call to a path that names no
service: the path itself is never a label); ``status`` the HTTP status code.

Several worker processes (``movement-cds serve --workers N``) share one set of metrics
through prometheus-client's multiprocess mode: ``serve`` creates a fresh directory for the
workers' metric files (``PROMETHEUS_MULTIPROC_DIR``, see ``multiprocess_directory``), marks
each worker that stops as dead (its counts stay; its release gauge goes) and removes the
directory when it exits. Whichever worker answers ``GET /metrics`` reads every worker's
files, so one scrape sees the whole host. One process (``--workers 1``) keeps its metrics in
memory.

prometheus-client is in the ``service`` extra; this module imports it at module level, like
the rest of the service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

__all__ = [
    "AUTH_REASONS",
    "CONTENT_TYPE",
    "INDICATORS",
    "MULTIPROC_ENV",
    "PRIORITIES",
    "RELOAD_OUTCOMES",
    "UNKNOWN_SERVICE",
    "Metrics",
    "auth_reason",
    "mark_worker_dead",
    "multiprocess_directory",
    "render",
]

log = logging.getLogger("movement_cds.service")

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_LEGACY_ENV: Final = "prometheus_multiproc_dir"  # prometheus-client still reads it too
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
UNKNOWN_SERVICE: Final = "unknown"
INDICATORS: Final = frozenset({"info", "warning", "critical"})
PRIORITIES: Final = frozenset({"stat", "asap", "urgent", "routine"})
RELOAD_OUTCOMES: Final = frozenset({"swapped", "refused", "changing", "error"})
FEEDBACK_OUTCOMES: Final = frozenset({"accepted", "overridden"})
OTHER: Final = "other"

# The reasons a client token is refused, from cds_service._auth's AuthError messages (the
# first pattern that matches wins); the message itself never becomes a label.
_AUTH_PATTERNS: Final = (
    ("missing", r"no Authorization header"),
    ("malformed", r"Authorization (header too long|is not)|not a three-part|malformed token"),
    ("header", r"header (typ|has no kid|'crit')|^alg "),
    ("issuer", r"^issuer .* not allowlisted"),
    ("audience", r"^aud "),
    ("signature", r"bad signature|unknown kid|^key .* is not a|token refused"),
    ("expired", r"token expired|exp too far|^exp |^iat |^nbf |not yet valid"),
    ("tenant", r"^tenant "),
    ("replay", r"jti already used"),
    ("jti", r"^jti "),
    ("replay-cache", r"replay cache|used-token"),
)
AUTH_REASONS: Final = frozenset({r for r, _ in _AUTH_PATTERNS} | {OTHER})
_AUTH_RE: Final = tuple((reason, re.compile(p)) for reason, p in _AUTH_PATTERNS)

# seconds: a cached answer takes milliseconds, a cold evaluation tens, fetching from a slow
# fhirServer up to the fetch budget (4 s by default)
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def auth_reason(message: str) -> str:
    """The closed-set reason (``AUTH_REASONS``) for an authentication failure's message."""
    for reason, pattern in _AUTH_RE:
        if pattern.search(message):
            return reason
    return OTHER


def _one_of(value: str | None, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


class Metrics:
    """The service's metric objects (one set per process: prometheus-client's values are
    per process, and in multiprocess mode backed by this process's files)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "movement_cds_"
        self.calls = Counter(p + "calls", "CDS Hooks calls answered, by service and HTTP "
                             "status", ["service", "status"], registry=registry)
        self.duration = Histogram(p + "call_duration_seconds", "Time to answer a CDS "
                                  "Hooks call", ["service"], buckets=_BUCKETS,
                                  registry=registry)
        self.cards = Counter(p + "cards", "Cards returned, by card indicator",
                             ["service", "indicator"], registry=registry)
        self.referrals = Counter(p + "referrals", "Referrals proposed, by priority",
                                 ["service", "priority"], registry=registry)
        self.holds = Counter(p + "red_flag_holds", "Calls whose plan holds all exercise "
                             "for a red flag", ["service"], registry=registry)
        self.precondition = Counter(p + "precondition_failed", "412 answers: data the "
                                    "evaluation needs could not be had", ["service"],
                                    registry=registry)
        self.auth_failures = Counter(p + "auth_failures", "Client tokens refused, by reason",
                                     ["reason"], registry=registry)
        self.feedback = Counter(p + "feedback", "Card feedback items stored, by outcome",
                                ["service", "outcome"], registry=registry)
        self.release = Gauge(p + "knowledge_base_info", "1 for the knowledge-base release "
                             "a live worker serves ({kb-id}@{version}, content digest)",
                             ["release", "digest"], multiprocess_mode="livemax",
                             registry=registry)
        self.reloads = Counter(p + "knowledge_base_reloads", "Knowledge-base reload checks "
                               "that found a new version, by outcome", ["outcome"],
                               registry=registry)

    # recording (every label value from a closed set)
    def call(self, service: str, status: int, seconds: float, cards: Sequence[Any] = (),
             referral_priorities: Sequence[str] = (), held: bool = False) -> None:
        self.calls.labels(service, str(status)).inc()
        self.duration.labels(service).observe(seconds)
        for card in cards:
            self.cards.labels(service, _one_of(card.get("indicator"), INDICATORS)).inc()
        for priority in referral_priorities:
            self.referrals.labels(service, _one_of(priority, PRIORITIES)).inc()
        if held:
            self.holds.labels(service).inc()
        if status == 412:
            self.precondition.labels(service).inc()

    def auth_failure(self, message: str) -> None:
        self.auth_failures.labels(auth_reason(message)).inc()

    def feedback_stored(self, service: str, outcomes: Sequence[str]) -> None:
        for outcome in outcomes:
            self.feedback.labels(service, _one_of(outcome, FEEDBACK_OUTCOMES)).inc()

    def serving(self, release: str, digest: str, old: tuple[str, str] | None = None) -> None:
        """This process now serves ``release`` (``old``: the one it served until now)."""
        if old is not None and old != (release, digest):
            self.release.labels(*old).set(0)
        self.release.labels(release, digest).set(1)

    def stopped_serving(self, release: str, digest: str) -> None:
        self.release.labels(release, digest).set(0)

    def reload(self, outcome: str) -> None:
        if outcome in RELOAD_OUTCOMES:
            self.reloads.labels(outcome).inc()


_process_metrics: Metrics | None = None


def process_metrics() -> Metrics:
    """This process's metrics, made on first use (apps made in one process share them)."""
    global _process_metrics
    if _process_metrics is None:
        _process_metrics = Metrics(CollectorRegistry(auto_describe=True))
    return _process_metrics


def render() -> bytes:
    """The Prometheus text exposition of this host: every worker's files in multiprocess
    mode, else this process's metrics."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(process_metrics().registry)


@contextlib.contextmanager
def multiprocess_directory(enabled: bool) -> Iterator[str | None]:
    """For ``serve --workers N``: a fresh directory for the workers' metric files, named in
    ``PROMETHEUS_MULTIPROC_DIR`` for the workers started inside this block, removed at the
    end. A directory inherited from the environment is never used (its files could be a
    previous run's): the variable is replaced, or removed when ``enabled`` is false."""
    for name in (MULTIPROC_ENV, _LEGACY_ENV):
        os.environ.pop(name, None)
    if not enabled:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="movement-cds-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    log.info("metrics: workers share %s (removed at exit)", directory)
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def mark_worker_dead(pid: int) -> None:
    """A worker stopped: its live gauges (the release it served) are dropped; its counts
    stay in the totals."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        with contextlib.suppress(OSError):
            _multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
