"""Generated documentation: the pages and where they live.

``docs/clinical`` holds the Markdown catalog (rules, exercises, parameters) and
``catalog.html``, the same content as one searchable page that works offline.
"""

from __future__ import annotations

from pathlib import Path

from cds import exercise_figure_svg, load_knowledge_base
from cds.authoring import load_scenarios, load_trajectories, render_catalog, render_catalog_html

__all__ = ["catalog_pages"]


def catalog_pages(root: Path) -> dict[str, str]:
    """Every generated page by file name (Markdown and HTML), for the knowledge base at
    ``root`` and the scenarios under it."""
    kb = load_knowledge_base(root)
    covering: dict[str, list[str]] = {}
    for sc, _, _ in load_scenarios(root):
        for rid in sc.covers:
            covering.setdefault(rid, []).append(sc.id)
    for tr, _, _ in load_trajectories(root):  # multi-visit follow-up tests
        for rid in tr.covers:
            covering.setdefault(rid, []).append(tr.id)
    html = render_catalog_html(  # each exercise drawn by the handout's line drawings
        kb, covering, exercise_picture=lambda ex: exercise_figure_svg(ex.id, ex.title))
    return {**render_catalog(kb, covering), "catalog.html": html}
