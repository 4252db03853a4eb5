"""Runs scenarios: private services once, then for each run a clean ledger and broker, a fresh platform with the
scenario's settings, the load, the faults, the wait for every task to end, and the checker."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, text

from autogpt_workers.store.db import Database
from autogpt_workers.store.models import Step, Task
from chaos.checker import Check, Result, RunData, check
from chaos.journal import Journal
from chaos.load import Submitted, submit_all
from chaos.platform import REPO_ROOT, Platform
from chaos.recovery import RecoveryWatcher
from chaos.scenarios import Scenario
from chaos.services import PrivateServices

TERMINAL = ("completed", "failed", "cancelled")
MAX_PAUSE_S = 45.0  # above the re-drive time (AUTOGPT_REDRIVE_AFTER_S below), the slowest recovery there is

# Short leases and quick reaper rounds so recovery is visible within a run; every value passes the settings' checks.
BASE_ENV = {
    "AUTOGPT_ENV": "test",
    "AUTOGPT_LEASE_TTL_S": "4",
    "AUTOGPT_LEASE_HEARTBEAT_S": "1",
    "AUTOGPT_REAPER_INTERVAL_S": "1",
    "AUTOGPT_OUTBOX_GRACE_S": "2",
    "AUTOGPT_REDRIVE_AFTER_S": "30",
    # the reaper deletes published wake-ups of closed steps 5 s old, every 5 s: under every fault below
    "AUTOGPT_OUTBOX_RETENTION_S": "5",
    "AUTOGPT_MAX_DELIVERIES": "5",
    "AUTOGPT_LLM_TIMEOUT_S": "6",
    "AUTOGPT_LLM_BACKOFF_MAX_S": "1",
    "AUTOGPT_LLM_MAX_ATTEMPTS": "4",
    "AUTOGPT_SHUTDOWN_GRACE_S": "5",
    "AUTOGPT_API_AUTH": "disabled",
    "AUTOGPT_API_RATE_PER_S": "100000",
    "AUTOGPT_API_RATE_BURST": "100000",
    "AUTOGPT_LOG_JSON": "true",
    "AUTOGPT_METRICS_PORT": "0",
    "AUTOGPT_LLM_MODEL": "scripted-demo",
    "OPENAI_API_KEY": "chaos",
    # long-term memory stays on (Redis holds short-term memory and the embedding cache), embedded by the fake
    # LLM's /v1/embeddings: the local model would spend the CPU the load needs, and reload at every restart
    "AUTOGPT_MEMORY_BACKEND": "embedded",
    "AUTOGPT_MEMORY_EMBEDDER": "openai",
}


@dataclasses.dataclass
class Sizes:
    tasks: int = 50
    steps: int = 10
    settle_s: float = 600  # how long every task has to end once submitted


@dataclasses.dataclass
class RunContext:
    """What a scenario's injector and checks see of the run."""

    suite: Suite
    platform: Platform
    journal: Journal
    env: dict[str, str]
    submitted: list[Submitted] = dataclasses.field(default_factory=list)
    llm_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    injected: int = 0

    @property
    def services(self) -> PrivateServices:
        return self.suite.services

    @property
    def broker_url(self) -> str:
        return self.services.rabbit.url

    @property
    def max_deliveries(self) -> int:
        return int(self.env["AUTOGPT_MAX_DELIVERIES"])

    def progress(self) -> float:
        """The share of the load's steps committed so far (0 while the database is away)."""
        want = len(self.submitted) * self.suite.sizes.steps or self.suite.sizes.tasks * self.suite.sizes.steps
        try:
            with self.suite.db.session() as s:
                done = s.scalar(select(func.count()).select_from(Step).where(Step.committed_at.is_not(None)))
        except Exception:  # the database is restarting (a scenario)
            return 0.0
        return int(done or 0) / max(1, want)

    def task_of(self, index: int) -> uuid.UUID | None:
        return next((s.task_id for s in self.submitted if s.index == index), None)

    def max_step_deliveries(self, task_id: uuid.UUID | None) -> int:
        if task_id is None:
            return 0
        with self.suite.db.session() as s:
            return int(s.scalar(select(func.max(Step.deliveries)).where(Step.task_id == task_id)) or 0)

    def log_count(self, role: str, needle: str) -> int:
        return sum(
            p.log_path.read_text(errors="replace").count(needle) for p in self.platform.procs if p.role == role
        )


