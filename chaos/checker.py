"""The ledger checker: after a scenario, read the ledger, the fake LLM's request log and the fault journal, and
hold the platform to its promises.

Bars (each must hold, else ``make chaos`` fails):

- tasks not terminal: 0 (every acknowledged task ended);
- steps lost: 0 (a completed task has every step ``0..n-1`` committed, the last one marked last);
- step indexes committed twice: 0 (``step.completed`` events per (task, step));
- submissions acknowledged by the API but missing from the ledger: 0;
- unexpected outcomes: 0 (every task completed, except those the scenario expects to fail, which failed with
  the expected reason);
- LLM calls re-bought outside an allowed window: 0. A completion is "re-bought" when the fake LLM answered the
  same turn of the same task more than once. It is allowed only when the crash happened during that very think
  phase: a process was killed while it held that step's think lease (read from the ledger at the kill, see
  ``chaos.recovery``), between the lost call and the call that replaced it; or PostgreSQL restarted while the
  call was in flight or before its answer could be persisted (plus a lease period: a proposal that could not be
  written before the lease expired is taken over). Anything else (a lease lost to a slow heartbeat, a client
  timeout, a duplicate delivery executed twice) fails the bar;
- scenario checks (e.g. the poison task is in the dead-letter queue).

Reported without a bar: faults injected, recovery time from a kill to the interrupted step running again
(p50/p99), probes that never recovered (a bar: 0).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from autogpt_workers.store.db import Database
from autogpt_workers.store.models import Step, Task, TaskEvent
from chaos.load import Submitted

EPS_S = 1.0


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    value: str
    ok: bool


@dataclasses.dataclass
class RunData:
    scenario: str
    run: int
    submitted: list[Submitted]
    expected_steps: int
    expected_failures: dict[uuid.UUID, str]  # task -> a text its error must contain
    llm_log: list[dict[str, Any]]
    journal: list[dict[str, Any]]
    interrupted: list[tuple[float, str, int, str]]  # (kill time, task, step, phase) a killed process held
    recovery_s: list[float]
    unrecovered: int
    lease_ttl_s: float
    extra: list[Check] = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    disallowed: list[str] = dataclasses.field(default_factory=list)  # filled by the checker


@dataclasses.dataclass
class Result:
    scenario: str
    run: int
    tasks: int
    faults: int
    fault_detail: str
    not_terminal: int
    steps_lost: int
    committed_twice: int
    missing: int
    unexpected: list[str]
    rebought: int
    rebought_allowed: int
    recovery_s: list[float]
    unrecovered: int
    checks: list[Check]
    duration_s: float
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def rebought_disallowed(self) -> int:
        return self.rebought - self.rebought_allowed

    @property
    def bars(self) -> list[Check]:
        return [
            Check("tasks not terminal", str(self.not_terminal), self.not_terminal == 0),
            Check("steps lost", str(self.steps_lost), self.steps_lost == 0),
            Check("step indexes committed twice", str(self.committed_twice), self.committed_twice == 0),
            Check("acknowledged but missing", str(self.missing), self.missing == 0),
            Check("unexpected outcomes", str(len(self.unexpected)), not self.unexpected),
            Check("LLM calls re-bought outside an allowed window", str(self.rebought_disallowed),
                  self.rebought_disallowed == 0),
            Check("kills never recovered", str(self.unrecovered), self.unrecovered == 0),
            *self.checks,
        ]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.bars)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def check(db: Database, data: RunData) -> Result:
    acked = [s.task_id for s in data.submitted if s.task_id is not None]
    unacked = [s for s in data.submitted if s.task_id is None]
    with db.session() as s:
        tasks = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(acked)))}
        steps: dict[uuid.UUID, list[Step]] = defaultdict(list)
        for st in s.scalars(select(Step).where(Step.task_id.in_(acked)).order_by(Step.step_index)):
            steps[st.task_id].append(st)
        commits = s.execute(
            select(TaskEvent.task_id, TaskEvent.step_index, func.count())
            .where(TaskEvent.task_id.in_(acked), TaskEvent.kind == "step.completed")
            .group_by(TaskEvent.task_id, TaskEvent.step_index)
        ).all()
    missing = [t for t in acked if t not in tasks]
    not_terminal = [t for t in tasks.values() if t.status not in ("completed", "failed", "cancelled")]
    unexpected: list[str] = [f"submission {s.index} never acknowledged" for s in unacked]
    steps_lost = 0
    for task in tasks.values():
        want = data.expected_failures.get(task.id)
        if want is not None:
            if task.status != "failed" or want not in (task.error or ""):
                unexpected.append(f"{task.id}: expected failed ({want}), got {task.status}: {task.error}")
            continue
        if task.status in ("failed", "cancelled"):
            unexpected.append(f"{task.id}: {task.status}: {task.error}")
            continue
        if task.status != "completed":
            continue
        committed = {st.step_index for st in steps[task.id] if st.status == "completed"}
        lost = set(range(data.expected_steps)) - committed
        steps_lost += len(lost)
        last = [st.step_index for st in steps[task.id] if st.is_last]
        if last != [data.expected_steps - 1] or task.steps_completed != len(committed):
            unexpected.append(f"{task.id}: inconsistent ledger (last={last}, steps_completed={task.steps_completed})")
    committed_twice = sum(n - 1 for _, _, n in commits if n > 1)
    rebought, allowed = _rebought(data, {str(t) for t in acked})
    faults = _fault_count(data)
    # a run whose faults never fired proves nothing: every scenario injects at least one
    checks = [*data.extra, Check("faults injected", str(faults), faults > 0)]
    return Result(
        scenario=data.scenario,
        run=data.run,
        tasks=len(data.submitted),
        faults=faults,
        fault_detail=_fault_detail(data),
        not_terminal=len(not_terminal),
        steps_lost=steps_lost,
        committed_twice=committed_twice,
        missing=len(missing),
        unexpected=unexpected,
        rebought=rebought,
        rebought_allowed=allowed,
        recovery_s=data.recovery_s,
        unrecovered=data.unrecovered,
        checks=checks,
        duration_s=data.duration_s,
        notes=[f"re-bought outside an allowed window: {d}" for d in data.disallowed],
    )


def _llm_faults(data: RunData) -> Counter[str]:
    return Counter(e["outcome"] for e in data.llm_log if e["outcome"] != "ok")


def _fault_count(data: RunData) -> int:
    return len(data.journal) + sum(_llm_faults(data).values())


def _fault_detail(data: RunData) -> str:
    kinds: Counter[str] = Counter()
    for r in data.journal:
        if r["kind"] == "crash":
            kinds[f"{r.get('action', 'kill')}@{r['window']}"] += 1
        elif r["kind"] == "sigkill":
            kinds[f"sigkill {r.get('role')}"] += 1
        else:
            kinds[r["kind"]] += 1
    for outcome, n in _llm_faults(data).items():
        kinds[f"llm {outcome}"] += n
    return ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none"


def _outage_windows(data: RunData) -> list[tuple[float, float]]:
    """Database outages, extended by a lease period (see the module docstring)."""
    return [
        (r["ts"], r.get("end_ts", r["ts"]) + data.lease_ttl_s + 2)
        for r in data.journal
        if r["kind"] == "postgres_restart"
    ]


def _rebought(data: RunData, tasks: Iterable[str]) -> tuple[int, int]:
    wanted = set(tasks)
    calls: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for e in data.llm_log:
        if e["outcome"] == "ok" and e["conversation"] in wanted:
            calls[(e["conversation"], e["turn"])].append(e)
    outages = _outage_windows(data)
    kills: dict[tuple[str, int], list[float]] = defaultdict(list)
    for ts, task, step, phase in data.interrupted:
        if phase == "think":
            kills[(task, step)].append(ts)
    rebought = allowed = 0
    for (task, turn), entries in calls.items():
        entries.sort(key=lambda e: e["ts"])
        for lost, again in itertools.pairwise(entries):  # every answer but the one used
            rebought += 1
            # the fake LLM logs a request when it handles it, which under load can be after the kill of the process
            # that sent it; a call logged within a lease period of the kill cannot come from a re-claim (the step's
            # lease was still the killed holder's), so it is the killed holder's call
            killed = any(lost["ts"] - data.lease_ttl_s <= k <= again["ts"] for k in kills.get((task, turn), ()))
            end = (lost.get("done_ts") or lost["ts"]) + EPS_S
            outage = any(a <= end and b >= lost["ts"] for a, b in outages)
            if killed or outage:
                allowed += 1
            else:
                data.disallowed.append(f"task {task} turn {turn}: call at {lost['ts']:.2f}, again {again['ts']:.2f}")
    return rebought, allowed


# -- the table -----------------------------------------------------------------------------------------------------

COLUMNS = ("scenario", "run", "tasks", "faults", "not terminal", "steps lost", "committed twice",
           "LLM re-bought (allowed/not)", "acked missing", "recovery p50/p99 s", "time s", "result")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def row(r: Result) -> list[str]:
    return [
        r.scenario, str(r.run), str(r.tasks), str(r.faults), str(r.not_terminal), str(r.steps_lost),
        str(r.committed_twice), f"{r.rebought} ({r.rebought_allowed}/{r.rebought_disallowed})", str(r.missing),
        f"{_fmt(percentile(r.recovery_s, 50))} / {_fmt(percentile(r.recovery_s, 99))}"
        + (f" (n={len(r.recovery_s)})" if r.recovery_s else ""),
        f"{r.duration_s:.0f}", "PASS" if r.passed else "FAIL",
    ]


def table(results: list[Result]) -> str:
    rows = [list(COLUMNS), *[row(r) for r in results]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line, fmt(rows[0]), line, *[fmt(r) for r in rows[1:]], line]
    for r in results:
        out.append(f"{r.scenario} #{r.run}: faults: {r.fault_detail}")
        for c in r.checks:
            out.append(f"    [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.value}")
        for c in r.bars:
            if not c.ok and c not in r.checks:
                out.append(f"    [FAIL] {c.name}: {c.value}")
        for u in r.unexpected[:10]:
            out.append(f"    unexpected: {u}")
        for n in r.notes[:10]:
            out.append(f"    {n}")
    return "\n".join(out)
