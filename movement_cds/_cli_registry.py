"""Imports every command module so that its commands register on the Typer apps.

One name per module, sorted; a module owns its commands, its help text and its tests.
"""

from __future__ import annotations

from movement_cds import (
    _cli_explain,  # noqa: F401
    _cli_handout,  # noqa: F401
    _cli_kb_check,  # noqa: F401
    _cli_kb_diff,  # noqa: F401
    _cli_kb_docs,  # noqa: F401
    _cli_kb_export,  # noqa: F401
    _cli_kb_profile,  # noqa: F401
    _cli_population,  # noqa: F401
)
