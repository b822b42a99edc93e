"""What metrics and the call log cost a CDS Hooks call. Prints figures; never asserts.

    .venv/bin/python bench/metrics_overhead.py [--calls 300] [--rounds 7] [--in-memory]

Four apps share one loaded engine (bundled knowledge base) and answer the same
patient-view call (the cauda equina example, prefetched) through the ASGI interface, in
interleaved rounds (each starting with another app) so that a busy moment of the machine
falls on all four alike:

- ``off``:      ``[metrics] enabled = false``, no call log
- ``off-2``:    the same again: how far two identical apps differ is the noise floor
- ``metrics``:  the default (``/metrics`` on): every call counted, timed, its cards, referrals
                and holds counted
- ``+log``:     metrics and ``[logging] call_log = true`` (the JSON line written to
                /dev/null)

Metrics are recorded as under ``serve --workers N`` (prometheus-client multiprocess mode,
values in memory-mapped files in a fresh directory) unless ``--in-memory`` (one worker).
The same call repeats, so the rule-engine cache answers it (engine_cache_size default): the
call is as short as it gets and the bookkeeping's share as large as it gets. Also timed
alone: one ``Observer.call_finished`` (what the service adds per call), and one scrape of
/metrics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300, help="calls per app per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--in-memory", action="store_true",
                    help="one process's metrics (serve --workers 1)")
    args = ap.parse_args()
    if not args.in_memory:  # before prometheus-client is imported, as serve does
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    import asyncio
    import logging

    asyncio.run(run(args.calls, args.rounds, logging.getLogger("movement_cds.calls")))


async def run(calls: int, rounds: int, call_logger: object) -> None:
    import logging
    import uuid

    import httpx

    from cds_service._app import create_app, load_engine
    from cds_service._config import parse_config
    from cds_service._operations import CallRecord
    from tests.service.conftest import example

    assert isinstance(call_logger, logging.Logger)
    call_logger.addHandler(logging.FileHandler(os.devnull))
    call_logger.setLevel(logging.INFO)
    call_logger.propagate = False

    def config(metrics: bool, log: bool) -> object:
        return parse_config({"service": {"base_url": "http://bench"},
                             "auth": {"required": False}, "metrics": {"enabled": metrics},
                             "logging": {"call_log": log}}, insecure_no_auth=True)

    engine = load_engine(config(True, False))  # type: ignore[arg-type]
    variants = {name: create_app(config(m, lg), engine=engine)  # type: ignore[arg-type]
                for name, m, lg in (("off", False, False), ("off-2", False, False),
                                    ("metrics", True, False), ("+log", True, True))}
    ces = example("cauda-equina.json")["entry"]
    of = lambda t: [e["resource"] for e in ces if e["resource"]["resourceType"] == t]  # noqa: E731
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/p1", "patientId": of("Patient")[0]["id"]},
            "prefetch": {"patient": of("Patient")[0], "careplan": None,
                         "observations": {"resourceType": "Bundle", "type": "searchset",
                                          "entry": [{"resource": r} for r in
                                                    of("Observation")]},
                         "conditions": {"resourceType": "Bundle", "type": "searchset",
                                        "entry": [{"resource": r} for r in
                                                  of("Condition")]}}}
    clients = {n: httpx.AsyncClient(transport=httpx.ASGITransport(
        app=a, client=("127.0.0.1", 1)), base_url="http://bench") for n, a in variants.items()}
    path = "/cds-services/movement-cds-patient-view"
    per_call: dict[str, list[float]] = {n: [] for n in variants}
    for c in clients.values():  # warm up
        for _ in range(20):
            assert (await c.post(path, json=body)).status_code == 200
    names = list(clients)
    for r in range(rounds):  # each round starts with another app: no app always goes first
        for name in names[r % len(names):] + names[:r % len(names)]:
            c = clients[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                await c.post(path, json=body)
            per_call[name].append((time.perf_counter() - t0) / calls * 1e6)
    base = statistics.median(per_call["off"])
    mode = ("in memory (one worker)" if "PROMETHEUS_MULTIPROC_DIR" not in os.environ
            else "multiprocess files (serve --workers N)")
    print(f"metrics values: {mode}; {rounds} rounds x {calls} calls per app, interleaved")
    print(f"{'app':<8} {'median us/call':>15} {'min':>9} {'max':>9} {'vs off':>8}")
    for name, xs in per_call.items():
        med = statistics.median(xs)
        print(f"{name:<8} {med:>15.0f} {min(xs):>9.0f} {max(xs):>9.0f} {med / base:>8.3f}")

    observer = variants["metrics"].state.observer
    cards = (await clients["off"].post(path, json=body)).json()["cards"]
    rec = CallRecord("movement-cds-patient-view", str(uuid.uuid4()), 200, None,
                     "movement-cds-lbp@2.0.0", cards, ["stat"], True)
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        observer.call_finished(rec, 0.004)
    alone = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(50):
        await clients["metrics"].get("/metrics")
    scrape = (time.perf_counter() - t0) / 50 * 1e3
    print(f"one call's bookkeeping alone (Observer.call_finished): {alone:.1f} us "
          f"= {alone / base:.2%} of the median call without metrics")
    print(f"one scrape of /metrics: {scrape:.2f} ms")
    for c in clients.values():
        await c.aclose()


if __name__ == "__main__":
    main()
