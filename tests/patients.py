"""Hypothesis strategies for random patients drawn from the fact catalog's value ranges."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from cds import Fact, KnowledgeBase, PatientFacts

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _value(defn: Any) -> st.SearchStrategy[Any]:
    if defn.type == "boolean":
        return st.booleans()
    if defn.type == "code":
        return st.sampled_from(defn.codes)
    lo = int(defn.min if defn.min is not None else 0)
    hi = int(defn.max if defn.max is not None else 100)
    if defn.type == "integer":
        return st.integers(lo, hi)
    return st.integers(lo, hi).map(float)


def fact_strategy(kb: KnowledgeBase) -> st.SearchStrategy[list[Fact]]:
    """A random subset of input facts with valid values; bilateral ones sometimes per side.

    Red-flag items are weighted towards 'answered false' so that plans are often not held.
    """
    items: list[st.SearchStrategy[list[Fact]]] = []
    for name, defn in sorted(kb.facts.items()):
        if defn.derived:
            continue
        val = _value(defn)
        if name.startswith("rf-"):
            val = st.sampled_from([False, False, False, False, True])
        src = (f"Observation/{name}",)
        one = val.map(lambda v, n=name, s=src: [Fact(n, v, s)])
        if defn.bilateral:
            sides = st.tuples(val, val).map(
                lambda lr, n=name: [Fact(f"{n}.left", lr[0], (f"Observation/{n}",)),
                                    Fact(f"{n}.right", lr[1], (f"Observation/{n}",))]
            )
            one = st.one_of(one, sides)
        items.append(st.one_of(st.just([]), one))
    return st.tuples(*items).map(lambda parts: [f for p in parts for f in p])


def patient_strategy(kb: KnowledgeBase) -> st.SearchStrategy[PatientFacts]:
    return fact_strategy(kb).map(lambda fs: PatientFacts.build("Patient/p", AS_OF, fs))
