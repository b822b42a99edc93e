"""Bad input and bad clients against the real service on loopback (issue 13, findings 6, 8,
9, 11, 12 and part 5): every answer is an OperationOutcome, never a 500, a redirect or a
traceback; half-sent requests are closed after the read timeout; a client that goes away
mid-body is one INFO line."""

from __future__ import annotations

import gzip
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import (
    check_response,
    free_port,
    resources,
    searchset,
    start_service,
    stop_service,
    write_config,
)

PV = "/cds-services/movement-cds-patient-view"
READ_TIMEOUT = 2.0


class Service:
    def __init__(self, url: str, port: int, log: Path) -> None:
        self.url, self.port, self.log = url, port, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    port = free_port()
    d = tmp_path_factory.mktemp("robust")
    cfg = write_config(d / "service.toml", port)
    log = d / "service.log"
    with log.open("wb") as fh:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--read-timeout",
                              str(READ_TIMEOUT)], port, log=fh)
        try:
            yield Service(f"http://127.0.0.1:{port}", port, log)
        finally:
            stop_service(proc)


def body_for(name: str = "cauda-equina.json") -> dict[str, Any]:
    pid = resources(name, "Patient")[0]["id"]
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/p1", "patientId": pid},
            "prefetch": {"patient": resources(name, "Patient")[0],
                         "observations": searchset(resources(name, "Observation")),
                         "conditions": searchset(resources(name, "Condition")),
                         "careplan": None}}


def post_raw(svc: Service, raw: bytes, path: str = PV, **headers: str) -> httpx.Response:
    h = {"Content-Type": "application/json", **headers}
    return check_response(httpx.post(svc.url + path, content=raw, headers=h, timeout=30))


