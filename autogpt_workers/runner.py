"""The two phases of an agent step, as plain functions of the ledger, the agent and the publisher.

``think``: claim the step, check the budget, ask the model, persist its proposal with the act wake-up.
``act``: claim the proposed step, run the command in the task's workspace, commit the observation, the artifacts
and the next step's wake-up.

Each returns a short outcome string (shown in Flower as the Celery task's result). The Celery glue in ``tasks``
maps the one exception left, ``StepPoisoned``, to a dead-lettered message. Nothing here imports Celery.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import structlog

from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import Budget, Observation, Proposal, Spent, StepRecord, TaskContext
from autogpt_workers.broker import Publisher
from autogpt_workers.commands.workspace import Workspace
from autogpt_workers.config import Settings
from autogpt_workers.errors import BudgetExceeded, LLMPermanentError, LLMTransientError, StepPoisoned, UsageError
from autogpt_workers.lease import LeaseKeeper
from autogpt_workers.observe import RunObserver
from autogpt_workers.store.ledger import Claim, ClaimOutcome, FileRecord, Ledger, Wakeup
from autogpt_workers.store.models import Step, Task

log = structlog.get_logger(__name__)


def _record(step: Step) -> StepRecord:
    return StepRecord(
        index=step.step_index,
        proposal=Proposal.model_validate(step.proposal),
        observation=Observation(output=step.output or "", is_error=step.is_error, is_last=step.is_last),
    )


def _age(task: Task) -> float:
    return (datetime.now(UTC) - task.created_at).total_seconds()


def _context(task: Task, step_index: int) -> TaskContext:
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
    ) -> None:
        self.observer = observer or RunObserver()
        self.ledger = ledger
        self.publisher = publisher
        self.agent = agent
        self.settings = settings
        self.owner = owner
        self.leases = leases

    # -- phases ----------------------------------------------------------------------------------------------------

    def think(self, task_id: uuid.UUID, step_index: int) -> str:
        claim = self._claim(task_id, step_index, "think")
        if claim.token is None:
            return self._settle(claim, task_id, step_index, "think")
        token = claim.token
        started = time.monotonic()
        bound = log.bind(task_id=str(task_id), step=step_index, phase="think")
        with self.leases.hold(token):
            task, history, _ = self.ledger.load_run(task_id, step_index)
            ctx = _context(task, step_index)
            try:
                proposal = self.agent.think(ctx, [_record(s) for s in history], datetime.now(UTC))
            except BudgetExceeded as exc:
                return self._fail(task, step_index, token, exc.reason, "think", started)
            except LLMPermanentError as exc:
                return self._fail(task, step_index, token, f"the LLM refused the request: {exc}", "think", started)
            except UsageError as exc:  # e.g. an allow-list naming a command this platform does not have
                return self._fail(task, step_index, token, f"the task cannot run: {exc}", "think", started)
            except LLMTransientError as exc:
                self.observer.phase_finished("think", time.monotonic() - started, "retry")
                return self._hand_back(task_id, step_index, token, "think", claim.deliveries, exc)
            llm_seconds = time.monotonic() - started
            wakeup = self.ledger.record_proposal(task_id, step_index, token, proposal.model_dump(mode="json"))
        if wakeup is None:
            bound.warning("fenced", detail="lease taken over before the proposal was persisted")
            self.observer.phase_finished("think", time.monotonic() - started, "fenced")
            return "fenced"
        self._publish([wakeup])
        self.observer.proposal(
            proposal.model,
            proposal.usage.prompt_tokens,
            proposal.usage.completion_tokens,
            proposal.cost_usd,
            llm_seconds,
        )
        self.observer.phase_finished("think", time.monotonic() - started, "proposed")
        bound.info("step_proposed", command=proposal.command, error=proposal.error, tokens=proposal.usage.total_tokens)
        return f"proposed {proposal.command or 'nothing (model error)'}"

    def act(self, task_id: uuid.UUID, step_index: int) -> str:
        claim = self._claim(task_id, step_index, "act")
        if claim.token is None:
            return self._settle(claim, task_id, step_index, "act")
        token = claim.token
        started = time.monotonic()
        bound = log.bind(task_id=str(task_id), step=step_index, phase="act")
        with self.leases.hold(token):
            task, _, current = self.ledger.load_run(task_id, step_index)
            assert current is not None and current.proposal is not None
            proposal = Proposal.model_validate(current.proposal)
            workspace = Workspace(self.workspace_dir(task_id))
            workspace.create()
            observation = self.agent.act(_context(task, step_index), proposal, workspace)
            files = [self._file_record(workspace, p) for p in observation.files_written]
            committed, wakeup = self.ledger.commit_step(
                task_id,
                step_index,
                token,
                observation.output,
                observation.is_error,
                observation.is_last,
                [f for f in files if f is not None],
            )
        if not committed:
            bound.warning("fenced", detail="lease taken over before the step was committed")
            self.observer.phase_finished("act", time.monotonic() - started, "fenced")
            return "fenced"
        if wakeup is not None:
            self._publish([wakeup])
        self.agent.observed(_context(task, step_index), proposal, observation)  # memory: best-effort
        self.observer.phase_finished(
            "act", time.monotonic() - started, "finished" if observation.is_last else "committed"
        )
        if observation.is_last:
            self.observer.task_ended("completed", _age(task))
        bound.info(
            "step_committed", command=proposal.command, is_last=observation.is_last, is_error=observation.is_error
        )
        return "finished" if observation.is_last else f"committed step {step_index}"

    def workspace_dir(self, task_id: uuid.UUID) -> Path:
        return self.settings.workspace_root / str(task_id)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _claim(self, task_id: uuid.UUID, step_index: int, phase: str) -> Claim:
        claim = self.ledger.claim(
            task_id, step_index, phase, self.owner, self.settings.lease_ttl_s, self.settings.max_deliveries
        )
        wait = (datetime.now(UTC) - claim.queued_at).total_seconds() if claim.queued_at else None
        self.observer.delivery(phase, claim.outcome.value, wait)
        return claim

    def _fail(self, task: Task, step_index: int, token: uuid.UUID, reason: str, phase: str, started: float) -> str:
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
            self.publisher.wake(task_id, step_index, phase, self._priority(task_id), countdown=claim.retry_in)
        elif outcome is ClaimOutcome.poisoned:
            self.observer.error("step_poisoned")
            self.observer.task_ended("failed", None)
            log.error("step_poisoned", task_id=str(task_id), step=step_index, reason=claim.reason)
            raise StepPoisoned(claim.reason or "poisoned")
        log.info("delivery_settled", task_id=str(task_id), step=step_index, phase=phase, outcome=outcome.value)
        return f"skipped: {outcome.value}"

    def _hand_back(
        self, task_id: uuid.UUID, step_index: int, token: uuid.UUID, phase: str, deliveries: int, exc: Exception
    ) -> str:
        wakeup = self.ledger.release(task_id, step_index, token, error=str(exc))
        retry_after = getattr(exc, "retry_after", None) or 0.0
        countdown = max(retry_after, min(60.0, 2.0**deliveries)) + random.uniform(0, 1)
        if wakeup is not None:
            self.publisher.wake(task_id, step_index, phase, wakeup.priority, countdown=countdown)
            self.ledger.mark_published([wakeup.outbox_id])
        log.warning(
            "step_handed_back",
            task_id=str(task_id),
            step=step_index,
            phase=phase,
            error=str(exc),
            retry_in=round(countdown, 1),
        )
        return f"retry in {countdown:.1f}s: {exc}"

    def _publish(self, wakeups: list[Wakeup]) -> None:
        published = []
        try:
            for w in wakeups:
                self.publisher.wake(w.task_id, w.step_index, w.phase, w.priority)
                published.append(w.outbox_id)
        finally:
            # what was confirmed is marked; the rest stays in the outbox for the reaper
            self.ledger.mark_published(published)

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
