"""``MemoryService``: the memory the workers hand to the agent (``agent.memory.AgentMemory``) and to the
``remember``/``recall`` commands (``commands.memory.MemoryAccess``).

The four layers meet here:

- working memory is the step's chat history, kept within the token window (``memory.window``, used by
  ``agent.context``);
- short-term memory is the task's recent step digests in Redis with a TTL (``memory.shortterm``): every
  committed step is pushed, and the memory query of the next step is the goal plus those digests;
- long-term memory is the vector store (``memory.longterm``): a committed step's observation is written when its
  importance (``memory.importance``) reaches the threshold, and ``remember`` writes on purpose;
- episodic memory is the step ledger itself (PostgreSQL), which the runner replays as the history.

The tenant of a task comes from ``tenant_of`` (the tasks table), never from the model, so a task can only ever
read and write its own tenant's memories. Memory is best-effort for the agent: an unavailable store or Redis is
logged and the step goes on without memories. The commands get the error and tell the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import structlog

from autogpt_workers.agent.memory import RecalledMemory
from autogpt_workers.agent.types import Observation, Proposal, TaskContext
from autogpt_workers.memory.base import MemoryFilter, MemoryHit, NewMemory, memory_id
from autogpt_workers.memory.errors import MemoryStoreError
from autogpt_workers.memory.importance import observation_importance
from autogpt_workers.memory.longterm import LongTermMemory
from autogpt_workers.memory.shortterm import ShortTermMemory, StepDigest

log = structlog.get_logger(__name__)

MAX_MEMORY_CHARS = 1_000
DIGEST_CHARS = 300


class MemoryService:
    def __init__(
        self,
        longterm: LongTermMemory,
        shortterm: ShortTermMemory | None,
        tenant_of: Callable[[str], str],
        *,
        importance_threshold: float = 0.5,
        min_score: float = 0.25,
        recent_steps: int = 3,
    ) -> None:
        self.longterm = longterm
        self.shortterm = shortterm
        self.tenant_of = tenant_of
        self.importance_threshold = importance_threshold
        self.min_score = min_score
        self.recent_steps = recent_steps

    # -- agent.memory.AgentMemory ----------------------------------------------------------------------------

    def relevant(self, ctx: TaskContext, k: int) -> list[RecalledMemory]:
        tenant = self.tenant_of(ctx.task_id)
        recent = self._recent(tenant, ctx.task_id)
        query = "\n".join([ctx.goal, *(d.summary for d in recent)])
        in_context = {d.step_index for d in recent}
        try:
            hits = self.longterm.search(tenant, query, k + len(in_context), min_score=self.min_score)
        except MemoryStoreError as exc:
            log.warning("memory_recall_failed", task_id=ctx.task_id, step=ctx.step_index, error=str(exc))
            return []
        fresh = [h for h in hits if not (h.task_id == ctx.task_id and h.step_index in in_context)]
        return [_recalled(h, ctx.task_id) for h in fresh[:k]]

    def observed(self, ctx: TaskContext, proposal: Proposal, observation: Observation) -> None:
        tenant = self.tenant_of(ctx.task_id)
        summary = _digest(proposal, observation)
        if self.shortterm is not None:
            digest = StepDigest(
                step_index=ctx.step_index, command=proposal.command, summary=summary, is_error=observation.is_error
            )
            try:
                self.shortterm.push(tenant, ctx.task_id, digest)
            except Exception as exc:  # Redis down: the step is committed; short-term memory just misses one
                log.warning("memory_shortterm_failed", task_id=ctx.task_id, step=ctx.step_index, error=str(exc))
        importance = observation_importance(
            proposal.command, observation.output, is_error=observation.is_error, is_last=observation.is_last
        )
        if importance < self.importance_threshold:
            return
        if observation.is_last:
            text, kind = f"Goal: {_clip(ctx.goal, 300)}\nResult: {observation.output}", "result"
        else:
            text, kind = _long_text(proposal, observation), "observation"
        memory = NewMemory(
            id=memory_id(tenant, ctx.task_id, ctx.step_index, kind),
            tenant_id=tenant,
            task_id=ctx.task_id,
            step_index=ctx.step_index,
            kind=kind,
            text=_clip(text, 4_000),
            importance=importance,
            metadata={"command": proposal.command or "", "is_error": observation.is_error},
        )
        try:
            self.longterm.add([memory])
        except MemoryStoreError as exc:
            log.warning("memory_store_failed", task_id=ctx.task_id, step=ctx.step_index, error=str(exc))

    # -- commands.memory.MemoryAccess ------------------------------------------------------------------------

    def remember(self, task_id: str, step_index: int, text: str, importance: float) -> str:
        """Store a note on purpose; raises ``MemoryStoreError`` if the store is unavailable."""
        tenant = self.tenant_of(task_id)
        memory = NewMemory(
            id=memory_id(tenant, task_id, step_index, "note"),
            tenant_id=tenant,
            task_id=task_id,
            step_index=step_index,
            kind="note",
            text=text,
            importance=importance,
        )
        return self.longterm.add([memory])[0]

    def recall(self, task_id: str, query: str, k: int, this_task_only: bool = False) -> list[RecalledMemory]:
        """Search on purpose; raises ``MemoryStoreError`` if the store is unavailable."""
        tenant = self.tenant_of(task_id)
        where = MemoryFilter(task_id=task_id) if this_task_only else None
        return [_recalled(h, task_id) for h in self.longterm.search(tenant, query, k, where)]

    def _recent(self, tenant: str, task_id: str) -> list[StepDigest]:
        if self.shortterm is None or self.recent_steps < 1:
            return []
        try:
            return self.shortterm.recent(tenant, task_id, self.recent_steps)
        except Exception as exc:
            log.warning("memory_shortterm_failed", task_id=task_id, error=str(exc))
            return []


def _recalled(hit: MemoryHit, task_id: str) -> RecalledMemory:
    return RecalledMemory(
        text=_clip(hit.text, MAX_MEMORY_CHARS),
        score=round(hit.score, 3),
        kind=hit.kind,
        task_id=hit.task_id,
        step_index=hit.step_index,
        same_task=hit.task_id == task_id,
    )


def _arguments(proposal: Proposal) -> str:
    return json.dumps(proposal.arguments, ensure_ascii=False, separators=(",", "=")) if proposal.arguments else ""


def _digest(proposal: Proposal, observation: Observation) -> str:
    action = f"{proposal.command}({_clip(_arguments(proposal), 120)})" if proposal.command else "invalid reply"
    outcome = "error: " if observation.is_error else ""
    return _clip(f"{action} -> {outcome}{observation.output}", DIGEST_CHARS)


def _long_text(proposal: Proposal, observation: Observation) -> str:
    outcome = "failed: " if observation.is_error else ""
    return f"{proposal.command}({_clip(_arguments(proposal), 300)}) {outcome}{observation.output}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
