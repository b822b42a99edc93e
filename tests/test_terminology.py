"""The published terminology: CodeSystem-screen/exercise/alert.json (output contract)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.codesystem import CodeSystem

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts, load_knowledge_base
from fhir_adapters._outbound import write_bundle
from fhir_adapters._terminology import code_systems, export_terminology

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
