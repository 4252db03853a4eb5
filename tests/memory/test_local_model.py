"""The offline model really embeds: 384 normalised dimensions, and meaning beats shared words."""

from __future__ import annotations

import math

import pytest

from autogpt_workers.memory.local_embeddings import DIMS, LocalEmbedder

pytestmark = pytest.mark.skipif(
    not LocalEmbedder.available(), reason="the local-embeddings extra is not installed (make venv installs it)"
)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def model() -> LocalEmbedder:
    return LocalEmbedder(num_threads=1)


def test_vectors_are_384_dims_normalised_and_deterministic(model: LocalEmbedder) -> None:
    first, again = model.embed(["the cat sat on the mat", "the cat sat on the mat"])
    assert len(first) == DIMS == model.dims
    assert math.isclose(math.sqrt(_cos(first, first)), 1.0, rel_tol=1e-4)
    assert first == pytest.approx(again, abs=1e-6)
    assert model.embed([]) == []


def test_paraphrases_are_closer_than_texts_that_share_words(model: LocalEmbedder) -> None:
    query, paraphrase, same_words = model.embed(
        [
            "How long is a password recovery link valid?",
            "Password reset emails expire after 15 minutes.",
            "The link to the recovery plan is valid for the board meeting.",
        ]
    )
    assert _cos(query, paraphrase) > _cos(query, same_words)
