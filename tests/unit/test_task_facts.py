"""``TaskFacts``: a task's tenant and profile, kept as the claims read them; the ledger read only for a task this
process has not claimed."""

from __future__ import annotations

import pytest

from autogpt_workers.task_facts import Facts, TaskFacts


def test_what_a_claim_learnt_is_answered_without_a_read() -> None:
    asked: list[str] = []
    facts = TaskFacts(lambda task_id: asked.append(task_id) or None)
    facts.learn("t1", "acme", "researcher")
    assert facts.tenant_of("t1") == "acme" and facts.profile_of("t1") == "researcher"
    assert facts.known("t1") == Facts("acme", "researcher")
    assert asked == [] and facts.reads == 0


def test_an_unknown_task_is_read_once_then_kept() -> None:
    asked: list[str] = []

    def read(task_id: str) -> Facts | None:
        asked.append(task_id)
        return Facts("acme", None)

    facts = TaskFacts(read)
    assert facts.known("t1") is None
    assert facts.profile_of("t1") is None and facts.tenant_of("t1") == "acme"
    assert asked == ["t1"] and facts.reads == 1


def test_a_missing_task_raises_and_is_not_kept() -> None:
    answers: list[Facts | None] = [None, Facts("acme", None)]
    facts = TaskFacts(lambda task_id: answers.pop(0))
    with pytest.raises(LookupError, match="no task t1"):
        facts.tenant_of("t1")
    assert facts.tenant_of("t1") == "acme"  # submitted since: read again


def test_the_least_recently_used_task_goes_first() -> None:
    facts = TaskFacts(lambda task_id: None, max_entries=2)
    facts.learn("a", "x", None)
    facts.learn("b", "x", None)
    assert facts.known("a") is not None  # used: "b" is now the oldest
    facts.learn("c", "x", None)
    assert facts.known("b") is None and facts.known("a") is not None and facts.known("c") is not None
