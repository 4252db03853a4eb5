"""Builds a worker process's collaborators from the settings, once per process (after fork)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable

import structlog
from sqlalchemy import select

from autogpt_workers import tracing_celery
from autogpt_workers.agent.loop import Agent
from autogpt_workers.artifacts import artifact_store
from autogpt_workers.broker import Publisher
from autogpt_workers.celery_app import app
from autogpt_workers.commands import CommandRegistry, Sandbox, SandboxLimits, default_registry
from autogpt_workers.commands.execute import CODE_EXECUTION
from autogpt_workers.commands.memory import MemoryAccess, memory_commands
from autogpt_workers.config import Settings, get_settings
from autogpt_workers.errors import ConfigError
from autogpt_workers.lease import LeaseKeeper
from autogpt_workers.llm.openai_chat import OpenAIChatModel, make_clients
from autogpt_workers.llm.traced import traced
from autogpt_workers.memory.factory import build_memory
from autogpt_workers.profiles import ProfileCatalog
from autogpt_workers.runner import StepRunner
from autogpt_workers.store import phase_sql
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import TaskOptions
from autogpt_workers.store.ledger import Ledger
from autogpt_workers.store.models import Task
from autogpt_workers.task_facts import Facts, TaskFacts

log = structlog.get_logger("autogpt_workers.worker")
_lock = threading.Lock()
_runner: tuple[int, StepRunner] | None = None


def build_runner(settings: Settings) -> StepRunner:
    # no pre-ping on the step path (a round trip per transaction): see ``make_engine``
    db = Database.from_url(settings.database_url, settings.db_pool_size, settings.db_max_overflow, pre_ping=False)
    if settings.db_prepared_statements:
        phase_sql.prepare_on_connect(db)
    ledger = Ledger(db)
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
    from autogpt_workers.metrics import PrometheusObserver  # after the CLI chose the metrics storage

    observer = PrometheusObserver()
    clients = make_clients(
        base_url=settings.openai_base_url,
        api_key=api_key,
        timeout_s=settings.llm_timeout_s,
        max_connections=settings.llm_max_connections,
        shards=settings.llm_client_shards,
        lean=settings.llm_http_transport == "lean",
    )
    llm = OpenAIChatModel(
        clients,
        model=settings.llm_model,
        max_attempts=settings.llm_max_attempts,
        backoff_max_s=settings.llm_backoff_max_s,
        on_retry=observer.on_llm_retry,
    )
    facts = TaskFacts(facts_reader(db))
    memory = build_memory(settings, facts.tenant_of)
    window = settings.llm_context_tokens
    agent = Agent(
        traced(llm, settings.llm_model),  # a span per LLM call when tracing is on
        build_registry(settings, memory),
        settings.price_per_1k,
        max_observation_chars=settings.max_observation_chars,
        profiles=ProfileCatalog(settings.profiles_dir),
        profile_of=facts.profile_of,
        memory=memory,
        memory_top_k=settings.memory_top_k,
        context_tokens=window - settings.llm_completion_reserve_tokens if window is not None else None,
    )
    owner = f"{socket.gethostname()}:{os.getpid()}"
    # the heartbeat has a connection of its own: a pool drained by busy step threads must never make it late (a
    # lease that lapses under a live holder lets another worker buy the same LLM completion again)
    lease_ledger = Ledger(Database.from_url(settings.database_url, pool_size=1, max_overflow=1))
    leases = LeaseKeeper(
        lambda tokens: lease_ledger.renew(tokens, settings.lease_ttl_s),
        settings.lease_heartbeat_s,
        settings.lease_ttl_s,
    )
    runner = StepRunner(ledger, Publisher(app), agent, settings, owner, leases, observer, artifact_store(settings),
                        facts=facts)
    runner.hand_on = tracing_celery.hand_on  # a think delivery that runs its command: the act span beside think's
    return runner


def build_sandbox(settings: Settings) -> Sandbox:
    """The code sandbox with the settings' limits (the host check runs at its first use)."""
    limits = SandboxLimits(
        cpu_seconds=settings.sandbox_cpu_seconds,
        wall_seconds=settings.sandbox_wall_seconds,
        memory_bytes=settings.sandbox_memory_mb * 2**20,
        file_size_bytes=settings.sandbox_file_size_mb * 2**20,
        max_processes=settings.sandbox_max_processes,
        tmp_bytes=settings.sandbox_tmp_mb * 2**20,
        output_bytes=max(4096, settings.max_observation_chars * 4),
    )
    return Sandbox(
        limits,
        runtime_dir=settings.sandbox_runtime_dir,
        uid_base=settings.sandbox_uid_base,
        uid_count=settings.sandbox_uid_count,
    )


