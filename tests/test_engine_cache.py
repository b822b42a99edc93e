"""The engine-result cache (``Evaluator(cache_size=N)``, the service's
``engine_cache_size``): the same facts give the identical plan with or without it, it is
used on a repeat, and it never holds more than N entries."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import Evaluator, Fact, KnowledgeBase, PatientFacts
from tests.patients import AS_OF, fact_strategy


@pytest.fixture(scope="module")
def cached(kb: KnowledgeBase) -> Evaluator:
    # durable, as in production; shares the process's registered ruleset with `durable`
    return Evaluator(kb, "durable", cache_size=3)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cached_plans_are_identical_to_uncached_ones(
    kb: KnowledgeBase, durable: Evaluator, cached: Evaluator, data: st.DataObject
) -> None:
    patients = [PatientFacts.build("Patient/p", AS_OF, data.draw(fact_strategy(kb)))
                for _ in range(3)]
    # a sequence with repeats, so that some evaluations come from the cache
    order = data.draw(st.lists(st.sampled_from(range(3)), min_size=4, max_size=8))
    hits = cached.cache_hits
    for i in order:
        assert cached.evaluate(patients[i]) == durable.evaluate(patients[i])
    assert cached.cache_hits > hits  # a repeat in 4+ draws of 3 patients is certain
    assert len(cached._cache) <= cached.cache_size


def test_the_cache_keys_on_values_not_only_names(cached: Evaluator) -> None:
    def patient(pain: int, saddle: bool) -> PatientFacts:
        return PatientFacts.build("Patient/p", AS_OF, [
            Fact("pain-now", pain, ("Observation/p",)),
            Fact("rf-saddle-anaesthesia", saddle, ("Observation/r",))])

    low, high = cached.evaluate(patient(2, False)), cached.evaluate(patient(9, True))
    assert high.exercise_held and not low.exercise_held
    assert cached.evaluate(patient(2, False)) == low


def test_a_negative_cache_size_is_refused(kb: KnowledgeBase) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        Evaluator(kb, "reference", cache_size=-1)
