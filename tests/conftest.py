from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


STARTER = Path(__file__).resolve().parent / "fixtures" / "starter-kb"


@pytest.fixture(scope="session")
def starter_kb() -> KnowledgeBase:
    """A frozen small knowledge base (the foundation's starter rules) for tests that need
    particular rules; the bundled clinical content may change without breaking them."""
    return load_knowledge_base(STARTER)


@pytest.fixture(scope="session")
def starter(starter_kb: KnowledgeBase) -> Evaluator:
    return Evaluator(starter_kb, "durable")


@pytest.fixture(scope="session")
def starter_reference(starter_kb: KnowledgeBase) -> Evaluator:
    return Evaluator(starter_kb, "reference")


@pytest.fixture
def kb_copy(tmp_path: Path) -> Path:
    """A writable copy of the starter knowledge base, for breaking on purpose."""
    dest = tmp_path / "kb"
    shutil.copytree(STARTER, dest)
    return dest


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A page in a real headless Chromium (tests/browser.py); skipped without one off CI."""
    from tests.browser import page

    with page() as p:
        yield p
