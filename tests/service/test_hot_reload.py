"""A new knowledge-base version goes live without a restart and without a failed request
(issue #5 part 6): the service under uvicorn on loopback, requests fired continuously from
client threads while the knowledge-base directory is replaced; broken releases (a syntax
error, a failing scenario, changed content under the live version) are refused and the old
version keeps serving. Also: SIGHUP forces a check (in process, a real signal)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds import load_knowledge_base
from knowledge_base import bundled_path
from tests.service.conftest import (
    STARTER_KB,
    check_response,
    free_port,
    start_service,
    stop_service,
    write_config,
)
from tests.service.test_hooks_service import call

PV = "/cds-services/movement-cds-patient-view"
PATIENT = "no-red-flags.json"
MARKER_RULE = """\
# A rule whose only effect is visible in every plan card: the hot-reload test's marker.
rules:
  - id: ZZ-99-HOT-RELOAD
    title: Hot-reload test marker
    stratum: precautions
    when:
      fact: age
      ge: 0
    then:
      - safety-net:
          text: {text}
    evidence:
      - id: URL:https://example.org/hot-reload-test
        citation: Test marker, not clinical content.
        tag: M
        strength: expert-opinion
"""
FAILING_SCENARIO = """\
scenarios:
  - id: zz-hot-reload-fails-on-purpose
    facts: {age: 40}
    expect: {exercise-held: true}
"""


def bump(kb: Path, version: str) -> None:
    """A new release in place: manifest version and a changelog section."""
    manifest = kb / "manifest.yaml"
    manifest.write_text(re.sub(r"(?m)^version: .*$", f"version: {version}",
                               manifest.read_text()))
    log = kb / "CHANGELOG.md"
    old = log.read_text() if log.is_file() else "# Changelog\n"
    head, sep, rest = old.partition("\n## [")
    log.write_text(f"{head}\n## [{version}] - 2026-12-01\n\n### Added\n\n- Hot-reload marker "
                   f"rule ZZ-99-HOT-RELOAD.\n{sep}{rest}")


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Firing:
    """Client threads posting the same call in a loop; every answer is recorded."""

    def __init__(self, base: str, threads: int = 2) -> None:
        self.base = base
        self.stop = threading.Event()
        self.labels: list[list[str]] = [[] for _ in range(threads)]
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def run(self, i: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(PV, json=call(PATIENT))
                    check_response(r)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    cards = r.json()["cards"]
                    labels = {k["source"]["label"] for k in cards}
                    assert len(labels) == 1, labels  # every card names the same release
                    self.labels[i].append(labels.pop())
                except Exception as e:  # anything but a 200 with cards is a failure
                    self.failures.append(f"{type(e).__name__}: {e}")
                self.stop.wait(0.05)  # steady traffic, not a CPU race with the reload

    def __enter__(self) -> Firing:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def count(self) -> int:
        return sum(len(x) for x in self.labels)


def discovery_version(base: str) -> str:
    r = check_response(httpx.get(base + "/cds-services", timeout=10))
    doc = r.json()
    ext = doc["extension"]["org.movement-cds.knowledge-base"]
    assert all(s["extension"]["org.movement-cds.knowledge-base"] == ext
               for s in doc["services"])
    return str(ext["label"])


# The frozen starter knowledge base by default: the same code path as the bundled one at a
# fraction of the cost (a bundled release takes 4-8 s to load and test, more under load).
# HOT_RELOAD_KB=bundled (or a directory) runs the same test on that knowledge base.
SOURCE = os.environ.get("HOT_RELOAD_KB", "")


@pytest.fixture
def live_service(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The service on a copy of a knowledge base, checking for a new version every 0.3 s."""
    kb = tmp_path / "kb"
    source = bundled_path() if SOURCE == "bundled" else Path(SOURCE or STARTER_KB)
    shutil.copytree(source, kb, ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port, reload_check_seconds=0.3)
    cfg.write_text(cfg.read_text().replace(str(STARTER_KB), str(kb)))
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth"], port, log=log)
        try:
            yield f"http://127.0.0.1:{port}", kb, log_path
        finally:
            stop_service(proc)


