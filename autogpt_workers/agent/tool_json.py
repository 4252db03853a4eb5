"""The JSON text of tool schemas, encoded once per schema.

A command builds its ``tools`` entry once and hands out the same dict for the life of the process
(``Command.tool_schema``; the dict is read-only), and every think phase sends the allowed commands' schemas to
the LLM and measures them against the context window. So their text is kept by the dict's identity: an entry
holds the dict itself, so its ``id`` cannot be reused by another object while the entry lives.
"""

from __future__ import annotations

import json

from autogpt_workers.agent.types import ToolSchema

MAX_ENTRIES = 4096  # far above the commands a process has; a process that makes schemas per call just re-encodes

_texts: dict[int, tuple[ToolSchema, str]] = {}


def dumps(value: object) -> str:
    """Compact JSON as the OpenAI SDK sends it (no spaces, UTF-8 kept, NaN refused)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def schema_json(schema: ToolSchema) -> str:
    """``dumps(schema)``, from the cache when this very dict was encoded before."""
    hit = _texts.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    text = dumps(schema)
    if len(_texts) >= MAX_ENTRIES:
        _texts.clear()
    _texts[id(schema)] = (schema, text)
    return text


def tools_json(tools: list[ToolSchema]) -> str:
    """``dumps(tools)``, each schema from the cache."""
    return "[" + ",".join(schema_json(t) for t in tools) + "]"
