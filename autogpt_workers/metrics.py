"""The workers' and the reaper's Prometheus series, and ``PrometheusObserver``, the ``RunObserver`` that feeds them.

Import this module only after ``metrics_server.use_multiprocess_dir`` (prometheus_client picks its storage at
import time). Every label is low-cardinality: phase, outcome, result, status, model (capped), reason, error type;
never a task id or a tenant.

Series (all prefixed ``autogpt_``):

==================================================  ==========  ============================================
step_deliveries_total{phase,outcome}                counter     wake-ups received, by the ledger's claim outcome
queue_wait_seconds{phase}                           histogram   wake-up enqueued -> claimed
step_duration_seconds{phase}                        histogram   a claimed phase, start to end
steps_total{phase,result}                           counter     phases ended (proposed, committed, finished, ...)
llm_latency_seconds{model}                          histogram   the model's answer, retries included
llm_tokens_total{model,kind}                        counter     kind = prompt | completion
llm_cost_usd_total{model}                           counter     priced with the settings' per-model prices
llm_retries_total{reason}                           counter     rate_limited, server_error, timeout, ...
task_completion_time_seconds{status}                histogram   submitted -> terminal (completed, failed)
tasks_ended_total{status}                           counter     terminal transitions seen by a worker
errors_total{error_type}                            counter     step_poisoned, llm_<reason>, ...
reaper_recoveries_total{kind}                       counter     expired_lease | republished
reaper_rounds_total                                 counter     rounds run (a flat line: the reaper is stuck)
tasks_pruned_total                                  counter     finished tasks deleted past their retention
dispatcher_rounds_total{loop,result}                counter     loop = admission | priority_refresh | webhooks;
                                                                result = ok | error (a flat line: stalled)
command_plugins{state}                              gauge       a worker's entry-point command plugins at start:
                                                                state = loaded | skipped (failed; the log says why)
==================================================  ==========  ============================================

The platform's gauges (active agents, outbox lag, stuck tasks, queue depth and age) are read at scrape time by
``metrics_platform.PlatformCollector``; the API's request series live in ``api_shim.metrics``.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from autogpt_workers.observe import RunObserver

NAMESPACE = "autogpt"
MAX_MODEL_LABELS = 20
OTHER = "other"

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
LLM_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
TASK_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

STEP_DELIVERIES = Counter(
    "step_deliveries", "Step wake-ups received, by claim outcome.", ["phase", "outcome"], namespace=NAMESPACE
)
QUEUE_WAIT = Histogram(
    "queue_wait_seconds", "Time from a wake-up being queued to its step being claimed.", ["phase"],
    namespace=NAMESPACE, buckets=WAIT_BUCKETS,
)
STEP_DURATION = Histogram(
    "step_duration_seconds", "Duration of a claimed step phase.", ["phase"], namespace=NAMESPACE,
    buckets=STEP_BUCKETS,
)
STEPS = Counter("steps", "Step phases ended, by result.", ["phase", "result"], namespace=NAMESPACE)
LLM_LATENCY = Histogram(
    "llm_latency_seconds", "Time to the model's answer, retries included.", ["model"], namespace=NAMESPACE,
    buckets=LLM_BUCKETS,
)
LLM_TOKENS = Counter("llm_tokens", "Tokens used, by model and kind.", ["model", "kind"], namespace=NAMESPACE)
LLM_COST = Counter("llm_cost_usd", "Estimated LLM spend in US dollars, by model.", ["model"], namespace=NAMESPACE)
LLM_RETRIES = Counter("llm_retries", "LLM request retries, by reason.", ["reason"], namespace=NAMESPACE)
TASK_COMPLETION = Histogram(
    "task_completion_time_seconds", "Time from submission to a terminal state.", ["status"], namespace=NAMESPACE,
    buckets=TASK_BUCKETS,
)
TASKS_ENDED = Counter("tasks_ended", "Tasks that reached a terminal state.", ["status"], namespace=NAMESPACE)
ERRORS = Counter("errors", "Errors an operator should count, by type.", ["error_type"], namespace=NAMESPACE)
REAPER_RECOVERIES = Counter(
    "reaper_recoveries", "Steps the reaper re-drove, by kind.", ["kind"], namespace=NAMESPACE
)
REAPER_ROUNDS = Counter("reaper_rounds", "Reaper rounds run.", namespace=NAMESPACE)
TASKS_PRUNED = Counter(
    "tasks_pruned", "Finished tasks deleted past their retention, with their steps, events and files.",
    namespace=NAMESPACE,
)
DISPATCHER_ROUNDS = Counter(
    "dispatcher_rounds", "Dispatcher rounds run, by loop and result.", ["loop", "result"], namespace=NAMESPACE
)
DISPATCHER_LOOPS = ("admission", "priority_refresh", "webhooks")
COMMAND_PLUGINS = Gauge(
    "command_plugins", "Command plugins (entry points) found at worker start, by state: loaded or skipped.",
    ["state"], namespace=NAMESPACE, multiprocess_mode="max",
)


def record_plugins(loaded: int, skipped: int) -> None:
    """What a worker's start-up plugin load found (``runtime.report_plugins``)."""
    COMMAND_PLUGINS.labels("loaded").set(loaded)
    COMMAND_PLUGINS.labels("skipped").set(skipped)


