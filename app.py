"""GCP, the Gift Certificate Processing service: the web app factory and the operator CLI.

    python app.py migrate                      apply pending database migrations
    python app.py topics                       create the contract's Kafka topics (idempotent)
    python app.py token --client ID --scope "S1 S2" [--channel POS]
    python app.py run                          what `make run` does: servers, migrate, topics, Procfile
    python app.py dlq list | dlq replay [--id ...]
    python app.py rotate-cvc-key               re-seal CVCs made with a retired key
    python app.py verify [--stream]            check the contract's invariants; exit 1 on a violation

Gunicorn serves ``app:create_app()``.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import Flask, send_from_directory

import config
from config import get_settings

log = logging.getLogger("gcp.app")


# ---- web app ---------------------------------------------------------------------------------

def create_app(settings: config.Settings | None = None) -> Flask:
    """Build the Flask app. No I/O here: connections open on first use."""
    from api import middleware
    from models.store.db import init_db
    from observability import setup_logging

    settings = config.require_safe_settings(settings or get_settings())
    setup_logging()
    app = _flask_app(settings)
    if settings.database_url:
        init_db(settings.database_url)
    _add_api(app, settings)
    middleware.add_rate_limit(app, settings)
    middleware.add_request_hooks(app)
    return app


def _flask_app(settings: config.Settings) -> Flask:
    """The Flask app and its configuration (the OpenAPI document's, the largest body)."""
    app = Flask("gcp")
    app.config.update(
        API_TITLE="GCP: Gift Certificate Processing",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
        API_SPEC_OPTIONS={
            "info": {"description": "Synchronous channel API of the gift certificate service. "
                                    "See the integration contract for the Kafka side."},
            "components": {"securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "METRICS_TOKEN, when the deployment sets one"}}},
            "security": [{"bearerAuth": []}],
        },
    )
    return app


def _add_api(app: Flask, settings: config.Settings) -> None:
    """flask-smorest with the contract's error model, every blueprint, and the docs' assets."""
    from flask_smorest import Api

    import api as api_package
    from api import batches, errors
    from api.fields import empty_means_absent

    class GcpApi(Api):
        ERROR_SCHEMA = errors.ErrorSchema

        def handle_http_exception(self, error):
            return errors.handle_http_exception(error)

    api = GcpApi(app)
    api.ma_plugin.converter.add_parameter_attribute_function(empty_means_absent)
    errors.register(app)
    api_package.register_blueprints(app, api)
    batches.document(api.spec, settings)
    swagger_assets = Path(__import__("flask_swagger_ui").__file__).parent / "dist"

    @app.get("/docs/assets/<path:filename>")
    def swagger_asset(filename):
        return send_from_directory(swagger_assets, filename, max_age=3600)


# ---- operator CLI ------------------------------------------------------------------------------

@click.group()
def cli():
    """GCP operator commands."""
    config.load_stack_env()
    from observability import setup_logging

    setup_logging(json_format=False)


@cli.command()
def migrate():
    """Apply pending database migrations (safe to run twice)."""
    from models.store.db import init_db
    from models.store.db import migrate as run_migrations

    url = get_settings().database_url
    if not url:
        raise click.ClickException("DATABASE_URL is not set (or run `make run` for the embedded stack)")
    init_db(url)
    applied = run_migrations()
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


@cli.command()
def topics():
    """Create the contract's Kafka topics that are missing (existing ones are kept as they are)."""
    from workers.kafka import ensure_topics

    for name, (partitions, created) in ensure_topics().items():
        click.echo(f"{name}: {partitions} partitions{' (created)' if created else ''}")


@cli.command()
@click.option("--client", "client_id", required=True, help="client id (the token's sub)")
@click.option("--scope", required=True, help='space-separated scopes, e.g. "certificates:read"')
@click.option("--channel", type=click.Choice(["ONLINE_STORE", "POS"]), default=None)
@click.option("--ttl", default=3600 * 24, show_default=True, help="lifetime in seconds")
def token(client_id, scope, channel, ttl):
    """Print a signed development token (HS256 with JWT_SECRET)."""
    from api.auth import SCOPES, issue_token

    unknown = [s for s in scope.split() if s not in SCOPES]
    if unknown:
        raise click.ClickException(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    click.echo(issue_token(client_id, scope, channel, ttl))


@cli.command("rotate-cvc-key")
@click.option("--batch", default=1000, show_default=True, help="rows re-sealed per transaction")
def rotate_cvc_key(batch):
    """Re-seal stored CVCs made with a retired key (CVC_OLD_KEYS) with CVC_ENCRYPTION_KEY."""
    from models.service.rotation import rotate_cvc_keys
    from models.store.db import init_db

    config.require_safe_settings()
    init_db(get_settings().database_url)
    result = rotate_cvc_keys(batch)
    click.echo(f"re-sealed with key {result.key_id}: {result.resealed} rows")
    if result.hash_only:
        click.echo(f"{result.hash_only} rows keep only a hash made with an older key (a CVC that "
                   "was sent, or a printed card's): they are re-sealed at their next correct CVC; "
                   "keep their keys in CVC_OLD_KEYS until then")
    if result.unreadable:
        raise click.ClickException(f"{result.unreadable} encrypted copies fit no configured key")


@cli.command()
@click.option("--stream", is_flag=True, help="also read GiftCertificates.Stream from its start")
@click.option("--grace-ms", default=10_000, show_default=True,
              help="slack beyond SCHEDULER_INTERVAL_MS and INBOX_SWEEP_AFTER_MS")
def verify(stream, grace_ms):
    """Recompute the contract's invariants; print each violation (rule, certificate or order,
    figures) and exit 1 if there is any (workers/verify/ lists the rules)."""
    from workers.verify import summary
    from workers.verify import verify as run_verify

    if not get_settings().database_url:
        raise click.ClickException("DATABASE_URL is not set (or run `make run` for the embedded stack)")
    violations = run_verify(stream=stream, grace_ms=grace_ms)
    for v in violations:
        click.echo(str(v))
    if violations:
        click.echo(summary(violations), err=True)
        sys.exit(1)
    click.echo(summary(violations))


@cli.group()
def dlq():
    """Inspect and replay GiftCertificates.DLQ."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True)
def dlq_list(limit):
    """Show what is in the DLQ and why."""
    from workers import dlq as dlq_tools

    dlq_tools.list_command(limit)


@dlq.command("replay")
@click.option("--id", "ids", multiple=True, help="DLQ entry id(s) to replay (default: all)")
def dlq_replay(ids):
    """Send DLQ messages back through the pump once their cause is fixed."""
    from workers import dlq as dlq_tools

    dlq_tools.replay_command(list(ids))


@cli.command()
@click.option("--no-procs", is_flag=True, help="start the servers and prepare, but no Procfile processes")
def run(no_procs):
    """Start everything in the foreground until Ctrl-C (what `make run` does)."""
    from devstack import EmbeddedStack, StackError, port_in_use

    settings = get_settings()
    stack = None
    env = dict(os.environ)
    if settings.embedded:
        stack = EmbeddedStack(config.LOCAL_DIR)
        click.echo("No DATABASE_URL / REDIS_URL / KAFKA_BOOTSTRAP_SERVERS: starting embedded servers "
                   f"under {config.LOCAL_DIR} ...")
        try:
            env.update(stack.start())
        except StackError as exc:
            raise click.ClickException(str(exc))
        (config.LOCAL_DIR / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in stack.env().items()))
    elif not (settings.database_url and settings.redis_url and settings.kafka_bootstrap_servers):
        raise click.ClickException("set all three of DATABASE_URL, REDIS_URL, KAFKA_BOOTSTRAP_SERVERS, or none")
    else:
        problems = config.check_settings(settings)
        if problems:
            raise click.ClickException("refusing to start: " + "; ".join(problems))
    if stack is not None:  # the embedded default is development, also for the processes
        env["GCP_ENV"] = "development"
    os.environ.update(env)
    config.reset_settings()
    settings = get_settings()
    try:
        if port_in_use(settings.port, "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host):
            raise click.ClickException(f"port {settings.port} is already in use: stop what uses it "
                                       f"or set PORT to a free one (e.g. PORT=8081 make run)")
        _prepare(stack is not None)
        click.echo(f"GCP is starting on http://127.0.0.1:{settings.port}  (docs: /docs, "
                   f"ready: /health/ready)\n  DATABASE_URL={config.redact_url(settings.database_url)}\n"
                   f"  REDIS_URL={config.redact_url(settings.redis_url)}\n"
                   f"  KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}")
        if not no_procs:
            rc = _run_procfile(env, settings)
            if rc:  # a process died on its own: say so to whoever started us
                raise click.ClickException(f"a Procfile process exited (honcho rc={rc}); see its log above")
    finally:
        if stack is not None:
            click.echo("stopping embedded servers ...")
            stack.stop()
            (config.LOCAL_DIR / "stack.env").unlink(missing_ok=True)


def _prepare(embedded: bool) -> None:
    from models.store.db import init_db
    from models.store.db import migrate as run_migrations
    from workers.kafka import ensure_topics

    init_db(get_settings().database_url)
    applied = run_migrations()
    if applied:
        click.echo(f"migrations applied: {', '.join(applied)}")
    ensure_topics()
    if embedded:
        seeded = seed_demo_batch()
        if seeded:
            click.echo(f"empty database: loaded demo batch with {seeded} certificates")


def seed_demo_batch() -> int:
    """On an empty database, load a small demo pool so the service is usable at once."""
    import secrets
    from decimal import Decimal

    from models.domain import commands
    from models.service import messagebus
    from models.store import queries
    from models.store.db import db

    with db.connection_context():
        if queries.any_certificate():
            return 0
        items = []
        for nominal, count in (("500.00", 50), ("1000.00", 100), ("1500.00", 50), (None, 50)):
            for _ in range(count):
                items.append({"code": "DEMO" + "".join(secrets.choice("0123456789") for _ in range(12)),
                              "nominal": Decimal(nominal) if nominal else None})
        result = messagebus.handle(commands.LoadBatch("demo-1", "ELECTRONIC", get_settings().default_currency,
                                          tuple(items)), commands.Context(actor="demo-seed"))
        return result["accepted"]


def _run_procfile(env: dict, settings) -> int:
    """Run the Procfile under honcho until Ctrl-C; 0 when stopped by us, else honcho's code."""
    prom = config.LOCAL_DIR / "prometheus"
    if prom.exists():
        for f in prom.glob("*.db"):
            f.unlink()
    prom.mkdir(parents=True, exist_ok=True)
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(prom), "PYTHONUNBUFFERED": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
           "HOST": os.environ.get("HOST", "127.0.0.1")}
    honcho = [sys.executable, "-m", "honcho", "start", "-f", str(config.ROOT / "Procfile"),
              "-d", str(config.ROOT), "--port", str(settings.port)]
    proc = subprocess.Popen(honcho, env=env, start_new_session=True)
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while proc.poll() is None:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return 0 if stopping else proc.returncode


def _add_bi_commands() -> None:
    from workers.bi.cli import reconcile as bi_reconcile
    from workers.bi.cli import report as bi_report

    cli.add_command(bi_report)
    cli.add_command(bi_reconcile)


_add_bi_commands()

if __name__ == "__main__":
    cli()
