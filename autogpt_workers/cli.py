"""``autogpt-workers``: run the stack, a worker, the API, the reaper or Flower; migrate; submit and follow tasks."""

from __future__ import annotations

import sys

from autogpt_workers.green import patch_if_asked

patch_if_asked(sys.argv)  # a think worker on the gevent pool: gevent patches the standard library before any import

import enum  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Any  # noqa: E402

import httpx  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

if TYPE_CHECKING:
    from autogpt_workers.config import Settings
    from autogpt_workers.store.db import Database

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
err = Console(stderr=True)


class QueueName(enum.StrEnum):
    think = "think"
    act = "act"


def _settings() -> Settings:
    from autogpt_workers.config import get_settings
    from autogpt_workers.errors import ConfigError

    try:
        return get_settings()
    except ConfigError as exc:
        err.print(f"[red]autogpt-workers: {exc}[/]")
        raise typer.Exit(2) from exc
    except Exception as exc:  # pydantic's ValidationError: a malformed variable
        err.print(f"[red]autogpt-workers: invalid settings:[/] {exc}")
        raise typer.Exit(2) from exc


def _configure_logs(json: bool | None = None) -> None:
    from autogpt_workers.logs import configure_logging

    s = _settings()
    configure_logging(s.log_level, s.log_json if json is None else json)


METRICS_PORT_HELP = "Serve Prometheus /metrics on this port; 0: none. Default: AUTOGPT_METRICS_PORT."


def _start_metrics(
    role: str, s: Settings, port: int | None, platform: bool = False, extra: Callable[[], list[Any]] | None = None
) -> None:
    """Choose the process group's metrics storage (before prometheus_client loads) and serve /metrics."""
    from autogpt_workers.metrics_server import start_group_metrics

    def collectors() -> list[Any]:
        if not platform:
            return extra() if extra is not None else []
        from autogpt_workers.metrics_platform import PlatformCollector
        from autogpt_workers.queues import QueueReader
        from autogpt_workers.store.db import Database

        db = Database.from_url(s.database_url, pool_size=1, max_overflow=1)
        reader = QueueReader.from_settings(s.broker_url, s.rabbitmq_management_url)
        return [PlatformCollector(db, reader, s.stuck_after_s)]

    chosen = s.metrics_port if port is None else port
    try:
        start_group_metrics(role, s.metrics_dir, chosen, s.metrics_host, collectors)
    except OSError as exc:
        err.print(f"[red]autogpt-workers: cannot serve /metrics on {s.metrics_host}:{chosen}: {exc}[/]")
        raise typer.Exit(2) from exc


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) and declare the broker's queues."""
    s = _settings()
    from autogpt_workers.celery_app import app as celery_app
    from autogpt_workers.celery_app import declare_topology
    from autogpt_workers.store.migrate import upgrade

    try:
        upgrade(s.database_url)
        declare_topology(celery_app)
    except Exception as exc:
        err.print(f"[red]migrate failed:[/] {exc}\nAre PostgreSQL and RabbitMQ up? (`make services`)")
        raise typer.Exit(1) from exc
    console.print("schema at head; queues declared")


def _think_pool(name: str) -> str:
    from autogpt_workers.green import POOLS, patched

    if name not in POOLS:
        err.print(f"[red]autogpt-workers: unknown think pool {escape(name)!r}; choose one of {', '.join(POOLS)}[/]")
        raise typer.Exit(2)
    if name == "gevent" and not patched():
        err.print("[red]autogpt-workers: the gevent pool needs the standard library patched at start: run the worker "
                  "as `autogpt-workers worker --queue think --pool gevent` (or python -m autogpt_workers.cli)[/]")
        raise typer.Exit(2)
    return name


