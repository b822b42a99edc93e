"""The modules mypyc compiles (setup.py) run compiled here, and give what their source gives.

The speed table (docs/performance.md) is measured with them compiled, and an installed wheel
runs them compiled, so the suite does too; ``MOVEMENT_CDS_PURE_PYTHON=1`` at install time
builds nothing and runs the source (the first test is then skipped). The last test runs the
source itself in another process, on a copy of the packages without the extensions, and
compares every output and every refusal with the compiled modules' here.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.compiled import ROOT, compiled_sources, module_name, running_compiled, stale

# every bundled input, and inputs refused in different ways, evaluated as of one instant;
# prints {name: output Bundle or OperationOutcome} as JSON, and where each module came from
_EVALUATE = r'''
import importlib, json, sys
from pathlib import Path
from movement_cds import DecisionSupport, InvalidBundleError
root = Path(sys.argv[1])
inputs = {str(p.relative_to(root)): p.read_bytes() for pattern in (
    "examples/*.json", "examples/follow-up/visit-?.json",
    "knowledge_base/scenarios/*/*.json") for p in sorted(root.glob(pattern))}
example = json.loads((root / "examples/example-patient.json").read_text())
big = next(e["resource"] for e in example["entry"] if "valueInteger" in e["resource"])
big["valueInteger"] = 10 ** 400  # no C double holds it
inputs |= {"a huge integer": json.dumps(example),
           "junk": b"\x00\xff{", "not a bundle": b"[]", "a key twice": b'{"a":1,"a":2}',
           "odd values": json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
               {"resource": {"resourceType": "Observation", "status": 5, "code": []}},
               {"resource": {"resourceType": "Patient", "id": "p", "birthDate": "19x"}}]})}
support, out = DecisionSupport(), {}
for name, data in inputs.items():
    try:
        out[name] = support.evaluate(data, as_of="2026-11-02T09:00:00Z").bundle
    except InvalidBundleError as e:
        out[name] = e.operation_outcome
modules = {m: importlib.import_module(m).__file__ for m in sys.argv[2:]}
print(json.dumps({"outputs": out, "modules": modules}, sort_keys=True))
'''


def _run(cwd: Path, modules: list[str]) -> dict[str, dict[str, object]]:
    done = subprocess.run([sys.executable, "-c", _EVALUATE, str(ROOT), *modules], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(cwd)}, capture_output=True,
                          text=True, timeout=300, check=True)
    result: dict[str, dict[str, object]] = json.loads(done.stdout)
    return result


def test_the_hot_modules_run_compiled() -> None:
    if os.environ.get("MOVEMENT_CDS_PURE_PYTHON") == "1":
        pytest.skip("installed with MOVEMENT_CDS_PURE_PYTHON=1: nothing compiled")
    source = {module_name(s) for s in compiled_sources()} - set(running_compiled())
    assert not source, (f"{sorted(source)} run from source: `.venv/bin/pip install --no-deps "
                        "-e .` compiles them (or set MOVEMENT_CDS_PURE_PYTHON=1 to test the "
                        "source)")


def test_a_module_edited_after_it_was_compiled_is_found(tmp_path: Path) -> None:
    """The guard ``tests/conftest.py`` runs before the suite (the tests would run old code):
    the compiled module's own source, or a module of cds it read, edited since."""
    (tmp_path / "setup.py").write_text('COMPILED = ["pkg/_hot.py"]\n')
    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "_hot.py"
    source.write_text("x = 1\n")
    import importlib.machinery

    ext = source.with_name("_hot" + importlib.machinery.EXTENSION_SUFFIXES[0])
    ext.write_bytes(b"")
    (tmp_path / "cds").mkdir()  # a package the compiled modules read (constants, types)
    other = tmp_path / "cds" / "_facts.py"
    other.write_text("y = 2\n")
    now = time.time()
    os.utime(ext, (now, now))
    assert stale(tmp_path) == []
    os.utime(source, (now + 5, now + 5))
    assert stale(tmp_path) == ["pkg/_hot.py"]
    os.utime(source, (now - 5, now - 5))
    os.utime(other, (now + 5, now + 5))
    assert stale(tmp_path) == ["pkg/_hot.py"]
    ext.unlink()  # nothing compiled: the source runs as it is
    assert stale(tmp_path) == []
    left = other.with_name("_facts" + importlib.machinery.EXTENSION_SUFFIXES[0])
    left.write_bytes(b"")  # an extension of a module no longer compiled
    assert stale(tmp_path) == ["cds/_facts.py (no longer compiled)"]


