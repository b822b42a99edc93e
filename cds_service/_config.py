"""Configuration of the CDS Hooks service (``movement-cds serve --config FILE``).

The file is TOML, checked by a pydantic model (``extra="forbid"``: a misspelt key is an
error, never a silent default; strict types: ``"yes"`` is not a boolean). Every error names
the key's path, e.g. ``[fhir] allowed_servers[1]: not an origin (scheme://host[:port])``.
Every key (``docs/integrators/cds-hooks.md`` has the annotated example)::

    [service]
    base_url = "https://cds.example.org"   # required: the public base URL the EHR calls;
                                           # token audiences are base_url + the request path
    database = "sqlite:////var/lib/movement-cds/feedback.db"  # feedback store and audit
                                           # trail (optional; four slashes: an absolute
                                           # path); several hosts share one PostgreSQL:
                                           # "postgresql://cds@db.example.org/movement_cds"
    spill_file = "/var/lib/movement-cds/spill.jsonl"  # writes the database could not take
                                           # yet (default: beside an SQLite file, else next
                                           # to this file)
    drain_seconds = 60                     # on SIGTERM: how long queued writes are retried
                                           # against a busy database before they are
                                           # spilled (default 60). A stop takes at most
                                           # 10 s (calls in flight) + this + 5 s: give
                                           # your supervisor's stop timeout more
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

    [handouts]                             # the patient handout page the plan card links to
    enabled = true                         # default true
    ttl_seconds = 604800                   # how long a page is kept (default 7 days;
                                           # 1 to 2592000)
    database = "handouts.sqlite3"          # shared by the workers; default: next to the
                                           # feedback database, else next to this file

    [fhir]
    allowed_servers = ["https://fhir.ehr.example.org"]  # the only fhirServer origins ever
                                           # contacted; default none (prefetch only)

    [auth]
    required = true                        # false only together with --insecure-no-auth
    replay_database = "replay-cache.sqlite3"  # used-token (jti) cache shared by the workers;
                                           # default: the PostgreSQL database when that is
                                           # the [service] database (shared by the hosts),
                                           # next to an SQLite database, else next to this
                                           # file; a postgresql:// URL is allowed too

    [audit]                                # every advice call (docs/audit-and-database.md)
    store_inputs = true                    # keep the canonical input and the response
                                           # (replayable); false: their digests only
    required = false                       # true: a call whose audit record cannot be
                                           # written answers 500 (no advice); false: the
                                           # record is queued and retried, never lost

    [[auth.issuers]]                       # one table per EHR allowed to call
    iss = "https://ehr.example.org"        # the JWT "iss" value, exactly
    jwks_url = "https://ehr.example.org/.well-known/jwks.json"   # or:
    # jwks_file = "/etc/movement-cds/ehr-jwks.json"             # a static JWK Set
    tenants = ["hospital-a"]               # allowed "tenant" claims (optional)

    [metrics]                              # GET /metrics (docs/operations.md)
    enabled = true                         # false: no /metrics (404), nothing recorded
    allow_from = ["127.0.0.1", "::1"]      # client addresses or networks (CIDR) that may
                                           # read it; default loopback only

    [logging]
    call_log = false                       # true: one JSON line per call on standard output

Relative paths (``knowledge_base``, ``jwks_file``, ``replay_database``, ``spill_file``) are
relative to the config file.
"""

from __future__ import annotations

import ipaddress
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
    "HANDOUT_DATABASE_NAME",
    "REPLAY_DATABASE_NAME",
    "SPILL_FILE_NAME",
    "ConfigError",
    "IssuerConfig",
    "ServiceConfig",
    "load_config",
    "origin_of",
    "parse_config",
]

REPLAY_DATABASE_NAME: Final = "replay-cache.sqlite3"
HANDOUT_DATABASE_NAME: Final = "handouts.sqlite3"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: Final[tuple[Network, ...]] = (ipaddress.ip_network("127.0.0.0/8"),
                                        ipaddress.ip_network("::1/128"))
SPILL_FILE_NAME: Final = "movement-cds-spill.jsonl"


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
    # None: a private in-memory cache (no issuers); a str: a postgresql:// URL
    replay_database: Path | str | None = None
    spill_file: Path | None = None  # None: beside the SQLite database file
    drain_seconds: float = 60.0  # SIGTERM: retries of queued writes, then spilled
    audit_store_inputs: bool = True
    audit_required: bool = False
    handouts_enabled: bool = True
    handout_ttl_seconds: float = 604_800.0
    handout_database: Path | None = None  # None: in memory (one process only)
    metrics_enabled: bool = True
    metrics_allow_from: tuple[Network, ...] = LOOPBACK
    call_log: bool = False


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


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as e:
        raise ValueError(f"not an IP address or network (CIDR): {value[:60]!r} ({e})"
                         ) from None


def _path(value: str, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir", Path("."))
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base) / p


