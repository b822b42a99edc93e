"""Inputs for the reader's differential check (tests/test_inbound_differential.py).

Every bundled FHIR input (examples, follow-up examples, scenario files) and seeded random
variants of them: entries shuffled, copied and re-identified, statuses, dates (partial,
periods, future, invalid, missing), values (types, ranges, units, Yes/No codes, several
value[x]), components, birth dates and subjects changed at random. ``random.Random(seed)``
makes each variant the same on every run, so what the reader gave for it can be committed
(tests/fixtures/inbound_digests.json) and compared after the reader changes. Each record
keeps the digest of its input and of what the reader reads from the knowledge base (the
fact catalog and the parameters), so a later change to an example or to the catalog leaves
that record out of the comparison instead of failing it.

    .venv/bin/python -m tests.inbound_variants --write   # re-record (only on purpose)
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DIGESTS = Path(__file__).resolve().parent / "fixtures" / "inbound_digests.json"
AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
VARIANTS_PER_INPUT = 4

_STATUSES = ["final", "amended", "corrected", "preliminary", "registered", "cancelled",
             "entered-in-error", "unknown", "bogus", None]
_DATES = ["2026-11-01T08:00:00Z", "2026-10-01", "2026-10", "2026", "2026-11-02T09:05:00Z",
          "2026-11-02T10:00:00+01:00", "2027-01-01", "2025-01-15T12:00:00-05:00",
          "2026-13-01", "yesterday", "2026-11-02", "2024-06-30T23:59:59.123456789Z",
          "2026-11-02T09:30:00Z"]
_YES_NO = [("http://snomed.info/sct", "373066001"), ("http://snomed.info/sct", "373067005"),
           ("http://loinc.org", "LA33-6"), ("http://loinc.org", "LA32-8"),
           ("http://loinc.org", "LA99-9")]
_UNITS = [None, "1", "{score}", "%", "d", "h", "wk", "mo", "a", "deg", "kg"]


def bundled_inputs() -> list[Path]:
    paths = sorted((ROOT / "examples").rglob("*.json"))
    paths += sorted((ROOT / "knowledge_base" / "scenarios").rglob("*.json"))
    return [p for p in paths if '"resourceType"' in p.read_text(encoding="utf-8")]


def _observations(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("entry"), list):
        return []
    return [e["resource"] for e in data["entry"]
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "Observation"]


def _set_value(rng: random.Random, obs: dict[str, Any]) -> None:
    for k in [k for k in obs if k.startswith("value")]:
        del obs[k]
    pick = rng.randrange(9)
    if pick == 0:
        obs["valueBoolean"] = rng.choice([True, False])
    elif pick == 1:
        obs["valueInteger"] = rng.choice([0, 3, 7, 10, 11, -1, 45, 100])
    elif pick == 2:
        unit = rng.choice(_UNITS)
        q: dict[str, Any] = {"value": rng.choice([0, 0.5, 1, 2.0, 7, 7.5, 30, 64, 120])}
        if unit is not None:
            q["unit"] = unit
            if rng.random() < 0.7:
                q["system"] = "http://unitsofmeasure.org"
                q["code"] = unit
        if rng.random() < 0.1:
            q["comparator"] = "<"
        obs["valueQuantity"] = q
    elif pick == 3:
        obs["valueCodeableConcept"] = {"coding": [
            {"system": s, "code": c} for s, c in rng.sample(_YES_NO, rng.randint(1, 2))]}
    elif pick == 4:
        obs["valueString"] = "yes"
    elif pick == 5:
        obs["valueBoolean"] = True
        obs["valueInteger"] = 1
    elif pick == 6:
        obs["dataAbsentReason"] = {"coding": [{"code": "asked-unknown"}]}
    elif pick == 7:
        obs["valueInteger"] = "7"
    # pick 8: no value


def _mutate_observation(rng: random.Random, obs: dict[str, Any]) -> None:
    what = rng.randrange(6)
    if what == 0:
        status = rng.choice(_STATUSES)
        if status is None:
            obs.pop("status", None)
        else:
            obs["status"] = status
    elif what == 1:
        for k in ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"):
            obs.pop(k, None)
        how = rng.randrange(4)
        if how == 0:
            obs["effectiveDateTime"] = rng.choice(_DATES)
        elif how == 1:
            obs["effectivePeriod"] = {"start": rng.choice(_DATES), "end": rng.choice(_DATES)}
        elif how == 2:
            obs["issued"] = rng.choice(_DATES)
    elif what == 2:
        _set_value(rng, obs)
    elif what == 3:
        side = rng.choice([("http://snomed.info/sct", "7771000"),
                           ("http://snomed.info/sct", "24028007"),
                           ("http://movement-cds.org/fhir/CodeSystem/screen", "lbp-provoked"),
                           ("http://example.org", "other")])
        comp: dict[str, Any] = {"code": {"coding": [{"system": side[0], "code": side[1]}]}}
        if rng.random() < 0.8:
            comp["valueBoolean" if rng.random() < 0.5 else "valueInteger"] = rng.choice(
                [True, 3, 40])
        obs.setdefault("component", []).append(comp)
    elif what == 4:
        obs.pop("id", None)
    else:
        obs["id"] = f"v{rng.randrange(1000)}"


def _variant(rng: random.Random, data: Any) -> Any:
    data = copy.deepcopy(data)
    obs = _observations(data)
    entries = data.get("entry") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return data
    for _ in range(rng.randint(1, 6)):
        if obs:
            _mutate_observation(rng, rng.choice(obs))
    if obs and rng.random() < 0.5:  # a copy of an entry, same or another id
        twin = copy.deepcopy(rng.choice(obs))
        if rng.random() < 0.5:
            twin["id"] = f"twin{rng.randrange(100)}"
        _mutate_observation(rng, twin)
        entries.append({"fullUrl": f"urn:uuid:twin-{rng.randrange(10**6)}", "resource": twin})
    for e in entries:
        res = e.get("resource") if isinstance(e, dict) else None
        if isinstance(res, dict) and res.get("resourceType") == "Patient" and rng.random() < .3:
            res["birthDate"] = rng.choice(["1970", "1970-05", "1950-02-29", "2020-01-01",
                                           "1961-11-02", "not a date"])
    if rng.random() < 0.7:
        rng.shuffle(entries)
    return data


def cases() -> Iterator[tuple[str, Any]]:
    """(name, input) for every bundled input and its seeded variants."""
    for path in bundled_inputs():
        name = str(path.relative_to(ROOT))
        data = json.loads(path.read_text(encoding="utf-8"))
        yield name, data
        for i in range(VARIANTS_PER_INPUT):
            seed = int(hashlib.sha256(f"{name}#{i}".encode()).hexdigest()[:12], 16)
            yield f"{name}#{i}", _variant(random.Random(seed), data)


def outcome(kb: Any, data: Any) -> str:
    """What the reader gives for ``data``: the PatientFacts or the error's issues, as text
    (``repr`` tells 1 from 1.0 and True)."""
    from fhir_adapters import InvalidBundleError, read_bundle

    try:
        text = json.dumps(data)
        pf = read_bundle(text, kb=kb, as_of=AS_OF)
        again = read_bundle(data, kb=kb, as_of=AS_OF)
        assert again == pf, "the dict and the JSON text read differently"
        return repr(pf)
    except InvalidBundleError as e:
        return "invalid: " + repr(e.issues)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def input_digest(data: Any) -> str:
    return digest(json.dumps(data, sort_keys=True))


def catalog_digest(kb: Any) -> str:
    """What the reader reads from the knowledge base: the fact catalog and the parameters."""
    facts = {n: d.model_dump(mode="json") for n, d in kb.facts.items()}
    params = {k: kb.parameter(k) for k in kb.parameters}
    return digest(json.dumps([facts, params], sort_keys=True, default=str))


def record(kb: Any) -> dict[str, Any]:
    return {"catalog": catalog_digest(kb),
            "cases": {name: {"input": input_digest(data), "outcome": digest(outcome(kb, data))}
                      for name, data in cases()}}


def main() -> None:
    from cds import load_knowledge_base
    from knowledge_base import bundled_path

    if "--write" not in sys.argv:
        raise SystemExit("usage: python -m tests.inbound_variants --write")
    kb = load_knowledge_base(bundled_path())
    out = record(kb)
    DIGESTS.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(f"{len(out['cases'])} outcomes recorded in {DIGESTS}")


if __name__ == "__main__":
    main()
