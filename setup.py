"""Build: the metadata is pyproject.toml's; this file only compiles the modules that every
evaluation spends most of its Python time in (reading the FHIR input, writing the output
Bundle, the output check) to C extensions with mypyc, which compiles the typed Python as it
is (docs/performance.md, "Compiled modules"; what compiling changes: docs/architecture.md,
"Packages and the direction of dependencies").

The same source runs as plain Python when nothing is compiled: ``MOVEMENT_CDS_PURE_PYTHON=1``
at build or install time, or no extension next to a module. The build reads third-party
packages as ``Any`` (``mypyc.ini``): its environment holds only the build requirements.
"""

from __future__ import annotations

import os

from setuptools import setup

# the compiled modules; the tests check that they run compiled, give what their source gives,
# and are not older than any module of cds and fhir_adapters (which they read constants and
# types of): tests/test_compiled.py
COMPILED = [
    "fhir_adapters/_inbound.py",
    "fhir_adapters/_outbound.py",
    "fhir_adapters/_output_check.py",
]


def _extensions() -> list[object]:
    if os.environ.get("MOVEMENT_CDS_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify(["--config-file", "mypyc.ini", *COMPILED],
                         opt_level="3", group_name="movement_cds_native"))


setup(ext_modules=_extensions())
