"""The platform under test: the API, think and act workers and a reaper, started from the CLI exactly as an operator
would, plus a supervisor that restarts a worker that died (as Kubernetes' restart policy does).

Every process runs in its own process group and logs to ``<run dir>/logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


class Proc:
    def __init__(self, name: str, role: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.role = role  # api | think | act | reaper
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_offset = 0

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "autogpt_workers.cli", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def ready(self) -> bool:
        """A Celery worker logs "<name> ready." once it consumes (the reaper and the API: once started)."""
        if self.role not in ("think", "act"):
            return self.alive()
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            return b" ready." in f.read()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def children(self) -> list[int]:
        """The pool processes of a prefork worker."""
        pid = self.pid
        if pid is None:
            return []
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def stop(self, grace_s: float = 20) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


class Platform:
    def __init__(self, env: dict[str, str], log_dir: Path, role_env: dict[str, dict[str, str]] | None = None,
                 think_workers: int = 2, act_workers: int = 2, think_concurrency: int = 16,
                 act_concurrency: int = 2) -> None:
        from chaos.services import free_port

        role_env = role_env or {}
        think_env = {**env, **role_env.get("think", {})}
        act_env = {**env, **role_env.get("act", {})}
        self.env = env
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.procs: list[Proc] = [Proc("api", "api", ["api", "--port", str(self.api_port)], env, log_dir)]
        for i in range(think_workers):
            self.procs.append(Proc(f"think-{i}", "think", ["worker", "--queue", "think", "--concurrency",
                                   str(think_concurrency), "--hostname", f"chaos-think-{i}@%h"], think_env, log_dir))
        for i in range(act_workers):
            self.procs.append(Proc(f"act-{i}", "act", ["worker", "--queue", "act", "--concurrency",
                                   str(act_concurrency), "--hostname", f"chaos-act-{i}@%h"], act_env, log_dir))
        self.procs.append(Proc("reaper", "reaper", ["reaper"], env, log_dir))
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0

    def workers(self, role: str | None = None) -> list[Proc]:
        return [p for p in self.procs if p.role in (("think", "act") if role is None else (role,))]

    def start(self, timeout_s: float = 180) -> None:
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the API did not start within {timeout_s:.0f}s")
        while time.monotonic() < deadline and not all(p.ready() for p in self.procs):
            time.sleep(0.3)
        if not all(p.ready() for p in self.procs):
            late = [p.name for p in self.procs if not p.ready()]
            raise RuntimeError(f"{', '.join(late)} not ready within {timeout_s:.0f}s")
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        """Restart workers (and the reaper) that died: the orchestrator's restart policy."""
        while not self._stop.wait(0.5):
            for p in self.procs:
                if p.role != "api" and not p.alive():
                    p.start()
                    self.restarts += 1

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        threads = [threading.Thread(target=p.stop) for p in self.procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
