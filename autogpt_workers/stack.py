"""``autogpt-workers run``: the whole stack on one machine, a demo task, and a clean stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from rich.console import Console

from autogpt_workers.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_LLM_PORT = 8765


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _service_problems(settings: Settings) -> list[str]:
    problems = []
    for name, url, default in (
        ("PostgreSQL", settings.database_url, 5432),
        ("RabbitMQ", settings.broker_url, 5672),
        ("Redis", settings.redis_url, 6379),
    ):
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or default
        if not _port_open(host, port):
            problems.append(f"{name} is not reachable at {host}:{port}")
    return problems


class _Stop(Exception):
    """SIGTERM: stop the stack as Ctrl-C does."""


class _Signals:
    """SIGINT and SIGTERM, once ``install``-ed, raise ``KeyboardInterrupt`` and ``_Stop`` in the main thread, except
    inside ``held()``: there the first one waits for the block's end.

    A child is started inside ``held()``, so that it is in ``Stack.procs`` before the stop can run. A signal that
    landed inside ``subprocess.Popen`` (it waits for the child's ``exec`` after the fork) used to raise there, and
    the child, already running, was known to nobody: ``Stack.stop`` left it behind."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending: BaseException | None = None

    def install(self) -> dict[int, Any]:
        """Install the handlers; the ones they replace, for ``restore``."""
        return {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def restore(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        exc: BaseException = KeyboardInterrupt() if signum == signal.SIGINT else _Stop()
        if self._depth:
            self._pending = self._pending or exc
            return
        raise exc

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                pending, self._pending = self._pending, None
                raise pending


_SIGNALS = _Signals()


class Stack:
    def __init__(self, log_dir: Path, env: dict[str, str], console: Console) -> None:
        self.log_dir = log_dir
        self.env = env
        self.console = console
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        with _SIGNALS.held():
            self.procs[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO_ROOT, start_new_session=True
            )

    def run_to_end(self, name: str, args: list[str]) -> tuple[int, str]:
        """Run ``args`` as ``start`` does, wait for it, and say how it ended and what it printed. Stopped meanwhile
        (Ctrl-C, SIGTERM), it is left in ``procs`` for ``stop``."""
        with _SIGNALS.held():
            proc = self.procs[name] = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env, cwd=REPO_ROOT,
                start_new_session=True,
            )
        out, _ = proc.communicate()
        del self.procs[name]
        return proc.returncode, out

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to each process group (a group whose leader already exited may still hold children), then
        SIGKILL to what is left after ``grace_s``."""
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _wait_http(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _start_prometheus(stack: Stack, settings: Settings, ports: RunPorts) -> str | None:
    """A local Prometheus (deploy/prometheus rules, scrape every 5 s) when the binary is installed."""
    import shutil

    from autogpt_workers.metrics_prometheus import local_config

    if shutil.which("prometheus") is None or not ports.prometheus:
        return None
    host = "127.0.0.1"
    metrics = ports.metrics
    targets = {
        "autogpt-api": f"{host}:{settings.api_port}",
        "autogpt-worker-think": f"{host}:{metrics['think']}",
        "autogpt-worker-act": f"{host}:{metrics['act']}",
        "autogpt-reaper": f"{host}:{metrics['reaper']}",
        "autogpt-dispatcher": f"{host}:{metrics['dispatcher']}",
        "flower": f"{host}:{settings.flower_port}",
    }
    user, _, password = settings.flower_basic_auth.get_secret_value().partition(":")
    out = REPO_ROOT / "var" / "prometheus"
    config = local_config(targets, out, (user, password))
    stack.start("prometheus", ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={out / 'data'}",
                               f"--web.listen-address=127.0.0.1:{ports.prometheus}", "--log.level=warn"])
    return f"http://127.0.0.1:{ports.prometheus}"


@dataclasses.dataclass(frozen=True)
class RunPorts:
    """The local ports ``run`` uses besides the API's and Flower's (``AUTOGPT_API_PORT``, ``AUTOGPT_FLOWER_PORT``)."""

    llm: int = FAKE_LLM_PORT  # the scripted demo model, when no OPENAI_API_KEY is set
    metrics_base: int = 9101  # /metrics of think, act, reaper, dispatcher: this port and the next three
    prometheus: int = 9090  # 0: no local Prometheus

    @property
    def metrics(self) -> dict[str, int]:
        return {name: self.metrics_base + i for i, name in enumerate(("think", "act", "reaper", "dispatcher"))}


def run_stack(
    settings: Settings, goal: str, exit_after_demo: bool, console: Console, ports: RunPorts | None = None
) -> int:
    """Start everything, run the demo task, keep running until Ctrl-C (or SIGTERM), then stop all it started.

    Every process is started inside the ``try``: Ctrl-C, SIGTERM or an error at any point of the start-up (the demo
    model, the migration, the demo key, a process that does not come up) stops whatever was already started."""
    from autogpt_workers.watch import follow, summary

    ports = ports or RunPorts()
    problems = _service_problems(settings)
    if problems:
        for p in problems:
            console.print(f"[red]{p}[/]")
        console.print("Start them with `make services` (or use `make run`, which does it for you).")
        return 1
    log_dir = REPO_ROOT / "var" / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    me = [sys.executable, "-m", "autogpt_workers.cli"]
    stack = Stack(log_dir, env, console)
    demo_key_id: str | None = None
    previous_handlers = _SIGNALS.install()
    try:
        if settings.openai_api_key is None:
            if not (REPO_ROOT / "tests" / "fake_llm").is_dir():
                console.print(
                    "[red]No OPENAI_API_KEY is set and the scripted demo model (tests/fake_llm) is missing.[/]"
                )
                return 1
            base = f"http://127.0.0.1:{ports.llm}/v1"
            console.print(
                "[yellow]No OPENAI_API_KEY is set: using the project's scripted demo model "
                f"(tests/fake_llm, OpenAI-compatible, at {base}). It replays a fixed plan; set OPENAI_API_KEY "
                "(and OPENAI_BASE_URL for a non-OpenAI endpoint) to run a real model.[/]"
            )
            env.update(OPENAI_BASE_URL=base, OPENAI_API_KEY="scripted-demo", AUTOGPT_LLM_MODEL="scripted-demo")
            stack.start("fake-llm", [sys.executable, "-m", "tests.fake_llm", "--port", str(ports.llm)])
        else:
            console.print(f"Using the model [bold]{settings.llm_model}[/] at {settings.openai_base_url or 'OpenAI'}.")

        console.print("migrating the database and declaring queues …")
        code, printed = stack.run_to_end("migrate", [*me, "migrate"])
        if code != 0:
            console.print(f"[red]migration failed:[/]\n{printed}")
            return 1

        demo_key, demo_key_id = _demo_key(settings)
        stack.start("api", [*me, "api"])
        metrics = ports.metrics  # /metrics of each process group
        # admission under running-task caps, priority refresh, webhooks
        stack.start("dispatcher", [*me, "dispatcher", "--metrics-port", str(metrics["dispatcher"])])
        stack.start("worker-think", [*me, "worker", "--queue", "think", "--metrics-port", str(metrics["think"])])
        stack.start("worker-act", [*me, "worker", "--queue", "act", "--metrics-port", str(metrics["act"])])
        stack.start("reaper", [*me, "reaper", "--metrics-port", str(metrics["reaper"])])
        stack.start("flower", [*me, "flower"])
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        flower_url = f"http://127.0.0.1:{settings.flower_port}"
        prometheus_url = _start_prometheus(stack, settings, ports)
        if not _wait_http(f"{api_url}/healthz", 30):
            console.print(f"[red]the API did not come up; see {log_dir / 'api.log'}[/]")
            return 1
        user = settings.flower_basic_auth.get_secret_value().split(":", 1)[0]
        console.print(
            f"\n[bold]Stack up.[/]\n  API     {api_url}  (docs: {api_url}/docs)\n"
            f"  Flower  {flower_url}  (basic auth, user '{user}')\n"
            f"  Metrics {prometheus_url or 'install Debian package prometheus to get a local Prometheus'}\n"
            f"  Logs    {log_dir}/\n"
            f"  API key for this run (tenant 'demo', revoked when the stack stops):\n"
            f"          export AUTOGPT_API_KEY={demo_key}\n"
        )
        with httpx.Client(base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {demo_key}"}) as client:
            task = client.post("/v1/tasks", json={"goal": goal, "budget": {"max_steps": 10}}).raise_for_status().json()
            console.print(f"demo task [bold]{task['id']}[/]: {goal}")
            task = follow(client, task["id"], console, timeout_s=300)
            summary(console, task)
        ok = task["status"] == "completed"
        if exit_after_demo:
            return 0 if ok else 1
        console.print("\nThe stack keeps running; submit more with `autogpt-workers submit \"goal\" --wait`. "
                      "Ctrl-C stops everything.")
        while True:
            dead = stack.dead()
            if dead:
                console.print(f"[red]{', '.join(dead)} stopped; see {log_dir}/. Stopping the stack.[/]")
                return 1
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        console.print("\nstopping …")
        return 0
    finally:
        try:
            stack.stop()
        except (KeyboardInterrupt, _Stop):  # a second Ctrl-C or SIGTERM: no more grace
            stack.stop(grace_s=0)
        finally:
            _SIGNALS.restore(previous_handlers)
        if demo_key_id is not None:
            _revoke(settings, demo_key_id)
        console.print("stack stopped")


def _demo_key(settings: Settings) -> tuple[str, str]:
    """A key for the demo tenant, so the API runs as in production: keys required."""
    from autogpt_workers.store.db import Database
    from autogpt_workers.tenants import create_key

    db = Database.from_url(settings.database_url, pool_size=1, max_overflow=0)
    try:
        key, info, _ = create_key(db, "demo", "autogpt-workers run")
    finally:
        db.dispose()
    return key, str(info.id)


def _revoke(settings: Settings, key_id: str) -> None:
    from autogpt_workers.store.db import Database
    from autogpt_workers.tenants import revoke_key

    db = Database.from_url(settings.database_url, pool_size=1, max_overflow=0)
    try:
        revoke_key(db, key_id)
    except Exception:  # the database is going away with the stack: the key just stays valid
        pass
    finally:
        db.dispose()
