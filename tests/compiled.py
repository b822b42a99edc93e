"""The modules mypyc compiles (``setup.py``'s ``COMPILED``), as the tests see them.

``stale()`` names a compiled module whose source, or a module of cds or fhir_adapters it was
compiled with, changed after it was compiled, and an extension left beside a module that is
no longer compiled: the tests would run old code, so ``tests/conftest.py`` stops before any
test runs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def compiled_sources(root: Path = ROOT) -> list[Path]:
    """``setup.py``'s ``COMPILED`` list, read without running the build."""
    tree = ast.parse((root / "setup.py").read_text())
    listed = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                  and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "COMPILED")
    return [root / p for p in ast.literal_eval(listed)]


def module_name(source: Path) -> str:
    return ".".join(source.relative_to(ROOT).with_suffix("").parts)


def extension_of(source: Path) -> Path | None:
    """The compiled extension next to ``source`` (``_inbound.cpython-311-...so``), if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def running_compiled() -> list[str]:
    """The modules of ``COMPILED`` this process runs from their extension (imports them)."""
    return [module_name(s) for s in compiled_sources()
            if importlib.import_module(module_name(s)).__file__ == str(extension_of(s))]


# the packages whose modules the compiled ones import (their constants and types are
# compiled in): a compiled module is stale once any of their sources is newer
READ_BY_COMPILED = ("cds", "fhir_adapters")


def stale(root: Path = ROOT) -> list[str]:
    """Compiled modules older than a source they were compiled with (edited since the last
    install): their own, or any module of ``READ_BY_COMPILED``; and extensions of modules
    no longer compiled (left by an earlier install: they would not load with the new build)."""
    sources = [p for pkg in READ_BY_COMPILED for p in (root / pkg).glob("*.py")]
    newest = max((p.stat().st_mtime for p in sources), default=0.0)
    listed = compiled_sources(root)
    out = []
    for source in listed:
        ext = extension_of(source)
        if ext is not None and ext.stat().st_mtime < max(newest, source.stat().st_mtime):
            out.append(source.relative_to(root).as_posix())
    for source in sources:
        if source not in listed and extension_of(source) is not None:
            out.append(f"{source.relative_to(root).as_posix()} (no longer compiled)")
    return out


def source_module(name: str) -> ModuleType:
    """A fresh module run from the ``.py`` source of module ``name`` (compiled or not), under
    another name: a test can change its functions and classes, and its own calls see the
    change (a compiled module's calls inside it do not look them up)."""
    path = ROOT / (name.replace(".", "/") + ".py")
    spec = importlib.util.spec_from_file_location(f"_source_of_{name.replace('.', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