def outcome_issue(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    issue: dict[str, Any] = r.json()["issue"][0]
    return issue


# --- findings 8 and 9: invalid Unicode, duplicate keys ------------------------------------


def test_lone_surrogate_in_prefetch_is_400_naming_where(svc: Service) -> None:
    body = body_for()
    body["prefetch"]["observations"]["entry"][2]["resource"]["subject"]["display"] = "MARK"
    raw = json.dumps(body).replace('"MARK"', '"\\ud800"').encode()
    issue = outcome_issue(post_raw(svc, raw), 400)
    assert issue["expression"] == ["prefetch.observations.entry[2].resource.subject.display"]
    assert "lone surrogate" in issue["diagnostics"]


def test_invalid_utf8_is_400(svc: Service) -> None:
    raw = json.dumps(body_for()).encode().replace(b'"patient-view"', b'"patient-\xffview"', 1)
    issue = outcome_issue(post_raw(svc, raw), 400)
    assert "not valid UTF-8" in issue["diagnostics"]


@pytest.mark.parametrize("key", ["subject", "valueBoolean"])
def test_duplicate_key_in_prefetch_is_400_naming_where(svc: Service, key: str) -> None:
    body = body_for()
    entries = body["prefetch"]["observations"]["entry"]
    i = next(i for i, e in enumerate(entries) if key in e["resource"])
    text = json.dumps(body)
    first = json.dumps({key: entries[i]["resource"][key]})[1:-1]
    # the i-th resource's key, written twice (the second with another value)
    pos = 0
    for _ in range(i + 1):
        pos = text.index(first, pos) + 1
    other = json.dumps({key: {"reference": "Patient/other"} if key == "subject" else False})
    raw = (text[:pos - 1] + first + ", " + other[1:-1] + text[pos - 1 + len(first):]).encode()
    issue = outcome_issue(post_raw(svc, raw), 400)
    assert issue["expression"] == [f"prefetch.observations.entry[{i}].resource.{key}"]
    assert issue["code"] == "structure"


def test_duplicate_key_in_feedback_is_400(svc: Service) -> None:
    raw = (b'{"feedback": [{"card": "a", "outcome": "accepted", "outcome": "overridden",'
           b' "outcomeTimestamp": "2026-11-02T09:00:00Z"}]}')
    issue = outcome_issue(post_raw(svc, raw, PV + "/feedback"), 400)
    assert issue["expression"] == ["feedback[0].outcome"]


# --- part 5: compressed bodies, trailing slash ---------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, identity"])
def test_compressed_request_body_is_415(svc: Service, encoding: str) -> None:
    raw = gzip.compress(json.dumps(body_for()).encode())
    r = post_raw(svc, raw, **{"Content-Encoding": encoding})
    outcome_issue(r, 415)
    assert r.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("path", [PV + "/", "/cds-services/", PV + "/feedback/"])
def test_trailing_slash_is_404_without_redirect(svc: Service, path: str) -> None:
    r = httpx.post(svc.url + path, json=body_for(), timeout=30,
                   headers={"Host": "evil.example"}, follow_redirects=False)
    check_response(r)
    outcome_issue(r, 404)
    assert "location" not in r.headers


# --- finding 12: the HTTP layer's own answers; client disconnects --------------------------


def raw_exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; (what it sent, seconds until closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        started = time.monotonic()
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got, time.monotonic() - started
            got += chunk


def parse_raw(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("request_bytes", [
    b"POST " + PV.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST " + PV.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    b"GET /cds-services HTTP/1.1\r\nHost x\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
])
def test_malformed_http_gets_an_operation_outcome(svc: Service, request_bytes: bytes) -> None:
    answer, _ = raw_exchange(svc.port, request_bytes)
    status, headers, body = parse_raw(answer)
    assert status == 400
    assert headers["content-type"] == "application/fhir+json"
    assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_client_disconnect_mid_body_is_one_info_line(svc: Service) -> None:
    before = svc.log_text()
    with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as s:
        s.sendall(b"POST " + PV.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"hook\":")
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "client disconnected" not in svc.log_text()[
            len(before):]:
        time.sleep(0.1)
    new = svc.log_text()[len(before):]
    assert new.count("client disconnected") == 1, new
    assert "INFO" in next(line for line in new.splitlines() if "client disconnected" in line)
    assert "Traceback" not in new and "ERROR" not in new, new


# --- finding 11: slow or half-sent requests ------------------------------------------------


def test_half_sent_headers_are_closed_after_the_read_timeout(svc: Service) -> None:
    answer, took = raw_exchange(
        svc.port, b"POST " + PV.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",
        wait=READ_TIMEOUT + 10)
    assert READ_TIMEOUT - 0.2 <= took <= READ_TIMEOUT + 1.5, took
    status, _headers, body = parse_raw(answer)
    assert status == 408
    assert json.loads(body)["issue"][0]["code"] == "timeout"


def test_silent_connection_is_closed_after_the_read_timeout(svc: Service) -> None:
    answer, took = raw_exchange(svc.port, b"", wait=READ_TIMEOUT + 10)
    assert READ_TIMEOUT - 0.2 <= took <= READ_TIMEOUT + 1.5, took
    assert parse_raw(answer)[0] == 408


def test_half_sent_body_is_closed_after_the_read_timeout(svc: Service) -> None:
    head = (b"POST " + PV.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    answer, took = raw_exchange(svc.port, head + b'{"hook": "pat', wait=READ_TIMEOUT + 10)
    assert READ_TIMEOUT - 0.2 <= took <= READ_TIMEOUT + 1.5, took
    assert b" 500 " not in answer


def test_a_slow_but_steady_trickle_is_also_bounded(svc: Service) -> None:
    """One byte every 0.3 s keeps no timer of uvicorn's reset forever: the whole request
    must arrive within the read timeout."""
    req = b"GET /cds-services HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    with socket.create_connection(("127.0.0.1", svc.port), timeout=READ_TIMEOUT + 10) as s:
        started = time.monotonic()
        closed = False
        for b in req:
            try:
                s.sendall(bytes([b]))
            except OSError:
                closed = True
                break
            s.settimeout(0.3)
            try:
                if s.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:  # closed with our unread bytes in its buffer: RST
                closed = True
                break
        took = time.monotonic() - started
    assert closed
    assert took <= READ_TIMEOUT + 1.5, took


def test_requests_that_arrive_in_time_are_answered(svc: Service) -> None:
    """Keep-alive connection, two calls: the read timeout does not touch a normal client."""
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        for _ in range(2):
            r = c.post(PV, json=body_for())
            assert r.status_code == 200, r.text
            time.sleep(READ_TIMEOUT / 2)
        assert c.get("/cds-services").status_code == 200


def test_no_traceback_in_the_log(svc: Service) -> None:
    text = svc.log_text()
    assert "Traceback" not in text, text[-3000:]
    assert "Exception in ASGI application" not in text


@pytest.mark.parametrize("balanced", [True, False])
def test_read_timeout_applies_in_every_worker_process_model(tmp_path: Path,
                                                            balanced: bool) -> None:
    """``--workers 2`` with the connection balancer and with uvicorn's shared accept: the
    protocol (and its timeout) reaches the worker processes."""
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port, balance_connections=balanced)
    with (tmp_path / "service.log").open("wb") as fh:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--workers", "2",
                              "--read-timeout", "1.5"], port, log=fh, timeout=120)
        try:
            for _ in range(2):  # most likely both workers
                answer, took = raw_exchange(port, b"GET /cds-services HTTP/1.1\r\nHost: x\r\n",
                                            wait=15)
                assert 1.3 <= took <= 3.0, took
                assert parse_raw(answer)[0] == 408
            answer, _ = raw_exchange(port, b"GET /cds-services HTTP/1.1\r\nHost x\r\n\r\n")
            assert parse_raw(answer)[1]["content-type"] == "application/fhir+json"
        finally:
            stop_service(proc)
