"""The codebase stays one a newcomer can read (docs/architecture.md): functions fit on a
screen or two, and every logger is named ``movement_cds.<area>``.

Functions over ``MAX_LINES`` are a ratchet: the ones listed in ``STILL_LONG`` were long when
the rule came in and are split one by one (issue 14); a new long function, or a listed one
that grows, fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cds", "fhir_adapters", "movement_cds", "cds_service", "knowledge_base")
MAX_LINES = 80
# (module, function): its length when the ratchet came in; shrink this list, never grow it
STILL_LONG: dict[tuple[str, str], int] = {}
LOGGER = re.compile(r"movement_cds(\.[a-z_]+)+\Z")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def long_functions() -> dict[tuple[str, str], int]:
    out = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_LINES:
                    out[(str(path.relative_to(ROOT)), node.name)] = n
    return out


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level string constants (``NAME = "..."`` or ``NAME: Final = "..."``)."""
    out = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else \
            node.target if isinstance(node, ast.AnnAssign) else None
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant) \
                and isinstance(value.value, str):
            out[target.id] = repr(value.value)
    return out


def logger_names() -> dict[str, list[str]]:
    """Each ``logging.getLogger(...)`` argument, as source text (a module constant
    resolved to its string), by module."""
    out: dict[str, list[str]] = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = _constants(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"):
                args = [constants.get(ast.unparse(a), ast.unparse(a)) for a in node.args]
                out.setdefault(str(path.relative_to(ROOT)), []).extend(args or ["<root>"])
    return out


def test_no_new_long_function_and_none_grows() -> None:
    found = long_functions()
    new = {k: n for k, n in found.items() if k not in STILL_LONG}
    grown = {k: (STILL_LONG[k], n) for k, n in found.items() if k in STILL_LONG
             and n > STILL_LONG[k]}
    assert new == {}, f"split these into named steps (at most {MAX_LINES} lines each)"
    assert grown == {}


def test_the_ratchet_list_has_no_function_already_split() -> None:
    """A function split below the limit leaves the list (so the list only shrinks)."""
    assert set(STILL_LONG) <= set(long_functions())


def test_every_logger_is_named_movement_cds_area() -> None:
    bad = {m: [a for a in args if not (a[:1] in "'\"" and LOGGER.match(a.strip("'\"")))]
           for m, args in logger_names().items()}
    assert {m: a for m, a in bad.items() if a} == {}
    assert logger_names(), "the scan found no logger at all"
