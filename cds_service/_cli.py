"""The service's ``movement-cds`` commands: ``serve``, ``feedback report``, ``audit show``,
``audit replay`` and ``db upgrade``.

``movement_cds._cli`` finds ``register`` through the ``movement_cds.cli`` entry-point group
(pyproject.toml) and calls it with its Typer app: the facade never imports this package.
This module imports only the base install at module level, so on an install without the
``service`` extra every library command still runs and ``serve`` says in one line that the
extra is needed.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer

if TYPE_CHECKING:
    from cds_service._config import ServiceConfig

__all__ = ["register"]


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on standard error and an exit status, never a traceback."""
    typer.echo(f"movement-cds: {message}", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``feedback``, ``audit`` and ``db`` to the ``movement-cds`` command
    line."""
    app.command()(serve)
    feedback_app = typer.Typer(no_args_is_help=True, help="CDS Hooks card feedback.")
    feedback_app.command("report")(feedback_report)
    app.add_typer(feedback_app, name="feedback")
    audit_app = typer.Typer(no_args_is_help=True, help="The audit trail of advice given.")
    audit_app.command("show")(audit_show)
    audit_app.command("replay")(audit_replay)
    app.add_typer(audit_app, name="audit")
    db_app = typer.Typer(no_args_is_help=True, help="The service's database.")
    db_app.command("upgrade")(db_upgrade)
    app.add_typer(db_app, name="db")


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


_NO_AUTH_BANNER = """\
************************************************************************************
WARNING: AUTHENTICATION IS OFF (--insecure-no-auth). Any caller can read advice and
post feedback. For a local demo or a test only; never expose this service to a network.
************************************************************************************"""


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's own logging set-up, plus the service's and the library's loggers
    (``movement_cds``, ``cds_service``, ``fhir_adapters``) on the same handler: otherwise their
    lines would go nowhere."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    cfg: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    # the handout pages' ids are capabilities: the access log shows /handouts/<id>
    cfg.setdefault("filters", {})["handout_ids"] = {"()": "cds_service._handouts.RedactHandoutIds"}
    cfg["handlers"]["access"]["filters"] = ["handout_ids"]
    cfg["formatters"]["service"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
    }
    cfg["handlers"]["service"] = {"formatter": "service", "class": "logging.StreamHandler",
                                  "stream": "ext://sys.stderr"}
    for name in ("movement_cds", "cds_service", "fhir_adapters"):
        cfg["loggers"][name] = {"handlers": ["service"], "level": level.upper(),
                                "propagate": False}
    # the call log ([logging] call_log): bare JSON lines on standard output, whatever the
    # level of the other logs
    cfg["formatters"]["calls"] = {"format": "%(message)s"}
    cfg["handlers"]["calls"] = {"formatter": "calls", "class": "logging.StreamHandler",
                                "stream": "ext://sys.stdout"}
    cfg["loggers"]["movement_cds.calls"] = {"handlers": ["calls"], "level": "INFO",
                                            "propagate": False}
    return cfg


#: On SIGTERM, how long calls in flight may go on before uvicorn cancels them and the app
#: shuts down (a call stuck on a database that never answers must not hold the stop).
GRACEFUL_SHUTDOWN_SECONDS: Final = 10


def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML configuration (see docs/integrators/cds-hooks.md)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8080,
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes (one engine each).", min=1)
    ] = 1,
    insecure_no_auth: Annotated[
        bool,
        typer.Option("--insecure-no-auth", help="Do not require client JWTs (demo and tests "
                     "only); allows [auth] required = false."),
    ] = False,
    log_level: Annotated[
        LogLevel,
        typer.Option("--log-level", help="Service and access log level. Logs carry ids, "
                     "codes and counts, never patient values or tokens."),
    ] = LogLevel.info,
    read_timeout: Annotated[
        float,
        typer.Option("--read-timeout", min=0.1, help="Seconds a request (headers and body) "
                     "may take to arrive, from its first byte or the connection's opening; "
                     "then the connection is closed (408 if the headers were incomplete)."),
    ] = 10.0,
) -> None:
    """Start the CDS Hooks service under uvicorn (checks the config, the knowledge base and its
    scenario tests first; any failure stops it with a one-line reason)."""
    import os

    # never metric files left by something else: --workers N gets a fresh directory below
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        os.environ.pop(name, None)
    _require_service_extra()
    from cds_service._app import StartupError, check_auth, create_app, load_engine
    from cds_service._config import ConfigError

    try:
        cfg = _service_config(config, host, port, insecure_no_auth)
        engine = load_engine(cfg, run_scenarios=True)
        if workers == 1:
            application = create_app(cfg, engine=engine, settle=True)
        else:
            check_auth(cfg)  # before the workers start: one line, not one per worker
    except (ConfigError, StartupError) as e:
        fail(str(e))
    if not cfg.auth_required:
        typer.echo(_NO_AUTH_BANNER, err=True)
    if workers == 1:
        import uvicorn

        from cds_service._http_protocol import configure

        _serve_one(configure(uvicorn.Config(
            application, host=host, port=port, log_level=log_level.value,
            log_config=_log_config(log_level.value),
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS), read_timeout))
        return
    if config is None:
        fail("--workers above 1 needs --config FILE")
    _serve_workers(cfg, config, engine.release, host=host, port=port, workers=workers,
                   insecure_no_auth=insecure_no_auth, log_level=log_level,
                   read_timeout=read_timeout)


def _require_service_extra() -> None:
    """Stop with one line naming the extra when the service's dependencies are missing."""
    try:
        import uvicorn  # noqa: F401

        import cds_service._app
        import cds_service._balancer
        import cds_service._config
        import cds_service._http_protocol
        import cds_service._metrics
        import cds_service._reuseport  # noqa: F401
    except ImportError as e:
        fail(f"the service needs the 'service' extra (pip install 'movement-cds[service]'): {e}")


def _service_config(config: Path | None, host: str, port: int,
                    insecure_no_auth: bool) -> ServiceConfig:
    """The ``--config`` file's settings, or the local demo's (``--insecure-no-auth``
    without a file: no authentication, ``base_url`` from ``--host`` and ``--port``)."""
    from cds_service._config import load_config, parse_config

    if config is not None:
        return load_config(config, insecure_no_auth=insecure_no_auth)
    if insecure_no_auth:
        return parse_config({"service": {"base_url": f"http://{host}:{port}"},
                             "auth": {"required": False}}, insecure_no_auth=True)
    fail("--config FILE is required (or --insecure-no-auth for a local demo)")


def _serve_workers(cfg: ServiceConfig, config: Path, release: str, *, host: str, port: int,
                   workers: int, insecure_no_auth: bool, log_level: LogLevel,
                   read_timeout: float) -> None:
    """``workers`` uvicorn worker processes, each building its app from the config file
    (``app_from_env``), skipping the scenario tests of ``release`` (checked here), on the
    port shared as the config says (SO_REUSEPORT, the connection balancer or uvicorn's
    shared accept)."""
    import os

    import uvicorn

    from cds_service._app import APP_FACTORY, CONFIG_ENV, INSECURE_ENV, SCENARIOS_CHECKED_ENV
    from cds_service._balancer import BALANCED_LOOP
    from cds_service._balancer import supported as balancer_supported
    from cds_service._http_protocol import configure
    from cds_service._metrics import multiprocess_directory
    from cds_service._reuseport import REUSEPORT_LOOP
    from cds_service._reuseport import supported as reuseport_supported

    os.environ[CONFIG_ENV] = str(config.resolve())
    os.environ[INSECURE_ENV] = "1" if insecure_no_auth else "0"
    os.environ[SCENARIOS_CHECKED_ENV] = release  # workers skip what was checked here
    options: dict[str, Any] = {
        "factory": True, "host": host, "port": port, "workers": workers,
        "log_level": log_level.value, "timeout_worker_healthcheck": 60,
        "log_config": _log_config(log_level.value),
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS}
    if cfg.reuse_port and reuseport_supported():
        run, uv = _serve_reuseport, uvicorn.Config(APP_FACTORY, loop=REUSEPORT_LOOP, **options)
    elif cfg.balance_connections and balancer_supported():
        run, uv = _serve_balanced, uvicorn.Config(APP_FACTORY, loop=BALANCED_LOOP, **options)
    else:  # uvicorn's shared accept
        run, uv = _serve_shared, uvicorn.Config(APP_FACTORY, **options)
    with multiprocess_directory(cfg.metrics_enabled):  # the workers' metric files
        run(configure(uv, read_timeout))


def _serve_one(config: Any) -> None:
    """One process (what ``uvicorn.run`` does, with our ``Config``)."""
    import uvicorn

    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE


def _supervise(config: Any, listener: Any) -> None:
    """uvicorn's supervisor (worker restarts, SIGHUP, SIGTTIN/SIGTTOU) over ``listener``,
    closed on the way out; each worker that stops is marked dead for the metrics."""
    from uvicorn.supervisors import Multiprocess

    from cds_service._metrics import mark_worker_dead

    class Supervisor(Multiprocess):
        def _mark_gone(self, before: set[int | None]) -> None:
            for pid in before - {p.pid for p in self.processes}:
                if pid is not None:
                    mark_worker_dead(pid)

        def keep_subprocess_alive(self) -> None:
            before = {p.pid for p in self.processes}
            super().keep_subprocess_alive()
            self._mark_gone(before)

        def restart_all(self) -> None:
            before = {p.pid for p in self.processes}
            super().restart_all()
            self._mark_gone(before)

    try:
        Supervisor(config, sockets=[listener]).run()
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


def _serve_shared(config: Any) -> None:
    """uvicorn's shared accept (what ``uvicorn.run`` does for workers)."""
    _supervise(config, config.bind_socket())


def _serve_reuseport(config: Any) -> None:
    """Each worker listening on its own ``SO_REUSEPORT`` socket (cds_service._reuseport):
    the kernel spreads new connections over the workers."""
    from cds_service._reuseport import bind_reuseport

    _supervise(config, bind_reuseport(config.host, config.port))


def _serve_balanced(config: Any) -> None:
    """Each new connection handed to the least-loaded worker (cds_service._balancer) instead
    of the workers racing to accept on a shared socket."""
    import os

    from cds_service._balancer import BALANCER_ENV, ConnectionBalancer

    listener = config.bind_socket()
    with ConnectionBalancer(listener, config.backlog) as balancer:
        os.environ[BALANCER_ENV] = balancer.address  # the workers connect to it
        _supervise(config, listener)


# --- feedback (CDS Hooks C16): what clinicians accepted and overrode, per rule ---------------

def _reason_text(system: str | None, code: str | None, display: str | None) -> str:
    if code is None:
        return "(no coded reason)"
    return f"{display} [{code}]" if display else code


def feedback_report(
    database: Annotated[
        str, typer.Option("--database", help="Feedback store URL, e.g. "
                          "sqlite:///feedback.db or sqlite:////abs/path/feedback.db.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Override reasons shown per "
                                     "rule (text output).")] = 3,
) -> None:
    """Per rule: cards accepted, overridden, and the most frequent override reasons."""
    from cds_service._feedback_store import open_store

    try:
        store = open_store(database, create=False)
    except ValueError as e:
        fail(str(e))
    try:
        summary = store.summary_by_rule()
    finally:
        store.close()
    if as_json:
        doc = {"rules": [r.to_json() for r in summary]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if not summary:
        typer.echo("no feedback recorded")
        return
    width = max(len("rule"), *(len(r.rule_id) for r in summary))
    typer.echo(f"{'rule':<{width}}  {'accepted':>8}  {'overridden':>10}  top override reasons")
    for r in summary:
        reasons = "; ".join(
            f"{_reason_text(x.system, x.code, x.display)} x{x.count}"
            for x in r.override_reasons[:top]
        ) or "-"
        typer.echo(f"{r.rule_id:<{width}}  {r.accepted:>8}  {r.overridden:>10}  {reasons}")


# --- the audit trail and the database (docs/audit-and-database.md) ---------------------------

DatabaseOption = Annotated[
    str | None, typer.Option("--database", help="Database URL: sqlite:///path.db or "
                             "postgresql://user@host:port/db.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Take the database from this service "
                              "config's [service] database.")]


def _database_url(database: str | None, config: Path | None) -> str:
    if database:
        return database
    if config is None:
        fail("give --database URL or --config FILE")
    from cds_service._config import ConfigError, load_config

    try:
        url = load_config(config, insecure_no_auth=True).database
    except ConfigError as e:
        fail(str(e))
    if not url:
        fail(f"config {config} has no [service] database")
    return url


def _open_for_reading(url: str) -> Any:
    from cds_service._feedback_store import StoreError, open_store

    try:
        return open_store(url, create=False)
    except (ValueError, StoreError) as e:
        fail(str(e))


def audit_show(
    hook_instance: Annotated[str, typer.Argument(help="The call's hookInstance.")],
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Print the audit record of one advice call as JSON (several if the hookInstance was
    used more than once)."""
    from cds_service._audit import show

    store = _open_for_reading(_database_url(database, config))
    try:
        records = store.audit_records(hook_instance)
    finally:
        store.close()
    if not records:
        fail(f"no audit record for hookInstance {hook_instance}")
    shown: Any = [show(r) for r in records]
    sys.stdout.write(json.dumps(shown[0] if len(shown) == 1 else shown, indent=2) + "\n")


def audit_replay(
    hook_instance: Annotated[str, typer.Argument(help="The call's hookInstance.")],
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-evaluate a call's stored input with the release it was answered with, at its
    recorded instant: exit 0 if the answer is byte-identical, 1 with a diff if not."""
    from cds_service._audit import AuditError, replay
    from movement_cds import __version__

    store = _open_for_reading(_database_url(database, config))
    try:
        results = replay(store, hook_instance, __version__)
    except AuditError as e:
        fail(str(e))
    finally:
        store.close()
    for r in results:
        rec = r.record
        typer.echo(f"hookInstance {rec['hook_instance']} ({rec['service_id']}, recorded "
                   f"{rec['recorded_at']}): release {rec['release']} "
                   f"({rec['kb_digest'][:12]}), as of {rec['as_of']}")
        if rec["software"] != r.software_now:
            typer.echo(f"  note: answered by movement-cds {rec['software']}, replayed by "
                       f"{r.software_now}")
        if r.identical:
            typer.echo(f"  byte-identical: {len(r.output)} bytes, sha256 "
                       f"{rec['output_digest']}")
        else:
            typer.echo("  DIFFERENT from the recorded answer:")
            typer.echo(r.diff.rstrip("\n"))
    if not all(r.identical for r in results):
        raise typer.Exit(1)


def db_upgrade(
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Bring the database (SQLite or PostgreSQL) to the schema this version uses (Alembic
    migrations shipped in the package). Safe to run again; one host at a time migrates."""
    from cds_service._feedback_store import StoreError

    try:
        from cds_service._db import upgrade
    except ImportError as e:
        fail(f"db upgrade needs the 'service' extra (pip install 'movement-cds[service]'): "
             f"{e}")
    url = _database_url(database, config)
    try:
        before, after = upgrade(url)
    except (ValueError, StoreError) as e:
        fail(str(e))
    if before == after:
        typer.echo(f"database schema already at revision {after}")
    else:
        typer.echo(f"database schema upgraded: {before or 'empty'} -> {after}")
