"""Graceful shutdown under load: SIGTERM to a worker (only its main process, as Kubernetes sends it) while steps are
in flight. It takes no new step, finishes what it holds within ``shutdown_grace_s`` or hands it back (lease
released, wake-up re-published), and exits; a replacement worker continues; nothing is lost or committed twice."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.runner import SHUTDOWN_ERROR
from autogpt_workers.submit import submit_task
from tests.conftest import Proc
from tests.lifecycle.conftest import events_of, lc_env, steps_of, wait_for, wait_status

# each test starts its own worker processes (and the machine is shared): allow more than the default 300 s
pytestmark = pytest.mark.timeout(600)


class Workers:
    """Processes started by one test, stopped at its end whatever happens."""

    def __init__(self, env: dict[str, str], think_pool: str | None = None) -> None:
        self.env = env
        self.think_pool = think_pool
        self.procs: list[Proc] = []

    def start(self, name: str, queue: str, **extra: str) -> Proc:
        pool = {"AUTOGPT_THINK_POOL": self.think_pool} if self.think_pool else {}  # None: the default
        env = {**self.env, **pool, **extra}
        concurrency = "16" if queue == "think" else "2"
        proc = Proc(name, ["worker", "--queue", queue, "--concurrency", concurrency,
                           "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h"], env)
        self.procs.append(proc.start())
        return proc

    def reaper(self) -> Proc:
        proc = Proc("sd-reaper", ["reaper"], self.env)
        self.procs.append(proc.start())
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def workers(request, lc_urls, fake_llm: str) -> Iterator[Workers]:  # type: ignore[no-untyped-def]
    """The test's workers; a test marked ``BOTH_POOLS`` runs once with each think pool (threads, gevent)."""
    w = Workers(lc_env(lc_urls, fake_llm), getattr(request, "param", None))
    try:
        yield w
    finally:
        w.stop()


BOTH_POOLS = pytest.mark.parametrize("workers", ["threads", "gevent"], indirect=True)


def submit_many(db, publisher, goal: str, n: int) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    return [submit_task(db, publisher, TaskSubmission(goal=f"{goal} #{i}")).task_id for i in range(n)]


def sigterm_main_process(proc: Proc) -> int:
    assert proc.popen is not None
    os.kill(proc.popen.pid, signal.SIGTERM)
    return proc.popen.wait(timeout=180)


def in_flight(db, task_ids: list[uuid.UUID], status: str) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for t in task_ids for s in steps_of(db, t) if s.status == status and s.lease_token is not None)


def assert_all_completed_once(db, task_ids: list[uuid.UUID], steps: int) -> None:  # type: ignore[no-untyped-def]
    for task_id in task_ids:
        task = wait_status(db, task_id, timeout_s=240)
        assert task.status == "completed", (task_id, task.status, task.error)
        assert [s.status for s in steps_of(db, task_id)] == ["completed"] * steps
        commits = Counter(e.step_index for e in events_of(db, task_id) if e.kind == "step.completed")
        assert commits == Counter(dict.fromkeys(range(steps), 1)), commits


@BOTH_POOLS
def test_a_think_worker_past_its_grace_hands_its_llm_calls_back(workers, lc_db, lc_publisher, llm) -> None:  # type: ignore[no-untyped-def]
    llm.set_config(latency_s=4.0)
    workers.reaper()
    workers.start("sd-act", "act")
    doomed = workers.start("sd-think-short-grace", "think", AUTOGPT_SHUTDOWN_GRACE_S="0.5")
    task_ids = submit_many(lc_db, lc_publisher, "Scale me in [[steps:3]]", 12)
    wait_for(lambda: in_flight(lc_db, task_ids, "thinking") >= 6, 60, "LLM calls in flight")
    assert sigterm_main_process(doomed) == 0
    handed_back = [s for t in task_ids for s in steps_of(lc_db, t) if s.error == SHUTDOWN_ERROR]
    assert handed_back, "the worker should have handed its in-flight steps back"
    assert all(s.lease_token is None for s in handed_back)
    workers.start("sd-think-replacement", "think")
    assert_all_completed_once(lc_db, task_ids, 3)
    # only the calls abandoned by the shutdown were bought again
    rebought = {(str(t), turn) for t in task_ids for turn, n in
                Counter(e["turn"] for e in llm.log(str(t)) if e["outcome"] == "ok").items() if n > 1}
    assert rebought <= {(str(s.task_id), s.step_index) for s in handed_back}


@BOTH_POOLS
def test_a_think_worker_within_its_grace_finishes_its_steps_and_hands_nothing_back(  # type: ignore[no-untyped-def]
    workers, lc_db, lc_publisher, llm
) -> None:
    llm.set_config(latency_s=1.5)
    workers.reaper()
    workers.start("sd-act", "act")
    leaving = workers.start("sd-think-long-grace", "think", AUTOGPT_SHUTDOWN_GRACE_S="30")
    task_ids = submit_many(lc_db, lc_publisher, "Drain me [[steps:3]]", 10)
    wait_for(lambda: in_flight(lc_db, task_ids, "thinking") >= 5, 60, "LLM calls in flight")
    assert sigterm_main_process(leaving) == 0
    assert not [s for t in task_ids for s in steps_of(lc_db, t) if s.error == SHUTDOWN_ERROR]
    assert in_flight(lc_db, task_ids, "thinking") == 0  # it finished what it held before exiting
    workers.start("sd-think-replacement", "think")
    assert_all_completed_once(lc_db, task_ids, 3)
    for t in task_ids:
        assert all(n == 1 for n in Counter(e["turn"] for e in llm.log(str(t)) if e["outcome"] == "ok").values())


