"""Tracing without an OTLP endpoint is nothing at all: no tracer provider, no signal handler, no wrapper, no
stored context. And the endpoint comes from the standard OpenTelemetry variables. (With an endpoint, the
end-to-end test ``tests/e2e/test_tracing.py`` exports real spans to a receiver.)"""

from __future__ import annotations

import pytest
from celery import signals
from opentelemetry import trace

from autogpt_workers import tracing, tracing_celery
from autogpt_workers.agent.types import LLMResponse, Message, ToolSchema
from autogpt_workers.config import Settings
from autogpt_workers.llm.traced import traced

OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
             "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME")


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


class EchoLLM:
    def complete(self, messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        return LLMResponse(content="ok")


def test_without_an_endpoint_nothing_is_set_up(no_otel_env: None) -> None:
    settings = Settings()
    assert settings.otlp_traces_endpoint is None
    receivers = {s: len(s.receivers) for s in (signals.task_prerun, signals.task_postrun,
                                              signals.before_task_publish, signals.worker_process_init)}

    assert tracing.setup(settings, "autogpt-test") is False
    assert tracing_celery.install(settings, "autogpt-test", prefork=True) is False
    assert tracing_celery.install(settings, "autogpt-test", prefork=False) is False

    assert not tracing.enabled()
    # the global provider is still the API's placeholder: no SDK provider, no exporter, no thread
    assert type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.trace")
    assert {s: len(s.receivers) for s in receivers} == receivers  # no Celery hook connected
    assert tracing.current_traceparent() is None  # what submit_task stores with a task: nothing
    with tracing.submit_span("default") as span:
        assert span is None and tracing.submit_context() is None  # the API's first wake-up: no trace headers
    llm = EchoLLM()
    assert traced(llm, "some-model") is llm  # the LLM is not wrapped


def test_the_endpoint_comes_from_the_standard_variables(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert Settings().otlp_traces_endpoint == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example/otlp/v1/traces")
    assert Settings().otlp_traces_endpoint == "https://traces.example/otlp/v1/traces"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert Settings().otlp_traces_endpoint is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert Settings().otlp_traces_endpoint is None


def test_an_empty_endpoint_is_no_endpoint(no_otel_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    assert Settings().otlp_traces_endpoint is None


@pytest.mark.parametrize(
    ("retval", "state", "outcome"),
    [
        ("proposed write_file", "SUCCESS", "proposed"),
        ("committed step 3", "SUCCESS", "committed"),
        ("finished", "SUCCESS", "finished"),
        ("skipped: committed", "SUCCESS", "skipped"),
        ("failed: the step budget is spent", "SUCCESS", "failed"),
        ("awaiting_approval: write_file", "SUCCESS", "awaiting_approval"),
        ("retry in 2.0s: boom", "SUCCESS", "retry"),
        (RuntimeError("boom"), "FAILURE", "error"),
        (RuntimeError("db down"), "RETRY", "retry"),
        (RuntimeError("poisoned"), "REJECTED", "rejected"),
    ],
)
def test_the_phase_outcome_from_the_runner_result(retval: object, state: str, outcome: str) -> None:
    assert tracing_celery.outcome_of(retval, state) == outcome


def test_a_stored_traceparent_becomes_a_remote_parent() -> None:
    ctx = tracing.context_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert ctx is not None
    parent = trace.get_current_span(ctx).get_span_context()
    assert (format(parent.trace_id, "032x"), format(parent.span_id, "016x")) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    )
    assert parent.is_remote
    assert tracing.context_of(None) is None
    assert tracing.context_of("not a traceparent") is None
