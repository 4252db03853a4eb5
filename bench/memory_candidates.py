"""How the embedded memory store was chosen: sqlite-vec (``SqliteVecStore``), LanceDB and qdrant-client's local
mode, measured the same way on this machine. Not part of ``make bench`` (the losers are not dependencies):

    pip install -e '.[memory-candidates]'             # lancedb, qdrant-client
    python -m bench.memory_candidates                 # 10k and 100k memories, 200 searches each
    python -m bench.memory_candidates --sizes 10000 --queries 50

For each candidate and size: random 384-dim unit vectors (the local model's dimensions) in one tenant that holds
all N beside a tenant of 1,000, inserted in batches of 1,000; then top-5 searches inside the big tenant (p50, p99)
and inside the small one (p50), the tenant given as a filter (the candidates have no partitions but sqlite-vec's).
Then the property the workers need most: two processes writing to one fresh store at once (the think pool's
threads and the act pool's processes share the host's store), each inserting 1,000 memories; the row count after
both tells whether both writes landed. qdrant's local mode warns past 20,000 points and inserts slowly, so it is
measured up to ``--qdrant-max`` (20,000) only.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.figure import percentile

DIMS = 384
K = 5
BATCH = 1_000


def _units(generator: Any, count: int) -> Any:
    import numpy as np

    vectors = generator.standard_normal((count, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


class SqliteVec:
    name = "sqlite-vec (SqliteVecStore)"

    def __init__(self, path: Path) -> None:
        from autogpt_workers.memory.embedded import SqliteVecStore

        self.store = SqliteVecStore(path / "memory.sqlite3", DIMS, "random")
        self.store.ensure_schema()

    def insert(self, tenant: str, vectors: Any) -> None:
        from autogpt_workers.memory.base import NewMemory

        memories = [NewMemory(tenant_id=tenant, text="x") for _ in range(len(vectors))]
        self.store.upsert(memories, vectors.tolist())

    def search(self, tenant: str, vector: Any) -> int:
        return len(self.store.search(tenant, vector.tolist(), K))

    def count(self) -> int:
        return self.store.count("w")

    def close(self) -> None:
        self.store.close()


class Lance:
    name = "LanceDB"

    def __init__(self, path: Path) -> None:
        import lancedb
        import pyarrow as pa

        self.db = lancedb.connect(str(path / "lance"))
        self.schema = pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("tenant_id", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), DIMS)),
            ]
        )
        self.table = self.db.create_table("memories", schema=self.schema, exist_ok=True)

    def insert(self, tenant: str, vectors: Any) -> None:
        self.table.add([{"id": str(uuid.uuid4()), "tenant_id": tenant, "vector": v} for v in vectors.tolist()])

    def search(self, tenant: str, vector: Any) -> int:
        query = self.table.search(vector.tolist()).distance_type("cosine")
        return len(query.where(f"tenant_id = '{tenant}'", prefilter=True).limit(K).to_list())

    def count(self) -> int:
        return int(self.db.open_table("memories").count_rows("tenant_id = 'w'"))

    def close(self) -> None:
        pass


class QdrantLocal:
    name = "qdrant-client local mode"

    def __init__(self, path: Path) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=str(path / "qdrant"))
        if not self.client.collection_exists("memories"):
            self.client.create_collection(
                "memories", vectors_config=models.VectorParams(size=DIMS, distance=models.Distance.COSINE)
            )

    def insert(self, tenant: str, vectors: Any) -> None:
        points = [
            self.models.PointStruct(id=str(uuid.uuid4()), vector=v, payload={"tenant_id": tenant})
            for v in vectors.tolist()
        ]
        self.client.upsert("memories", points=points)

    def search(self, tenant: str, vector: Any) -> int:
        m = self.models
        where = m.Filter(must=[m.FieldCondition(key="tenant_id", match=m.MatchValue(value=tenant))])
        return len(self.client.query_points("memories", query=vector.tolist(), query_filter=where, limit=K).points)

    def count(self) -> int:
        m = self.models
        where = m.Filter(must=[m.FieldCondition(key="tenant_id", match=m.MatchValue(value="w"))])
        return int(self.client.count("memories", count_filter=where).count)

    def close(self) -> None:
        self.client.close()


CANDIDATES: dict[str, Callable[[Path], Any]] = {"sqlite-vec": SqliteVec, "lancedb": Lance, "qdrant": QdrantLocal}


def speed(make: Callable[[Path], Any], sizes: Sequence[int], queries: int, seed: int = 7) -> list[dict[str, Any]]:
    import numpy as np

    generator = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = make(Path(tmp))
        store.insert("small", _units(generator, 1_000))
        stored = 0
        for size in sorted(sizes):
            insert_s, added = 0.0, size - stored
            while stored < size:
                vectors = _units(generator, min(BATCH, size - stored))
                started = time.perf_counter()
                store.insert("big", vectors)
                insert_s += time.perf_counter() - started
                stored += len(vectors)
            probes = _units(generator, queries)
            store.search("big", probes[0])  # warm up
            big, small = [], []
            for probe in probes:
                started = time.perf_counter()
                assert store.search("big", probe) == K
                big.append(time.perf_counter() - started)
            for probe in probes[: max(1, queries // 2)]:
                started = time.perf_counter()
                store.search("small", probe)
                small.append(time.perf_counter() - started)
            rows.append(
                {
                    "size": size,
                    "p50_ms": percentile(big, 50) * 1000,
                    "p99_ms": percentile(big, 99) * 1000,
                    "small_p50_ms": percentile(small, 50) * 1000,
                    "inserts_per_s": added / insert_s if insert_s else 0.0,
                }
            )
        store.close()
    return rows


def _writer(kind: str, path: str, start: Any, errors: Any) -> None:
    import numpy as np

    try:
        start.wait(30)
        store = CANDIDATES[kind](Path(path))
        for _ in range(10):
            store.insert("w", _units(np.random.default_rng(), 100))
        store.close()
    except Exception as exc:
        errors.put(f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")


def two_writers(kind: str) -> str:
    """Two processes create/open one fresh store at the same moment and insert 1,000 memories each."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        start, errors = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(kind, tmp, start, errors)) for _ in range(2)]
        for p in procs:
            p.start()
        time.sleep(3.0)  # both imported and waiting
        start.set()
        for p in procs:
            p.join(300)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        try:
            store = CANDIDATES[kind](Path(tmp))
            rows = store.count()
            store.close()
        except Exception as exc:
            return f"store unreadable after: {type(exc).__name__}: {exc}"
    if failures:
        return f"{len(failures)} of 2 writers failed ({failures[0]}); {rows} of 2,000 rows"
    return f"both writers fine; {rows} of 2,000 rows"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--only", default=",".join(CANDIDATES), help=f"subset of {','.join(CANDIDATES)}")
    parser.add_argument("--qdrant-max", type=int, default=20_000, help="largest size measured for qdrant")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"top-{K} of {DIMS}-dim unit vectors, one tenant of N beside a tenant of 1,000, {args.queries} searches")
    print(f"{'candidate':<28}{'memories':>10}{'p50':>10}{'p99':>10}{'1k-tenant p50':>15}{'inserts/s':>11}")
    for kind in args.only.split(","):
        make = CANDIDATES[kind]
        mine = [s for s in sizes if kind != "qdrant" or s <= args.qdrant_max]
        try:
            rows = speed(make, mine, args.queries)
        except ImportError as exc:
            print(f"{kind:<28} not installed ({exc.name}): pip install -e '.[memory-candidates]'")
            continue
        for row in rows:
            print(
                f"{make.name:<28}{row['size']:>10,}{row['p50_ms']:>8.1f}ms{row['p99_ms']:>8.1f}ms"  # type: ignore[attr-defined]
                f"{row['small_p50_ms']:>13.1f}ms{row['inserts_per_s']:>11,.0f}"
            )
        for skipped in sorted(set(sizes) - set(mine)):
            print(f"{make.name:<28}{skipped:>10,}  not measured (--qdrant-max {args.qdrant_max})")  # type: ignore[attr-defined]
    print()
    for kind in args.only.split(","):
        with contextlib.suppress(ImportError):  # said above
            print(f"two writer processes, {CANDIDATES[kind].name}: {two_writers(kind)}")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
