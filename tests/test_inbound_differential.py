"""The reader gives what it gave before it was made faster (issue 15): a differential check.

``tests/fixtures/inbound_digests.json`` holds a digest of what ``read_bundle`` gave (the
``PatientFacts`` repr, or the error's issues) for every bundled FHIR input and four seeded
random variants of each (tests/inbound_variants.py), recorded with the reader before the
speed work. Any change to a fact, a source, an issue's wording or order, a note or a progress
point changes the digest.
"""

from __future__ import annotations

import json

from cds import KnowledgeBase
from tests.inbound_variants import DIGESTS, cases, digest, outcome


def test_every_input_and_variant_reads_as_recorded(kb: KnowledgeBase) -> None:
    want = json.loads(DIGESTS.read_text())
    got = {name: digest(outcome(kb, data)) for name, data in cases()}
    assert sorted(got) == sorted(want), "the set of inputs changed: re-record on purpose"
    differ = [name for name in sorted(got) if got[name] != want[name]]
    assert not differ, f"{len(differ)} inputs read differently, e.g. {differ[:5]}"


def test_the_check_can_fail(kb: KnowledgeBase) -> None:
    """One changed fact value changes the digest (the check is not blind)."""
    _name, data = next(iter(cases()))
    before = digest(outcome(kb, data))
    obs = next(e["resource"] for e in data["entry"]
               if e["resource"]["resourceType"] == "Observation")
    obs["status"] = "entered-in-error"
    assert digest(outcome(kb, data)) != before

