"""Shared fixtures: real PostgreSQL, RabbitMQ and Redis (a test database and a test vhost), the fake LLM server,
and real worker processes started from the CLI exactly as an operator would.

``make test`` exports AUTOGPT_DATABASE_URL / AUTOGPT_BROKER_URL for the test database and vhost; the defaults
below are the same, so ``pytest`` alone works too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DB = "postgresql+psycopg2://postgres@127.0.0.1:5432/autogpt_test"
TEST_BROKER = "amqp://guest:guest@127.0.0.1:5672/autogpt_test"
ARTIFACTS = REPO_ROOT / "artifacts"

# Short leases and quick rounds so recovery is visible within a test; every value passes the settings' checks.
TEST_ENV = {
    "AUTOGPT_ENV": "test",
    "AUTOGPT_DATABASE_URL": os.environ.get("AUTOGPT_DATABASE_URL", TEST_DB),
    "AUTOGPT_BROKER_URL": os.environ.get("AUTOGPT_BROKER_URL", TEST_BROKER),
    "AUTOGPT_LEASE_TTL_S": "4",
    "AUTOGPT_LEASE_HEARTBEAT_S": "1",
    "AUTOGPT_REAPER_INTERVAL_S": "1",
    "AUTOGPT_OUTBOX_GRACE_S": "2",
    "AUTOGPT_LLM_TIMEOUT_S": "10",
    "AUTOGPT_LLM_BACKOFF_MAX_S": "2",
    "AUTOGPT_LOG_JSON": "true",
    # the API's development mode (no key needed, tenant "default"); tests/api runs it with keys required
    "AUTOGPT_API_AUTH": "disabled",
}
os.environ.update(TEST_ENV)
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 45, auth: Any = None) -> None:
    """Until ``url`` answers 200; AssertionError after ``timeout_s``, with the last status or error."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=2, auth=auth)
            if resp.status_code == 200:
                return
            last = resp.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer 200 within {timeout_s}s (last: {last})")


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def services() -> None:
    wanted = (("PostgreSQL", 5432), ("RabbitMQ", 5672), ("Redis", 6379))
    missing = [name for name, port in wanted if not _reachable(port)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not reachable: run `make services` (make test does it for you)")


@pytest.fixture(scope="session")
def settings(services: None, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from autogpt_workers.config import Settings

    workspaces = tmp_path_factory.mktemp("workspaces")
    os.environ["AUTOGPT_WORKSPACE_ROOT"] = str(workspaces)
    # each run gets its own embedded memory file, unless the caller chose one
    os.environ.setdefault("AUTOGPT_MEMORY_PATH", str(tmp_path_factory.mktemp("memory") / "memory.sqlite3"))
    return Settings()


@pytest.fixture(scope="session")
def migrated(settings) -> None:  # type: ignore[no-untyped-def]
    """Schema at head (through Alembic), queues declared and emptied, tables emptied: a clean slate per run."""
    from sqlalchemy import create_engine, text

    from autogpt_workers.celery_app import app, declare_topology
    from autogpt_workers.contracts import ACT_QUEUE, DEAD_LETTER_QUEUE, THINK_QUEUE
    from autogpt_workers.store.migrate import upgrade

    upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE tasks, steps, artifacts, outbox CASCADE"))
    engine.dispose()
    declare_topology(app)
    with app.connection_for_write() as conn:
        for q in (THINK_QUEUE, ACT_QUEUE, DEAD_LETTER_QUEUE):
            conn.default_channel.queue_purge(q)


@pytest.fixture(scope="session")
def db(migrated, settings):  # type: ignore[no-untyped-def]
    from autogpt_workers.store.db import Database

    database = Database.from_url(settings.database_url, pool_size=4, max_overflow=4)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[str]:
    from tests.fake_llm.client import start_fake_llm

    server = start_fake_llm()
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine's proxy variables would give the LLM clients httpx's transport (ours speaks to no proxy); a
    subprocess started in the test inherits the environment without them."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def llm(fake_llm: str):  # type: ignore[no-untyped-def]
    from tests.fake_llm.client import FakeLLMControl

    control = FakeLLMControl(fake_llm)
    control.reset()
    return control


class Proc:
    """A platform process started from the CLI, in its own process group, logging to artifacts/logs. It gets
    SIGTERM if the pytest process dies (``terminate_with_parent``): a session killed from outside must not leave
    workers consuming the test vhost's wake-ups, where the next session's tests would lose them. Start it from
    the main thread (the signal follows the starting thread's death)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.log_path = ARTIFACTS / "logs" / f"{name}.log"

    def start(self) -> Proc:
        from autogpt_workers.autoscale import terminate_with_parent

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "autogpt_workers.cli", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=terminate_with_parent,
        )
        return self

    def kill(self, sig: int = 9) -> None:
        """Signal the whole process group (a prefork worker's children too)."""
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, 15)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, 9)
            self.popen.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


class Stack:
    def __init__(self, env: dict[str, str], api_port: int) -> None:
        self.env = env
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.procs = {
            "api": Proc("api", ["api", "--port", str(api_port)], env),
            "think": Proc("worker-think", ["worker", "--queue", "think", "--concurrency", "20",
                                           "--hostname", "think-test@%h"], env),
            "act": Proc("worker-act", ["worker", "--queue", "act", "--concurrency", "2",
                                       "--hostname", "act-test@%h"], env),
            "reaper": Proc("reaper", ["reaper"], env),
        }

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]


@pytest.fixture(scope="session")
def stack(migrated, settings, fake_llm: str) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """API, think worker, act worker and reaper as real processes on the test database and vhost."""
    import httpx

    env = dict(os.environ)
    env.update(OPENAI_BASE_URL=f"{fake_llm}/v1", OPENAI_API_KEY="test-key", AUTOGPT_LLM_MODEL="scripted-demo")
    st = Stack(env, free_port())
    for proc in st.procs.values():
        proc.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{st.api_url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        pytest.fail(f"API did not start; see {st['api'].log_path}")
    try:
        yield st
    finally:
        for proc in st.procs.values():
            proc.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's S3-compatible server (PyPI ``moto[server]``) as a local process on a free port; its endpoint URL."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