@app.command()
def worker(
    queue: Annotated[QueueName, typer.Option(help="Which phase this worker serves.")],
    concurrency: Annotated[int | None, typer.Option(help="Threads (think) or processes (act).")] = None,
    pool: Annotated[
        str | None,
        typer.Option(help="The think worker's pool: gevent or threads. Default: AUTOGPT_THINK_POOL (gevent)."),
    ] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    metrics_port: Annotated[int | None, typer.Option(help=METRICS_PORT_HELP)] = None,
) -> None:
    """Run a Celery worker for the think queue (gevent, or a thread pool) or the act queue (prefork)."""
    s = _settings()
    if queue is QueueName.think:
        pool, conc = _think_pool(pool or s.think_pool), concurrency or s.think_concurrency
    elif pool not in (None, "prefork"):
        err.print(f"[red]autogpt-workers: the act worker runs the prefork pool only, not {escape(pool)}[/]")
        raise typer.Exit(2)
    else:
        pool, conc = "prefork", concurrency or s.act_concurrency
    _start_metrics(f"worker-{queue.value}", s, metrics_port)
    from autogpt_workers.metrics import install_worker_hooks, touch_series
    from autogpt_workers.metrics_logs import install_step_logging
    from autogpt_workers.queues import stamp_publish_time

    install_worker_hooks()
    install_step_logging()
    touch_series()
    stamp_publish_time()
    from autogpt_workers.celery_app import app as celery_app
    from autogpt_workers.celery_app import ensure_worker_settings
    from autogpt_workers.contracts import PHASE_QUEUES
    from autogpt_workers.errors import ConfigError

    _configure_logs()
    try:
        ensure_worker_settings(celery_app.conf, s)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    from autogpt_workers.metrics import record_plugins
    from autogpt_workers.runtime import check_sandbox, report_plugins

    if queue is QueueName.act:
        try:
            check_sandbox(s)  # says whether this host can run the code sandbox (AUTOGPT_SANDBOX)
        except ConfigError as exc:
            err.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(2) from exc
    registry = report_plugins(s)  # a broken plugin is skipped, never fatal: the log and /metrics say so
    record_plugins(len(registry.plugins_loaded), len(registry.plugin_errors))
    from autogpt_workers.tracing_celery import install as install_tracing

    install_tracing(s, f"autogpt-worker-{queue.value}", prefork=pool == "prefork")  # no-op without an endpoint
    node = hostname or f"{queue.value}@%h"
    if s.log_json:  # every line JSON: this line instead of Celery's multi-line start-up banner
        import structlog

        structlog.get_logger("autogpt_workers.worker").info(
            "worker_starting", queue=PHASE_QUEUES[queue.value], pool=pool, concurrency=conc, hostname=node
        )
    celery_app.worker_main(
        [
            *(["--quiet"] if s.log_json else []),
            "worker",
            f"--queues={PHASE_QUEUES[queue.value]}",
            f"--pool={pool}",
            f"--concurrency={conc}",
            f"--hostname={node}",
            f"--loglevel={loglevel}",
            *(["--task-events"] if s.task_events else []),
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    insecure_dev: Annotated[
        bool, typer.Option("--insecure-dev", help="Development only: accept requests without an API key.")
    ] = False,
) -> None:
    """Serve the submit API (FastAPI on uvicorn)."""
    import os

    import uvicorn

    if insecure_dev:
        from autogpt_workers.config import get_settings

        os.environ["AUTOGPT_API_AUTH"] = "disabled"
        get_settings.cache_clear()
    s = _settings()
    _configure_logs()
    config: dict[str, Any] = {
        "app": "api_shim.app:create_server_app",
        "factory": True,
        "host": host or s.api_host,
        "port": port or s.api_port,
        # uvloop's event loop and httptools' C parser (uvicorn's defaults when installed; named, so a missing
        # one fails at start instead of falling back): the health endpoint answered 4671-5476 requests/s against
        # 1999-3940 on asyncio and h11, the submit 431-547 tasks/s against 355-454 (``python -m bench --only submit``)
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        # one process: uvicorn's loggers propagate to the root handler (JSON); spawned workers keep uvicorn's own
        "log_config": None if workers == 1 else uvicorn.config.LOGGING_CONFIG,
    }
    if workers == 1:
        uvicorn.run(**config)
        return
    from autogpt_workers import api_processes
    from autogpt_workers.metrics_server import use_multiprocess_dir

    use_multiprocess_dir("api", s.metrics_dir)
    try:  # a socket per process (SO_REUSEPORT), not uvicorn's shared one: see ``api_processes``
        code = api_processes.serve(config, workers)
    except (api_processes.PortTaken, ValueError) as exc:
        typer.echo(f"autogpt-workers api: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command()
def reaper(
    metrics_port: Annotated[int | None, typer.Option(help=METRICS_PORT_HELP)] = None,
    platform_metrics: Annotated[
        bool, typer.Option(help="Also serve the platform's gauges (ledger, queues) on /metrics.")
    ] = True,
) -> None:
    """Re-drive steps whose lease expired and publish wake-ups nobody published."""
    s = _settings()
    _start_metrics("reaper", s, metrics_port, platform=platform_metrics)
    import signal

    from autogpt_workers.broker import Publisher
    from autogpt_workers.celery_app import app as celery_app
    from autogpt_workers.reaper import Reaper
    from autogpt_workers.store.db import Database
    from autogpt_workers.store.ledger import Ledger

    _configure_logs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # no pre-ping (a transaction of its own per checkout, five a round): a round that meets a stale connection after
    # a PostgreSQL restart fails, the pool is invalidated, and the next round runs on fresh connections
    db = Database.from_url(s.database_url, pool_size=2, max_overflow=2, pre_ping=False)
    from autogpt_workers.metrics import PrometheusObserver, touch_series
    from autogpt_workers.queues import stamp_publish_time

    touch_series()
    stamp_publish_time()
    observer = PrometheusObserver()
    from autogpt_workers.artifacts import artifact_store

    Reaper(
        Ledger(db), Publisher(celery_app), s.outbox_grace_s, s.reaper_interval_s, observer,
        redrive_after_s=s.redrive_after_s, approval_timeout_s=s.approval_timeout_s,
        outbox_retention_s=s.outbox_retention_s, task_retention_s=s.task_retention_days * 86_400,
        artifacts=artifact_store(s) if s.task_retention_days > 0 else None,
    ).run_forever(stop)


@app.command()
def autoscale(
    queue: Annotated[
        list[QueueName] | None, typer.Option("--queue", help="A queue to scale (repeat it); default: both.")
    ] = None,
    min_workers: Annotated[int, typer.Option("--min", min=0, help="Worker processes per queue, at least.")] = 1,
    max_workers: Annotated[int, typer.Option("--max", min=1, help="Worker processes per queue, at most.")] = 4,
    target: Annotated[
        int | None, typer.Option(min=1, help="Messages one worker should hold; default: its concurrency.")
    ] = None,
    max_age: Annotated[float, typer.Option(min=0, help="Add a worker while the oldest message is older (s).")] = 30.0,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between two readings.")] = 2.0,
    cooldown: Annotated[float, typer.Option(min=0, help="Seconds below target before scaling in.")] = 30.0,
    grace: Annotated[float | None, typer.Option(help="Seconds a stopping worker may finish its steps.")] = None,
    log_dir: Annotated[Path, typer.Option(help="Where the workers' logs go.")] = Path("var/log/autoscale"),
    metrics_port: Annotated[int | None, typer.Option(help=METRICS_PORT_HELP)] = None,
) -> None:
    """Grow and shrink worker processes on queue depth and oldest-message age (no Kubernetes needed)."""
    import signal

    s = _settings()
    if min_workers > max_workers:
        err.print(f"[red]autogpt-workers: --min ({min_workers}) must not exceed --max ({max_workers})[/]")
        raise typer.Exit(2)
    from autogpt_workers import autoscale as scaling
    from autogpt_workers.backlog import BacklogDemand
    from autogpt_workers.contracts import PHASE_QUEUES
    from autogpt_workers.queues import QueueReader, ReadyCounter

    chosen = list(dict.fromkeys(queue or [QueueName.think, QueueName.act]))
    concurrency = {"think": s.think_concurrency, "act": s.act_concurrency}
    policies = {
        q.value: (
            PHASE_QUEUES[q.value],
            scaling.ScalePolicy(min_workers, max_workers, target or concurrency[q.value], max_age, cooldown),
        )
        for q in chosen
    }
    scaler = scaling.Autoscaler(
        policies,
        QueueReader.from_settings(s.broker_url, s.rabbitmq_management_url),
        scaling.worker_launcher(log_dir),
        scaling.celery_inspector(),
        ready_counter=ReadyCounter(s.broker_url),
        held_demand=BacklogDemand.from_url(s.redis_url, s.database_url) if s.scheduler_max_ready else None,
    )
    # before the first child starts: the children inherit the metrics directory this process serves
    _start_metrics("autoscale", s, metrics_port, extra=lambda: [scaling.AutoscalerCollector(scaler)])
    _configure_logs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        scaler.run_forever(stop, interval)
    finally:
        scaler.shutdown(grace if grace is not None else max(s.think_time_limit_s, s.act_time_limit_s) + 30)


@app.command()
def flower(
    port: Annotated[int | None, typer.Option()] = None,
    address: Annotated[str | None, typer.Option(help="Bind address (default: 0.0.0.0 in production).")] = None,
) -> None:
    """Run Flower (basic auth from AUTOGPT_FLOWER_BASIC_AUTH) on the platform's broker, with its broker view
    reading the RabbitMQ management API (AUTOGPT_RABBITMQ_MANAGEMENT_URL, default: the broker's host :15672)."""
    import os

    s = _settings()
    from autogpt_workers.celery_app import app as celery_app
    from autogpt_workers.queues import ManagementEndpoint

    _configure_logs()  # before Flower's tornado: it leaves a configured root logger alone
    endpoint = ManagementEndpoint.from_urls(s.broker_url, s.rabbitmq_management_url)
    # through the environment (Flower reads FLOWER_*), so the credentials stay out of the process list
    os.environ.setdefault("FLOWER_BROKER_API", endpoint.api_url_with_credentials)
    celery_app.start(
        [
            "flower",
            f"--port={port or s.flower_port}",
            f"--address={address or ('0.0.0.0' if s.env == 'production' else '127.0.0.1')}",
            "--enable_events",
            "--tasks_columns=name,uuid,state,args,result,received,runtime,worker",
            f"--basic-auth={s.flower_basic_auth.get_secret_value()}",
            "--purge_offline_workers=60",
        ]
    )


@app.command()
def submit(
    goal: Annotated[str, typer.Argument(help="What the agent should achieve.")],
    priority: Annotated[int, typer.Option(min=0, max=9)] = 5,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Default: the profile's, else 20.")] = None,
    profile: Annotated[
        str | None, typer.Option(help="Agent profile: governance, capability, execution, evolution, or your own.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the task live until it ends.")] = False,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    api_url: Annotated[str | None, typer.Option(help="Defaults to AUTOGPT_API_URL.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="AUTOGPT_API_KEY", help=API_KEY_HELP)] = None,
) -> None:
    """Submit a task through the API; with --wait, show each step as it happens."""
    from autogpt_workers.watch import follow, summary

    url = api_url or _settings().api_url
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body: dict[str, Any] = {"goal": goal, "priority": priority}
    if max_steps is not None:
        body["budget"] = {"max_steps": max_steps}
    if profile is not None:
        body["profile"] = profile
    with httpx.Client(base_url=url, timeout=30, headers=_auth(api_key)) as client:
        try:
            resp = client.post("/v1/tasks", json=body, headers=headers)
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach the API at {url}:[/] {exc}\nStart it with `autogpt-workers run`.")
            raise typer.Exit(1) from exc
        if resp.status_code >= 400:
            err.print(f"[red]the API refused the task ({resp.status_code}):[/] {escape(_refusal(resp))}{_hint(resp)}")
            raise typer.Exit(1)
        task = resp.json()
        console.print(f"submitted task [bold]{task['id']}[/] ({task['status']})")
        if wait:
            task = follow(client, task["id"], console)
            summary(console, task)
            raise typer.Exit(0 if task["status"] == "completed" else 1)


@app.command()
def status(
    task_id: Annotated[str, typer.Argument()],
    api_url: Annotated[str | None, typer.Option()] = None,
    api_key: Annotated[str | None, typer.Option(envvar="AUTOGPT_API_KEY", help=API_KEY_HELP)] = None,
) -> None:
    """Show a task and its steps."""
    from autogpt_workers.watch import print_step, summary

    url = api_url or _settings().api_url
    with httpx.Client(base_url=url, timeout=30, headers=_auth(api_key)) as client:
        try:
            resp = client.get(f"/v1/tasks/{task_id}")
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach the API at {url}:[/] {exc}")
            raise typer.Exit(1) from exc
        if resp.status_code != 200:
            err.print(f"[red]{resp.status_code}:[/] {resp.json().get('detail', resp.text)}{_hint(resp)}")
            raise typer.Exit(1)
        for step in client.get(f"/v1/tasks/{task_id}/steps").json():
            if step["status"] in ("completed", "failed"):
                print_step(console, step)
        summary(console, resp.json())


keys_app = typer.Typer(help="API keys: each belongs to one tenant; the API stores only their hashes.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for (created if new).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    rate: Annotated[float | None, typer.Option(min=0.001, help="Tenant's requests/s (default: settings).")] = None,
    burst: Annotated[int | None, typer.Option(min=1, help="Tenant's burst (default: settings).")] = None,
    max_running: Annotated[int | None, typer.Option(min=1, help="Tenant's running-task cap.")] = None,
) -> None:
    """Create a key (shown once) and print the tenant's webhook signing secret."""
    from autogpt_workers.errors import UsageError
    from autogpt_workers.tenants import Limits, create_key

    db = _gateway_db()
    try:
        raw, info, secret = create_key(db, tenant, name, Limits(rate, burst, max_running))
    except UsageError as exc:
        err.print(f"[red]autogpt-workers: {exc}[/]")
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    console.print(f"key id          {info.id}\ntenant          {info.tenant_id}\nwebhook secret  {secret}")
    console.print("API key (shown only now; send it as 'Authorization: Bearer <key>'):")
    print(raw)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """List keys (ids and prefixes, never the keys), one a line, tab-separated."""
    from autogpt_workers.tenants import list_keys

    db = _gateway_db()
    try:
        keys = list_keys(db, tenant)
    finally:
        db.dispose()
    print("id\ttenant\tname\tprefix\tcreated\trevoked")
    for k in keys:
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
        print(f"{k.id}\t{k.tenant_id}\t{k.name}\t{k.prefix}\t{k.created_at.isoformat(timespec='seconds')}\t{revoked}")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id, or its prefix from `keys list`.")]) -> None:
    """Revoke a key: the API refuses it within a few seconds."""
    from autogpt_workers.errors import UsageError
    from autogpt_workers.tenants import revoke_key

    db = _gateway_db()
    try:
        info = revoke_key(db, key)
    except UsageError as exc:
        err.print(f"[red]autogpt-workers: {exc}[/]")
        raise typer.Exit(1) from exc
    finally:
        db.dispose()
    console.print(f"revoked key {info.id} ({info.prefix}) of tenant {info.tenant_id}")


@app.command()
def dispatcher(
    metrics_port: Annotated[int | None, typer.Option(help=METRICS_PORT_HELP)] = None,
) -> None:
    """Admit waiting tasks as running slots free, raise priorities as deadlines near, deliver webhooks."""
    s = _settings()
    # /metrics: autogpt_dispatcher_rounds_total, and the orchestrator's liveness and readiness probe
    _start_metrics("dispatcher", s, metrics_port)
    import signal

    from autogpt_workers.admission import Admitter, Policy
    from autogpt_workers.broker import Publisher
    from autogpt_workers.celery_app import app as celery_app
    from autogpt_workers.dispatcher import Dispatcher
    from autogpt_workers.store.db import Database
    from autogpt_workers.webhooks import WebhookDispatcher

    _configure_logs()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # no pre-ping, as the reaper: a failed round is the next round's to do; a delivery's record retries on a fresh
    # connection (``WebhookDispatcher._record``)
    db = Database.from_url(s.database_url, pool_size=4, max_overflow=s.webhook_concurrency, pre_ping=False)
    from autogpt_workers.backlog import BacklogFlag
    from autogpt_workers.contracts import THINK_QUEUE
    from autogpt_workers.queues import ReadyCounter
    from autogpt_workers.wake import Wake

    counter = ReadyCounter(s.broker_url)
    admitter = Admitter(
        db,
        Publisher(celery_app),
        Policy.from_settings(s),
        ready=lambda: counter([THINK_QUEUE]).get(THINK_QUEUE),
        flag=BacklogFlag.from_url(s.redis_url, s.database_url, ttl_s=max(2.0, 5 * s.dispatcher_interval_s)),
        wake=Wake(s.dispatcher_idle_look_s),
    )
    from autogpt_workers.metrics import count_dispatcher_round, touch_dispatcher_series

    touch_dispatcher_series()
    Dispatcher(
        admitter,
        WebhookDispatcher(db, s, wake=Wake(s.dispatcher_idle_look_s)),
        s.dispatcher_interval_s,
        on_round=count_dispatcher_round,
    ).run_forever(stop)
    db.dispose()


API_KEY_HELP = "API key (default: AUTOGPT_API_KEY); create one with `autogpt-workers keys create`."


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _hint(resp: httpx.Response) -> str:
    if resp.status_code == 401:
        return "\nSet AUTOGPT_API_KEY (or --api-key); create a key with `autogpt-workers keys create --tenant NAME`."
    return ""


def _refusal(resp: httpx.Response) -> str:
    """What the API said was wrong: FastAPI's ``detail`` (a message, or a list of field errors), else the body."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        return resp.text
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg')}"
            for e in detail
            if isinstance(e, dict)
        ) or resp.text
    return str(detail) if detail else resp.text


def _gateway_db() -> Database:
    s = _settings()
    from autogpt_workers.store.db import Database

    return Database.from_url(s.database_url, pool_size=1, max_overflow=1)


@app.command()
def run(
    exit_after_demo: Annotated[bool, typer.Option(help="Stop the stack once the demo task ends.")] = False,
    goal: Annotated[str, typer.Option(help="The demo task's goal.")] = (
        "Write a short plan for a weekend hiking trip into plan.md, keep notes, then finish."
    ),
    llm_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the scripted demo model (when no OPENAI_API_KEY is set).")
    ] = 8765,
    metrics_port: Annotated[
        int, typer.Option(min=1, max=65532, help="/metrics of think, act, reaper, dispatcher: this port and the "
                          "next three.")
    ] = 9101,
    prometheus_port: Annotated[
        int, typer.Option(min=0, max=65535, help="The local Prometheus (if installed); 0: do not start it.")
    ] = 9090,
) -> None:
    """Start the whole stack locally (migrations, API, think and act workers, reaper, Flower) and run a demo task.

    The API and Flower listen on AUTOGPT_API_PORT (8000) and AUTOGPT_FLOWER_PORT (5555)."""
    from autogpt_workers.stack import RunPorts, run_stack

    ports = RunPorts(llm=llm_port, metrics_base=metrics_port, prometheus=prometheus_port)
    raise typer.Exit(run_stack(_settings(), goal=goal, exit_after_demo=exit_after_demo, console=console, ports=ports))


@app.command()
def stuck(
    older_than: Annotated[
        float | None, typer.Option(min=0, help="Idle at least this many seconds. Default: AUTOGPT_STUCK_AFTER_S.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    limit: Annotated[int, typer.Option(min=1)] = 200,
) -> None:
    """List unfinished tasks nothing has moved for a while, and why. Exits 1 when there are any."""
    import json

    from rich.table import Table

    from autogpt_workers.stuck import REASONS, find_stuck

    s = _settings()
    threshold = s.stuck_after_s if older_than is None else older_than
    try:
        found = find_stuck(_gateway_db(), threshold, limit=limit)
    except Exception as exc:
        err.print(f"[red]cannot read the ledger:[/] {exc}\nIs PostgreSQL up and migrated (`autogpt-workers migrate`)?")
        raise typer.Exit(2) from exc
    if as_json:
        for t in found:
            typer.echo(json.dumps(t.as_dict()))
    elif not found:
        console.print(f"no task idle for {threshold:g}s or more")
    else:
        table = Table(title=f"{len(found)} task(s) idle for {threshold:g}s or more")
        for col in ("task", "tenant", "status", "step", "idle", "reason"):
            table.add_column(col)
        for t in found:
            step = "-" if t.step_index is None else f"{t.step_index} ({t.step_status})"
            table.add_row(str(t.task_id), t.tenant_id, t.status, step, f"{t.idle_s:.0f}s", t.reason)
        console.print(table)
        for reason in sorted({t.reason for t in found}):
            console.print(f"  {reason}: {REASONS[reason]}")
    raise typer.Exit(1 if found else 0)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
