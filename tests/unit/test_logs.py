"""Every log line is one JSON object: structlog's events and stdlib records (Celery's own, kombu's, ...) alike, each
with the structlog contextvars; inside a step phase the Celery glue binds task id, step, phase and tenant, so
Celery's "Task ... succeeded" line carries them too."""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from celery import Celery, signals

from autogpt_workers import metrics_logs
from autogpt_workers.logs import configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """configure_logging into a buffer; the root logger and structlog restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    try:
        yield out
    finally:
        logging.captureWarnings(False)
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line parses, or this fails


def test_stdlib_and_structlog_lines_are_json_with_the_bound_context(stream: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(task_id="t-1", step=3, phase="think", tenant="acme"):
        logging.getLogger("celery.app.trace").info("Task %s[%s] succeeded in %ss", "autogpt.think", "c-1", 0.25)
        logging.getLogger("kombu.connection").warning("connection lost")
        structlog.get_logger("autogpt_workers.runner").info("proposal_persisted", tokens=42)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("autogpt_workers.tasks").exception("phase failed")
    logging.getLogger("celery.worker").info("outside any step")
    warnings.warn("running as root", UserWarning, stacklevel=1)

    celery_line, kombu_line, ours, failed, outside, warned = _lines(stream)
    for line in (celery_line, kombu_line, ours, failed):
        assert {k: line[k] for k in ("task_id", "step", "phase", "tenant")} == {
            "task_id": "t-1", "step": 3, "phase": "think", "tenant": "acme"}
        assert line["timestamp"].endswith("Z")
    assert celery_line["event"] == "Task autogpt.think[c-1] succeeded in 0.25s"
    assert (celery_line["level"], celery_line["logger"]) == ("info", "celery.app.trace")
    assert (kombu_line["level"], kombu_line["event"]) == ("warning", "connection lost")
    assert (ours["event"], ours["tokens"], ours["logger"]) == ("proposal_persisted", 42, "autogpt_workers.runner")
    assert failed["level"] == "error" and "ValueError: boom" in failed["exception"]
    assert outside["event"] == "outside any step" and "task_id" not in outside
    assert warned["logger"] == "py.warnings" and "UserWarning: running as root" in warned["event"]


def test_the_level_filters_both_kinds_of_logger() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("WARNING", json=True, stream=out)
    try:
        logging.getLogger("kombu").info("hidden")
        structlog.get_logger("x").info("hidden")
        structlog.get_logger("x").warning("shown")
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level
    assert [line["event"] for line in _lines(out)] == ["shown"]


@pytest.fixture
def step_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(metrics_logs, "_tenant_of", lambda task_id: "acme")
    metrics_logs.install_step_logging()
    try:
        yield
    finally:
        signals.setup_logging.disconnect(dispatch_uid="autogpt-log-setup")
        signals.task_prerun.disconnect(dispatch_uid="autogpt-log-step-bind")
        signals.task_postrun.disconnect(dispatch_uid="autogpt-log-step-unbind")


def test_celery_task_lines_carry_task_step_phase_and_tenant(stream: io.StringIO, step_logging: None) -> None:
    app = Celery("unit-logs", set_as_current=False)
    app.conf.update(task_store_eager_result=False)
    inner: dict[str, Any] = {}

    @app.task(name="autogpt.act")
    def act(task_id: str, step_index: int) -> str:
        inner.update(structlog.contextvars.get_contextvars())
        structlog.get_logger("autogpt_workers.runner").info("step_committed")
        return "committed"

    task_id = str(uuid.uuid4())
    assert act.apply(args=[task_id, 2]).get() == "committed"
    logging.getLogger("celery.worker").info("between tasks")

    lines = _lines(stream)
    want = {"task_id": task_id, "step": 2, "phase": "act", "tenant": "acme"}
    assert inner == want
    ours = next(line for line in lines if line["event"] == "step_committed")
    succeeded = next(line for line in lines if "succeeded" in line["event"])
    assert {k: ours[k] for k in want} == want
    assert succeeded["logger"] == "celery.app.trace" and {k: succeeded[k] for k in want} == want
    assert "task_id" not in lines[-1] and structlog.contextvars.get_contextvars() == {}, "cleared at postrun"


def test_the_runner_binds_the_tenant_of_a_task_first_claimed_in_this_process(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_logs, "_tenant_of", lambda task_id: None)  # not yet claimed in this process
    metrics_logs.install_step_logging()
    app = Celery("unit-logs-first", set_as_current=False)
    app.conf.update(task_store_eager_result=False)
    try:

        @app.task(name="autogpt.think")
        def think(task_id: str, step_index: int) -> str:
            structlog.get_logger("x").info("before_claim")
            metrics_logs.bind_tenant("acme")  # what the runner does with its claim's tenant
            structlog.get_logger("x").info("after_claim")
            return "proposed"

        assert think.apply(args=[str(uuid.uuid4()), 0]).get() == "proposed"
    finally:
        signals.setup_logging.disconnect(dispatch_uid="autogpt-log-setup")
        signals.task_prerun.disconnect(dispatch_uid="autogpt-log-step-bind")
        signals.task_postrun.disconnect(dispatch_uid="autogpt-log-step-unbind")
    lines = {line["event"]: line for line in _lines(stream) if line["event"] in ("before_claim", "after_claim")}
    assert "tenant" not in lines["before_claim"] and lines["after_claim"]["tenant"] == "acme"
    succeeded = next(line for line in _lines(stream) if "succeeded" in line["event"])
    assert succeeded["tenant"] == "acme" and structlog.contextvars.get_contextvars() == {}
    metrics_logs.bind_tenant("acme")  # outside a step: nothing bound
    assert structlog.contextvars.get_contextvars() == {}


def test_celery_leaves_the_configured_logging_alone(stream: io.StringIO, step_logging: None) -> None:
    root = logging.getLogger()
    before, stdout = root.handlers[:], sys.stdout
    Celery("unit-logs-setup", set_as_current=False).log.setup(loglevel="INFO", redirect_stdouts=True)
    assert root.handlers == before and sys.stdout is stdout
    logging.getLogger("celery.task").info("a task logger line")
    assert _lines(stream)[-1]["event"] == "a task logger line"
