"""The embedded store beyond the contract: shared by several processes at once, persistent, and refusing a file
built with another model."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest

from autogpt_workers.memory.base import NewMemory
from autogpt_workers.memory.embedded import SqliteVecStore
from autogpt_workers.memory.errors import MemoryConfigError

DIMS = 16


def _vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(DIMS)]


def _worker(path: str, worker: int, count: int) -> None:
    """One worker process: writes ``count`` memories one transaction each, searching in between."""
    store = SqliteVecStore(path, DIMS, "m")
    store.ensure_schema()  # every process races to create the schema
    rng = random.Random(worker)
    for i in range(count):
        store.upsert([NewMemory(tenant_id=f"tenant-{worker % 2}", text=f"w{worker} m{i}")], [_vector(rng)])
        store.search(f"tenant-{worker % 2}", _vector(rng), 3)
    store.close()


def test_worker_processes_share_one_file_safely(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    store = SqliteVecStore(path, DIMS, "m")
    assert store.count("tenant-0") == 80 and store.count("tenant-1") == 80
    hits = store.search("tenant-1", _vector(random.Random(9)), 200)
    assert len(hits) == 80 and {h.text.split()[0] for h in hits} == {"w1", "w3"}


def test_memories_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    first = SqliteVecStore(path, DIMS, "m")
    first.ensure_schema()
    memory = NewMemory(tenant_id="t", text="kept on disk", importance=0.7)
    first.upsert([memory], [[1.0] + [0.0] * (DIMS - 1)])
    first.close()

    again = SqliteVecStore(path, DIMS, "m")
    again.ensure_schema()
    [hit] = again.search("t", [1.0] + [0.0] * (DIMS - 1), 5)
    assert (hit.id, hit.text, hit.importance) == (memory.id, "kept on disk", 0.7)
    assert hit.score == pytest.approx(1.0)


@pytest.mark.parametrize(("dims", "model"), [(DIMS * 2, "m"), (DIMS, "another-model")])
def test_a_file_built_with_another_model_is_refused(tmp_path: Path, dims: int, model: str) -> None:
    SqliteVecStore(tmp_path / "m.sqlite3", DIMS, "m").ensure_schema()
    with pytest.raises(MemoryConfigError, match="cannot be compared"):
        SqliteVecStore(tmp_path / "m.sqlite3", dims, model).ensure_schema()


def test_vectors_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    store = SqliteVecStore(tmp_path / "m.sqlite3", DIMS, "m")
    store.ensure_schema()
    with pytest.raises(ValueError, match="dimensions"):
        store.upsert([NewMemory(tenant_id="t", text="x")], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="dimensions"):
        store.search("t", [1.0], 3)
