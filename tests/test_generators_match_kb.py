"""The generators of FHIR input and the knowledge base agree (issue 14 part 4).

Every generator builds with ``fhir_adapters``' one input builder, which takes each code,
display, unit and value type from the fact catalog and refuses a fact (or a value) the
catalog does not define. These tests check the other direction too: every Observation,
Condition and questionnaire item in the committed generated files (examples, the scenario
folders) is one the bundled catalog defines, with its display, unit and answer codes; every
red-flag question of the catalog is covered by the generators and the synthetic
population. ``disagreements`` is run against mutated copies of the knowledge base to show
that it fails when they drift apart.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cds import KnowledgeBase, load_knowledge_base
from fhir_adapters import (
    SCREEN_SYSTEM,
    UCUM,
    BundleBuilder,
    FactCatalogError,
    fact_code,
    fact_value,
    input_codes,
    patient,
    questionnaire_item,
    red_flag_questions,
    synthetic_bundle,
)
from knowledge_base import bundled_path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = bundled_path() / "scenarios"
# folder -> must it hold an answer to every red-flag question of the catalog?
GENERATED = {ROOT / "examples": True, ROOT / "examples" / "follow-up": True,
             SCENARIOS / "vignettes": True, SCENARIOS / "red-flag-answers": True,
             SCENARIOS / "questionnaire-responses": True}
AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def generated_files() -> list[Path]:
    """The committed input Bundles the generators write (not the engine's outputs)."""
    return sorted(p for d in GENERATED for p in d.glob("*.json")
                  if not p.name.endswith("-output.json"))


def _items(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for it in items:
        yield it
        yield from _items(it.get("item", []))
        for answer in it.get("answer", []):
            yield from _items(answer.get("item", []))


class _Catalog:
    """The bundled (or a mutated) catalog's codes, as the checks need them."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.by_code = {(d.coding.system, d.coding.code): d for d in kb.facts.values()
                        if d.coding is not None}
        self.also = {(c.system, c.code): (d, c) for d in kb.facts.values()
                     for c in d.also_coded}
        self.reader = input_codes(kb)

    def value(self, d: Any, where: str, holder: dict[str, Any]) -> list[str]:
        """A valueQuantity's unit, or a screen code answer, the catalog does not define."""
        out = []
        q = holder.get("valueQuantity")
        if isinstance(q, dict) and d.unit is not None and "unit" in q and (
                q.get("unit"), q.get("code"), q.get("system")) != (d.unit, d.unit, UCUM):
            out.append(f"{where}: unit {q.get('unit')!r} for {d.name}, the catalog says "
                       f"{d.unit!r}")
        for c in holder.get("valueCodeableConcept", {}).get("coding", []):
            if c.get("system") == SCREEN_SYSTEM and d.codes and c.get("code") not in d.codes:
                out.append(f"{where}: answer {c.get('code')!r} of {d.name} is not a catalog "
                           "code")
        return out

    def coded(self, res: dict[str, Any], where: str, readable: frozenset[Any]) -> list[str]:
        out = []
        for c in res.get("code", {}).get("coding", []):
            key = (c.get("system"), c.get("code"))
            d = self.by_code.get(key)
            if d is None and key in self.also:
                d, main = self.also[key]
            else:
                main = d.coding if d is not None else None
            if d is None:
                if key not in readable:
                    out.append(f"{where}: {key[0]}|{key[1]} is not a code of the catalog")
                continue
            if "display" in c and main is not None and c["display"] != main.display:
                out.append(f"{where}: display of {d.name} is {c['display']!r}, the catalog "
                           f"says {main.display!r}")
            out += self.value(d, where, res)
            for comp in res.get("component", []):
                out += self.value(d, f"{where} (component)", comp)
        return out

    def file(self, path: Path) -> tuple[list[str], set[str]]:
        """Problems in one generated Bundle, and the red-flag questions it answers."""
        problems, answered = [], set()
        for e in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            res = e["resource"]
            where = f"{path.relative_to(ROOT)}: {res['resourceType']}/{res.get('id')}"
            if res["resourceType"] == "Observation":
                problems += self.coded(res, where, self.reader.observations)
                answered |= {self.by_code[k].name for c in res["code"].get("coding", [])
                             if (k := (c.get("system"), c.get("code"))) in self.by_code}
            elif res["resourceType"] == "Condition":
                problems += self.coded(res, where, self.reader.conditions)
            elif res["resourceType"] == "QuestionnaireResponse":
                for it in _items(res.get("item", [])):
                    d = self.kb.facts.get(it["linkId"])
                    if d is not None:
                        answered.add(d.name)
                        if it.get("text") != d.question:
                            problems.append(f"{where}: item {d.name} asks {it.get('text')!r}, "
                                            f"the catalog asks {d.question!r}")
                    elif it["linkId"].startswith(("rf-", "startback-item-")):
                        problems.append(f"{where}: item {it['linkId']} is not a catalog fact")
        return problems, answered


def disagreements(kb: KnowledgeBase, files: list[Path] | None = None) -> list[str]:
    """Where the generated files and ``kb``'s catalog disagree (empty: they agree)."""
    catalog = _Catalog(kb)
    red_flags = set(red_flag_questions(kb))
    problems: list[str] = []
    answered: dict[Path, set[str]] = {d: set() for d in GENERATED}
    for path in files if files is not None else generated_files():
        found, names = catalog.file(path)
        problems += found
        answered.setdefault(path.parent, set()).update(names & red_flags)
    for folder, full in GENERATED.items():
        missing = red_flags - answered.get(folder, set())
        if full and missing:
            problems.append(f"{folder.relative_to(ROOT)}: no file answers the red-flag "
                            f"question(s) {', '.join(sorted(missing))} of the catalog")
    return problems


@pytest.fixture(scope="module")
def bundled() -> KnowledgeBase:
    return load_knowledge_base(bundled_path())


def test_every_generated_file_agrees_with_the_catalog(bundled: KnowledgeBase) -> None:
    assert len(generated_files()) >= 90
    assert disagreements(bundled) == []


def _mutated(tmp_path: Path, old: str, new: str, count: int = 1) -> KnowledgeBase:
    """A copy of the bundled knowledge base with one edit of its fact catalog."""
    root = tmp_path / "kb"
    shutil.copytree(bundled_path(), root, ignore=shutil.ignore_patterns("scenarios"))
    facts = root / "facts.yaml"
    text = facts.read_text(encoding="utf-8")
    assert text.count(old) >= count, old
    facts.write_text(text.replace(old, new, count), encoding="utf-8")
    return load_knowledge_base(root)


RF_FEVER = re.compile(r"  - name: rf-fever\n(?:    .*\n|      .*\n)+")


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("code: 72514-3", "code: 72514-9", "http://loinc.org|72514-3 is not a code"),
    ("    unit: '%'", "    unit: '1'", "unit '%' for odi-score"),
    ("display: Osteoporosis", "display: Osteoporosis (disorder)", "display of condition-"),
    ("      - none\n", "", "answer 'none' of directional-preference"),
])
def test_a_changed_catalog_entry_is_found(tmp_path: Path, old: str, new: str,
                                          expected: str) -> None:
    found = disagreements(_mutated(tmp_path, old, new))
    assert any(expected in p for p in found), found[:5]


