"""The bundled knowledge base: data files, shipped as package data.

A deployment may point at another directory with the same layout (``cds.load_knowledge_base``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundled_path"]


def bundled_path() -> Path:
    """Directory of the knowledge base that ships with this release."""
    return Path(__file__).resolve().parent
