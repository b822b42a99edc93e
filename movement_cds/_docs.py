"""Generated documentation: the pages and where they live."""

from __future__ import annotations

from pathlib import Path

from cds import load_knowledge_base
from cds._catalog_docs import render_catalog
from cds._scenarios import load_scenarios

__all__ = ["catalog_pages"]


def catalog_pages(root: Path) -> dict[str, str]:
    kb = load_knowledge_base(root)
    covering: dict[str, list[str]] = {}
    for sc, _, _ in load_scenarios(root):
        for rid in sc.covers:
            covering.setdefault(rid, []).append(sc.id)
    return render_catalog(kb, covering)
