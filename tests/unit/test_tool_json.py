"""The request body the LLM adapter builds itself is byte for byte what the OpenAI SDK would send, a tool schema's
cached text belongs to that very dict, and a frozen message's cached text and token estimate stay true."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from openai._utils._json import openapi_dumps

from autogpt_workers.agent import tool_json
from autogpt_workers.agent.frozen import FrozenGroup, FrozenMessage
from autogpt_workers.commands import default_registry
from autogpt_workers.llm.openai_chat import request_body
from autogpt_workers.memory.window import estimate_tokens, total_tokens


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


def test_frozen_messages_encode_as_the_sdk_would_and_refuse_changes() -> None:
    plain: list[dict[str, Any]] = [
        {"role": "system", "content": "Ünïcode 日本語 \"quoted\""},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "finish", "arguments": "{\"reason\": \"x\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x"},
    ]
    frozen: list[dict[str, Any]] = [plain[0], FrozenMessage(plain[1]), FrozenMessage(plain[2])]
    body = request_body("m", frozen, [], None)
    assert body == openapi_dumps({"model": "m", "messages": plain})
    assert request_body("m", frozen, [], None) == body  # from the cached texts
    assert estimate_tokens(frozen[1]) == estimate_tokens(plain[1])
    for change in (lambda m: m.__setitem__("content", "y"), lambda m: m.pop("content"), lambda m: m.update(a=1),
                   lambda m: m.clear(), lambda m: m.setdefault("a", 1), lambda m: m.__delitem__("role")):
        with pytest.raises(TypeError, match="cannot be changed"):
            change(frozen[2])
    assert frozen[2] == plain[2]
    for copied in (copy.copy(frozen[1]), copy.deepcopy(frozen[1]), pickle.loads(pickle.dumps(frozen[1]))):
        assert type(copied) is FrozenMessage and copied == plain[1]


def test_a_frozen_group_refuses_changes_and_keeps_its_tokens_total() -> None:
    plain = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x" * 40},
    ]
    group = FrozenGroup(plain)
    assert group == plain and all(type(m) is FrozenMessage for m in group)
    assert total_tokens(group) == sum(estimate_tokens(m) for m in plain)
    for change in (lambda g: g.append({}), lambda g: g.extend([{}]), lambda g: g.pop(), lambda g: g.clear(),
                   lambda g: g.__setitem__(0, {}), lambda g: g.__delitem__(0), lambda g: g.insert(0, {}),
                   lambda g: g.remove(g[0]), lambda g: g.sort(), lambda g: g.reverse(), lambda g: g.__iadd__([{}])):
        with pytest.raises(TypeError, match="cannot be changed"):
            change(group)
    assert group == plain
    for copied in (copy.copy(group), copy.deepcopy(group), pickle.loads(pickle.dumps(group))):
        assert type(copied) is FrozenGroup and copied == plain and all(type(m) is FrozenMessage for m in copied)
