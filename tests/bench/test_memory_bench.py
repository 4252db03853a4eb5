"""The long-term memory part of the bench without the platform: the labelled set is consistent, the lexical baseline
and the latency figures are computed, the store's top 5 match the numpy reference. The model's recall runs in the
smoke test (``test_bench_smoke``) and in ``make bench``."""

from __future__ import annotations

import json

from bench import memory_bench


def test_the_labelled_set_is_consistent() -> None:
    data = json.loads(memory_bench.DATA.read_text(encoding="utf-8"))
    ids = [m["id"] for m in data["memories"]]
    assert len(ids) == len(set(ids)) >= 135
    assert len({m["text"] for m in data["memories"]}) == len(ids)  # no duplicate text
    assert len(data["queries"]) >= 65
    for q in data["queries"]:
        assert q["relevant"] and set(q["relevant"]) <= set(ids), q
        assert not any(r.startswith("d") for r in q["relevant"]), q  # d* are distractors only


def test_the_lexical_baseline_and_the_latency_figures() -> None:
    lexical = memory_bench.recall_at_k(memory_bench.LexicalEmbedder())
    assert lexical["queries"] >= 65
    assert 0 <= lexical["recall_at_1"] <= lexical["recall"] <= 1
    assert lexical["recall_at_1"] <= lexical["mrr"] <= lexical["recall"]

    [figure] = memory_bench.run(sizes=(2_000,), queries=10, recall=False)

    assert figure.key == "memory_topk_2k" and figure.verdict == "-"
    assert figure.values["size"] == 2_000 and figure.values["queries"] == 10
    assert figure.values["same_top5_as_numpy"] == 10  # exact scan
    assert figure.values["p50_ms"] > 0 and figure.values["numpy_p50_ms"] > 0
    assert "numpy exact scan" in figure.reference
