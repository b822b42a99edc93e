"""Configuration of the CDS Hooks service (``movement-cds serve --config FILE``).

The file is TOML. Every key (``docs/integrators/cds-hooks.md`` has an annotated example)::

    [service]
    base_url = "https://cds.example.org"   # required: the public base URL the EHR calls;
                                           # token audiences are base_url + the request path
    database = "sqlite:///var/lib/movement-cds/feedback.db"  # feedback store (optional)
    knowledge_base = "/etc/movement-cds/kb" # knowledge-base directory (default: bundled)
    max_body_bytes = 1048576               # larger request bodies get 413 (default 1 MiB)
    fhir_timeout_seconds = 3.0             # per HTTP call to the EHR's fhirServer
    fetch_budget_seconds = 4.0             # all fhirServer calls of one request together
    max_pages = 10                         # searchset pages followed per prefetch key
    cors_origins = ["https://ehr.example.org"]  # browser origins allowed (C20); default none
    reload_check_seconds = 10              # look for a new knowledge-base version at most this
                                           # often (0 = never, the default; SIGHUP always does)
    engine_cache_size = 512                # per worker: what the rules derived for this many
                                           # distinct fact sets (the same chart again skips
                                           # the rule engine; identical result); 0 = off
    balance_connections = true             # with --workers N: hand each new connection to the
                                           # worker with the fewest open (false: uvicorn's
                                           # shared accept, whichever worker wakes first)

    [auth]
    required = true                        # false only together with --insecure-no-auth

    [[auth.issuers]]                       # one table per EHR allowed to call
    iss = "https://ehr.example.org"        # the JWT "iss" value, exactly
    jwks_url = "https://ehr.example.org/.well-known/jwks.json"   # or:
    # jwks_file = "/etc/movement-cds/ehr-jwks.json"             # a static JWK Set
    tenants = ["hospital-a"]               # allowed "tenant" claims (optional)

Unknown keys are errors (a misspelt key must not silently fall back to a default). Relative
paths (``knowledge_base``, ``jwks_file``) are relative to the config file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ConfigError", "IssuerConfig", "ServiceConfig", "load_config", "parse_config"]


class ConfigError(ValueError):
    """The configuration is unusable; the message says which key and why."""


@dataclass(frozen=True)
class IssuerConfig:
    """An EHR allowed to call: its ``iss``, its key set (URL or file), allowed tenants."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    tenants: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceConfig:
    base_url: str
    database: str | None = None
    knowledge_base: Path | None = None
    max_body_bytes: int = 1_048_576
    fhir_timeout_seconds: float = 3.0
    fetch_budget_seconds: float = 4.0
    max_pages: int = 10
    cors_origins: tuple[str, ...] = ()
    reload_check_seconds: float = 0.0
    engine_cache_size: int = 512
    balance_connections: bool = True
    auth_required: bool = True
    issuers: tuple[IssuerConfig, ...] = field(default_factory=tuple)
    insecure_no_auth: bool = False


_SERVICE_KEYS = {
    "base_url", "database", "knowledge_base", "max_body_bytes", "fhir_timeout_seconds",
    "fetch_budget_seconds", "max_pages", "cors_origins", "reload_check_seconds",
    "engine_cache_size", "balance_connections",
}
_AUTH_KEYS = {"required", "issuers"}
_ISSUER_KEYS = {"iss", "jwks_url", "jwks_file", "tenants"}


def _absolute_http_url(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{key} must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key} must not have a query or fragment")
    return value.rstrip("/")


def _unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(extra)}")


def _number(table: dict[str, Any], key: str, default: float, *, integer: bool,
            where: str = "[service]") -> Any:
    v = table.get(key, default)
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or v <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{where} {key} must be {kind}")
    return v


