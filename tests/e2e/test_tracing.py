"""Traces end to end: the API and real worker processes export to an OTLP/HTTP receiver (``otlp_receiver``, the
stand-in for a collector), and each task is one trace: the API's request and submit spans, every step's think and
act spans from the worker processes, and the LLM calls under the think spans.

Two paths of the trace context are covered: a task admitted at once (its first wake-up carries the
``traceparent`` header from the API) and one held by the tenant's running-task cap and admitted later by the
dispatcher (a wake-up with no header: the workers read the context stored with the task).

The stack runs on a database and a RabbitMQ vhost of its own (``<test db>_otel``, ``<test vhost>_otel``), so no
other worker of the pytest session takes its messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from tests.conftest import REPO_ROOT, Proc, free_port
from tests.e2e.otlp_receiver import OTLPReceiver, ReceivedSpan

MGMT = "http://127.0.0.1:15672"
MODEL = "scripted-demo"


@pytest.fixture(scope="module")
def otel_urls(settings) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(database URL, broker URL) of this module's own database and vhost, migrated."""
    base, _, name = settings.database_url.rpartition("/")
    db_url = f"{base}/{name.split('?')[0]}_otel"
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db_url.rpartition("/")[2]}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{db_url.rpartition("/")[2]}"'))
    admin.dispose()
    parsed = urllib.parse.urlparse(settings.broker_url)
    vhost = f"{urllib.parse.unquote(parsed.path[1:]) if parsed.path not in ('', '/') else 'root'}_otel"
    quoted = urllib.parse.quote(vhost, safe="")
    auth = (parsed.username or "guest", parsed.password or "guest")
    httpx.put(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=10).raise_for_status()
    httpx.put(
        f"{MGMT}/api/permissions/{quoted}/{auth[0]}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=auth,
        timeout=10,
    ).raise_for_status()
    urls = (db_url, f"{parsed.scheme}://{parsed.netloc}/{quoted}")
    env = {**os.environ, "AUTOGPT_DATABASE_URL": urls[0], "AUTOGPT_BROKER_URL": urls[1]}
    done = subprocess.run(
        [sys.executable, "-m", "autogpt_workers.cli", "migrate"], env=env, cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield urls
    finally:
        httpx.delete(f"{MGMT}/api/vhosts/{quoted}", auth=auth, timeout=30)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def traced_stack(otel_urls, receiver, fake_llm, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """API, think and act workers, dispatcher and reaper, exporting spans to the receiver. Yields the API URL."""
    env = dict(os.environ)
    env.update(
        AUTOGPT_DATABASE_URL=otel_urls[0],
        AUTOGPT_BROKER_URL=otel_urls[1],
        OPENAI_BASE_URL=f"{fake_llm}/v1",
        OPENAI_API_KEY="test-key",
        AUTOGPT_LLM_MODEL=MODEL,
        AUTOGPT_API_AUTH="disabled",
        AUTOGPT_MEMORY_BACKEND="none",
        AUTOGPT_METRICS_DIR=str(tmp_path_factory.mktemp("metrics")),
        AUTOGPT_DB_POOL_SIZE="2",
        AUTOGPT_DB_MAX_OVERFLOW="4",
        # production-like leases: no lease lapses on a loaded machine (a redelivery is harmless, but noise here)
        AUTOGPT_LEASE_TTL_S="30",
        AUTOGPT_LEASE_HEARTBEAT_S="5",
        AUTOGPT_TENANT_MAX_RUNNING="1",  # the second task waits for the dispatcher
        AUTOGPT_DISPATCHER_INTERVAL_S="0.2",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",  # export within a fraction of a second
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    env.pop("OTEL_SDK_DISABLED", None)
    port = free_port()
    procs = [
        Proc("otel-api", ["api", "--port", str(port)], env),
        Proc("otel-think", ["worker", "--queue", "think", "--concurrency", "4", "--hostname", "think-otel@%h"], env),
        Proc("otel-act", ["worker", "--queue", "act", "--concurrency", "2", "--hostname", "act-otel@%h"], env),
        Proc("otel-dispatcher", ["dispatcher"], env),
        Proc("otel-reaper", ["reaper"], env),
    ]
    for proc in procs:
        proc.start()
    api_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:
            try:
                if httpx.get(f"{api_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the API did not start; see {procs[0].log_path}"
            time.sleep(0.2)
        yield api_url
    finally:
        for proc in procs:
            proc.stop()


def _wait_completed(api_url: str, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = httpx.get(f"{api_url}/v1/tasks/{task_id}", timeout=10).json()
        if task["status"] in ("completed", "failed", "cancelled"):
            assert task["status"] == "completed", task
            return task
        assert time.monotonic() < deadline, f"task {task_id} not finished after {timeout_s}s: {task}"
        time.sleep(0.2)


def _of_task(spans: list[ReceivedSpan], task_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.attributes.get("autogpt.task_id") == task_id]


def _complete_trace(spans: list[ReceivedSpan], task_id: str, steps: int) -> bool:
    mine = _of_task(spans, task_id)
    proposed = [s for s in mine if s.name == "autogpt.think" and s.attributes.get("autogpt.outcome") == "proposed"]
    acted = [s for s in mine if s.name == "autogpt.act" and s.attributes.get("autogpt.outcome") in
             ("committed", "finished")]
    llm_parents = {s.parent_span_id for s in spans if s.name == f"chat {MODEL}"}
    return (
        any(s.name == "autogpt.submit" for s in mine)
        and len(proposed) == steps == len(acted)
        and all(s.span_id in llm_parents for s in proposed)
    )


def _check_trace(spans: list[ReceivedSpan], task_id: str, steps: int, stored_traceparent: str | None) -> str:
    """Assert the task's trace; returns its trace id."""
    by_id = {s.span_id: s for s in spans}
    (submit,) = [s for s in _of_task(spans, task_id) if s.name == "autogpt.submit"]
    trace_id = submit.trace_id
    assert submit.service == "autogpt-api" and submit.attributes["autogpt.tenant"] == "default"
    request = by_id[submit.parent_span_id]  # the FastAPI instrumentation's server span is the root
    assert (request.name, request.kind, request.service) == ("POST /v1/tasks", "SERVER", "autogpt-api")
    assert request.trace_id == trace_id and request.parent_span_id == ""
    # the context stored with the task is the submit span's
    assert stored_traceparent is not None
    version, stored_trace, stored_parent, flags = stored_traceparent.split("-")
    assert (version, stored_trace, stored_parent) == ("00", trace_id, submit.span_id)
    assert int(flags, 16) & 1, "sampled"

    phases = [s for s in _of_task(spans, task_id) if s.name in ("autogpt.think", "autogpt.act")]
    for s in phases:  # every delivery's span, executed or skipped, hangs under the submit span
        assert (s.trace_id, s.parent_span_id, s.kind) == (trace_id, submit.span_id, "CONSUMER"), s
        assert s.attributes["autogpt.tenant"] == "default"
        assert s.attributes["autogpt.phase"] == s.name.removeprefix("autogpt.")
        # write_file and finish run inline (``runs_inline``): their act phase is the think worker's too
        assert s.service == "autogpt-worker-think"
    for step in range(steps):
        think = [s for s in phases if s.name == "autogpt.think" and s.attributes["autogpt.step_index"] == step
                 and s.attributes["autogpt.outcome"] == "proposed"]
        act = [s for s in phases if s.name == "autogpt.act" and s.attributes["autogpt.step_index"] == step
               and s.attributes["autogpt.outcome"] in ("committed", "finished")]
        assert len(think) == 1 and len(act) == 1, (step, phases)
        assert act[0].attributes["autogpt.outcome"] == ("finished" if step == steps - 1 else "committed")
        # the LLM call is the think span's child, with the GenAI attributes
        (call,) = [s for s in spans if s.name == f"chat {MODEL}" and s.parent_span_id == think[0].span_id]
        assert (call.trace_id, call.kind, call.service) == (trace_id, "CLIENT", "autogpt-worker-think")
        assert call.attributes["gen_ai.operation.name"] == "chat"
        assert call.attributes["gen_ai.request.model"] == MODEL
        assert call.attributes["gen_ai.usage.input_tokens"] > 0
        assert call.attributes["gen_ai.usage.output_tokens"] > 0
    # nothing of this task leaked into another trace
    assert {s.trace_id for s in _of_task(spans, task_id)} == {trace_id}
    return trace_id


def test_a_task_is_one_trace_from_the_api_through_the_workers_to_the_llm(  # type: ignore[no-untyped-def]
    traced_stack, receiver, llm, otel_urls
) -> None:
    llm.register_script("traced-slow", [
        {"tool": "write_file", "arguments": {"path": "a.txt", "content": "a"}, "latency_s": 2.0},
        {"tool": "finish", "arguments": {"reason": "done"}},
    ])
    llm.register_script("traced", [
        {"tool": "write_file", "arguments": {"path": "b.txt", "content": "b"}},
        {"tool": "finish", "arguments": {"reason": "done"}},
    ])
    first = httpx.post(f"{traced_stack}/v1/tasks", json={"goal": "Traced [[script:traced-slow]]"}, timeout=10)
    second = httpx.post(f"{traced_stack}/v1/tasks", json={"goal": "Traced, admitted later [[script:traced]]"},
                        timeout=10)
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    admitted_at_once, admitted_later = first.json()["id"], second.json()["id"]
    for task_id in (admitted_at_once, admitted_later):
        _wait_completed(traced_stack, task_id)

    deadline = time.monotonic() + 30
    while not all(_complete_trace(receiver.snapshot(), t, 2) for t in (admitted_at_once, admitted_later)):
        assert time.monotonic() < deadline, f"spans missing after 30s; got {len(receiver.snapshot())} spans"
        time.sleep(0.3)
    spans = receiver.snapshot()

    from autogpt_workers.store.db import Database
    from autogpt_workers.store.models import Task, TaskEvent

    db = Database.from_url(otel_urls[0], pool_size=1, max_overflow=0)
    try:
        with db.session() as s:
            stored = dict(s.execute(select(Task.id, Task.traceparent)).all())
            waited = set(s.scalars(select(TaskEvent.task_id).where(TaskEvent.kind == "task.waiting")))
    finally:
        db.dispose()
    # the second task really went through the dispatcher (its first wake-up carried no trace header)
    assert uuid.UUID(admitted_later) in waited and uuid.UUID(admitted_at_once) not in waited

    traces = {
        _check_trace(spans, t, 2, stored[uuid.UUID(t)]) for t in (admitted_at_once, admitted_later)
    }
    assert len(traces) == 2, "each task is its own trace"
