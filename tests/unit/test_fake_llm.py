"""Tests of the fake LLM server (tests/fake_llm): in-process via TestClient, and one real subprocess
driven by the real ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
from fastapi.testclient import TestClient

from tests.fake_llm import FakeLLMControl, FakeLLMServer, create_app, start_fake_llm

SYSTEM = {"role": "system", "content": "You are an agent. Use the tools."}


def goal_messages(goal: str, task_id: str | None, turns_done: int = 0) -> list[Any]:
    """A conversation after ``turns_done`` assistant turns (each a tool call plus its tool result)."""
    first = f"{goal}\nTask id: {task_id}" if task_id is not None else goal
    messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": first}]
    for i in range(turns_done):
        call = {"id": f"call_{i}", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": "done"})
    return messages


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def chat(client: TestClient, messages: list[Any], model: str = "scripted-demo") -> httpx2.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": messages})


def tool_call(response: httpx2.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    return call["function"]["name"], call["function"]["arguments"]


# --- in-process -------------------------------------------------------------------------------------------


def test_health_and_models(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"ok": True}
    chat(client, goal_messages("hello", "t-models"), model="gpt-test")
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["scripted-demo", "gpt-test"]


def test_completion_shape_and_usage_estimate(client: TestClient) -> None:
    messages = goal_messages("Write a haiku about queues", "t-shape")
    body = chat(client, messages, model="m1").json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "m1"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    chars = sum(len(m["content"]) for m in messages)
    usage = body["usage"]
    assert usage["prompt_tokens"] == chars // 4
    completion_chars = len(choice["message"]["content"]) + len(call["function"]["arguments"])
    assert usage["completion_tokens"] == completion_chars // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_demo_script_sequence(client: TestClient) -> None:
    goal = "Research three ways to speed up Celery workers, compare them and recommend one."
    answers = [chat(client, goal_messages(goal, "t-demo", turn)).json() for turn in range(5)]
    calls = [a["choices"][0]["message"]["tool_calls"][0]["function"] for a in answers]
    args = [json.loads(c["arguments"]) for c in calls]
    assert [c["name"] for c in calls] == ["write_file", "write_file", "list_files", "read_file", "finish"]
    assert args[0]["path"] == "plan.md" and args[1]["path"] == "notes.md"
    assert args[2] == {"path": "."} and args[3] == {"path": "plan.md"}
    plan = args[0]["content"]
    assert "1. " in plan and "3. " in plan and "Celery workers" in plan
    assert "Task id" not in plan
    assert "plan.md" in args[4]["reason"]
    assert all(a["choices"][0]["message"]["content"] for a in answers)  # a "thought" each turn


def test_demo_plan_uses_the_goal_line_of_the_project_prompt(client: TestClient) -> None:
    first = (
        "Task id: 42\nGoal: Summarise the README and list open questions.\n\nCommands you can use:\n- finish"
    )
    _, arguments = tool_call(chat(client, [SYSTEM, {"role": "user", "content": first}]))
    plan = json.loads(arguments)["content"]
    assert "2. Summarise the README\n3. List open questions\n" in plan
    assert "Commands" not in plan
    assert client.get("/_log").json()["entries"][0]["conversation"] == "42"


def test_turn_is_number_of_assistant_messages(client: TestClient) -> None:
    client.post("/_scripts/count", json={"turns": [{"content": f"turn {i}"} for i in range(4)]})
    messages = goal_messages("[[script:count]]", "t-count", turns_done=2)
    messages += [{"role": "user", "content": "extra user message"}, {"role": "tool", "content": "x"}]
    body = chat(client, messages).json()
    assert body["choices"][0]["message"]["content"] == "turn 2"
    assert client.get("/_log").json()["entries"][-1]["turn"] == 2


def test_steps_marker(client: TestClient) -> None:
    results = [tool_call(chat(client, goal_messages("load [[steps:3]]", "L-7", t))) for t in range(4)]
    assert results[0] == ("write_file", json.dumps({"path": "step_0.txt", "content": "step 0 of task L-7"}))
    assert json.loads(results[1][1])["path"] == "step_1.txt"
    assert results[2][0] == "finish" and results[3][0] == "finish"


def test_registered_script_turns(client: TestClient) -> None:
    turns = [
        {"tool": "write_file", "arguments": {"path": "a.txt", "content": "A"}, "content": "writing"},
        {"tool": "write_file", "raw_arguments": '{"path": "b.txt", "content": '},
        {"content": "just text", "usage": {"prompt_tokens": 1000, "completion_tokens": 7}},
    ]
    assert client.post("/_scripts/s1", json={"turns": turns}).status_code == 200
    goal = "Do things [[script:s1]]"
    first = chat(client, goal_messages(goal, "t-s1", 0)).json()["choices"][0]
    assert first["message"]["content"] == "writing"
    assert tool_call(chat(client, goal_messages(goal, "t-s1", 0)))[1] == '{"path": "a.txt", "content": "A"}'
    assert tool_call(chat(client, goal_messages(goal, "t-s1", 1)))[1] == '{"path": "b.txt", "content": '
    third = chat(client, goal_messages(goal, "t-s1", 2)).json()
    assert third["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in third["choices"][0]["message"]
    assert third["usage"] == {"prompt_tokens": 1000, "completion_tokens": 7, "total_tokens": 1007}
    name, arguments = tool_call(chat(client, goal_messages(goal, "t-s1", 3)))
    assert (name, json.loads(arguments)) == ("finish", {"reason": "script ended"})
    assert client.get("/_scripts").json() == {"scripts": ["s1"]}


def test_unknown_script_finishes_with_a_reason(client: TestClient) -> None:
    name, arguments = tool_call(chat(client, goal_messages("[[script:nope]]", "t-unknown")))
    assert name == "finish" and "unknown script 'nope'" in json.loads(arguments)["reason"]


def test_scripted_faults_per_turn_and_conversation(client: TestClient) -> None:
    faults = ["429", "500", "503", "garbage", "disconnect"]
    turn = {"tool": "finish", "arguments": {"reason": "ok"}, "faults": faults, "retry_after": 2.5}
    client.post("/_scripts/flaky", json={"turns": [turn]})
    goal = "[[script:flaky]]"
    rate_limited = chat(client, goal_messages(goal, "c1"))
    assert rate_limited.status_code == 429
    assert rate_limited.headers["retry-after"] == "2.5"
    assert rate_limited.json()["error"]["type"] == "rate_limit_exceeded"
    assert rate_limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert chat(client, goal_messages(goal, "c2")).status_code == 429  # own counter per conversation
    assert chat(client, goal_messages(goal, "c1")).status_code == 500
    assert "error" in chat(client, goal_messages(goal, "c1")).json()  # 503
    garbage = chat(client, goal_messages(goal, "c1"))
    assert garbage.status_code == 200
    with pytest.raises(ValueError):
        garbage.json()
    assert chat(client, goal_messages(goal, "c1")).status_code == 502  # disconnect, in-process
    assert tool_call(chat(client, goal_messages(goal, "c1")))[0] == "finish"
    outcomes = [e["outcome"] for e in client.get("/_log", params={"conversation": "c1"}).json()["entries"]]
    assert outcomes == ["429", "500", "503", "garbage", "disconnect", "ok"]


def test_timeout_fault_sleeps_then_answers(client: TestClient) -> None:
    client.post(
        "/_scripts/slow", json={"turns": [{"content": "late", "faults": ["timeout"], "timeout_s": 0.2}]}
    )
    started = time.monotonic()
    body = chat(client, goal_messages("[[script:slow]]", "t-slow")).json()
    assert time.monotonic() - started >= 0.2
    assert body["choices"][0]["message"]["content"] == "late"
    entry = client.get("/_log").json()["entries"][0]
    assert entry["outcome"] == "timeout" and entry["done_ts"] - entry["ts"] >= 0.2


def test_latency_and_config(client: TestClient) -> None:
    assert client.get("/_config").json()["timeout_s"] == 30
    config = client.post("/_config", json={"latency_s": 0.15, "latency_jitter_s": 0.05}).json()
    assert config["latency_s"] == 0.15 and config["fault_rate"] == 0
    started = time.monotonic()
    chat(client, goal_messages("g", "t-latency"))
    assert time.monotonic() - started >= 0.15
    assert client.post("/_config", json={"fault_rate": 2}).status_code == 422
    assert client.post("/_config", json={"fault_kinds": ["418"]}).status_code == 422


def test_random_faults_are_seeded(client: TestClient) -> None:
    def run() -> list[str]:
        client.post("/_reset")
        client.post("/_config", json={"fault_rate": 0.5, "fault_kinds": ["429", "500"], "seed": 42})
        for i in range(30):
            chat(client, goal_messages("[[steps:2]]", f"r{i}"))
        return [e["outcome"] for e in client.get("/_log").json()["entries"]]

    first = run()
    assert first == run()
    assert {"ok", "429", "500"} == set(first)
    client.post("/_config", json={"fault_rate": 1.0, "fault_kinds": ["503"]})
    assert chat(client, goal_messages("g", "all-faulty")).status_code == 503


def test_log_summary_and_reset(client: TestClient) -> None:
    client.post("/_scripts/s", json={"turns": [{"tool": "finish", "arguments": {}, "faults": ["500"]}]})
    chat(client, goal_messages("[[script:s]]", "a"))
    chat(client, goal_messages("[[script:s]]", "a"))
    chat(client, goal_messages("no marker", "b", 1))
    entries = client.get("/_log").json()["entries"]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["tool"] is None and entries[1]["tool"] == "finish"
    assert all(e["done_ts"] >= e["ts"] for e in entries)
    assert entries[2] | {"ts": 0, "done_ts": 0} == {
        "seq": 3,
        "ts": 0,
        "done_ts": 0,
        "conversation": "b",
        "turn": 1,
        "outcome": "ok",
        "tool": "write_file",
        "model": "scripted-demo",
    }
    assert client.get("/_log/summary").json() == {"a": {"0": {"500": 1, "ok": 1}}, "b": {"1": {"ok": 1}}}
    assert len(client.get("/_log", params={"conversation": "a"}).json()["entries"]) == 2

    client.post("/_config", json={"latency_s": 1})
    assert client.post("/_reset").json() == {"ok": True}
    assert client.get("/_log").json() == {"entries": []}
    assert client.get("/_scripts").json() == {"scripts": []}
    assert client.get("/_config").json()["latency_s"] == 0
    assert chat(client, goal_messages("[[script:s]]", "a")).status_code == 200  # script and counters gone


def test_conversation_without_task_id_is_a_stable_hash(client: TestClient) -> None:
    chat(client, goal_messages("no id here", None))
    chat(client, goal_messages("no id here", None, 1))
    conversations = {e["conversation"] for e in client.get("/_log").json()["entries"]}
    assert len(conversations) == 1 and conversations.pop().startswith("h-")


def test_bad_requests(client: TestClient) -> None:
    assert client.post("/v1/chat/completions", content=b"nope").status_code == 400
    assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 400
    assert client.post("/_scripts/x", json={"turns": [{"faults": ["404"]}]}).status_code == 422


def test_many_concurrent_slow_requests_do_not_block() -> None:
    app = create_app()

    async def run() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as http:
            await http.post("/_config", json={"latency_s": 0.5})
            started = time.monotonic()
            responses = await asyncio.gather(
                *(
                    http.post(
                        "/v1/chat/completions",
                        json={"model": "m", "messages": goal_messages("[[steps:2]]", f"k{i}")},
                    )
                    for i in range(500)
                )
            )
            assert {r.status_code for r in responses} == {200}
            return time.monotonic() - started

    assert asyncio.run(run()) < 4.0


# --- real subprocess + real openai client ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    running = start_fake_llm()
    process, base_url = running  # unpacks as (process, base_url)
    assert httpx.get(f"{base_url}/healthz").json() == {"ok": True}
    with running:  # stops it on exit
        yield running
    assert process.poll() is not None


@pytest.fixture
def control(server: FakeLLMServer) -> Iterator[FakeLLMControl]:
    with FakeLLMControl(server.base_url) as ctl:
        ctl.reset()
        yield ctl


def make_openai(server: FakeLLMServer, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=timeout)


def test_openai_tool_call_round_trip(server: FakeLLMServer, control: FakeLLMControl) -> None:
    control.register_script("rt", [{"tool": "write_file", "arguments": {"path": "x.txt", "content": "hi"}}])
    llm = make_openai(server)
    tools: Any = [
        {
            "type": "function",
            "function": {"name": "write_file", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    resp = llm.chat.completions.create(
        model="gpt-fake", messages=goal_messages("[[script:rt]]", "o-1"), tools=tools, tool_choice="auto"
    )
    calls = resp.choices[0].message.tool_calls
    assert calls is not None
    function = calls[0].function  # type: ignore[union-attr]
    assert function.name == "write_file" and json.loads(function.arguments) == {
        "path": "x.txt",
        "content": "hi",
    }
    assert (
        resp.choices[0].finish_reason == "tool_calls"
        and resp.usage is not None
        and resp.usage.total_tokens > 0
    )
    # the demo script through the real client, continuing the conversation
    names = []
    for turn in range(5):
        demo = llm.chat.completions.create(
            model="gpt-fake", messages=goal_messages("Plan a trip", "o-2", turn)
        )
        demo_calls = demo.choices[0].message.tool_calls
        assert demo_calls is not None
        names.append(demo_calls[0].function.name)  # type: ignore[union-attr]
    assert names == ["write_file", "write_file", "list_files", "read_file", "finish"]
    assert [m.id for m in llm.models.list()] == ["scripted-demo", "gpt-fake"]


def test_openai_fault_exceptions(server: FakeLLMServer, control: FakeLLMControl) -> None:
    faults = ["429", "500", "garbage", "disconnect"]
    control.register_script("faults", [{"content": "finally", "faults": faults}])
    llm = make_openai(server)
    messages = goal_messages("[[script:faults]]", "o-faults")
    with pytest.raises(openai.RateLimitError) as rate_limited:
        llm.chat.completions.create(model="m", messages=messages)
    assert rate_limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError):
        llm.chat.completions.create(model="m", messages=messages)
    # openai 3.x's default (non-strict) client does not wrap a JSON body that fails to parse:
    # it raises json.JSONDecodeError, which is a ValueError and not an openai.APIError.
    with pytest.raises(json.JSONDecodeError) as garbage:
        llm.chat.completions.create(model="m", messages=messages)
    assert not isinstance(garbage.value, openai.APIError)
    with pytest.raises(openai.APIConnectionError) as disconnected:
        llm.chat.completions.create(model="m", messages=messages)
    assert not isinstance(disconnected.value, openai.APITimeoutError)
    resp = llm.chat.completions.create(model="m", messages=messages)
    assert resp.choices[0].message.content == "finally" and resp.choices[0].message.tool_calls is None
    assert control.summary() == {
        "o-faults": {"0": {"429": 1, "500": 1, "garbage": 1, "disconnect": 1, "ok": 1}}
    }


def test_openai_timeout_ends_server_sleep_early(server: FakeLLMServer, control: FakeLLMControl) -> None:
    control.register_script("hang", [{"content": "too late", "faults": ["timeout"]}])  # sleeps 30 s
    llm = make_openai(server, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        llm.chat.completions.create(model="m", messages=goal_messages("[[script:hang]]", "o-hang"))
    deadline = time.monotonic() + 3
    while (entry := control.log("o-hang")[0])["done_ts"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entry["outcome"] == "timeout" and entry["done_ts"] is not None
    assert entry["done_ts"] - entry["ts"] < 3


def test_control_client_round_trip(server: FakeLLMServer, control: FakeLLMControl) -> None:
    assert control.health()
    assert control.set_config(latency_s=0.01, seed=3)["seed"] == 3
    assert control.config()["latency_s"] == 0.01
    resp = make_openai(server).chat.completions.create(
        model="m",
        messages=goal_messages("bulk [[steps:2]]", "o-steps"),
    )
    assert resp.choices[0].message.tool_calls is not None
    assert [e["tool"] for e in control.log("o-steps")] == ["write_file"]
    control.reset()
    assert control.log() == [] and control.config()["latency_s"] == 0
