"""The published terminology: CodeSystem-screen/exercise/alert.json (output contract)."""

from __future__ import annotations

import ast
import functools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.codesystem import CodeSystem

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts, load_knowledge_base
from fhir_adapters import write_bundle
from fhir_adapters._code_systems import code_systems, export_terminology

SCREEN = "http://movement-cds.org/fhir/CodeSystem/screen"
EXERCISE = "http://movement-cds.org/fhir/CodeSystem/exercise"
ALERT = "http://movement-cds.org/fhir/CodeSystem/alert"

CONTRACT_VALUE_CODES = {
    "back-only", "above-knee", "below-knee", "both-legs", "extension", "flexion",
    "lateral-shift-left", "lateral-shift-right", "none", "centralizes", "peripheralizes",
    "no-effect", "increases-back-pain", "lbp-provoked", "better", "same", "worse",
    "exercise", "exercise-pain-during", "exercise-pain-next-morning", "exercise-sessions-done",
    "exercise-sessions-prescribed", "exercise-perceived-effect", "exercise-peripheralization",
}


def by_id(kb: KnowledgeBase) -> dict[str, dict[str, Any]]:
    return {cs["id"]: cs for cs in code_systems(kb)}


def props(concept: dict[str, Any], code: str) -> list[str]:
    return [p.get("valueCode", p.get("valueString")) for p in concept.get("property", [])
            if p["code"] == code]


def test_export_writes_four_sorted_pretty_files(kb: KnowledgeBase, tmp_path: Path) -> None:
    target = tmp_path / "does" / "not" / "exist"
    paths = export_terminology(kb, target)
    assert [p.name for p in paths] == [
        "CodeSystem-screen.json", "CodeSystem-exercise.json", "CodeSystem-alert.json",
        "CodeSystem-plan-change.json"]
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in paths)
    expected = by_id(kb)
    for p in paths:
        text = p.read_text(encoding="utf-8")
        assert text.endswith("}\n") and not text.endswith("\n\n")
        doc = json.loads(text)
        assert text == json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        assert doc == expected[doc["id"]]
        assert p.name == f"CodeSystem-{doc['id']}.json"
    # idempotent: a second export gives the same bytes
    before = [p.read_bytes() for p in paths]
    assert [p.read_bytes() for p in export_terminology(kb, target)] == before


def test_headers_follow_the_contract_and_the_manifest(kb: KnowledgeBase) -> None:
    systems = by_id(kb)
    assert {k: v["url"] for k, v in systems.items()} == {
        "screen": SCREEN, "exercise": EXERCISE, "alert": ALERT,
        "plan-change": "http://movement-cds.org/fhir/CodeSystem/plan-change"}
    for cs in systems.values():
        CodeSystem.model_validate(cs)
        assert cs["resourceType"] == "CodeSystem"
        assert cs["version"] == kb.manifest.version
        assert cs["status"] == kb.manifest.status
        assert cs["content"] == "complete"
        assert cs["count"] == len(cs["concept"])
        codes = [c["code"] for c in cs["concept"]]
        assert len(codes) == len(set(codes))
        for c in cs["concept"]:
            assert c["display"].strip() and c["definition"].strip()


def test_status_maps_from_the_manifest(kb_copy: Path) -> None:
    manifest = kb_copy / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("status: draft", "status: active"))
    active = load_knowledge_base(kb_copy)
    assert {cs["status"] for cs in code_systems(active)} == {"active"}


def test_every_exercise_has_direction_load_and_surface(kb: KnowledgeBase) -> None:
    cs = by_id(kb)["exercise"]
    declared = {p["code"]: p["type"] for p in cs["property"]}
    assert declared["direction"] == declared["load"] == declared["surface"] == "code"
    assert {c["code"] for c in cs["concept"]} == set(kb.exercises)
    for c in cs["concept"]:
        ex = kb.exercises[c["code"]]
        assert c["display"] == ex.title
        direction = props(c, "direction")
        assert direction and set(direction) <= {
            "flexion", "extension", "rotation", "lateral-flexion", "neutral"}
        assert direction == [d.value for d in ex.direction]
        assert props(c, "load") == [ex.load.value]
        assert props(c, "load")[0] in {"unloaded", "bodyweight", "external"}
        assert props(c, "surface") == [ex.surface.value]
        assert props(c, "surface")[0] in {"stable", "unstable"}
        assert {p["code"] for p in c["property"]} <= set(declared)
        for rel in ("easier", "harder"):
            for target in props(c, rel):
                assert target in kb.exercises


def test_screen_covers_every_screen_code_in_the_catalog(kb: KnowledgeBase) -> None:
    codes = {c["code"] for c in by_id(kb)["screen"]["concept"]}
    for name, d in kb.facts.items():
        if d.coding is not None and d.coding.system == SCREEN:
            assert d.coding.code in codes, name
            assert set(d.codes or []) <= codes, name
    assert CONTRACT_VALUE_CODES <= codes
    assert {f"startback-item-{i}" for i in range(1, 10)} <= codes


