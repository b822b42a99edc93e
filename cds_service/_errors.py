"""Every error the CDS Hooks service raises on purpose: the ``ServiceError`` branch of the
project's one error tree (drawn in full in ``movement_cds._errors``)::

    MovementCDSError
    └── ServiceError
        ├── ConfigError (ValueError)        the configuration is unusable
        ├── StartupError (RuntimeError)     the service cannot start
        ├── ReloadRefused (RuntimeError)    a new knowledge-base release was not taken live
        ├── AuthError (PermissionError)     the request is not authenticated (a bare 401)
        ├── ReplayStoreError (OSError)      the used-token cache cannot be read or written
        ├── StoreError (OSError)            the database cannot be written or read
        │   └── StoreUnavailable            ... now (busy, unreachable): retrying may succeed
        ├── AuditError (LookupError)        an audit record cannot be shown or replayed
        ├── PrefetchError                   needed data cannot be had (412) or is malformed (400)
        └── ApiError                        an HTTP error answer with its OperationOutcome
"""

from __future__ import annotations

from typing import Any

from cds import MovementCDSError

__all__ = [
    "ApiError",
    "AuditError",
    "AuthError",
    "ConfigError",
    "PrefetchError",
    "ReloadRefused",
    "ReplayStoreError",
    "ServiceError",
    "StartupError",
    "StoreError",
    "StoreUnavailable",
]


class ServiceError(MovementCDSError):
    """Root of the service's errors."""


class ConfigError(ServiceError, ValueError):
    """The configuration is unusable; the message says which key and why."""


class PrefetchError(ServiceError):
    """Needed data cannot be had (412) or a prefetch value is malformed (400)."""

    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics


class AuthError(ServiceError, PermissionError):
    """The request is not authenticated. ``str(err)`` is an internal reason (never the
    token); the HTTP answer is a bare 401."""


class ReplayStoreError(ServiceError, OSError):
    """The replay cache could not be read or written (the token must then be refused)."""


class StoreError(ServiceError, OSError):
    """A write or read of the service's database failed for a reason retrying will not
    mend (a constraint, a trigger, a schema at another revision)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is busy now; retrying later may succeed."""


class AuditError(ServiceError, LookupError):
    """An audit record cannot be shown or replayed (not found, input not stored, release
    not archived or corrupt); the message says which and why."""


class StartupError(ServiceError, RuntimeError):
    """The service cannot start: bad config, knowledge base or failing scenario tests."""


class ReloadRefused(ServiceError, RuntimeError):
    """A new knowledge-base version was not taken into service; the message says why."""


class ApiError(ServiceError):
    """An HTTP error answer: ``status``, the OperationOutcome ``code`` and ``diagnostics``
    (or a whole ``outcome``)."""

    def __init__(self, status: int, code: str, diagnostics: str | None = None,
                 outcome: dict[str, Any] | None = None) -> None:
        super().__init__(diagnostics or code)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.outcome = outcome
