"""The shortcuts taken for speed (issue 15, row 2) against what they replace, and no state
that carries one patient's data into another's output.

- resource ids: ``_outbound._uuid5`` against ``str(uuid.uuid5(namespace, name))``;
- the digest's fact order: ``_outbound._sorted_facts`` against sorting by the rows'
  ``json.dumps(..., sort_keys=True)`` text (names with quotes, spaces, ``!``, non-ASCII
  letters and repeated names, where ordering by the name alone would differ);
- red-flag answers: ``read_red_flag``'s one-answer shortcut against the general reading;
- whole evaluations: random patients evaluated one after the other by one
  ``DecisionSupport`` give the same bytes as each evaluated by a process that has
  evaluated no other patient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import Fact
from fhir_adapters import _inbound, _outbound, read_bundle, synth_patient, synthetic_bundle
from fhir_adapters._red_flag_answers import Answer, _read_all, read_red_flag
from movement_cds import DecisionSupport
from tests.compiled import source_module

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

def _patient(kind: int, index: int) -> str:
    """A synthetic first visit (kind 0) or a Bulk-export patient, often a follow-up."""
    if kind == 0:
        return json.dumps(synthetic_bundle(3, index, AS_OF))
    resources = synth_patient(5, index, AS_OF, _support().kb)
    entries: list[dict[str, object]] = [{"resource": r} for r in resources]
    if not resources[0]["id"].startswith("syn-"):  # a UUID id: as population run reads it
        entries[0]["fullUrl"] = f"urn:uuid:{resources[0]['id']}"
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


_SUPPORTS: list[DecisionSupport] = []


def _support() -> DecisionSupport:
    if not _SUPPORTS:
        _SUPPORTS.append(DecisionSupport())
    return _SUPPORTS[0]


def _output(support: DecisionSupport, text: str, days: int, advice_only: bool) -> str:
    ev = support.pipeline.evaluate(text, AS_OF + timedelta(days=days), advice_only=advice_only)
    return json.dumps(ev.bundle, sort_keys=True) + "\n" + ev.summary


# A process that loads the knowledge base and evaluates nothing, then forks one child per
# case: each case is evaluated by a process that has evaluated no other patient.
_FRESH = """
import json, os, sys
from datetime import UTC, datetime, timedelta
from movement_cds import DecisionSupport
ds = DecisionSupport()
AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
out = []
for line in sys.stdin:
    text, days, adv = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        ev = ds.pipeline.evaluate(text, AS_OF + timedelta(days=days), advice_only=adv)
        data = (json.dumps(ev.bundle, sort_keys=True) + "\\n" + ev.summary).encode()
        with os.fdopen(w, "wb") as fh:
            fh.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        out.append(fh.read().decode())
    assert os.waitpid(pid, 0)[1] == 0
