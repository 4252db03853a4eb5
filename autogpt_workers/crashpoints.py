"""Test-only fault injection for the chaos suite: kill (or hang) a worker at a named point of a step.

Off unless ``AUTOGPT_CHAOS_CRASH_AT`` is set; the settings refuse it when ``AUTOGPT_ENV=production``.

    AUTOGPT_CHAOS_CRASH_AT="<window>:<probability>[:<match>[:<action>]][,<rule>...]"

``window``
    ``llm``        during the LLM call (the request is in flight)
    ``proposed``   after the proposal is persisted, before the act wake-up is published
    ``command``    after the command ran, before the step is committed
    ``committed``  after the step commit, before the next wake-up is published
    ``published``  after the publish, before the delivery is acked
``probability``  0..1, drawn each time a step passes the window.
``match``        only tasks whose goal contains this text (empty: every task).
``action``       ``kill`` (SIGKILL this process, the default) or ``hang`` (never return, deaf to exceptions, until
                 the hard time limit kills the process or a graceful shutdown hands the step back).

``AUTOGPT_CHAOS_JOURNAL=<path>`` appends one JSON line per fault, written before the fault fires, so the chaos
checker knows what was injected where.

``AUTOGPT_CHAOS_MIN_UPTIME_S`` (default 0): no rule fires before the worker has run this long. A worker killed
holding many steps (a thread-pool think worker holds dozens) costs each of them a delivery; killed again and again
before those steps are redelivered and done, some healthy step reaches the poison limit as a bystander (the poison
rule cannot tell a step that kills its worker from one whose worker was killed under it). The aimed-kill scenarios
set it above the lease time, so each kill's redeliveries get through before the same worker can die again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

WINDOWS = ("llm", "proposed", "command", "committed", "published")
ACTIONS = ("kill", "hang")


@dataclasses.dataclass(frozen=True)
class CrashRule:
    window: str
    probability: float
    match: str = ""
    action: str = "kill"


def parse_rules(spec: str) -> list[CrashRule]:
    """Parse ``AUTOGPT_CHAOS_CRASH_AT``; raises ``ValueError`` with a readable message."""
    rules = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fields = part.split(":")
        if len(fields) < 2 or len(fields) > 4:
            raise ValueError(f"{part!r} is not <window>:<probability>[:<match>[:<action>]]")
        window, prob = fields[0], fields[1]
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r} (one of {', '.join(WINDOWS)})")
        try:
            probability = float(prob)
        except ValueError:
            raise ValueError(f"probability {prob!r} is not a number") from None
        if not 0 <= probability <= 1:
            raise ValueError(f"probability {probability} is not between 0 and 1")
        action = fields[3] if len(fields) == 4 else "kill"
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        rules.append(CrashRule(window, probability, fields[2] if len(fields) >= 3 else "", action))
    return rules


class CrashPoints:
    """The rules of this process; ``maybe`` fires at most one of them."""

    def __init__(self, rules: list[CrashRule], journal: Path | None = None, min_uptime_s: float = 0.0) -> None:
        self.rules = rules
        self.journal = journal
        self.min_uptime_s = min_uptime_s
        self._started = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: str | None, journal: Path | None = None, min_uptime_s: float = 0.0) -> CrashPoints:
        return cls(parse_rules(spec) if spec else [], journal, min_uptime_s)

    def armed(self, window: str) -> bool:
        return any(r.window == window for r in self.rules)

    def maybe(self, window: str, *, task_id: object, step_index: int, phase: str, goal: str) -> None:
        if not self.rules or time.monotonic() - self._started < self.min_uptime_s:
            return
        for rule in self.rules:
            if rule.window != window or (rule.match and rule.match not in goal):
                continue
            if random.random() >= rule.probability:
                continue
            self._fire(rule, task_id, step_index, phase)

    def _fire(self, rule: CrashRule, task_id: object, step_index: int, phase: str) -> None:
        record = {
            "ts": time.time(),
            "pid": os.getpid(),
            "window": rule.window,
            "action": rule.action,
            "task_id": str(task_id),
            "step": step_index,
            "phase": phase,
        }
        if self.journal is not None:
            with self._lock:
                fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, (json.dumps(record) + "\n").encode())
                finally:
                    os.close(fd)
        if rule.action == "hang":
            # a command stuck where no exception reaches it (in C code, say): the soft time limit cannot end it,
            # only the hard time limit (SIGKILL of the child) or a graceful shutdown's hand-back
            while True:
                try:
                    time.sleep(3600)
                except BaseException:  # deliberately deaf
                    continue
        os.kill(os.getpid(), signal.SIGKILL)
