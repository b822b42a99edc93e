"""The shortcuts taken for speed (issue 15, row 2) against what they replace, and no state
that carries one patient's data into another's output.

- resource ids: ``_outbound._uuid5`` against ``str(uuid.uuid5(namespace, name))``;
- the digest's fact order: ``_outbound._sorted_facts`` against sorting by the rows'
  ``json.dumps(..., sort_keys=True)`` text (names with quotes, spaces, ``!``, non-ASCII
  letters and repeated names, where ordering by the name alone would differ);
- red-flag answers: ``read_red_flag``'s one-answer shortcut against the general reading;
- whole evaluations: random patients evaluated one after the other by one
  ``DecisionSupport`` give the same bytes as each evaluated by a second one, with every
  module-level cache the writer and the reader keep emptied first, and as a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import Fact
from fhir_adapters import _inbound, _outbound, synth_patient, synthetic_bundle
from fhir_adapters._red_flag_answers import Answer, _read_all, read_red_flag
from movement_cds import DecisionSupport

ROOT = Path(__file__).resolve().parent.parent
AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@given(st.text(max_size=80))
def test_uuid5_text_is_uuid5(name: str) -> None:
    try:
        want = str(uuid.uuid5(_outbound._NAMESPACE, name))
    except UnicodeEncodeError:  # a lone surrogate: neither can encode it
        with pytest.raises(UnicodeEncodeError):
            _outbound._uuid5(name)
        return
    assert _outbound._uuid5(name) == want


_NAMES = st.sampled_from(["a", "a b", "a!", "a!b", "a.left", "a\"", "a\\", "é", "e", "z",
                          "a\t", "A", "", "rf-fever", "rf-fever.right", "\u2028", "ab"])
_VALUES = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False),
                    st.text(max_size=3))
_FACTS = st.lists(st.builds(
    Fact, st.one_of(_NAMES, st.text(max_size=4)), _VALUES,
    st.lists(st.sampled_from(["Observation/2", "Observation/10", "Patient/p"]),
             max_size=3).map(tuple), st.booleans()), max_size=12)


@given(_FACTS)
def test_digest_fact_order_is_the_json_text_order(facts: list[Fact]) -> None:
    want = sorted(([f.name, f.value, sorted(f.sources), f.preliminary] for f in facts),
                  key=_outbound._FACT_ORDER)
    assert _outbound._sorted_facts(facts) == want


_WHEN = st.one_of(st.none(), st.datetimes(datetime(2020, 1, 1), datetime(2027, 1, 1),
                                          timezones=st.just(UTC)))


@given(value=st.sampled_from([True, False, None]), when=_WHEN,
       precision=st.integers(1, 4), max_age=st.one_of(st.none(), st.floats(0, 800)),
       discordance=st.floats(0, 60), lifelong=st.booleans(), with_label=st.booleans())
def test_one_answer_shortcut_is_the_general_reading(
        value: bool | None, when: datetime | None, precision: int, max_age: float | None,
        discordance: float, lifelong: bool, with_label: bool) -> None:
    answer = Answer(value, when, ("Observation/1",), (precision, "", ""), precision,
                    "1 Oct 2026" if with_label else None)
    args = ("Fever", [answer], AS_OF, max_age, discordance, lifelong)
    assert read_red_flag(*args) == _read_all(*args)


# --- no state shared between patients -------------------------------------------------------

def _clear_module_caches() -> None:
    """Every cache the reader and the writer keep outside a knowledge base."""
    _outbound._DATACLASS_FIELDS.clear()
    _inbound._parse_instant_text.cache_clear()
    _inbound._shown_as_sent.cache_clear()


def _patient(kind: int, index: int) -> str:
    """A synthetic first visit (kind 0) or a Bulk-export patient, often a follow-up."""
    if kind == 0:
        return json.dumps(synthetic_bundle(3, index, AS_OF))
    kb = _support().kb
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": r} for r in synth_patient(5, index, AS_OF, kb)]})


_SUPPORTS: list[DecisionSupport] = []


def _support() -> DecisionSupport:
    if not _SUPPORTS:
        _SUPPORTS.extend([DecisionSupport(), DecisionSupport()])
    return _SUPPORTS[0]


def _output(support: DecisionSupport, text: str, as_of: datetime, advice_only: bool) -> str:
    ev = support.pipeline.evaluate(text, as_of, advice_only=advice_only)
    return json.dumps(ev.bundle, sort_keys=True) + "\n" + ev.summary


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 60), st.integers(0, 40),
                          st.booleans()), min_size=2, max_size=6))
def test_patients_in_alternation_match_a_cleared_evaluation(
        visits: list[tuple[int, int, int, bool]]) -> None:
    shared = _support()
    other = _SUPPORTS[1]  # its own knowledge base object and its own engine
    texts = {(k, i): _patient(k, i) for k, i, _, _ in visits}
    # each patient twice, interleaved with the others: A B C A B C
    got = [_output(shared, texts[k, i], AS_OF + timedelta(days=d), adv)
           for _ in range(2) for k, i, d, adv in visits]
    for n, (k, i, d, adv) in enumerate(visits * 2):
        _clear_module_caches()
        assert got[n] == _output(other, texts[k, i], AS_OF + timedelta(days=d), adv), (k, i)


_FRESH = """
import json, sys
from datetime import datetime
from movement_cds import DecisionSupport
ds = DecisionSupport()
for line in sys.stdin:
    text, as_of = json.loads(line)
    ev = ds.pipeline.evaluate(text, datetime.fromisoformat(as_of))
    print(json.dumps(json.dumps(ev.bundle, sort_keys=True) + "\\n" + ev.summary))
"""


def test_patients_in_one_process_match_each_in_a_fresh_process() -> None:
    """Patients in one process (after others) against each alone in a new process."""
    shared = _support()
    cases = [(_patient(i % 2, 100 + i), AS_OF + timedelta(days=i)) for i in range(3)]
    for text, _ in reversed(cases):  # the shared process has seen every patient before
        shared.evaluate(text, as_of=AS_OF)
    got = [_output(shared, text, as_of, False) for text, as_of in cases]
    for (text, as_of), mine in zip(cases, got, strict=True):
        fresh = subprocess.run(
            [sys.executable, "-c", _FRESH], input=json.dumps([text, as_of.isoformat()]) + "\n",
            capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
        assert json.loads(fresh.stdout) == mine

