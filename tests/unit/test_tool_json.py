"""The request body the LLM adapter builds itself is byte for byte what the OpenAI SDK would send, and a tool
schema's cached text belongs to that very dict."""

from __future__ import annotations

import json
from typing import Any

from openai._utils._json import openapi_dumps

from autogpt_workers.agent import tool_json
from autogpt_workers.commands import default_registry
from autogpt_workers.llm.openai_chat import request_body


def test_the_request_body_is_what_the_sdk_would_encode() -> None:
    tools = [c.tool_schema() for c in default_registry(10_000, load_plugins=False).select(None)]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are an agent. Ünïcode stays as it is: 日本語, and \"quotes\" escape."},
        {"role": "user", "content": "Goal: plan a picnic"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "write_file", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "wrote 3 bytes"},
    ]
    for with_tools, temperature in ((True, None), (False, 0.2)):
        request: dict[str, object] = {"model": "gpt-4o-mini", "messages": messages}
        if with_tools:
            request["tools"] = tools
        if temperature is not None:
            request["temperature"] = temperature
        body = request_body("gpt-4o-mini", messages, tools if with_tools else [], temperature)
        assert body == openapi_dumps(request)
        assert json.loads(body) == request


def test_a_schema_text_is_cached_for_that_dict_only() -> None:
    schema = {"type": "function", "function": {"name": "a", "description": "first", "parameters": {}}}
    text = tool_json.schema_json(schema)
    assert tool_json.schema_json(schema) is text  # the same dict: its cached text
    other = {"type": "function", "function": {"name": "b", "description": "second", "parameters": {}}}
    assert json.loads(tool_json.schema_json(other))["function"]["name"] == "b"
    assert tool_json.tools_json([schema, other]) == json.dumps([schema, other], separators=(",", ":"))
    del schema, text
    for _ in range(3):  # a new dict that may land at a freed id is encoded afresh, never given another's text
        fresh = {"type": "function", "function": {"name": "c", "description": "third", "parameters": {}}}
        assert json.loads(tool_json.schema_json(fresh))["function"]["name"] == "c"
