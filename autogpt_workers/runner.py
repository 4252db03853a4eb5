"""The two phases of an agent step, as plain functions of the ledger, the agent and the publisher.

``think``: claim the step, check the budget, ask the model, persist its proposal with the act wake-up (or park it
for a human in approval mode).
``act``: claim the proposed step, run the command in the task's workspace, commit the observation, the artifacts
and the next step's wake-up.

Lifecycle at the phase boundaries: the claim refuses to start a phase of a task that is paused, cancelling,
waiting for approval or past its deadline (see ``Ledger.claim``); the ledger's writes at the end of a phase park
the run if it was paused meanwhile and finish a cancel. Inside a phase:

- think runs the LLM call on a helper thread and waits on the lease's hold: a cancel (seen by the lease heartbeat,
  within ``lease_heartbeat_s``) abandons the call, the task ends ``cancelled`` and the answer, if it still comes,
  is dropped; so does a graceful shutdown past its grace (the step is handed back) and the think time limit. The
  abandoned HTTP request itself is not interrupted (it ends on its own, bounded by the LLM timeout and attempts):
  the worker slot is free at once, the answer is discarded.
- act runs the command in-process (in the prefork child) with a stop probe on the hold: a sandboxed program
  (``execute_python``/``execute_shell``) is killed within ``lease_heartbeat_s`` + 0.2 s of a cancel, a shutdown
  past its grace or a lost lease, and the step's outcome is not committed (a cancel ends the task ``cancelled``;
  a shutdown hands the step back). A command running in Python code only stops at the next safe point.

Each returns a short outcome string (shown in Flower as the Celery task's result). The Celery glue in ``tasks``
maps ``StepPoisoned`` to a dead-lettered message and an unreachable database to a retried wake-up; the ledger
writes that hold paid-for work (a proposal, a command's outcome) are retried here for up to a lease period.
Nothing here imports Celery.
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError

from autogpt_workers import metrics_logs, preapproval
from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import Budget, Observation, Proposal, Spent, StepRecord, TaskContext
from autogpt_workers.artifacts import ArtifactStore, LocalArtifactStore, changed_paths, snapshot
from autogpt_workers.broker import Publisher
from autogpt_workers.commands.workspace import Workspace
from autogpt_workers.config import Settings
from autogpt_workers.crashpoints import CrashPoints
from autogpt_workers.daemon_threads import DaemonThreads
from autogpt_workers.errors import (
    BudgetExceeded,
    LLMPermanentError,
    LLMRateLimited,
    LLMTransientError,
    StepPoisoned,
    UsageError,
)
from autogpt_workers.lease import Hold, LeaseKeeper
from autogpt_workers.lifecycle import approval_required
from autogpt_workers.observe import RunObserver
from autogpt_workers.publish_marks import PublishMarks
from autogpt_workers.store.ledger import (
    Claim,
    ClaimOutcome,
    FileRecord,
    HistoryRow,
    Ledger,
    ProposeOutcome,
    RunTask,
    Wakeup,
)
from autogpt_workers.store.models import Task
from autogpt_workers.supervise import Supervisor, TakenOver, run_watched
from autogpt_workers.task_facts import TaskFacts

log = structlog.get_logger(__name__)

T = TypeVar("T")
SHUTDOWN_ERROR = "handed back: the worker was shutting down"


class Abandoned(Exception):
    """The work under a lease was given up (cancel, shutdown, lease lost, time limit); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _record(step: HistoryRow) -> StepRecord:
    return StepRecord(
        index=step.step_index,
        proposal=Proposal.model_validate(step.proposal),
        observation=Observation(output=step.output or "", is_error=step.is_error, is_last=step.is_last),
    )


