"""``GroupCommit``: concurrent callers are written together, each gets its own result or its batch's error."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from autogpt_workers.group_commit import GroupCommit


class Recorder:
    """A write that records its batches and can be held (so callers pile up behind it)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on: int | None = None
        self.threads: set[int] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        self.entered.set()
        self.release.wait(10)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"refused {self.fail_on}")
        return [i * 10 for i in items]


def _held_then_queued(
    pool: ThreadPoolExecutor, group: GroupCommit[int, int], write: Recorder, later: int
) -> tuple[Future[int], list[Future[int]]]:
    """Call 0 (its write held), then 1..``later``, each queued before the next: a known order. The write is still
    held when this returns."""
    first = pool.submit(group.run, 0)
    assert write.entered.wait(5)  # the first call's write is in flight, held
    rest = []
    for i in range(1, later + 1):
        rest.append(pool.submit(group.run, i))
        while len(group._waiting) < i:
            threading.Event().wait(0.001)
    return first, rest


def test_an_idle_group_writes_a_call_at_once_alone() -> None:
    write = Recorder()
    group = GroupCommit(write)
    assert group.run(3) == 30
    assert group.run(4) == 40
    assert write.batches == [[3], [4]]
    assert (group.batches, group.items) == (2, 2)


def test_callers_that_arrive_during_a_write_are_written_together_in_order_of_arrival() -> None:
    write = Recorder()
    write.release.clear()
    group = GroupCommit(write)
    with ThreadPoolExecutor(8) as pool:
        first, rest = _held_then_queued(pool, group, write, 5)
        write.release.set()
        assert first.result(5) == 0
        assert [f.result(5) for f in rest] == [10, 20, 30, 40, 50]
    assert write.batches == [[0], [1, 2, 3, 4, 5]]
    assert (group.batches, group.items) == (2, 6)


def test_a_batch_is_at_most_max_batch_and_the_rest_follows() -> None:
    write = Recorder()
    write.release.clear()
    group = GroupCommit(write, max_batch=2)
    with ThreadPoolExecutor(8) as pool:
        first, rest = _held_then_queued(pool, group, write, 5)
        write.release.set()
        assert [f.result(5) for f in [first, *rest]] == [0, 10, 20, 30, 40, 50]
    assert write.batches == [[0], [1, 2], [3, 4], [5]]


def test_a_failed_write_raises_in_every_caller_of_its_batch_only() -> None:
    write = Recorder()
    write.release.clear()
    write.fail_on = 2
    group = GroupCommit(write, max_batch=2)
    with ThreadPoolExecutor(8) as pool:
        first, rest = _held_then_queued(pool, group, write, 4)
        write.release.set()
        assert first.result(5) == 0
        for refused in rest[:2]:  # [1, 2]: the batch with 2
            with pytest.raises(ValueError, match="refused 2"):
                refused.result(5)
        assert [f.result(5) for f in rest[2:]] == [30, 40]  # the next batch is written all the same
    assert group.run(7) == 70  # and the group is idle again


def test_a_write_that_answers_the_wrong_count_fails_its_batch() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.run(1)


def test_many_threads_each_get_their_own_result() -> None:
    write = Recorder()
    group = GroupCommit(write, max_batch=8)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(group.run, range(400)))
    assert results == [i * 10 for i in range(400)]
    assert sorted(i for batch in write.batches for i in batch) == list(range(400))
    assert all(1 <= len(batch) <= 8 for batch in write.batches)
    assert group.items == 400 and group.batches == len(write.batches)


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GroupCommit(lambda items: items, max_batch=0)


# -- awaited items (``submit`` from an event loop) ----------------------------------------------------------------


def test_an_awaited_item_is_written_by_the_writer_thread_and_answered_on_its_loop() -> None:
    write = Recorder()
    group = GroupCommit(write)
    loop_thread: list[int] = []

    async def main() -> list[int]:
        loop_thread.append(threading.get_ident())
        return [await group.submit(3), await group.submit(4)]

    assert asyncio.run(main()) == [30, 40]
    assert write.batches == [[3], [4]]
    assert write.threads and loop_thread[0] not in write.threads  # the loop never wrote


def test_awaited_items_that_arrive_during_a_write_are_one_batch_answered_together() -> None:
    write = Recorder()
    write.release.clear()
    group = GroupCommit(write)

    async def main() -> list[int]:
        first = group.submit(0)
        while not write.entered.is_set():  # the writer thread holds the first batch
            await asyncio.sleep(0.001)
        rest = [group.submit(i) for i in range(1, 6)]
        write.release.set()
        return [await first, *[await f for f in rest]]

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    assert write.batches == [[0], [1, 2, 3, 4, 5]]


def test_a_failed_write_fails_its_awaited_items_and_the_next_batch_goes_on() -> None:
    write = Recorder()
    write.release.clear()
    write.fail_on = 2
    group = GroupCommit(write, max_batch=2)

    async def main() -> list[object]:
        futures = [group.submit(0)]
        while not write.entered.is_set():
            await asyncio.sleep(0.001)
        futures += [group.submit(i) for i in range(1, 5)]
        write.release.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    first, one, two, three, four = asyncio.run(main())
    assert (first, three, four) == (0, 30, 40)
    assert isinstance(one, ValueError) and isinstance(two, ValueError)  # [1, 2]: the batch with 2
    assert group.run(7) == 70


def test_an_item_no_longer_awaited_is_written_and_its_answer_dropped() -> None:
    write = Recorder()
    write.release.clear()
    group = GroupCommit(write)

    async def main() -> int:
        abandoned = group.submit(1)
        while not write.entered.is_set():
            await asyncio.sleep(0.001)
        abandoned.cancel()  # the caller went away: the write happens all the same
        kept = group.submit(2)
        write.release.set()
        return await kept

    assert asyncio.run(main()) == 20
    assert write.batches == [[1], [2]]


def test_threads_and_an_event_loop_share_one_group() -> None:
    """Leads pass between waiting threads and the writer thread; every caller gets its own result."""
    write = Recorder()
    group = GroupCommit(write, max_batch=4)

    async def awaited() -> list[int]:
        return list(await asyncio.gather(*[group.submit(i) for i in range(1000, 1200)]))

    with ThreadPoolExecutor(8) as pool:
        threaded = pool.map(group.run, range(200))
        from_loop = asyncio.run(awaited())
        assert list(threaded) == [i * 10 for i in range(200)]
    assert from_loop == [i * 10 for i in range(1000, 1200)]
    written = sorted(i for batch in write.batches for i in batch)
    assert written == [*range(200), *range(1000, 1200)]
    assert all(1 <= len(batch) <= 4 for batch in write.batches)
    assert not group._busy and not group._waiting  # idle again
