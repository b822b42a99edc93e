"""Print the CDS Hooks demo request (docs/integrators/cds-hooks-request.json) with its
clinical dates moved to now, so that the demo gives the same advice whenever it is run.

The service evaluates at the time of the call, and a red-flag answer older than the
knowledge base's ``red-flag-max-age-days`` counts as unanswered: with the dates as written in
the file, the demo's advice would change as the file ages. Every date and instant in the
prefetch (answers, onset, and the birth date, since age thresholds change advice too) is
moved by the same amount, so that the latest answer is one hour old: the patient is the
same age, and the answers as far apart, as written.

    python examples/cds_hooks_request.py > /tmp/cds-request.json
    python examples/cds_hooks_request.py --now 2031-06-01T09:00:00Z   # a given instant
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REQUEST = Path(__file__).resolve().parents[1] / "docs" / "integrators" / "cds-hooks-request.json"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")


def _instants(value: Any) -> list[datetime]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in _instants(v)]
    if isinstance(value, list):
        return [t for v in value for t in _instants(v)]
    if isinstance(value, str) and _INSTANT.match(value):
        return [datetime.fromisoformat(value.replace("Z", "+00:00"))]
    return []


def _shift(value: Any, delta: timedelta) -> Any:
    if isinstance(value, dict):
        return {k: _shift(v, delta) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, delta) for v in value]
    if isinstance(value, str):
        if _INSTANT.match(value):
            moved = datetime.fromisoformat(value.replace("Z", "+00:00")) + delta
            return moved.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if _DATE.match(value):
            return (date.fromisoformat(value) + timedelta(days=delta.days)).isoformat()
    return value


def fresh_request(now: datetime, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """The demo request with its latest answer one hour before ``now``."""
    body = request if request is not None else json.loads(REQUEST.read_text("utf-8"))
    latest = max(_instants(body["prefetch"]))
    delta = (now - timedelta(hours=1)) - latest
    return {**body, "prefetch": _shift(body["prefetch"], delta)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--now", help="the instant to move the dates to (ISO 8601; "
                        "default: the current time)")
    args = parser.parse_args(argv)
    now = (datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now
           else datetime.now(UTC))
    json.dump(fresh_request(now), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
