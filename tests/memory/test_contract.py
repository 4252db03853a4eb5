"""The one contract every long-term memory backend passes (run on each by the ``store`` fixture's params)."""

from __future__ import annotations

import pytest

from autogpt_workers.memory.base import MemoryFilter, NewMemory, memory_id
from autogpt_workers.memory.longterm import LongTermMemory
from tests.memory.conftest import tenant


def _add(memory: LongTermMemory, tenant_id: str, texts: list[str], **fields: object) -> list[str]:
    return memory.add([NewMemory(tenant_id=tenant_id, text=t, **fields) for t in texts])  # type: ignore[arg-type]


def test_search_by_text_finds_the_matching_memory_with_everything_stored(longterm: LongTermMemory) -> None:
    t = tenant()
    wanted = NewMemory(
        tenant_id=t,
        text="the staging database password rotates every monday",
        importance=0.8,
        kind="note",
        task_id="task-1",
        step_index=3,
        metadata={"command": "remember", "retries": 2, "ok": True, "ratio": 0.5},
    )
    longterm.add([wanted])
    _add(longterm, t, ["weather in paris is mild", "the invoice total was 42 euros"], task_id="task-2")

    hits = longterm.search(t, "when does the database password rotate", k=3)

    top = hits[0]
    assert top.text == wanted.text
    assert (top.id, top.tenant_id, top.kind, top.task_id, top.step_index) == (wanted.id, t, "note", "task-1", 3)
    assert top.importance == pytest.approx(0.8)
    assert top.metadata == {"command": "remember", "retries": 2, "ok": True, "ratio": 0.5}
    assert 0 < top.score <= 1.0001
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_top_k_bounds_the_answer(longterm: LongTermMemory) -> None:
    t = tenant()
    _add(longterm, t, [f"fact number {i} about rockets" for i in range(12)])
    assert len(longterm.search(t, "rockets", k=5)) == 5
    assert len(longterm.search(t, "rockets", k=50)) == 12
    assert longterm.search(t, "rockets", k=0) == []


def test_filters_by_task_kind_and_importance(longterm: LongTermMemory) -> None:
    t = tenant()
    longterm.add(
        [
            NewMemory(tenant_id=t, text="deploy notes alpha", task_id="a", kind="note", importance=0.9),
            NewMemory(tenant_id=t, text="deploy notes beta", task_id="b", kind="note", importance=0.2),
            NewMemory(tenant_id=t, text="deploy notes gamma", task_id="a", kind="observation", importance=0.6),
        ]
    )
    by_task = longterm.search(t, "deploy notes", 10, MemoryFilter(task_id="a"))
    assert sorted(h.text for h in by_task) == ["deploy notes alpha", "deploy notes gamma"]
    by_kind = longterm.search(t, "deploy notes", 10, MemoryFilter(kind="note"))
    assert sorted(h.text for h in by_kind) == ["deploy notes alpha", "deploy notes beta"]
    important = longterm.search(t, "deploy notes", 10, MemoryFilter(min_importance=0.5))
    assert sorted(h.text for h in important) == ["deploy notes alpha", "deploy notes gamma"]
    both = longterm.search(t, "deploy notes", 10, MemoryFilter(task_id="a", kind="note", min_importance=0.5))
    assert [h.text for h in both] == ["deploy notes alpha"]


def test_adding_an_existing_id_replaces_the_memory(longterm: LongTermMemory) -> None:
    t = tenant()
    same = memory_id(t, "task", 1, "observation")
    longterm.add([NewMemory(id=same, tenant_id=t, text="first version of the report")])
    longterm.add([NewMemory(id=same, tenant_id=t, text="second version of the report")])
    assert longterm.count(t) == 1
    assert [h.text for h in longterm.search(t, "report version", 5)] == ["second version of the report"]


def test_batched_add_stores_every_memory(longterm: LongTermMemory) -> None:
    t = tenant()
    ids = _add(longterm, t, [f"batch memory {i} of many" for i in range(250)])
    assert len(set(ids)) == 250
    assert longterm.count(t) == 250


def test_delete_by_task_touches_only_that_task_of_that_tenant(longterm: LongTermMemory) -> None:
    t, other = tenant(), tenant()
    _add(longterm, t, ["shared words one", "shared words two"], task_id="doomed")
    _add(longterm, t, ["shared words three"], task_id="kept")
    _add(longterm, other, ["shared words four"], task_id="doomed")

    assert longterm.delete_task(t, "doomed") == 2

    assert [h.text for h in longterm.search(t, "shared words", 10)] == ["shared words three"]
    assert [h.text for h in longterm.search(other, "shared words", 10)] == ["shared words four"]
    assert longterm.delete_task(t, "doomed") == 0


def test_delete_by_tenant_forgets_everything_of_that_tenant_only(longterm: LongTermMemory) -> None:
    t, other = tenant(), tenant()
    _add(longterm, t, ["alpha memory", "beta memory"])
    _add(longterm, other, ["gamma memory"])

    assert longterm.delete_tenant(t) == 2

    assert longterm.count(t) == 0
    assert longterm.search(t, "memory", 10) == []
    assert longterm.count(other) == 1


def test_no_tenant_can_retrieve_another_tenants_memories(longterm: LongTermMemory) -> None:
    acme, globex, odd = tenant(), tenant(), "Globex Corp / EU #1"  # odd: characters a Weaviate tenant name refuses
    secret = "the acquisition target is initech, codename falcon"
    _add(longterm, acme, [secret], task_id="shared-task-id")
    _add(longterm, odd, ["odd tenant keeps its own notes about falcon"])

    for intruder in (globex, odd):
        hits = longterm.search(intruder, secret, k=10)
        assert all(h.tenant_id == intruder for h in hits)
        assert secret not in [h.text for h in hits]
        filtered = longterm.search(intruder, secret, 10, MemoryFilter(task_id="shared-task-id"))
        assert filtered == []
    assert [h.text for h in longterm.search(acme, "falcon codename", 10)] == [secret]
    assert longterm.count(globex) == 0
    longterm.delete_tenant(odd)


def test_a_tenant_with_no_memories_gets_an_empty_answer(longterm: LongTermMemory) -> None:
    t = tenant()
    assert longterm.search(t, "anything at all", 5) == []
    assert longterm.count(t) == 0
    assert longterm.delete_task(t, "none") == 0
    assert longterm.delete_tenant(t) == 0
