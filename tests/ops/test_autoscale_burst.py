"""``autogpt-workers autoscale`` under a burst: 200 three-step tasks arrive at once on an idle platform (one
worker process per queue); the scaler grows both queues' workers, the queues drain, the scaler shrinks them back
with warm shutdowns, and every task completes with each step executed once.

Reaction times are measured, never asserted (this machine's speed varies): printed (``pytest -s``) and written to
artifacts/autoscale-reaction.json with the committed-once and paid-once counts. All relative to the burst:

- first scale-out after the first submit; each queue at its maximum after the first submit;
- drained (every task's last step committed, so both queues are empty of the burst) after the last submit;
- first scale-in after the drain (negative: a queue that emptied early scaled in before the other drained);
- back at the minimum, every queue, after the drain.

Scale events are read from the scaler's own JSON log lines (``scale_out`` / ``scale_in``, with their timestamps)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from autogpt_workers.store.models import Step, TaskEvent
from tests.conftest import ARTIFACTS, Proc, free_port
from tests.ops.conftest import migrate, ops_env, wait_consumers, wait_http
from tests.ops.helpers import scrape, value

pytestmark = pytest.mark.e2e

TASKS = 200
STEPS = 3
MAX_WORKERS = 3


class Scaled:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.api_port, self.metrics_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.scaler = Proc("ops-autoscale", [
            "autoscale", "--min", "1", "--max", str(MAX_WORKERS), "--interval", "1", "--cooldown", "8",
            "--max-age", "5", "--grace", "90", "--metrics-port", str(self.metrics_port), "--log-dir", str(log_dir),
        ], env)
        self.procs = [
            Proc("ops-autoscale-api", ["api", "--port", str(self.api_port)], env),
            Proc("ops-autoscale-reaper", ["reaper"], env),
            self.scaler,
        ]

    def workers(self) -> dict[str, int]:
        text = scrape(self.metrics_url)
        return {q: int(value(text, "autogpt_autoscaler_workers", queue=q)) for q in ("think", "act")}


@pytest.fixture(scope="module")
def scaled(migrated, ops_broker_url, fake_llm, tmp_path_factory) -> Iterator[Scaled]:  # type: ignore[no-untyped-def]
    env = ops_env(ops_broker_url, fake_llm, tmp_path_factory.mktemp("autoscale"), AUTOGPT_ACT_CONCURRENCY="2")
    migrate(env)
    log_dir = ARTIFACTS / "logs" / "autoscale"
    st = Scaled(env, log_dir)
    st.scaler.log_path.unlink(missing_ok=True)
    for proc in st.procs:
        proc.start()
    try:
        wait_http(f"{st.api_url}/healthz")
        wait_http(st.metrics_url)
        wait_consumers(env["AUTOGPT_BROKER_URL"], {"autogpt.think", "autogpt.act"})
        yield st
    finally:
        scaler = st.scaler.popen
        if scaler is not None and scaler.poll() is None:
            scaler.send_signal(signal.SIGTERM)  # the scaler warm-stops its workers (grace 90 s), then exits
            try:
                scaler.wait(timeout=120)
            except subprocess.TimeoutExpired:
                st.scaler.kill()
        for proc in st.procs:
            proc.stop()
    assert st.scaler.popen is not None and st.scaler.popen.returncode == 0, "the scaler stopped cleanly"


def _scale_events(log_path: Path) -> list[dict[str, Any]]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"scale_' in line:
            event = json.loads(line)
            if event.get("event") in ("scale_out", "scale_in"):
                events.append(event)
    return events


def _ts(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _reaction(
    t0: float, submitted: float, drained_at: float, polled_min_at: float,
    outs: list[dict[str, Any]], ins: list[dict[str, Any]],
) -> dict[str, Any]:
    """The burst's reaction times in seconds (see the module docstring); None where it never happened."""

    def first(events: list[dict[str, Any]], **match: Any) -> float | None:
        times = [_ts(e) for e in events if all(e.get(k) == v for k, v in match.items())]
        return min(times) if times else None

    def rel(t: float | None, origin: float) -> float | None:
        return None if t is None else round(t - origin, 2)

    at_max = {q: rel(first(outs, queue=q, workers_after=MAX_WORKERS), t0) for q in ("think", "act")}
    # back at the minimum: each queue's last scale-in to 1 worker; all queues: the later of them
    at_min = {q: max((_ts(e) for e in ins if e["queue"] == q and e["workers_after"] == 1), default=None)
              for q in ("think", "act")}
    both_min = max((t for t in at_min.values() if t is not None), default=None)
    return {
        "submit_burst": round(submitted - t0, 2),
        "first_scale_out_after_first_submit": rel(first(outs), t0),
        "at_max_workers_after_first_submit": at_max,
        "drained_after_last_submit": round(drained_at - submitted, 2),
        "first_scale_in_after_drain": rel(first(ins), drained_at),
        "back_at_minimum_after_drain": rel(both_min, drained_at),
        "back_at_minimum_after_drain_by_queue": {q: rel(t, drained_at) for q, t in at_min.items()},
        "back_at_minimum_after_drain_polled": round(polled_min_at - drained_at, 2),
    }


