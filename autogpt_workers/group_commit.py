"""Group commit: the items several callers write at about the same time, written together in one call.

A thread calls ``GroupCommit.run(item)`` and gets its own result back, as if it had written the item alone. While
one batch is being written, the items that arrive wait; when it is done, the first of them (the next leader) writes
everything that waits, up to ``max_batch``, in one call of ``write``. So there is at most one write in flight per
group, an item arriving at an idle group is written at once (no timer, no added latency when it is quiet), and the
busier the writers, the larger the batches.

An event loop calls ``GroupCommit.submit(item)`` instead and awaits the future it returns: the item waits in the same
line, and the group's own writer thread leads the batches an awaited item would have led, so the loop never blocks
and no thread is taken per item. A batch's awaited items are answered with one ``call_soon_threadsafe`` per event
loop, however many they are. Both kinds of caller can share one group.

``write`` must answer one result per item, in order. If it raises, every item of its batch gets that exception (as
``concurrent.futures`` hands one exception to every waiter).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("error", "future", "item", "lead", "loop", "ready", "result")

    def __init__(self, item: T, future: asyncio.Future[R] | None = None) -> None:
        self.item = item
        self.future = future  # an awaited item's (None: a thread waits on ``ready``)
        self.loop = future.get_loop() if future is not None else None
        self.ready = threading.Event()
        self.lead = False  # woken to write the next batch, not with a result
        self.result: R | None = None
        self.error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set by the batch's write (R may include None)


def _settle(slots: list[_Slot[T, R]]) -> None:
    """On the slots' event loop: hand each awaited item its outcome (one its caller stopped awaiting is dropped)."""
    for slot in slots:
        assert slot.future is not None
        if slot.future.done():
            continue
        if slot.error is not None:
            slot.future.set_exception(slot.error)
        else:
            slot.future.set_result(slot.result)  # type: ignore[arg-type]  # see _Slot.outcome


class GroupCommit(Generic[T, R]):
    """Batches the concurrent calls of ``run`` and ``submit`` into calls of ``write`` (see the module's docstring).
    ``batches`` and ``items`` count what was written, for a mean batch size."""

    def __init__(self, write: Callable[[list[T]], list[R]], max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: deque[_Slot[T, R]] = deque()
        self._busy = False  # a leader is writing or woken; invariant: not busy => nothing waits
        self._writer: threading.Thread | None = None
        self._lead_wanted = threading.Event()  # the writer thread's turn to lead
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
        self._lead(slot)
        return slot.outcome()

    def submit(self, item: T) -> asyncio.Future[R]:
        """From an event loop's thread: a future of ``item``'s result (or of its batch's error), answered on this
        loop. Never blocks: the writer thread writes it, at once if the group is idle."""
        slot: _Slot[T, R] = _Slot(item, asyncio.get_running_loop().create_future())
        with self._lock:
            self._waiting.append(slot)
            lead = not self._busy
            self._busy = True
        if lead:
            self._hand_to_writer()
        assert slot.future is not None
        return slot.future

    def _hand_to_writer(self) -> None:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="group-commit", daemon=True)
                    self._writer.start()
        self._lead_wanted.set()

    def _write_loop(self) -> None:
        while True:
            self._lead_wanted.wait()
            self._lead_wanted.clear()
            self._lead(None)

    def _lead(self, own: _Slot[T, R] | None) -> None:
        """Write what waits (the oldest first: a leading thread's own item), then hand the lead to the next item that
        waits: its thread, or the writer thread for an awaited one. ``own`` is the leading thread's slot, which needs
        no waking (None: the writer thread leads)."""
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
                elif following.future is None:
                    following.lead = True
            self._answer([slot for slot in batch if slot is not own])
            if following is not None:
                if following.future is None:
                    following.ready.set()
                else:
                    self._hand_to_writer()

    @staticmethod
    def _answer(slots: list[_Slot[T, R]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Slot[T, R]]] = {}
        for slot in slots:
            if slot.loop is None:
                slot.ready.set()
            else:
                by_loop.setdefault(slot.loop, []).append(slot)
        for loop, awaited in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody awaits these any more
                loop.call_soon_threadsafe(_settle, awaited)
