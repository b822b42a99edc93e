"""No dead code in the packages (issue 14 part 6): vulture finds every function, class,
method, constant and attribute nothing reads. The tests, benchmarks, examples and tools are
scanned as readers too (a helper only a test calls is not dead). A new unused name fails here.

What only a framework or a file format reads by reflection is allowed below, each with its
reason; enum members and pydantic model fields are allowed (they say what a YAML or JSON
file may hold: read by value, or by pydantic, not by name).
``STILL_DEAD`` is a ratchet like ``test_codebase_shape.STILL_LONG``: unused names in modules
other work owns, removed one by one; shrink it, never grow it."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

vulture = pytest.importorskip("vulture", reason="the dev extra's vulture finds dead code")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cds", "fhir_adapters", "movement_cds", "cds_service", "knowledge_base")
READERS = ("tests", "bench", "examples", "tools")
# Called by a framework, never by name in this code: decorators that register a function
IGNORE_DECORATORS = [
    "@*.command",  # Typer: the CLI commands (movement-cds ...)
    "@*.get", "@*.post", "@*.put", "@*.delete", "@*.exception_handler",  # FastAPI routes
    "@model_validator", "@field_validator",  # pydantic calls the validators of a model
]
# name: why nothing in this code reads it
IGNORE_NAMES = {
    "allow_duplicate_keys": "ruamel.yaml's switch, read by its loader",
    "down_revision": "Alembic reads a migration's revision chain by name",
    "branch_labels": "Alembic reads it by name",
    "depends_on": "Alembic reads it by name",
    "mtime": "tarfile.TarInfo's field, read by tarfile when writing",
    "exc_info": "the context-manager protocol's __exit__ arguments",
    "wait_closed": "asyncio's Server interface, called by uvicorn",
    "is_serving": "asyncio's Server interface, called by uvicorn",
    "sockets": "asyncio's Server interface, read by uvicorn",
    "send_400_response": "uvicorn's HTTP protocol calls it on a malformed request",
    "apply": "BundleBuilder.apply: the generators (examples/, knowledge_base/scenarios/) "
             "replay recorded steps with it; the scan leaves the _generate.py scripts out",
    "lower_is_better": "public API: cds.MeasureInfo tells an integrator's chart which way is up",
}
# (module, name): unused names still waiting to be removed; a ratchet that only shrinks
# (empty since issue 14: every dead name found when the check came in is gone)
STILL_DEAD: set[tuple[str, str]] = set()


def _declared_fields(path: Path) -> set[int]:
    """Lines of the members of the module's enums and the fields of its pydantic models:
    what a file may say (read by value, or by pydantic), not names the code must read."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                ast.unparse(b).endswith(("Enum", "Model")) for b in node.bases):
            out |= {s.lineno for s in node.body if isinstance(s, ast.Assign | ast.AnnAssign)}
    return out


def unused(
    ignore_names: list[str], paths: tuple[str, ...] = PACKAGES + READERS
) -> set[tuple[str, str]]:
    """(module, name) of every unused name vulture finds in the packages."""
    v = vulture.Vulture(ignore_names=ignore_names, ignore_decorators=IGNORE_DECORATORS)
    v.scavenge([str(ROOT / p) for p in paths],
               exclude=["*/node_modules/*", "*/_generate.py"])
    out = set()
    for item in v.get_unused_code(min_confidence=60):
        path = Path(item.filename)
        rel = str(path.relative_to(ROOT))
        if not rel.startswith(tuple(f"{p}/" for p in PACKAGES)):
            continue
        if item.typ == "variable" and item.first_lineno in _declared_fields(path):
            continue
        if item.typ == "import" and path.name == "_cli_registry.py":
            continue  # importing a command module registers its commands
        out.add((rel, item.name))
    return out


@cache
def found() -> frozenset[tuple[str, str]]:
    return frozenset(unused(list(IGNORE_NAMES)))


def test_no_new_dead_code() -> None:
    assert set(found()) - STILL_DEAD == set(), "remove it, or say in IGNORE_NAMES who reads it"


def test_the_ratchet_list_holds_only_dead_names() -> None:
    """A name removed (or now read) leaves STILL_DEAD."""
    assert STILL_DEAD - set(found()) == set()


def test_the_check_sees_a_reflection_name_unless_it_is_allowed() -> None:
    """Without its entry an allowed name is reported: the scan reads the packages."""
    without = [n for n in IGNORE_NAMES if n != "allow_duplicate_keys"]
    assert ("cds/_knowledge_base.py", "allow_duplicate_keys") in unused(
        without, ("cds/_knowledge_base.py",))
