"""What the service may do with a request's ``fhirServer`` (issue 13, findings 2-5).

The service runs as a subprocess on loopback (one worker, so its memory is the process's).
Two HTTP servers on 127.0.0.1, each its own origin: a "hostile" one that is on
``[fhir] allowed_servers`` and misbehaves in one way per base path (a gzip bomb, redirects,
paging links that climb out of the base path, HTML, 404, slowness), and a "canary" that is
not on the list and records every request that reaches it (there must be none)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service._prefetch import _Fetcher, _FetchFailed
from tests.service.conftest import (
    FHIR_TOKEN,
    STARTER_KB,
    free_port,
    searchset,
    start_service,
    stop_service,
)
from tests.service.test_hooks_service import call

PV = "/cds-services/movement-cds-patient-view"
BOMB_INFLATED = 300 * 1024 * 1024  # what the gzip answer inflates to
SECRET = "/secret/admin"


def _gzip_bomb() -> bytes:
    """~300 KB of gzip that inflates to 300 MB of zeros (made in 1 MB steps)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1024 * 1024)
    out = [z.compress(block) for _ in range(BOMB_INFLATED // len(block))]
    out.append(z.flush())
    return b"".join(out)


@dataclass
class Recorder:
    """Every request a server saw: path and Authorization header."""

    seen: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, auth: str | None) -> None:
        with self.lock:
            self.seen.append((path, auth))

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _a in self.seen]


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _hostile_handler(record: Recorder, bomb: bytes, canary: str
                     ) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10

        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, status: int, body: bytes, ctype: str = "application/fhir+json",
                   **headers: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the service gave up on us: that is the point
                pass

        def fhir(self, value: dict[str, Any]) -> None:
            self.answer(200, json.dumps(value).encode())

        def do_GET(self) -> None:
            record.add(self.path, self.headers.get("Authorization"))
            mode = self.path.split("/")[1]
            page = "page=2" in self.path
            if mode == "bomb":
                self.answer(200, bomb, Content_Encoding="gzip")
            elif mode == "dupkeys":  # a searchset whose total says two things
                self.answer(200, b'{"resourceType": "Bundle", "type": "searchset", '
                                 b'"type": "collection", "entry": []}')
            elif mode == "surrogate":
                self.answer(200, b'{"resourceType": "Bundle", "type": "searchset", '
                                 b'"id": "x\\ud800", "entry": []}')
            elif mode == "html":
                self.answer(200, b"<html><body>router admin</body></html>", "text/html")
            elif mode in ("notfound", "unauthorized", "error"):
                status = {"notfound": 404, "unauthorized": 401, "error": 500}[mode]
                self.answer(status, b'{"resourceType":"OperationOutcome"}')
            elif mode == "slow":
                time.sleep(2.5)
                self.fhir(searchset([]))
            elif mode == "redirect-out":
                self.answer(302, b"", Location=f"{canary}/fhir/Observation?x=1")
            elif mode == "redirect-in":
                if "moved" in self.path:
                    self.fhir(searchset([]))
                else:
                    self.answer(307, b"", Location="/redirect-in/fhir/moved/Observation")
            elif mode.startswith("page-") and not page:
                links = {
                    "page-out": f"{canary}/fhir/Observation?page=2",
                    "page-dotdot": f"http://{self.headers['Host']}/page-dotdot/fhir/../../"
                                   "secret/admin?page=2",
                    "page-encoded": "/page-encoded/fhir/%2e%2e/%2E%2E/secret/admin?page=2",
                    "page-slash": "/page-slash/fhir/..%2f..%2fsecret/admin?page=2",
                    "page-inside": "/page-inside/fhir/x/../Observation?page=2",
                    "page-slow": "/page-slow/fhir/Observation?page=2",
                }
                body = searchset([])
                body["link"] = [{"relation": "next", "url": links[mode]}]
                if mode == "page-slow":
                    time.sleep(0.8)
                self.fhir(body)
            elif mode == "page-slow":
                time.sleep(0.8)
                body = searchset([])
                body["link"] = [{"relation": "next", "url": self.path}]
                self.fhir(body)
            else:
                self.fhir(searchset([]))

    return Handler


