"""``movement-cds kb validate`` and ``movement-cds kb test``: is the knowledge base right?

``validate`` loads, cross-checks and compiles a knowledge base, then runs the authoring checks
of ``cds._kb_lint`` (rules that can never fire, recommendation/veto overlaps, scenario
coverage and scenario references). Every problem is one line, ``file:line:column: severity:
message``, on standard error; exit 1 on errors (or on warnings with ``--strict``), 0 otherwise.

``test`` runs the scenario files (and any other registered case runner) and reports each
case: on failure a table of what was expected and what came out, and the explanation of
what came out. ``--junit FILE`` writes JUnit XML for CI.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, Literal

import typer

from cds import (
    Evaluator,
    KnowledgeBase,
    KnowledgeBaseError,
    KnowledgeBaseProblem,
    MovementCDSError,
    check_changelog,
    compile_knowledge_base,
    load_knowledge_base,
)
from cds.authoring import (
    CaseOutcome,
    Explainer,
    lint_knowledge_base,
    load_scenarios,
    plain_problems,
)
from knowledge_base import bundled_path
from movement_cds._cli_common import fail, kb_app
from movement_cds._kbtools import CASE_RUNNERS

KbDir = Annotated[
    Path | None, typer.Argument(help="Knowledge-base directory (default: the bundled one).")
]


def _print_problems(problems: list[KnowledgeBaseProblem]) -> None:
    for p in sorted(problems, key=lambda p: (p.severity != "error", p.file, p.line or 0,
                                             p.column or 0)):
        typer.echo(str(p), err=True)


def _load(root: Path) -> tuple[KnowledgeBase, list[KnowledgeBaseProblem]]:
    """Load and compile; on errors, print them in plain words and exit 1."""
    try:
        kb = load_knowledge_base(root)
        compiled = compile_knowledge_base(kb)
        compiled.durable_definition()  # the rule engine's own limits (docs/architecture.md)
    except KnowledgeBaseError as e:
        problems = plain_problems(root, e.problems)
        _print_problems(problems)
        n = sum(1 for p in problems if p.severity == "error")
        fail(f"{n} error(s) in {root}")
    problems = list(kb.warnings) + lint_knowledge_base(kb, compiled)
    # rules of other scopes (per-exercise follow-up rules) are compiled and checked apart
    for scope in sorted({getattr(r, "scope", "patient") for r in kb.rules} - {"patient"}):
        try:
            other = compile_knowledge_base(kb, scope)  # type: ignore[arg-type]
            other.durable_definition()
        except KnowledgeBaseError as e:
            _print_problems(plain_problems(root, e.problems))
            fail(f"rules of scope {scope} in {root} do not compile")
        problems += lint_knowledge_base(kb, other, scenarios=False, facts=False)
    return kb, problems


@kb_app.command("validate")
def kb_validate(
    directory: KbDir = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 on warnings too (for release gates).")
    ] = False,
) -> None:
    """Check a knowledge base; every problem with file:line:column and a plain sentence.

    Errors: what the format or the cross-references forbid (unknown facts, codes,
    exercises, duplicate ids, missing evidence, scenario expectations naming unknown things).
    Warnings: rules that can never fire, a recommendation and a veto of the same exercise that
    can hold together (acknowledge with 'overrides: [RULE-ID]' on the vetoing rule), rules
    that no scenario covers.
    """
    root = directory or bundled_path()
    kb, problems = _load(root)
    try:
        load_scenarios(root)
    except KnowledgeBaseError as e:
        problems += e.problems
    problems += check_changelog(root)  # semver version with a CHANGELOG.md section
    _print_problems(problems)
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    if errors:
        fail(f"{errors} error(s), {warnings} warning(s) in {root}")
    typer.echo(
        f"{kb.ruleset_name}: {len(kb.rules)} rules, {len(kb.exercises)} exercises, "
        f"{len(kb.facts)} facts, {warnings} warning(s)"
    )
    if strict and warnings:
        fail(f"{warnings} warning(s) and --strict")


# --- kb test ----------------------------------------------------------------------------------


def _cell(value: object, width: int) -> list[str]:
    text = str(value)
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def render_table(case: CaseOutcome, width: int | None = None) -> list[str]:
    """The failed rows as a three-column table: what | expected | actual (plain text)."""
    total = width or max(80, min(shutil.get_terminal_size((100, 20)).columns, 140))
    rows = case.failures
    w_what = min(34, max(len("what"), *(len(r.what) for r in rows)))
    w_col = max(20, (total - w_what - 10) // 2)
    sep = f"    {'-' * w_what}-+-{'-' * w_col}-+-{'-' * w_col}"
    out = [f"    {'what':<{w_what}} | {'expected':<{w_col}} | actual", sep]
    for r in rows:
        cols = [_cell(r.what, w_what), _cell(r.expected, w_col), _cell(r.actual, w_col)]
        for i in range(max(len(c) for c in cols)):
            parts = [c[i] if i < len(c) else "" for c in cols]
            out.append(f"    {parts[0]:<{w_what}} | {parts[1]:<{w_col}} | {parts[2]}".rstrip())
    return out


def _case_text(case: CaseOutcome) -> list[str]:
    where = f"{case.file}:{case.line}" if case.line else case.file
    if case.passed:
        return [f"PASS  {case.id}"]
    lines = [f"FAIL  {case.id}  ({where})"]
    if case.error:
        lines.append(f"    error: {case.error}")
    if case.failures:
        lines += render_table(case)
    if case.explanation:
        lines.append("    explanation of the actual outcome:")
        lines += ["      " + x if x else "" for x in case.explanation.rstrip().splitlines()]
    return lines


def write_junit(cases: list[CaseOutcome], path: Path, suite_name: str) -> None:
    """JUnit XML: one testcase per case, classname = the file it is written in."""
    failures = sum(1 for c in cases if not c.passed and c.error is None)
    errors = sum(1 for c in cases if c.error is not None)
    total_time = sum(c.seconds for c in cases)
    root = ET.Element("testsuites", tests=str(len(cases)), failures=str(failures),
                      errors=str(errors), time=f"{total_time:.3f}")
    suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(cases)),
                          failures=str(failures), errors=str(errors), time=f"{total_time:.3f}")
    for c in cases:
        tc = ET.SubElement(suite, "testcase", classname=c.file, name=c.id,
                           time=f"{c.seconds:.3f}", file=c.file)
        if c.line is not None:
            tc.set("line", str(c.line))
        if c.passed:
            continue
        body = "\n".join(_case_text(c))
        if c.error is not None:
            el = ET.SubElement(tc, "error", message=c.error, type="error")
        else:
            msg = "; ".join(r.line() for r in c.failures)
            el = ET.SubElement(tc, "failure", message=msg, type="failure")
        el.text = body
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


@kb_app.command("test")
def kb_test(
    directory: KbDir = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Also write JUnit XML here (for CI).")
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("-k", "--only", help="Run only cases whose id contains this text "
                     "(repeatable)."),
    ] = None,
    engine: Annotated[
        str, typer.Option("--engine", help="durable (production) or reference (the oracle).")
    ] = "durable",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print failures and the summary only.")
    ] = False,
) -> None:
    """Run the knowledge base's scenario tests; on failure show expected | actual and the
    explanation of the actual outcome. Exit 1 if any case fails."""
    if engine not in ("durable", "reference"):
        fail(f"--engine must be durable or reference, not {engine!r}", 2)
    root = directory or bundled_path()
    kb, _ = _load(root)
    kind: Literal["durable", "reference"] = "durable" if engine == "durable" else "reference"
    try:
        evaluator = Evaluator(kb, kind)
    except MovementCDSError as e:
        fail(f"cannot start the {engine} engine: {e}")
    explainer = Explainer(kb, evaluator.compiled)
    wanted = [s for s in (only or []) if s]

    def select(case_id: str) -> bool:
        return not wanted or any(s in case_id for s in wanted)

    started = time.perf_counter()
    cases: list[CaseOutcome] = []
    try:
        for _name, runner in CASE_RUNNERS:
            cases += runner(evaluator, root, select, explainer)
    except KnowledgeBaseError as e:
        _print_problems(plain_problems(root, e.problems))
        fail(f"the scenario files of {root} are invalid")
    elapsed = time.perf_counter() - started
    if not cases:
        if wanted:
            fail(f"no case id contains {' or '.join(map(repr, wanted))}", 2)
        fail(f"no scenarios in {root / 'scenarios'}")
    for c in cases:
        if quiet and c.passed:
            continue
        for line in _case_text(c):
            typer.echo(line)
    failed = sum(1 for c in cases if not c.passed and c.error is None)
    errored = sum(1 for c in cases if c.error is not None)
    passed = len(cases) - failed - errored
    summary = (f"{passed} passed, {failed} failed, {errored} error(s) in {elapsed:.1f} s "
               f"({kb.ruleset_name}, {engine} engine)")
    if junit is not None:
        try:
            write_junit(cases, junit, kb.ruleset_name)
        except OSError as e:
            fail(f"cannot write {junit}: {e.strerror or e}")
    typer.echo(summary)
    sys.stdout.flush()
    if failed or errored:
        raise typer.Exit(1)
