"""Where one durable-rules evaluation spends its CPU: durable's C calls against the rest.

    .venv/bin/python bench/engine_profile.py [--evaluations 2000]

Wraps every call the runner makes into durable's C layer (``durable_rules_engine``) with
a thread-CPU timer, runs the example patient's prepared facts through the engine, and
prints per evaluation: calls and CPU of each C function, the engine's whole CPU, and the
straight-line floor (``bench/floor.py``) for comparison. The timers add a little to each
call; the split, not the absolute figure, is the point. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from floor import straight_line  # noqa: E402

import cds._engine as engine_module  # noqa: E402
from fhir_adapters import read_bundle  # noqa: E402
from movement_cds import DecisionSupport  # noqa: E402
from movement_cds._api import parse_instant  # noqa: E402

CPU: defaultdict[str, int] = defaultdict(int)
CALLS: defaultdict[str, int] = defaultdict(int)


class _Timed:
    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._real, name)

        def timed(*args: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return fn(*args)
            finally:
                CPU[name] += time.thread_time_ns() - t0
                CALLS[name] += 1

        return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--evaluations", type=int, default=2000)
    n = ap.parse_args().evaluations
    support = DecisionSupport()
    ev = support.evaluator
    text = (ROOT / "examples" / "example-patient.json").read_text()
    patient = read_bundle(json.loads(text), kb=support.kb,
                          as_of=parse_instant("2026-11-02T09:00:00Z"))
    facts = list(ev.prepare(patient).facts)
    engine = ev._engine
    assert engine is not None
    floor = straight_line(ev.compiled)
    for _ in range(100):
        engine.evaluate(facts)
    whole, flat = [], []
    engine_module._c = _Timed(engine_module._c)  # type: ignore[assignment]
    try:
        for _ in range(n):
            t0 = time.thread_time_ns()
            engine.evaluate(facts)
            whole.append(time.thread_time_ns() - t0)
            t0 = time.thread_time_ns()
            floor(facts)
            flat.append(time.thread_time_ns() - t0)
    finally:
        engine_module._c = engine_module._c._real  # type: ignore[attr-defined]
    total = sum(whole) / n / 1e3
    print(f"{ev.compiled.name}: {len(facts)} prepared facts, "
          f"{sum(len(r.terms) for r in ev.compiled.rules)} terms; {n} evaluations")
    print(f"  engine, whole (with timers): median {statistics.median(whole) / 1e3:7.1f} us, "
          f"mean {total:7.1f} us")
    c_total = 0.0
    for name in sorted(CPU, key=lambda k: -CPU[k]):
        us = CPU[name] / n / 1e3
        c_total += us
        print(f"  {name:<28} {CALLS[name] / n:5.1f} calls  {us:7.1f} us  "
              f"({100 * us / total:4.1f}%)")
    print(f"  durable C layer, all calls        {c_total:7.1f} us  ({100 * c_total / total:4.1f}%)")
    print(f"  runner's Python (the rest)        {total - c_total:7.1f} us")
    print(f"  straight-line floor: median {statistics.median(flat) / 1e3:7.1f} us; "
          f"5 x floor = {5 * statistics.median(flat) / 1e3:.1f} us")


if __name__ == "__main__":
    main()
