"""One pipeline composition (issue 14 part 5): ``kb diff`` and ``kb profile`` evaluate each
patient as ``DecisionSupport`` does, the follow-up step included."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import PatientFacts
from knowledge_base import bundled_path
from movement_cds import DecisionSupport
from movement_cds._kb_diff import Outcome, _evaluate, _load, _normalise, _Version
from tests.test_pipeline import fhir_patient

FOLLOW_UP = Path(__file__).resolve().parent.parent / "examples" / "follow-up"
AS_OF = datetime(2026, 11, 2, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def version() -> _Version:
    return _load("NEW", Path(bundled_path()))[0]


@pytest.fixture(scope="module")
def oracle(version: _Version) -> DecisionSupport:
    return DecisionSupport(version.kb, engine="reference")


def _reader(version: _Version, data: Any, as_of: datetime) -> Callable[[], PatientFacts]:
    return lambda: version.pipeline.read(data, as_of)


def _facade(support: DecisionSupport, data: Any, as_of: datetime) -> Outcome:
    return _normalise(support.evaluate(data, as_of=as_of).plan)[0]


@pytest.mark.parametrize("visit", [2, 3])
def test_kb_diff_revises_the_previous_plan_at_a_follow_up(
        version: _Version, oracle: DecisionSupport, visit: int) -> None:
    data = json.loads((FOLLOW_UP / f"visit-{visit}.json").read_text(encoding="utf-8"))
    as_of = datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00"))
    got = _evaluate(version.pipeline, _reader(version, data, as_of))
    assert got.outcome == _facade(oracle, data, as_of)
    # the revision changes the plan here: the copy without the follow-up step saw another
    assert oracle.evaluate(data, as_of=as_of).plan.replaces is not None


def test_kb_diff_refuses_what_the_facade_refuses(version: _Version) -> None:
    got = _evaluate(version.pipeline, _reader(version, b'{"resourceType": "Patient"}', AS_OF))
    assert got.outcome.error.startswith("input refused: ")


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_kb_diff_and_kb_profile_see_the_plan_the_facade_makes(
        version: _Version, oracle: DecisionSupport, data: st.DataObject) -> None:
    bundle = data.draw(fhir_patient(version.kb))
    want = _facade(oracle, bundle, AS_OF)
    assert _evaluate(version.pipeline, _reader(version, bundle, AS_OF)).outcome == want
    steps = version.pipeline.run(version.pipeline.read(bundle, AS_OF))
    assert _normalise(steps.plan)[0] == want


def test_an_option_kb_diff_and_kb_profile_do_not_take_is_refused() -> None:
    """They share one option list (``PopulationOptions``); a misspelt one is an error, never
    silently ignored."""
    from movement_cds._kb_diff import diff_knowledge_bases
    from movement_cds._kb_profile import profile_knowledge_base

    with pytest.raises(TypeError, match="patient"):
        profile_knowledge_base(Path(bundled_path()), patient=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="worker"):
        diff_knowledge_bases(Path(bundled_path()), Path(bundled_path()),
                             worker=2)  # type: ignore[call-arg]
