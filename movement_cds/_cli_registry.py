"""Imports every command module so that its commands register on the Typer apps.

One import line per module, sorted; a module owns its commands, its help text and its tests.
"""

from __future__ import annotations
