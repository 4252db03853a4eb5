"""The Weaviate backend without a server: the schema and the requests weaviate-client would send, tenant names,
batching, and the error mapping (with the client's real exceptions, and a real refused connection)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from weaviate import exceptions as wx
from weaviate.collections.classes.config import _CollectionConfigCreate
from weaviate.collections.filters import _FilterToGRPC

from autogpt_workers.memory.base import MemoryFilter, NewMemory
from autogpt_workers.memory.errors import MemoryConfigError, MemoryRequestError, MemoryUnavailable
from autogpt_workers.memory.weaviate_store import (
    collection_spec,
    connect,
    mapped_errors,
    plan_batches,
    search_filter,
    weaviate_tenant,
)
from tests.conftest import free_port

WEAVIATE_TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def test_the_collection_is_multi_tenant_with_our_own_cosine_vectors() -> None:
    body = _CollectionConfigCreate(**collection_spec("AgentMemory"))._to_dict()  # what collections.create sends

    assert body["class"] == "AgentMemory"
    assert body["multiTenancyConfig"] == {"enabled": True, "autoTenantCreation": True, "autoTenantActivation": True}
    vectors = body["vectorConfig"]["default"]
    assert vectors["vectorizer"] == {"none": {}}
    assert vectors["vectorIndexConfig"]["distance"] == "cosine"
    props = {p["name"]: p for p in body["properties"]}
    assert set(props) == {"tenant_id", "task_id", "kind", "step_index", "text", "importance", "metadata", "created_at"}
    assert props["tenant_id"]["tokenization"] == "field"  # exact-match filters
    assert props["importance"]["dataType"] == ["number"]
    assert props["metadata"]["indexFilterable"] is False


def test_tenant_names_are_valid_and_never_shared() -> None:
    ids = ["acme", "Acme", "t_acme", "h_acme", "acme corp", "ACME", "a" * 64, "a" * 63, "tenant/1", "ünïcode", "-_-"]
    names = [weaviate_tenant(i) for i in ids]
    assert all(WEAVIATE_TENANT_NAME.match(n) for n in names), names
    assert len(set(names)) == len(ids)
    assert weaviate_tenant("acme") == "t_acme"
    assert weaviate_tenant("Acme").startswith("h_")
    assert weaviate_tenant("acme") == weaviate_tenant("acme")
    with pytest.raises(ValueError):
        weaviate_tenant("")


def test_every_search_filters_on_the_tenant_whatever_else_it_asks() -> None:
    plain = _FilterToGRPC.convert(search_filter("acme", None))
    assert (plain.target.property, plain.value_text) == ("tenant_id", "acme")

    combined = _FilterToGRPC.convert(search_filter("acme", MemoryFilter(task_id="t1", kind="note", min_importance=0.7)))
    assert combined.operator == combined.OPERATOR_AND
    parts = {f.target.property: f for f in combined.filters}
    assert parts["tenant_id"].value_text == "acme"
    assert parts["task_id"].value_text == "t1"
    assert parts["kind"].value_text == "note"
    assert parts["importance"].value_number == pytest.approx(0.7)
    assert parts["importance"].operator == parts["importance"].OPERATOR_GREATER_THAN_EQUAL


def test_inserts_are_batched_per_tenant() -> None:
    memories = [NewMemory(tenant_id="a", text=f"a{i}") for i in range(250)]
    memories += [NewMemory(tenant_id="B corp", text=f"b{i}") for i in range(30)]
    memories.insert(5, NewMemory(tenant_id="B corp", text="b-early"))
    vectors = [[float(i), 0.0, 1.0] for i in range(len(memories))]

    plan = plan_batches(memories, vectors, batch_size=100)

    assert [(tenant, len(objs)) for tenant, objs in plan] == [
        ("t_a", 100), ("t_a", 100), ("t_a", 50), (weaviate_tenant("B corp"), 31)
    ]
    first = plan[0][1][0]
    assert first.uuid == memories[0].id and first.vector == [0.0, 0.0, 1.0]
    assert first.properties["tenant_id"] == "a" and first.properties["text"] == "a0"
    assert {o.properties["tenant_id"] for o in plan[3][1]} == {"B corp"}
    assert all(isinstance(uuid.UUID(str(o.uuid)), uuid.UUID) for _, objs in plan for o in objs)
    with pytest.raises(ValueError):
        plan_batches(memories, vectors, batch_size=0)


def _status_error(status: int) -> wx.UnexpectedStatusCodeError:
    response = httpx.Response(status, json={"error": [{"message": "nope"}]}, request=httpx.Request("GET", "http://w"))
    return wx.UnexpectedStatusCodeError("request", response)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (wx.WeaviateConnectionError("refused"), MemoryUnavailable),
        (wx.WeaviateTimeoutError("slow"), MemoryUnavailable),
        (_status_error(503), MemoryUnavailable),
        (_status_error(429), MemoryUnavailable),
        (_status_error(422), MemoryRequestError),
        (_status_error(401), MemoryRequestError),
        (wx.WeaviateQueryError("tenant not found: \"t_x\"", "GRPC"), MemoryRequestError),
        (wx.WeaviateInvalidInputError("bad"), MemoryRequestError),
    ],
)
def test_client_errors_are_mapped_at_the_boundary(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info, mapped_errors("search memories"):
        raise raised
    assert info.value.__cause__ is raised
    assert "search memories" in str(info.value)


def test_an_unreachable_server_is_unavailable_not_a_crash() -> None:
    with pytest.raises(MemoryUnavailable, match="unavailable"):
        connect(f"http://127.0.0.1:{free_port()}", None, grpc_port=free_port(), timeout_s=1)


@pytest.mark.parametrize("url", ["weaviate:8080", "ftp://host", "http://"])
def test_a_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(MemoryConfigError, match="http"):
        connect(url)
