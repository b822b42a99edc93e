"""The ``movement-cds`` command line.

Exit status: 0 success; 2 unusable input (the OperationOutcome is printed on standard output,
a one-line reason on standard error); 1 any other failure (knowledge base invalid, engine
error), with a one-line reason and never a traceback.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cds import EngineError, KnowledgeBaseError, MovementCDSError, load_knowledge_base
from fhir_adapters import InvalidBundleError, export_terminology
from knowledge_base import bundled_path
from movement_cds._cli_common import (
    KbOption,
    app,
    fail,
    fail_input,
    kb_app,
    read_input,
    terminology_app,
)


@app.command()
def evaluate(
    file: Annotated[str, typer.Argument(help="FHIR R4 Bundle (JSON); '-' for standard input.")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Evaluation instant, ISO 8601 with a time zone "
                     "(default: now). Ages and 'how old is this finding' use it."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the output Bundle here, not stdout.")
    ] = None,
    kb: KbOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No summary on stderr.")] = False,
    strict_fhir: Annotated[
        bool,
        typer.Option("--strict-fhir", help="Also validate every input resource with the "
                     "fhir.resources R4B models, including parts the rules never read."),
    ] = False,
) -> None:
    """Evaluate one patient: output Bundle as JSON on stdout (or --out), summary on stderr."""
    from movement_cds._api import DecisionSupport

    try:
        support = DecisionSupport(kb, strict_fhir=strict_fhir)
        result = support.evaluate(read_input(file), as_of=as_of)
    except InvalidBundleError as e:
        fail_input(e)
    except KnowledgeBaseError as e:
        fail(str(e))
    except EngineError as e:
        fail(f"rule engine failed; no advice returned: {e}")
    text = result.to_json()
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n", encoding="utf-8")
        except OSError as e:
            fail(f"cannot write {out}: {e.strerror or e}")
    if not quiet:
        sys.stderr.write(result.summary)
        if out is not None:
            sys.stderr.write(f"\nFHIR output written to {out}\n")


@terminology_app.command("export")
def terminology_export(
    directory: Annotated[Path, typer.Argument(help="Directory to write CodeSystem-*.json into.")],
    kb: KbOption = None,
) -> None:
    """Write the project's CodeSystems (screen, exercise, alert, plan-change) as FHIR R4
    JSON."""
    try:
        base = load_knowledge_base(kb or bundled_path())
        paths = export_terminology(base, directory)
    except KnowledgeBaseError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {directory}: {e.strerror or e}")
    for p in paths:
        typer.echo(str(p))


@kb_app.command("schema")
def kb_schema(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON Schemas into this directory.")
    ] = None,
) -> None:
    """Export the knowledge-base file format as JSON Schema (for editors)."""
    from cds._schema_export import schemas

    docs = schemas()
    if out is None:
        sys.stdout.write(json.dumps(docs, indent=2, sort_keys=True) + "\n")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in docs.items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        typer.echo(str(path))


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
    """uvicorn's own logging set-up, plus the service's loggers (``movement_cds``,
    ``fhir_adapters``) on the same handler: otherwise their lines would go nowhere."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    cfg: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["service"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
    }
    cfg["handlers"]["service"] = {"formatter": "service", "class": "logging.StreamHandler",
                                  "stream": "ext://sys.stderr"}
    for name in ("movement_cds", "fhir_adapters"):
        cfg["loggers"][name] = {"handlers": ["service"], "level": level.upper(),
                                "propagate": False}
    return cfg


@app.command()
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

    try:
        import uvicorn

        from fhir_adapters._balancer import BALANCED_LOOP
        from fhir_adapters._balancer import supported as balancer_supported
        from fhir_adapters._hooks_app import (
            APP_FACTORY,
            CONFIG_ENV,
            INSECURE_ENV,
            SCENARIOS_CHECKED_ENV,
            StartupError,
            check_auth,
            create_app,
            load_engine,
        )
        from fhir_adapters._hooks_config import ConfigError, load_config, parse_config
        from fhir_adapters._http_protocol import configure
    except ImportError as e:
        fail(f"the service needs the 'service' extra (pip install 'movement-cds[service]'): {e}")
    try:
        if config is not None:
            cfg = load_config(config, insecure_no_auth=insecure_no_auth)
        elif insecure_no_auth:
            cfg = parse_config({"service": {"base_url": f"http://{host}:{port}"},
                                "auth": {"required": False}}, insecure_no_auth=True)
        else:
            fail("--config FILE is required (or --insecure-no-auth for a local demo)")
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
        _serve_one(configure(uvicorn.Config(
            application, host=host, port=port, log_level=log_level.value,
            log_config=_log_config(log_level.value)), read_timeout))
        return
    if config is None:
        fail("--workers above 1 needs --config FILE")
    os.environ[CONFIG_ENV] = str(config.resolve())
    os.environ[INSECURE_ENV] = "1" if insecure_no_auth else "0"
    os.environ[SCENARIOS_CHECKED_ENV] = engine.release  # workers skip what was checked here
    options: dict[str, Any] = {
        "factory": True, "host": host, "port": port, "workers": workers,
        "log_level": log_level.value, "timeout_worker_healthcheck": 60,
        "log_config": _log_config(log_level.value)}
    if cfg.balance_connections and balancer_supported():
        _serve_balanced(configure(uvicorn.Config(APP_FACTORY, loop=BALANCED_LOOP, **options),
                                  read_timeout))
    else:  # uvicorn's shared accept
        _serve_shared(configure(uvicorn.Config(APP_FACTORY, **options), read_timeout))


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


def _serve_shared(config: Any) -> None:
    """uvicorn's supervisor with its shared accept (what ``uvicorn.run`` does for workers)."""
    from uvicorn.supervisors import Multiprocess

    listener = config.bind_socket()
    try:
        Multiprocess(config, sockets=[listener]).run()
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


def _serve_balanced(config: Any) -> None:
    """uvicorn's supervisor (worker restarts, SIGHUP, SIGTTIN/SIGTTOU), with each new
    connection handed to the least-loaded worker (fhir_adapters._balancer) instead of the
    workers racing to accept on a shared socket."""
    import os

    from uvicorn.supervisors import Multiprocess

    from fhir_adapters._balancer import BALANCER_ENV, ConnectionBalancer

    listener = config.bind_socket()
    with ConnectionBalancer(listener, config.backlog) as balancer:
        os.environ[BALANCER_ENV] = balancer.address  # the workers connect to it
        try:
            Multiprocess(config, sockets=[listener]).run()
        except KeyboardInterrupt:
            pass
        finally:
            listener.close()


# --- feedback (CDS Hooks C16): what clinicians accepted and overrode, per rule ---------------

feedback_app = typer.Typer(no_args_is_help=True, help="CDS Hooks card feedback.")
app.add_typer(feedback_app, name="feedback")


def _reason_text(system: str | None, code: str | None, display: str | None) -> str:
    if code is None:
        return "(no coded reason)"
    return f"{display} [{code}]" if display else code


@feedback_app.command("report")
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
    from fhir_adapters._feedback_store import open_store

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


# --- command modules: each registers its commands on ``app`` / ``kb_app`` when imported -------
# One line per module; keep them sorted.
from movement_cds import _cli_registry  # noqa: E402,F401


def main(argv: list[str] | None = None) -> Any:
    """Entry point: never a traceback, whatever goes wrong."""
    try:
        return app(args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except MovementCDSError as e:
        typer.echo(f"movement-cds: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # a bug: say so in one line, not a traceback
        typer.echo(f"movement-cds: internal error ({type(e).__name__}); please report it",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
