"""Population-runner benchmark: patients per second with 1 and 2 Dask workers, the scaling
efficiency, peak memory per worker. Prints figures; never asserts.

    .venv/bin/python bench/population.py [--patients 20000] [--buckets 64] [--workers 1,2]
                                         [--rounds 1] [--work DIR]

The population is the seeded synthetic one (``fhir_adapters._population.synthetic_bundle``,
seed 1), written once as bucket files (``{"patient", "bundle"}`` per line, hashed by patient
id, the format of ``fhir_adapters.group_export``) and reused by every run. Each run is a full
``population run`` on a fresh output directory: a Dask LocalCluster of N worker processes
(one thread each), every output written. Rounds alternate the worker counts (1, 2, 1, 2, ...)
so a change in the machine's load hits both alike; the ratio is taken within a round.

Figures per run: wall time to start the workers; evaluation wall time (from the workers being
up to the last bucket, which includes each worker loading the knowledge base) and patients
per second over it; patients per second of one worker while busy (patients over the summed
bucket seconds, divided by the workers); the peak RSS of each worker process
(``ru_maxrss``). Scaling efficiency = rate(2 workers) / (2 x rate(1 worker)).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_adapters import synthetic_bundle  # noqa: E402
from movement_cds import Where, run_population  # noqa: E402
from movement_cds._api import parse_instant  # noqa: E402

AS_OF = parse_instant("2026-11-02T09:00:00Z")


def write_population(root: Path, patients: int, buckets: int) -> float:
    """Bucket files of ``patients`` synthetic patients; returns the seconds it took."""
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    parts: list[list[tuple[str, str]]] = [[] for _ in range(buckets)]
    for i in range(patients):
        assert AS_OF is not None
        bundle = synthetic_bundle(1, i, AS_OF)
        pid = next(e["resource"]["id"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "Patient")
        line = json.dumps({"patient": pid, "bundle": bundle}, sort_keys=True)
        parts[zlib.crc32(pid.encode()) % buckets].append((pid, line))
    for n, part in enumerate(parts):
        with (root / f"bucket-{n:05d}.ndjson").open("w") as f:
            f.writelines(line + "\n" for _, line in sorted(part))
    return time.monotonic() - started


def one_run(source: Path, out: Path, workers: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    report = run_population(source, out, as_of=AS_OF, where=Where(workers=workers, dask=True))
    wall = time.monotonic() - started
    m = report.manifest
    t, c = m["timings"], m["counts"]
    busy = t["bucket_seconds_total"]
    return {
        "workers": workers, "patients": c["patients"], "wall_s": wall,
        "start_workers_s": t["start_workers_s"], "evaluate_s": t["evaluate_s"],
        "rate": c["patients"] / t["evaluate_s"],
        "busy_rate_per_worker": c["patients"] / busy if busy else 0.0,
        "peak_rss_mb": [w["peak_rss_mb"] for w in m["workers"]],
        "counts": c,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--buckets", type=int, default=64)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None,
                    help="Keep the population and the outputs here (default: a temporary "
                    "directory, removed after).")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-population-"))
    try:
        source = work / f"population-{args.patients}"
        if not source.is_dir():
            s = write_population(source, args.patients, args.buckets)
            print(f"wrote {args.patients} synthetic patients in {args.buckets} bucket files "
                  f"({s:.0f} s)")
        print(f"cpus: {os.cpu_count()}, load average at start: "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        results: list[dict[str, Any]] = []
        for r in range(args.rounds):
            for w in counts:
                res = one_run(source, work / f"out-{w}", w)
                res["round"] = r + 1
                results.append(res)
                print(f"round {r + 1}, {w} worker(s): start {res['start_workers_s']:.1f} s, "
                      f"evaluate {res['evaluate_s']:.1f} s, {res['rate']:.1f} patients/s "
                      f"({res['busy_rate_per_worker']:.1f}/s per busy worker), peak RSS per "
                      f"worker {', '.join(f'{x:.0f}' for x in res['peak_rss_mb'])} MB")
        report(results, counts)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict[str, Any]], counts: list[int]) -> None:
    base = min(counts)
    for r in sorted({x["round"] for x in results}):
        ones = [x for x in results if x["round"] == r and x["workers"] == base]
        for x in results:
            if x["round"] == r and x["workers"] != base and ones:
                eff = x["rate"] / (x["workers"] / base * ones[0]["rate"])
                print(f"round {r}: {x['workers']} vs {base} worker(s): speed-up "
                      f"{x['rate'] / ones[0]['rate']:.2f}x, scaling efficiency {eff:.0%}")
    last = results[-1]
    print("summary counts of the last run:", json.dumps(
        {k: last["counts"][k] for k in ("patients", "evaluated", "errors", "errors_by_code",
                                        "exercise_held", "level_of_concern",
                                        "top_referral")}))


if __name__ == "__main__":
    main()
