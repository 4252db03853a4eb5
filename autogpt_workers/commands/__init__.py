"""Typed commands the model can call, the registry that holds them, and the workspace they are confined to.

One file per concern: ``base`` (what a command is), ``workspace`` (path confinement), ``sandbox`` (confinement
for executed code; ``sandbox_init`` is its child side), the built-ins ``files``, ``execute``, ``web``, ``ask_user``,
``finish``, and ``registry`` (lookup and entry-point plugins).
"""

from autogpt_workers.commands.base import (
    SIDE_EFFECTS,
    Command,
    CommandContext,
    CommandResult,
    SideEffect,
    truncate_output,
)
from autogpt_workers.commands.registry import ENTRY_POINT_GROUP, CommandRegistry, builtin_commands, default_registry
from autogpt_workers.commands.sandbox import Sandbox, SandboxLimits, SandboxResult, SandboxUnavailable
from autogpt_workers.commands.workspace import Workspace

__all__ = [
    "ENTRY_POINT_GROUP",
    "SIDE_EFFECTS",
    "Command",
    "CommandContext",
    "CommandRegistry",
    "CommandResult",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "SideEffect",
    "Workspace",
    "builtin_commands",
    "default_registry",
    "truncate_output",
]
