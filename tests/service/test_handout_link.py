"""The plan card links to the patient handout page, served by the service itself
(cds_service._handouts): a random id per call, no patient data in the URL, the page kept
``[handouts] ttl_seconds`` and then a 404 like any unknown id. Real service on loopback."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds_service._handouts import HandoutStore
from tests.service.conftest import (
    CheckedClient,
    free_port,
    resources,
    start_service,
    stop_service,
    write_config,
)
from tests.service.test_hooks_service import PV, call

ID = r"[A-Za-z0-9_-]{43}"


def _plan_card(response: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in response["cards"] if c["source"]["topic"]["code"] == "exercise-plan")


def _handout_link(card: dict[str, Any], base: str) -> str:
    links = [k for k in card["links"] if k["url"].startswith(f"{base}/handouts/")]
    assert len(links) == 1 and links[0]["type"] == "absolute", card["links"]
    assert re.fullmatch(rf"{re.escape(base)}/handouts/{ID}", links[0]["url"])
    return str(links[0]["url"])


def _titles(card: dict[str, Any]) -> list[str]:
    careplan = next(a["resource"] for s in card["suggestions"] for a in s["actions"]
                    if a["resource"]["resourceType"] == "CarePlan")
    return [a["detail"]["code"]["text"] for a in careplan["activity"]
            if a.get("detail", {}).get("status") == "not-started"
            and a["detail"]["code"]["coding"][0]["system"].endswith("/exercise")]


def test_the_plan_card_links_to_the_handout_page(client: CheckedClient,
                                                 service_url: str) -> None:
    name = "example-patient.json"
    first = client.post(PV, json=call(name)).json()
    second = client.post(PV, json=call(name)).json()
    card, again = _plan_card(first), _plan_card(second)
    url = _handout_link(card, service_url)
    assert _handout_link(again, service_url) != url  # a new page (and capability) per call
    assert card["uuid"] == again["uuid"]  # the card is still named by its advice alone
    patient = resources(name, "Patient")[0]
    for private in (patient["id"], *(o["id"] for o in resources(name, "Observation"))):
        assert private not in url
    page = client.client.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    titles = _titles(card)
    assert titles and all(f": {t}</h2>" in page.text for t in titles)
    assert patient["id"] not in page.text and "<script" not in page.text


@pytest.mark.parametrize("path", [
    "/handouts/" + "A" * 43, "/handouts/short", "/handouts/", "/handouts",
    "/handouts/" + "A" * 43 + "/x", "/handouts/..%2Fcds-services"])
def test_unknown_handouts_are_404_without_detail(client: CheckedClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"
    assert r.json()["issue"][0].get("diagnostics", "Not Found") == "Not Found", r.json()


def test_the_store_forgets_pages_after_their_time(tmp_path: Path) -> None:
    now = [1000.0]
    store = HandoutStore(tmp_path / "h.sqlite3", 60, clock=lambda: now[0])
    other = HandoutStore(tmp_path / "h.sqlite3", 60, clock=lambda: now[0])  # another worker
    a = store.put("<p>a</p>")
    assert re.fullmatch(ID, a) and other.get(a) == "<p>a</p>"
    now[0] += 59.9
    assert other.get(a) == "<p>a</p>"
    now[0] += 0.2
    assert other.get(a) is None and store.get(a) is None
    store.put("<p>b</p>")  # storing deletes what has expired
    import sqlite3
    with sqlite3.connect(tmp_path / "h.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM handout").fetchone()[0] == 1
    assert store.get("'; DROP TABLE handout; --") is None


@pytest.mark.slow
def test_every_worker_serves_the_page_until_it_expires(tmp_path: Path) -> None:
    """Two worker processes, pages kept 3 s: the call and the GETs may reach different
    workers (the pages are in one SQLite file); after 3 s the link is a 404."""
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port)
    with cfg.open("a") as f:
        f.write("\n[handouts]\nttl_seconds = 3\n")
    proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--workers", "2"], port)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            body = call("example-patient.json")
            body["hookInstance"] = str(uuid.uuid4())
            made = time.monotonic()
            url = _handout_link(_plan_card(c.post(PV, json=body).json()), base)
            codes = [httpx.get(url, timeout=10).status_code for _ in range(6)]  # new conns
            if time.monotonic() - made < 2.5:
                assert codes == [200] * 6
            time.sleep(max(0.0, 3.2 - (time.monotonic() - made)))
            gone = httpx.get(url, timeout=10)
            assert gone.status_code == 404 and gone.json()["resourceType"] == "OperationOutcome"
        assert (tmp_path / "handouts.sqlite3").exists()
    finally:
        stop_service(proc)


@pytest.mark.parametrize("table,says", [
    ({"ttl_seconds": 0}, "[handouts] ttl_seconds: must be a number from 1 to 2592000"),
    ({"ttl_seconds": "1 day"}, "[handouts] ttl_seconds: must be a number"),
    ({"enabled": "yes"}, "[handouts] enabled: must be true or false"),
    ({"keep": 3}, "unknown key in [handouts]: keep"),
])
def test_handouts_config_errors_name_the_key(table: dict[str, Any], says: str) -> None:
    from cds_service._config import ConfigError, parse_config

    doc = {"service": {"base_url": "https://cds.example.org"}, "auth": {"required": False},
           "handouts": table}
    with pytest.raises(ConfigError) as e:
        parse_config(doc, insecure_no_auth=True)
    assert says in str(e.value)


def test_handouts_config_defaults_and_paths(tmp_path: Path) -> None:
    from cds_service._config import load_config

    cfg = tmp_path / "service.toml"
    cfg.write_text('[service]\nbase_url = "https://cds.example.org"\n[auth]\nrequired = false\n')
    c = load_config(cfg, insecure_no_auth=True)
    assert (c.handouts_enabled, c.handout_ttl_seconds) == (True, 604800.0)
    assert c.handout_database == tmp_path / "handouts.sqlite3"  # beside the config file
    cfg.write_text(cfg.read_text() + '[handouts]\nttl_seconds = 3600\ndatabase = "h/x.db"\n'
                   "enabled = false\n")
    c = load_config(cfg, insecure_no_auth=True)
    assert (c.handouts_enabled, c.handout_ttl_seconds) == (False, 3600.0)
    assert c.handout_database == tmp_path / "h" / "x.db"
