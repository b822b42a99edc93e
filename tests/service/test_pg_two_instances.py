"""Two service hosts, one PostgreSQL (issue 18 part 2): two separate ``movement-cds serve``
processes on two loopback ports, configured as two hosts behind one load balancer (same
public ``base_url``, same issuer), sharing one database. A token used on one is refused on
the other (the shared used-token cache), and the feedback given on both is in one report.

Real parts only: the throwaway PostgreSQL cluster, the services as subprocesses, ES384
tokens checked against a JWK Set file, the report command as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.service.conftest import ROOT, STARTER_KB, free_port, start_service, stop_service
from tests.service.jwt_keys import SigningKey, claims, jwks, token
from tests.service.test_hooks_service import call

PUBLIC = "https://cds.example.org"  # what the EHR calls: the load balancer
ISS = "https://ehr.example.org"
PV = "/cds-services/movement-cds-patient-view"


def host_config(directory: Path, database: str, jwks_file: Path) -> Path:
    directory.mkdir()
    cfg = directory / "service.toml"
    cfg.write_text("\n".join([
        "[service]", f'base_url = "{PUBLIC}"', f'knowledge_base = "{STARTER_KB}"',
        f'database = "{database}"', "", "[auth]", "required = true", "",
        "[[auth.issuers]]", f'iss = "{ISS}"', f'jwks_file = "{jwks_file}"', ""]))
    return cfg


@pytest.fixture
def two_hosts(postgres_url: str, tmp_path: Path) -> Iterator[tuple[list[str], SigningKey]]:
    key = SigningKey("ES384")
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(jwks(key)))
    procs: list[Any] = []
    urls = []
    try:
        for name in ("host-a", "host-b"):
            port = free_port()
            cfg = host_config(tmp_path / name, postgres_url, keys)
            procs.append(start_service(["--config", str(cfg)], port, timeout=120,
                                       any_answer=True))
            urls.append(f"http://127.0.0.1:{port}")
        yield urls, key
    finally:
        for p in procs:
            stop_service(p)  # SIGTERM: each drains its feedback queue into the database


def bearer(key: SigningKey, path: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token(key, claims(iss=ISS, aud=PUBLIC + path))}


def feedback(card: dict[str, Any], outcome: str) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card["uuid"], "outcome": outcome,
                            "outcomeTimestamp": "2026-11-02T09:05:00Z"}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    else:
        item["overrideReason"] = {"reason": card["overrideReasons"][0]}
    return {"feedback": [item]}


@pytest.mark.slow
def test_two_instances_share_one_postgresql(
        two_hosts: tuple[list[str], SigningKey], postgres_url: str) -> None:
    (a, b), key = two_hosts
    used = bearer(key, PV)
    first, second = call(), call()
    with httpx.Client(timeout=60, trust_env=False) as http:
        r = http.post(a + PV, json=first, headers=used)
        assert r.status_code == 200, r.text
        replayed = http.post(b + PV, json=call(), headers=used)  # the same token, host B
        assert replayed.status_code == 401
        assert replayed.json()["issue"] == [{"severity": "error", "code": "login"}]
        r2 = http.post(b + PV, json=second, headers=bearer(key, PV))  # a fresh one: fine
        assert r2.status_code == 200, r2.text
        again = http.post(a + PV, json=call(), headers=used)  # and not back on A either
        assert again.status_code == 401
        cards_a, cards_b = r.json()["cards"], r2.json()["cards"]
        plan, ces = cards_a[-1], cards_b[0]
        for host, card, outcome in ((a, plan, "accepted"), (b, ces, "overridden")):
            fb = http.post(host + PV + "/feedback", json=feedback(card, outcome),
                           headers=bearer(key, PV + "/feedback"))
            assert fb.status_code == 200 and fb.json() == {"stored": 1}, fb.text
    with psycopg.connect(postgres_url) as conn:
        jtis = conn.execute("SELECT count(*) FROM used_token").fetchone()
        audited = dict(conn.execute("SELECT hook_instance, cards FROM audit_record").fetchall())
    assert jtis is not None and jtis[0] == 4  # every token that passed, once
    assert {first["hookInstance"], second["hookInstance"]} <= set(audited)  # both hosts
    plan_rules = next(c["rules"] for c in json.loads(audited[first["hookInstance"]])
                      if c["uuid"] == plan["uuid"])
    report = wait_for_report(postgres_url, expected=2)
    rules = {r["rule"]: r for r in report["rules"]}
    assert rules["RF-01-CES"]["overridden"] == 1  # given on host B
    assert rules["RF-01-CES"]["overrideReasons"] == [{**ces["overrideReasons"][0],
                                                      "count": 1}]
    assert plan_rules and all(rules[p]["accepted"] == 1 for p in plan_rules)  # on host A


def wait_for_report(url: str, expected: int) -> dict[str, Any]:
    """The report once both hosts' queued feedback is in the database (bounded wait)."""
    import time

    deadline = time.monotonic() + 30
    while True:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM feedback").fetchone()
        if (row is not None and row[0] >= expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    done = subprocess.run([sys.executable, "-m", "movement_cds", "feedback", "report",
                           "--database", url, "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]
