"""The think worker's per-process history records: it reads only the steps it does not keep yet."""

from __future__ import annotations

import uuid

import pytest

from autogpt_workers.runner import _Records
from autogpt_workers.store.ledger import HistoryRow


def row(i: int) -> HistoryRow:
    proposal = {"assistant_message": {"role": "assistant", "content": "write"}, "command": "write_file",
                "arguments": {"path": f"{i}.txt", "content": "x"}}
    return HistoryRow(i, proposal, f"wrote {i}.txt", False, False)


def test_known_counts_the_kept_prefix_and_of_joins_it_with_the_rows_read_after_it() -> None:
    records, task = _Records(), uuid.uuid4()
    assert records.known(task, 5) == 0
    first = records.of(task, 0, [row(0), row(1)])
    assert [r.index for r in first] == [0, 1]
    assert records.known(task, 5) == 2 and records.known(task, 1) == 1
    again = records.of(task, 2, [row(2)])
    assert [r.index for r in again] == [0, 1, 2] and again[0] is first[0]  # kept, not validated again
    assert [r.proposal.arguments["path"] for r in again] == ["0.txt", "1.txt", "2.txt"]


def test_an_evicted_record_is_reported_so_the_caller_reads_the_whole_history() -> None:
    records, task, other = _Records(max_entries=2), uuid.uuid4(), uuid.uuid4()
    records.of(task, 0, [row(0), row(1)])
    known = records.known(task, 2)
    records.of(other, 0, [row(0)])  # evicts task's step 0
    with pytest.raises(KeyError):
        records.of(task, known, [])
    assert records.known(task, 2) == 0


def test_a_step_read_twice_is_kept_once_and_the_task_used_least_recently_is_dropped_whole() -> None:
    records, a, b, c = _Records(max_entries=4), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    records.of(a, 0, [row(0), row(1)])
    again = records.of(a, 1, [row(1)])  # a duplicate delivery read step 1 again
    assert [r.index for r in again] == [0, 1] and records.known(a, 10) == 2
    records.of(b, 0, [row(0), row(1)])
    records.of(a, 2, [])  # a is used again: b is now the least recent
    records.of(c, 0, [row(0)])  # five kept: b goes, whole
    assert (records.known(a, 10), records.known(b, 10), records.known(c, 10)) == (2, 0, 1)
    records.of(c, 1, [row(i) for i in range(1, 6)])  # c alone is past the limit: the others go, c stays
    assert (records.known(a, 10), records.known(c, 10)) == (0, 6)
