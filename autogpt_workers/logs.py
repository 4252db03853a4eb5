"""Structured logs (structlog): one JSON object per line in production, readable lines on a terminal.

Every line goes through one handler on the root logger whose formatter is structlog's ``ProcessorFormatter``, so
our structlog loggers and the stdlib loggers of Celery, kombu, uvicorn and every other library render alike, each
with the structlog contextvars merged in (the Celery glue binds ``task_id``, ``step``, ``phase`` and ``tenant``
for the duration of a step phase: ``metrics_logs``). A line of Celery's own, inside a step::

    {"event": "Task autogpt.act[5c1…] succeeded in 0.04s: 'committed'", "task_id": "0b6…", "step": 2,
     "phase": "act", "tenant": "demo", "level": "info", "logger": "celery.app.trace",
     "timestamp": "2026-12-04T22:40:01.123456Z"}
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.stdlib import ProcessorFormatter


def _shared() -> list[structlog.types.Processor]:
    """Processors both kinds of record go through: structlog's events and foreign stdlib ``LogRecord``s."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(level: str = "INFO", json: bool = True, stream: TextIO | None = None) -> None:
    """Route structlog through the stdlib and render every record with one formatter on ``stream`` (stderr).

    Replaces the root logger's handlers: the process's logging is this one handler; warnings go through it too.
    """
    out = sys.stderr if stream is None else stream
    levelno = logging.getLevelName(level.upper())
    render: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer(colors=out.isatty())]  # it draws tracebacks itself
    )
    structlog.configure(
        processors=[
            *_shared(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        ProcessorFormatter(
            foreign_pre_chain=_shared(),
            processors=[ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(levelno)
    logging.captureWarnings(True)  # ``warnings.warn`` (Celery's SecurityWarning, deprecations) as records too
    # a line per HTTP request (every LLM call), and Celery's "Task ... received" per delivery (logged before the
    # step's context is bound, so it names no task or step; the runner's own lines and Celery's "succeeded" do)
    for chatty in ("httpx", "httpx2", "httpcore", "httpcore2", "celery.worker.strategy"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, levelno))