def _path(value: Any, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty path string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_config(doc: dict[str, Any], *, base_dir: Path = Path("."),
                 insecure_no_auth: bool = False) -> ServiceConfig:
    """Check a parsed TOML document and build the configuration (``ConfigError`` if bad)."""
    _unknown(doc, {"service", "auth"}, "the top level")
    service = doc.get("service")
    if not isinstance(service, dict):
        raise ConfigError("missing [service] table (it needs at least base_url)")
    _unknown(service, _SERVICE_KEYS, "[service]")
    if "base_url" not in service:
        raise ConfigError("[service] base_url is required")
    base_url = _absolute_http_url(service["base_url"], "[service] base_url")
    database = service.get("database")
    if database is not None and (not isinstance(database, str) or not database.strip()):
        raise ConfigError("[service] database must be a non-empty string")
    kb = service.get("knowledge_base")
    kb_path = _path(kb, "[service] knowledge_base", base_dir) if kb is not None else None
    if kb_path is not None and not kb_path.is_dir():
        raise ConfigError(f"[service] knowledge_base is not a directory: {kb_path}")
    origins = service.get("cors_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) and o for o in origins):
        raise ConfigError("[service] cors_origins must be a list of origin strings")
    max_body = _number(service, "max_body_bytes", 1_048_576, integer=True)
    fhir_timeout = float(_number(service, "fhir_timeout_seconds", 3.0, integer=False))
    budget = float(_number(service, "fetch_budget_seconds", 4.0, integer=False))
    max_pages = _number(service, "max_pages", 10, integer=True)
    cache_size = service.get("engine_cache_size", 512)
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) \
            or not 0 <= cache_size <= 1_000_000:
        raise ConfigError("[service] engine_cache_size must be an integer from 0 (off) to "
                          "1000000")
    balance = service.get("balance_connections", True)
    if not isinstance(balance, bool):
        raise ConfigError("[service] balance_connections must be true or false")
    reload_check = service.get("reload_check_seconds", 0)
    if isinstance(reload_check, bool) or not isinstance(reload_check, int | float) \
            or not 0 <= reload_check <= 86_400:
        raise ConfigError("[service] reload_check_seconds must be a number from 0 (off) to "
                          "86400")

    auth = doc.get("auth", {})
    if not isinstance(auth, dict):
        raise ConfigError("[auth] must be a table")
    _unknown(auth, _AUTH_KEYS, "[auth]")
    required = auth.get("required", True)
    if not isinstance(required, bool):
        raise ConfigError("[auth] required must be true or false")
    if not required and not insecure_no_auth:
        raise ConfigError("[auth] required = false is only allowed with --insecure-no-auth")
    raw_issuers = auth.get("issuers", [])
    if not isinstance(raw_issuers, list):
        raise ConfigError("[[auth.issuers]] must be an array of tables")
    issuers: list[IssuerConfig] = []
    for i, t in enumerate(raw_issuers):
        where = f"[[auth.issuers]] #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"{where} must be a table")
        _unknown(t, _ISSUER_KEYS, where)
        iss = t.get("iss")
        if not isinstance(iss, str) or not iss.strip():
            raise ConfigError(f"{where}: iss is required")
        if ("jwks_url" in t) == ("jwks_file" in t):
            raise ConfigError(f"{where} ({iss}): give exactly one of jwks_url or jwks_file")
        jwks_url = (_absolute_http_url(t["jwks_url"], f"{where} jwks_url")
                    if "jwks_url" in t else None)
        jwks_file = _path(t["jwks_file"], f"{where} jwks_file", base_dir) \
            if "jwks_file" in t else None
        if jwks_file is not None and not jwks_file.is_file():
            raise ConfigError(f"{where} ({iss}): jwks_file not found: {jwks_file}")
        tenants = t.get("tenants", [])
        if not isinstance(tenants, list) or not all(isinstance(x, str) and x for x in tenants):
            raise ConfigError(f"{where} ({iss}): tenants must be a list of strings")
        if any(x.iss == iss for x in issuers):
            raise ConfigError(f"{where}: issuer {iss} is listed twice")
        issuers.append(IssuerConfig(iss, jwks_url, jwks_file, tuple(tenants)))
    if required and not insecure_no_auth and not issuers:
        raise ConfigError("[auth] required = true needs at least one [[auth.issuers]]")

    return ServiceConfig(
        base_url=base_url,
        balance_connections=balance,
        database=database,
        knowledge_base=kb_path,
        max_body_bytes=max_body,
        fhir_timeout_seconds=fhir_timeout,
        fetch_budget_seconds=budget,
        max_pages=max_pages,
        cors_origins=tuple(origins),
        reload_check_seconds=float(reload_check),
        engine_cache_size=cache_size,
        auth_required=required and not insecure_no_auth,
        issuers=tuple(issuers),
        insecure_no_auth=insecure_no_auth,
    )


def load_config(path: str | Path, *, insecure_no_auth: bool = False) -> ServiceConfig:
    """Read and check a TOML config file (``ConfigError`` with a one-line reason if bad)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {p} is not valid TOML: {e}") from None
    try:
        return parse_config(doc, base_dir=p.resolve().parent, insecure_no_auth=insecure_no_auth)
    except ConfigError as e:
        raise ConfigError(f"config {p}: {e}") from None
