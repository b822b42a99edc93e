"""Configuration of the CDS Hooks service (``movement-cds serve --config FILE``).

The file is TOML, checked by a pydantic model (``extra="forbid"``: a misspelt key is an
error, never a silent default; strict types: ``"yes"`` is not a boolean). Every error names
the key's path, e.g. ``[fhir] allowed_servers[1]: not an origin (scheme://host[:port])``.
Every key (``docs/integrators/cds-hooks.md`` has the annotated example)::

    [service]
    base_url = "https://cds.example.org"   # required: the public base URL the EHR calls;
                                           # token audiences are base_url + the request path
    database = "sqlite:////var/lib/movement-cds/feedback.db"  # feedback store (optional;
                                           # four slashes: an absolute path)
    knowledge_base = "/etc/movement-cds/kb" # knowledge-base directory (default: bundled)
    max_body_bytes = 1048576               # larger request bodies get 413 (default 1 MiB)
    fhir_timeout_seconds = 3.0             # per HTTP call to the EHR's fhirServer
    fetch_budget_seconds = 4.0             # all fhirServer calls of one request together
    max_pages = 10                         # searchset pages followed per prefetch key
    cors_origins = ["https://ehr.example.org"]  # browser origins allowed (C20); default none
    reload_check_seconds = 10              # knowledge-base reload check (0 = never, default)
    engine_cache_size = 512                # per worker: rule results kept (0 = off)
    balance_connections = true             # with --workers N: least-connections hand-off
    reuse_port = false                     # with --workers N: a SO_REUSEPORT socket per
                                           # worker instead (overrides balance_connections)

    [fhir]
    allowed_servers = ["https://fhir.ehr.example.org"]  # the only fhirServer origins ever
                                           # contacted; default none (prefetch only)

    [auth]
    required = true                        # false only together with --insecure-no-auth
    replay_database = "replay-cache.sqlite3"  # used-token (jti) cache shared by the workers;
                                           # default: next to the feedback database, else
                                           # next to this file

    [[auth.issuers]]                       # one table per EHR allowed to call
    iss = "https://ehr.example.org"        # the JWT "iss" value, exactly
    jwks_url = "https://ehr.example.org/.well-known/jwks.json"   # or:
    # jwks_file = "/etc/movement-cds/ehr-jwks.json"             # a static JWK Set
    tenants = ["hospital-a"]               # allowed "tenant" claims (optional)

Relative paths (``knowledge_base``, ``jwks_file``, ``replay_database``) are relative to the
config file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cds_service._errors import ConfigError

__all__ = [
    "REPLAY_DATABASE_NAME",
    "ConfigError",
    "IssuerConfig",
    "ServiceConfig",
    "load_config",
    "origin_of",
    "parse_config",
]

REPLAY_DATABASE_NAME: Final = "replay-cache.sqlite3"


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
    reuse_port: bool = False
    auth_required: bool = True
    issuers: tuple[IssuerConfig, ...] = field(default_factory=tuple)
    insecure_no_auth: bool = False
    allowed_servers: frozenset[str] = frozenset()  # normalised origins (origin_of)
    replay_database: Path | None = None  # None: a private in-memory cache (no issuers)


# --- values ---------------------------------------------------------------------------------

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased, the default port
    dropped; ``None`` when ``url`` has no such origin."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None \
            or parts.password is not None:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) \
        else f"{scheme}://{host}:{port}"


def _origin(value: str) -> str:
    origin = origin_of(value)
    parts = urlsplit(value)
    if origin is None or parts.path not in ("", "/") or parts.query or parts.fragment \
            or "?" in value or "#" in value:
        raise ValueError(f"not an origin (scheme://host[:port], http or https, no path): "
                         f"{value[:100]!r}")
    return origin


def _absolute_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value.rstrip("/")


def _path(value: str, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir", Path("."))
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base) / p


NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=False),
                     Field(pattern=r"\S")]


# --- the file's shape -----------------------------------------------------------------------

class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _ServiceTable(_Table):
    base_url: NonEmpty
    database: NonEmpty | None = None
    knowledge_base: NonEmpty | None = None
    max_body_bytes: int = Field(1_048_576, gt=0)
    fhir_timeout_seconds: float = Field(3.0, gt=0)
    fetch_budget_seconds: float = Field(4.0, gt=0)
    max_pages: int = Field(10, gt=0)
    cors_origins: list[NonEmpty] = []
    reload_check_seconds: float = Field(0.0, ge=0, le=86_400)
    engine_cache_size: int = Field(512, ge=0, le=1_000_000)
    balance_connections: bool = True
    reuse_port: bool = False

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _absolute_http_url(v)

    @field_validator("knowledge_base")
    @classmethod
    def _kb(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        p = _path(v, info)
        if not p.is_dir():
            raise ValueError(f"not a directory: {p}")
        return str(p)


class _IssuerTable(_Table):
    iss: NonEmpty
    jwks_url: NonEmpty | None = None
    jwks_file: NonEmpty | None = None
    tenants: list[NonEmpty] = []

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _absolute_http_url(v)

    @field_validator("jwks_file")
    @classmethod
    def _file(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        p = _path(v, info)
        if not p.is_file():
            raise ValueError(f"file not found: {p}")
        return str(p)

    @model_validator(mode="after")
    def _one_key_set(self) -> _IssuerTable:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"issuer {self.iss}: give exactly one of jwks_url or jwks_file")
        return self


class _AuthTable(_Table):
    required: bool = True
    replay_database: NonEmpty | None = None
    issuers: list[_IssuerTable] = []

    @field_validator("replay_database")
    @classmethod
    def _replay(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else str(_path(v, info))

    @field_validator("issuers")
    @classmethod
    def _unique(cls, v: list[_IssuerTable]) -> list[_IssuerTable]:
        seen: set[str] = set()
        for t in v:
            if t.iss in seen:
                raise ValueError(f"issuer {t.iss} is listed twice")
            seen.add(t.iss)
        return v


class _FhirTable(_Table):
    allowed_servers: list[Annotated[str, AfterValidator(_origin)]] = []


class _ConfigFile(_Table):
    service: _ServiceTable
    auth: _AuthTable = _AuthTable()
    fhir: _FhirTable = _FhirTable()


# --- errors with the key's path -------------------------------------------------------------

def _where(loc: tuple[int | str, ...]) -> str:
    """``("fhir", "allowed_servers", 1)`` -> ``[fhir] allowed_servers[1]``;
    ``("auth", "issuers", 0, "iss")`` -> ``[[auth.issuers]] #1 iss``."""
    if not loc:
        return "the top level"
    head, rest = str(loc[0]), list(loc[1:])
    if head == "auth" and rest[:1] == ["issuers"] and len(rest) >= 2 \
            and isinstance(rest[1], int):
        text = f"[[auth.issuers]] #{rest[1] + 1}"
        rest = rest[2:]
    elif not rest and head not in ("service", "auth", "fhir"):
        return head  # a key at the top level
    else:
        text = f"[{head}]"
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else f" {part}"
    return text


