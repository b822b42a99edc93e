"""Outputs checked by an independent R4 validator: FHIR.js (npm ``fhir``, pinned in
tools/fhir-validator/, installed by ``make test``), beside the R4B models the output is
written and checked with. A model and its own writer can share a blind spot; FHIR.js found
one (a ServiceRequest whose reasonReference pointed at the Patient)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cds import KnowledgeBase
from cds._scenarios import load_scenarios
from knowledge_base import bundled_path
from movement_cds import DecisionSupport

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "tools" / "fhir-validator" / "validate.js"
AS_OF = "2026-11-02T09:00:00Z"


def validate(paths: list[Path]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node is not None, "node is not installed: run `make test` (it installs it)"
    assert (VALIDATOR.parent / "node_modules" / "fhir").is_dir(), (
        "FHIR.js is not installed: run `make test` (npm ci in tools/fhir-validator)")
    done = subprocess.run([node, str(VALIDATOR), *map(str, paths)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def inputs() -> list[tuple[str, Path, str]]:
    """(name, input file, as-of) for the examples, the follow-up series and every scenario
    written as a FHIR Bundle (the vignettes and the red-flag answer cases)."""
    out = [(p.stem, p, AS_OF) for p in sorted((ROOT / "examples").glob("*.json"))
           if not p.name.startswith("invalid-other")]
    out += [(f"follow-up-{p.stem}", p, AS_OF)
            for p in sorted((ROOT / "examples" / "follow-up").glob("visit-?.json"))]
    for sc, rel, _ in load_scenarios(bundled_path()):
        if sc.bundle is not None:
            out.append((sc.id, (bundled_path() / rel).parent / sc.bundle,
                        sc.as_of.isoformat() if sc.as_of else AS_OF))
    return out


def test_every_output_is_valid_r4_for_fhir_js(kb: KnowledgeBase, tmp_path: Path) -> None:
    support = DecisionSupport(kb)
    written = []
    for name, path, as_of in inputs():
        out = tmp_path / f"{name}.json"
        out.write_text(support.evaluate(path.read_bytes(), as_of=as_of).to_json())
        written.append(out)
    assert len(written) >= 40
    results = validate(written)
    bad = [r for r in results if not r["valid"]]
    assert len(results) == len(written)
    assert not bad, json.dumps(bad[:3], indent=1)


@pytest.mark.parametrize(("breakage", "where"), [
    (lambda b: b["entry"][1]["resource"].update(
        reasonReference=[{"reference": "Patient/pat-1"}]), "reasonReference"),
    (lambda b: b["entry"][1]["resource"].update(priority="whenever"), "priority"),
    (lambda b: b["entry"][1]["resource"].update(unknownElement=1), "unknownElement"),
])
def test_the_validator_rejects_what_r4_forbids(kb: KnowledgeBase, tmp_path: Path,
                                                breakage: Any, where: str) -> None:
    """The check above can fail: FHIR.js rejects a broken ServiceRequest."""
    data = json.loads(DecisionSupport(kb).evaluate(
        (ROOT / "examples" / "cauda-equina.json").read_bytes(), as_of=AS_OF).to_json())
    assert data["entry"][1]["resource"]["resourceType"] == "ServiceRequest"
    breakage(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    (result,) = validate([path])
    assert not result["valid"]
    assert any(where in e["location"] or where in e["message"] for e in result["errors"])
