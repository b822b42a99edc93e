"""Compatibility shim: ``IssuerConfig`` lives in :mod:`fhir_adapters._hooks_config`.

(Created while that module did not exist yet; kept so either import path works. The token
verifier accepts any object with ``iss``/``jwks_url``/``jwks_file``/``tenants``.)
"""

from fhir_adapters._hooks_config import IssuerConfig

__all__ = ["IssuerConfig"]
