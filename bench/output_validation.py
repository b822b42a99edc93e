"""Output benchmark: ``write_bundle`` with node-by-node validation (shape cache) against
whole-Bundle validation. Prints figures; never asserts.

    .venv/bin/python bench/output_validation.py [--iterations 1000] [--patients 300]
        [--baseline OLD_OUTBOUND.py]

For the ~30-Observation example patient (6 exercises, 52 input references):

* first call   the very first ``write_bundle`` in this process (empty caches: the R4B models'
               field validators are looked up and each distinct shape validated once);
* warm         the same plan over and over;
* cold         a patient never seen before on every call: the example with every resource
               id (so every reference) and the as-of instant changed, one new plan per call
               (built beforehand, not timed). The shape cache is shared between patients, so
               this is what the cache is for;
* shapes       how many shapes the cache holds after all of it, and after ``--evaluations``
               more new patients (the cache is bounded; RSS should stay flat).

Each is timed for ``write_bundle(plan, kb)`` (node by node, the default) and
``write_bundle(plan, kb, full_validation=True)`` (``Bundle.model_validate``, as before), split
into building the Bundle and validating it. ``--baseline`` also times another version of
``fhir_adapters/_outbound.py`` (e.g. ``git show <rev>:fhir_adapters/_outbound.py > old.py``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds import Evaluator, KnowledgeBase, Plan, load_knowledge_base  # noqa: E402
from fhir_adapters import _outbound, _output_check, read_bundle  # noqa: E402
from knowledge_base import bundled_path  # noqa: E402

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
EXAMPLE = ROOT / "examples" / "example-patient.json"


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def new_patients(ev: Evaluator, n: int, start: int = 0) -> Iterator[Plan]:
    """Plans for patients never seen: the example with new ids and a new as-of instant."""
    text = EXAMPLE.read_text()
    ids = sorted(set(re.findall(r'"id": "([^"]+)"', text)))
    for i in range(start, start + n):
        renamed = text
        for rid in ids:  # every resource id, and so every reference to it
            renamed = renamed.replace(f'"id": "{rid}"', f'"id": "p{i}-{rid}"').replace(
                f'/{rid}"', f'/p{i}-{rid}"')
        data = json.loads(renamed)
        yield ev.evaluate(read_bundle(data, kb=ev.kb, as_of=AS_OF + timedelta(minutes=i)))


def median_ms(fn: Callable[[Plan], Any], plans: list[Plan]) -> float:
    gc.collect()
    xs = []
    for plan in plans:
        t0 = time.perf_counter_ns()
        fn(plan)
        xs.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(xs)


def report(label: str, write: Callable[[Plan, KnowledgeBase], Any], kb: KnowledgeBase,
           warm: list[Plan], cold: list[Plan], split: bool = True) -> None:
    for name, plans in (("warm", warm), ("cold", cold)):
        total = median_ms(lambda p: write(p, kb), plans)
        line = f"  {label:<34} {name}  write_bundle {total:7.3f} ms"
        if split:
            build = median_ms(lambda p: _output_check._prune(_outbound._Writer(p, kb).bundle()),
                              plans)
            line += f"   (build {build:6.3f} ms, validation ~{total - build:6.3f} ms)"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iterations", type=int, default=1000, help="warm calls timed")
    ap.add_argument("--patients", type=int, default=300, help="new patients timed (cold)")
    ap.add_argument("--evaluations", type=int, default=2000,
                    help="further new patients for the cache-size / RSS check")
    ap.add_argument("--baseline", type=Path, help="another _outbound.py to time as well")
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        pinned = "pinned to one core"
    except (AttributeError, OSError):
        pinned = "not pinned"
    print(f"write_bundle benchmark: Python {sys.version.split()[0]}, {pinned}")

    kb = load_knowledge_base(bundled_path())
    ev = Evaluator(kb)
    plan = ev.evaluate(read_bundle(json.loads(EXAMPLE.read_text()), kb=kb, as_of=AS_OF))
    t0 = time.perf_counter()
    _outbound.write_bundle(plan, kb)
    first = (time.perf_counter() - t0) * 1e3
    print(f"{EXAMPLE.name}: {len(plan.exercises)} exercises, "
          f"{len({s for f in plan.facts for s in f.sources})} input references")
    print(f"  first call in this process (empty caches): {first:.1f} ms")

    warm = [plan] * args.iterations
    cold = list(new_patients(ev, args.patients))
    for p in warm[:50]:  # warm up the interpreter, not the cache of any cold patient
        _outbound.write_bundle(p, kb)
        _outbound.write_bundle(p, kb, full_validation=True)

    report("node by node (default)", _outbound.write_bundle, kb, warm, cold)
    report("whole Bundle (full_validation=True)",
           lambda p, k: _outbound.write_bundle(p, k, full_validation=True), kb, warm, cold)
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_outbound", args.baseline)
        assert spec is not None and spec.loader is not None
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
        baseline.write_bundle(plan, kb)
        report(f"baseline {args.baseline.name}", baseline.write_bundle, kb, warm[:300], cold,
               split=False)

    print(f"  shapes cached: {len(_output_check._SHAPES)} "
          f"(bound {_output_check._SHAPES.maxsize})")
    more = list(new_patients(ev, args.evaluations, start=args.patients))
    gc.collect()
    before = rss_mib()
    for p in more:
        _outbound.write_bundle(p, kb)
    gc.collect()
    print(f"  after {args.evaluations} more new patients: shapes cached "
          f"{len(_output_check._SHAPES)}, RSS {before:.1f} -> {rss_mib():.1f} MiB")


if __name__ == "__main__":
    main()