def test_a_red_flag_question_no_generator_covers_is_found(tmp_path: Path) -> None:
    text = (bundled_path() / "facts.yaml").read_text(encoding="utf-8")
    block = RF_FEVER.search(text)
    assert block is not None
    extra = block.group(0).replace("rf-fever", "rf-new-question")
    kb = _mutated(tmp_path, block.group(0), block.group(0) + extra)
    assert "rf-new-question" in red_flag_questions(kb)
    found = disagreements(kb)
    assert any("no file answers the red-flag question(s) rf-new-question" in p
               for p in found), found[:5]
    assert len([p for p in found if "rf-new-question" in p]) == len(GENERATED)


def test_the_synthetic_population_asks_the_catalog_red_flag_questions(
        bundled: KnowledgeBase) -> None:
    asked = set()
    for i in range(40):
        for e in synthetic_bundle(3, i, AS_OF)["entry"]:
            res = e["resource"]
            asked |= {c["code"] for c in res.get("code", {}).get("coding", [])
                      if c["code"].startswith("rf-")}
    assert asked == set(red_flag_questions(bundled))


def _builder(kb: KnowledgeBase) -> BundleBuilder:
    import uuid
    return BundleBuilder(kb, patient("p1", gender="female", birth_date="1980-01-01"),
                         bundle_id="b", namespace=uuid.UUID(int=1), key_prefix="",
                         timestamp="2026-11-01T10:00:00Z")


def test_the_builder_refuses_what_the_catalog_does_not_define(bundled: KnowledgeBase) -> None:
    b = _builder(bundled)
    with pytest.raises(FactCatalogError, match="'pain-later' is not in the fact catalog"):
        b.obs("pain-later", 3)
    with pytest.raises(FactCatalogError, match="no input code"):
        fact_code(bundled, "red-flag-discordant" if "red-flag-discordant" in bundled.facts
                  else next(n for n, d in bundled.facts.items() if d.coding is None))
    with pytest.raises(FactCatalogError, match="type integer"):
        b.obs("pain-now", 4.5)
    with pytest.raises(FactCatalogError, match="codes back-only"):
        b.obs("symptom-distribution", "one-leg")
    with pytest.raises(FactCatalogError, match=r"not red-flag questions.*rf-headache"):
        b.red_flags("rf-headache")
    with pytest.raises(FactCatalogError):
        questionnaire_item(bundled, "rf-headache")
    assert fact_value(bundled, "odi-score", 30.0) == {"valueQuantity": {
        "value": 30.0, "unit": "%", "system": UCUM, "code": "%"}}
    b.red_flags("rf-fever")
    names = [r["code"]["coding"][0]["code"] for r in b.resources[1:]]
    assert names == list(red_flag_questions(bundled))
    assert [r["valueBoolean"] for r in b.resources[1:]].count(True) == 1


def test_the_builder_follows_a_changed_catalog(tmp_path: Path) -> None:
    kb = _mutated(tmp_path, "code: 72514-3", "code: 72514-9")
    obs = _builder(kb).obs("pain-now", 4)
    assert obs["code"]["coding"][0]["code"] == "72514-9"
