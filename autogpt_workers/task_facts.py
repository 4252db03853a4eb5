"""What never changes about a task once submitted (its tenant, its profile's name), kept per worker process.

Every phase's claim reads both with the task row (``Ledger.claim``) and the step runner records them here
(``learn``), so the log binder (``metrics_logs``), the memory service's tenant scoping and the agent's profile
lookup read no row of their own on the step's path. A lookup for a task this process has not claimed (or has
forgotten: at most ``max_entries`` tasks are kept, least recently used first out) reads the ledger once through
``read`` and keeps the answer.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import NamedTuple


class Facts(NamedTuple):
    tenant: str
    profile: str | None


class TaskFacts:
    def __init__(self, read: Callable[[str], Facts | None], max_entries: int = 20_000) -> None:
        self._read = read  # task id -> its facts from the ledger; None if there is no such task
        self._kept: collections.OrderedDict[str, Facts] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.reads = 0  # how many lookups went to the ledger

    def learn(self, task_id: str, tenant: str, profile: str | None) -> None:
        """Keep what a claim read."""
        facts = Facts(tenant, profile)
        with self._lock:
            self._kept[task_id] = facts
            self._kept.move_to_end(task_id)
            while len(self._kept) > self.max_entries:
                self._kept.popitem(last=False)

    def known(self, task_id: str) -> Facts | None:
        """The task's facts if kept, without reading the ledger."""
        with self._lock:
            facts = self._kept.get(task_id)
            if facts is not None:
                self._kept.move_to_end(task_id)
            return facts

    def of(self, task_id: str) -> Facts:
        """The task's facts, read from the ledger if not kept; ``LookupError`` if there is no such task."""
        facts = self.known(task_id)
        if facts is not None:
            return facts
        self.reads += 1
        read = self._read(task_id)
        if read is None:  # not kept: a task submitted later under this id is read then
            raise LookupError(f"no task {task_id}")
        self.learn(task_id, read.tenant, read.profile)
        return read

    def tenant_of(self, task_id: str) -> str:
        return self.of(task_id).tenant

    def profile_of(self, task_id: str) -> str | None:
        return self.of(task_id).profile