def test_alert_system_is_the_alert_catalog(kb: KnowledgeBase) -> None:
    cs = by_id(kb)["alert"]
    assert {c["code"]: c["display"] for c in cs["concept"]} == {
        a.code: a.display for a in kb.alerts.values()}


@pytest.mark.parametrize("facts", [
    [Fact("rf-bladder-dysfunction", True, ("Observation/1",)),
     Fact("fms-rotary-stability", 1, ("Observation/2",)),
     Fact("fms-active-slr", 1, ("Observation/3",)),
     Fact("repeated-flexion-response", "peripheralizes", ("Observation/4",))],
    [Fact("directional-preference", "extension", ("Observation/5",)),
     Fact("pattern-hinge", 0, ("Observation/6",))],
])
def test_plan_codes_are_in_the_published_systems(
    durable: Evaluator, kb: KnowledgeBase, facts: list[Fact]
) -> None:
    systems = {cs["url"]: {c["code"] for c in cs["concept"]} for cs in code_systems(kb)}
    plan = durable.evaluate(PatientFacts.build("Patient/p", datetime(2026, 11, 2, tzinfo=UTC),
                                               facts))
    text = json.dumps(write_bundle(plan, kb))
    found = 0
    for system, codes in systems.items():
        marker = f'"system": "{system}", "code": "'
        for part in text.split(marker)[1:]:
            assert part.split('"', 1)[0] in codes
            found += 1
    assert found


# --- one terminology module (issue 14 part 3) -------------------------------------------------
# Every URI the packages write or read is spelled out once, in fhir_adapters/_terminology.py;
# elsewhere a string constant starting with a URI scheme is one of these, each with its reason.

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("cds_service", "fhir_adapters", "movement_cds")
URI_PREFIXES = ("http://", "https://", "urn:")
NOT_TERMINOLOGY = {
    "http://": "a bare scheme: whether a reference is absolute (the reader), the service's "
               "own loopback base URL from host and port (serve --check)",
    "https://": "a bare scheme: whether a reference is absolute (the reader)",
    "urn:uuid:": "the URN scheme of a UUID (RFC 4122): Bundle-local fullUrls and references",
    "urn:uuid:00000000-0000-4000-8000-000000000001":
        "the fullUrl of the service's warm-up input Bundle (a sample input, not terminology)",
    "https://ehr.example.org/fhir/":
        "the base URL of the made-up EHR that synthetic Bulk Data exports come from",
    "http://example.org": "a stand-in value the output check puts in a uri-typed field",
    "urn:oid:1.2": "a stand-in value the output check puts in an oid-typed field",
    "http://movement-cds.org/cds-hooks/card":
        "the name of the UUID namespace CDS Hooks card ids are made in (uuid5): no FHIR "
        "URI, and changing it changes every card id",
}


def retyped_uris(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, value) of each string constant in ``tree`` (f-string parts included,
    docstrings not) that starts with a URI scheme and is not in NOT_TERMINOLOGY."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.startswith(URI_PREFIXES) and id(node) not in docstrings
                  and node.value not in NOT_TERMINOLOGY)


@functools.cache
def _package_trees() -> dict[str, ast.Module]:
    """Every module of the scanned packages but _terminology.py, parsed once."""
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(encoding="utf-8"))
            for pkg in SCANNED for p in sorted((ROOT / pkg).rglob("*.py"))
            if p != ROOT / "fhir_adapters" / "_terminology.py"}


def test_no_uri_is_typed_again_outside_the_terminology_module() -> None:
    found = {name: hits for name, tree in _package_trees().items()
             if (hits := retyped_uris(tree))}
    assert found == {}, "import these from fhir_adapters._terminology (or its public names)"


def test_every_allowed_uri_is_still_used() -> None:
    """The allow-list does not outlive its reasons."""
    used = {node.value for tree in _package_trees().values() for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in NOT_TERMINOLOGY}
    assert used == set(NOT_TERMINOLOGY)


def test_the_uri_scan_finds_a_retyped_uri() -> None:
    source = ('"""Reads http://loinc.org codes."""\n'
              'LOINC = "http://loinc.org"\n'
              'def f(x):\n'
              '    """https://hl7.org/fhir says how."""\n'
              '    return f"urn:oid:{x}", "urn:uuid:", {"system": "https://snomed.info/sct"}\n')
    assert retyped_uris(ast.parse(source)) == [(2, "http://loinc.org"), (5, "https://snomed.info/sct"),
                                    (5, "urn:oid:")]


def test_the_terminology_module_is_a_leaf() -> None:
    """It imports nothing of the project, so any module can take its URIs from it."""
    tree = ast.parse((ROOT / "fhir_adapters" / "_terminology.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "typing"}
