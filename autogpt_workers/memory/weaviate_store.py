"""Weaviate as the long-term memory store (production), through weaviate-client v4.

- One collection (``AgentMemory`` by default) with Weaviate's native multi-tenancy: every platform tenant is a
  Weaviate tenant (its own shard), created on first write (``auto_tenant_creation``). A search runs inside the
  tenant's shard *and* filters on the ``tenant_id`` property: two locks on one door.
- Our own vectors (``self_provided``, cosine HNSW): any embedding model works.
- Inserts go in batches of ``batch_size`` objects per tenant (``insert_many``: one gRPC batch request each); an id
  that exists is replaced, so re-running a step rewrites its memory.
- The schema is created at start (``ensure_schema``), racing workers included.
- Every weaviate-client exception is translated here, and only here, into ``memory.errors``.

Weaviate tenant names allow ``[A-Za-z0-9_-]{1,64}``; ``weaviate_tenant`` maps any platform tenant id to one,
injectively (see its docstring).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from autogpt_workers.memory.base import MemoryFilter, MemoryHit, NewMemory, VectorStore
from autogpt_workers.memory.errors import MemoryConfigError, MemoryRequestError, MemoryUnavailable

DEFAULT_COLLECTION = "AgentMemory"
DEFAULT_BATCH_SIZE = 100
_VERBATIM_TENANT = re.compile(r"[a-z0-9_-]{1,62}")


def weaviate_tenant(tenant_id: str) -> str:
    """The Weaviate tenant name of a platform tenant.

    Lower-case ids of letters, digits, ``_`` and ``-`` (up to 62 characters) read as themselves behind ``t_``;
    anything else becomes ``h_`` and 62 hex digits of its SHA-256. The prefixes keep the two forms apart, so two
    platform tenants never share a Weaviate tenant; lower case only, because shard directories may live on a
    case-insensitive file system.
    """
    if not tenant_id:
        raise ValueError("a tenant id cannot be empty")
    if _VERBATIM_TENANT.fullmatch(tenant_id):
        return f"t_{tenant_id}"
    return "h_" + hashlib.sha256(tenant_id.encode("utf-8")).hexdigest()[:62]


def collection_spec(name: str = DEFAULT_COLLECTION) -> dict[str, Any]:
    """The keyword arguments of ``client.collections.create``: the whole schema, in one place."""
    from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

    return {
        "name": name,
        "description": "Long-term memories of autogpt-workers agents; one tenant per platform tenant.",
        "properties": [
            *(
                Property(name=field, data_type=DataType.TEXT, tokenization=Tokenization.FIELD)
                for field in ("tenant_id", "task_id", "kind")
            ),
            Property(name="step_index", data_type=DataType.INT),
            Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
            Property(name="importance", data_type=DataType.NUMBER),
            Property(name="metadata", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
            Property(name="created_at", data_type=DataType.DATE),
        ],
        "vector_config": Configure.Vectors.self_provided(
            vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
        ),
        "multi_tenancy_config": Configure.multi_tenancy(
            enabled=True, auto_tenant_creation=True, auto_tenant_activation=True
        ),
    }


def search_filter(tenant_id: str, where: MemoryFilter | None) -> Any:
    """The ``filters`` of a search: always the tenant, plus whatever ``where`` sets."""
    from weaviate.classes.query import Filter

    parts = [Filter.by_property("tenant_id").equal(tenant_id)]
    if where is not None:
        if where.task_id is not None:
            parts.append(Filter.by_property("task_id").equal(where.task_id))
        if where.kind is not None:
            parts.append(Filter.by_property("kind").equal(where.kind))
        if where.min_importance is not None:
            parts.append(Filter.by_property("importance").greater_or_equal(where.min_importance))
    return Filter.all_of(parts) if len(parts) > 1 else parts[0]


def plan_batches(
    memories: Sequence[NewMemory], vectors: Sequence[Sequence[float]], batch_size: int
) -> list[tuple[str, list[Any]]]:
    """``(weaviate tenant, [DataObject, ...])`` requests of at most ``batch_size`` objects, tenant by tenant in
    the order tenants first appear."""
    from weaviate.classes.data import DataObject

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    by_tenant: dict[str, list[Any]] = {}
    for memory, vector in zip(memories, vectors, strict=True):
        by_tenant.setdefault(memory.tenant_id, []).append(
            DataObject(properties=_properties(memory), uuid=memory.id, vector=[float(x) for x in vector])
        )
    return [
        (weaviate_tenant(tenant), objects[start : start + batch_size])
        for tenant, objects in by_tenant.items()
        for start in range(0, len(objects), batch_size)
    ]


def _properties(memory: NewMemory) -> dict[str, Any]:
    return {
        "tenant_id": memory.tenant_id,
        "task_id": memory.task_id or "",
        "kind": memory.kind,
        "step_index": memory.step_index if memory.step_index is not None else -1,
        "text": memory.text,
        "importance": memory.importance,
        "metadata": json.dumps(memory.metadata),
        "created_at": memory.created_at.astimezone(UTC),
    }


def connect(url: str, api_key: str | None = None, *, grpc_port: int = 50051, timeout_s: float = 10.0) -> Any:
    """A connected ``WeaviateClient`` for ``http(s)://host[:port]`` (gRPC on the same host, ``grpc_port``)."""
    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MemoryConfigError(f"AUTOGPT_WEAVIATE_URL must look like http(s)://host[:port], not {url!r}")
    secure = parts.scheme == "https"
    with mapped_errors("connect"):
        return weaviate.connect_to_custom(
            http_host=parts.hostname,
            http_port=parts.port or (443 if secure else 80),
            http_secure=secure,
            grpc_host=parts.hostname,
            grpc_port=grpc_port,
            grpc_secure=secure,
            auth_credentials=Auth.api_key(api_key) if api_key else None,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=timeout_s, query=timeout_s, insert=max(timeout_s, 30.0))
            ),
        )


