"""Embeddings over real HTTP (the fake LLM server's ``/v1/embeddings``) and the Redis cache (real Redis)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import httpx
import pytest

from autogpt_workers.memory.embeddings import CachedEmbedder, OpenAIEmbedder
from autogpt_workers.memory.errors import MemoryConfigError, MemoryRequestError, MemoryUnavailable
from autogpt_workers.memory.factory import build_embedder
from tests.conftest import free_port
from tests.fake_llm.embeddings import fake_vector
from tests.memory.conftest import FAKE_MODEL


def _served(fake_llm: str) -> dict[str, int]:
    return dict(httpx.get(f"{fake_llm}/_embeddings").json())


def test_texts_are_sent_in_batches_and_come_back_in_order(fake_llm: str, embedder: OpenAIEmbedder) -> None:
    texts = [f"text number {i}" for i in range(40)]
    before = _served(fake_llm)

    vectors = embedder.embed(texts)

    after = _served(fake_llm)
    assert after["requests"] - before["requests"] == 3  # 16 + 16 + 8
    assert after["inputs"] - before["inputs"] == 40
    assert embedder.requests == 3
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(fake_vector(text))


def test_dims_are_asked_once_when_not_configured(fake_llm: str) -> None:
    probe = OpenAIEmbedder.connect(f"{fake_llm}/v1", "k", FAKE_MODEL)
    assert probe.dims == 64
    assert probe.dims == 64 and probe.requests == 1


def test_endpoint_failures_are_mapped(fake_llm: str, embedder: OpenAIEmbedder) -> None:
    with pytest.raises(MemoryUnavailable, match="503"):
        embedder.embed(["fine", "this one fails [[embed:503]]"])
    with pytest.raises(MemoryRequestError, match="400"):
        embedder.embed(["[[embed:400]]"])
    down = OpenAIEmbedder.connect(f"http://127.0.0.1:{free_port()}/v1", "k", FAKE_MODEL, max_retries=0)
    with pytest.raises(MemoryUnavailable):
        down.embed(["anything"])


def test_the_cache_answers_repeats_without_a_request(
    fake_llm: str, embedder: OpenAIEmbedder, redis_client: Any
) -> None:
    cached = CachedEmbedder(embedder, redis_client, ttl_s=600, prefix="test:emb")
    texts = [f"cache me {i} {fake_llm}" for i in range(5)]
    redis_client.delete(*[cached.key(t) for t in texts])

    first = cached.embed([*texts, texts[0]])  # a repeat inside one call is embedded once
    assert embedder.requests == 1 and cached.misses == 6
    second = cached.embed(texts)

    assert embedder.requests == 1  # all from Redis
    assert cached.hits == 5
    for again, fresh in zip(second, first, strict=False):
        assert again == pytest.approx(fresh, abs=1e-6)  # float32 in Redis
    key = cached.key(texts[0])
    assert key == f"test:emb:{FAKE_MODEL}:{hashlib.sha256(texts[0].encode()).hexdigest()}"
    assert 0 < redis_client.ttl(key) <= 600
    assert math.isclose(sum(x * x for x in second[0]), 1.0, rel_tol=1e-5)


def test_the_cache_key_separates_models(embedder: OpenAIEmbedder, redis_client: Any, fake_llm: str) -> None:
    other = OpenAIEmbedder.connect(f"{fake_llm}/v1", "k", "another-model", dims=64)
    assert CachedEmbedder(embedder, redis_client).key("x") != CachedEmbedder(other, redis_client).key("x")


def test_redis_down_costs_the_cache_not_the_embedding(embedder: OpenAIEmbedder) -> None:
    import redis

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    cached = CachedEmbedder(embedder, dead)
    [vector] = cached.embed(["still works"])
    assert vector == pytest.approx(fake_vector("still works"))



def _openai_settings(fake_llm: str, **fields: Any) -> Any:
    from autogpt_workers.config import Settings

    return Settings(
        memory_embedder="openai", memory_embeddings_base_url=f"{fake_llm}/v1", memory_embedding_model=FAKE_MODEL,
        **fields,
    )  # fmt: skip


def test_dimensions_that_the_model_does_not_give_are_a_config_error_at_start(fake_llm: str) -> None:
    wrong = OpenAIEmbedder.connect(f"{fake_llm}/v1", "k", FAKE_MODEL, dims=128)  # the fake serves 64
    with pytest.raises(MemoryConfigError, match=r"returns 64-dim vectors but AUTOGPT_MEMORY_EMBEDDING_DIMS is 128"):
        wrong.check_dims()
    with pytest.raises(MemoryConfigError, match="set it to 64"):
        build_embedder(_openai_settings(fake_llm, memory_embedding_dims=128))

    right = build_embedder(_openai_settings(fake_llm, memory_embedding_dims=64))
    assert right.dims == 64
    unset = build_embedder(_openai_settings(fake_llm))
    assert isinstance(unset, OpenAIEmbedder)
    assert unset.dims == 64 and unset.requests == 1  # asked once, at start


def test_a_vector_of_the_wrong_length_later_is_refused(fake_llm: str) -> None:
    embedder = OpenAIEmbedder.connect(f"{fake_llm}/v1", "k", FAKE_MODEL, dims=32)  # not checked at start
    with pytest.raises(MemoryRequestError, match=r"64-dim vectors .* 32 expected"):
        embedder.embed(["anything"])


def test_an_endpoint_down_at_start_is_fatal_only_without_configured_dimensions() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    embedder = build_embedder(_openai_settings(down, memory_embedding_dims=64, llm_timeout_s=2))
    assert embedder.dims == 64  # carries on: the check is redone on every answer
    with pytest.raises(MemoryUnavailable):
        build_embedder(_openai_settings(down, llm_timeout_s=2))