_MESSAGES: Final = {
    "extra_forbidden": "unknown key",
    "missing": "is required",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a table",
    "string_pattern_mismatch": "must not be empty",
    "string_too_short": "must not be empty",
}


def _message(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"must be a number from {_BOUNDS.get(err['loc'][-1], ctx)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])


_BOUNDS: Final = {"engine_cache_size": "0 (off) to 1000000",
                  "reload_check_seconds": "0 (off) to 86400"}


def _config_error(e: ValidationError) -> ConfigError:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":  # name the table the unknown key is in
            lines.append(f"unknown key in {_where(loc[:-1])}: {loc[-1]}")
            continue
        lines.append(f"{_where(loc)}: {_message(err)}")
    return ConfigError("; ".join(lines))


# --- building the service's configuration ----------------------------------------------------

def _replay_default(database: str | None, base_dir: Path) -> Path:
    """Next to the feedback database file when there is one, else next to the config."""
    if database and database.startswith("sqlite:///") \
            and database[len("sqlite:///"):] not in ("", ":memory:"):
        return Path(database[len("sqlite:///"):]).parent / REPLAY_DATABASE_NAME
    return base_dir / REPLAY_DATABASE_NAME


def parse_config(doc: dict[str, Any], *, base_dir: Path = Path("."),
                 insecure_no_auth: bool = False) -> ServiceConfig:
    """Check a parsed TOML document and build the configuration (``ConfigError`` if bad)."""
    if not isinstance(doc.get("service"), dict):
        unknown = sorted(set(doc) - {"service", "auth", "fhir"})
        if unknown:
            raise ConfigError(f"unknown key in the top level: {', '.join(unknown)}")
        raise ConfigError("missing [service] table (it needs at least base_url)")
    try:
        raw = _ConfigFile.model_validate(doc, context={"base_dir": base_dir})
    except ValidationError as e:
        raise _config_error(e) from None
    auth = raw.auth
    if not auth.required and not insecure_no_auth:
        raise ConfigError("[auth] required = false is only allowed with --insecure-no-auth")
    if auth.required and not insecure_no_auth and not auth.issuers:
        raise ConfigError("[auth] required = true needs at least one [[auth.issuers]]")
    issuers = tuple(
        IssuerConfig(t.iss, t.jwks_url, Path(t.jwks_file) if t.jwks_file else None,
                     tuple(t.tenants)) for t in auth.issuers)
    s = raw.service
    replay = (Path(auth.replay_database) if auth.replay_database
              else _replay_default(s.database, base_dir) if issuers else None)
    return ServiceConfig(
        base_url=s.base_url,
        database=s.database,
        knowledge_base=Path(s.knowledge_base) if s.knowledge_base else None,
        max_body_bytes=s.max_body_bytes,
        fhir_timeout_seconds=float(s.fhir_timeout_seconds),
        fetch_budget_seconds=float(s.fetch_budget_seconds),
        max_pages=s.max_pages,
        cors_origins=tuple(s.cors_origins),
        reload_check_seconds=float(s.reload_check_seconds),
        engine_cache_size=s.engine_cache_size,
        balance_connections=s.balance_connections,
        reuse_port=s.reuse_port,
        auth_required=auth.required and not insecure_no_auth,
        issuers=issuers,
        insecure_no_auth=insecure_no_auth,
        allowed_servers=frozenset(raw.fhir.allowed_servers),
        replay_database=replay,
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
