"""The one error tree: every project error is drawn in ``movement_cds._errors`` and lives
in its package's one errors module, under ``MovementCDSError`` and the built-in it names."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
import textwrap
from types import ModuleType

import pytest

from cds import MovementCDSError

PACKAGES = ("cds", "fhir_adapters", "movement_cds", "cds_service", "knowledge_base")
# a node of the drawing: "├── Name (Builtin)" (the built-in is optional)
NODE = re.compile(r"^(?P<lead>[\s│├└─]*?)(?P<name>[A-Z][A-Za-z]+)(?: \((?P<builtin>[A-Za-z]+)\))?")


def _modules() -> list[ModuleType]:
    out = []
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        out.append(pkg)
        for info in pkgutil.walk_packages(pkg.__path__, name + "."):
            if info.name.endswith("__main__"):
                continue  # running it is the command line
            out.append(importlib.import_module(info.name))
    return out


def project_errors() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__ and not name.startswith("_")):
                found[name] = obj
    return found


def drawing() -> list[tuple[int, str, str | None]]:
    """(column, name, built-in) of every node in the facade's drawing, in order."""
    doc = importlib.import_module("movement_cds._errors").__doc__ or ""
    block = textwrap.dedent(doc.split("::", 1)[1].split("\n\n")[1])
    nodes = []
    for line in block.splitlines():
        m = NODE.match(line)
        if m and (m.group("lead") == "" or m.group("lead").endswith("── ")):
            nodes.append((len(m.group("lead")), m.group("name"), m.group("builtin")))
    return nodes


def test_every_error_is_defined_in_its_packages_one_errors_module() -> None:
    errors = project_errors()
    assert len(errors) >= 15
    misplaced = {n: e.__module__ for n, e in errors.items()
                 if not e.__module__.endswith("._errors")}
    assert misplaced == {}


def test_every_error_is_under_movement_cds_error() -> None:
    assert [n for n, e in project_errors().items() if not issubclass(e, MovementCDSError)] == []


def test_the_drawing_shows_every_error_with_its_parent_and_builtin() -> None:
    errors = project_errors()
    nodes = drawing()
    assert {name for _, name, _ in nodes} == set(errors)
    parents: list[tuple[int, str]] = []
    for column, name, builtin in nodes:
        while parents and parents[-1][0] >= column:
            parents.pop()
        cls = errors[name]
        if parents:
            parent = parents[-1][1]
            assert errors[parent] in cls.__bases__, f"{name} is drawn under {parent}"
        if builtin:
            assert issubclass(cls, getattr(builtins, builtin)), f"{name} is not a {builtin}"
        parents.append((column, name))


def test_the_drawing_check_fails_on_an_undrawn_error(monkeypatch: pytest.MonkeyPatch) -> None:
    errors_module = importlib.import_module("fhir_adapters._errors")

    class StrayError(MovementCDSError):
        pass

    StrayError.__module__ = errors_module.__name__
    monkeypatch.setattr(errors_module, "StrayError", StrayError, raising=False)
    assert "StrayError" in project_errors()
    with pytest.raises(AssertionError):
        test_the_drawing_shows_every_error_with_its_parent_and_builtin()
