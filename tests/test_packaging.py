"""The package data ships, and ships without setuptools warnings (issue 14 part 8).

setuptools ships a folder's data files only as part of a package: a folder of data below a
package that Python could import (its name an identifier) but that ``[tool.setuptools]
packages`` does not list makes every build print "Package would be ignored". These tests
read ``pyproject.toml`` and the tree (no build: cheap) and fail when a knowledge-base file
would not ship, or when a folder of shipped data is not a listed package."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"]


def shipped_data(config: dict[str, object]) -> set[Path]:
    """Every file the package-data patterns match, as setuptools globs them (relative to the
    package's folder, ``**`` recursive)."""
    out: set[Path] = set()
    package_data = config["package-data"]
    assert isinstance(package_data, dict)
    for package, patterns in package_data.items():
        folder = ROOT / package.replace(".", "/")
        out |= {p for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    return out


def unlisted_data_folders(config: dict[str, object]) -> set[str]:
    """Folders holding shipped data that Python sees as packages but setuptools does not."""
    packages = config["packages"]
    assert isinstance(packages, list)
    out = set()
    for path in shipped_data(config):
        parts = path.parent.relative_to(ROOT).parts
        if all(p.isidentifier() for p in parts) and ".".join(parts) not in packages:
            out.add(".".join(parts))
    return out


def knowledge_base_files() -> set[Path]:
    """The knowledge base's own files: everything but Python sources and caches (its
    ``__init__`` ships as a module; the test-data generators are repository tools)."""
    return {p for p in (ROOT / "knowledge_base").rglob("*") if p.is_file()
            and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def test_every_knowledge_base_file_ships() -> None:
    missing = knowledge_base_files() - shipped_data(CONFIG)
    assert not missing, sorted(str(p.relative_to(ROOT)) for p in missing)
    assert len(knowledge_base_files()) > 100  # the scan saw the knowledge base


def test_every_folder_of_shipped_data_is_a_listed_package() -> None:
    assert unlisted_data_folders(CONFIG) == set()


def test_every_listed_package_is_a_folder() -> None:
    packages = CONFIG["packages"]
    assert [p for p in packages if not (ROOT / p.replace(".", "/")).is_dir()] == []


def test_the_checks_see_a_folder_left_out_and_a_pattern_missing() -> None:
    """The two checks fail on the mistakes they guard against."""
    fewer = dict(CONFIG, packages=[p for p in CONFIG["packages"] if p != "knowledge_base.rules"])
    assert unlisted_data_folders(fewer) == {"knowledge_base.rules"}
    no_json = dict(CONFIG, **{"package-data": {**CONFIG["package-data"], "knowledge_base": [
        p for p in CONFIG["package-data"]["knowledge_base"] if "json" not in p]}})
    assert any(p.suffix == ".json" for p in knowledge_base_files() - shipped_data(no_json))
