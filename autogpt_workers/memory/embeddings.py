"""Embeddings: the ``Embedder`` interface, an OpenAI-compatible ``/v1/embeddings`` client, and a Redis cache.

``OpenAIEmbedder`` speaks to any OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama, ...) in batches of
``batch_size`` inputs per request; ``check_dims`` asks it for one vector at start, so a model whose vectors do not
have the configured dimensions is a ``MemoryConfigError`` there, and a vector of the wrong length later (the model
changed behind the endpoint) a ``MemoryRequestError``. ``CachedEmbedder`` puts Redis in front of any embedder: one
key per ``(model, sha256(text))`` holding the float32 vector, read with one ``MGET`` per batch; a Redis failure only
costs the cache, never the embedding. The offline local model is ``memory.local_embeddings.LocalEmbedder``.

openai's exceptions are translated here into ``memory.errors``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from autogpt_workers.memory.errors import MemoryConfigError, MemoryRequestError, MemoryUnavailable

log = structlog.get_logger(__name__)

Vector = list[float]


class Embedder(Protocol):
    """Turns texts into vectors of ``dims`` floats; the same text and model always give the same vector."""

    model: str

    @property
    def dims(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[Vector]: ...


class OpenAIEmbedder:
    """``POST {base_url}/embeddings`` with ``batch_size`` inputs per request. ``dims=None``: asked once."""

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        dims: int | None = None,
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.client = client
        self.model = model
        self.batch_size = batch_size
        self._dims = dims
        self.requests = 0  # how many HTTP requests were made (batching is observable)

    @classmethod
    def connect(
        cls,
        base_url: str | None,
        api_key: str | None,
        model: str,
        *,
        dims: int | None = None,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        max_retries: int = 2,
    ) -> OpenAIEmbedder:
        import openai

        client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=max_retries
        )
        return cls(client, model, dims=dims, batch_size=batch_size)

    @property
    def dims(self) -> int:
        if self._dims is None:
            self._dims = len(self.embed(["dimension probe"])[0])
        return self._dims

    def check_dims(self) -> int:
        """Embed one text and compare its length with the configured ``dims`` (None: adopt it). A mismatch is a
        ``MemoryConfigError``; an endpoint that is down raises ``MemoryUnavailable`` as any request does."""
        configured, self._dims = self._dims, None  # the probe must not be refused by the run-time check
        try:
            actual = len(self._request(["dimension probe"])[0])
        finally:
            self._dims = configured
        if configured is not None and actual != configured:
            raise MemoryConfigError(
                f"the embedding model {self.model!r} returns {actual}-dim vectors but AUTOGPT_MEMORY_EMBEDDING_DIMS "
                f"is {configured}: set it to {actual}, or leave it unset to take the model's"
            )
        self._dims = actual
        return actual

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        vectors: list[Vector] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(self._request([t or " " for t in texts[start : start + self.batch_size]]))
        return vectors

    def _request(self, batch: list[str]) -> list[Vector]:
        import openai

        self.requests += 1
        try:
            response = self.client.embeddings.create(model=self.model, input=batch)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            raise MemoryUnavailable(f"embeddings endpoint unavailable: {exc}") from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                raise MemoryUnavailable(f"embeddings endpoint answered {exc.status_code}: {exc}") from exc
            raise MemoryRequestError(f"embeddings endpoint refused the request ({exc.status_code}): {exc}") from exc
        except ValueError as exc:  # a body that is not JSON
            raise MemoryUnavailable(f"embeddings endpoint sent an unreadable answer: {exc}") from exc
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(batch):
            raise MemoryRequestError(f"embeddings endpoint returned {len(data)} vectors for {len(batch)} inputs")
        vectors = [list(map(float, item.embedding)) for item in data]
        wrong = next((len(v) for v in vectors if self._dims is not None and len(v) != self._dims), None)
        if wrong is not None:
            raise MemoryRequestError(
                f"embeddings endpoint returned {wrong}-dim vectors for {self.model!r}; {self._dims} expected"
            )
        return vectors


class CachedEmbedder:
    """``inner`` with a Redis cache keyed by model and text hash; entries expire after ``ttl_s``."""

    def __init__(self, inner: Embedder, redis: Any, *, ttl_s: int = 7 * 24 * 3600, prefix: str = "autogpt:emb") -> None:
        self.inner = inner
        self.redis = redis
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.model = inner.model
        self.hits = 0
        self.misses = 0

    @property
    def dims(self) -> int:
        return self.inner.dims

    def key(self, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return f"{self.prefix}:{self.model}:{digest}"

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        keys = [self.key(t) for t in texts]
        cached = self._get(keys)
        missing = [i for i, blob in enumerate(cached) if blob is None]
        # one request per distinct missing text
        distinct: dict[str, list[int]] = {}
        for i in missing:
            distinct.setdefault(texts[i], []).append(i)
        vectors: list[Vector | None] = [_unpack(b) if b is not None else None for b in cached]
        if distinct:
            fresh = self.inner.embed(list(distinct))
            for positions, vector in zip(distinct.values(), fresh, strict=True):
                for i in positions:
                    vectors[i] = vector
            self._set({self.key(text): _pack(v) for text, v in zip(distinct, fresh, strict=True)})
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        return [v for v in vectors if v is not None]

    def _get(self, keys: list[str]) -> list[bytes | None]:
        try:
            return list(self.redis.mget(keys))
        except Exception as exc:  # the cache is an optimisation: Redis down means no cache, not no memory
            log.warning("embedding_cache_unavailable", error=str(exc))
            return [None] * len(keys)

    def _set(self, entries: dict[str, bytes]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, blob in entries.items():
                pipe.set(key, blob, ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:
            log.warning("embedding_cache_unavailable", error=str(exc))


def _pack(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def _unpack(blob: bytes) -> Vector:
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))
