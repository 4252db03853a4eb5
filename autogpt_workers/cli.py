"""``autogpt-workers``: run the stack, a worker, the API, the reaper or Flower; migrate; submit and follow tasks."""

from __future__ import annotations

import enum
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import httpx
import typer
from rich.console import Console

if TYPE_CHECKING:
    from autogpt_workers.config import Settings

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


@app.command()
def worker(
    queue: Annotated[QueueName, typer.Option(help="Which phase this worker serves.")],
    concurrency: Annotated[int | None, typer.Option(help="Threads (think) or processes (act).")] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker for the think queue (thread pool) or the act queue (prefork)."""
    s = _settings()
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
    if queue is QueueName.think:
        pool, conc = "threads", concurrency or s.think_concurrency
    else:
        pool, conc = "prefork", concurrency or s.act_concurrency
    celery_app.worker_main(
        [
            "worker",
            f"--queues={PHASE_QUEUES[queue.value]}",
            f"--pool={pool}",
            f"--concurrency={conc}",
            f"--hostname={hostname or f'{queue.value}@%h'}",
            f"--loglevel={loglevel}",
            "--task-events",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the submit API (FastAPI on uvicorn)."""
    import uvicorn

    s = _settings()
    _configure_logs()
    uvicorn.run(
        "api_shim.app:create_app",
        factory=True,
        host=host or s.api_host,
        port=port or s.api_port,
        workers=workers,
        log_level="warning",
    )


@app.command()
def reaper() -> None:
    """Re-drive steps whose lease expired and publish wake-ups nobody published."""
    s = _settings()
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
    db = Database.from_url(s.database_url, pool_size=2, max_overflow=2)
    Reaper(Ledger(db), Publisher(celery_app), s.outbox_grace_s, s.reaper_interval_s).run_forever(stop)


@app.command()
def flower(port: Annotated[int | None, typer.Option()] = None) -> None:
    """Run Flower (basic auth from AUTOGPT_FLOWER_BASIC_AUTH) on the platform's broker."""
    s = _settings()
    from autogpt_workers.celery_app import app as celery_app

    celery_app.start(
        [
            "flower",
            f"--port={port or s.flower_port}",
            "--address=127.0.0.1" if s.env != "production" else "--address=0.0.0.0",
            f"--basic-auth={s.flower_basic_auth.get_secret_value()}",
            "--purge_offline_workers=60",
        ]
    )


@app.command()
def submit(
    goal: Annotated[str, typer.Argument(help="What the agent should achieve.")],
    priority: Annotated[int, typer.Option(min=0, max=9)] = 5,
    max_steps: Annotated[int, typer.Option(min=1)] = 20,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the task live until it ends.")] = False,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    api_url: Annotated[str | None, typer.Option(help="Defaults to AUTOGPT_API_URL.")] = None,
) -> None:
    """Submit a task through the API; with --wait, show each step as it happens."""
    from autogpt_workers.watch import follow, summary

    url = api_url or _settings().api_url
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    body = {"goal": goal, "priority": priority, "budget": {"max_steps": max_steps}}
    with httpx.Client(base_url=url, timeout=30) as client:
        try:
            resp = client.post("/v1/tasks", json=body, headers=headers)
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach the API at {url}:[/] {exc}\nStart it with `autogpt-workers run`.")
            raise typer.Exit(1) from exc
        if resp.status_code >= 400:
            err.print(f"[red]the API refused the task ({resp.status_code}):[/] {resp.text}")
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
) -> None:
    """Show a task and its steps."""
    from autogpt_workers.watch import print_step, summary

    url = api_url or _settings().api_url
    with httpx.Client(base_url=url, timeout=30) as client:
        try:
            resp = client.get(f"/v1/tasks/{task_id}")
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach the API at {url}:[/] {exc}")
            raise typer.Exit(1) from exc
        if resp.status_code != 200:
            err.print(f"[red]{resp.status_code}:[/] {resp.json().get('detail', resp.text)}")
            raise typer.Exit(1)
        for step in client.get(f"/v1/tasks/{task_id}/steps").json():
            if step["status"] in ("completed", "failed"):
                print_step(console, step)
        summary(console, resp.json())


@app.command()
def run(
    exit_after_demo: Annotated[bool, typer.Option(help="Stop the stack once the demo task ends.")] = False,
    goal: Annotated[str, typer.Option(help="The demo task's goal.")] = (
        "Write a short plan for a weekend hiking trip into plan.md, keep notes, then finish."
    ),
) -> None:
    """Start the whole stack locally (migrations, API, think and act workers, reaper, Flower) and run a demo task."""
    from autogpt_workers.stack import run_stack

    raise typer.Exit(run_stack(_settings(), goal=goal, exit_after_demo=exit_after_demo, console=console))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
