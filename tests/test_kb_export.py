"""``movement-cds kb export-fhir DIR`` (issue #5 part 7): the knowledge base as FHIR Clinical
Reasoning artifacts that validate as R4 resources, with every rule and every exercise exactly
once and every condition present."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.activitydefinition import ActivityDefinition
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.library import Library
from fhir.resources.R4B.plandefinition import PlanDefinition
from fhir.resources.R4B.questionnaire import Questionnaire

from cds import KnowledgeBase, load_knowledge_base
from cds._knowledge_base import condition_facts
from fhir_adapters._code_systems import code_systems
from fhir_adapters._kb_export import (
    ACTIVITY_DEFINITION_BASE,
    CONDITION_LANGUAGE,
    EXT_RULE_OUTPUT,
    export_knowledge_base,
    render_condition,
)
from fhir_adapters._terminology import ALERT_SYSTEM, EXERCISE_SYSTEM, KNOWLEDGE_BASE_BASE
from movement_cds._cli import main
from tests.conftest import STARTER

MODELS: dict[str, Any] = {"PlanDefinition": PlanDefinition,
                          "ActivityDefinition": ActivityDefinition,
                          "CodeSystem": CodeSystem, "Questionnaire": Questionnaire,
                          "Library": Library}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def read_all(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def check_export(kb: KnowledgeBase, files: dict[str, dict[str, Any]]) -> None:
    """Every file validates; every rule and exercise exactly once; conditions present."""
    m = kb.manifest
    for name, r in files.items():
        MODELS[r["resourceType"]].model_validate(r)  # raises if not valid R4(B)
        assert name == f"{r['resourceType']}-{r['id']}.json"
        assert r["version"] == m.version and r["status"] == m.status
        assert r["url"] and r["name"][0].isupper() and r["title"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in files.values():
        by_type.setdefault(r["resourceType"], []).append(r)

    # rules: each exactly once, in a PlanDefinition of its stratum, in evaluation order
    plans = sorted(by_type["PlanDefinition"], key=lambda pd: m.strata.index(pd["id"]))
    actions = [(pd["id"], a) for pd in plans for a in pd["action"]]
    assert Counter(a["id"] for _, a in actions) == Counter(r.id for r in kb.rules)
    assert [a["id"] for _, a in actions] == [r.id for r in kb.rules]
    ad_urls = {f"{ad['url']}|{ad['version']}" for ad in by_type["ActivityDefinition"]}
    alert_codes = {c["code"] for cs in by_type["CodeSystem"] if cs["url"] == ALERT_SYSTEM
                   for c in cs["concept"]}
    for stratum, a in actions:
        rule = kb.rule(a["id"])
        assert stratum == rule.stratum
        [cond] = a["condition"]
        assert cond["kind"] == "applicability"
        expr = cond["expression"]
        assert expr["language"] == CONDITION_LANGUAGE
        assert expr["expression"] == render_condition(rule.when)
        for test, _neg in condition_facts(rule.when):
            assert (test.fact in expr["expression"] and f"[{test.fact}]" in \
                expr["description"]) or test.fact.split(".")[0] in ("alert", "recommend")
        assert len(a["documentation"]) == len(rule.evidence)
        for doc, ev in zip(a["documentation"], rule.evidence, strict=True):
            assert doc["type"] == "citation" and doc["label"] == ev.id and doc["citation"]
            if ev.id.startswith("PMID:"):
                assert doc["url"] == f"https://pubmed.ncbi.nlm.nih.gov/{ev.id[5:]}/"
        assert len(a["action"]) == len(rule.then)
        for out, then in zip(a["action"], rule.then, strict=True):
            [ext] = [e for e in out["extension"] if e["url"] == EXT_RULE_OUTPUT]
            assert ext["extension"][0] == {"url": "kind", "valueCode": then.kind()}
            if then.recommend:
                assert out["definitionCanonical"] in ad_urls
                assert out["definitionCanonical"].startswith(
                    f"{ACTIVITY_DEFINITION_BASE}/{then.recommend.exercise}|")
            if then.alert:
                [coding] = out["code"][0]["coding"]
                assert coding["system"] == ALERT_SYSTEM and coding["code"] in alert_codes
                assert coding["code"] == then.alert.code

    # exercises: each exactly once, coded from the exercise CodeSystem
    codes = [ad["code"]["coding"][0] for ad in by_type["ActivityDefinition"]]
    assert Counter(c["code"] for c in codes) == Counter(list(kb.exercises))
    assert {c["system"] for c in codes} == {EXERCISE_SYSTEM}
    for ad in by_type["ActivityDefinition"]:
        ex = kb.exercises[ad["id"]]
        assert ad["kind"] == "ServiceRequest" and ad["intent"] == "proposal"
        assert ad["timingTiming"]["repeat"]["frequency"] == ex.dose.frequency
        assert ex.instructions.split()[0] in ad["description"]

    # the terminology and the index
    assert {cs["id"] for cs in by_type["CodeSystem"]} >= {"screen", "exercise", "alert"}
    assert sorted(cs["id"] for cs in by_type["CodeSystem"]) == sorted(
        cs["id"] for cs in code_systems(kb))
    [lib] = by_type["Library"]
    assert lib["url"] == f"{KNOWLEDGE_BASE_BASE}/{m.id}"
    members = [ra["resource"] for ra in lib["relatedArtifact"]]
    others = [f"{r['url']}|{r['version']}" for r in files.values() if r is not lib]
    assert Counter(members) == Counter(others)


def test_export_starter_via_cli(tmp_path: Path, starter_kb: KnowledgeBase,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fhir"
    code, stdout, err = run(capsys, "kb", "export-fhir", str(out), "--kb", str(STARTER))
    assert code == 0, err
    files = read_all(out)
    assert sorted(stdout.split()) == sorted(str(out / n) for n in files)
    n_cs = len(code_systems(starter_kb))
    assert f"starter-fixture@0.1.0: 5 PlanDefinition, 33 ActivityDefinition, " \
           f"1 Questionnaire, {n_cs} CodeSystem, 1 Library" in err  # no STarT Back items there
    check_export(starter_kb, files)
    assert files["Library-starter-fixture.json"]["date"] == "2026-11-22"  # from CHANGELOG.md


def test_export_bundled(tmp_path: Path, kb: KnowledgeBase) -> None:
    paths = export_knowledge_base(kb, tmp_path)
    files = read_all(tmp_path)
    assert len(paths) == len(files)
    check_export(kb, files)
    strata = [f[len("PlanDefinition-"):-5] for f in files if f.startswith("PlanDefinition-")]
    assert set(strata) == {r.stratum for r in kb.rules}


def test_careplan_points_at_the_library(tmp_path: Path, starter_kb: KnowledgeBase) -> None:
    """A plan's instantiatesUri is the exported Library's url|version."""
    from movement_cds._api import DecisionSupport

    export_knowledge_base(starter_kb, tmp_path)
    lib = json.loads((tmp_path / "Library-starter-fixture.json").read_text())
    result = DecisionSupport(starter_kb).evaluate(
        (EXAMPLES / "cauda-equina.json").read_bytes(), as_of="2026-11-20T10:00:00Z")
    careplan = result.bundle["entry"][0]["resource"]
    assert careplan["instantiatesUri"] == [f"{lib['url']}|{lib['version']}"]


def test_alert_veto_recommend_shapes(tmp_path: Path, starter_kb: KnowledgeBase) -> None:
    export_knowledge_base(starter_kb, tmp_path)
    pd = json.loads((tmp_path / "PlanDefinition-red-flags.json").read_text())
    ces = next(a for a in pd["action"] if a["id"] == "RF-01-CES")
    assert ces["condition"][0]["expression"]["expression"] == (
        "rf-bladder-dysfunction = true or rf-bowel-dysfunction = true or "
        "rf-saddle-anaesthesia = true or (rf-bilateral-leg-symptoms = true and "
        "(rf-progressive-weakness = true or rf-foot-drop = true))")
    alert = ces["action"][0]
    assert alert["priority"] == "stat" and alert["textEquivalent"]
    sub = {e["url"]: e for e in alert["extension"][0]["extension"][1:]}
    assert sub["holds-exercise"]["valueBoolean"] is True
    pre = json.loads((tmp_path / "PlanDefinition-precautions.json").read_text())
    veto = next(a for a in pre["action"] if a["id"] == "PR-01-NO-FLEXION")["action"][0]
    assert veto["title"] == "Do not perform: every exercise with direction flexion"
    assert {"url": "direction", "valueCode": "flexion"} in veto["extension"][0]["extension"]
    flexion = [e for e in starter_kb.exercises.values()
               if any(d.value == "flexion" for d in e.direction)]
    assert flexion and all(e.id in veto["description"] for e in flexion)


def test_broken_knowledge_base_exits_1(kb_copy: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (kb_copy / "rules" / "precautions.yaml").write_text("rules: [unclosed\n")
    out = tmp_path / "fhir"
    code, _stdout, err = run(capsys, "kb", "export-fhir", str(out), "--kb", str(kb_copy))
    assert code == 1
    assert "rules/precautions.yaml:2:1: error: not valid YAML" in err
    assert "nothing exported" in err and "Traceback" not in err
    assert not out.exists()


def test_output_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.json"
    target.write_text("{}")
    code, _out, err = run(capsys, "kb", "export-fhir", str(target), "--kb", str(STARTER))
    assert code == 2 and "is not a directory" in err


def test_reexport_replaces_stale_files(tmp_path: Path, kb_copy: Path) -> None:
    export_knowledge_base(load_knowledge_base(kb_copy), tmp_path)
    (tmp_path / "README.txt").write_text("mine")
    assert (tmp_path / "PlanDefinition-precautions.json").is_file()
    shutil.rmtree(kb_copy / "scenarios")
    (kb_copy / "rules" / "precautions.yaml").write_text("rules: []\n")
    export_knowledge_base(load_knowledge_base(kb_copy), tmp_path)
    assert not (tmp_path / "PlanDefinition-precautions.json").exists()
    assert (tmp_path / "README.txt").read_text() == "mine"
    check_export(load_knowledge_base(kb_copy), read_all(tmp_path))
