"""The platform under test, started as an operator would: the fake LLM, then ``autogpt-workers api``,
``worker --queue think``, ``worker --queue act`` and ``reaper`` as separate processes on the bench's database and
vhost. Workers are started and stopped per figure; the API and the fake LLM live for the whole run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

import httpx

from bench import httpload
from bench.env import REPO_ROOT, BenchEnv, Sql
from bench.procs import Proc, wait_until
from tests.fake_llm.client import FakeLLMControl, FakeLLMServer, free_port, start_fake_llm

CLI = [sys.executable, "-m", "autogpt_workers.cli"]
SUBMIT_CLIENTS = 32
BENCH_TENANT = "bench"


def steps_goal(steps: int, label: str = "bench") -> str:
    """A goal the fake LLM answers with ``steps - 1`` ``write_file`` calls and then ``finish``."""
    return f"{label}: write one file per step, then finish [[steps:{steps}]]"


class Platform:
    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.llm_port = free_port()
        self.fake: FakeLLMServer | None = None
        self.llm: FakeLLMControl | None = None
        self.api: Proc | None = None
        self.api_url = ""
        self.workers: dict[str, Proc] = {}
        self.api_headers: dict[str, str] = {}

    # -- processes -----------------------------------------------------------------------------------------------

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.llm_port}/v1"

    def _env(self) -> dict[str, str]:
        return self.env.process_env(
            OPENAI_BASE_URL=self.openai_base_url, OPENAI_API_KEY="bench", AUTOGPT_LLM_MODEL="scripted-demo"
        )

    def _proc(self, name: str, args: list[str]) -> Proc:
        return Proc(name, [*CLI, *args], self._env(), REPO_ROOT, self.env.log_dir)

    def start_llm(self) -> FakeLLMControl:
        self.fake = start_fake_llm(self.llm_port)
        self.llm = FakeLLMControl(self.fake.base_url, timeout=30)
        return self.llm

    def set_llm_latency(self, seconds: float) -> None:
        assert self.llm is not None
        self.llm.reset()  # also empties its request log, which would grow for the whole run
        self.llm.set_config(latency_s=seconds, latency_jitter_s=0.0)

    def ensure_api_key(self) -> None:
        """Authenticate as the ``bench`` tenant: ``AUTOGPT_BENCH_API_KEY``, else a key made with
        ``autogpt-workers keys create`` whose rate limit the bench cannot reach (the limiter still runs)."""
        key = os.environ.get("AUTOGPT_BENCH_API_KEY")
        if not key:
            made = subprocess.run(
                [*CLI, "keys", "create", "--tenant", BENCH_TENANT, "--name", "make bench",
                 "--rate", "1000000", "--burst", "1000000"],
                env=self._env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if made.returncode != 0:
                if "No such command" in made.stderr:
                    return  # a platform without API keys
                raise RuntimeError(f"autogpt-workers keys create failed:\n{made.stdout}{made.stderr}")
            key = made.stdout.strip().splitlines()[-1].strip()
        self.api_headers["Authorization"] = f"Bearer {key}"

    def spawn_api(self, workers: int = 1) -> None:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.api = self._proc("api", ["api", "--port", str(port), "--workers", str(workers)]).start()

    def wait_api(self) -> None:
        def healthy() -> bool:
            assert self.api is not None
            if not self.api.alive():
                raise RuntimeError(f"the API exited:\n{self.api.tail()}")
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, 0.2, "the API's /healthz")

    def start_workers(
        self, think_concurrency: int | None, act_concurrency: int | None, think_workers: int | None = None
    ) -> None:
        """Think workers (gevent by default; one process per core unless ``think_workers`` says otherwise: a process's
        Python runs on one core at a time), act worker (prefork), reaper (and dispatcher, where the platform has
        one), as fresh processes. The think processes are ``think``, ``think-2``, ...; ``think_concurrency`` is
        shared out among them."""
        self.stop_workers()
        tag = uuid.uuid4().hex[:6]
        n = think_workers or os.cpu_count() or 1
        act = ["worker", "--queue", "act", "--hostname", f"act-bench-{tag}@%h"]
        if act_concurrency:
            act += ["--concurrency", str(act_concurrency)]
        self.workers = {}
        # the act worker, reaper and dispatcher first, and the think workers once the act worker is ready: a figure
        # that starts measuring at the first committed step (cpu) must not count the act worker's start-up (its
        # imports and pool children, about a second of CPU) as the steps' cost, nor have it slow the think workers
        self.workers["act"] = self._proc("worker-act", act).start()
        self.workers["reaper"] = self._proc("reaper", ["reaper"]).start()
        if importlib.util.find_spec("autogpt_workers.dispatcher") is not None:  # admission and webhooks, if any
            self.workers["dispatcher"] = self._proc("dispatcher", ["dispatcher"]).start()
        self._wait_ready(self.workers["act"], f"act-bench-{tag}@")
        for i in range(1, n + 1):
            think = ["worker", "--queue", "think", "--hostname", f"think-bench-{tag}-{i}@%h"]
            if think_concurrency:
                think += ["--concurrency", str(max(1, think_concurrency // n))]
            name = "think" if i == 1 else f"think-{i}"
            self.workers[name] = self._proc(f"worker-{name}", think).start()

    @staticmethod
    def _wait_ready(proc: Proc, hostname: str, timeout_s: float = 60.0) -> None:
        """Until Celery logs ``<hostname> ready.`` in ``proc``'s log (the log is appended to across starts)."""

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while starting; see {proc.log_path}")
            try:
                text = proc.log_path.read_text(errors="replace")
            except OSError:
                return False
            return any(hostname in line and " ready." in line for line in text.splitlines())

        try:
            wait_until(ready, timeout_s, 0.1, f"{proc.name} ready")
        except TimeoutError:  # e.g. a log level above INFO hides the line: go on, the figures only start later
            print(f"bench: {proc.name} did not log \"ready\" within {timeout_s:.0f}s; going on", file=sys.stderr)

    def think_workers(self) -> list[Proc]:
        return [proc for name, proc in self.workers.items() if name == "think" or name.startswith("think-")]

    def check_workers(self) -> None:
        for name, proc in self.workers.items():
            if not proc.alive():
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")

    def stop_workers(self, grace_s: float = 20.0) -> None:
        for proc in self.workers.values():
            proc.stop(grace_s)
        self.workers = {}

    def stop(self) -> None:
        self.stop_workers()
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None
        if self.fake is not None:
            self.fake.stop()
            self.fake = None

    def sessions(self) -> list[int]:
        """Session ids of every platform process (API, workers and their children, reaper)."""
        procs = [self.api, *self.workers.values()]
        return [p.pid for p in procs if p is not None and p.alive()]

    # -- tasks ---------------------------------------------------------------------------------------------------

    def submit(self, goals: Sequence[str], max_steps: int) -> list[str]:
        """Submit one task per goal through the API (up to 32 at a time); returns their ids."""
        body = [{"goal": g, "budget": {"max_steps": max_steps}} for g in goals]
        result = httpload.load(
            self.api_url,
            lambda i: ("POST", "/v1/tasks", body[i]),
            clients=min(SUBMIT_CLIENTS, len(goals)),
            total=len(goals),
            headers=self.api_headers,
            keep_bodies=True,
        )
        if result.ok != len(goals):
            raise RuntimeError(f"submitted {result.ok} of {len(goals)} tasks: {result.errors[:3]}")
        return [str(b["id"]) for b in result.bodies]

    def warm_up(self, db: Sql, steps: int = 2, timeout_s: float = 90) -> None:
        """Run one small task to completion: the workers are up, connected and past their lazy imports."""
        [task_id] = self.submit([steps_goal(steps, "warm-up")], max_steps=steps + 1)
        self.wait_done(db, [task_id], timeout_s)

    def wait_done(self, db: Sql, task_ids: Sequence[str], timeout_s: float) -> None:
        ids = [uuid.UUID(t) for t in task_ids]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_workers()
            left = db.scalar(
                "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND status IN ('queued', 'running')",
                ([str(i) for i in ids],),
            )
            if left == 0:
                failed = db.scalar(
                    "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND status <> 'completed'",
                    ([str(i) for i in ids],),
                )
                if failed:
                    raise RuntimeError(f"{failed} of {len(ids)} bench tasks did not complete (see the task errors)")
                return
            time.sleep(0.1)
        raise TimeoutError(f"{len(ids)} tasks not done after {timeout_s:.0f}s")