def _canary_handler(record: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            record.add(self.path, self.headers.get("Authorization"))
            body = json.dumps(searchset([])).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@dataclass
class World:
    service: str
    pid: int
    log_path: Path
    hostile: str
    canary: str
    closed: str
    hostile_seen: Recorder
    canary_seen: Recorder
    client: httpx.Client

    def call(self, server: str, *, missing: str = "observations",
             prefetch: dict[str, Any] | None = None) -> httpx.Response:
        body = call(fhirServer=server,
                    fhirAuthorization={"access_token": FHIR_TOKEN, "token_type": "Bearer",
                                       "expires_in": 300, "scope": "patient/*.read",
                                       "subject": "movement-cds"})
        if missing:
            del body["prefetch"][missing]
        body["prefetch"].update(prefetch or {})
        return self.client.post(PV, json=body)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fhir-access")
    hostile_seen, canary_seen = Recorder(), Recorder()
    canary_server, canary = _serve(_canary_handler(canary_seen))
    hostile_server, hostile = _serve(_hostile_handler(hostile_seen, _gzip_bomb(), canary))
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    cfg = tmp / "service.toml"
    cfg.write_text("\n".join([
        "[service]", f'base_url = "http://127.0.0.1:{port}"', f'knowledge_base = "{STARTER_KB}"',
        "fhir_timeout_seconds = 1.0", "fetch_budget_seconds = 3.0", "max_pages = 5", "",
        "[fhir]", f'allowed_servers = ["{hostile}/", "{closed}"]', "",
        "[auth]", "required = false", ""]))
    log_path = tmp / "service.log"
    with log_path.open("wb") as log:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth"], port, log=log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          trust_env=False) as client:
            yield World(f"http://127.0.0.1:{port}", proc.pid, log_path, hostile, canary,
                        closed, hostile_seen, canary_seen, client)
    finally:
        stop_service(proc)
        hostile_server.shutdown()
        canary_server.shutdown()
    text = log_path.read_text(errors="replace")
    assert FHIR_TOKEN not in text  # the fhirAuthorization token is never logged
    assert "Traceback" not in text, text[-3000:]


def _diagnostics(r: httpx.Response) -> str:
    assert r.status_code == 412, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "incomplete"
    return str(issue["diagnostics"])


# --- finding 2: allowlist; the token goes nowhere else -----------------------------------------


def test_a_server_not_on_the_list_is_never_contacted(world: World) -> None:
    # everything prefetched: answered as if fhirServer were absent
    r = world.call(f"{world.canary}/fhir", missing="")
    assert r.status_code == 200, r.text
    # something missing: the 412 of a call without fhirServer
    r = world.call(f"{world.canary}/fhir")
    assert "there is no fhirServer this service may read it from" in _diagnostics(r)
    # the same host on another port is another origin
    r = world.call(world.canary.replace("127.0.0.1", "localhost") + "/fhir")
    assert r.status_code == 412
    assert world.canary_seen.paths() == []
    assert "not in [fhir] allowed_servers: not contacted" in world.log_path.read_text()


def test_the_token_is_sent_only_to_the_allowed_origin(world: World) -> None:
    for mode in ("redirect-out", "page-out"):
        r = world.call(f"{world.hostile}/{mode}/fhir")
        _diagnostics(r)
    assert world.canary_seen.paths() == []  # neither a redirect nor a link reached it
    tokens = {a for p, a in world.hostile_seen.seen}
    assert tokens <= {f"Bearer {FHIR_TOKEN}"}


def test_a_redirect_within_the_server_is_followed(world: World) -> None:
    r = world.call(f"{world.hostile}/redirect-in/fhir")
    assert r.status_code == 200, r.text
    assert "/redirect-in/fhir/moved/Observation" in world.hostile_seen.paths()


# --- finding 3: paging links are normalised before the same-origin/base-path check -------------


@pytest.mark.parametrize("mode", ["page-dotdot", "page-encoded", "page-slash"])
def test_a_paging_link_climbing_out_of_the_base_path_is_not_followed(world: World,
                                                                     mode: str) -> None:
    before = len(world.hostile_seen.paths())
    _diagnostics(world.call(f"{world.hostile}/{mode}/fhir"))
    after = world.hostile_seen.paths()[before:]
    assert len(after) == 1 and after[0].startswith(f"/{mode}/fhir/Observation?")
    assert not any(SECRET in unquote(p) for p in world.hostile_seen.paths())


def test_a_paging_link_that_stays_inside_is_followed_normalised(world: World) -> None:
    r = world.call(f"{world.hostile}/page-inside/fhir")
    assert r.status_code == 200, r.text
    assert "/page-inside/fhir/Observation?page=2" in world.hostile_seen.paths()


def test_a_prefetched_page_link_is_checked_too(world: World) -> None:
    prefetched = searchset([])
    prefetched["link"] = [{"relation": "next",
                           "url": f"{world.hostile}/page-dotdot/fhir/../../secret/admin"}]
    r = world.call(f"{world.hostile}/page-dotdot/fhir", missing="",
                   prefetch={"observations": prefetched})
    _diagnostics(r)
    assert not any(SECRET in unquote(p) for p in world.hostile_seen.paths())


# --- finding 4: the size limit holds while inflating, within the budget -------------------------


def _peak_rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]


def test_a_gzip_bomb_stops_at_the_limit(world: World) -> None:
    before = _peak_rss_kib(world.pid)
    started = time.monotonic()
    r = world.call(f"{world.hostile}/bomb/fhir")
    elapsed = time.monotonic() - started
    grown_mib = (_peak_rss_kib(world.pid) - before) / 1024
    print(f"gzip bomb: 412 after {elapsed:.2f} s, worker peak memory +{grown_mib:.0f} MiB")
    assert grown_mib < 60, f"the worker's peak memory grew by {grown_mib:.0f} MiB"
    assert elapsed < 3.0, elapsed  # the fetch budget, not the 300 MB
    _diagnostics(r)