def test_an_act_worker_stuck_in_a_command_hands_the_step_back_at_its_grace(workers, lc_db, lc_publisher, llm) -> None:  # type: ignore[no-untyped-def]
    workers.reaper()
    workers.start("sd-think", "think", AUTOGPT_INLINE_ACT="false")  # the commands go to the act worker under test
    # the chaos hook makes this worker's commands hang for the tasks marked "slow-act": only a hand-back frees them
    stuck = workers.start("sd-act-hanging", "act", AUTOGPT_SHUTDOWN_GRACE_S="1",
                          AUTOGPT_CHAOS_CRASH_AT="command:1:slow-act:hang")
    task_ids = submit_many(lc_db, lc_publisher, "Hang me slow-act [[steps:3]]", 2)
    wait_for(lambda: in_flight(lc_db, task_ids, "acting") >= 2, 60, "both act children inside a command")
    assert sigterm_main_process(stuck) in (0, 1)
    handed_back = [s for t in task_ids for s in steps_of(lc_db, t) if s.error == SHUTDOWN_ERROR]
    assert len(handed_back) == 2 and all(s.lease_token is None for s in handed_back)
    workers.start("sd-act-replacement", "act")
    assert_all_completed_once(lc_db, task_ids, 3)


@BOTH_POOLS
def test_scaling_in_under_load_loses_nothing(workers, lc_db, lc_publisher, llm) -> None:  # type: ignore[no-untyped-def]
    llm.set_config(latency_s=0.3, latency_jitter_s=0.6)
    workers.reaper()
    thinkers = [workers.start(f"sd-think-{i}", "think", AUTOGPT_SHUTDOWN_GRACE_S="2") for i in range(2)]
    actors = [workers.start(f"sd-act-{i}", "act", AUTOGPT_SHUTDOWN_GRACE_S="2") for i in range(2)]
    task_ids = submit_many(lc_db, lc_publisher, "Load [[steps:4]]", 12)
    wait_for(lambda: sum(len(steps_of(lc_db, t)) for t in task_ids) >= 12 * 2, 240, "the run to be under way")
    assert sigterm_main_process(thinkers[0]) == 0
    assert sigterm_main_process(actors[0]) in (0, 1)
    assert_all_completed_once(lc_db, task_ids, 4)
    assert thinkers[1].popen is not None and thinkers[1].popen.poll() is None
    assert actors[1].popen is not None and actors[1].popen.poll() is None


@BOTH_POOLS
def test_a_think_worker_killed_inside_an_inline_command_loses_nothing_and_buys_no_call_twice(  # type: ignore[no-untyped-def]
    workers, lc_db, lc_publisher, llm
) -> None:
    """``write_file`` runs in the think worker right after its proposal is persisted (``runs_inline``). Killed
    there, the step's lease is its safety net: when it expires the reaper re-arms the act phase on the act queue,
    which runs the (idempotent) command again and commits it once; the model is not asked again."""
    workers.reaper()
    workers.start("in-act", "act")
    doomed = workers.start("in-think-doomed", "think", AUTOGPT_LEASE_TTL_S="3",
                           AUTOGPT_CHAOS_CRASH_AT="command:1:die-inline")
    [task_id] = submit_many(lc_db, lc_publisher, "Kill me in my command die-inline [[steps:3]]", 1)
    assert doomed.popen is not None
    wait_for(lambda: doomed.popen.poll() is not None, 60, "the think worker to be killed inside the command")
    step0 = steps_of(lc_db, task_id)[0]
    assert step0.status == "acting" and step0.lease_token is not None  # the inline act phase, lease still held
    workers.start("in-think", "think")
    assert_all_completed_once(lc_db, [task_id], 3)
    step0 = steps_of(lc_db, task_id)[0]
    # one think delivery, then the act phase twice: inline (killed), then from the act queue
    assert step0.proposal["think_deliveries"] == 1 and step0.deliveries == 3, (step0.proposal, step0.deliveries)
    assert "expired during acting" in (step0.error or "")
    assert Counter(e["turn"] for e in llm.log(str(task_id)) if e["outcome"] == "ok") == Counter({0: 1, 1: 1, 2: 1})


@BOTH_POOLS
def test_an_inline_command_past_its_bound_goes_to_the_act_queue(workers, lc_db, lc_publisher, llm) -> None:  # type: ignore[no-untyped-def]
    """A thread cannot be killed: an inline command that runs past ``inline_act_time_limit_s`` (here it hangs) is
    handed to the act queue, whose prefork workers can enforce the hard time limit; the task goes on."""
    workers.reaper()
    workers.start("il-act", "act")
    workers.start("il-think", "think", AUTOGPT_INLINE_ACT_TIME_LIMIT_S="1",
                  AUTOGPT_CHAOS_CRASH_AT="command:1:hang-inline:hang")
    [task_id] = submit_many(lc_db, lc_publisher, "Hang my inline command hang-inline [[steps:3]]", 1)
    assert_all_completed_once(lc_db, [task_id], 3)
    steps = steps_of(lc_db, task_id)
    assert all("handed back: inline act time limit" in (s.error or "") for s in steps), [s.error for s in steps]
    assert all(s.proposal["think_deliveries"] == 1 and s.deliveries == 3 for s in steps)
    assert Counter(e["turn"] for e in llm.log(str(task_id)) if e["outcome"] == "ok") == Counter({0: 1, 1: 1, 2: 1})
