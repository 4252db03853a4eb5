"""The long-term memory contract: typed records, filters, hits, and the ``VectorStore`` every backend implements.

A backend stores records with vectors computed by us (so any embedding model works) and answers nearest-neighbour
queries **inside one tenant**: every method takes the tenant first and no query crosses tenants. Text in, text out
is ``LongTermMemory`` (``memory.longterm``), which puts an ``Embedder`` in front of a store.

Backends: ``embedded.SqliteVecStore`` (the default: a file on the host, shared by every worker process) and
``weaviate_store.WeaviateStore`` (production, one Weaviate tenant per platform tenant). Both pass the same contract
suite (``tests/memory/contract.py``).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

# Metadata values a backend can store as-is (JSON scalars).
MetadataValue = str | int | float | bool
TenantId = Annotated[str, StringConstraints(min_length=1, max_length=64)]

# Ids derived from content (``memory_id``) live in this namespace.
MEMORY_NAMESPACE = uuid.UUID("8f5f3f0e-6a51-4f8b-9a53-2b8f0c6a1d57")


def memory_id(*parts: object) -> str:
    """A stable id for a memory derived from ``parts`` (e.g. tenant, task, step, kind): re-running a step after
    a crash writes the same id, so the memory is replaced, not duplicated."""
    return str(uuid.uuid5(MEMORY_NAMESPACE, ":".join(str(p) for p in parts)))


def _now() -> datetime:
    return datetime.now(UTC)


class NewMemory(BaseModel):
    """A memory to store. ``importance`` is 0..1; ``metadata`` holds JSON scalars only."""

    model_config = ConfigDict(frozen=True)

    tenant_id: TenantId
    text: str = Field(min_length=1, max_length=20_000)
    importance: float = Field(default=0.5, ge=0.0, le=1.0)
    kind: str = Field(default="observation", min_length=1, max_length=32)
    task_id: str | None = Field(default=None, max_length=64)
    step_index: int | None = Field(default=None, ge=0)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), description="a UUID")
    created_at: datetime = Field(default_factory=_now)

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        """Ids are UUIDs (Weaviate requires it), in canonical form."""
        return str(uuid.UUID(value))


class MemoryHit(BaseModel):
    """A stored memory returned by a search, with its cosine similarity to the query (1 = same direction)."""

    id: str
    tenant_id: str
    text: str
    importance: float
    kind: str
    task_id: str | None = None
    step_index: int | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    created_at: datetime
    score: float


class MemoryFilter(BaseModel):
    """Narrows a search inside the tenant. Every field set must match (AND)."""

    model_config = ConfigDict(frozen=True)

    task_id: str | None = None
    kind: str | None = None
    min_importance: float | None = Field(default=None, ge=0.0, le=1.0)


class VectorStore(ABC):
    """A tenant-partitioned vector store of ``NewMemory`` records with caller-supplied vectors."""

    dims: int

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create the collection/tables if missing (idempotent, safe to race with other processes)."""

    @abstractmethod
    def upsert(self, memories: Sequence[NewMemory], vectors: Sequence[Sequence[float]]) -> list[str]:
        """Store ``memories`` (a record with an existing id replaces it); returns their ids in order."""

    @abstractmethod
    def search(
        self, tenant_id: str, vector: Sequence[float], k: int, where: MemoryFilter | None = None
    ) -> list[MemoryHit]:
        """The ``k`` records of ``tenant_id`` nearest to ``vector`` that match ``where``, best first."""

    @abstractmethod
    def delete_task(self, tenant_id: str, task_id: str) -> int:
        """Delete the tenant's memories of one task; returns how many were deleted."""

    @abstractmethod
    def delete_tenant(self, tenant_id: str) -> int:
        """Delete every memory of a tenant; returns how many were deleted."""

    @abstractmethod
    def count(self, tenant_id: str) -> int:
        """How many memories the tenant has."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def _check_vectors(self, memories: Sequence[NewMemory], vectors: Sequence[Sequence[float]]) -> None:
        if len(memories) != len(vectors):
            raise ValueError(f"{len(memories)} memories but {len(vectors)} vectors")
        for vector in vectors:
            if len(vector) != self.dims:
                raise ValueError(f"a vector has {len(vector)} dimensions; this store holds {self.dims}")
