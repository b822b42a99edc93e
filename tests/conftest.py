from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cds import Evaluator, KnowledgeBase, load_knowledge_base
from knowledge_base import bundled_path


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return load_knowledge_base(bundled_path())


@pytest.fixture(scope="session")
def durable(kb: KnowledgeBase) -> Evaluator:
    return Evaluator(kb, "durable")


@pytest.fixture(scope="session")
def reference(kb: KnowledgeBase) -> Evaluator:
    return Evaluator(kb, "reference")


@pytest.fixture
def kb_copy(tmp_path: Path) -> Path:
    """A writable copy of the bundled knowledge base, for breaking on purpose."""
    dest = tmp_path / "kb"
    shutil.copytree(bundled_path(), dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dest