class _Records:
    """Committed steps as the agent's history records, kept per process (a committed step never changes): a think
    reads only the steps after those kept (``known``) and validates only those.

    Each task's records are one list, steps 0, 1, ... in order, so a think finds and copies them at the cost of a
    list copy rather than a lookup per step. At most ``max_entries`` records are kept in all: past that, the tasks
    used least recently are dropped whole (a task still running then reads its history again, once)."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._tasks: collections.OrderedDict[uuid.UUID, list[StepRecord]] = collections.OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def known(self, task_id: uuid.UUID, before: int) -> int:
        """How many of the task's first steps (0, 1, ... below ``before``) are kept."""
        with self._lock:
            return min(before, len(self._tasks.get(task_id, ())))

    def of(self, task_id: uuid.UUID, known: int, rows: list[HistoryRow]) -> list[StepRecord]:
        """The records of steps ``0..known-1`` (kept) followed by ``rows`` (read after them)."""
        read = [_record(row) for row in rows]
        with self._lock:
            kept = self._tasks.get(task_id)
            if kept is None:
                kept = self._tasks[task_id] = []
            if len(kept) < known:  # dropped since ``known``: the caller reads the whole history again
                if not kept:
                    del self._tasks[task_id]
                raise KeyError(known)
            out = kept[:known]
            for record in read:
                if record.index == len(kept):  # the next step: kept (a duplicate delivery may have added it)
                    kept.append(record)
                    self._count += 1
                out.append(record)
            self._tasks.move_to_end(task_id)
            while self._count > self.max_entries and len(self._tasks) > 1:
                _, dropped = self._tasks.popitem(last=False)
                self._count -= len(dropped)
        return out


def _stop_text(hold: Hold) -> str | None:
    """Why a running command should end now, in words for its observation; None to go on."""
    reason = hold.stop_reason
    if reason is None:
        return None
    return {"cancel": "the task was cancelled", "shutdown": "the worker is shutting down"}.get(reason, reason)


def _age(task: RunTask) -> float:
    return (datetime.now(UTC) - task.created_at).total_seconds()


def _context(task: RunTask, step_index: int) -> TaskContext:
    return TaskContext(
        task_id=str(task.id),
        goal=task.goal,
        step_index=step_index,
        budget=Budget.model_validate(task.budget),
        spent=Spent(
            steps=task.steps_completed,
            prompt_tokens=task.prompt_tokens,
            completion_tokens=task.completion_tokens,
            cost_usd=task.cost_usd,
            started_at=task.started_at,
        ),
        allowed_commands=task.allowed_commands,
    )


