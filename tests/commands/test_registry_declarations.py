"""Every command declares what it is (side-effect class, idempotency); a plugin that does not is skipped."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest
from pydantic import BaseModel

from autogpt_workers.commands import SIDE_EFFECTS, Command, CommandResult, default_registry
from autogpt_workers.commands.registry import CommandRegistry
from autogpt_workers.errors import UsageError

EXPECTED = {  # name: (side effect, idempotent, awaits a human)
    "read_file": ("read_only", True, False),
    "list_files": ("read_only", True, False),
    "write_file": ("workspace", True, False),  # the same content again: same result
    "execute_python": ("workspace", False, False),  # no network in the sandbox, but may append twice
    "execute_shell": ("workspace", False, False),
    "web_fetch": ("external", True, False),  # a GET reaches outside but changes nothing there
    "ask_user": ("read_only", True, True),
    "finish": ("read_only", True, False),
}


def test_every_builtin_declares_the_right_side_effect_and_idempotency() -> None:
    registry = default_registry(max_file_bytes=10, load_plugins=False)
    declared = {c.name: (c.side_effect, c.idempotent, c.awaits_human) for c in registry.select()}
    assert declared == EXPECTED
    assert all(side_effect in SIDE_EFFECTS for side_effect, _, _ in declared.values())


class _Args(BaseModel):
    pass


def _command(**attrs: Any) -> Command[Any]:
    body: dict[str, Any] = {"name": "plug", "description": "A plugin.", "Args": _Args,
                            "run": lambda self, args, ctx: CommandResult(output="")}
    body.update(attrs)
    return type("Plug", (Command,), body)()


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"side_effect": "network"}, "side_effect must be one of read_only, workspace, external"),
        ({"idempotent": "yes"}, "idempotent, awaits_human and runs_inline must be True or False"),
        ({"runs_inline": 1}, "idempotent, awaits_human and runs_inline must be True or False"),
        ({"runs_inline": True, "side_effect": "external"}, "only an idempotent command without external effects"),
        ({"runs_inline": True, "idempotent": False}, "only an idempotent command without external effects"),
        ({"name": "has space"}, "name must match"),
        ({"Args": dict}, "Args must be a pydantic model class"),
        ({"description": " "}, "a description is required"),
    ],
)
def test_a_command_that_misdeclares_itself_is_refused(attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        CommandRegistry([_command(**attrs)])


def test_a_misdeclared_plugin_is_skipped_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    class EntryPoint:
        name = "bad-side-effect"

        def load(self) -> Command[Any]:
            return _command(side_effect="anything")

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda *, group: [EntryPoint()])
    registry = default_registry(max_file_bytes=10)
    assert "plug" not in registry
    assert registry.plugin_errors == [
        ("bad-side-effect", "UsageError: command 'plug': side_effect must be one of read_only, workspace, external")
    ]


