"""One client JWT, one use: across the workers of ``movement-cds serve --workers 2`` and
across a restart of the service (issue 13, finding 1).

Real parts only: the service as a subprocess on a loopback port with two worker processes,
the issuer's JWK Set served over HTTP on 127.0.0.1, ES384 tokens, fresh TCP connections held
open so that they are spread over both workers (counted in /proc), the replay cache and the
feedback store as SQLite files on disk."""

from __future__ import annotations

import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import STARTER_KB, free_port, start_service, stop_service
from tests.service.jwt_keys import SigningKey, claims, jwks, serving, token
from tests.service.test_balancer import _established
from tests.service.test_hooks_service import call

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="counts sockets per worker in /proc")

ISS = "https://ehr.example.org"
PV = "/cds-services/movement-cds-patient-view"
FEEDBACK = PV + "/feedback"
CONNECTIONS = 6


@dataclass
class Service:
    port: int
    config: Path
    log_path: Path
    feedback_db: Path
    replay_db: Path
    key: SigningKey

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, path: str) -> str:
        return token(self.key, claims(iss=ISS, aud=self.url + path))

    def start(self) -> Any:
        with self.log_path.open("ab") as log:
            proc = start_service(["--config", str(self.config), "--workers", "2"],
                                 self.port, timeout=120, log=log, any_answer=True)
        _wait(lambda: len(self.ready_workers()) >= 2, 120)
        return proc

    def ready_workers(self) -> list[int]:
        """Workers registered with the balancer and not gone since (this run's log)."""
        text = self.log_path.read_text(errors="replace")
        text = text.rsplit("Started parent process", 1)[-1]
        ready = [int(p) for p in re.findall(r"balancer: worker (\d+) ready", text)]
        left = {int(p) for p in re.findall(r"balancer: worker (\d+) left", text)}
        return [p for p in ready if p not in left]


def _wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    key = SigningKey("ES384")
    tmp = tmp_path_factory.mktemp("replay-workers")
    with serving(jwks(key)) as jwks_server:
        port = free_port()
        cfg = tmp / "service.toml"
        cfg.write_text("\n".join([
            "[service]", f'base_url = "http://127.0.0.1:{port}"',
            f'knowledge_base = "{STARTER_KB}"', f'database = "sqlite:///{tmp / "fb.db"}"',
            "", "[auth]", "required = true", "",
            "[[auth.issuers]]", f'iss = "{ISS}"', f'jwks_url = "{jwks_server.url}"', ""]))
        yield Service(port, cfg, tmp / "service.log", tmp / "fb.db",
                      tmp / "replay-cache.sqlite3", key)


def _fresh_connections(svc: Service) -> list[httpx.Client]:
    """``CONNECTIONS`` clients, each on its own TCP connection, each used once with a token
    of its own so the connection is open (and handed to a worker) before the test."""
    clients = []
    for _ in range(CONNECTIONS):
        c = httpx.Client(base_url=svc.url, timeout=30, trust_env=False,
                         limits=httpx.Limits(max_connections=1))
        r = c.get("/cds-services",
                  headers={"Authorization": f"Bearer {svc.token('/cds-services')}"})
        assert r.status_code == 200, r.text
        clients.append(c)
    return clients


def _same_token_everywhere(clients: list[httpx.Client], method: str, path: str,
                           tok: str, body: dict[str, Any]) -> list[int]:
    """Send one token on every connection at once; the HTTP statuses."""
    statuses: list[int] = []
    barrier = threading.Barrier(len(clients), timeout=30)

    def send(c: httpx.Client) -> None:
        barrier.wait()
        r = c.request(method, path, json=body, headers={"Authorization": f"Bearer {tok}"})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sorted(statuses)


def test_one_token_one_use_across_workers_and_a_restart(service: Service) -> None:
    proc = service.start()
    try:
        workers = service.ready_workers()
        clients = _fresh_connections(service)
        # the connections really are on both workers
        per_worker = [_established(pid, service.port) for pid in workers]
        assert sorted(per_worker) == [CONNECTIONS // 2, CONNECTIONS // 2], per_worker

        advice_token = service.token(PV)
        assert _same_token_everywhere(clients, "POST", PV, advice_token, call()) == \
            [200] + [401] * (CONNECTIONS - 1)

        # feedback on a card: one feedback token stores it once
        r = clients[0].post(PV, json=call(),
                            headers={"Authorization": f"Bearer {service.token(PV)}"})
        card = r.json()["cards"][0]["uuid"]
        feedback = {"feedback": [{"card": card, "outcome": "overridden",
                                  "outcomeTimestamp": "2026-11-02T09:00:00Z"}]}
        fb_token = service.token(FEEDBACK)
        assert _same_token_everywhere(clients, "POST", FEEDBACK, fb_token, feedback) == \
            [200] + [401] * (CONNECTIONS - 1)
        for c in clients:
            c.close()
    finally:
        stop_service(proc)
    assert service.replay_db.is_file()  # next to the feedback database (the default)

    proc = service.start()  # a restart within the tokens' lifetime
    try:
        with httpx.Client(base_url=service.url, timeout=30, trust_env=False) as c:
            again = c.post(PV, json=call(), headers={"Authorization": f"Bearer {advice_token}"})
            assert again.status_code == 401, again.text
            again = c.post(FEEDBACK, json=feedback,
                           headers={"Authorization": f"Bearer {fb_token}"})
            assert again.status_code == 401, again.text
            fresh = c.post(PV, json=call(),
                           headers={"Authorization": f"Bearer {service.token(PV)}"})
            assert fresh.status_code == 200, fresh.text
    finally:
        stop_service(proc)

    with sqlite3.connect(service.feedback_db) as db:
        (stored,) = db.execute("SELECT count(*) FROM feedback WHERE card_uuid = ?",
                               (card,)).fetchone()
    assert stored == 1
    text = service.log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert advice_token not in text and fb_token not in text
    assert f"used-token (jti) cache: {service.replay_db}" in text
