from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds import Evaluator, KnowledgeBase, load_knowledge_base
from knowledge_base import bundled_path
from tests.compiled import stale


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test compiled modules older than their source (setup.py compiles them when
    the package is installed): the tests would run the code as it was."""
    old = stale()
    if old:
        raise pytest.UsageError(
            f"compiled before their source last changed: {', '.join(old)}. `make test` "
            "compiles them again (or `.venv/bin/pip install --no-deps -e .`); to test the "
            "source as it is, delete the .so files and set MOVEMENT_CDS_PURE_PYTHON=1.")


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


# Modules whose tests start real processes (the service under its server, worker pools,
# PostgreSQL clusters, Dask schedulers), a browser, or run whole guides: all ``slow``, so
# that ``make test-fast`` (``-m "not slow"``) runs the core in about a minute. ``make test``
# (CI) runs everything. Single slow tests elsewhere carry ``@pytest.mark.slow`` themselves.
SLOW_MODULES = frozenset({
    "tests/test_authoring_guide.py", "tests/test_population_run.py",
    "tests/test_handout_browser.py", "tests/test_catalog_browser.py", "tests/test_browser.py",
    "tests/test_kb_profile.py", "tests/test_kb_diff.py", "tests/test_container.py",
    "tests/test_fhir_js.py", "tests/test_followup_service.py",
    "tests/service/test_balancer.py", "tests/service/test_http_robustness.py",
    "tests/service/test_replay_workers.py", "tests/service/test_operations_workers.py",
    "tests/service/test_hot_reload.py", "tests/service/test_feedback_queue.py",
    "tests/service/test_auth_e2e.py", "tests/service/test_fhir_access.py",
    "tests/service/test_store_backends.py", "tests/service/test_audit.py",
    "tests/service/test_pg_two_instances.py", "tests/service/test_review_ops.py",
    "tests/service/test_handout_link.py", "tests/service/test_operations.py",
    "tests/service/test_hooks_service.py", "tests/service/test_questionnaire_prefetch.py",
    "tests/service/test_demo_request.py", "tests/service/test_replay_cache.py",
    # command-line runs in subprocesses, the service's start-up checks, lint-imports runs
    "tests/test_cli.py", "tests/test_kb_validate.py", "tests/test_kb_test_command.py",
    "tests/test_layers.py", "tests/service/test_hooks_startup.py", "tests/service/test_auth.py",
    "tests/service/test_feedback_store.py", "tests/test_review_engine.py",
    # the long property runs (200 examples each): CI runs them on every submission
    "tests/test_red_flag_calibration.py", "tests/test_outbound.py",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parents[1]
    for item in items:
        if str(Path(item.path).relative_to(root)) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