print(json.dumps(out))
"""

_POOL = [(k, i, d, adv) for k, i in [(0, 1), (0, 2), (0, 7), (1, 0), (1, 3), (1, 8), (1, 11)]
         for d in (0, 45) for adv in (False, True)]
_FRESH_OUTPUT: dict[tuple[int, int, int, bool], str] = {}


def _fresh_outputs() -> dict[tuple[int, int, int, bool], str]:
    """Every pool case as a fresh process evaluates it (computed once)."""
    if not _FRESH_OUTPUT:
        lines = "".join(json.dumps([_patient(k, i), d, adv]) + "\n" for k, i, d, adv in _POOL)
        done = subprocess.run([sys.executable, "-c", _FRESH], input=lines, capture_output=True,
                              text=True, check=True, cwd=ROOT, timeout=300)
        _FRESH_OUTPUT.update(zip(_POOL, json.loads(done.stdout), strict=True))
    return _FRESH_OUTPUT


@pytest.mark.slow  # forks a process per case: CI runs it (make test)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fresh evaluations fork")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_POOL), min_size=2, max_size=8))
def test_patients_in_alternation_match_a_fresh_process(
        visits: list[tuple[int, int, int, bool]]) -> None:
    """Random patients (first visits and follow-ups, full and advice-only), one after the
    other in one process, each twice (A B C A B C): each output is, byte for byte, the one a
    process that evaluated no other patient writes."""
    fresh = _fresh_outputs()
    shared = _support()
    texts = {(k, i): _patient(k, i) for k, i, _, _ in visits}
    for k, i, d, adv in visits * 2:
        assert _output(shared, texts[k, i], d, adv) == fresh[k, i, d, adv], (k, i, d, adv)


# --- one red-flag answer, read without the general reading -----------------------------------

_RF_NAMES = ["rf-fever", "rf-saddle-anaesthesia", "rf-cancer-history"]
_DATES = st.one_of(
    st.sampled_from(["2026-11-02", "2026-11", "2026", "2026-11-02T09:04:00Z",
                     "2026-11-02T10:00:00Z", "2026-11-03", "not a date"]),
    st.integers(-900, 2).map(lambda d: (AS_OF + timedelta(days=d)).isoformat()),
    # around the items' 14-day limit, to the hour
    st.integers(-24 * 16, -24 * 12).map(lambda h: (AS_OF + timedelta(hours=h)).isoformat()))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(_RF_NAMES), status=st.sampled_from(["final", "preliminary",
                                                                 "amended", "cancelled"]),
       when=st.one_of(st.none(), _DATES), value=st.sampled_from([False, True, 0, "no", None]),
       with_id=st.booleans())
def test_one_current_no_is_the_general_reading(name: str, status: str, when: str | None,
                                               value: object, with_id: bool) -> None:
    kb = _support().kb
    coding = kb.facts[name].coding
    assert coding is not None
    obs: dict[str, object] = {"resourceType": "Observation", "status": status,
                              "code": {"coding": [{"system": coding.system,
                                                   "code": coding.code}]},
                              "subject": {"reference": "Patient/p"}}
    if with_id:
        obs["id"] = "o1"
    if when is not None:
        obs["effectiveDateTime"] = when
    if value is not None:
        obs["valueBoolean"] = value
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p", "birthDate": "1970-01-01"}},
        {"resource": obs}]}
    fast = read_bundle(bundle, kb=kb, as_of=AS_OF)
    # the general reading: the reader's source without the shortcut (a compiled reader's
    # calls inside it would not see its class changed)
    general = _GENERAL.read_patient_facts(bundle, kb, AS_OF, False)
    assert repr(fast) == repr(general)


def _reader_without_shortcut() -> Any:
    reader = source_module("fhir_adapters._inbound")
    reader._Reader.one_current_no = lambda self, c: False
    return reader


_GENERAL = _reader_without_shortcut()


def test_the_general_reading_is_the_reader_without_its_shortcut() -> None:
    """The comparison above can fail: its general reader reads every answer the long way."""
    assert _GENERAL._Reader.one_current_no(None, None) is False
    assert _inbound._Reader.one_current_no is not _GENERAL._Reader.one_current_no
    assert str(_GENERAL.__file__).endswith("_inbound.py")


def _dataclasses_reachable(root: type) -> set[type]:
    """Every dataclass a value of ``root`` can hold, through its fields' annotations."""
    import dataclasses
    import typing

    seen: set[type] = set()
    todo: list[object] = [root]
    while todo:
        t = todo.pop()
        todo.extend(typing.get_args(t))
        if isinstance(t, type) and dataclasses.is_dataclass(t) and t not in seen:
            seen.add(t)
            todo.extend(typing.get_type_hints(t).values())
    return seen


def test_the_digest_sees_every_field_of_the_plan() -> None:
    """The id digest lets orjson write the plan's dataclasses, and orjson leaves out a field
    whose name starts with ``_`` (found by review): two plans that differ only there would
    get the same ids. No dataclass a plan or a previous plan can hold has such a field; the
    control: orjson does leave such a field out."""
    import dataclasses

    import orjson

    from cds._followup import PreviousPlan
    from cds._plan import Plan

    reachable = _dataclasses_reachable(Plan) | _dataclasses_reachable(PreviousPlan)
    assert Plan in reachable and len(reachable) > 10
    hidden = sorted(f"{t.__name__}.{f.name}" for t in reachable
                    for f in dataclasses.fields(t) if f.name.startswith("_"))
    assert not hidden, hidden

    @dataclasses.dataclass
    class WithHidden:
        shown: int
        _hidden: int

    assert orjson.dumps(WithHidden(1, 2)) == orjson.dumps(WithHidden(1, 3))
