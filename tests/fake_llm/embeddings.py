"""``POST /v1/embeddings`` for the fake LLM server: deterministic vectors that keep word overlap.

A text's vector is a hashed bag of words (lower-cased ``[a-z0-9]+`` tokens, each adding +-1 to one of ``dims``
coordinates chosen by its SHA-256), L2-normalised: the same text always gives the same vector, and texts that
share words have a positive cosine, so a search by text finds what a real model would find on word overlap.
``dimensions`` in the request sets ``dims`` (default 64); the model name is echoed back.

Faults, for the client's error mapping: an input containing ``[[embed:503]]`` makes the request fail with 503,
``[[embed:400]]`` with 400. ``GET /_embeddings`` tells how many requests and inputs were served (batching is
observable); ``POST /_embeddings/reset`` zeroes the counters.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

DEFAULT_DIMS = 64
_WORD = re.compile(r"[a-z0-9]+")


def fake_vector(text: str, dims: int = DEFAULT_DIMS) -> list[float]:
    """The deterministic embedding of ``text`` (see the module docstring)."""
    vector = [0.0] * dims
    for word in _WORD.findall(text.lower()):
        digest = hashlib.sha256(word.encode("utf-8")).digest()
        index = int.from_bytes(digest[:4], "big") % dims
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]


def add_embedding_routes(app: FastAPI) -> None:
    counters = {"requests": 0, "inputs": 0}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else list(raw or [])
        if not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a string or a list of strings")
        for code in (503, 400):
            if any(f"[[embed:{code}]]" in t for t in texts):
                return _error(code, f"scripted embeddings fault {code}")
        dims = int(body.get("dimensions") or DEFAULT_DIMS)
        counters["requests"] += 1
        counters["inputs"] += len(texts)
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t, dims)} for i, t in enumerate(texts)]
        tokens = sum(len(_WORD.findall(t.lower())) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.get("/_embeddings")
    async def embedding_counters() -> dict[str, int]:
        return dict(counters)

    @app.post("/_embeddings/reset")
    async def reset_embedding_counters() -> dict[str, bool]:
        counters.update(requests=0, inputs=0)
        return {"ok": True}


def _error(status: int, message: str) -> Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)
