"""Fixtures for the CDS Hooks service: the service under uvicorn on a loopback port, a tiny
FHIR server on loopback, and a checker for C1 (nothing null or empty) on every response."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTER_KB = ROOT / "tests" / "fixtures" / "starter-kb"
EXAMPLES = ROOT / "examples"
FHIR_TOKEN = "fhir-test-token"


def c1_violations(v: Any, path: str = "$") -> list[str]:
    """Every null, "", [] or {} in a JSON value (``"cards": []`` at the top is allowed)."""
    out: list[str] = []
    if v is None or v == "" or v == [] or v == {}:
        return [path]
    if isinstance(v, dict):
        for k, x in v.items():
            if path == "$" and k == "cards" and x == []:
                continue
            out += c1_violations(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += c1_violations(x, f"{path}[{i}]")
    return out


def check_response(r: httpx.Response) -> httpx.Response:
    """C1 on every JSON body; C21: every non-2xx body is an OperationOutcome."""
    body = r.json()
    assert c1_violations(body) == [], (r.status_code, c1_violations(body))
    if not 200 <= r.status_code < 300:
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"], body
    return r


class CheckedClient:
    """An httpx client whose every response is checked for C1 and C21."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return check_response(self.client.get(url, **kw))

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return check_response(self.client.post(url, **kw))

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return check_response(self.client.request(method, url, **kw))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())  # type: ignore[no-any-return]


def resources(name: str, rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in example(name)["entry"]
            if e["resource"]["resourceType"] == rtype]


def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
    b: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(items)}
    if items:
        b["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in items]
    return b


# --- a tiny FHIR server ---------------------------------------------------------------------


class FhirData:
    def __init__(self) -> None:
        self.resources: dict[str, list[dict[str, Any]]] = {}
        self.page_size = 4
        self.requests: list[str] = []
        self.delay = 0.0

    def load(self, example_name: str) -> None:
        self.resources = {}
        for e in example(example_name)["entry"]:
            r = e["resource"]
            self.resources.setdefault(r["resourceType"], []).append(r)


def _handler(data: FhirData) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def send(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            data.requests.append(self.path)
            if data.delay:
                time.sleep(data.delay)
            if self.headers.get("Authorization") != f"Bearer {FHIR_TOKEN}":
                self.send(401, {"resourceType": "OperationOutcome",
                                "issue": [{"severity": "error", "code": "login"}]})
                return
            u = urlsplit(self.path)
            parts = [p for p in u.path.split("/") if p][1:]  # drop the "fhir" base
            q = parse_qs(u.query)
            if len(parts) == 2:
                for r in data.resources.get(parts[0], []):
                    if r.get("id") == parts[1]:
                        self.send(200, r)
                        return
                self.send(404, {"resourceType": "OperationOutcome",
                                "issue": [{"severity": "error", "code": "not-found"}]})
                return
            items = [r for r in data.resources.get(parts[0], [])
                     if r.get("subject", {}).get("reference")
                     == f"Patient/{q.get('patient', [''])[0]}"]
            offset = int(q.get("_offset", ["0"])[0])
            page = items[offset:offset + data.page_size]
            body = searchset(page)
            body["total"] = len(items)
            base = f"http://{self.headers['Host']}{u.path}"
            if offset + data.page_size < len(items):
                body["link"] = [{"relation": "next", "url":
                                 f"{base}?patient={q['patient'][0]}&_offset="
                                 f"{offset + data.page_size}"}]
            self.send(200, body)

    return Handler


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[tuple[str, FhirData]]:
    data = FhirData()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(data))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir", data
    finally:
        server.shutdown()
        server.server_close()


# --- the service under uvicorn --------------------------------------------------------------


def write_config(path: Path, port: int, *, fhir_servers: tuple[str, ...] = (),
                 **service: Any) -> Path:
    """A service config; ``fhir_servers``: URLs whose origins go in [fhir] allowed_servers."""
    lines = ["[service]", f'base_url = "http://127.0.0.1:{port}"',
             f'knowledge_base = "{STARTER_KB}"', "max_body_bytes = 200000",
             "fhir_timeout_seconds = 2.0", "fetch_budget_seconds = 3.0", "max_pages = 5"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in service.items()]
    origins = [f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in fhir_servers]
    lines += ["", "[fhir]", f"allowed_servers = {json.dumps(origins)}"]
    lines += ["", "[auth]", "required = false", ""]
    path.write_text("\n".join(lines))
    return path


def start_service(args: list[str], port: int, timeout: float = 60.0, *,
                  log: IO[bytes] | None = None, any_answer: bool = False
                  ) -> subprocess.Popen[bytes]:
    """Start ``movement-cds serve`` on loopback and wait (bounded) until it answers.

    ``log``: where its output goes (default: a pipe). ``any_answer``: ready on any HTTP
    answer (a service requiring auth answers 401 without a token), not only on 200.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out: IO[bytes] | int = log if log is not None else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "movement_cds", "serve", *args, "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=out, stderr=log if log is not None else subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"service exited with {proc.returncode}:\n{text}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/cds-services", timeout=1)
            if any_answer or r.status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait(10)
    raise RuntimeError("service did not start in time")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture(scope="session")
def service_url(tmp_path_factory: pytest.TempPathFactory,
                fhir_server: tuple[str, FhirData]) -> Iterator[str]:
    port = free_port()
    cfg = write_config(tmp_path_factory.mktemp("svc") / "service.toml", port,
                       fhir_servers=(fhir_server[0],))
    proc = start_service(["--config", str(cfg), "--insecure-no-auth"], port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_service(proc)


@pytest.fixture(scope="session")
def client(service_url: str) -> Iterator[CheckedClient]:
    with httpx.Client(base_url=service_url, timeout=20) as c:
        yield CheckedClient(c)


# --- PostgreSQL (issue 18): a throwaway cluster for the session, a fresh database per test ---
from tests.service.pg_cluster import postgres_server, postgres_url  # noqa: E402, F401
