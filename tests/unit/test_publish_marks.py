import threading
from collections.abc import Sequence

from autogpt_workers.publish_marks import PublishMarks


def test_marks_from_many_steps_go_out_in_one_batch_in_the_background() -> None:
    batches: list[list[int]] = []
    sent = threading.Event()

    def mark(ids: Sequence[int]) -> None:
        batches.append(list(ids))
        sent.set()

    marks = PublishMarks(mark, interval_s=0.05)
    for i in range(10):
        marks.add([i])
    assert sent.wait(5)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert len(batches) <= 2  # not one transaction per step


def test_a_refused_batch_is_kept_for_the_next_round_and_the_pending_rows_are_bounded() -> None:
    up = False
    done: list[int] = []

    def mark(ids: Sequence[int]) -> None:
        if not up:
            raise ConnectionError("database down\nmore")
        done.extend(ids)

    marks = PublishMarks(mark, interval_s=3600, max_pending=5)
    marks.add([1, 2, 3])
    assert marks.flush() == 0 and marks.pending == 3
    up = True
    assert marks.flush() == 3 and done == [1, 2, 3] and marks.pending == 0
    marks.add(list(range(10)))
    assert marks.pending == 5  # beyond the bound dropped: the reaper publishes those again, the ledger settles them
