"""The platform's series, read from the /metrics of real processes (API, think worker, act worker, reaper,
dispatcher) after real tasks ran through RabbitMQ and PostgreSQL against the fake LLM; and the workers' log lines,
every one a JSON object."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.ops.helpers import UUID_RE, label_values, scrape, value

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ran(ops_stack, fake_llm):  # type: ignore[no-untyped-def]
    """Three 3-step tasks, and one whose first LLM call is answered 429 once (a retry)."""
    from tests.fake_llm.client import FakeLLMControl

    llm = FakeLLMControl(fake_llm)
    llm.register_script(
        "ops-429",
        [
            {"tool": "write_file", "arguments": {"path": "a.txt", "content": "a"}, "faults": ["429"],
             "retry_after": 0.1},
            {"tool": "finish", "arguments": {"reason": "done"}},
        ],
    )
    ids = [ops_stack.submit(f"metrics run {i} [[steps:3]]") for i in range(3)]
    ids.append(ops_stack.submit("retry once [[script:ops-429]]"))
    httpx.get(f"{ops_stack.api_url}/v1/tasks/{ids[0]}/steps", timeout=10)
    httpx.get(f"{ops_stack.api_url}/v1/no/such/path/{ids[0]}", timeout=10)
    status = ops_stack.wait_terminal(ids)
    assert set(status.values()) == {"completed"}, status
    return ids


def test_think_worker_counts_llm_use_and_steps(ops_stack, ran) -> None:  # type: ignore[no-untyped-def]
    text = scrape(ops_stack.metrics_urls["worker-think"])
    assert value(text, "autogpt_steps_total", phase="think", result="proposed") >= 11  # 3 x 3 + 2
    assert value(text, "autogpt_step_deliveries_total", phase="think", outcome="claimed") >= 11
    assert value(text, "autogpt_llm_tokens_total", model="scripted-demo", kind="prompt") > 0
    assert value(text, "autogpt_llm_tokens_total", model="scripted-demo", kind="completion") > 0
    assert value(text, "autogpt_llm_cost_usd_total", model="scripted-demo") > 0
    assert value(text, "autogpt_llm_latency_seconds_count", model="scripted-demo") >= 11
    assert value(text, "autogpt_queue_wait_seconds_count", phase="think") >= 11
    assert value(text, "autogpt_llm_retries_total", reason="rate_limited") >= 1
    assert value(text, "autogpt_errors_total", error_type="llm_rate_limited") >= 1


def test_act_worker_counts_steps_and_completions(ops_stack, ran) -> None:  # type: ignore[no-untyped-def]
    """The act worker is a prefork pool: its children's samples are merged by the main process's /metrics."""
    text = scrape(ops_stack.metrics_urls["worker-act"])
    assert value(text, "autogpt_steps_total", phase="act", result="committed") >= 7  # 3 x 2 + 1
    assert value(text, "autogpt_steps_total", phase="act", result="finished") >= 4
    assert value(text, "autogpt_step_duration_seconds_count", phase="act") >= 11
    assert value(text, "autogpt_task_completion_time_seconds_count", status="completed") >= 4
    assert value(text, "autogpt_tasks_ended_total", status="completed") >= 4


def test_api_counts_requests_by_route_template(ops_stack, ran) -> None:  # type: ignore[no-untyped-def]
    text = scrape(ops_stack.metrics_urls["api"])
    assert value(text, "autogpt_api_requests_total", method="POST", endpoint="/v1/tasks", status="201") >= 4
    assert value(text, "autogpt_api_requests_total", method="GET", endpoint="/v1/tasks/{task_id}", status="200") > 0
    assert value(text, "autogpt_api_requests_total", method="GET", endpoint="<unmatched>", status="404") >= 1


def _with_consumers(url: str, timeout_s: float = 20.0) -> str:
    """The reaper's exposition once the think and act queues show their consumers. The consumer counts come from
    RabbitMQ's management statistics, which a queue emits every few seconds (``collect_statistics_interval``, 5 s
    by default): a stack whose tasks all finished within that interval can be scraped before the first emission."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape(url)
        ready = all(value(text, "autogpt_queue_consumers", queue=q) >= 1 for q in ("think", "act"))
        if ready or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_reaper_serves_platform_gauges(ops_stack, ran) -> None:  # type: ignore[no-untyped-def]
    text = _with_consumers(ops_stack.metrics_urls["reaper"])
    assert value(text, "autogpt_platform_up", source="database") == 1
    assert value(text, "autogpt_platform_up", source="broker") == 1
    for name in ("autogpt_active_agents", "autogpt_outbox_pending", "autogpt_outbox_lag_seconds",
                 "autogpt_stuck_tasks", "autogpt_dead_letter_messages"):
        assert f"\n{name} " in text, name
    assert value(text, "autogpt_queue_consumers", queue="think") >= 1, text
    assert value(text, "autogpt_queue_consumers", queue="act") >= 1
    assert 'autogpt_queue_messages{queue="act",state="ready"}' in text
    assert value(text, "autogpt_reaper_rounds_total") > 0


def test_no_task_id_in_any_label(ops_stack, ran) -> None:  # type: ignore[no-untyped-def]
    for name, url in ops_stack.metrics_urls.items():
        bad = [v for v in label_values(scrape(url)) if UUID_RE.search(v)]
        assert not bad, f"{name} exports ids as label values: {bad[:3]}"


def test_dispatcher_counts_the_rounds_of_each_loop(ops_stack, ran) -> None:  # type: ignore[no-untyped-def]
    text = scrape(ops_stack.metrics_urls["dispatcher"])
    for loop in ("admission", "priority_refresh", "webhooks"):
        assert value(text, "autogpt_dispatcher_rounds_total", loop=loop, result="ok") >= 1, loop
        assert f'autogpt_dispatcher_rounds_total{{loop="{loop}",result="error"}}' in text, "exported at zero"
    assert value(text, "autogpt_dispatcher_rounds_total", result="error") == 0


def test_every_worker_log_line_is_json_with_the_step_fields(ops_stack, ran) -> None:  # type: ignore[no-untyped-def]
    for name, phase in (("think", "think"), ("act", "act")):
        lines = [line for line in ops_stack.procs[name].log_path.read_text().splitlines() if line.strip()]
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"worker-{name}: a log line is not JSON: {line!r}") from None
        assert any(r["event"] == "worker_starting" for r in records)
        # Celery's own "Task autogpt.<phase>[...] succeeded" lines carry the step's task id, index, phase, tenant
        done = [r for r in records if r.get("logger") == "celery.app.trace" and "succeeded" in r["event"]]
        ours = [r for r in done if r.get("task_id") in ran]
        assert ours, f"worker-{name}: no Celery success line of this run's tasks"
        for r in ours:
            assert r["phase"] == phase and isinstance(r["step"], int) and r["tenant"] == "default", r
