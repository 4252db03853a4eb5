"""Fixtures of the operators' tests: a RabbitMQ vhost of their own (so the e2e stack's workers, which may still
run in the same pytest session, never take our messages), and a stack started from the CLI with /metrics on
free ports, Flower, and the fake LLM.

The vhost is ``<test vhost>_ops``, created through the management API and deleted at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, Proc, free_port, wait_http

MGMT = "http://127.0.0.1:15672"
FLOWER_AUTH = ("ops", "ops-secret")


def _vhost_of(broker_url: str) -> str:
    path = urllib.parse.urlparse(broker_url).path
    return urllib.parse.unquote(path[1:]) if path.startswith("/") and path != "/" else "/"


@pytest.fixture(scope="session")
def ops_broker_url(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    base = _vhost_of(settings.broker_url)
    vhost = f"{base.strip('/') or 'root'}_ops"
    parsed = urllib.parse.urlparse(settings.broker_url)
    auth = (parsed.username or "guest", parsed.password or "guest")
    quoted = urllib.parse.quote(vhost, safe="")
    try:
        httpx.put(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=10).raise_for_status()
        httpx.put(
            f"{MGMT}/api/permissions/{quoted}/{auth[0]}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
            auth=auth,
            timeout=10,
        ).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"cannot create the RabbitMQ vhost {vhost} through the management API ({MGMT}): {exc}")
    netloc = parsed.netloc
    yield f"{parsed.scheme}://{netloc}/{quoted}"
    httpx.delete(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=30)


def ops_env(broker_url: str, fake_llm: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AUTOGPT_BROKER_URL=broker_url,
        OPENAI_BASE_URL=f"{fake_llm}/v1",
        OPENAI_API_KEY="test-key",
        AUTOGPT_LLM_MODEL="scripted-demo",
        AUTOGPT_METRICS_DIR=str(tmp / "metrics"),
        AUTOGPT_METRICS_HOST="127.0.0.1",
        AUTOGPT_FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
        AUTOGPT_THINK_CONCURRENCY="8",
        AUTOGPT_API_AUTH="disabled",  # the tenant and key machinery is tested elsewhere
        # and the rate limit too (tests/api): at the default 20 requests/s (burst 100) a test's 200 reads one after
        # another ran into it once the API answered them in 3.7 s
        AUTOGPT_API_RATE_PER_S="1000",
        AUTOGPT_API_RATE_BURST="1000",
        # every command through the act queue: these tests read the act worker's own series, logs and Flower rows
        # (the think worker running quick commands itself is tested in tests/e2e and tests/lifecycle)
        AUTOGPT_INLINE_ACT="false",
        # few connections per process: PostgreSQL is shared by every test stack on this machine
        AUTOGPT_DB_POOL_SIZE="2",
        AUTOGPT_DB_MAX_OVERFLOW="6",
        # production-like leases: these tests watch metrics and scaling, not crash recovery, on a machine
        # whose load can stall a heartbeat for seconds
        AUTOGPT_LEASE_TTL_S="30",
        AUTOGPT_LEASE_HEARTBEAT_S="5",
        AUTOGPT_SHUTDOWN_GRACE_S="45",
        # no long-term memory: these tests are about operations; it would load an embedding model per worker
        AUTOGPT_MEMORY_BACKEND="none",
        **extra,
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def migrate(env: dict[str, str]) -> None:
    """Schema at head and the vhost's queues declared and emptied (the CLI, as an operator would)."""
    done = subprocess.run(
        [sys.executable, "-m", "autogpt_workers.cli", "migrate"], env=env, cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    from kombu import Connection

    from autogpt_workers.contracts import ACT_QUEUE, DEAD_LETTER_QUEUE, THINK_QUEUE

    with Connection(env["AUTOGPT_BROKER_URL"]) as conn:
        for q in (THINK_QUEUE, ACT_QUEUE, DEAD_LETTER_QUEUE):
            conn.default_channel.queue_purge(q)


def wait_consumers(broker_url: str, queues: set[str], timeout_s: float = 60) -> None:
    """Until the management API shows a consumer on each queue (its statistics lag a few seconds)."""
    from autogpt_workers.queues import QueueReader

    reader = QueueReader.from_settings(broker_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            stats = reader.read(sorted(queues))
            if all(q in stats and stats[q].consumers > 0 for q in queues):
                return
            time.sleep(0.5)
    finally:
        reader.close()
    raise AssertionError(f"no consumer on {sorted(queues)} after {timeout_s}s")


class OpsStack:
    """API, think and act workers, reaper, dispatcher (each serving /metrics) and Flower, on the ops vhost."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.ports = {name: free_port() for name in ("api", "think", "act", "reaper", "dispatcher", "flower")}
        p = self.ports
        self.api_url = f"http://127.0.0.1:{p['api']}"
        self.flower_url = f"http://127.0.0.1:{p['flower']}"
        self.metrics_urls = {
            "api": f"{self.api_url}/metrics",
            "worker-think": f"http://127.0.0.1:{p['think']}/metrics",
            "worker-act": f"http://127.0.0.1:{p['act']}/metrics",
            "reaper": f"http://127.0.0.1:{p['reaper']}/metrics",
            "dispatcher": f"http://127.0.0.1:{p['dispatcher']}/metrics",
        }
        self.procs = {
            "api": Proc("ops-api", ["api", "--port", str(p["api"])], env),
            "think": Proc("ops-worker-think", ["worker", "--queue", "think", "--hostname", "think-ops@%h",
                                               "--metrics-port", str(p["think"])], env),
            "act": Proc("ops-worker-act", ["worker", "--queue", "act", "--concurrency", "2",
                                           "--hostname", "act-ops@%h", "--metrics-port", str(p["act"])], env),
            "reaper": Proc("ops-reaper", ["reaper", "--metrics-port", str(p["reaper"])], env),
            "dispatcher": Proc("ops-dispatcher", ["dispatcher", "--metrics-port", str(p["dispatcher"])], env),
            "flower": Proc("ops-flower", ["flower", "--port", str(p["flower"])], env),
        }

    def start(self) -> None:
        for proc in self.procs.values():
            proc.log_path.unlink(missing_ok=True)  # the logs of this run only (tests read them)
            proc.start()
        wait_http(f"{self.api_url}/healthz")
        for url in self.metrics_urls.values():
            wait_http(url)
        wait_http(f"{self.flower_url}/healthcheck")
        wait_consumers(self.env["AUTOGPT_BROKER_URL"], {"autogpt.think", "autogpt.act"})

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def submit(self, goal: str, **fields: Any) -> str:
        resp = httpx.post(f"{self.api_url}/v1/tasks", json={"goal": goal, **fields}, timeout=10)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def wait_terminal(self, task_ids: list[str], timeout_s: float = 300) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            for tid in task_ids:
                if status.get(tid) in ("completed", "failed", "cancelled"):
                    continue
                status[tid] = httpx.get(f"{self.api_url}/v1/tasks/{tid}", timeout=10).json()["status"]
            if all(s in ("completed", "failed", "cancelled") for s in status.values()) and len(status) == len(
                task_ids
            ):
                return status
            time.sleep(0.3)
        raise AssertionError(f"tasks not terminal after {timeout_s}s: {status}")


@pytest.fixture(scope="module")
def ops_stack(migrated, ops_broker_url, fake_llm, tmp_path_factory) -> Iterator[OpsStack]:  # type: ignore[no-untyped-def]
    env = ops_env(ops_broker_url, fake_llm, tmp_path_factory.mktemp("ops"))
    migrate(env)
    stack = OpsStack(env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