def test_one_budget_covers_every_page(world: World) -> None:
    started = time.monotonic()
    r = world.call(f"{world.hostile}/page-slow/fhir")
    elapsed = time.monotonic() - started
    _diagnostics(r)
    # 0.8 s a page, every call under the 1 s timeout, 5 pages allowed: the 3 s budget ends it
    assert 2.9 < elapsed < 4.0, elapsed


# --- finding 5: the 412 says what is missing, never what the network did ------------------------


def test_every_network_failure_gets_the_same_answer(world: World) -> None:
    answers = {}
    for name, server in [("closed port", f"{world.closed}/fhir"),
                         ("a web page", f"{world.hostile}/html/fhir"),
                         ("404", f"{world.hostile}/notfound/fhir"),
                         ("401", f"{world.hostile}/unauthorized/fhir"),
                         ("500", f"{world.hostile}/error/fhir"),
                         ("redirect elsewhere", f"{world.hostile}/redirect-out/fhir"),
                         ("timeout", f"{world.hostile}/slow/fhir"),
                         ("gzip bomb", f"{world.hostile}/bomb/fhir"),
                         ("duplicate JSON keys", f"{world.hostile}/dupkeys/fhir"),
                         ("a lone surrogate", f"{world.hostile}/surrogate/fhir")]:
        r = world.call(server)
        assert r.status_code == 412, (name, r.text)
        answers[name] = r.json()
    assert len({json.dumps(a, sort_keys=True) for a in answers.values()}) == 1, answers
    assert next(iter(answers.values()))["issue"][0]["diagnostics"] == (
        "observations: needed, not (fully) prefetched, and could not be read from fhirServer")


# --- in process: the normalisation itself ---------------------------------------------------


def _fetcher(server: str = "https://fhir.example.org/base/r4") -> _Fetcher:
    return _Fetcher(httpx.AsyncClient(), server, None, 5)


@pytest.mark.parametrize("link", [
    "https://fhir.example.org/base/r4/../../admin",
    "https://fhir.example.org/base/r4/%2e%2e/%2E%2E/admin",
    "https://fhir.example.org/base/r4/..%2F..%2Fadmin",
    "https://fhir.example.org/base/r4x/Observation",
    "https://fhir.example.org/base/Observation",
    "https://fhir.example.org:8443/base/r4/Observation",
    "http://fhir.example.org/base/r4/Observation",
    "https://user@fhir.example.org/base/r4/Observation",
    "https://fhir.example.org.evil.org/base/r4/Observation",
    "//evil.org/base/r4/Observation",
    "/base/r4/..\\..\\admin",
    "https://fhir.example.org/base/r4/%252e%252e/%252e%252e/admin",
    "https://fhir.example.org/base/r4/x%00/../../admin",
])
def test_links_off_the_server_are_refused(link: str) -> None:
    with pytest.raises(_FetchFailed):
        _fetcher().on_server(link)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "%2e%2e", "%2E.", "a", "Observation", "%2f",
                                 "x%2F..", "", "r4", "%252e", "%25", "%5c"]), max_size=8))
def test_an_accepted_link_is_always_under_the_base_path(segments: list[str]) -> None:
    link = "https://fhir.example.org/base/r4/" + "/".join(segments) + "?page=2"
    try:
        url = _fetcher().on_server(link)
    except _FetchFailed:
        return
    path = unquote(url.split("?", 1)[0].removeprefix("https://fhir.example.org"))
    segments_out = path.split("/")
    assert path.startswith("/base/r4/") or path == "/base/r4"
    assert ".." not in segments_out and "." not in segments_out


def test_without_allowed_servers_nothing_is_contacted_and_it_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The default (no [fhir] table): no fhirServer is contacted, and start-up says so."""
    import asyncio

    from cds_service._app import create_app, load_engine
    from cds_service._config import parse_config

    record = Recorder()
    server, url = _serve(_canary_handler(record))
    try:
        config = parse_config({"service": {"base_url": "https://cds.example.org",
                                           "knowledge_base": str(STARTER_KB)},
                               "auth": {"required": False}}, insecure_no_auth=True)
        assert config.allowed_servers == frozenset()
        with caplog.at_level(logging.INFO, logger="movement_cds.service"):
            app = create_app(config, engine=load_engine(config, run_scenarios=False),
                             verifier=None, store=None)
        assert "fhirServer access: off (no [fhir] allowed_servers)" in caplog.text

        async def post() -> httpx.Response:
            body = call(fhirServer=f"{url}/fhir")
            del body["prefetch"]["observations"]
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport,
                                             base_url="https://cds.example.org") as c:
                    return await c.post(PV, json=body)

        r = asyncio.run(post())
        assert r.status_code == 412
        assert record.paths() == []
    finally:
        server.shutdown()
