"""Adversarial review of issue 15 (the kept durable-rules session and the knowledge-base
cache): each finding is a test that failed before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts, load_knowledge_base
from tests.patients import AS_OF, fact_strategy, follow_up_strategy


def _patient(*facts: Fact) -> PatientFacts:
    return PatientFacts.build("Patient/p", AS_OF, facts)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv("MOVEMENT_CDS_CACHE_DIR", str(where))
    return where


def test_a_symlinked_rules_directory_is_never_served_stale(
    kb_copy: Path, cache: Path, tmp_path: Path
) -> None:
    """finding 1: the cache key hashed ``rglob('*.yaml')``, which does not descend into a
    symlinked directory, while the loader reads ``rules/*.yaml`` through it: an edited (or
    broken) rule in a knowledge base whose rules/ is a symlink kept being served from the
    cache, with no error and under the same ruleset name."""
    shared = tmp_path / "shared-rules"
    (kb_copy / "rules").rename(shared)
    (kb_copy / "rules").symlink_to(shared, target_is_directory=True)
    before = load_knowledge_base(kb_copy)
    rules = kb_copy / "rules" / "classification.yaml"
    text = rules.read_text()
    rules.write_text(text.replace("priority: 5", "priority: 6", 1))
    after = load_knowledge_base(kb_copy)
    changed = [r.id for r in after.rules if r.priority != before.rule(r.id).priority]
    assert len(changed) == 1
    rules.write_text(text.replace("      is: peripheralizes", "      is: peripheralizes\n"
                                  "      gt: 2", 1))
    with pytest.raises(ValueError, match=r"rules/classification\.yaml:8:7:"):
        load_knowledge_base(kb_copy)


_FLOATS = """
import sys
from datetime import UTC, datetime
from cds import Evaluator, Fact, PatientFacts, load_knowledge_base
from knowledge_base import bundled_path
kb = load_knowledge_base(bundled_path())
durable, reference = Evaluator(kb, "durable"), Evaluator(kb, "reference")
for name in ("slr-angle", "odi-score", "episode-duration"):
    for value in (1e-05, 2e-07, -3e-06, 5e-324, 1e16, 1e100, 12.5, 1.0000001e-05):
        p = durable.prepare(PatientFacts.build("Patient/p", datetime(2026, 11, 2, tzinfo=UTC), [
            Fact(name, value, ("Observation/1",)), Fact("rf-fever", True, ("Observation/2",))]))
        try:
            got = durable.derive(p)
        except Exception as e:
            sys.exit(f"{name}={value!r}: {e}")
        if got != reference.derive(p):
            sys.exit(f"{name}={value!r}: durable and reference differ")
for value in (float("inf"), float("-inf"), float("nan")):  # refused, not a crash
    p = durable.prepare(PatientFacts.build("Patient/p", datetime(2026, 11, 2, tzinfo=UTC), [
        Fact("odi-score", value, ("Observation/1",))]))
    try:
        durable.derive(p)
        sys.exit(f"odi-score={value!r} was not refused")
    except RuntimeError as e:  # EngineError
        if "not a finite number" not in str(e):
            sys.exit(f"odi-score={value!r}: {e}")
print("ok")
"""


def test_floats_written_with_an_exponent_reach_the_engine_intact(tmp_path: Path) -> None:
    """finding 2: Python writes 1e-05, 1e+16 or 5e-324 without a decimal point, and
    durable-rules' JSON reader (``getNumber``) only reads an exponent after a '.': the
    fact is misread, reported lost ('rule engine failed', no advice, for an ODI of
    0.00001 % in a FHIR Bundle) or the process dies of a segmentation fault (odi-score
    1e-05 with rf-fever; infinity too). Run in a child process, which may crash."""
    env = dict(os.environ, MOVEMENT_CDS_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", _FLOATS], capture_output=True, text=True,
                         env=env, timeout=120)
    assert (run.returncode, run.stdout.strip()) == (0, "ok"), run.stderr[-2000:]


def _interrupted(ev: Evaluator, patient: PatientFacts, nth: int) -> bool:
    """Evaluate with a KeyboardInterrupt raised at the ``nth`` Python call made inside the
    runner's ``evaluate`` (where a signal handler's exception can land); whether it was."""
    from cds import _engine

    target = _engine.RuleEngine.evaluate.__code__
    seen = [0, False]  # calls counted, inside evaluate

    def tracer(frame: FrameType, event: str, _arg: object) -> None:
        if frame.f_code is target:
            seen[1] = True
            return None
        if event == "call" and seen[1]:
            seen[0] += 1
            if seen[0] == nth:
                raise KeyboardInterrupt
        return None

    sys.settrace(tracer)
    try:
        ev.derive(patient)
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


def test_an_interrupted_evaluation_leaves_no_session_behind(
    durable: Evaluator, reference: Evaluator
) -> None:
    """finding 3: a session taken before the ``try`` whose ``finally`` deletes it was left
    alive by an exception raised in between (a signal handler's KeyboardInterrupt at the
    ``FiringLog`` call); durable-rules refuses every evaluation past 1,024 live sessions.
    Each call the runner makes is interrupted in turn: afterwards the lock is free, the
    interrupted evaluation's session is gone, and the next patient gets the reference
    result."""
    from cds import _engine
    from tests.test_engine import _alive, _next_sid

    patient = durable.prepare(_patient(Fact("rf-fever", True, ("Observation/1",)),
                                       Fact("pain-now", 6, ("Observation/2",)),
                                       Fact("rf-cancer-history", False, ("Observation/3",))))
    want = reference.derive(patient)
    leaked = []
    nth = 1
    while True:
        sid = _next_sid()
        if not _interrupted(durable, patient, nth):
            break
        assert not _engine._LOCK.locked()
        if _alive(durable, sid):
            leaked.append(nth)
        assert durable.derive(patient) == want
        nth += 1
    assert nth > 5 and leaked == []


def test_failed_evaluations_delete_their_sessions(kb_copy: Path) -> None:
    """Every evaluation here fails (two rules derive different values), and each must still
    delete its session: durable-rules refuses every evaluation past 1,024 live sessions."""
    from cds import EngineError
    from tests.test_engine import _write_conflicting_kb

    ev = Evaluator(_write_conflicting_kb(kb_copy, "0.1.0-review-deleted"))
    bad = ev.prepare(_patient(Fact("pain-now", 7, ("Observation/1",))))
    for _ in range(1100):
        with pytest.raises(EngineError, match="rules disagree"):
            ev.derive(bad)
    good = _patient(Fact("pain-now", 1, ("Observation/1",)))
    assert ev.evaluate(good) == Evaluator(ev.kb, "reference").evaluate(good)


_REVIEW = settings(max_examples=20, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_REVIEW
@given(data=st.data())
def test_sequences_of_patients_match_the_reference(
    data: st.DataObject, kb: KnowledgeBase, durable: Evaluator, reference: Evaluator,
    starter: Evaluator, starter_reference: Evaluator,
) -> None:
    """What held up in the review: random patients (some at a follow-up, so the per-exercise
    ruleset serves each exercise in turn, some the same patient again) on
    two knowledge bases alternating in one process, each plan equal to the reference."""
    kinds = st.tuples(fact_strategy(kb), st.one_of(st.none(), follow_up_strategy(kb)),
                      st.booleans(), st.booleans())
    seen: list[PatientFacts] = []
    for facts, follow_up, again, starter_kb in data.draw(st.lists(kinds, min_size=2,
                                                                   max_size=6)):
        patient = (seen[-1] if again and seen
                   else PatientFacts.build("Patient/p", AS_OF, facts, follow_up=follow_up))
        seen.append(patient)
        if starter_kb:
            names = starter.compiled.fact_names
            small = PatientFacts.build("Patient/p", AS_OF,
                                       [f for f in patient.facts if f.name in names])
            assert starter.evaluate(small) == starter_reference.evaluate(small)
        assert _plan_or_error(durable, patient) == _plan_or_error(reference, patient)


def _plan_or_error(ev: Evaluator, patient: PatientFacts) -> object:
    try:
        return ev.evaluate(patient)
    except ValueError as e:  # an invalid follow-up: the same refusal from both
        return str(e)


def test_unusable_overrides_get_the_loaders_error_with_the_cache_on(
    kb_copy: Path, cache: Path
) -> None:
    """finding 4: the cache key sorts the overrides' keys (``json.dumps(sort_keys=True)``),
    so keys of mixed types made ``load_knowledge_base`` raise ``TypeError: '<' not
    supported`` where the loader (cache off) names each unknown parameter."""
    from cds import KnowledgeBaseError

    with pytest.raises(KnowledgeBaseError, match="unknown parameter '1'"):
        load_knowledge_base(kb_copy, {1: 2, "a": 3})  # type: ignore[dict-item]


def test_an_entry_from_other_parser_or_model_library_versions_is_not_read(
    kb_copy: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finding 5: the pickled knowledge base is ruamel.yaml's parse validated into pydantic
    models; upgrading either in place (same package and Python versions) kept serving
    entries made by the old ones (pydantic objects unpickled without validation)."""
    import pydantic
    import ruamel.yaml

    load_knowledge_base(kb_copy)
    with monkeypatch.context() as m:
        m.setattr(pydantic, "VERSION", "0.0.0-other")
        load_knowledge_base(kb_copy)
    with monkeypatch.context() as m:
        m.setattr(ruamel.yaml, "__version__", "0.0.0-other")
        load_knowledge_base(kb_copy)
    assert len(list(cache.glob("kb-*.pickle"))) == 3


def test_threads_and_a_forked_child_share_no_patient(
    durable: Evaluator, reference: Evaluator, starter: Evaluator,
    starter_reference: Evaluator, kb: KnowledgeBase,
) -> None:
    """What held up: threads evaluating at once on two knowledge bases (every evaluation
    holds the engine's lock, the kept sessions included), and a child forked while kept
    sessions exist evaluating on its copy while the parent goes on."""
    import random
    import threading

    def draw(rng: random.Random) -> PatientFacts:
        facts = []
        for name, d in sorted(kb.facts.items()):
            if d.derived or d.scope != "patient" or rng.random() < 0.6:
                continue
            value = (rng.random() < 0.3 if d.type == "boolean"
                     else rng.choice(d.codes or [""]) if d.type == "code"
                     else rng.randint(int(d.min or 0), int(d.max or 100)))
            facts.append(Fact(name, float(value) if d.type == "decimal" else value,
                              (f"Observation/{name}",)))
        return PatientFacts.build("Patient/p", AS_OF, facts)

    rng = random.Random(15)
    patients = [draw(rng) for _ in range(12)]
    names = starter.compiled.fact_names
    small = [PatientFacts.build("Patient/p", AS_OF, [f for f in p.facts if f.name in names])
             for p in patients]
    want = [reference.evaluate(p) for p in patients]
    want_small = [starter_reference.evaluate(p) for p in small]
    wrong: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            i = rng.randrange(len(patients))
            if rng.random() < 0.5 and durable.evaluate(patients[i]) != want[i]:
                wrong.append(i)
            elif starter.evaluate(small[i]) != want_small[i]:
                wrong.append(-i)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports by its exit code
        same = all(durable.evaluate(p) == w for p, w in zip(patients, want, strict=True))
        os._exit(0 if same else 1)
    same = all(starter.evaluate(p) == w for p, w in zip(small, want_small, strict=True))
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 and same


def test_concurrent_cold_loads_write_one_entry_and_no_stray_file(
    kb_copy: Path, cache: Path
) -> None:
    """What held up: eight threads loading at once with a cold cache all get the same
    knowledge base, and the directory ends with one entry, no temporary file."""
    import threading

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(load_knowledge_base(kb_copy)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert [p.name.startswith("kb-") for p in cache.iterdir()] == [True]
