"""Typed commands the model can call, the registry that holds them, and the workspace they are confined to.

One file per concern: ``base`` (what a command is), ``workspace`` (path confinement), ``files``, ``finish``
(the built-ins) and ``registry`` (lookup and entry-point plugins).
"""

from autogpt_workers.commands.base import Command, CommandContext, CommandResult, SideEffect, truncate_output
from autogpt_workers.commands.registry import ENTRY_POINT_GROUP, CommandRegistry, default_registry
from autogpt_workers.commands.workspace import Workspace

__all__ = [
    "ENTRY_POINT_GROUP",
    "Command",
    "CommandContext",
    "CommandRegistry",
    "CommandResult",
    "SideEffect",
    "Workspace",
    "default_registry",
    "truncate_output",
]
