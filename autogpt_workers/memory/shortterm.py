"""Short-term memory: a task's most recent steps in Redis, dropped after ``ttl_s`` of inactivity.

One sorted set per (tenant, task), scored by step index: a step recorded twice (a redelivery) is one member, the
newest ``max_items`` are kept, and the key expires ``ttl_s`` after the last write. The per-step prompt builds its
memory query from these digests, so recall follows what the agent is doing right now without reading the ledger.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel


class StepDigest(BaseModel):
    """A few lines about one step: what ran and what came of it."""

    step_index: int
    command: str | None
    summary: str
    is_error: bool = False


class ShortTermMemory:
    def __init__(self, redis: Any, *, ttl_s: int = 3600, max_items: int = 20, prefix: str = "autogpt:stm") -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.prefix = prefix

    def key(self, tenant_id: str, task_id: str) -> str:
        return f"{self.prefix}:{tenant_id}:{task_id}"

    def push(self, tenant_id: str, task_id: str, digest: StepDigest) -> None:
        key = self.key(tenant_id, task_id)
        member = digest.model_dump_json()
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, digest.step_index, digest.step_index)  # a re-run replaces its step
        pipe.zadd(key, {member: digest.step_index})
        pipe.zremrangebyrank(key, 0, -self.max_items - 1)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def recent(self, tenant_id: str, task_id: str, n: int = 5) -> list[StepDigest]:
        """The newest ``n`` digests, newest first."""
        if n < 1:
            return []
        raw = self.redis.zrevrange(self.key(tenant_id, task_id), 0, n - 1)
        return [StepDigest.model_validate(json.loads(item)) for item in raw]

    def forget(self, tenant_id: str, task_id: str) -> None:
        self.redis.delete(self.key(tenant_id, task_id))
