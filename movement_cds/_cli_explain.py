"""``movement-cds kb explain``: why the plan for one patient says what it says (or not).

For each alert, exercise, avoided or deferred exercise, data gap and finding: the chain of
rules and facts that produced it, back to the input records (Observation, Condition, Patient
references). ``--why-not X`` answers for one exercise, rule, alert code or fact: the first
condition that was false or unknown and the values it saw; a missing fact is said to be
missing, never read as false.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from cds import (
    Evaluator,
    ExplainTargetError,
    MovementCDSError,
    load_knowledge_base,
)
from cds.authoring import Explainer, render_plan_explanation, render_target
from fhir_adapters import read_bundle
from knowledge_base import bundled_path
from movement_cds._api import parse_instant
from movement_cds._cli_common import (
    BundleArgument,
    KbOption,
    as_of_flag,
    evaluation_errors,
    fail,
    kb_app,
    read_input,
)


@kb_app.command("explain")
def kb_explain(
    bundle: BundleArgument,
    as_of: Annotated[str | None, as_of_flag(" (default: now).")] = None,
    why_not: Annotated[
        str | None,
        typer.Option("--why-not", help="An exercise id, rule id, alert code or fact: why it "
                     "is (not) in the plan."),
    ] = None,
    kb: KbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    engine: Annotated[
        str, typer.Option("--engine", help="durable (production) or reference (the oracle).")
    ] = "durable",
) -> None:
    """Explain one patient's plan: every output back to the input records; --why-not X for
    what is not there."""
    if engine not in ("durable", "reference"):
        fail(f"--engine must be durable or reference, not {engine!r}", 2)
    with evaluation_errors("nothing to explain", also=(MovementCDSError,)):
        base = load_knowledge_base(kb or bundled_path())
        evaluator = Evaluator(base, "durable" if engine == "durable" else "reference")
        instant = parse_instant(as_of) or datetime.now(UTC)
        patient = read_bundle(read_input(bundle), kb=base, as_of=instant)
        plan = evaluator.evaluate(patient)
    explainer = Explainer(base, evaluator.compiled)
    if why_not is not None:
        try:
            target = explainer.why(plan, why_not, patient.facts)
        except ExplainTargetError as e:
            fail(str(e), 2)
        if as_json:
            sys.stdout.write(json.dumps(target.to_json(), indent=2, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(render_target(target))
        return
    whole = explainer.explain_plan(plan, patient.facts)
    if as_json:
        sys.stdout.write(json.dumps(whole.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_plan_explanation(whole))
