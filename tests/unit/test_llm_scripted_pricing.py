"""``ScriptedLLM`` (the test double) and pricing."""

from __future__ import annotations

import pytest

from autogpt_workers.agent.types import LLMResponse, Message, ToolSchema, Usage
from autogpt_workers.llm.pricing import cost_usd, price_lookup
from autogpt_workers.llm.scripted import ScriptedLLM, text_response, tool_call, tool_response


def test_script_answers_in_order_and_records_calls() -> None:
    llm = ScriptedLLM([text_response("one"), tool_response("finish", {"reason": "two"})])
    messages: list[Message] = [{"role": "user", "content": "hi"}]
    assert llm.complete(messages, []).content == "one"
    messages.append({"role": "assistant", "content": "one"})  # later mutation does not change the record
    second = llm.complete(messages, [])
    assert second.tool_calls[0].name == "finish" and second.tool_calls[0].arguments == '{"reason": "two"}'
    assert [len(m) for m, _ in llm.calls] == [1, 2]
    with pytest.raises(RuntimeError, match="ran out of replies"):
        llm.complete(messages, [])


def test_script_can_be_a_function() -> None:
    def reply(messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        return text_response(f"{len(messages)} messages, {len(tools)} tools")

    assert (
        ScriptedLLM(reply).complete([{"role": "user", "content": "x"}], []).content == "1 messages, 0 tools"
    )


def test_raw_arguments_are_kept() -> None:
    assert tool_call("write_file", '{"path": ', call_id="c9").arguments == '{"path": '


def test_cost() -> None:
    usage = Usage(prompt_tokens=2000, completion_tokens=500)
    assert cost_usd(usage, (0.001, 0.002)) == pytest.approx(0.003)
    assert cost_usd(Usage(), (1.0, 1.0)) == 0.0


def test_price_lookup_prefers_exact_then_longest_prefix() -> None:
    prices = price_lookup({"gpt-4o": (1.0, 2.0), "gpt-4o-mini": (0.1, 0.2)}, (9.0, 9.0))
    assert prices("gpt-4o") == (1.0, 2.0)
    assert prices("gpt-4o-mini-2024-07-18") == (0.1, 0.2)
    assert prices("gpt-4o-2024-08-06") == (1.0, 2.0)
    assert prices("llama3") == (9.0, 9.0)
    assert prices("gpt-4omni") == (9.0, 9.0)
