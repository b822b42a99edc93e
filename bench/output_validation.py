"""Output-check benchmark: the cost of checking the output Bundle, node by node (the default)
against whole-Bundle R4B validation, and against another version of the check. Prints
figures; never asserts.

    .venv/bin/python bench/output_validation.py [--rounds 400] [--patients 200]
        [--baseline OLD.py]

``--baseline`` is an older module with ``_prune_check_fast`` and ``_check_rules`` (before
issue 14 part 3 the check lived in ``fhir_adapters/_outbound.py``:
``git show 8dc32cd:fhir_adapters/_outbound.py > /tmp/old_outbound.py``; since then in
``fhir_adapters/_output_check.py``), loaded from its file with its own caches.

Every figure is thread CPU time (``time.thread_time_ns``) of checking one Bundle the writer
built (``_Writer(...).bundle()``, built beforehand, not timed; each check gets its own deep
copy, made untimed, as the check prunes in place) into the pruned, validated Bundle that
``write_bundle`` returns. The contenders run interleaved, in a rotating order,
on the same Bundle, so drift and noise of a shared machine fall on all of them alike;
each line gives the median and the spread (25th-75th percentile) of the per-Bundle times
and the ratio of medians of the per-Bundle ratios against R4B (``Bundle.model_validate``,
``full_validation=True``) and against the baseline:

* warm   the example patient (~30 Observations, 6 exercises) over and over;
* cold   a patient never seen before each time: the example with every resource id (so
         every reference) and the as-of instant changed. The shape cache is shared between
         patients, so this is the figure for real use.
"""

from __future__ import annotations

import argparse
import copy
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
Check = Callable[[dict[str, Any]], Any]


def new_patients(ev: Evaluator, n: int) -> Iterator[Plan]:
    """Plans for patients never seen: the example with new ids and a new as-of instant."""
    text = EXAMPLE.read_text()
    ids = sorted(set(re.findall(r'"id": "([^"]+)"', text)))
    for i in range(n):
        renamed = text
        for rid in ids:  # every resource id, and so every reference to it
            renamed = renamed.replace(f'"id": "{rid}"', f'"id": "p{i}-{rid}"').replace(
                f'/{rid}"', f'/p{i}-{rid}"')
        data = json.loads(renamed)
        yield ev.evaluate(read_bundle(data, kb=ev.kb, as_of=AS_OF + timedelta(minutes=i)))


def cpu_us(check: Check, raw: dict[str, Any]) -> float:
    fresh = copy.deepcopy(raw)  # the check may prune its argument in place
    t0 = time.thread_time_ns()
    check(fresh)
    return (time.thread_time_ns() - t0) / 1e3


def interleaved(checks: dict[str, Check], raws: list[dict[str, Any]]) -> dict[str, list[float]]:
    names = list(checks)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i, raw in enumerate(raws):
        for n in names[i % len(names):] + names[:i % len(names)]:  # rotate the order
            times[n].append(cpu_us(checks[n], raw))
    return times


def spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4)
    return f"{statistics.median(xs):8.1f} us  [{q[0]:7.1f}-{q[2]:7.1f}]"


def report(label: str, times: dict[str, list[float]]) -> None:
    print(f"{label}: {len(times['R4B whole Bundle'])} Bundles")
    for name, xs in times.items():
        line = f"  {name:<22} {spread(xs)}"
        for ref in ("R4B whole Bundle", "baseline"):
            if ref in times and ref != name:
                ratios = [a / b for a, b in zip(xs, times[ref], strict=True)]
                line += f"   / {ref}: {statistics.median(ratios):.3f}"
        print(line)


def load_baseline(path: Path) -> Check:
    spec = importlib.util.spec_from_file_location("baseline_output_check", path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    def check(raw: dict[str, Any]) -> Any:
        bundle = old._prune_check_fast(raw)
        old._check_rules(bundle)
        return bundle

    return check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=400, help="warm Bundles timed")
    ap.add_argument("--patients", type=int, default=200, help="new patients timed (cold)")
    ap.add_argument("--baseline", type=Path, help="an older check module to time as well")
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        pinned = "pinned to one core"
    except (AttributeError, OSError):
        pinned = "not pinned"
    print(f"output-check benchmark: Python {sys.version.split()[0]}, {pinned}, "
          "thread CPU time")

    kb: KnowledgeBase = load_knowledge_base(bundled_path())
    ev = Evaluator(kb)
    plan = ev.evaluate(read_bundle(json.loads(EXAMPLE.read_text()), kb=kb, as_of=AS_OF))
    checks: dict[str, Check] = {
        "node by node (now)": _output_check.checked_bundle,
        "R4B whole Bundle": lambda raw: _output_check.checked_bundle(raw, full_validation=True),
    }
    if args.baseline:
        checks["baseline"] = load_baseline(args.baseline)
    warm_raw = _outbound._Writer(plan, kb, None).bundle()
    outputs = {n: json.dumps(c(copy.deepcopy(warm_raw))) for n, c in checks.items()}
    assert len(set(outputs.values())) == 1, "the checks return different Bundles"
    for _ in range(20):  # warm up the interpreter and the shape caches
        for c in checks.values():
            c(copy.deepcopy(warm_raw))

    report("warm (the same patient)", interleaved(checks, [warm_raw] * args.rounds))
    cold = [_outbound._Writer(p, kb, None).bundle() for p in new_patients(ev, args.patients)]
    report("cold (a new patient each time)", interleaved(checks, cold))
    print(f"  shapes cached: {len(_output_check._SHAPES)} (bound {_output_check._SHAPES.maxsize})")


if __name__ == "__main__":
    main()