class _LabelCap:
    """Keeps a label's value set bounded: past ``limit`` distinct values, new ones become "other"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        value = (value or "unknown")[:64]
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
            return value


def _word(value: str, limit: int = 40) -> str:
    """A label value from a short identifier-like word (anything else is folded, so it cannot explode)."""
    cleaned = "".join(c if c.isalnum() or c in "_-." else "_" for c in (value or "unknown").lower())
    return cleaned[:limit] or "unknown"


# phase results that are also errors worth counting (the task itself may still succeed)
_ERROR_RESULTS = {"fenced": "lease_fenced", "retry": "step_handed_back"}
_exception_name = _LabelCap(30)


class PrometheusObserver(RunObserver):
    """Counts what the runner, the LLM client and the reaper report. Safe from any thread or forked child."""

    def __init__(self, max_models: int = MAX_MODEL_LABELS) -> None:
        self._model = _LabelCap(max_models)

    def delivery(self, phase: str, outcome: str, queue_wait_s: float | None) -> None:
        STEP_DELIVERIES.labels(_word(phase), _word(outcome)).inc()
        if queue_wait_s is not None and outcome == "claimed":
            QUEUE_WAIT.labels(_word(phase)).observe(max(0.0, queue_wait_s))

    def phase_finished(self, phase: str, seconds: float, result: str) -> None:
        STEP_DURATION.labels(_word(phase)).observe(max(0.0, seconds))
        STEPS.labels(_word(phase), _word(result)).inc()
        if result in _ERROR_RESULTS:
            ERRORS.labels(_ERROR_RESULTS[result]).inc()

    def proposal(
        self, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float, llm_seconds: float
    ) -> None:
        m = self._model(model)
        LLM_LATENCY.labels(m).observe(max(0.0, llm_seconds))
        LLM_TOKENS.labels(m, "prompt").inc(max(0, prompt_tokens))
        LLM_TOKENS.labels(m, "completion").inc(max(0, completion_tokens))
        LLM_COST.labels(m).inc(max(0.0, cost_usd))

    def task_ended(self, status: str, seconds: float | None) -> None:
        s = _word(status)
        TASKS_ENDED.labels(s).inc()
        if seconds is not None:
            TASK_COMPLETION.labels(s).observe(max(0.0, seconds))

    def llm_retry(self, reason: str) -> None:
        LLM_RETRIES.labels(_word(reason)).inc()
        ERRORS.labels(f"llm_{_word(reason)}").inc()

    def error(self, error_type: str) -> None:
        ERRORS.labels(_word(error_type)).inc()

    def reaped(self, expired_leases: int, republished: int) -> None:
        REAPER_ROUNDS.inc()
        if expired_leases:
            REAPER_RECOVERIES.labels("expired_lease").inc(expired_leases)
        if republished:
            REAPER_RECOVERIES.labels("republished").inc(republished)

    def tasks_pruned(self, count: int) -> None:
        TASKS_PRUNED.inc(count)

    def on_llm_retry(self, event: object) -> None:
        """``OpenAIChatModel(on_retry=...)``: takes its ``RetryEvent``."""
        self.llm_retry(str(getattr(event, "reason", "unknown")))


def count_exception(exc: BaseException) -> None:
    """An unexpected exception that escaped a Celery task: counted by class name (capped)."""
    ERRORS.labels(_exception_name(_word(type(exc).__name__))).inc()


def install_worker_hooks() -> None:
    """Celery signals of a worker process group: unexpected task exceptions, and a pool child's exit."""
    from celery import signals

    from autogpt_workers.metrics_server import mark_process_dead

    def _failed(exception: BaseException | None = None, **_: object) -> None:
        if exception is not None:
            count_exception(exception)

    def _child_exit(pid: int | None = None, **_: object) -> None:
        if pid is not None:
            mark_process_dead(pid)

    signals.task_failure.connect(_failed, weak=False, dispatch_uid="autogpt-metrics-task-failure")
    signals.worker_process_shutdown.connect(_child_exit, weak=False, dispatch_uid="autogpt-metrics-child-exit")


def count_dispatcher_round(loop: str, result: str) -> None:
    """``Dispatcher(on_round=...)``: one round of one of its loops ended, ``ok`` or ``error``."""
    DISPATCHER_ROUNDS.labels(_word(loop), _word(result)).inc()


def touch_dispatcher_series() -> None:
    """Every loop's ok and error series at zero, so a dispatcher that never completes a round shows as flat."""
    for loop in DISPATCHER_LOOPS:
        for result in ("ok", "error"):
            DISPATCHER_ROUNDS.labels(loop, result).inc(0)


def touch_series() -> None:
    """Create the unlabelled and the common labelled series at zero so dashboards and alerts see them at once."""
    REAPER_ROUNDS.inc(0)
    TASKS_PRUNED.inc(0)
    for phase in ("think", "act"):
        STEPS.labels(phase, "failed").inc(0)
        STEP_DELIVERIES.labels(phase, "claimed").inc(0)
    for status in ("completed", "failed"):
        TASKS_ENDED.labels(status).inc(0)
    for kind in ("expired_lease", "republished"):
        REAPER_RECOVERIES.labels(kind).inc(0)
    for reason in ("rate_limited", "server_error", "timeout", "connection", "bad_response"):
        LLM_RETRIES.labels(reason).inc(0)
    ERRORS.labels("step_poisoned").inc(0)