def test_the_source_gives_what_the_compiled_modules_give(tmp_path: Path) -> None:
    modules = [module_name(s) for s in compiled_sources()]
    for package in ("cds", "fhir_adapters", "movement_cds", "knowledge_base"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    here = tmp_path / "here"
    here.mkdir()
    source, compiled = _run(tmp_path, modules), _run(here, modules)
    assert all(str(f).startswith(str(tmp_path)) and str(f).endswith(".py")
               for f in source["modules"].values()), source["modules"]
    assert not any(str(f).startswith(str(tmp_path)) for f in compiled["modules"].values())
    assert len(source["outputs"]) >= 100
    differ = [n for n in source["outputs"] if source["outputs"][n] != compiled["outputs"][n]]
    assert not differ, f"the source and the compiled modules differ on {differ}"


def _plain_floats_and_abs(tree: ast.AST) -> list[str]:
    """Where a module annotates a number plain ``float`` (a parameter, a return, a variable
    or an attribute) or calls ``abs()``."""
    found = []
    for node in ast.walk(tree):
        notes: list[tuple[ast.expr | None, str]] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            notes += [(a.annotation, f"{node.name}({a.arg})")
                      for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            notes.append((node.returns, f"{node.name} return"))
        elif isinstance(node, ast.AnnAssign):
            notes.append((node.annotation, ast.unparse(node.target)))
        found += [f"line {node.lineno}: {where} is float" for ann, where in notes
                  if isinstance(ann, ast.Name) and ann.id == "float"]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "abs"):
            found.append(f"line {node.lineno}: abs()")
    return found


def test_no_compiled_module_can_turn_an_int_into_a_float() -> None:
    """mypyc keeps a value annotated ``float`` as a C double, so an int given there comes back
    as a float (7 -> 7.0), and its ``abs()`` of an ``int | float`` is a float: the output
    would change (an asymmetry of 1 written 1.0 changed every id's digest; found by the test
    above). A number that may be an int is annotated ``int | float`` in a compiled module,
    and ``abs()`` is not used there."""
    found = {str(s.relative_to(ROOT)): _plain_floats_and_abs(ast.parse(s.read_text()))
             for s in compiled_sources()}
    assert not {k: v for k, v in found.items() if v}
    planted = ast.parse("def f(x: float, y: int | float) -> float:\n    return abs(y)\n")
    assert _plain_floats_and_abs(planted) == [
        "line 1: f(x) is float", "line 1: f return is float", "line 2: abs()"]


def test_no_public_name_comes_from_a_compiled_module() -> None:
    """What callers reach is plain Python: its docstring and signature for ``help()``, its
    classes copied and pickled as dataclasses are, its flags taken as Python takes them
    (``fhir_adapters/_bundles.py`` holds the reader's and writer's entry points)."""
    import pickle

    import cds
    import fhir_adapters
    import movement_cds
    from fhir_adapters import input_codes, read_bundle

    compiled = {module_name(s) for s in compiled_sources()}
    for package in (cds, fhir_adapters, movement_cds):
        for name in package.__all__:
            home = getattr(getattr(package, name), "__module__", None)
            assert home not in compiled, f"{package.__name__}.{name} is defined in {home}"
    support = movement_cds.DecisionSupport()
    codes = input_codes(support.kb)
    assert pickle.loads(pickle.dumps(codes)) == codes and codes.observations
    assert read_bundle.__doc__ and "InvalidBundleError" in read_bundle.__doc__
    text = (ROOT / "examples" / "no-red-flags.json").read_text()
    when = datetime(2026, 11, 2, 9, tzinfo=UTC)
    assert repr(read_bundle(text, kb=support.kb, as_of=when, strict_fhir=1)) == repr(
        read_bundle(text, kb=support.kb, as_of=when, strict_fhir=True))


def test_the_image_build_context_holds_what_the_build_compiles_with() -> None:
    """The Dockerfile installs the package from its build context, which .dockerignore
    narrows to a list: without setup.py and mypyc.ini the image would run uncompiled (found
    by review; tests/test_container.py checks the built image where Docker runs)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "setup.py", "mypyc.ini", "MANIFEST.in"} <= allowed
    assert "*" in lines and "**/*.so" in lines  # nothing else; no extension from a checkout
