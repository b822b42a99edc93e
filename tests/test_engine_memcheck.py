"""durable-rules' C engine, checked for memory errors under this project's use of it.

``tools/engine_memcheck.py`` compiles durable-rules (the installed version, from its source)
with AddressSanitizer, proves the set-up reports a heap overflow (a canary) and loads the
instrumented build in child processes. A heap error in durable's C code (a write past a
pool, a read of a freed session) then fails at the faulty access instead of corrupting
memory that crashes the process later, elsewhere (docs/architecture.md, "Memory safety of
the C engine").
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import engine_memcheck  # noqa: E402

sys.path.remove(str(ROOT / "tools"))

DEFECT = ROOT / "tests" / "fixtures" / "memcheck" / "exponent_defect.py"
# the engine's own properties (durable == reference on random patients, markers, the
# reviewer's attacks on random knowledge bases), ~30 s under AddressSanitizer; the
# fact-order, session and follow-up properties run in the tool's default set
CI_TESTS = ["tests/test_engine.py", "tests/test_engine_markers.py",
            "tests/test_review_engine2.py", "-k",
            "not test_fact_order_never_changes_the_result"
            " and not test_every_evaluation_deletes_its_session_and_the_next_patient_starts_clean"]
IN_DURABLE = re.compile(r"#0 0x[0-9a-f]+ in \w+ \S*/src/rules/\w+\.c:\d+")


@pytest.mark.slow
def test_durable_makes_no_memory_error_on_the_engine_tests(tmp_path: Path) -> None:
    checked = engine_memcheck.Checked(tmp_path / "build")  # SetupError: the canary was missed
    # the check sees a real durable defect: engine safety rule 6 switched off
    found, status, out = checked.run([str(DEFECT)], capture=True)
    assert status == engine_memcheck.ASAN_EXIT, out[-3000:]
    assert found and IN_DURABLE.search(found[0]), found
    # and finds none in the engine's own tests
    found, status, out = checked.pytest(["-q", *CI_TESTS], capture=True)
    assert found == [], found[0][:6000]
    assert status == 0, out[-6000:]


def test_a_report_fails_the_check_even_when_the_tests_pass() -> None:
    report = "ERROR: AddressSanitizer: heap-use-after-free on address 0x6020000000f0"
    assert engine_memcheck.verdict([], 0) == 0
    assert engine_memcheck.verdict([report], 0) == 1
    assert engine_memcheck.verdict([], 1) == 1
