"""``LongTermMemory``: the one memory interface, text in and text out, over any ``VectorStore`` and ``Embedder``.

- ``add``: embed the texts in one batch, store the records (importance and metadata included);
- ``search``: embed the query, return the tenant's top-k with optional filters (task, kind, minimum importance);
- ``delete_task`` / ``delete_tenant``: forget.

Every call names the tenant; nothing here can read across tenants because no store method can.
"""

from __future__ import annotations

from collections.abc import Sequence

from autogpt_workers.memory.base import MemoryFilter, MemoryHit, NewMemory, VectorStore
from autogpt_workers.memory.embeddings import Embedder
from autogpt_workers.memory.errors import MemoryConfigError


class LongTermMemory:
    """Text-level memory over ``store`` with vectors from ``embedder`` (their dimensions must agree)."""

    def __init__(self, store: VectorStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder

    def start(self) -> LongTermMemory:
        """Check the embedder and the store agree, and create the schema if missing."""
        if self.embedder.dims != self.store.dims:
            raise MemoryConfigError(
                f"the embedding model {self.embedder.model!r} gives {self.embedder.dims}-dim vectors "
                f"but the memory store is set up for {self.store.dims}"
            )
        self.store.ensure_schema()
        return self

    def add(self, memories: Sequence[NewMemory]) -> list[str]:
        """Store ``memories``; returns their ids (an existing id is replaced)."""
        if not memories:
            return []
        vectors = self.embedder.embed([m.text for m in memories])
        return self.store.upsert(memories, vectors)

    def search(
        self,
        tenant_id: str,
        query: str,
        k: int = 5,
        where: MemoryFilter | None = None,
        *,
        min_score: float | None = None,
    ) -> list[MemoryHit]:
        """The tenant's ``k`` memories nearest to ``query`` (best first), at least ``min_score`` similar."""
        if k < 1 or not query.strip():
            return []
        hits = self.store.search(tenant_id, self.embedder.embed([query])[0], k, where)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        return hits

    def delete_task(self, tenant_id: str, task_id: str) -> int:
        return self.store.delete_task(tenant_id, task_id)

    def delete_tenant(self, tenant_id: str) -> int:
        return self.store.delete_tenant(tenant_id)

    def count(self, tenant_id: str) -> int:
        return self.store.count(tenant_id)

    def close(self) -> None:
        self.store.close()
