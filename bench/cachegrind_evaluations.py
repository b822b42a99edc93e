"""N warm evaluations of one bundle, for counting under valgrind's cachegrind or callgrind.

Instruction and cache-miss counts are deterministic where timings are not (this machine's
timings move with its neighbours): run it twice, with N and with 0, and subtract, to get
the counts of one evaluation (docs/performance.md)::

    for n in 0 40; do PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=yes \\
        --LL=1048576,16,64 --cachegrind-out-file=/dev/null \\
        .venv/bin/python bench/cachegrind_evaluations.py $n examples/no-red-flags.json; done

(``--LL`` takes the last level as a 1 MB cache, like this machine's L2.) A third argument
chooses what each of the N steps runs: ``ours`` (the default), ``r4b`` (the R4B read of
the same text, ``Bundle.model_validate_json``) or ``both`` (ours, then the R4B read, as
``bench/speed.py`` interleaves them): ``both`` minus ``r4b`` is one evaluation with its
working set evicted by the R4B read in between.

Per function, with callgrind: the counted steps start with ``os.getppid()`` and end with
``os.getpid()``, so ::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --cache-sim=yes --LL=1048576,16,64 \\
        --zero-before='os_getppid*' --dump-before='os_getpid*' \\
        --callgrind-out-file=/tmp/cg.out .venv/bin/python bench/cachegrind_evaluations.py 10
    callgrind_annotate --sort=DLmw --inclusive=no /tmp/cg.out.1

gives the N steps alone (``/tmp/cg.out.1``), by C function. Prints nothing; never asserts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from movement_cds import DecisionSupport  # noqa: E402
from movement_cds._api import parse_instant  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    text = (ROOT / (sys.argv[2] if len(sys.argv) > 2 else "examples/no-red-flags.json")
            ).read_text()
    mode = sys.argv[3] if len(sys.argv) > 3 else "ours"
    support = DecisionSupport()
    as_of = parse_instant("2026-11-02T09:00:00Z")
    from fhir.resources.R4B.bundle import Bundle

    steps: list[Callable[[], object]] = {
        "ours": [lambda: support.evaluate(text, as_of=as_of)],
        "r4b": [lambda: Bundle.model_validate_json(text)],
        "both": [lambda: support.evaluate(text, as_of=as_of),
                 lambda: Bundle.model_validate_json(text)],
    }[mode]
    for _ in range(5):  # to warm up: counted in both runs, so subtracted
        for step in steps:
            step()
    os.getppid()  # callgrind's --zero-before: the counted steps begin
    for _ in range(n):
        for step in steps:
            step()
    os.getpid()  # callgrind's --dump-before: they end


if __name__ == "__main__":
    main()