class WeaviateStore(VectorStore):
    """Memories in one multi-tenant Weaviate collection. Owns ``client`` (``close`` closes it)."""

    def __init__(
        self, client: Any, dims: int, *, collection: str = DEFAULT_COLLECTION, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self.client = client
        self.dims = dims
        self.collection_name = collection
        self.batch_size = batch_size

    def _tenant(self, tenant_id: str) -> Any:
        return self.client.collections.use(self.collection_name).with_tenant(weaviate_tenant(tenant_id))

    def ensure_schema(self) -> None:
        from weaviate.exceptions import UnexpectedStatusCodeError

        with mapped_errors("create the schema"):
            if self.client.collections.exists(self.collection_name):
                return
            try:
                self.client.collections.create(**collection_spec(self.collection_name))
            except UnexpectedStatusCodeError as exc:  # another worker created it first
                if "already exists" not in str(exc):
                    raise

    def upsert(self, memories: Sequence[NewMemory], vectors: Sequence[Sequence[float]]) -> list[str]:
        self._check_vectors(memories, vectors)
        collection = self.client.collections.use(self.collection_name)
        for tenant, objects in plan_batches(memories, vectors, self.batch_size):
            with mapped_errors("insert memories"):
                result = collection.with_tenant(tenant).data.insert_many(objects)
            if result.errors:
                first = next(iter(result.errors.values()))
                raise MemoryRequestError(
                    f"Weaviate refused {len(result.errors)} of {len(objects)} memories: {first.message}"
                )
        return [m.id for m in memories]

    def search(
        self, tenant_id: str, vector: Sequence[float], k: int, where: MemoryFilter | None = None
    ) -> list[MemoryHit]:
        from weaviate.classes.query import MetadataQuery

        if len(vector) != self.dims:
            raise ValueError(f"the query vector has {len(vector)} dimensions; this store holds {self.dims}")
        if k < 1:
            return []
        try:
            with mapped_errors("search memories"):
                result = self._tenant(tenant_id).query.near_vector(
                    near_vector=[float(x) for x in vector],
                    limit=k,
                    filters=search_filter(tenant_id, where),
                    return_metadata=MetadataQuery(distance=True),
                )
        except MemoryRequestError as exc:
            if _tenant_missing(exc):
                return []  # nothing was ever stored for this tenant
            raise
        return [_hit(obj) for obj in result.objects]

    def delete_task(self, tenant_id: str, task_id: str) -> int:
        from weaviate.classes.query import Filter

        where = Filter.all_of(
            [Filter.by_property("tenant_id").equal(tenant_id), Filter.by_property("task_id").equal(task_id)]
        )
        try:
            with mapped_errors("delete a task's memories"):
                result = self._tenant(tenant_id).data.delete_many(where=where)
        except MemoryRequestError as exc:
            if _tenant_missing(exc):
                return 0
            raise
        return int(result.successful)

    def delete_tenant(self, tenant_id: str) -> int:
        count = self.count(tenant_id)
        name = weaviate_tenant(tenant_id)
        with mapped_errors("delete a tenant"):
            tenants = self.client.collections.use(self.collection_name).tenants
            if tenants.exists(name):
                tenants.remove([name])
        return count

    def count(self, tenant_id: str) -> int:
        try:
            with mapped_errors("count memories"):
                total = self._tenant(tenant_id).aggregate.over_all(total_count=True).total_count
        except MemoryRequestError as exc:
            if _tenant_missing(exc):
                return 0
            raise
        return int(total or 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _tenant_missing(exc: Exception) -> bool:
    text = str(exc).lower()
    return "tenant not found" in text or ("tenant" in text and "not found" in text)


def _hit(obj: Any) -> MemoryHit:
    props = obj.properties
    created = props.get("created_at")
    step = props.get("step_index")
    return MemoryHit(
        id=str(obj.uuid),
        tenant_id=str(props["tenant_id"]),
        task_id=props.get("task_id") or None,
        step_index=int(step) if step is not None and step >= 0 else None,
        kind=str(props.get("kind") or "observation"),
        text=str(props.get("text") or ""),
        importance=float(props.get("importance") or 0.0),
        metadata=json.loads(props.get("metadata") or "{}"),
        created_at=created if isinstance(created, datetime) else datetime.now(UTC),
        score=1.0 - float(obj.metadata.distance if obj.metadata.distance is not None else 1.0),
    )


@contextlib.contextmanager
def mapped_errors(action: str) -> Iterator[None]:
    """Translate weaviate-client's exceptions: unreachable, slow, overloaded -> ``MemoryUnavailable``; refused
    (auth, schema, bad input, other 4xx) -> ``MemoryRequestError``."""
    from weaviate import exceptions as wx

    try:
        yield
    except (
        wx.WeaviateConnectionError,
        wx.WeaviateStartUpError,
        wx.WeaviateTimeoutError,
        wx.WeaviateGRPCUnavailableError,
        wx.WeaviateRetryError,
        wx.WeaviateClosedClientError,
    ) as exc:
        raise MemoryUnavailable(f"Weaviate is unavailable ({action}): {_short(exc)}") from exc
    except wx.UnexpectedStatusCodeError as exc:
        if exc.status_code == 429 or exc.status_code >= 500:
            raise MemoryUnavailable(f"Weaviate answered {exc.status_code} ({action}): {_short(exc)}") from exc
        raise MemoryRequestError(f"Weaviate refused to {action} ({exc.status_code}): {_short(exc)}") from exc
    except (wx.AuthenticationFailedError, wx.InsufficientPermissionsError) as exc:
        raise MemoryRequestError(f"Weaviate refused the credentials ({action}): {_short(exc)}") from exc
    except wx.WeaviateBaseError as exc:
        text = str(exc)
        if "UNAVAILABLE" in text or "DEADLINE_EXCEEDED" in text:
            raise MemoryUnavailable(f"Weaviate is unavailable ({action}): {_short(exc)}") from exc
        raise MemoryRequestError(f"Weaviate could not {action}: {_short(exc)}") from exc


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
