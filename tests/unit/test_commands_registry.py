"""The registry: lookup, tool schemas, allow-lists, and entry-point plugins that may be broken."""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

from autogpt_workers.commands import Command, CommandContext, CommandResult, default_registry
from autogpt_workers.commands.registry import ENTRY_POINT_GROUP, CommandRegistry
from autogpt_workers.errors import UnknownCommand, UsageError


class EchoArgs(BaseModel):
    text: str = Field(description="What to echo.")
    title: str = Field(default="", description="A property that happens to be called 'title'.")


class Echo(Command[EchoArgs]):
    name = "echo"
    description = "Echo the text."
    Args = EchoArgs

    def run(self, args: EchoArgs, ctx: CommandContext) -> CommandResult:
        return CommandResult(output=args.text)


class FakeEntryPoint:
    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def test_builtins_are_registered() -> None:
    registry = default_registry(max_file_bytes=10, load_plugins=False)
    assert registry.names() == [
        "ask_user", "execute_python", "execute_shell", "finish", "list_files", "read_file", "web_fetch", "write_file"
    ]


def test_unknown_command_names_the_known_ones() -> None:
    registry = default_registry(max_file_bytes=10, load_plugins=False)
    with pytest.raises(UnknownCommand, match=r"unknown command 'nope'; known commands: ask_user, execute_python"):
        registry.get("nope")


def test_a_name_registers_once() -> None:
    registry = CommandRegistry([Echo()])
    with pytest.raises(UsageError, match="already registered"):
        registry.register(Echo())


def test_tool_schema_is_the_openai_shape_without_titles() -> None:
    schema = Echo().tool_schema()
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "echo" and function["description"] == "Echo the text."
    parameters = function["parameters"]
    assert parameters["type"] == "object" and parameters["required"] == ["text"]
    assert set(parameters["properties"]) == {"text", "title"}  # a property named title survives
    assert '"title": "' not in json.dumps(parameters).replace('"title": {', "")


def test_tool_schemas_follow_the_allow_list() -> None:
    registry = default_registry(max_file_bytes=10, load_plugins=False)
    assert [s["function"]["name"] for s in registry.tool_schemas(None)] == registry.names()
    names = [s["function"]["name"] for s in registry.tool_schemas(["read_file", "finish", "read_file"])]
    assert names == ["read_file", "finish"]
    with pytest.raises(UnknownCommand):
        registry.tool_schemas(["send_email"])


def test_plugins_load_and_broken_ones_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Shout(Echo):
        name = "shout"

    entry_points = [
        FakeEntryPoint("echo", Echo),  # a class
        FakeEntryPoint("shout", Shout()),  # an instance
        FakeEntryPoint("missing", ModuleNotFoundError("No module named 'not_installed'")),
        FakeEntryPoint("not-a-command", object),
        FakeEntryPoint("clash", type("WriteFileClash", (Echo,), {"name": "write_file"})),
    ]
    groups: list[str] = []

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        groups.append(group)
        return entry_points

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    registry = default_registry(max_file_bytes=10)

    assert groups == [ENTRY_POINT_GROUP]
    assert "echo" in registry and "shout" in registry
    assert not isinstance(registry.get("write_file"), Echo)  # plugins cannot shadow built-ins
    skipped = dict(registry.plugin_errors)
    assert set(skipped) == {"missing", "not-a-command", "clash"}
    assert skipped["missing"] == "ModuleNotFoundError: No module named 'not_installed'"
    assert "neither a Command subclass nor a Command instance" in skipped["not-a-command"]
    assert "already registered" in skipped["clash"]


def test_a_plugin_whose_constructor_fails_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    class NeedsConfig(Echo):
        name = "needs_config"

        def __init__(self) -> None:
            raise RuntimeError("API_TOKEN not set")

    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda *, group: [FakeEntryPoint("nc", NeedsConfig)]
    )
    registry = CommandRegistry()
    assert registry.load_plugins() == [("nc", "RuntimeError: API_TOKEN not set")]
    assert registry.names() == []


def test_a_pure_command_runs_inline_and_touches_nothing() -> None:
    """The think worker runs a pure command before its proposal is written: it must be one it may run itself, with
    no effect to repeat (``finish`` is one)."""
    commands = default_registry(10_000, load_plugins=False).select(None)
    pure = [c.name for c in commands if c.pure]
    assert "finish" in pure
    assert all(c.runs_inline and c.side_effect == "read_only" and c.idempotent for c in commands if c.pure)
