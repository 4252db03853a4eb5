"""Group commit: the items several threads write at about the same time, written together by one of them.

A thread calls ``GroupCommit.run(item)`` and gets its own result back, as if it had written the item alone. While
one batch is being written, the items that arrive wait; when it is done, the first of them (the next leader) writes
everything that waits, up to ``max_batch``, in one call of ``write``. So there is at most one write in flight per
group, an item arriving at an idle group is written at once (no timer, no added latency when it is quiet), and the
busier the writers, the larger the batches.

``write`` must answer one result per item, in order. If it raises, every item of its batch gets that exception (as
``concurrent.futures`` hands one exception to every waiter).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("error", "item", "lead", "ready", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.ready = threading.Event()
        self.lead = False  # woken to write the next batch, not with a result
        self.result: R | None = None
        self.error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set by the batch's write (R may include None)


class GroupCommit(Generic[T, R]):
    """Batches the concurrent calls of ``run`` into calls of ``write`` (see the module's docstring). ``batches``
    and ``items`` count what was written, for a mean batch size."""

    def __init__(self, write: Callable[[list[T]], list[R]], max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: deque[_Slot[T, R]] = deque()
        self._busy = False  # a leader is writing; invariant: not busy => nothing waits
        self.batches = 0
        self.items = 0

    def run(self, item: T) -> R:
        """Write ``item`` (with whatever else waits) and return its result, or raise what its batch's write raised."""
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.ready.wait()
            if not slot.lead:
                return slot.outcome()
        self._lead()
        return slot.outcome()

    def _lead(self) -> None:
        """Write what waits (the leader's own item first), then hand the lead to the next item that waits."""
        with self._lock:
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
        try:
            results = self._write([slot.item for slot in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"group commit: {len(results)} results for {len(batch)} items")
        except BaseException as exc:
            for slot in batch:
                slot.error = exc
        else:
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        finally:
            with self._lock:
                self.batches += 1
                self.items += len(batch)
                following = self._waiting[0] if self._waiting else None
                if following is None:
                    self._busy = False
                else:
                    following.lead = True
            for slot in batch[1:]:  # batch[0] is the leader itself
                slot.ready.set()
            if following is not None:
                following.ready.set()
