"""The reader gives what it gave before it was made faster (issue 15): a differential check.

``tests/fixtures/inbound_digests.json`` holds a digest of what ``read_bundle`` gave (the
``PatientFacts`` repr, or the error's issues) for every bundled FHIR input and four seeded
random variants of each (tests/inbound_variants.py), recorded with the reader before the
speed work. Any change to a fact, a source, an issue's wording or order, a note or a progress
point changes the digest. A record whose input or knowledge-base catalog changed since it was
made is left out (its recorded outcome no longer says anything); when none is left the test
says to re-record (``python -m tests.inbound_variants --write``).
"""

from __future__ import annotations

import json

import pytest

from cds import KnowledgeBase
from tests.inbound_variants import (
    DIGESTS,
    cases,
    catalog_digest,
    digest,
    input_digest,
    outcome,
)


def test_every_input_and_variant_reads_as_recorded(kb: KnowledgeBase) -> None:
    recorded = json.loads(DIGESTS.read_text())
    if recorded["catalog"] != catalog_digest(kb):
        pytest.skip("the fact catalog or parameters changed since the recording: re-record "
                    "(python -m tests.inbound_variants --write) with the reader as it was")
    want = recorded["cases"]
    compared, differ = 0, []
    for name, data in cases():
        if name not in want or want[name]["input"] != input_digest(data):
            continue
        compared += 1
        if digest(outcome(kb, data)) != want[name]["outcome"]:
            differ.append(name)
    assert compared >= len(want) // 2, "most inputs changed since the recording: re-record"
    assert not differ, f"{len(differ)} of {compared} inputs read differently, e.g. {differ[:5]}"


def test_the_check_can_fail(kb: KnowledgeBase) -> None:
    """One changed fact value changes the digest (the check is not blind)."""
    _name, data = next(iter(cases()))
    before = digest(outcome(kb, data))
    obs = next(e["resource"] for e in data["entry"]
               if e["resource"]["resourceType"] == "Observation")
    obs["status"] = "entered-in-error"
    assert digest(outcome(kb, data)) != before