class StepRunner:
    def __init__(
        self,
        ledger: Ledger,
        publisher: Publisher,
        agent: Agent,
        settings: Settings,
        owner: str,
        leases: LeaseKeeper,
        observer: RunObserver | None = None,
        artifacts: ArtifactStore | None = None,
        facts: TaskFacts | None = None,
    ) -> None:
        self.observer = observer or RunObserver()
        self.artifacts = artifacts or LocalArtifactStore(settings.workspace_root)
        self.ledger = ledger
        self.publisher = publisher
        self.agent = agent
        self.settings = settings
        self.owner = owner
        self.leases = leases
        self.crash = CrashPoints.from_spec(settings.chaos_crash_at, settings.chaos_journal,
                                           settings.chaos_min_uptime_s)
        # reused threads for inline commands and for takeovers of LLM calls, not one started per call
        self._calls = DaemonThreads("step-call")
        self.supervisor = Supervisor(self._calls.submit)
        self.marks = PublishMarks(ledger.mark_published)
        self._records = _Records()
        # a task's tenant and profile, as its claims read them (the agent's and the memory's lookups use it)
        self.facts = facts or TaskFacts(lambda task_id: None)
        # called when a think delivery goes on to run its command itself: ("act", think's outcome); the worker
        # sets it to end the think span and open the act span (tracing)
        self.hand_on: Callable[[str, str], None] = lambda phase, outcome: None

    # -- phases ----------------------------------------------------------------------------------------------------

    def think(self, task_id: uuid.UUID, step_index: int) -> str:
        if self.leases.draining:
            return self._pass_on(task_id, step_index, "think")
        known = self._records.known(task_id, step_index)
        claim = self._claim(task_id, step_index, "think", history_from=known)
        if claim.token is None:
            return self._settle(claim, task_id, step_index, "think")
        token = claim.token
        started = time.monotonic()
        bound = log.bind(task_id=str(task_id), step=step_index, phase="think")
        with self.leases.hold(token) as hold:
            task, history = claim.task, claim.history
            assert task is not None
            ctx = _context(task, step_index)
            try:
                records = self._records.of(task_id, known, history)
            except KeyError:  # some were evicted meanwhile: read them all
                records = self._records.of(task_id, 0, self.ledger.history(task_id, step_index))
            try:
                proposal = self._call_llm(
                    hold,
                    lambda: self.agent.think(ctx, records, datetime.now(UTC)),
                    lambda reason: self._abandon(task, step_index, token, "think", claim.deliveries, reason,
                                                 started),
                    lambda: self.crash.maybe("llm", task_id=task_id, step_index=step_index, phase="think",
                                             goal=task.goal),
                )
            except TakenOver as exc:
                return exc.outcome
            except BudgetExceeded as exc:
                return self._fail(task, step_index, token, exc.reason, "think", started)
            except LLMPermanentError as exc:
                return self._fail(task, step_index, token, f"the LLM refused the request: {exc}", "think", started)
            except UsageError as exc:  # e.g. an allow-list naming a command this platform does not have
                return self._fail(task, step_index, token, f"the task cannot run: {exc}", "think", started)
            except LLMRateLimited as exc:  # the server's Retry-After is longer than we wait in a worker thread
                self.observer.phase_finished("think", time.monotonic() - started, "retry")
                return self._hand_back(task_id, step_index, token, "think", claim.deliveries, exc,
                                       countdown=self._retry_after(exc.retry_after) + random.uniform(0, 1),
                                       refund=True)
            except LLMTransientError as exc:
                self.observer.phase_finished("think", time.monotonic() - started, "retry")
                return self._hand_back(task_id, step_index, token, "think", claim.deliveries, exc)
            llm_seconds = time.monotonic() - started
            asks = self._awaits_human(proposal.command)
            gate = approval_required(task.approval, proposal.command, self._side_effect(proposal.command), asks)
            payload = {**proposal.model_dump(mode="json"), **({"awaits_human": True} if asks else {})}
            inline = self._runs_inline(proposal, gate, asks)
            cut_short = None  # why a pure command could not finish here: its act phase is handed back below
            if inline and self._is_pure(proposal):
                try:
                    observation = self._await(hold, lambda: self._act_pure(ctx, task, step_index, proposal, hold),
                                              limit_s=self.settings.inline_act_time_limit_s,
                                              limit_reason="inline act time limit")
                except Abandoned as exc:
                    cut_short = exc.reason
                else:
                    return self._commit_pure(task, step_index, token, proposal, payload, observation, started,
                                             llm_seconds)
            act_lease = self.settings.lease_ttl_s if inline else None
            result = self._persist(
                lambda: self.ledger.propose(
                    task_id, step_index, token, payload, await_approval=gate, act_lease_ttl_s=act_lease
                )
            )
            if not self._proposal_written(result.outcome, proposal, started, llm_seconds, bound):
                return "fenced"
            self.crash.maybe("proposed", task_id=task_id, step_index=step_index, phase="think", goal=task.goal)
            if result.wakeup is not None:
                self._publish([result.wakeup])
                self.crash.maybe("published", task_id=task_id, step_index=step_index, phase="think", goal=task.goal)
            acting = result.outcome is ProposeOutcome.acting
            think_result = "proposed" if acting else result.outcome.value
            self.observer.phase_finished("think", time.monotonic() - started, think_result)
            if result.outcome is ProposeOutcome.cancelled:
                self.observer.task_ended("cancelled", _age(task))
            if result.outcome is ProposeOutcome.awaiting_approval:
                self._apply_recorded_request(task_id, step_index)
            if not acting:  # else the act phase goes on here: its step_committed line carries the proposal's facts
                bound.info("step_proposed", command=proposal.command, error=proposal.error,
                           outcome=result.outcome.value, tokens=proposal.usage.total_tokens)
            if acting:  # the act phase goes on here, under the same lease
                self.hand_on("act", think_result)
                if cut_short is not None:  # as if the command had been cut short on the usual inline path
                    return self._abandon(task, step_index, token, "act", 1, cut_short, time.monotonic())
                with structlog.contextvars.bound_contextvars(phase="act"):
                    return self._run_command(task, step_index, token, hold, proposal, 1, time.monotonic(),
                                             inline=True)
        if result.outcome is ProposeOutcome.proposed:
            return f"proposed {proposal.command or 'nothing (model error)'}"
        return f"{result.outcome.value}: {proposal.command or 'nothing (model error)'}"

    def _act_pure(
        self, ctx: TaskContext, task: RunTask, step_index: int, proposal: Proposal, hold: Hold
    ) -> Observation:
        """A pure command (or a model error) run before anything of the step is written."""
        workspace = Workspace(self.workspace_dir(task.id))  # a pure command reads no file: nothing to materialise
        observation = self.agent.act(ctx, proposal, workspace, should_stop=lambda: _stop_text(hold))
        self.crash.maybe("command", task_id=task.id, step_index=step_index, phase="act", goal=task.goal)
        return observation

    def _commit_pure(
        self,
        task: RunTask,
        step_index: int,
        token: uuid.UUID,
        proposal: Proposal,
        payload: dict[str, Any],
        observation: Observation,
        started: float,
        llm_seconds: float,
    ) -> str:
        """Commit a pure step's proposal and outcome in one transaction (``Ledger.propose_and_commit``): one
        transaction and one round trip fewer than proposing, then committing. The model's reply is at risk until
        that commit, as it is until ``propose`` on the usual path; running the command first adds microseconds to
        that window. If the task was cancelling or paused meanwhile, only the proposal is kept, as ``propose``
        would, and the command's outcome is dropped (it changed nothing)."""
        task_id = task.id
        bound = log.bind(task_id=str(task_id), step=step_index, phase="think")
        result, wakeup = self._persist(
            lambda: self.ledger.propose_and_commit(
                task_id, step_index, token, payload, observation.output, observation.is_error, observation.is_last,
                self.settings.lease_ttl_s,
            )
        )  # fmt: skip
        if not self._proposal_written(result.outcome, proposal, started, llm_seconds, bound):
            return "fenced"
        acting = result.outcome is ProposeOutcome.acting  # else cancelled or parked: the proposal alone was kept
        think_result = "proposed" if acting else result.outcome.value
        self.observer.phase_finished("think", time.monotonic() - started, think_result)
        if not acting:
            bound.info("step_proposed", command=proposal.command, error=proposal.error, outcome=result.outcome.value,
                       tokens=proposal.usage.total_tokens)
            if result.outcome is ProposeOutcome.cancelled:
                self.observer.task_ended("cancelled", _age(task))
            return f"{result.outcome.value}: {proposal.command or 'nothing (model error)'}"
        self.hand_on("act", "proposed")
        acted = time.monotonic()
        self.crash.maybe("committed", task_id=task_id, step_index=step_index, phase="act", goal=task.goal)
        if wakeup is not None:
            self._publish([wakeup])
        self.crash.maybe("published", task_id=task_id, step_index=step_index, phase="act", goal=task.goal)
        self.agent.observed(_context(task, step_index), proposal, observation)  # memory: best-effort
        outcome = "finished" if observation.is_last else "committed"
        self.observer.phase_finished("act", time.monotonic() - acted, outcome)
        if observation.is_last:
            self.observer.task_ended("completed", _age(task))
        log.info("step_committed", task_id=str(task_id), step=step_index, phase="act", command=proposal.command,
                 is_last=observation.is_last, is_error=observation.is_error, error=proposal.error,
                 tokens=proposal.usage.total_tokens, inline=True)
        return "finished" if observation.is_last else f"committed step {step_index}"

    def _proposal_written(
        self, outcome: ProposeOutcome, proposal: Proposal, started: float, llm_seconds: float, bound: Any
    ) -> bool:
        """After the proposal's transaction: False if our lease had been taken over (nothing was written; logged and
        counted as fenced), else True, with the model's tokens and cost counted."""
        if outcome is ProposeOutcome.fenced:
            bound.warning("fenced", detail="lease taken over before the proposal was persisted")
            self.observer.phase_finished("think", time.monotonic() - started, "fenced")
            return False
        self.observer.proposal(
            proposal.model, proposal.usage.prompt_tokens, proposal.usage.completion_tokens, proposal.cost_usd,
            llm_seconds,
        )  # fmt: skip
        return True

    def _apply_recorded_request(self, task_id: uuid.UUID, step_index: int) -> None:
        """An Agent Protocol request for this step recorded before the proposal existed approves (or answers) it
        now (``preapproval``); if this fails, the API applies it when the client asks again."""
        try:
            preapproval.honour(self.ledger.db, self.publisher, task_id, step_index)
        except Exception as exc:
            log.warning("recorded_step_request_not_applied", task_id=str(task_id), step=step_index, error=str(exc))

    def act(self, task_id: uuid.UUID, step_index: int) -> str:
        if self.leases.draining:
            return self._pass_on(task_id, step_index, "act")
        claim = self._claim(task_id, step_index, "act")
        if claim.token is None:
            return self._settle(claim, task_id, step_index, "act")
        token = claim.token
        started = time.monotonic()
        with self.leases.hold(token) as hold:
            task, current = claim.task, claim.current
            assert task is not None and current is not None and current.proposal is not None
            if hold.stop_reason is not None:  # cancelled (or shutting down) between the claim and now
                return self._abandon(task, step_index, token, "act", claim.deliveries, hold.stop_reason, started)
            proposal = Proposal.model_validate(current.proposal)
            edited = bool(current.proposal.get("edited"))
            return self._run_command(task, step_index, token, hold, proposal, claim.deliveries, started, edited=edited)

    def _run_command(
        self,
        task: RunTask,
        step_index: int,
        token: uuid.UUID,
        hold: Hold,
        proposal: Proposal,
        deliveries: int,
        started: float,
        *,
        edited: bool = False,
        inline: bool = False,
    ) -> str:
        """The act phase under a held lease (claimed from the act queue, or taken straight on from think with
        ``inline``): run the command, commit the step with its successor's wake-up, publish it."""
        task_id = task.id
        bound = log.bind(task_id=str(task_id), step=step_index, phase="act")
        ctx = _context(task, step_index)
        problem = self._check_edit(ctx, proposal) if edited else None
        workspace = Workspace(self.artifacts.materialise(str(task_id), self.workspace_dir(task_id)))
        before = None if self.artifacts.works_in_place(str(task_id), workspace.root) else snapshot(workspace.root)

        def run() -> Observation:
            if problem is not None:
                result = Observation(output=f"Error: {problem}", is_error=True)
            else:
                result = self.agent.act(ctx, proposal, workspace, should_stop=lambda: _stop_text(hold))
            self.crash.maybe("command", task_id=task_id, step_index=step_index, phase="act", goal=task.goal)
            return result

        if inline:
            # a thread cannot be killed: past its bound the step goes to the act queue, whose prefork workers
            # enforce the hard time limit (the stuck call is left to finish; its outcome is dropped)
            try:
                observation = self._await(hold, run, limit_s=self.settings.inline_act_time_limit_s,
                                          limit_reason="inline act time limit")
            except Abandoned as exc:
                return self._abandon(task, step_index, token, "act", deliveries, exc.reason, started)
        else:
            observation = run()
        if hold.stop_reason is not None:  # the command may have been cut short: its outcome is not committed
            return self._abandon(task, step_index, token, "act", deliveries, hold.stop_reason, started)
        if before is not None:
            self.artifacts.sync_back(str(task_id), workspace.root, changed_paths(before, snapshot(workspace.root)))
        files = [self._file_record(workspace, p) for p in observation.files_written]
        committed, wakeup = self._persist(
            lambda: self.ledger.commit_step(
                task_id,
                step_index,
                token,
                observation.output,
                observation.is_error,
                observation.is_last,
                [f for f in files if f is not None],
            )
        )
        if not committed:
            bound.warning("fenced", detail="lease taken over before the step was committed")
            self.observer.phase_finished("act", time.monotonic() - started, "fenced")
            return "fenced"
        self.crash.maybe("committed", task_id=task_id, step_index=step_index, phase="act", goal=task.goal)
        if wakeup is not None:
            self._publish([wakeup])
        self.crash.maybe("published", task_id=task_id, step_index=step_index, phase="act", goal=task.goal)
        self.agent.observed(ctx, proposal, observation)  # memory, after the commit: best-effort, never fails the step
        self.observer.phase_finished(
            "act", time.monotonic() - started, "finished" if observation.is_last else "committed"
        )
        if observation.is_last:
            self.observer.task_ended("completed", _age(task))
        bound.info(
            "step_committed", command=proposal.command, is_last=observation.is_last, is_error=observation.is_error,
            tokens=proposal.usage.total_tokens, inline=inline,
        )  # one line per step when the act phase went on in the think worker (no step_proposed line before it)
        return "finished" if observation.is_last else f"committed step {step_index}"

    def workspace_dir(self, task_id: uuid.UUID) -> Path:
        return self.artifacts.workspace_dir(str(task_id), self.settings.artifact_scratch_dir)

    # -- shutdown --------------------------------------------------------------------------------------------------

    def hand_back_all(self, holds: list[Hold]) -> int:
        """Graceful shutdown past its grace, for work that cannot be interrupted (a command running in-process):
        release these leases and re-arm their wake-ups, so another worker takes the steps over at once."""
        released = 0
        for h in holds:
            held = self.ledger.held_step(h.token)
            if held is None:
                continue
            wakeup = self.ledger.release(held[0], held[1], h.token, error=SHUTDOWN_ERROR)
            if wakeup is not None:
                self._publish([wakeup])
            released += 1
        log.warning("steps_handed_back", count=released, reason="shutdown grace expired")
        return released

    def exit_once_only_stuck(self, wait_s: float = 10.0, exit: Callable[[int], Any] = os._exit) -> bool:
        """Past the shutdown grace, in a thread-pool worker: every hold has been told to stop, and the LLM calls
        under them taken over (their steps handed back). Celery's warm shutdown would still wait for each such
        call's thread until the call ends; once every step this process holds is one of those, exit. Returns False
        (nothing stuck: the warm shutdown goes on) or exits; the deliveries of the stuck calls go back to the queue
        unacked and meet their steps already handed back."""
        end = time.monotonic() + wait_s
        while True:
            stuck = self.supervisor.stuck()
            settled = all(w.settled(0) for w in stuck)
            held = len(self.leases.held())
            if not stuck and held == 0:
                return False
            if (stuck and settled and len(stuck) >= held) or time.monotonic() >= end:
                break
            time.sleep(0.05)
        if not stuck:
            return False
        log.warning("worker_exiting_past_stuck_calls", calls=len(stuck), held=held)
        exit(0)
        return True

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _call_llm(
        self,
        hold: Hold,
        call: Callable[[], T],
        abandon: Callable[[str], str],
        crash_probe: Callable[[], None],
    ) -> T:
        """Make the think phase's LLM call on this thread; return its result, or raise ``TakenOver`` if the step
        was settled meanwhile (``abandon(reason)``, run by another thread as soon as the hold is told to stop or
        the think time limit less a margin has passed; the call is left to finish and its result is dropped).

        No helper thread: waiting beside a call on another thread cost two thread switches each way per step."""
        probe = None
        if self.crash.armed("llm"):  # chaos: a kill inside the LLM call, 50 ms into it
            probe = threading.Timer(0.05, crash_probe)
            probe.daemon = True
            probe.start()
        try:
            value: T = run_watched(self.supervisor, hold, call, abandon,
                                   max(1.0, self.settings.think_time_limit_s - 5), "think time limit")
        finally:
            if probe is not None:
                probe.cancel()
        return value

    def _await(self, hold: Hold, call: Callable[[], T], limit_s: float, limit_reason: str) -> T:
        """Run ``call`` (an inline command) on a helper thread; return its result, or raise ``Abandoned`` as soon
        as the hold is told to stop or ``limit_s`` passes (the helper thread is left to finish; its result is
        dropped)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc
            finally:
                box["done"] = True
                hold.wake()

        context = contextvars.copy_context()  # the log context (task, step) follows the call
        self._calls.submit(context.run, run)
        limit = time.monotonic() + limit_s
        while "done" not in box:
            if hold.stop_reason is not None:
                raise Abandoned(hold.stop_reason)
            now = time.monotonic()
            if now >= limit:
                raise Abandoned(limit_reason)
            hold.wait(max(0.0, limit - now))
            hold.clear_wake()
        if "error" in box:
            raise box["error"]
        value: T = box["value"]
        return value

    def _abandon(
        self, task: RunTask, step_index: int, token: uuid.UUID, phase: str, deliveries: int, reason: str,
        started: float,
    ) -> str:
        task_id = task.id
        if reason == "cancel":
            cancelled = self.ledger.cancel_in_flight(task_id, step_index, token)
            self.observer.phase_finished(phase, time.monotonic() - started, "cancelled" if cancelled else "fenced")
            if cancelled:
                self.observer.task_ended("cancelled", _age(task))
            log.info("step_abandoned", task_id=str(task_id), step=step_index, phase=phase, reason=reason)
            return "cancelled" if cancelled else "fenced"
        if reason == "lease lost":
            self.observer.phase_finished(phase, time.monotonic() - started, "fenced")
            log.warning("step_abandoned", task_id=str(task_id), step=step_index, phase=phase, reason=reason)
            return "fenced"
        error = SHUTDOWN_ERROR if reason == "shutdown" else f"handed back: {reason}"
        self.observer.phase_finished(phase, time.monotonic() - started, "retry")
        return self._hand_back(task_id, step_index, token, phase, deliveries, RuntimeError(error),
                               countdown=0.0 if reason == "shutdown" else None)

    def _pass_on(self, task_id: uuid.UUID, step_index: int, phase: str) -> str:
        """This worker is shutting down: leave the wake-up to another worker without touching the step."""
        self.publisher.wake(task_id, step_index, phase, self._priority(task_id))
        log.info("delivery_passed_on", task_id=str(task_id), step=step_index, phase=phase, reason="shutdown")
        return "passed on: shutting down"

    def _claim(self, task_id: uuid.UUID, step_index: int, phase: str, history_from: int = 0) -> Claim:
        claim = self.ledger.claim(
            task_id, step_index, phase, self.owner, self.settings.lease_ttl_s, self.settings.max_deliveries,
            history_from=history_from,
        )  # fmt: skip
        wait = (datetime.now(UTC) - claim.queued_at).total_seconds() if claim.queued_at else None
        self.observer.delivery(phase, claim.outcome.value, wait)
        if claim.task is not None:
            self.facts.learn(str(task_id), claim.task.tenant_id, claim.task.profile)
            metrics_logs.bind_tenant(claim.task.tenant_id)
        return claim

    def _side_effect(self, command: str | None) -> str | None:
        """The command's side-effect class, if commands declare one (for approval lists)."""
        if command is None or command not in self.agent.registry:
            return None
        value = getattr(self.agent.registry.get(command), "side_effect", None)
        return None if value is None else str(getattr(value, "value", value))

    def _runs_inline(self, proposal: Proposal, gate: bool, asks: bool) -> bool:
        """Does this proposal's act phase run here in the think worker, right after the proposal is persisted?

        Only for commands that declare ``runs_inline`` (quick, in-process, idempotent, confined to the task's
        workspace: the file commands and ``finish``) and for a model error (its observation is the error itself);
        never when a human must approve or answer first. Everything else (sandboxed code, network, plugins) goes
        to the act queue's prefork workers. It saves one broker hop and one transaction per step; the step is as
        durable as an act-queue step (its lease covers it: if this worker dies, the reaper re-arms the act phase
        on the act queue, and the inline commands are idempotent)."""
        if not self.settings.inline_act or gate or asks:
            return False
        if proposal.error is not None:
            return True
        return self._declares(proposal.command, "runs_inline")

    def _is_pure(self, proposal: Proposal) -> bool:
        """Is the act phase of this (inline) proposal pure: a model error, or a command declaring ``pure``?"""
        if proposal.error is not None:
            return True
        return self._declares(proposal.command, "pure")

    def _awaits_human(self, command: str | None) -> bool:
        """Does the command ask a human (``ask_user``)? Then its step waits for the answer, whatever the policy."""
        return self._declares(command, "awaits_human")

    def _declares(self, command: str | None, flag: str) -> bool:
        """Is ``command`` one of this worker's commands, and does it set the class flag ``flag``?"""
        registry = self.agent.registry
        return command is not None and command in registry and bool(getattr(registry.get(command), flag))

    def _check_edit(self, ctx: TaskContext, proposal: Proposal) -> str | None:
        """A human edited the command: is it one this task may run (the allow-list the agent offered: the task's,
        else its profile's, plus ``finish``), with arguments that fit it?"""
        if proposal.error is not None or proposal.command is None:
            return None
        try:
            allowed = {c.name: c for c in self.agent.allowed_commands(ctx, self.agent.profile(ctx))}
        except UsageError as exc:  # e.g. its profile is gone, or names a command this worker lacks
            return str(exc)
        command = allowed.get(proposal.command)
        if command is None:
            return f"the approved command {proposal.command!r} is not available to this task"
        try:
            command.parse_args(proposal.arguments)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            return f"the approved arguments for {proposal.command!r} do not fit its schema ({details})"
        return None

    def _fail(self, task: RunTask, step_index: int, token: uuid.UUID, reason: str, phase: str, started: float) -> str:
        failed = self.ledger.fail_task(task.id, step_index, token, reason)
        self.observer.phase_finished(phase, time.monotonic() - started, "failed" if failed else "fenced")
        if failed:
            self.observer.task_ended("failed", _age(task))
        log.info("task_failed", task_id=str(task.id), step=step_index, reason=reason)
        return f"failed: {reason}"

    def _settle(self, claim: Claim, task_id: uuid.UUID, step_index: int, phase: str) -> str:
        """A delivery we do not execute: say why, and make sure the run moves on."""
        outcome = claim.outcome
        if outcome in (ClaimOutcome.committed, ClaimOutcome.advanced):
            # the step is further along than this message thinks: re-drive whatever was not yet published
            self._publish(self.ledger.pending_wakeups(task_id))
        elif outcome is ClaimOutcome.lease_held:
            # a redelivery while the previous holder's lease runs (it may have died): look again when it expires
            try:
                self.publisher.wake(task_id, step_index, phase, self._priority(task_id), countdown=claim.retry_in)
            except Exception as exc:  # broker down: if the holder died, the reaper re-drives at the lease's expiry
                log.warning("lease_held_retry_not_published", task_id=str(task_id), step=step_index, error=str(exc))
        elif outcome is ClaimOutcome.deadline:
            self.observer.task_ended("failed", None)
            log.info("task_failed", task_id=str(task_id), step=step_index, reason=claim.reason)
        elif outcome is ClaimOutcome.poisoned:
            self.observer.error("step_poisoned")
            self.observer.task_ended("failed", None)
            log.error("step_poisoned", task_id=str(task_id), step=step_index, reason=claim.reason)
            raise StepPoisoned(claim.reason or "poisoned")
        log.info("delivery_settled", task_id=str(task_id), step=step_index, phase=phase, outcome=outcome.value)
        return f"skipped: {outcome.value}"

    def _hand_back(
        self,
        task_id: uuid.UUID,
        step_index: int,
        token: uuid.UUID,
        phase: str,
        deliveries: int,
        exc: Exception,
        countdown: float | None = None,
        refund: bool = False,
    ) -> str:
        wakeup = self.ledger.release(task_id, step_index, token, error=str(exc), refund=refund)
        if countdown is None:
            retry_after = self._retry_after(getattr(exc, "retry_after", None) or 0.0)
            countdown = max(retry_after, min(60.0, 2.0**deliveries)) + random.uniform(0, 1)
        if wakeup is not None:
            try:
                self.publisher.wake(task_id, step_index, phase, wakeup.priority, countdown=countdown or None)
                self.ledger.mark_published([wakeup.outbox_id])
            except Exception as pub_exc:  # the outbox row stays: the reaper publishes it
                log.warning("hand_back_publish_deferred", task_id=str(task_id), step=step_index, error=str(pub_exc))
        log.warning(
            "step_handed_back",
            task_id=str(task_id),
            step=step_index,
            phase=phase,
            error=str(exc),
            retry_in=round(countdown, 1),
        )
        return f"retry in {countdown:.1f}s: {exc}"

    def _retry_after(self, seconds: float | None) -> float:
        """A server's Retry-After as a hand-back delay: honoured, but at most ``llm_retry_after_max_s`` and below
        the reaper's re-drive age (a delayed wake-up must not look lost)."""
        bound = min(self.settings.llm_retry_after_max_s, 0.9 * self.settings.redrive_after_s)
        return min(max(seconds or 0.0, 0.0), bound)

    def _persist(self, write: Callable[[], T]) -> T:
        """Run a ledger write that holds paid-for work (a proposal, a command's outcome), retrying while PostgreSQL
        is unreachable for up to one lease period: a short database restart must not throw the work away."""
        deadline = time.monotonic() + self.settings.lease_ttl_s
        delay = 0.2
        while True:
            try:
                return write()
            except (OperationalError, InterfaceError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("ledger_write_retry", error=str(exc).splitlines()[0], retry_in=delay)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _publish(self, wakeups: list[Wakeup]) -> None:
        published = []
        try:
            for w in wakeups:
                self.publisher.wake(w.task_id, w.step_index, w.phase, w.priority)
                published.append(w.outbox_id)
        except Exception as exc:  # the broker is down: the rows stay in the outbox and the reaper publishes them
            log.warning("publish_deferred", error=str(exc), unpublished=len(wakeups) - len(published))
        finally:
            # what was confirmed is marked (in the next batch); the rest stays in the outbox for the reaper
            self.marks.add(published)

    def _priority(self, task_id: uuid.UUID) -> int:
        with self.ledger.db.session() as s:
            task = s.get(Task, task_id)
            return task.priority if task is not None else 5

    @staticmethod
    def _file_record(workspace: Workspace, relative: str) -> FileRecord | None:
        path = workspace.resolve(relative)
        if not path.is_file():
            return None
        data = path.read_bytes()
        return FileRecord(relative, len(data), hashlib.sha256(data).hexdigest())