def build_registry(settings: Settings, memory: MemoryAccess | None = None) -> CommandRegistry:
    """Built-in commands configured from the settings, ``remember``/``recall`` when there is memory, then the
    installed plugins."""
    registry = default_registry(
        load_plugins=False,
        max_file_bytes=settings.max_file_bytes,
        sandbox=build_sandbox(settings),
        python=settings.sandbox_python,
        shell_programs=settings.sandbox_shell_programs,
        web_allowed_domains=settings.web_allowed_domains,
        web_max_bytes=settings.web_max_bytes,
        web_timeout_s=settings.web_timeout_s,
    )
    for command in memory_commands(memory) if memory is not None else []:
        registry.register(command)
    if settings.sandbox == "off":  # before the plugins: none may take the names back
        for name in CODE_EXECUTION:
            registry.disable(name, "code execution is off (AUTOGPT_SANDBOX=off: this platform has no code sandbox)")
    registry.load_plugins()
    return registry


def report_plugins(settings: Settings) -> CommandRegistry:
    """A worker's start-up look at its command plugins: loads them once (each failure is logged as it is skipped)
    and sums them up in one line, a warning naming the skipped ones if any. Returns the registry it built."""
    registry = build_registry(settings)
    skipped = [f"{name}: {error}" for name, error in registry.plugin_errors]
    if skipped:
        log.warning("command_plugins_skipped", loaded=registry.plugins_loaded, skipped=skipped)
    else:
        log.info("command_plugins", loaded=registry.plugins_loaded)
    return registry


def check_sandbox(settings: Settings) -> str | None:
    """An act worker's start-up check of the code sandbox (one trial run); logs what it found and returns why the
    sandbox cannot run here (None: it can, or it is off). Raises ``ConfigError`` under ``AUTOGPT_SANDBOX=required``
    when it cannot."""
    if settings.sandbox == "off":
        log.info("sandbox_off", detail="execute_python and execute_shell are not offered (AUTOGPT_SANDBOX=off)")
        return None
    reason = build_sandbox(settings).unavailable_reason()
    if reason is None:
        log.info("sandbox_ready", mode=settings.sandbox)
        return None
    if settings.sandbox == "required":
        raise ConfigError(
            f"AUTOGPT_SANDBOX=required, but this act worker cannot run the code sandbox: {reason}. It needs root "
            "with the capabilities to create namespaces, chroot and switch uid (see README, Sandbox); or set "
            "AUTOGPT_SANDBOX=off on every worker so the model is never offered code execution"
        )
    log.warning(
        "sandbox_unavailable",
        reason=reason,
        detail="execute_python and execute_shell are offered to the model but every run fails on this worker: "
        "give it the sandbox's privileges (README, Sandbox) or set AUTOGPT_SANDBOX=off on every worker",
    )
    return reason


def facts_reader(db: Database) -> Callable[[str], Facts | None]:
    """Task id -> its tenant and profile's name from the ledger (``TaskFacts`` reads a task it has not claimed)."""

    def read(task_id: str) -> Facts | None:
        with db.session() as s:
            row = s.execute(
                select(Task.tenant_id, TaskOptions.profile)
                .outerjoin(TaskOptions, TaskOptions.task_id == Task.id)
                .where(Task.id == uuid.UUID(task_id))
            ).one_or_none()
        return None if row is None else Facts(str(row[0]), row[1])

    return read


def get_runner() -> StepRunner:
    """The process's runner; a forked child builds its own (connections do not survive a fork)."""
    global _runner
    pid = os.getpid()
    if _runner is None or _runner[0] != pid:
        with _lock:
            if _runner is None or _runner[0] != pid:
                _runner = (pid, build_runner(get_settings()))
    return _runner[1]
