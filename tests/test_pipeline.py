"""The whole pipeline, FHIR in to FHIR out, as properties over random patients."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import KnowledgeBase
from movement_cds import DecisionSupport, InvalidBundleError
from tests.fhir_factory import bundle, condition, observation, patient
from tests.patients import fact_strategy

AS_OF = "2026-11-02T09:00:00Z"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def support(kb: KnowledgeBase) -> DecisionSupport:
    return DecisionSupport(kb)


@pytest.fixture(scope="module")
def oracle(kb: KnowledgeBase) -> DecisionSupport:
    return DecisionSupport(kb, engine="reference")


def fhir_patient(kb: KnowledgeBase) -> st.SearchStrategy[dict[str, Any]]:
    """A random patient as a FHIR Bundle, from the fact catalog's value ranges."""

    def to_bundle(facts: list[Any]) -> dict[str, Any]:
        sided: dict[str, dict[str, Any]] = {}
        resources = [patient()]
        for f in facts:
            base, _, side = f.name.partition(".")
            if side:
                sided.setdefault(base, {})[side] = f.value
            elif base.startswith("condition-"):
                if f.value:
                    resources.append(condition(base, cid=f"cond-{base}"))
            elif base not in ("age", "sex"):
                resources.append(observation(base, f.value))
        for base, sides in sorted(sided.items()):
            resources.append(observation(base, left=sides.get("left"), right=sides.get("right")))
        return bundle(*resources)

    return fact_strategy(kb, recorded_only=True).map(to_bundle)


def _shuffled(b: dict[str, Any], seed: int) -> dict[str, Any]:
    entries = list(b["entry"])
    random.Random(seed).shuffle(entries)
    return {**b, "entry": entries}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")
                                        if not p.name.startswith("invalid-other")))
def test_examples_in_any_order_give_a_byte_identical_bundle(
    name: str, support: DecisionSupport
) -> None:
    data = json.loads((EXAMPLES / name).read_text())
    first = support.evaluate(data, as_of=AS_OF).to_json()
    for seed in range(5):
        assert support.evaluate(_shuffled(data, seed), as_of=AS_OF).to_json() == first


@SETTINGS
@given(data=st.data(), seed=st.integers())
def test_random_patients_in_any_order_give_the_same_bundle_on_both_engines(
    data: st.DataObject, seed: int, support: DecisionSupport, oracle: DecisionSupport,
    kb: KnowledgeBase,
) -> None:
    b = data.draw(fhir_patient(kb))
    out = support.evaluate(b, as_of=AS_OF)
    assert support.evaluate(_shuffled(b, seed), as_of=AS_OF).to_json() == out.to_json()
    assert oracle.evaluate(b, as_of=AS_OF).to_json() == out.to_json()
    # safety rules on the output itself
    careplan = out.bundle["entry"][0]["resource"]
    priorities = {e["resource"].get("priority") for e in out.bundle["entry"]
                  if e["resource"]["resourceType"] == "ServiceRequest"}
    details = [a["detail"] for a in careplan.get("activity", []) if "detail" in a]
    if priorities & {"stat", "asap", "urgent"}:
        assert all(d["status"] != "not-started" for d in details)
    avoided = {d["code"]["coding"][0]["code"] for d in details if d.get("doNotPerform")}
    proposed = {d["code"]["coding"][0]["code"] for d in details
                if not d.get("doNotPerform") and d["status"] == "not-started"}
    assert avoided.isdisjoint(proposed)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(junk=json_values)
def test_arbitrary_json_raises_only_the_documented_error(
    junk: Any, support: DecisionSupport
) -> None:
    for form in (junk, json.dumps(junk)):
        try:
            support.evaluate(form, as_of=AS_OF)
        except InvalidBundleError as e:
            assert e.operation_outcome["resourceType"] == "OperationOutcome"


def test_mixing_patients_evaluates_nothing(support: DecisionSupport) -> None:
    b = bundle(patient(), observation("rf-fever", True, subject="Patient/someone-else"))
    with pytest.raises(InvalidBundleError) as err:
        support.evaluate(b, as_of=AS_OF)
    (issue,) = err.value.operation_outcome["issue"]
    assert issue["expression"] == ["Bundle.entry[1]"]
    assert "Observation/obs-rf-fever" in issue["diagnostics"]
