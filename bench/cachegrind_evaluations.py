"""N warm evaluations of one bundle, for counting under valgrind's cachegrind.

Instruction and cache-miss counts are deterministic where timings are not (this machine's
timings move with its neighbours): run it twice, with N and with 0, and subtract, to get
the counts of one evaluation (docs/performance.md)::

    for n in 0 40; do PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=yes \\
        --LL=1048576,16,64 --cachegrind-out-file=/dev/null \\
        .venv/bin/python bench/cachegrind_evaluations.py $n examples/no-red-flags.json; done

(``--LL`` takes the last level as a 1 MB cache, like this machine's L2.) Prints nothing;
never asserts.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from movement_cds import DecisionSupport  # noqa: E402
from movement_cds._api import parse_instant  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    text = (ROOT / (sys.argv[2] if len(sys.argv) > 2 else "examples/no-red-flags.json")
            ).read_text()
    support = DecisionSupport()
    as_of = parse_instant("2026-11-02T09:00:00Z")
    for _ in range(5 + n):  # 5 to warm up: counted in both runs, so subtracted
        support.evaluate(text, as_of=as_of)


if __name__ == "__main__":
    main()
