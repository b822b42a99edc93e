"""The package layers hold (docs/architecture.md): cds_service > movement_cds > fhir_adapters >
cds > knowledge_base; a package imports only packages below it and only their public names
(never another package's ``_private`` module), and the decision core imports nothing of FHIR
or HTTP. The contracts are import-linter's, in pyproject.toml
([tool.importlinter]); these tests run ``lint-imports`` on the tree, and on copies of it with
one violating import added, to show that the contracts fail when a layer is crossed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cds_service", "movement_cds", "fhir_adapters", "cds", "knowledge_base")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` run in ``root``: it imports the packages found there (the current
    directory comes first on its path), so a copy of the tree is linted, not the install."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"],  # reads ./pyproject.toml
                          cwd=root, capture_output=True, text=True, timeout=300, check=False)


def _copy_tree(dest: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns(
            "__pycache__", "*.yaml", "*.json", "*.md"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_contracts_are_the_documented_layers() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == set(PACKAGES)
    contracts = {c["type"]: c for c in config["contracts"]}
    assert contracts["layers"]["layers"] == list(PACKAGES)
    assert "packages_with_private_modules" not in contracts["private_modules"]  # all of them
    forbidden = contracts["forbidden"]
    assert set(forbidden["source_modules"]) == {"cds", "knowledge_base"}
    assert {"fhir", "fastapi", "starlette", "httpx", "uvicorn"} <= set(
        forbidden["forbidden_modules"])


def test_the_tree_keeps_its_layers() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 kept, 0 broken" in run.stdout


LAYERS = "Layers"
NO_FHIR = "knows nothing of FHIR or HTTP"
PRIVATE = "private modules"


@pytest.mark.parametrize(("module", "line", "broken"), [
    # the facade reaching up into the service (what `movement-cds serve` did before)
    ("movement_cds/_cli.py", "from cds_service._app import create_app", {LAYERS, PRIVATE}),
    # FHIR in and out importing the facade (a package cycle)
    ("fhir_adapters/_inbound.py", "import movement_cds", {LAYERS}),
    # the decision core learning FHIR: a layer crossed, and fhir.resources reached through it
    ("cds/_plan.py", "from fhir_adapters import read_bundle", {LAYERS, NO_FHIR}),
    # the decision core learning HTTP
    ("cds/_evaluator.py", "import httpx", {NO_FHIR}),
    # the knowledge base's Python (data below the core) reaching into the core
    ("knowledge_base/__init__.py", "import cds", {LAYERS}),
    # the facade reaching into the core's private modules instead of its public names
    ("movement_cds/_summary.py", "from cds._plan import resolve_plan", {PRIVATE}),
    # the service reaching into the FHIR adapters' private modules
    ("cds_service/_cards.py", "from fhir_adapters._outbound import write_bundle", {PRIVATE}),
])
def test_a_crossed_layer_fails_the_contracts(tmp_path: Path, module: str, line: str,
                                             broken: set[str]) -> None:
    tree = _copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    run = _lint(tree)
    assert run.returncode != 0, run.stdout
    assert f"{len(broken)} broken" in run.stdout
    broken_lines = [x for x in run.stdout.splitlines() if x.endswith("BROKEN")]
    assert {b for b in broken if any(b in x for x in broken_lines)} == broken
    importer = module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert re.search(rf"^-\s+{re.escape(importer)} -> ", run.stdout, re.M), run.stdout  # named


def test_the_service_commands_reach_the_command_line_through_the_entry_point() -> None:
    """``serve`` and ``feedback`` come from the ``movement_cds.cli`` entry-point group, and
    loading them imports nothing of the ``service`` extra (a base install still runs every
    library command; ``serve`` then says in one line that the extra is needed)."""
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "eps = {ep.name: ep.value for ep in entry_points(group='movement_cds.cli')}\n"
        "assert eps == {'service': 'cds_service._cli:register'}, eps\n"
        "from typer.main import get_command\n"
        "from movement_cds._cli import app\n"
        "names = set(get_command(app).commands)\n"
        "assert {'serve', 'feedback', 'evaluate', 'kb'} <= names, names\n"
        "loaded = {'fastapi', 'starlette', 'uvicorn', 'httpx', 'jwt'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr


def test_a_plugin_that_cannot_load_costs_one_line_not_the_command_line(tmp_path: Path) -> None:
    """A distribution naming a missing module in the group: the library commands and the
    service's still run; stderr says which plugin was not loaded, without a traceback."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[movement_cds.cli]\nbroken = not_a_module_xyz:register\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "movement_cds", "feedback", "--help"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert "report" in run.stdout
    assert run.stderr.strip() == ("movement-cds: commands from not_a_module_xyz:register not "
                                  "loaded (ModuleNotFoundError: No module named "
                                  "'not_a_module_xyz')")