@pytest.mark.timeout(1800)
def test_a_burst_scales_out_then_back_in_and_loses_no_step(scaled: Scaled, db, fake_llm: str) -> None:  # type: ignore[no-untyped-def]
    from tests.fake_llm.client import FakeLLMControl

    llm = FakeLLMControl(fake_llm)
    llm.reset()
    llm.set_config(latency_s=0.05)
    assert scaled.workers() == {"think": 1, "act": 1}, "starts at the minimum"

    def submit(i: int) -> str:
        resp = httpx.post(f"{scaled.api_url}/v1/tasks", json={"goal": f"burst {i} [[steps:{STEPS}]]"}, timeout=30)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(TASKS)))
    submitted = time.time()

    peak = {"think": 1, "act": 1}  # polled once the burst is submitted (the scale events say what came before)
    drained_at = None
    deadline = time.monotonic() + 1500  # this machine is shared: the drain may be slow
    while time.monotonic() < deadline:
        for q, n in scaled.workers().items():
            peak[q] = max(peak[q], n)
        with db.session() as s:
            open_tasks = s.execute(
                select(Step.task_id).where(Step.task_id.in_([uuid.UUID(t) for t in ids]), Step.is_last.is_(True),
                                           Step.status == "completed")
            ).all()
        if len(open_tasks) == TASKS:
            drained_at = time.time()
            break
        time.sleep(1)
    assert drained_at is not None, f"the burst did not drain in time (peak workers {peak})"

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and scaled.workers() != {"think": 1, "act": 1}:
        time.sleep(1)
    scaled_in_at = time.time()
    at_minimum = scaled.workers()

    # every task completed; every step committed exactly once; every completion bought once
    def status(task_id: str) -> str:
        resp = httpx.get(f"{scaled.api_url}/v1/tasks/{task_id}", timeout=10)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["status"])

    statuses = Counter(status(t) for t in ids)
    with db.session() as s:
        task_uuids = [uuid.UUID(t) for t in ids]
        steps = s.execute(select(Step.task_id, Step.step_index, Step.status).where(Step.task_id.in_(task_uuids))).all()
        committed = Counter(
            (e.task_id, e.step_index)
            for e in s.execute(select(TaskEvent.task_id, TaskEvent.step_index).where(
                TaskEvent.task_id.in_(task_uuids), TaskEvent.kind == "step.completed"))
        )
    ok = Counter((e["conversation"], e["turn"]) for e in llm.log() if e["outcome"] == "ok")
    ours = {k: n for k, n in ok.items() if k[0] in set(ids)}
    events = _scale_events(scaled.scaler.log_path)
    outs = [e for e in events if e["event"] == "scale_out" and _ts(e) >= t0 - 1]
    ins = [e for e in events if e["event"] == "scale_in" and _ts(e) >= t0 - 1]
    stopped = [json.loads(line) for line in scaled.scaler.log_path.read_text().splitlines()
               if line.startswith("{") and '"autoscale_worker_stopped"' in line]

    # the record first (it is what an operator reads), then the behaviour it must show
    reaction = _reaction(t0, submitted, drained_at, scaled_in_at, outs, ins)
    checks = {
        "tasks_completed": statuses["completed"],
        "steps_recorded": len(steps),
        "steps_committed": len(committed),
        "steps_committed_more_than_once": sum(1 for n in committed.values() if n > 1),
        "completions_paid": len(ours),
        "completions_paid_more_than_once": sum(1 for n in ours.values() if n > 1),
        "workers_stopped": len(stopped),
        "workers_stopped_cleanly": sum(1 for e in stopped if e["code"] == 0),
    }
    record = {
        "command": ".venv/bin/python -m pytest -s tests/ops/test_autoscale_burst.py",
        "burst": {"tasks": TASKS, "steps_per_task": STEPS, "min_workers": 1, "max_workers_per_queue": MAX_WORKERS,
                  "scaler": scaled.scaler.args[1:scaled.scaler.args.index("--metrics-port")]},
        "reaction_s": reaction,
        "peak_workers": {q: max([peak[q], *(e["workers_after"] for e in outs if e["queue"] == q)])
                         for q in ("think", "act")},
        "checks": checks,
        "scale_out_events": [(e["queue"], e["workers_before"], e["workers_after"], round(_ts(e) - t0, 2),
                              e["depth"]) for e in outs],
        "scale_in_events": [(e["queue"], e["workers_before"], e["workers_after"], round(_ts(e) - t0, 2))
                            for e in ins],
        "worker_drain_s": [e.get("drain_s") for e in stopped],
    }
    (ARTIFACTS / "autoscale-reaction.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\nautoscale reaction times (s):", json.dumps(reaction, indent=2), "checks:", json.dumps(checks), sep="\n")

    assert at_minimum == {"think": 1, "act": 1}, "the drained queues scale back to the minimum"
    assert statuses == Counter({"completed": TASKS}), statuses
    assert len(steps) == TASKS * STEPS and {st.status for st in steps} == {"completed"}
    assert set(committed.values()) == {1} and len(committed) == TASKS * STEPS
    assert len(ours) == TASKS * STEPS and set(ours.values()) == {1}, "one paid completion per step"
    assert outs and ins, events
    assert max(record["peak_workers"].values()) > 1, f"the burst never scaled out: {record['peak_workers']}"
    assert stopped and all(e["code"] == 0 for e in stopped), "scaled-in workers exit cleanly (warm shutdown)"
    llm.reset()