class Suite:
    def __init__(
        self, work_dir: Path, sizes: Sizes, keep_services: bool = False, settings: dict[str, str] | None = None
    ) -> None:
        self.work_dir = work_dir
        self.sizes = sizes
        self.settings = settings or {}  # ``--set``: for every platform process, under the scenario's own
        self.services = PrivateServices(keep=keep_services)
        self.db: Database
        self.llm: Any = None
        self.llm_url = ""

    def __enter__(self) -> Suite:
        from tests.fake_llm.client import FakeLLMControl, start_fake_llm

        self.work_dir.mkdir(parents=True, exist_ok=True)
        print(f"chaos: starting private PostgreSQL, RabbitMQ and Redis under {self.services.root}", flush=True)
        self.services.start()
        try:
            env = self._env({})
            migrated = subprocess.run([sys.executable, "-m", "autogpt_workers.cli", "migrate"], env=env,
                                      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
            if migrated.returncode != 0:
                raise RuntimeError(f"migrate failed: {migrated.stdout}{migrated.stderr}")
            self.db = Database.from_url(self.services.postgres.url, pool_size=4, max_overflow=4)
            self._llm_server = start_fake_llm()
            self.llm_url = self._llm_server.base_url
            self.llm = FakeLLMControl(self.llm_url, timeout=60)
        except BaseException:
            self.services.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.llm is not None:
            self.llm.close()
            self._llm_server.stop()
        if hasattr(self, "db"):
            self.db.dispose()
        self.services.stop()

    def _env(self, extra: dict[str, str], run_dir: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOGPT_", "OPENAI_", "PROMETHEUS_"))}
        env.update(BASE_ENV)
        env.update(self.settings)
        env.update(self.services.urls)
        if self.llm_url:
            env["OPENAI_BASE_URL"] = f"{self.llm_url}/v1"
        if run_dir is not None:
            env["AUTOGPT_WORKSPACE_ROOT"] = str(run_dir / "workspaces")
            env["AUTOGPT_ARTIFACT_SCRATCH_DIR"] = str(run_dir / "scratch")
            env["AUTOGPT_METRICS_DIR"] = str(run_dir / "metrics")
            env["AUTOGPT_CHAOS_JOURNAL"] = str(run_dir / "journal.jsonl")
            env["AUTOGPT_MEMORY_PATH"] = str(run_dir / "memory.sqlite3")
        env.update(extra)
        return env

    def _reset(self) -> None:
        """A clean slate: empty ledger, empty queues, a fresh LLM log."""
        from kombu import Connection

        from autogpt_workers.contracts import ACT_QUEUE, DEAD_LETTER_QUEUE, THINK_QUEUE

        with self.db.transaction() as s:
            s.execute(text("TRUNCATE tasks CASCADE"))
        with Connection(self.services.rabbit.url) as conn:
            for q in (THINK_QUEUE, ACT_QUEUE, DEAD_LETTER_QUEUE):
                conn.default_channel.queue_purge(q)
        self.llm.reset()

    def run(self, scenario: Scenario, run_no: int) -> Result:
        run_dir = self.work_dir / f"{scenario.name}-{run_no}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._reset()
        self.llm.set_config(**{"latency_s": 0.2, "latency_jitter_s": 0.3, **scenario.llm_config})
        env = self._env(scenario.env, run_dir)
        journal = Journal(run_dir / "journal.jsonl")
        platform = Platform(env, run_dir / "logs", role_env=scenario.role_env)
        ctx = RunContext(self, platform, journal, env)
        watcher = RecoveryWatcher(self.db, journal)
        run_id = uuid.uuid4().hex[:8]
        print(f"chaos: {scenario.name} #{run_no}: {scenario.summary} (logs in {run_dir})", flush=True)
        try:
            platform.start()
        except Exception as exc:  # reported as a failed run; the suite goes on with the next one
            platform.stop()
            failed = Check("platform started", str(exc)[:200], False)
            return check(self.db, RunData(scenario.name, run_no, [], self.sizes.steps, {}, [], [], [], [], 0,
                                          float(env["AUTOGPT_LEASE_TTL_S"]), extra=[failed]))
        started = time.monotonic()
        watcher.start()
        stop = threading.Event()
        injector = None
        if scenario.inject is not None:
            inject = scenario.inject

            def run_injector() -> None:
                try:
                    ctx.injected = inject(ctx, stop)
                except Exception as exc:  # reported by the count check; the run goes on
                    print(f"chaos: {scenario.name}: injector failed: {exc}", flush=True)

            injector = threading.Thread(target=run_injector, name="injector", daemon=True)
            injector.start()
        try:
            ctx.submitted = submit_all(platform.api_url, run_id, self.sizes.tasks, self.sizes.steps,
                                       markers=scenario.markers)
            self._settle([s.task_id for s in ctx.submitted if s.task_id is not None], injector, stop)
        finally:
            stop.set()
            if injector is not None:
                injector.join(timeout=120)
            watcher.stop(drain_s=15)
            duration = time.monotonic() - started
            platform.stop()
        ctx.llm_log = self._llm_log()
        (run_dir / "llm_log.json").write_text(json.dumps(ctx.llm_log))
        interrupted = [[ts, str(t), i, phase] for ts, t, i, phase in watcher.interrupted]
        (run_dir / "interrupted.json").write_text(json.dumps(interrupted))
        extra: list[Check] = scenario.checks(ctx) if scenario.checks is not None else []
        if platform.restarts:
            extra.append(Check("workers restarted by the supervisor", str(platform.restarts), True))
        # over the tasks expected to complete: a poison or a hung task left alone at the end pauses by design
        extra.append(self._pause_check(
            [s.task_id for s in ctx.submitted if s.task_id is not None and s.index not in scenario.expect_failed]
        ))
        data = RunData(
            scenario=scenario.name,
            run=run_no,
            submitted=ctx.submitted,
            expected_steps=self.sizes.steps,
            expected_failures={t: why for i, why in scenario.expect_failed.items() if (t := ctx.task_of(i))},
            llm_log=ctx.llm_log,
            journal=journal.records(),
            interrupted=[(ts, str(t), i, phase) for ts, t, i, phase in watcher.interrupted],
            recovery_s=watcher.samples(),
            unrecovered=watcher.unrecovered(),
            lease_ttl_s=float(env["AUTOGPT_LEASE_TTL_S"]),
            extra=extra,
            duration_s=duration,
        )
        return check(self.db, data)

    def _settle(self, task_ids: list[uuid.UUID], injector: threading.Thread | None, stop: threading.Event) -> None:
        """Wait until every task ended (and the injector finished its plan), or the settle time ran out."""
        deadline = time.monotonic() + self.sizes.settle_s
        while time.monotonic() < deadline:
            try:
                with self.db.session() as s:
                    open_ = s.scalar(
                        select(func.count()).where(Task.id.in_(task_ids), Task.status.not_in(TERMINAL))
                    )
            except Exception:  # the database is restarting (a scenario)
                open_ = -1
            injecting = injector is not None and injector.is_alive()
            if open_ == 0 and not injecting:
                return
            if open_ == 0 and injecting:
                stop.set()  # the load is done: the injector stops where it is
            time.sleep(1.0)

    def _pause_check(self, task_ids: list[uuid.UUID]) -> Check:
        """The longest time the load stood still: between the first commit of ``task_ids`` and their last one, no
        two consecutive step commits may lie further apart than ``MAX_PAUSE_S``. Every fault here recovers within a
        lease (4 s) or a re-drive (30 s); a longer pause is a platform that hung, as the workers did for 90 s after a
        broker restart before the prefetch fix (see ``celery_app``)."""
        query = (
            select(Step.committed_at)
            .where(Step.task_id.in_(task_ids), Step.committed_at.is_not(None))
            .order_by(Step.committed_at)
        )
        with self.db.session() as s:
            stamps: list[datetime] = [t for t in s.scalars(query) if t is not None]
        pause = max(((b - a).total_seconds() for a, b in itertools.pairwise(stamps)), default=0.0)
        return Check("longest pause between two step commits", f"{pause:.1f} s (limit {MAX_PAUSE_S:.0f} s)",
                     pause <= MAX_PAUSE_S)

    def _llm_log(self) -> list[dict[str, Any]]:
        for _ in range(5):
            try:
                return list(self.llm.log())
            except httpx.HTTPError:
                time.sleep(1)
        return []
