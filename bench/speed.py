"""Issue 15's table in one run: every figure a ratio measured side by side. Never asserts.

    .venv/bin/python bench/speed.py [--pairs 400] [--cold 7] [--serve 3] [--kb DIR]
    .venv/bin/python bench/speed.py --only engine --pairs 300   # rows 4-5 alone
    .venv/bin/python bench/speed.py --only whole --pairs 300    # rows 1-3 alone

In-process rows (thread CPU time, ``time.thread_time_ns``): the two sides run as
interleaved pairs (A then B, then B then A, ...), one ratio per pair; printed: the median
ratio, the 10th-90th percentile of the per-pair ratios (spread) and the ratio of the
medians. Engine-result cache off everywhere.

1-3. whole evaluation (``DecisionSupport.evaluate`` of the JSON text) /
     ``fhir.resources.R4B Bundle.model_validate_json`` of the same text, for
     ``examples/example-patient.json``, ``examples/no-red-flags.json`` and the example
     patient cut to its first 10 Observations;
4.   durable-rules engine / reference evaluator (``cds.evaluate_reference``), on the same
     prepared facts of the example patient;
5.   durable-rules engine / straight-line Python rules (``bench/floor.py``: the compiled
     rules as one generated function, checked to give the reference evaluator's result).

Whole-process rows (``resource.getrusage(RUSAGE_CHILDREN)``, user + system, interleaved):

6.   ``movement-cds evaluate examples/example-patient.json`` / ``python -c "import
     movement_cds"``;
7.   ``movement-cds serve --workers 2``: CPU of the whole process tree (``/proc``, every
     live process's own and reaped children's time) from start until the first answered
     patient-view call, in seconds, and as a ratio to the import row's CPU.

The knowledge-base cache (``MOVEMENT_CDS_CACHE_DIR``) is a private temporary directory,
warmed by one unmeasured run; ``--cold-cache`` measures rows 6-7 with the cache off.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fhir.resources.R4B.bundle import Bundle  # noqa: E402
from floor import straight_line  # noqa: E402

from cds import Evaluator, evaluate_reference, load_knowledge_base  # noqa: E402
from fhir_adapters import read_bundle  # noqa: E402
from knowledge_base import bundled_path  # noqa: E402
from movement_cds import DecisionSupport  # noqa: E402

AS_OF = "2026-11-02T09:00:00Z"
BIN = Path(sys.executable).parent


def _q(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def pairs(a: Callable[[], Any], b: Callable[[], Any], n: int) -> dict[str, float]:
    """``n`` interleaved pairs of thread CPU times; per-pair ratios a/b."""
    for _ in range(min(30, n)):
        a()
        b()
    gc.collect()
    ta: list[float] = []
    tb: list[float] = []
    clock = time.thread_time_ns
    for i in range(n):
        order = (a, b) if i % 2 == 0 else (b, a)
        got = []
        for fn in order:
            t0 = clock()
            fn()
            got.append(clock() - t0)
        x, y = got if i % 2 == 0 else got[::-1]
        ta.append(x / 1e6)
        tb.append(y / 1e6)
    ratios = [x / y for x, y in zip(ta, tb, strict=True) if y > 0]
    return {"median": statistics.median(ratios), "p10": _q(ratios, 10), "p90": _q(ratios, 90),
            "a_ms": statistics.median(ta), "b_ms": statistics.median(tb),
            "of_medians": statistics.median(ta) / statistics.median(tb)}


def show(label: str, r: dict[str, float], goal: str) -> None:
    print(f"{label:<58} {r['median']:6.2f}  [{r['p10']:.2f}-{r['p90']:.2f}]  "
          f"medians {r['a_ms']:.3f}/{r['b_ms']:.3f} ms = {r['of_medians']:.2f}   goal {goal}",
          flush=True)


def cut_to(text: str, n_obs: int) -> str:
    data = json.loads(text)
    kept, seen = [], 0
    for e in data["entry"]:
        if e["resource"]["resourceType"] == "Observation":
            seen += 1
            if seen > n_obs:
                continue
        kept.append(e)
    data["entry"] = kept
    return json.dumps(data)


def in_process(kb_dir: Path | None, n: int, whole: bool = True, engine_rows: bool = True
               ) -> None:
    kb = load_knowledge_base(kb_dir or bundled_path())
    support = DecisionSupport(kb)
    ex = (ROOT / "examples" / "example-patient.json").read_text()
    bundles = [("example patient (49 Observations)", ex),
               ("examples/no-red-flags.json (29 Observations)",
                (ROOT / "examples" / "no-red-flags.json").read_text()),
               ("example patient cut to 10 Observations", cut_to(ex, 10))]
    goals = ["<= 0.5", "<= 0.5", "<= 1.0"]
    for (label, text), goal in zip(bundles if whole else [], goals, strict=False):
        r = pairs(lambda t=text: support.evaluate(t, as_of=AS_OF),  # type: ignore[misc]
                  lambda t=text: Bundle.model_validate_json(t), n)  # type: ignore[misc]
        show(f"1-3 whole / R4B read, {label}", r, goal)
    if not engine_rows:
        return

    ev: Evaluator = support.evaluator
    engine = ev._engine
    assert engine is not None
    floor = straight_line(ev.compiled)
    facts_of = {}
    for label, text in bundles:
        prepared = ev.prepare(read_bundle(json.loads(text), kb=kb, as_of=_instant()))
        facts = list(prepared.facts)
        want = evaluate_reference(ev.compiled, facts)
        same = engine.evaluate(facts) == want and floor(facts) == want
        print(f"    {label}: {len(facts)} facts, {len(want.firings)} firings; durable, "
              f"reference and straight-line agree: {'yes' if same else 'NO'}")
        if not same:
            raise SystemExit("the engines disagree: figures would mean nothing")
        facts_of[label] = facts
    facts = facts_of[bundles[0][0]]
    r = pairs(lambda: engine.evaluate(facts), lambda: evaluate_reference(ev.compiled, facts), n)
    show("4   durable engine / reference evaluator, same facts", r, "<= 3.0")
    r = pairs(lambda: engine.evaluate(facts), lambda: floor(facts), n)
    show("5   durable engine / straight-line Python rules (floor)", r, "<= 5")


def _instant() -> Any:
    from datetime import datetime

    return datetime.fromisoformat(AS_OF.replace("Z", "+00:00"))


def child_cpu(cmd: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_start(env: dict[str, str], n: int, kb_dir: Path | None) -> float:
    evaluate = [str(BIN / "movement-cds"), "evaluate",
                str(ROOT / "examples" / "example-patient.json"), "--as-of", AS_OF,
                "--quiet", "--out", os.devnull]
    if kb_dir:
        evaluate += ["--kb", str(kb_dir)]
    imp = [sys.executable, "-c", "import movement_cds"]
    child_cpu(evaluate, env)  # warms the knowledge-base cache (when on) and the OS caches
    ta, tb = [], []
    for i in range(n):
        if i % 2:
            tb.append(child_cpu(imp, env))
            ta.append(child_cpu(evaluate, env))
        else:
            ta.append(child_cpu(evaluate, env))
            tb.append(child_cpu(imp, env))
    ratios = [a / b for a, b in zip(ta, tb, strict=True)]
    r = {"median": statistics.median(ratios), "p10": min(ratios), "p90": max(ratios),
         "a_ms": statistics.median(ta) * 1000, "b_ms": statistics.median(tb) * 1000,
         "of_medians": statistics.median(ta) / statistics.median(tb)}
    show("6   `evaluate` process CPU / `import movement_cds` (min-max)", r, "<= 2.0")
    return statistics.median(tb)


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _tree_cpu(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def _body() -> bytes:
    data = json.loads((ROOT / "examples" / "example-patient.json").read_text())
    res = [e["resource"] for e in data["entry"]]

    def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "total": len(items),
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in items]}

    def of(t: str) -> list[dict[str, Any]]:
        return [r for r in res if r["resourceType"] == t]

    patient = of("Patient")[0]
    return json.dumps({
        "hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/bench", "patientId": patient["id"]},
        "prefetch": {"patient": patient, "observations": searchset(of("Observation")),
                     "conditions": searchset(of("Condition")), "careplan": None}}).encode()


def serve_once(env: dict[str, str], kb_dir: Path | None, work: Path) -> float:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = work / "service.toml"
    kb_line = f'knowledge_base = "{kb_dir}"\n' if kb_dir else ""
    cfg.write_text(f'[service]\nbase_url = "http://127.0.0.1:{port}"\nengine_cache_size = 0\n'
                   f'{kb_line}\n[auth]\nrequired = false\n')
    cmd = [str(BIN / "movement-cds"), "serve", "--config", str(cfg), "--insecure-no-auth",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/cds-services/movement-cds-patient-view"
    body = _body()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited with {proc.returncode}")
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200 and json.loads(resp.read()).get("cards"):
                        return _tree_cpu(proc.pid)
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("serve did not answer within 120 s")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve_rows(env: dict[str, str], n: int, kb_dir: Path | None, import_cpu: float) -> None:
    with tempfile.TemporaryDirectory() as work:
        cpus = [serve_once(env, kb_dir, Path(work)) for _ in range(n)]
    med = statistics.median(cpus)
    print(f"{'7   `serve --workers 2` CPU until first answered patient-view':<58} "
          f"{med:6.2f} s  [{min(cpus):.2f}-{max(cpus):.2f}]  = {med / import_cpu:.1f} x "
          f"import   goal <= 5 s", flush=True)


def _compiled() -> str:
    """Which of the modules setup.py compiles (mypyc) run compiled here."""
    from tests.compiled import running_compiled

    done = running_compiled()
    return ("compiled: " + ", ".join(done)) if done else "nothing compiled (pure Python)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=400, help="interleaved pairs per in-process row")
    ap.add_argument("--cold", type=int, default=7, help="interleaved process pairs for row 6")
    ap.add_argument("--serve", type=int, default=3, help="service starts for row 7")
    ap.add_argument("--kb", type=Path, default=None, help="knowledge base (default: bundled)")
    ap.add_argument("--cold-cache", action="store_true",
                    help="rows 6-7 with the knowledge-base cache off")
    ap.add_argument("--only", choices=["in-process", "engine", "whole", "processes"],
                    default=None, help="engine: rows 4-5 only; whole: rows 1-3 only")
    args = ap.parse_args()
    kb = load_knowledge_base(args.kb or bundled_path())
    print(f"movement-cds speed table (issue 15): Python {sys.version.split()[0]}, knowledge base "
          f"{kb.ruleset_name}, load average {os.getloadavg()[0]:.1f}, {_compiled()}")
    print(f"{'figure':<58} {'median':>6}  [p10-p90]  medians A/B")
    if args.only != "processes":
        in_process(args.kb, args.pairs, whole=args.only != "engine",
                   engine_rows=args.only != "whole")
    if args.only in ("in-process", "engine", "whole"):
        return
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MOVEMENT_CDS_CACHE_DIR="" if args.cold_cache else cache)
        import_cpu = cold_start(env, args.cold, args.kb)
        serve_rows(env, args.serve, args.kb, import_cpu)


if __name__ == "__main__":
    main()
