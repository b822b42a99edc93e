"""The integrator demo is not time-bombed (issue 13, part 8): the request it sends has its
dates made at run time (examples/cds_hooks_request.py), so the advice is the same whenever
the demo runs; the file as written would age into other advice."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import movement_cds
from cds_service._prefetch import build_input_bundle, prefetch_keys
from knowledge_base import bundled_path
from movement_cds._api import DecisionSupport
from tests.service.conftest import ROOT

_spec = importlib.util.spec_from_file_location("cds_hooks_request",
                                               ROOT / "examples" / "cds_hooks_request.py")
assert _spec is not None and _spec.loader is not None
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)
REQUEST, fresh_request = demo.REQUEST, demo.fresh_request

NOW = datetime.now(UTC).replace(microsecond=0)
LATER = datetime(2031, 6, 1, 9, 0, tzinfo=UTC)  # years after the file was written


def _alerts(request: dict[str, Any], as_of: datetime) -> list[str]:
    """The alert codes the bundled knowledge base gives for ``request`` at ``as_of``."""
    kb = DecisionSupport(bundled_path()).kb
    bundle, _ = asyncio.run(build_input_bundle(
        prefetch_keys(kb), context=request["context"], prefetch=request["prefetch"],
        fhir_server=None, access_token=None, client=None, budget_seconds=1, max_pages=1))
    return sorted(a.code for a in movement_cds.evaluate(bundle, as_of=as_of).plan.alerts)


def test_the_demo_request_gives_the_same_advice_whenever_it_runs() -> None:
    now, later = _alerts(fresh_request(NOW), NOW), _alerts(fresh_request(LATER), LATER)
    assert now == later
    assert "suspected-cauda-equina" in now  # the example's red flags, answered recently


def test_the_file_as_written_would_age() -> None:
    """Why the dates are made at run time: the written request, sent years later."""
    written = json.loads(REQUEST.read_text())
    assert _alerts(written, LATER) != _alerts(fresh_request(LATER), LATER)


def test_the_script_prints_the_request() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "cds_hooks_request.py"),
                          "--now", "2031-06-01T09:00:00Z"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    printed = json.loads(out)
    assert printed == json.loads(json.dumps(fresh_request(LATER)))
    answers = [e["resource"]["effectiveDateTime"]
               for e in printed["prefetch"]["observations"]["entry"]]
    assert max(answers) == "2031-06-01T08:00:00Z"
