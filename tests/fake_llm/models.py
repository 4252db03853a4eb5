"""Pydantic models of the fake LLM's control API: script turns, scripts and global config.

See ``tests/fake_llm/server.py`` for the full description of the HTTP API.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["429", "500", "503", "timeout", "garbage", "disconnect"]
Outcome = Literal["ok", "429", "500", "503", "timeout", "garbage", "disconnect"]

DEFAULT_FAULT_KINDS: list[FaultKind] = ["429", "500", "timeout", "garbage"]


class Usage(BaseModel):
    """Token usage override for one turn; a missing field falls back to the estimate."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)


class Turn(BaseModel):
    """What the fake LLM answers for one turn (= number of assistant messages already sent).

    - ``tool`` + ``arguments``: one tool call whose arguments are ``json.dumps(arguments)``.
    - ``tool`` + ``raw_arguments``: one tool call whose arguments string is exactly this (malformed JSON).
    - ``content``: assistant text (alone it is a plain text answer, ``finish_reason == "stop"``).
    - ``faults``: served one per request for the first ``len(faults)`` requests of this turn of this
      conversation, before the real answer.
    - ``retry_after`` (429 Retry-After, default 1), ``timeout_s`` (how long a "timeout" fault sleeps,
      default: global config, 30), ``latency_s`` (extra sleep before answering), ``usage`` override.
    """

    model_config = ConfigDict(extra="forbid")

    tool: str | None = None
    arguments: dict[str, Any] | None = None
    raw_arguments: str | None = None
    content: str | None = None
    faults: list[FaultKind] = Field(default_factory=list)
    retry_after: float | None = Field(default=None, ge=0)
    timeout_s: float | None = Field(default=None, ge=0)
    latency_s: float = Field(default=0.0, ge=0)
    usage: Usage | None = None


class Script(BaseModel):
    """Body of ``POST /_scripts/NAME``: turn ``i`` answers turn number ``i``."""

    model_config = ConfigDict(extra="forbid")

    turns: list[Turn]


class Config(BaseModel):
    """Global configuration (``POST /_config`` merges the fields given, ``/_reset`` restores defaults)."""

    model_config = ConfigDict(extra="forbid")

    latency_s: float = Field(default=0.0, ge=0)
    latency_jitter_s: float = Field(default=0.0, ge=0)
    fault_rate: float = Field(default=0.0, ge=0, le=1)
    fault_kinds: list[FaultKind] = Field(default_factory=lambda: list(DEFAULT_FAULT_KINDS), min_length=1)
    seed: int = 0
    timeout_s: float = Field(default=30.0, ge=0)
