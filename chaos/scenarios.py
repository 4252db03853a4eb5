"""The scenarios: one fault each, on the same load (``tasks`` scripted tasks of ``steps`` steps, submitted at once).

==================  ==============================================================================================
random-kill         SIGKILL of random worker processes (think worker, act pool child, whole act worker) at random
                    moments, ``kills`` per run
kill-llm            the think worker kills itself during the LLM call (crash hook ``llm``)
kill-proposed       ... after the proposal is persisted, before the act wake-up is published (``proposed``)
kill-command        the process running the command kills itself after it ran, before the commit (``command``): the
                    think worker for a command it runs itself (``runs_inline``: the scripted ``write_file`` and
                    ``finish``), the act child for one re-driven to the act queue
kill-committed      ... after the step commit, before the next wake-up is published (``committed``)
kill-published      think and act workers kill themselves after publishing, before the ack (``published``)
rabbitmq-restart    the broker's application restarted under load (twice)
postgres-restart    the database restarted under load (twice)
redis-flush         Redis flushed under load (5 times)
llm-storm           30% of LLM calls answer 429, 500, a timeout or malformed output
poison              one task's command kills the process running it every time (the think worker on its inline try,
                    then act children): bounded redeliveries, then the task fails ("poisoned") and its message is
                    in the dead-letter queue; the others complete
time-limit          one task's command hangs deaf to exceptions: the think worker hands it to the act queue past
                    the inline bound (2 s), where the act hard time limit (12 s, far below RabbitMQ's
                    consumer_timeout) kills the child each time, then the task fails as poisoned; and the settings
                    refuse any time limit that would reach consumer_timeout
==================  ==============================================================================================

The trimmed run (``--trimmed``, inside ``make test``) keeps ``random-kill``, ``rabbitmq-restart`` and ``poison``
with fewer tasks and kills; the other scenarios run only in ``make chaos`` (all on private service instances).

Every run also checks the longest pause between two step commits: a platform that hangs after a fault (as the
workers did after a broker restart until 2026-12-05) fails the run even when every task ends in the end.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

from chaos import faults
from chaos.checker import Check

# filled in by the suite for each run
Context = Any


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    role_env: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    llm_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    inject: Callable[[Context, threading.Event], int] | None = None
    markers: dict[int, str] = dataclasses.field(default_factory=dict)  # task index -> goal marker
    expect_failed: dict[int, str] = dataclasses.field(default_factory=dict)  # task index -> error text
    checks: Callable[[Context], list[Check]] | None = None


def _crash(window: str, p: float, match: str = "", action: str = "kill") -> str:
    return f"{window}:{p}:{match}:{action}" if match or action != "kill" else f"{window}:{p}"


# a random aimed kill fires only in a worker up this long (above the suite's 4 s lease, its 1 s reaper round and
# the LLM's latency): the steps its last death stranded are redelivered and done before it can die again (see
# ``autogpt_workers.crashpoints``). Without it, a think worker died every 2 s or so in kill-llm (26 kills in 55 s)
# and three healthy tasks reached the poison limit as bystanders (2026-12-05). The LLM answers in 0.5-1.5 s in
# these scenarios, so the load runs long enough for each worker to die a few times
MIN_UPTIME_S = "6"
AIMED_LLM = {"latency_s": 1.0, "latency_jitter_s": 0.5}


def _aimed(rule: str) -> dict[str, str]:
    return {"AUTOGPT_CHAOS_CRASH_AT": rule, "AUTOGPT_CHAOS_MIN_UPTIME_S": MIN_UPTIME_S}


def _both(rule: str, aimed: bool = True) -> dict[str, dict[str, str]]:
    """A crash rule for the act phase's windows, wherever it runs: in the think worker for a command it runs
    itself (``runs_inline``), in an act child for one on the act queue. ``aimed``: a random kill, under the
    uptime floor; else (a poison pill, a hang) it fires every time."""
    env = _aimed(rule) if aimed else {"AUTOGPT_CHAOS_CRASH_AT": rule}
    return {"think": env, "act": env}


# -- scenario checks -----------------------------------------------------------------------------------------------


def _dead_letters(ctx: Context) -> list[tuple[str, int]]:
    """(task id, step) of the messages in the dead-letter queue (read, then left there)."""
    from kombu import Connection

    from autogpt_workers.contracts import DEAD_LETTER_QUEUE

    found = []
    with Connection(ctx.broker_url) as conn:
        channel = conn.channel()
        while True:
            message = channel.basic_get(DEAD_LETTER_QUEUE, no_ack=False)
            if message is None:
                break
            body = json.loads(message.body)
            args = body[0] if isinstance(body, list) else body.get("args", [])
            if args:
                found.append((str(args[0]), int(args[1])))
        channel.close()  # unacknowledged: they stay in the queue
    return found


def _poison_checks(ctx: Context) -> list[Check]:
    task_id = str(ctx.task_of(0))
    dead = _dead_letters(ctx)
    deliveries = ctx.max_step_deliveries(ctx.task_of(0))
    return [
        Check("poison task's message in the dead-letter queue", f"{sum(1 for t, _ in dead if t == task_id)} message(s)",
              any(t == task_id for t, _ in dead)),
        Check("redeliveries bounded", f"{deliveries} deliveries in all (limit {ctx.max_deliveries} per phase)",
              0 < deliveries <= 2 * ctx.max_deliveries),
    ]


def _time_limit_checks(ctx: Context) -> list[Check]:
    from autogpt_workers.celery_app import check_worker_settings, make_celery
    from autogpt_workers.config import Settings
    from autogpt_workers.errors import ConfigError

    consumer_timeout_ms = ctx.services.rabbit.consumer_timeout_ms()
    consumer_timeout_s = (consumer_timeout_ms or 1_800_000) / 1000
    refused = []
    for field in ("act_time_limit_s", "think_time_limit_s"):
        values: dict[str, Any] = {field: consumer_timeout_s, "rabbitmq_consumer_timeout_s": consumer_timeout_s}
        try:
            Settings.model_validate(values)
        except ConfigError:
            refused.append(field)
    settings = Settings(rabbitmq_consumer_timeout_s=consumer_timeout_s)
    app = make_celery(settings)
    problems_ok = not check_worker_settings(app.conf, settings)
    app.conf.task_annotations = {}
    problems_none = check_worker_settings(app.conf, settings)
    kills = ctx.log_count("act", "Hard time limit")
    limit = float(ctx.env.get("AUTOGPT_ACT_TIME_LIMIT_S", settings.act_time_limit_s))
    return [
        Check("settings refuse a time limit reaching consumer_timeout", f"refused: {', '.join(refused)}",
              len(refused) == 2),
        Check("worker refuses to start without time limits", "; ".join(problems_none)[:80] or "accepted",
              bool(problems_none) and problems_ok),
        Check("broker consumer_timeout above every time limit",
              f"{consumer_timeout_s:.0f}s > act {limit:.0f}s, think {settings.think_time_limit_s:.0f}s",
              consumer_timeout_s > max(limit, settings.think_time_limit_s)),
        Check("hard time limit killed the hung act child", f"{kills} kill(s)", kills >= 1),
    ]


def _count_check(name: str, want: int) -> Callable[[Context], list[Check]]:
    def checks(ctx: Context) -> list[Check]:
        done = ctx.injected
        return [Check(f"{name} done under load", f"{done} of {want}", done == want)]

    return checks


def _storm_checks(ctx: Context) -> list[Check]:
    total = len(ctx.llm_log)
    faulty = sum(1 for e in ctx.llm_log if e["outcome"] != "ok")
    share = faulty / total if total else 0.0
    return [Check("share of LLM calls faulted", f"{faulty}/{total} = {share:.0%}", 0.2 <= share <= 0.4)]


# -- the catalogue -------------------------------------------------------------------------------------------------


def catalogue(trimmed: bool = False) -> dict[str, Scenario]:
    kills = 8 if trimmed else 24
    # the kills are spread over the load's progress (kill i when 0.6 * i/(kills+1) of its steps are committed,
    # ``faults.KILL_SPAN``), so they all land under load on any host; the random gap between two kills keeps them
    # from landing together
    gap_s = (0.2, 0.8)
    p = 0.03
    scenarios = [
        Scenario("random-kill", f"{kills} SIGKILLs of random worker processes at random moments",
                 inject=lambda ctx, stop: faults.random_kills(ctx.platform, ctx.journal, stop, kills, gap_s,
                                                              progress=ctx.progress),
                 checks=_count_check("SIGKILLs", kills)),
        Scenario("kill-llm", "think worker killed during the LLM call",
                 role_env={"think": _aimed(_crash("llm", p))}, llm_config=AIMED_LLM),
        Scenario("kill-proposed", "think worker killed after the proposal is persisted, before the publish",
                 role_env={"think": _aimed(_crash("proposed", p))}, llm_config=AIMED_LLM),
        Scenario("kill-command", "worker killed after the command ran, before the commit",
                 role_env=_both(_crash("command", p)), llm_config=AIMED_LLM),
        Scenario("kill-committed", "worker killed after the commit, before the next wake-up is published",
                 role_env=_both(_crash("committed", p)), llm_config=AIMED_LLM),
        Scenario("kill-published", "workers killed after publishing, before the ack",
                 role_env=_both(_crash("published", p)), llm_config=AIMED_LLM),
        # the service faults are spread over the load's progress too (fault i at i/(n+1) of its steps), with a
        # short floor between two of them so a service is up and in use again before the next one
        Scenario("rabbitmq-restart", "RabbitMQ restarted twice under load",
                 inject=lambda ctx, stop: faults.service_restarts(ctx.services, "rabbitmq", ctx.journal, stop, 2,
                                                                  first_after_s=1.0, gap_s=2.0,
                                                                  progress=ctx.progress),
                 checks=_count_check("RabbitMQ restarts", 2)),
        Scenario("postgres-restart", "PostgreSQL restarted twice under load",
                 inject=lambda ctx, stop: faults.service_restarts(ctx.services, "postgres", ctx.journal, stop, 2,
                                                                  first_after_s=1.0, gap_s=2.0,
                                                                  progress=ctx.progress),
                 checks=_count_check("PostgreSQL restarts", 2)),
        Scenario("redis-flush", "Redis flushed 5 times under load",
                 inject=lambda ctx, stop: faults.redis_flushes(ctx.services, ctx.journal, stop, 5, gap_s=0.5,
                                                               progress=ctx.progress),
                 checks=_count_check("Redis flushes", 5)),
        Scenario("llm-storm", "30% of LLM calls: 429, 500, timeout or malformed",
                 llm_config={"fault_rate": 0.3, "fault_kinds": ["429", "500", "timeout", "garbage"],
                             "timeout_s": 8.0, "seed": 7},
                 checks=_storm_checks),
        Scenario("poison", "one task's command kills the worker running it every time",
                 role_env=_both(_crash("command", 1.0, "poison-pill"), aimed=False),
                 markers={0: "poison-pill"}, expect_failed={0: "poisoned"}, checks=_poison_checks),
        Scenario("time-limit", "one task's command hangs past the act hard time limit",
                 # 12 s: the lowest the settings allow with the sandbox's 1 s wall time (it must stay 10 s below)
                 env={"AUTOGPT_ACT_TIME_LIMIT_S": "12", "AUTOGPT_SANDBOX_WALL_SECONDS": "1",
                      "AUTOGPT_SANDBOX_CPU_SECONDS": "1", "AUTOGPT_INLINE_ACT_TIME_LIMIT_S": "2"},
                 role_env=_both(_crash("command", 1.0, "hang-pill", "hang"), aimed=False),
                 markers={0: "hang-pill"}, expect_failed={0: "poisoned"}, checks=_time_limit_checks),
    ]
    by_name = {s.name: s for s in scenarios}
    if trimmed:
        return {name: by_name[name] for name in ("random-kill", "rabbitmq-restart", "poison")}
    return by_name
