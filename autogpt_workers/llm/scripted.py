"""``ScriptedLLM``: a model that answers from a script, for unit tests and docs. Pure Python, no network.

Give it a list of replies (one per call, in order) or a function ``(messages, tools) -> LLMResponse``::

    llm = ScriptedLLM([
        tool_response("write_file", {"path": "a.txt", "content": "hi"}),
        tool_response("finish", {"reason": "done"}),
    ])
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

from autogpt_workers.agent.types import LLMResponse, Message, ToolCall, ToolSchema, Usage

ReplyFunction = Callable[[list[Message], list[ToolSchema]], LLMResponse]

_ids = itertools.count(1)


class ScriptedLLM:
    """Implements the ``LLM`` protocol from a script; records every call in ``calls``."""

    def __init__(self, script: Sequence[LLMResponse] | ReplyFunction) -> None:
        self._script = script
        self._lock = threading.Lock()
        self.calls: list[tuple[list[Message], list[ToolSchema]]] = []

    def complete(self, messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        with self._lock:
            turn = len(self.calls)
            self.calls.append((copy.deepcopy(messages), copy.deepcopy(tools)))
        if callable(self._script):
            return self._script(messages, tools)
        if turn >= len(self._script):
            raise RuntimeError(
                f"ScriptedLLM ran out of replies: call {turn + 1} but the script has {len(self._script)}"
            )
        return self._script[turn].model_copy(deep=True)


def tool_call(name: str, arguments: dict[str, Any] | str, call_id: str | None = None) -> ToolCall:
    """A tool call; ``arguments`` as a dict (encoded to JSON) or raw text (sent as is, even malformed)."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id=call_id or f"call_{next(_ids)}", name=name, arguments=raw)


def tool_response(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    content: str | None = None,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    model: str = "scripted-demo",
) -> LLMResponse:
    """A reply that calls one command."""
    return LLMResponse(
        content=content,
        tool_calls=[tool_call(name, arguments)],
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        model=model,
    )


def text_response(
    content: str, *, prompt_tokens: int = 100, completion_tokens: int = 20, model: str = "scripted-demo"
) -> LLMResponse:
    """A reply with text and no tool call (a model mistake the loop must handle)."""
    return LLMResponse(
        content=content,
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        model=model,
    )
