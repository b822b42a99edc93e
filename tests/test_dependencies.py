"""Every third-party module the code imports is provided by a declared dependency, and the
library (everything but the service) needs no extra.

The imports are read from the source (ast), not from what happens to be installed in this
venv: a module imported at the top of a library module must come from a base dependency
(``pip install movement-cds`` with no extras must import and run); the service modules and
imports made inside a function (loaded only when the service starts) may use the
``service`` extra. ``make base-install-check`` proves the same in a fresh venv.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cds", "fhir_adapters", "movement_cds", "cds_service", "knowledge_base")

# Modules only the CDS Hooks service loads (``movement-cds serve``): they may import the
# ``service`` extra at module level. Every one is in ``cds_service``; the package itself and its
# ``_cli`` (the entry point every ``movement-cds`` run loads) must import with the base install.
SERVICE_MODULES = frozenset({
    "cds_service._app", "cds_service._auth", "cds_service._prefetch",
    "cds_service._balancer", "cds_service._http_protocol", "cds_service._reuseport",
    "cds_service._metrics", "cds_service._operations",
    "cds_service._db", "cds_service._pg_store",
})


def _is_service(module: str) -> bool:
    # the Alembic migrations run only under `movement-cds db upgrade` (the service extra)
    return module in SERVICE_MODULES or module.startswith("cds_service.migrations")


def _declared() -> dict[str, set[str]]:
    """Distribution names (canonical) per extra; "" is the base install."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"": {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out[extra] = {canonicalize_name(Requirement(r).name) for r in reqs}
    return out


@cache
def _providers() -> dict[str, set[str]]:
    return {top: {canonicalize_name(d) for d in dists}
            for top, dists in packages_distributions().items()}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in_import_error_guard(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside ``try: ... except ImportError``: optional by construction."""
    p = parents.get(node)
    while p is not None:
        if isinstance(p, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                              "ModuleNotFoundError")
                for h in p.handlers):
            return True
        p = parents.get(p)
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
        p = parents.get(p)
    return False


def third_party_imports(source: str) -> list[tuple[str, int, bool]]:
    """(top-level module, line, eager) for every absolute import of a module that is
    neither the standard library nor this project; eager: at module level, unguarded."""
    tree = ast.parse(source)
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        eager = not _in_function(node, parents) and not _in_import_error_guard(node, parents)
        if isinstance(parents.get(node), ast.If):  # `if TYPE_CHECKING:` blocks
            test = parents[node].test  # type: ignore[attr-defined]
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                continue
            out.append((top, node.lineno, eager))
    return out


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def dependency_problems() -> list[str]:
    declared = _declared()
    base = declared[""]
    anywhere = set().union(*declared.values()) - declared.get("dev", set())
    problems = []
    for path in _sources():
        module = _module_name(path)
        allowed_eager = base | declared.get("service", set()) if _is_service(module) else base
        for top, line, eager in third_party_imports(path.read_text()):
            where = f"{path.relative_to(ROOT)}:{line} imports {top}"
            providers = _providers().get(top)
            if not providers:
                problems.append(f"{where}: no installed distribution provides it")
            elif not providers & anywhere:
                problems.append(f"{where}: provided by {sorted(providers)}, not declared "
                                "in pyproject.toml")
            elif eager and not providers & allowed_eager:
                extra = "base or service" if _is_service(module) else "base"
                problems.append(f"{where} at module level: provided by {sorted(providers)}, "
                                f"not a {extra} dependency")
    return problems


def test_every_imported_module_is_declared_in_the_right_extra() -> None:
    assert dependency_problems() == []


def test_the_checker_sees_an_undeclared_and_a_misplaced_import(tmp_path: Path) -> None:
    """The checker itself can fail: orjson at the top of a library module is refused unless
    orjson is a base dependency, and a module nobody declares is always refused."""
    found = third_party_imports(
        "import orjson\nimport not_a_real_module_xyz\n"
        "def f():\n    import uvicorn\n"
        "try:\n    import uvloop\nexcept ImportError:\n    pass\n")
    assert found == [("orjson", 1, True), ("not_a_real_module_xyz", 2, True),
                     ("uvicorn", 4, False), ("uvloop", 6, False)]
    assert "not_a_real_module_xyz" not in _providers()
    base = _declared()[""]
    uvicorn_dists = _providers()["uvicorn"]
    assert not uvicorn_dists & base  # a top-level `import uvicorn` in a library module fails


@pytest.mark.parametrize("top", ["fhir_core", "pydantic_core", "orjson"])
def test_directly_imported_modules_are_base_dependencies(top: str) -> None:
    """The three the base install was missing (issue 13): each is a base dependency."""
    assert _providers()[top] & _declared()[""], top