def test_new_version_goes_live_without_failed_requests(
        live_service: tuple[str, Path, Path]) -> None:
    base, kb, log_path = live_service
    first = load_knowledge_base(kb)
    old = first.ruleset_name
    major, minor, _patch = (int(x) for x in first.manifest.version.split("-")[0].split("."))
    version = f"{major}.{minor + 1}.0"
    new = f"{first.manifest.id}@{version}"
    rules = kb / "rules"

    def refusals() -> list[str]:
        return [ln for ln in log_path.read_text(errors="replace").splitlines()
                if "reload refused" in ln]

    assert discovery_version(base) == old
    with Firing(base) as firing:
        wait_for("first answers", lambda: firing.count() >= 4)

        # 1. a new version with a syntax error: refused, the old one keeps serving
        bump(kb, version)
        (rules / "zz-hot-reload.yaml").write_text("rules: [unclosed\n")
        wait_for("refusal of the broken YAML", lambda: len(refusals()) >= 1)
        assert "does not load" in refusals()[0] and f"still serving {old}" in refusals()[0]
        assert discovery_version(base) == old

        # 2. the rules are fixed but a scenario test fails: refused too
        (rules / "zz-hot-reload.yaml").write_text(MARKER_RULE.format(text="Marker one."))
        (kb / "scenarios" / "zz-hot-reload.yaml").write_text(FAILING_SCENARIO)
        wait_for("refusal of the failing scenario", lambda: len(refusals()) >= 2)
        assert "zz-hot-reload-fails-on-purpose" in refusals()[1]
        assert "scenario tests fail" in refusals()[1]
        n = firing.count()
        wait_for("answers after the refusals", lambda: firing.count() >= n + 4)
        assert discovery_version(base) == old

        # 3. a good release: it goes live
        (kb / "scenarios" / "zz-hot-reload.yaml").unlink()
        wait_for("the new version in discovery", lambda: discovery_version(base) == new)
        n = firing.count()
        wait_for("answers from the new version", lambda: firing.count() >= n + 6)

        # 4. different content under the live version: refused ("bump the version")
        (rules / "zz-hot-reload.yaml").write_text(MARKER_RULE.format(text="Marker two."))
        wait_for("refusal of the unversioned change", lambda: len(refusals()) >= 3)
        assert "bump the version" in refusals()[2]
        n = firing.count()
        wait_for("answers after the last refusal", lambda: firing.count() >= n + 4)

    assert firing.failures == []
    for labels in firing.labels:  # each thread: the old release, then only the new one
        assert labels[0] == old and labels[-1] == new
        switch = labels.index(new)
        assert set(labels[:switch]) == {old} and set(labels[switch:]) == {new}
    r = check_response(httpx.post(base + PV, json=call(PATIENT), timeout=30))
    plan = r.json()["cards"][-1]
    assert plan["source"]["label"] == new
    assert "Marker one." in plan["detail"] and "Marker two." not in plan["detail"]
    text = log_path.read_text(errors="replace")
    assert f"knowledge base {new} live (was {old})" in text
    for secret in ("pat-", "birthDate"):  # no patient data in the service log
        assert secret not in text


# --- SIGHUP: a real signal, in process ------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_sighup_forces_a_check(tmp_path: Path) -> None:
    from cds_service._app import create_app
    from cds_service._config import parse_config

    kb = tmp_path / "kb"
    shutil.copytree(STARTER_KB, kb)
    config = parse_config({"service": {"base_url": "https://cds.example.org",
                                       "knowledge_base": str(kb)},
                           "auth": {"required": False}}, insecure_no_auth=True)
    assert config.reload_check_seconds == 0  # no periodic check: only the signal can do it
    app = create_app(config, verifier=None, store=None)
    live = app.state.live
    assert live.engine.kb.ruleset_name == "starter-fixture@0.1.0"
    bump(kb, "0.1.1-sighup")
    (kb / "rules" / "zz-hot-reload.yaml").write_text(MARKER_RULE.format(text="Signalled."))
    async with app.router.lifespan_context(app):
        handler = signal.getsignal(signal.SIGHUP)
        assert handler not in (signal.SIG_DFL, None)  # else the signal would end the test run
        await asyncio.sleep(0.5)
        assert live.engine.kb.ruleset_name == "starter-fixture@0.1.0"  # nothing polls
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if live.engine.kb.ruleset_name != "starter-fixture@0.1.0":
                break
            await asyncio.sleep(0.05)
        assert live.engine.kb.ruleset_name == "starter-fixture@0.1.1-sighup"
    assert signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, handler)


def _live_starter(kb: Path, *, settle: bool = False) -> Any:
    """A LiveRelease on a copy of the starter knowledge base at ``kb``, checked by hand."""
    from cds_service._app import LiveRelease, load_engine
    from cds_service._config import parse_config

    shutil.copytree(STARTER_KB, kb)
    config = parse_config({"service": {"base_url": "https://cds.example.org",
                                       "knowledge_base": str(kb)},
                           "auth": {"required": False}}, insecure_no_auth=True)
    return LiveRelease(load_engine(config, run_scenarios=False), kb, 0, settle=settle)


def test_check_outcomes_in_process(tmp_path: Path) -> None:
    """unchanged after a touch (same content), refused for an invalid manifest version."""
    kb = tmp_path / "kb"
    live = _live_starter(kb)
    assert live.check() == "unchanged"
    manifest = kb / "manifest.yaml"
    os.utime(manifest, (time.time() + 5, time.time() + 5))  # touched, same bytes
    assert live.check() == "unchanged"
    manifest.write_text(manifest.read_text().replace("version: 0.1.0", "version: 0.2"))
    assert live.check() == "refused"
    assert live.check() == "unchanged"  # refused once; not retried until it changes again
    assert live.engine.kb.ruleset_name == "starter-fixture@0.1.0"


def test_a_worker_settles_its_heap_again_after_a_swap(tmp_path: Path) -> None:
    """What the new engine loaded is frozen too, and the old engine can be collected."""
    import gc
    import weakref

    kb = tmp_path / "kb"
    threshold = gc.get_threshold()
    try:
        live = _live_starter(kb, settle=True)
        old = weakref.ref(live.engine)
        gc.freeze()  # as a worker is after its start
        bump(kb, "0.1.3-settle")
        assert live.check() == "swapped"
        assert live.engine.kb.ruleset_name == "starter-fixture@0.1.3-settle"
        assert old() is None  # not kept frozen for ever
        # the new engine is frozen too: what full collections still walk is tiny
        assert len(gc.get_objects()) < 2_000 < gc.get_freeze_count()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
