"""Check durable-rules' C engine for memory errors under this project's use of it.

The engine (``cds/_engine.py``) drives durable-rules' C layer directly, and durable-rules
2.0.28 is known to corrupt memory on at least one path (safety rule 9 of
docs/architecture.md). A heap error there would not fail a test: it would crash the
process later, somewhere else, or not at all. This script makes such an error fail at the
faulty access instead:

1. it downloads the source distribution of the durable-rules version installed here and
   compiles its C extension with AddressSanitizer (``gcc -fsanitize=address``);
2. it runs a canary in a child process with that set-up (a write past the end of a
   ``malloc``-ed block) and checks AddressSanitizer reports it, so a set-up that checks
   nothing cannot pass;
3. it runs the engine's tests (or the pytest arguments given) in a child process that loads
   the instrumented extension, with the AddressSanitizer runtime preloaded and
   ``PYTHONMALLOC=malloc`` (every Python object then lives in the checked heap too, so a
   reference-count error that frees an object twice is reported as a double free).

Exit status 0: no report, the tests passed. 1: a report (printed) or a failed test.
2: the set-up could not be made (no compiler, no AddressSanitizer runtime, no download).

    .venv/bin/python tools/engine_memcheck.py                 # the engine's tests
    .venv/bin/python tools/engine_memcheck.py tests/test_scenarios.py -q

``--stress N`` builds nothing: it evaluates N random patients (the tests' generator) in this
process with durable-rules and checks each result equals the reference evaluator's. It is
the workload to run under Valgrind, which finds what AddressSanitizer cannot (reads of
memory that was never set; docs/architecture.md, "Memory safety of the C engine"):

    PYTHONMALLOC=malloc valgrind --num-callers=16 --log-file=/tmp/vg.%p \
        .venv/bin/python tools/engine_memcheck.py --stress 300
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE_TESTS = [
    "tests/test_engine.py",
    "tests/test_engine_markers.py",
    "tests/test_engine_alternatives.py",
    "tests/test_engine_input_message.py",
    "tests/test_review_engine.py",
    "tests/test_review_engine2.py",
    "tests/test_followup_properties.py",
]
SOURCES = ["rules/json.c", "rules/rete.c", "rules/state.c", "rules/events.c",
           "rules/regex.c", "rulespy/rules.c"]
ASAN_EXIT = 86  # AddressSanitizer's exit status when it reported (``exitcode`` below)
CANARY = (
    "import ctypes\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.malloc.restype = ctypes.c_void_p\n"
    "block = libc.malloc(8)\n"
    "ctypes.memmove(block, b'x' * 32, 32)\n"
)


class SetupError(Exception):
    """The instrumented set-up could not be made (exit status 2)."""


def _run(cmd: list[str], env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, env=env, cwd=cwd, check=False)


def asan_runtime() -> str:
    """The AddressSanitizer runtime gcc links against, as an absolute path."""
    if shutil.which("gcc") is None:
        raise SetupError("gcc is not installed")
    path = _run(["gcc", "-print-file-name=libasan.so"]).stdout.strip()
    if not os.path.isabs(path) or not Path(path).exists():
        raise SetupError("gcc has no AddressSanitizer runtime (libasan)")
    return str(Path(path).resolve())


def build(work: Path) -> Path:
    """durable-rules' C extension, compiled with AddressSanitizer into ``work/lib``."""
    version = importlib.metadata.version("durable-rules")
    got = _run([sys.executable, "-m", "pip", "download", f"durable-rules=={version}",
                "--no-binary", ":all:", "--no-deps", "-q",
                "-d", str(work)])
    archives = list(work.glob("durable_rules-*.tar.gz")) + list(work.glob("durable-rules-*.tar.gz"))
    if got.returncode != 0 or not archives:
        raise SetupError(f"could not download durable-rules {version}'s source: "
                         f"{got.stderr.strip()[-400:]}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(work, filter="data")
    src = next(p for p in work.iterdir() if p.is_dir() and (p / "src" / "rules").is_dir()) / "src"
    lib = work / "lib"
    lib.mkdir()
    target = lib / ("durable_rules_engine" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    cc = ["gcc", "-shared", "-fPIC", "-std=c99", "-D_GNU_SOURCE", "-w", "-g", "-O1",
          "-fsanitize=address", "-fno-omit-frame-pointer",
          "-I", str(src / "rules"), "-I", sysconfig.get_paths()["include"],
          *[str(src / s) for s in SOURCES], "-o", str(target)]
    made = _run(cc)
    if made.returncode != 0:
        raise SetupError(f"compiling durable-rules with AddressSanitizer failed: "
                         f"{made.stderr.strip()[-400:]}")
    return lib


def child_env(lib: Path, logs: Path) -> dict[str, str]:
    """The environment of a process checked by AddressSanitizer."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = asan_runtime()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(lib), env.get("PYTHONPATH")]))
    env["PYTHONMALLOC"] = "malloc"
    env["ASAN_OPTIONS"] = (f"detect_leaks=0:halt_on_error=1:exitcode={ASAN_EXIT}"
                           f":log_path={logs / 'asan'}")
    return env


class Checked:
    """Processes that load the instrumented durable-rules, their reports in ``logs``."""

    def __init__(self, work: Path) -> None:
        """Build into ``work`` and prove the set-up: the canary's overflow is reported and
        the instrumented extension is the one a child imports (else SetupError)."""
        self.lib = build(work)
        self.logs = work / "logs"
        self.logs.mkdir()
        self.env = child_env(self.lib, self.logs)
        canary = _run([sys.executable, "-c", CANARY], env=self.env)
        if canary.returncode != ASAN_EXIT or "heap-buffer-overflow" not in "".join(self.reports()):
            raise SetupError("AddressSanitizer did not report the canary's overflow: this "
                             f"set-up checks nothing (exit status {canary.returncode})")
        self.clear()
        loaded = _run([sys.executable, "-c", "import durable_rules_engine as d; print(d.__file__)"],
                      env=self.env, cwd=ROOT)
        if not loaded.stdout.strip().startswith(str(self.lib)):
            raise SetupError("the instrumented extension is not the one imported: "
                             f"{loaded.stdout!r}")
        self.module = loaded.stdout.strip()

    def reports(self) -> list[str]:
        """The AddressSanitizer reports written since the last ``clear``, oldest first."""
        return [p.read_text(errors="replace") for p in sorted(self.logs.glob("asan*"))]

    def clear(self) -> None:
        for p in self.logs.glob("asan*"):
            p.unlink()

    def run(self, args: list[str], capture: bool = False) -> tuple[list[str], int, str]:
        """Run ``python args`` checked (from the repository root); the reports it caused,
        its exit status and (with ``capture``) its output."""
        self.clear()
        done = subprocess.run([sys.executable, *args], env=self.env, cwd=ROOT, text=True,
                              capture_output=capture, check=False)
        return self.reports(), done.returncode, (done.stdout or "") + (done.stderr or "")

    def pytest(self, args: list[str], capture: bool = False) -> tuple[list[str], int, str]:
        """``run`` of pytest on ``args`` (no cache, the project's addopts off)."""
        return self.run(["-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", *args],
                        capture)


def check(pytest_args: list[str], work: Path) -> int:
    checked = Checked(work)
    print(f"durable-rules built with AddressSanitizer: {checked.module}", flush=True)
    found, status, _ = checked.pytest(pytest_args or [*ENGINE_TESTS, "-q"])
    for text in found:
        print(text, file=sys.stderr)
    print(f"AddressSanitizer reports: {len(found)}; tests exit status {status}")
    return verdict(found, status)


def verdict(found: list[str], tests_status: int) -> int:
    """0 only if AddressSanitizer reported nothing and the tests passed; a report fails the
    check even when the tests passed (an error found on a path whose result was right)."""
    return 0 if not found and tests_status == 0 else 1


def stress(count: int) -> int:
    """Evaluate ``count`` random patients with durable-rules (a session each, as in
    service), each checked against the reference evaluator; 0 if all were equal."""
    sys.path.insert(0, str(ROOT))
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from cds import Evaluator, PatientFacts, load_knowledge_base
    from knowledge_base import bundled_path
    from tests.patients import AS_OF, fact_strategy

    kb = load_knowledge_base(bundled_path())
    durable, reference = Evaluator(kb, "durable"), Evaluator(kb, "reference")
    done = [0]

    @settings(max_examples=count, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data: st.DataObject) -> None:
        p = durable.prepare(PatientFacts.build("Patient/p", AS_OF, data.draw(fact_strategy(kb))))
        assert durable.derive(p) == reference.derive(p)
        done[0] += 1

    one()
    print(f"{done[0]} random patients: durable-rules equals the reference on each")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path,
                        help="build here and keep it (default: a temporary directory)")
    parser.add_argument("--stress", type=int, metavar="N",
                        help="only evaluate N random patients here (a workload for Valgrind)")
    args, pytest_args = parser.parse_known_args(argv)  # the rest goes to pytest as given
    if args.stress is not None:
        return stress(args.stress)
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=False)
            return check(pytest_args, args.keep.resolve())
        with tempfile.TemporaryDirectory(prefix="engine-memcheck-") as tmp:
            return check(pytest_args, Path(tmp))
    except SetupError as e:
        print(f"engine_memcheck: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
