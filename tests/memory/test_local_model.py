"""The offline model really embeds: 384 normalised dimensions, and meaning beats shared words."""

from __future__ import annotations

import math

import pytest

from autogpt_workers.memory.local_embeddings import DIMS, LocalEmbedder
from tests.memory.conftest import LOCAL_MODEL_MISSING, require_local_model


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def model() -> LocalEmbedder:
    require_local_model()  # skips without the extra; fails instead under AUTOGPT_REQUIRE_TOOLS=1
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


def test_a_missing_model_fails_under_require_tools_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalEmbedder, "available", staticmethod(lambda: False))
    monkeypatch.setenv("AUTOGPT_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="AUTOGPT_REQUIRE_TOOLS=1 makes that a failure"):
        require_local_model()
    monkeypatch.delenv("AUTOGPT_REQUIRE_TOOLS")
    with pytest.raises(pytest.skip.Exception, match="local-embeddings extra"):
        require_local_model()
    assert "local-embeddings" in LOCAL_MODEL_MISSING
