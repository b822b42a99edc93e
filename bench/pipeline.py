"""Pipeline benchmark: per-stage latency, throughput, memory. Prints figures; never asserts.

    .venv/bin/python bench/pipeline.py [--iterations 2000] [--evaluations 100000]

Stages, on one core, for the ~30-Observation example patient and every valid example:
parse (json.loads), facts (FHIR -> PatientFacts), engine (scores + durable-rules), plan
(resolution), output (FHIR Bundle, R4B-validated), and the whole evaluation from JSON text.
Also the whole evaluation with the plain-Python reference evaluator (the cost floor), the
ratio of our whole evaluation to ``fhir.resources.R4B Bundle.model_validate_json`` of the same
input, and RSS before and after N whole evaluations.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir.resources.R4B.bundle import Bundle  # noqa: E402

from cds import Evaluator, load_knowledge_base  # noqa: E402
from cds._plan import resolve_plan  # noqa: E402
from fhir_adapters import read_bundle, write_bundle  # noqa: E402
from knowledge_base import bundled_path  # noqa: E402
from movement_cds import DecisionSupport  # noqa: E402
from movement_cds._api import parse_instant  # noqa: E402

AS_OF = parse_instant("2026-11-02T09:00:00Z")


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(50, n)):
        fn()
    gc.collect()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def row(name: str, xs: list[float]) -> str:
    return f"  {name:<22} median {statistics.median(xs):8.3f} ms   p99 {pct(xs, 99):8.3f} ms"


def bench_one(path: Path, n: int, ev: Evaluator, ref: DecisionSupport,
              support: DecisionSupport) -> dict[str, float]:
    text = path.read_text()
    data = json.loads(text)
    kb = ev.kb
    n_obs = sum(1 for e in data.get("entry", [])
                if e.get("resource", {}).get("resourceType") == "Observation")
    print(f"\n{path.name} ({n_obs} Observations, {len(text)} bytes), {n} iterations")
    patient = read_bundle(data, kb=kb, as_of=AS_OF)
    prepared = ev.prepare(patient)
    result = ev.derive(prepared)
    plan = resolve_plan(kb, prepared, result)
    stages = {
        "parse (json.loads)": timed(lambda: json.loads(text), n),
        "facts (FHIR in)": timed(lambda: read_bundle(data, kb=kb, as_of=AS_OF), n),
        "engine (durable)": timed(lambda: ev.derive(ev.prepare(patient)), n),
        "plan": timed(lambda: resolve_plan(kb, prepared, result), n),
        "output (FHIR out)": timed(lambda: write_bundle(plan, kb), n),
        "whole evaluation": timed(lambda: support.evaluate(text, as_of=AS_OF), n),
        "whole, reference eval": timed(lambda: ref.evaluate(text, as_of=AS_OF), n),
        "R4B Bundle.validate_json": timed(lambda: Bundle.model_validate_json(text), n),
    }
    for k, xs in stages.items():
        print(row(k, xs))
    whole = statistics.median(stages["whole evaluation"])
    r4b = statistics.median(stages["R4B Bundle.validate_json"])
    print(f"  ratio whole / R4B Bundle.model_validate_json (medians): {whole / r4b:.3f}"
          "  (goal <= 0.5)")
    per_second = 1000 / statistics.mean(stages["whole evaluation"])
    print(f"  evaluations per second on one core: {per_second:.0f}")
    return {"whole": whole, "r4b": r4b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iterations", type=int, default=2000, help="timed runs per stage")
    ap.add_argument("--evaluations", type=int, default=100_000,
                    help="whole evaluations for the memory check")
    ap.add_argument("--skip-examples", action="store_true", help="only the 30-Observation bundle")
    ap.add_argument("--kb", type=Path, default=None,
                    help="knowledge-base directory (default: the bundled one)")
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        pinned = "pinned to one core"
    except (AttributeError, OSError):
        pinned = "not pinned"
    print(f"movement-cds pipeline benchmark: Python {sys.version.split()[0]}, {pinned}, "
          f"{os.cpu_count()} CPUs")
    kb = load_knowledge_base(args.kb or bundled_path())
    print(f"knowledge base {kb.ruleset_name}: {len(kb.rules)} rules, "
          f"{sum(len(r.terms) for r in Evaluator(kb, 'reference').compiled.rules)} "
          f"durable-rules terms; load average {os.getloadavg()[0]:.1f}")
    ev = Evaluator(kb)
    support = DecisionSupport(kb)
    ref = DecisionSupport(kb, engine="reference")
    main_bundle = ROOT / "examples" / "example-patient.json"
    bench_one(main_bundle, args.iterations, ev, ref, support)
    if not args.skip_examples:
        for path in sorted((ROOT / "examples").glob("*.json")):
            if path == main_bundle or path.name.startswith("invalid-other"):
                continue
            bench_one(path, max(200, args.iterations // 10), ev, ref, support)

    text = main_bundle.read_text()
    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    step = max(1, args.evaluations // 10)
    print(f"\nmemory: {args.evaluations} whole evaluations of {main_bundle.name}")
    print(f"  RSS before: {before:.1f} MiB")
    for i in range(1, args.evaluations + 1):
        support.evaluate(text, as_of=AS_OF)
        if i % step == 0:
            print(f"  {i:>7} evaluations  RSS {rss_mib():7.1f} MiB  "
                  f"{i / (time.perf_counter() - t0):6.0f}/s", flush=True)
    gc.collect()
    after = rss_mib()
    print(f"  RSS after:  {after:.1f} MiB  (change {after - before:+.1f} MiB)")


if __name__ == "__main__":
    main()
