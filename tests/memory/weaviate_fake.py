"""A minimal in-process stand-in for the part of weaviate-client v4's collection API that ``WeaviateStore`` calls.

It is a unit-test double for our adapter code, not a Weaviate: ``collections.exists/create/use/delete``,
``collection.with_tenant(...).data.insert_many/delete_many``, ``.query.near_vector``, ``.aggregate.over_all`` and
``collection.tenants.exists/remove``. It answers with the client's own return types (``BatchObjectReturn``,
``QueryReturn`` of ``Object``, ``AggregateReturn``, ``DeleteManyReturn``) and raises the client's own exceptions
where a server would refuse: a tenant never written to is "tenant not found", a schema created twice is a 422
"already exists", an object whose text contains ``[[reject]]`` is refused in the batch result, a batch that is
refused whole raises ``WeaviateInsertManyAllFailedError``. Filters built with ``weaviate.classes.query.Filter``
(equality, ``>=``, ``all_of``) are evaluated, distances are cosine. The live contract suite
(``tests/memory/test_contract.py`` with ``WEAVIATE_URL``) checks the real server.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from weaviate import exceptions as wx
from weaviate.collections.classes.aggregate import AggregateReturn
from weaviate.collections.classes.batch import BatchObject, BatchObjectReturn, DeleteManyReturn, ErrorObject
from weaviate.collections.classes.filters import _FilterAnd, _FilterValue, _Operator
from weaviate.collections.classes.internal import MetadataReturn, Object, QueryReturn

REJECT = "[[reject]]"


def status_error(status: int, message: str) -> wx.UnexpectedStatusCodeError:
    """The client's exception for a REST answer with ``status`` and Weaviate's error body."""
    response = httpx.Response(
        status, json={"error": [{"message": message}]}, request=httpx.Request("POST", "http://weaviate/v1/schema")
    )
    return wx.UnexpectedStatusCodeError("Collection may not have been created properly.", response)


def _matches(where: Any, props: dict[str, Any]) -> bool:
    if where is None:
        return True
    if isinstance(where, _FilterAnd):
        return all(_matches(part, props) for part in where.filters)
    if isinstance(where, _FilterValue):
        value = props.get(str(where.target))
        if where.operator == _Operator.EQUAL:
            return bool(value == where.value)
        if where.operator == _Operator.GREATER_THAN_EQUAL:
            return value is not None and value >= where.value
    raise NotImplementedError(f"the fake does not evaluate {where!r}")


def _distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1.0 - dot / ((math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))) or 1.0)


@dataclass
class Stored:
    properties: dict[str, Any]
    vector: list[float]


@dataclass
class FakeServer:
    """What the fake 'server' holds, and what it was asked."""

    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    # collection -> tenant -> uuid -> object
    objects: dict[str, dict[str, dict[str, Stored]]] = field(default_factory=dict)
    insert_calls: list[tuple[str, int]] = field(default_factory=list)  # (tenant, objects in the request)
    searches: list[dict[str, Any]] = field(default_factory=list)
    removed_tenants: list[str] = field(default_factory=list)
    created: int = 0
    exists_answers_false: bool = False  # another worker creates the collection between our exists() and create()
    fail_next: Exception | None = None  # raised by the next data, query or aggregate call

    def take_failure(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc


class FakeData:
    def __init__(self, server: FakeServer, collection: str, tenant: str) -> None:
        self._server, self._collection, self._tenant = server, collection, tenant

    def insert_many(self, objects: list[Any]) -> BatchObjectReturn:
        self._server.take_failure()
        self._server.insert_calls.append((self._tenant, len(objects)))
        shard = self._server.objects.setdefault(self._collection, {}).setdefault(self._tenant, {})  # auto-created
        result = BatchObjectReturn()
        for index, obj in enumerate(objects):
            if REJECT in str(obj.properties.get("text", "")):
                batch_object = BatchObject(collection=self._collection, uuid=obj.uuid, index=index)
                result.errors[index] = ErrorObject("invalid text property: rejected by the fake", batch_object)
                continue
            shard[str(obj.uuid)] = Stored(dict(obj.properties), list(obj.vector))
            result.uuids[index] = uuid.UUID(str(obj.uuid))
        result.has_errors = bool(result.errors)
        if objects and len(result.errors) == len(objects):
            raise wx.WeaviateInsertManyAllFailedError(next(iter(result.errors.values())).message)
        return result

    def delete_many(self, where: Any) -> DeleteManyReturn[None]:
        self._server.take_failure()
        shard = self._shard(lambda m: wx.WeaviateDeleteManyError(m))
        doomed = [key for key, obj in shard.items() if _matches(where, obj.properties)]
        for key in doomed:
            del shard[key]
        return DeleteManyReturn(failed=0, matches=len(doomed), objects=None, successful=len(doomed))

    def _shard(self, error: Any) -> dict[str, Stored]:
        shard = self._server.objects.get(self._collection, {}).get(self._tenant)
        if shard is None:
            raise error(f'object search at index agentmemory: tenant not found: "{self._tenant}"')
        return shard


class FakeQuery:
    def __init__(self, data: FakeData) -> None:
        self._data = data

    def near_vector(
        self, near_vector: list[float], limit: int, filters: Any = None, return_metadata: Any = None
    ) -> QueryReturn[Any, Any]:
        server = self._data._server
        server.take_failure()
        server.searches.append({"tenant": self._data._tenant, "limit": limit, "filters": filters})
        shard = self._data._shard(lambda m: wx.WeaviateQueryError(m, "GRPC"))
        matching = [(key, obj) for key, obj in shard.items() if _matches(filters, obj.properties)]
        ranked = sorted(((_distance(near_vector, obj.vector), key, obj) for key, obj in matching), key=lambda i: i[0])
        ranked = ranked[:limit]
        return QueryReturn(
            objects=[
                Object(
                    uuid=uuid.UUID(key),
                    metadata=MetadataReturn(distance=distance),
                    properties=dict(obj.properties),
                    references=None,
                    vector={},
                    collection=self._data._collection,
                )
                for distance, key, obj in ranked
            ]
        )


class FakeAggregate:
    def __init__(self, data: FakeData) -> None:
        self._data = data

    def over_all(self, total_count: bool = False) -> AggregateReturn:
        self._data._server.take_failure()
        shard = self._data._shard(lambda m: wx.WeaviateQueryError(m, "GRPC"))
        return AggregateReturn(properties={}, total_count=len(shard) if total_count else None)


class FakeTenantCollection:
    def __init__(self, server: FakeServer, collection: str, tenant: str) -> None:
        self.data = FakeData(server, collection, tenant)
        self.query = FakeQuery(self.data)
        self.aggregate = FakeAggregate(self.data)


class FakeTenants:
    def __init__(self, server: FakeServer, collection: str) -> None:
        self._server, self._collection = server, collection

    def exists(self, name: str) -> bool:
        return name in self._server.objects.get(self._collection, {})

    def remove(self, names: list[str]) -> None:
        for name in names:
            self._server.objects.get(self._collection, {}).pop(name, None)
            self._server.removed_tenants.append(name)


class FakeCollection:
    def __init__(self, server: FakeServer, name: str) -> None:
        self._server, self._name = server, name
        self.tenants = FakeTenants(server, name)

    def with_tenant(self, tenant: str) -> FakeTenantCollection:
        return FakeTenantCollection(self._server, self._name, tenant)


class FakeCollections:
    def __init__(self, server: FakeServer) -> None:
        self._server = server

    def exists(self, name: str) -> bool:
        return name in self._server.schemas and not self._server.exists_answers_false

    def create(self, **spec: Any) -> FakeCollection:
        self._server.take_failure()
        name = spec["name"]
        if name in self._server.schemas:
            raise status_error(422, f"class name {name!r} already exists")
        self._server.schemas[name] = spec
        self._server.created += 1
        return FakeCollection(self._server, name)

    def use(self, name: str) -> FakeCollection:
        return FakeCollection(self._server, name)

    def delete(self, name: str) -> None:
        self._server.schemas.pop(name, None)
        self._server.objects.pop(name, None)


class FakeWeaviateClient:
    """Stands for ``weaviate.WeaviateClient`` as ``WeaviateStore`` uses it."""

    def __init__(self, server: FakeServer | None = None) -> None:
        self.server = server or FakeServer()
        self.collections = FakeCollections(self.server)
        self.closed = False

    def close(self) -> None:
        self.closed = True
