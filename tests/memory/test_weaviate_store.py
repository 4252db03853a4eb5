"""``WeaviateStore``'s own code without a server, on an in-process stand-in for weaviate-client's collection API
(``tests/memory/weaviate_fake.py``): batching per tenant, partial batch failures, a tenant never written to, the
schema-creation race between workers, decoding hits, and forgetting a task or a tenant. The same store against a
live Weaviate is the contract suite (``WEAVIATE_URL=... pytest tests/memory/test_contract.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from weaviate import exceptions as wx

from autogpt_workers.memory.base import MemoryFilter, NewMemory
from autogpt_workers.memory.errors import MemoryRequestError, MemoryUnavailable
from autogpt_workers.memory.weaviate_store import WeaviateStore, weaviate_tenant
from tests.memory.weaviate_fake import REJECT, FakeServer, FakeWeaviateClient, status_error

COLLECTION = "AgentMemory"


@pytest.fixture
def client() -> FakeWeaviateClient:
    return FakeWeaviateClient()


@pytest.fixture
def store(client: FakeWeaviateClient) -> WeaviateStore:
    backend = WeaviateStore(client, dims=3, collection=COLLECTION, batch_size=2)
    backend.ensure_schema()
    return backend


def _memory(tenant: str, text: str, **fields: object) -> NewMemory:
    return NewMemory(tenant_id=tenant, text=text, **fields)  # type: ignore[arg-type]


def _shard(client: FakeWeaviateClient, tenant: str) -> dict[str, object]:
    return dict(client.server.objects[COLLECTION][weaviate_tenant(tenant)])


def test_the_schema_is_created_once_at_start(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    spec = client.server.schemas[COLLECTION]
    assert spec["name"] == COLLECTION
    assert spec["multi_tenancy_config"].enabled and spec["multi_tenancy_config"].autoTenantCreation

    store.ensure_schema()  # exists: not created again
    assert client.server.created == 1


def test_a_collection_created_by_another_worker_meanwhile_is_fine(client: FakeWeaviateClient) -> None:
    WeaviateStore(client, dims=3).ensure_schema()  # the other worker
    client.server.exists_answers_false = True  # we asked exists() before it created the collection

    WeaviateStore(client, dims=3).ensure_schema()  # create() answers 422 "already exists": no error

    assert client.server.created == 1


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (status_error(422, "property 'text': invalid dataType"), MemoryRequestError),
        (status_error(401, "anonymous access not enabled"), MemoryRequestError),
        (status_error(503, "shutting down"), MemoryUnavailable),
    ],
)
def test_other_schema_failures_are_mapped(failure: Exception, expected: type[Exception]) -> None:
    client = FakeWeaviateClient(FakeServer(fail_next=failure))
    with pytest.raises(expected, match="create the schema"):
        WeaviateStore(client, dims=3).ensure_schema()


def test_upsert_batches_per_tenant_and_search_decodes_hits(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    created = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    wanted = _memory(
        "acme", "deploy key in the vault", importance=0.9, kind="note", task_id="t1", step_index=4,
        metadata={"command": "remember", "retries": 2, "ok": True, "ratio": 0.5}, created_at=created,
    )  # fmt: skip
    no_step = _memory("acme", "a memory without a step", task_id="t2")
    others = [_memory("acme", f"filler {i}") for i in range(3)] + [_memory("Other Corp", "another tenant's secret")]

    ids = store.upsert([wanted, no_step, *others], [[1, 0, 0], [0.6, 0.8, 0], *[[0, 0, 1]] * 3, [1, 0, 0]])

    assert ids == [m.id for m in (wanted, no_step, *others)]
    # batch_size 2: acme's five in three requests, then the other tenant's one
    other = weaviate_tenant("Other Corp")
    assert client.server.insert_calls == [("t_acme", 2), ("t_acme", 2), ("t_acme", 1), (other, 1)]
    assert _shard(client, "acme")[wanted.id].properties["step_index"] == 4  # type: ignore[attr-defined]
    assert _shard(client, "acme")[no_step.id].properties["step_index"] == -1  # type: ignore[attr-defined]

    hits = store.search("acme", [1.0, 0.0, 0.0], k=2)

    assert [h.id for h in hits] == [wanted.id, no_step.id]  # the other tenant's identical vector is not there
    top, second = hits
    assert (top.tenant_id, top.kind, top.task_id, top.step_index, top.text) == ("acme", "note", "t1", 4, wanted.text)
    assert top.metadata == {"command": "remember", "retries": 2, "ok": True, "ratio": 0.5}  # JSON decoded
    assert top.importance == pytest.approx(0.9) and top.created_at == created
    assert top.score == pytest.approx(1.0)
    assert second.step_index is None and second.task_id == "t2" and second.metadata == {}  # -1 read back as None
    assert second.score == pytest.approx(0.6)
    assert client.server.searches[-1]["tenant"] == "t_acme" and client.server.searches[-1]["limit"] == 2


def test_search_filters_inside_the_tenant(store: WeaviateStore) -> None:
    store.upsert(
        [_memory("acme", "a", task_id="t1", importance=0.2), _memory("acme", "b", task_id="t1", importance=0.8),
         _memory("acme", "c", task_id="t2", importance=0.9)],
        [[1, 0, 0], [0.9, 0.1, 0], [1, 0, 0]],
    )  # fmt: skip
    hits = store.search("acme", [1, 0, 0], 5, MemoryFilter(task_id="t1", min_importance=0.5))
    assert [h.text for h in hits] == ["b"]
    assert store.search("acme", [1, 0, 0], 0) == []
    with pytest.raises(ValueError, match="dimensions"):
        store.search("acme", [1, 0], 5)


def test_a_partly_refused_batch_is_an_error_naming_how_many(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    batch = [_memory("acme", "fine one"), _memory("acme", f"bad {REJECT}")]

    with pytest.raises(MemoryRequestError, match=r"refused 1 of 2 memories: invalid text property"):
        store.upsert(batch, [[1, 0, 0], [0, 1, 0]])

    assert list(_shard(client, "acme")) == [batch[0].id]  # the server kept the rest of the batch
    with pytest.raises(MemoryRequestError, match="Every object failed"):
        store.upsert([_memory("acme", f"{REJECT} 1"), _memory("acme", f"{REJECT} 2")], [[1, 0, 0], [0, 1, 0]])


def test_insert_failures_are_mapped(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    client.server.fail_next = wx.WeaviateConnectionError("connection refused")
    with pytest.raises(MemoryUnavailable, match="insert memories"):
        store.upsert([_memory("acme", "x")], [[1, 0, 0]])
    with pytest.raises(ValueError, match="dimensions"):
        store.upsert([_memory("acme", "x")], [[1, 0]])


def test_a_tenant_never_written_to_has_nothing(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    store.upsert([_memory("acme", "x", task_id="t1")], [[1, 0, 0]])

    assert store.search("nobody", [1, 0, 0], 5) == []
    assert store.count("nobody") == 0
    assert store.delete_task("nobody", "t1") == 0
    assert store.delete_tenant("nobody") == 0
    assert client.server.removed_tenants == []  # nothing to remove
    assert store.count("acme") == 1


def test_other_query_errors_are_not_a_missing_tenant(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    store.upsert([_memory("acme", "x")], [[1, 0, 0]])
    client.server.fail_next = wx.WeaviateQueryError("invalid filter: no such property", "GRPC")
    with pytest.raises(MemoryRequestError, match="search memories"):
        store.search("acme", [1, 0, 0], 5)
    client.server.fail_next = wx.WeaviateQueryError("connection to: UNAVAILABLE", "GRPC")
    with pytest.raises(MemoryUnavailable, match="count memories"):
        store.count("acme")


def test_delete_task_and_delete_tenant(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    store.upsert(
        [_memory("acme", "a", task_id="t1"), _memory("acme", "b", task_id="t1"), _memory("acme", "c", task_id="t2"),
         _memory("other", "d", task_id="t1")],
        [[1, 0, 0]] * 4,
    )  # fmt: skip

    assert store.delete_task("acme", "t1") == 2
    assert [h.text for h in store.search("acme", [1, 0, 0], 5)] == ["c"]
    assert store.count("other") == 1  # same task id, another tenant: untouched

    assert store.delete_tenant("acme") == 1
    assert client.server.removed_tenants == ["t_acme"]
    assert store.count("acme") == 0 and store.search("acme", [1, 0, 0], 5) == []
    assert store.count("other") == 1


def test_close_closes_the_client(client: FakeWeaviateClient, store: WeaviateStore) -> None:
    store.close()
    assert client.closed
