"""Every command in the authoring guide (docs/authoring/) runs, in order, as written.

The guide is a story an informaticist follows on a fresh clone, so it is run here the same
way, in a scratch copy of the repository's knowledge base and examples:

- a fenced ``console`` block holds commands (lines starting ``$ ``); the lines after a
  command are output that must appear, in that order (``...`` skips any lines); the command
  must exit 0 unless an HTML comment ``<!-- guide: exit N -->`` right before the block says
  otherwise;
- an HTML comment ``<!-- guide: write PATH -->`` right before a fenced block writes that
  block to PATH (edits are whole small files, which is also what the guide recommends);
  ``<!-- guide: replace PATH LINE -->`` replaces the first line of PATH that reads LINE with
  the block, and ``<!-- guide: insert PATH after LINE -->`` inserts the block after it (for
  a version number and a changelog entry, edited by hand in real life).

A step that no longer matches what the tools do fails here, so the guide cannot go stale.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "authoring"
_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*guide:\s*(\w[\w-]*)\s*(.*?)\s*-->\s*$")


@dataclass
class Step:
    file: str
    line: int
    kind: str  # "run" | "write" | "replace" | "insert"
    text: str  # the command, or the file content
    path: str = ""  # write, replace, insert: which file
    anchor: str = ""  # replace, insert: the line to replace or insert after
    expect: tuple[str, ...] = ()  # run: output lines that must appear, in order
    exit: int = 0


def _blocks(text: str) -> Iterator[tuple[int, str, list[str], dict[str, str]]]:
    """(line, language, lines, directives) of every fenced block."""
    lines = text.splitlines()
    directives: dict[str, str] = {}
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if m:
            directives[m.group(1)] = m.group(2)
            i += 1
            continue
        f = _FENCE.match(lines[i])
        if f:
            start = i + 1
            j = start
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            yield start, f.group(1), lines[start:j], directives
            directives = {}
            i = j + 1
            continue
        if lines[i].strip():
            directives = {}
        i += 1


def guide_steps(path: Path) -> list[Step]:
    steps: list[Step] = []
    for line, lang, body, directives in _blocks(path.read_text(encoding="utf-8")):
        if "write" in directives:
            steps.append(Step(path.name, line, "write", "\n".join(body) + "\n",
                              path=directives["write"]))
            continue
        if "replace" in directives:
            target, _, anchor = directives["replace"].partition(" ")
            steps.append(Step(path.name, line, "replace", "\n".join(body), path=target,
                              anchor=anchor.strip()))
            continue
        if "insert" in directives:
            target, _, rest = directives["insert"].partition(" ")
            anchor = rest.strip().removeprefix("after").strip()
            steps.append(Step(path.name, line, "insert", "\n".join(body), path=target,
                              anchor=anchor))
            continue
        if lang != "console":
            continue
        exit_code = int(directives.get("exit", "0"))
        current: list[str] | None = None
        cmd_line = line
        for k, raw in enumerate(body):
            if raw.startswith("$ "):
                if current is not None:
                    steps.append(Step(path.name, cmd_line, "run", current[0],
                                      expect=tuple(current[1:]), exit=exit_code))
                current = [raw[2:]]
                cmd_line = line + k
            elif current is not None:
                current.append(raw)
        if current is not None:
            steps.append(Step(path.name, cmd_line, "run", current[0],
                              expect=tuple(current[1:]), exit=exit_code))
    return steps


def _norm(s: str) -> str:
    return " ".join(s.split())


def _expect_in_order(expected: tuple[str, ...], output: str) -> str | None:
    """None when every expected line appears in order ("..." skips); else what is missing."""
    out = [_norm(x) for x in output.splitlines()]
    pos = 0
    for want in expected:
        w = _norm(want)
        if not w or w == "...":
            continue
        while pos < len(out) and w not in out[pos]:
            pos += 1
        if pos == len(out):
            return want
        pos += 1
    return None


def _run(step: Step, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(step.text)
    if argv[0] == "movement-cds":
        argv = [sys.executable, "-m", "movement_cds", *argv[1:]]
    elif argv[0] in ("cp", "mkdir", "cat", "ls", "sed", "diff"):
        pass
    else:
        raise AssertionError(f"{step.file}:{step.line}: the guide may only run movement-cds "
                             f"and basic file commands, not {argv[0]!r}")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", "PYTHONPATH": str(ROOT),
           "PYTHONUNBUFFERED": "1"}  # standard output and error interleaved as on a terminal
    return subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)


def _edit(target: Path, step: Step, where: str) -> None:
    lines = target.read_text(encoding="utf-8").split("\n")
    hits = [i for i, x in enumerate(lines) if x.strip() == step.anchor]
    assert hits, f"{where}: no line {step.anchor!r} in {step.path}"
    i = hits[0]
    block = step.text.split("\n")
    lines[i:i + 1] = block if step.kind == "replace" else [lines[i], *block]
    target.write_text("\n".join(lines), encoding="utf-8")


def test_guide_parser_reads_commands_outputs_and_files(tmp_path: Path) -> None:
    doc = tmp_path / "g.md"
    doc.write_text(
        "Intro\n\n<!-- guide: write a/b.yaml -->\n```yaml\nx: 1\n```\n\n"
        "<!-- guide: exit 1 -->\n```console\n$ movement-cds kb validate a\nerror here\n...\n"
        "summary\n$ movement-cds kb test a\n```\n\n```yaml\nnot: run\n```\n")
    steps = guide_steps(doc)
    assert [(s.kind, s.text.strip(), s.exit) for s in steps] == [
        ("write", "x: 1", 0), ("run", "movement-cds kb validate a", 1),
        ("run", "movement-cds kb test a", 1)]
    assert steps[0].path == "a/b.yaml"
    assert steps[1].expect == ("error here", "...", "summary")
    assert _expect_in_order(steps[1].expect, "x\nerror here\ny\nsummary\n") is None
    assert _expect_in_order(steps[1].expect, "summary\nerror here\n") == "summary"


def test_guide_edits_replace_and_insert_lines(tmp_path: Path) -> None:
    doc = tmp_path / "g.md"
    doc.write_text("<!-- guide: replace f.txt version: 1 -->\n```yaml\nversion: 2\n```\n"
                   "<!-- guide: insert f.txt after ## head -->\n```md\n\n- new\n```\n")
    target = tmp_path / "f.txt"
    target.write_text("a\nversion: 1\n## head\nold\n")
    for step in guide_steps(doc):
        _edit(target, step, "here")
    assert target.read_text() == "a\nversion: 2\n## head\n\n- new\nold\n"
    bad = Step("g.md", 1, "replace", "x", path="f.txt", anchor="nowhere")
    with pytest.raises(AssertionError, match="no line 'nowhere'"):
        _edit(target, bad, "here")


PAGES = sorted(GUIDE.glob("*.md")) if GUIDE.is_dir() else []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch checkout: the knowledge base and examples, as on a fresh clone."""
    ws = tmp_path_factory.mktemp("guide")
    for d in ("knowledge_base", "examples"):
        shutil.copytree(ROOT / d, ws / d,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return ws


def test_the_guide_exists_and_has_steps() -> None:
    assert PAGES, "docs/authoring/ has no pages"
    assert sum(1 for p in PAGES for s in guide_steps(p) if s.kind == "run") >= 8


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_guide_page_runs_as_written(page: Path, workspace: Path) -> None:
    for step in guide_steps(page):
        where = f"{step.file}:{step.line}"
        if step.kind == "write":
            target = workspace / step.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.text, encoding="utf-8")
            continue
        if step.kind in ("replace", "insert"):
            _edit(workspace / step.path, step, where)
            continue
        r = _run(step, workspace)
        output = r.stdout
        assert "Traceback" not in output, f"{where}: {step.text}\n{output}"
        assert r.returncode == step.exit, (
            f"{where}: `{step.text}` exited {r.returncode}, the guide says {step.exit}\n"
            f"{output[-3000:]}")
        missing = _expect_in_order(step.expect, output)
        assert missing is None, (
            f"{where}: `{step.text}` did not print {missing!r}\n{output[-3000:]}")
