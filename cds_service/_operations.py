"""What operators see of the CDS Hooks service: health, readiness, metrics, call log.

Routes (outside the CDS Hooks paths; no client token: a load balancer, an orchestrator and
Prometheus have none; nothing about any patient in any answer):

``GET /healthz``   200 ``{"status": "ok"}`` while the process answers HTTP at all
``GET /readyz``    200 when this worker can give advice: its knowledge base is loaded and
                   passed its scenario tests, and the feedback database (when configured)
                   answers; else 503 naming the checks that failed, e.g.
                   ``{"status": "not ready", "failed": ["database"], "checks": {...}}``
``GET /metrics``   Prometheus text (``cds_service._metrics``) when ``[metrics] enabled``
                   (the default), to client addresses in ``[metrics] allow_from`` (default:
                   loopback only); 403 to any other address, 404 when disabled

The call log (``[logging] call_log = true``): one JSON object per CDS Hooks call, one line,
on the ``movement_cds.calls`` logger (``movement-cds serve`` writes it to standard output,
the other logs go to standard error)::

    {"event": "cds-call", "time": "2026-11-02T09:00:00.123Z", "service": "...",
     "hookInstance": "<uuid>", "status": 200, "code": null, "durationMs": 12.3,
     "release": "lbp-kb@2.0.0", "cards": 2, "worker": 4711}

``hookInstance`` only when it is a UUID (anything else the caller sent is never written),
``service`` one of the service ids or ``unknown``, ``code`` the OperationOutcome issue code
of an error answer. Never a token, a patient or user id, a name, a date of birth or any
clinical value.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from cds_service._errors import ApiError
from cds_service._metrics import CONTENT_TYPE, Metrics, process_metrics, render

__all__ = ["CALL_LOGGER", "CallRecord", "Observer", "add_operations_routes"]

log = logging.getLogger("movement_cds.service")
CALL_LOGGER: Final = "movement_cds.calls"
call_log = logging.getLogger(CALL_LOGGER)
PING_TIMEOUT: Final = 2.0  # seconds /readyz waits for the database
R = TypeVar("R")


@dataclass
class CallRecord:
    """What one CDS Hooks call did, filled in as it goes (ids, codes and counts only)."""

    service: str
    hook_instance: str | None = None
    status: int = 500
    code: str | None = None
    release: str | None = None
    cards: Sequence[dict[str, Any]] = ()
    referral_priorities: Sequence[str] = ()
    held: bool = False


class Observer:
    """Metrics and the call log of one app; ``metrics`` None: no metrics recorded."""

    def __init__(self, metrics: Metrics | None, call_log_on: bool) -> None:
        self.metrics = metrics
        self.call_log_on = call_log_on

    @classmethod
    def from_config(cls, config: Any) -> Observer:
        return cls(process_metrics() if config.metrics_enabled else None, config.call_log)

    async def observe(self, call: CallRecord, answer: Awaitable[R]) -> R:
        """Await ``answer`` (a CDS Hooks call's response), then count and log the call:
        its status from the response, or from the ``ApiError`` (any other error: 500)."""
        started = time.perf_counter()
        try:
            response = await answer
            call.status = getattr(response, "status_code", 200)
            return response
        except ApiError as e:
            call.status, call.code = e.status, e.code
            raise
        except Exception:
            call.status, call.code = 500, "exception"
            raise
        finally:
            self.call_finished(call, time.perf_counter() - started)

    def call_finished(self, call: CallRecord, seconds: float) -> None:
        """Never raises: bookkeeping must not change an answer."""
        try:
            if self.metrics is not None:
                self.metrics.call(call.service, call.status, seconds, call.cards,
                                  call.referral_priorities, call.held)
            if self.call_log_on:
                call_log.info("%s", _call_line(call, seconds))
        except Exception as e:
            log.warning("call bookkeeping failed (%s)", type(e).__name__)

    def auth_failed(self, message: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failure(message)

    def feedback_stored(self, service: str, items: Sequence[dict[str, Any]]) -> None:
        if self.metrics is not None:
            self.metrics.feedback_stored(service, [str(i.get("outcome")) for i in items])

    def serving(self, release: str, digest: str, old: tuple[str, str] | None = None) -> None:
        if self.metrics is not None:
            self.metrics.serving(release, digest, old)

    def stopped_serving(self, release: str, digest: str) -> None:
        if self.metrics is not None:
            self.metrics.stopped_serving(release, digest)

    def reload(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reload(outcome)


def _call_line(call: CallRecord, seconds: float) -> str:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({
        "event": "cds-call", "time": now, "service": call.service,
        "hookInstance": call.hook_instance, "status": call.status, "code": call.code,
        "durationMs": round(seconds * 1000, 1), "release": call.release,
        "cards": len(call.cards), "worker": os.getpid()}).decode()


# --- routes ---------------------------------------------------------------------------------

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def _allowed(host: str | None, networks: Networks) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in n for n in networks)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


async def _database_check(store: Any) -> str:
    if store is None:
        return "not configured"
    ping = getattr(store, "ping", None)
    if not callable(ping):
        return "ok"
    try:
        await asyncio.wait_for(asyncio.to_thread(ping), PING_TIMEOUT)
    except TimeoutError:
        return f"failed: no answer within {PING_TIMEOUT:g} s"
    except Exception as e:
        return f"failed: {type(e).__name__}"
    return "ok"


def add_operations_routes(app: FastAPI, *, engine: Callable[[], Any], store: Any,
                          metrics_enabled: bool, allow_from: Networks,
                          forbidden: Callable[[str], Response]) -> None:
    """``/healthz``, ``/readyz`` and ``/metrics`` (see the module docstring). ``engine``
    gives the live engine; ``forbidden`` builds the 403 answer (an OperationOutcome)."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        current = engine()
        checks = {
            "knowledgeBase": "ok" if current is not None else "failed: not loaded",
            "scenarios": "ok" if getattr(current, "scenarios_passed", False)
            else "failed: the scenario tests were not run or did not pass",
            "database": await _database_check(store),
        }
        failed = [k for k, v in checks.items() if v.startswith("failed")]
        if failed:
            return _json({"status": "not ready", "failed": failed, "checks": checks}, 503)
        return _json({"status": "ready", "release": current.kb.ruleset_name,
                      "checks": checks})

    if not metrics_enabled:
        return  # no route: the app's 404 OperationOutcome

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        client = request.client.host if request.client else None
        if not _allowed(client, allow_from):
            return forbidden("metrics are not available to this address "
                             "([metrics] allow_from)")
        body = await asyncio.to_thread(render)
        return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
