"""Bulk Data export benchmark (issue 16 parts 1 and 6): synthesis and grouping per patient.
Prints figures; never asserts.

    .venv/bin/python bench/bulk_export.py [--patients 20000] [--buckets 64] [--gzip] [--keep DIR]

1. ``synth_export`` of N patients (in this process): seconds, lines, MB.
2. A baseline, side by side: reading every line of the export and ``orjson.loads`` of each
   (the least any grouping must do).
3. ``group_export`` in a child process (so its memory is its own): wall and CPU seconds,
   patients/s, the ratio to the baseline, its peak RSS and how much it grew while grouping
   (RSS after imports -> peak), and that growth as a share of the export's size.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from cds import load_knowledge_base  # noqa: E402
from fhir_adapters import synth_export  # noqa: E402
from knowledge_base import bundled_path  # noqa: E402

AS_OF = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

CHILD = """
import json, sys, time
from pathlib import Path
import pyarrow.compute, pyarrow.ipc  # noqa: F401  (loaded before the baseline RSS)
from fhir_adapters import group_export

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

# the peak since this point (ru_maxrss would also count the parent's memory before exec)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")

base = status_kb("VmRSS")
t0, c0 = time.perf_counter(), time.process_time()
g = group_export(Path(sys.argv[1]), Path(sys.argv[2]), buckets=int(sys.argv[3]))
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                  "base_kb": base, "peak_kb": status_kb("VmHWM"),
                  "patients": g.patients, "grouped": g.grouped_resources,
                  "orphans": g.orphan_count, "rejected": g.rejected_count,
                  "lines": sum(f.resources for f in g.input_files)}))
"""


def baseline(export: Path) -> tuple[float, int]:
    """Seconds to read and orjson.loads every line (bad lines skipped)."""
    t0, n = time.perf_counter(), 0
    for path in sorted(export.glob("*.ndjson*")):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            for line in f:
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    pass
                n += 1
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--buckets", type=int, default=64)
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--keep", type=Path, help="write the export and buckets here (kept)")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bulk-bench-")
    root = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    export, work = root / "export", root / "work"
    kb = load_knowledge_base(bundled_path())
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")

    t0, c0 = time.perf_counter(), time.process_time()
    report = synth_export(export, patients=args.patients, seed=1, as_of=AS_OF, kb=kb,
                          compress=args.gzip)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    lines = sum(n for _, _, n in report.files)
    size = sum(p.stat().st_size for _, p, _ in report.files)
    print(f"synth:    {args.patients} patients, {lines} lines, {size / 2**20:.0f} MB in "
          f"{wall:.1f} s wall ({cpu:.1f} s CPU), {args.patients / wall:.0f} patients/s")

    base_s, _ = baseline(export)
    print(f"baseline: read + orjson.loads of every line: {base_s:.1f} s")

    run = subprocess.run([sys.executable, "-c", CHILD, str(export), str(work),
                          str(args.buckets)], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    r = json.loads(run.stdout)
    grown = (r["peak_kb"] - r["base_kb"]) / 1024
    print(f"grouping: {r['patients']} patients ({r['grouped']} resources, {r['orphans']} "
          f"orphans, {r['rejected']} rejected of {r['lines']} lines) into {args.buckets} "
          f"buckets in {r['wall']:.1f} s wall ({r['cpu']:.1f} s CPU), "
          f"{r['patients'] / r['wall']:.0f} patients/s")
    print(f"          {r['wall'] / base_s:.1f}x the baseline read")
    print(f"          peak RSS {r['peak_kb'] / 1024:.0f} MB, grew {grown:.0f} MB while "
          f"grouping = {grown / (size / 2**20):.2f} of the export's size")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