def _existing(value: str | None, info: ValidationInfo, *, directory: bool) -> str | None:
    """``value`` as a path (``_path``) that must exist: a directory, else a file."""
    if value is None:
        return None
    p = _path(value, info)
    if directory and not p.is_dir():
        raise ValueError(f"not a directory: {p}")
    if not directory and not p.is_file():
        raise ValueError(f"file not found: {p}")
    return str(p)


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
    spill_file: NonEmpty | None = None
    drain_seconds: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False)

    @field_validator("spill_file")
    @classmethod
    def _spill(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else str(_path(v, info))

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _absolute_http_url(v)

    @field_validator("knowledge_base")
    @classmethod
    def _kb(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _existing(v, info, directory=True)


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
        return _existing(v, info, directory=False)

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
        if v is None or _is_postgresql(v):
            return v
        return str(_path(v, info))

    @field_validator("issuers")
    @classmethod
    def _unique(cls, v: list[_IssuerTable]) -> list[_IssuerTable]:
        seen: set[str] = set()
        for t in v:
            if t.iss in seen:
                raise ValueError(f"issuer {t.iss} is listed twice")
            seen.add(t.iss)
        return v


class _HandoutsTable(_Table):
    enabled: bool = True
    ttl_seconds: Annotated[float, Field(ge=1, le=2_592_000)] = 604_800.0
    database: NonEmpty | None = None

    @field_validator("database")
    @classmethod
    def _db(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else str(_path(v, info))


class _FhirTable(_Table):
    allowed_servers: list[Annotated[str, AfterValidator(_origin)]] = []


class _MetricsTable(_Table):
    enabled: bool = True
    allow_from: list[Annotated[str, AfterValidator(_network)]] = [str(n) for n in LOOPBACK]


class _LoggingTable(_Table):
    call_log: bool = False


class _AuditTable(_Table):
    store_inputs: bool = True
    required: bool = False


class _ConfigFile(_Table):
    service: _ServiceTable
    auth: _AuthTable = _AuthTable()
    fhir: _FhirTable = _FhirTable()
    handouts: _HandoutsTable = _HandoutsTable()
    metrics: _MetricsTable = _MetricsTable()
    logging: _LoggingTable = _LoggingTable()
    audit: _AuditTable = _AuditTable()


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
    elif not rest and head not in _TABLES:
        return head  # a key at the top level
    else:
        text = f"[{head}]"
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else f" {part}"
    return text


_TABLES: Final = ("service", "auth", "fhir", "handouts", "metrics", "logging", "audit")

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


_BOUNDS: Final = {"drain_seconds": "0 (not included) to 3600",
                  "engine_cache_size": "0 (off) to 1000000",
                  "reload_check_seconds": "0 (off) to 86400",
                  "ttl_seconds": "1 to 2592000"}


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

def _is_postgresql(url: str) -> bool:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+")


def _beside_database(database: str | None, base_dir: Path, name: str) -> Path:
    """Next to the feedback database file when there is one, else next to the config."""
    if database and database.startswith("sqlite:///") \
            and database[len("sqlite:///"):] not in ("", ":memory:"):
        return Path(database[len("sqlite:///"):]).parent / name
    return base_dir / name


def _replay_default(database: str | None, base_dir: Path) -> Path | str:
    """The PostgreSQL database itself (shared by every host), else a file next to the
    feedback database file when there is one, else next to the config."""
    if database and _is_postgresql(database):
        return database
    return _beside_database(database, base_dir, REPLAY_DATABASE_NAME)


def _handout_database(given: str | None, database: str | None, base_dir: Path,
                      from_file: bool) -> Path | None:
    if given:
        return Path(given)
    beside = _beside_database(database, base_dir, HANDOUT_DATABASE_NAME)
    return beside if from_file or beside.parent != base_dir else None


def parse_config(doc: dict[str, Any], *, base_dir: Path | None = None,
                 insecure_no_auth: bool = False) -> ServiceConfig:
    """Check a parsed TOML document and build the configuration (``ConfigError`` if bad).
    ``base_dir``: the config file's folder (relative paths; default: the working directory).
    Without a config file and a feedback database, handout pages are kept in memory (one
    process)."""
    from_file = base_dir is not None
    base_dir = base_dir if base_dir is not None else Path(".")
    if not isinstance(doc.get("service"), dict):
        unknown = sorted(set(doc) - set(_TABLES))
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
    if raw.audit.required and not s.database:
        raise ConfigError("[audit] required = true needs a [service] database")
    replay: Path | str | None = (
        auth.replay_database if auth.replay_database and _is_postgresql(auth.replay_database)
        else Path(auth.replay_database) if auth.replay_database
        else _replay_default(s.database, base_dir) if issuers else None)
    spill = (Path(s.spill_file) if s.spill_file
             else base_dir / SPILL_FILE_NAME if s.database and _is_postgresql(s.database)
             else None)
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
        handouts_enabled=raw.handouts.enabled,
        handout_ttl_seconds=float(raw.handouts.ttl_seconds),
        handout_database=_handout_database(raw.handouts.database, s.database, base_dir,
                                           from_file),
        metrics_enabled=raw.metrics.enabled,
        metrics_allow_from=tuple(ipaddress.ip_network(n) for n in raw.metrics.allow_from),
        call_log=raw.logging.call_log,
        spill_file=spill,
        drain_seconds=float(s.drain_seconds),
        audit_store_inputs=raw.audit.store_inputs,
        audit_required=raw.audit.required,
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
