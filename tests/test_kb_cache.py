"""The knowledge-base cache (``cds._kb_cache``): never stale, never hiding an error's
position, harmless when unusable, and what the service's worker processes load from."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

import cds._knowledge_base as kb_module
from cds import (
    EngineResult,
    Evaluator,
    Fact,
    KnowledgeBaseError,
    PatientFacts,
    load_knowledge_base,
)
from tests.patients import AS_OF


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv("MOVEMENT_CDS_CACHE_DIR", str(where))
    return where


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("kb-*.pickle"))


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any) -> None:
        raise AssertionError("the knowledge base was parsed again")

    monkeypatch.setattr(kb_module, "_parse_knowledge_base", refuse)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = kb_module._parse_knowledge_base

    def parse(root: Path, overrides: Any) -> Any:
        calls.append(root)
        return real(root, overrides)

    monkeypatch.setattr(kb_module, "_parse_knowledge_base", parse)
    return calls


def test_a_warm_cache_gives_the_same_knowledge_base_without_parsing(
    kb_copy: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_knowledge_base(kb_copy)
    assert len(_entries(cache)) == 1
    assert (cache.stat().st_mode & 0o777) == 0o700
    _no_parsing(monkeypatch)
    again = load_knowledge_base(kb_copy)
    assert again == first and again is not first
    assert again.root == kb_copy and again.locations == first.locations


def test_a_broken_file_still_reports_file_line_and_column_with_the_cache_warm(
    kb_copy: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_knowledge_base(kb_copy)
    rules = kb_copy / "rules" / "classification.yaml"
    good = rules.read_text()
    rules.write_text(good.replace("      is: peripheralizes", "      is: peripheralizes\n"
                                  "      gt: 2", 1))
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(kb_copy)
    (msg,) = [str(p) for p in err.value.problems if p.severity == "error"]
    assert msg.startswith("rules/classification.yaml:8:7:") and "exactly one of" in msg
    lines = good.splitlines()
    lines[6] += " : : ["
    rules.write_text("\n".join(lines) + "\n")
    with pytest.raises(KnowledgeBaseError) as err:
        load_knowledge_base(kb_copy)
    (msg,) = [str(p) for p in err.value.problems if p.severity == "error"]
    _file, line, col, *_ = msg.split(":")
    assert _file == "rules/classification.yaml" and int(line) >= 7 and int(col) >= 1
    assert len(_entries(cache)) == 1  # nothing broken was kept
    rules.write_text(good)  # the same bytes as before: the entry serves again
    _no_parsing(monkeypatch)
    load_knowledge_base(kb_copy)


def test_an_edited_file_or_other_parameters_are_never_served_stale(
    kb_copy: Path, cache: Path
) -> None:
    before = load_knowledge_base(kb_copy)
    rules = kb_copy / "rules" / "classification.yaml"
    rules.write_text(rules.read_text().replace("priority: 5", "priority: 6", 1))
    after = load_knowledge_base(kb_copy)
    changed = [r.id for r in after.rules if r.priority != before.rule(r.id).priority]
    assert len(changed) == 1
    name, pdef = next(iter(before.parameters.items()))
    value = pdef.value + 1 if pdef.max is None or pdef.value + 1 <= pdef.max else pdef.value - 1
    overridden = load_knowledge_base(kb_copy, {name: value})
    assert overridden.parameter(name) == value != after.parameter(name)
    assert load_knowledge_base(kb_copy).parameter(name) == pdef.value
    assert len(_entries(cache)) == 3


def test_an_unusable_cache_only_means_parsing(
    kb_copy: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = _counting(monkeypatch)
    want = load_knowledge_base(kb_copy)
    (entry,) = _entries(cache)
    entry.write_bytes(b"not a pickle")  # corrupt: parsed, then written anew
    with caplog.at_level(logging.WARNING, logger="movement_cds.kb"):
        assert load_knowledge_base(kb_copy) == want
    assert "unusable" in caplog.text and len(calls) == 2
    assert load_knowledge_base(kb_copy) == want and len(calls) == 2
    os.chmod(cache, 0o777)  # others could plant an entry: not read
    assert load_knowledge_base(kb_copy) == want and len(calls) == 3
    os.chmod(cache, 0o700)
    assert load_knowledge_base(kb_copy) == want and len(calls) == 3
    blocked = cache.parent / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("MOVEMENT_CDS_CACHE_DIR", str(blocked / "sub"))  # cannot be made
    assert load_knowledge_base(kb_copy) == want and len(calls) == 4
    monkeypatch.setenv("MOVEMENT_CDS_CACHE_DIR", "")  # off
    assert load_knowledge_base(kb_copy) == want and len(calls) == 5


def _worker(root: str) -> tuple[int, EngineResult]:
    """In a fresh (spawned) process, like a service worker: load without parsing, build
    this process's own durable-rules ruleset, evaluate."""
    def refuse(*_a: Any) -> None:
        raise AssertionError("the worker parsed the knowledge base")

    kb_module._parse_knowledge_base = refuse  # type: ignore[assignment]
    ev = Evaluator(load_knowledge_base(root), "durable")
    patient = ev.prepare(PatientFacts.build("Patient/p", AS_OF, [
        Fact("pain-now", 7, ("Observation/1",)),
        Fact("rf-saddle-anaesthesia", True, ("Observation/2",)),
    ]))
    return os.getpid(), ev.derive(patient)


def test_worker_processes_load_from_the_cache_and_build_their_own_engine(
    kb_copy: Path, cache: Path
) -> None:
    kb = load_knowledge_base(kb_copy)  # the parent (the service's supervisor) parses once
    ref = Evaluator(kb, "reference")
    want = ref.derive(ref.prepare(PatientFacts.build("Patient/p", AS_OF, [
        Fact("pain-now", 7, ("Observation/1",)),
        Fact("rf-saddle-anaesthesia", True, ("Observation/2",)),
    ])))
    assert "alert.suspected-cauda-equina" in want.derived
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_worker, [str(kb_copy)] * 4, chunksize=1)
    assert [r for _, r in results] == [want] * 4
    assert os.getpid() not in {pid for pid, _ in results}
