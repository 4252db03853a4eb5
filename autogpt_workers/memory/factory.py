"""Builds the memory layer from the settings: embedder (cached in Redis), long-term store, short-term memory.

Called once per worker process by ``runtime``; the schema is created here, at start, so a misconfigured store
(wrong model for the file, Weaviate unreachable) stops the worker with a clear message before it takes work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from autogpt_workers.green import patched
from autogpt_workers.memory.base import VectorStore
from autogpt_workers.memory.embeddings import CachedEmbedder, Embedder, OpenAIEmbedder
from autogpt_workers.memory.errors import MemoryConfigError, MemoryUnavailable
from autogpt_workers.memory.longterm import LongTermMemory
from autogpt_workers.memory.service import MemoryService
from autogpt_workers.memory.shortterm import ShortTermMemory

if TYPE_CHECKING:
    from autogpt_workers.config import Settings

log = structlog.get_logger(__name__)


def build_embedder(settings: Settings, redis: object | None = None) -> Embedder:
    """The configured embedder, behind the Redis cache when ``redis`` is given and the TTL is not 0.

    An OpenAI-compatible endpoint is asked for one vector here (not through the cache): its length must match
    ``AUTOGPT_MEMORY_EMBEDDING_DIMS`` when set (else ``MemoryConfigError``), or becomes the dimensions when not.
    With the dimensions set, an endpoint that is down at start is only logged: the check is redone on every
    answer (``OpenAIEmbedder``), and memory is an aid, not a reason to stay down."""
    embedder: Embedder
    if settings.memory_embedder == "openai":
        key = settings.memory_embeddings_api_key or settings.openai_api_key
        remote = OpenAIEmbedder.connect(
            settings.memory_embeddings_base_url or settings.openai_base_url,
            key.get_secret_value() if key else None,
            settings.memory_embedding_model,
            dims=settings.memory_embedding_dims,
            batch_size=settings.memory_embedding_batch_size,
            timeout_s=settings.llm_timeout_s,
        )
        try:
            remote.check_dims()
        except MemoryUnavailable as exc:
            if settings.memory_embedding_dims is None:
                raise  # nothing to build the store with
            log.warning("embedding_dims_unchecked", model=remote.model, error=str(exc))
        embedder = remote
    else:
        from autogpt_workers.memory.local_embeddings import LocalEmbedder

        if not LocalEmbedder.available():
            raise MemoryConfigError(
                "AUTOGPT_MEMORY_EMBEDDER=local needs the local-embeddings extra "
                "(pip install 'autogpt-workers[local-embeddings]'); or set AUTOGPT_MEMORY_EMBEDDER=openai, "
                "or AUTOGPT_MEMORY_BACKEND=none"
            )
        local = LocalEmbedder(
            batch_size=settings.memory_embedding_batch_size, num_threads=settings.memory_local_threads
        )
        if patched():
            # under gevent the model's load (seconds of torch start-up) would hold every agent of the process, and
            # its lease heartbeat, at the first step: the worker builds its runtime, and so this, before it works
            local.load()
        embedder = local
    if redis is not None and settings.memory_embedding_cache_ttl_s > 0:
        embedder = CachedEmbedder(embedder, redis, ttl_s=settings.memory_embedding_cache_ttl_s)
    return embedder


def build_store(settings: Settings, embedder: Embedder) -> VectorStore:
    """The configured long-term store (not yet started)."""
    if settings.memory_backend == "weaviate":
        from autogpt_workers.memory.weaviate_store import WeaviateStore, connect

        assert settings.weaviate_url is not None  # Settings refuses weaviate without a URL
        key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
        client = connect(settings.weaviate_url, key, grpc_port=settings.weaviate_grpc_port)
        return WeaviateStore(
            client, embedder.dims, collection=settings.weaviate_collection, batch_size=settings.weaviate_batch_size
        )
    from autogpt_workers.memory.embedded import SqliteVecStore

    return SqliteVecStore(settings.memory_path, embedder.dims, embedder.model)


def build_memory(settings: Settings, tenant_of: Callable[[str], str]) -> MemoryService | None:
    """The memory service for a worker process, or None when ``memory_backend`` is ``none``."""
    if settings.memory_backend == "none":
        return None
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    embedder = build_embedder(settings, client)
    longterm = LongTermMemory(build_store(settings, embedder), embedder).start()
    shortterm = ShortTermMemory(
        client, ttl_s=settings.memory_shortterm_ttl_s, max_items=settings.memory_shortterm_items
    )
    return MemoryService(
        longterm,
        shortterm,
        tenant_of,
        importance_threshold=settings.memory_importance_threshold,
        min_score=settings.memory_min_score,
    )
