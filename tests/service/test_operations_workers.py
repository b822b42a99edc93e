"""/metrics across ``movement-cds serve --workers 2`` (prometheus-client multiprocess mode).

The real service on loopback with two worker processes; fresh TCP connections held open are
spread over both workers (counted per worker in /proc), calls go down each, and one scrape
of /metrics (answered by either worker) counts every call. The call log names the worker
that answered each call, so the test sees both answered. Then one worker is killed
(SIGKILL): uvicorn starts another, the dead worker's counts stay in the totals, and the
directory of metric files that ``serve`` made is gone once the service stops."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import free_port, start_service, stop_service, write_config
from tests.service.test_balancer import _established
from tests.service.test_hooks_service import call
from tests.service.test_operations import assert_closed_label_values, samples, value

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="counts sockets per worker in /proc")]

PV = "/cds-services/movement-cds-patient-view"
CONNECTIONS, CALLS_EACH = 4, 3


def _ready_workers(log: Path) -> list[int]:
    text = log.read_text(errors="replace")
    ready = [int(p) for p in re.findall(r"balancer: worker (\d+) ready", text)]
    left = {int(p) for p in re.findall(r"balancer: worker (\d+) left", text)}
    return [p for p in ready if p not in left]


def _wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _calls_answered(m: dict[Any, float]) -> float:
    return value(m, "movement_cds_calls_total", service="movement-cds-patient-view",
                 status="200")


def test_one_scrape_counts_the_calls_of_both_workers(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "service.toml", port)
    cfg.write_text(cfg.read_text() + "\n[logging]\ncall_log = true\n")
    log = tmp_path / "service.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = start_service(["--config", str(cfg), "--insecure-no-auth", "--workers", "2"],
                             port, timeout=120, log=out)
    clients: list[httpx.Client] = []
    try:
        _wait(lambda: len(_ready_workers(log)) >= 2, 120)
        workers = _ready_workers(log)
        directory = re.search(r"metrics: workers share (\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
        assert (Path(directory) / f"gauge_livemax_{workers[0]}.db").exists()
        for _ in range(CONNECTIONS):
            c = httpx.Client(base_url=url, timeout=30, trust_env=False,
                             limits=httpx.Limits(max_connections=1))
            assert c.get("/healthz").status_code == 200  # opens the connection
            clients.append(c)
        assert sorted(_established(pid, port) for pid in workers) == [2, 2]
        for c in clients:
            for _ in range(CALLS_EACH):
                assert c.post(PV, json=call()).status_code == 200
        total = CONNECTIONS * CALLS_EACH

        answered_by = Counter(json.loads(line)["worker"]
                              for line in log.read_text(errors="replace").splitlines()
                              if line.startswith('{"event":"cds-call"'))
        assert answered_by == {workers[0]: total // 2, workers[1]: total // 2}
        for c in clients:  # each worker's own answer to a scrape is the whole host's
            assert c.get("/readyz").json()["status"] == "ready"  # checked by the parent
            m = samples(c.get("/metrics").text)
            assert _calls_answered(m) == total
            assert value(m, "movement_cds_call_duration_seconds_count",
                         service="movement-cds-patient-view") == total
        infos = {k: v for k, v in m.items() if k[0] == "movement_cds_knowledge_base_info"}
        assert list(infos.values()) == [1.0], infos  # both serve one release
        assert_closed_label_values(m)

        for c in clients:
            c.close()
        clients = []
        os.kill(workers[0], signal.SIGKILL)
        _wait(lambda: len(set(_ready_workers(log)) - set(workers)) >= 1, 120)
        # marked dead: its live gauge (the release it served) is gone, its counts are not
        _wait(lambda: not (Path(directory) / f"gauge_livemax_{workers[0]}.db").exists(), 30)
        assert (Path(directory) / f"counter_{workers[0]}.db").exists()
        m = samples(httpx.get(url + "/metrics", timeout=10).text)
        assert _calls_answered(m) == total
        assert httpx.post(url + PV, json=call(), timeout=30).status_code == 200
        assert _calls_answered(samples(httpx.get(url + "/metrics", timeout=10).text)) \
            == total + 1
    finally:
        for c in clients:
            c.close()
        stop_service(proc)
    assert not Path(directory).exists()  # removed when the service stopped
