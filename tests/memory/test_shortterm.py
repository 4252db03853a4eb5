"""Short-term memory in real Redis: newest first, a re-run replaces its step, bounded, expiring, per tenant."""

from __future__ import annotations

import uuid
from typing import Any

from autogpt_workers.memory.shortterm import ShortTermMemory, StepDigest


def _memory(redis_client: Any, **kwargs: Any) -> ShortTermMemory:
    return ShortTermMemory(redis_client, prefix=f"test:stm:{uuid.uuid4().hex[:8]}", **kwargs)


def test_recent_steps_newest_first_and_a_rerun_replaces_its_step(redis_client: Any) -> None:
    stm = _memory(redis_client, ttl_s=60, max_items=3)
    for i in range(5):
        stm.push("acme", "task", StepDigest(step_index=i, command="write_file", summary=f"step {i}"))
    stm.push("acme", "task", StepDigest(step_index=4, command="write_file", summary="step 4 again"))

    recent = stm.recent("acme", "task", 10)

    assert [(d.step_index, d.summary) for d in recent] == [(4, "step 4 again"), (3, "step 3"), (2, "step 2")]
    assert [d.step_index for d in stm.recent("acme", "task", 2)] == [4, 3]
    assert 0 < redis_client.ttl(stm.key("acme", "task")) <= 60


def test_tenants_and_tasks_do_not_share_short_term_memory(redis_client: Any) -> None:
    stm = _memory(redis_client)
    stm.push("acme", "task", StepDigest(step_index=0, command=None, summary="acme's"))
    assert stm.recent("globex", "task") == []
    assert stm.recent("acme", "other-task") == []
    stm.forget("acme", "task")
    assert stm.recent("acme", "task") == []
