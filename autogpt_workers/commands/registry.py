"""The command registry: built-in commands plus third-party ones found through entry points.

A plugin is an entry point in the group ``autogpt_workers.commands`` that yields a ``Command`` subclass (built
with no arguments) or a ready ``Command`` instance::

    [project.entry-points."autogpt_workers.commands"]
    web_fetch = "my_package.commands:WebFetch"

A plugin that fails to load, is not a command, or reuses a taken name is skipped with a warning and recorded
in ``CommandRegistry.plugin_errors``; it never stops a worker. Plugins cannot shadow built-in commands.

A command the platform switched off (``disable``: code execution without a sandbox) is never offered: allow-lists
(a task's, a profile's) that name it simply do without it, and looking it up says why it is off.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Sequence
from typing import Any

import structlog
from pydantic import BaseModel

from autogpt_workers.commands.ask_user import AskUser
from autogpt_workers.commands.base import SIDE_EFFECTS, Command
from autogpt_workers.commands.execute import DEFAULT_SHELL_PROGRAMS, ExecutePython, ExecuteShell
from autogpt_workers.commands.files import ListFiles, ReadFile, WriteFile
from autogpt_workers.commands.finish import Finish
from autogpt_workers.commands.sandbox import Sandbox
from autogpt_workers.commands.web import WebFetch
from autogpt_workers.errors import UnknownCommand, UsageError

ENTRY_POINT_GROUP = "autogpt_workers.commands"
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

log = structlog.get_logger(__name__)


class CommandRegistry:
    """Commands by name."""

    def __init__(self, commands: Sequence[Command[Any]] = ()) -> None:
        self._commands: dict[str, Command[Any]] = {}
        self._disabled: dict[str, str] = {}  # name -> why the platform switched it off
        self.plugin_errors: list[tuple[str, str]] = []
        self.plugins_loaded: list[str] = []  # entry-point names registered
        for command in commands:
            self.register(command)

    def register(self, command: Command[Any]) -> None:
        """Add ``command``; a name can be registered once (raises ``UsageError`` otherwise)."""
        if not isinstance(command, Command):
            raise UsageError(f"{command!r} is not a Command instance")
        _check_declaration(command)
        if command.name in self._commands:
            raise UsageError(f"a command named {command.name!r} is already registered")
        if command.name in self._disabled:
            raise UsageError(f"the command name {command.name!r} is switched off on this platform")
        self._commands[command.name] = command

    def disable(self, name: str, reason: str) -> None:
        """Switch ``name`` off: it is dropped from every allow-list and never offered; ``get`` says ``reason``."""
        self._commands.pop(name, None)
        self._disabled[name] = reason

    def disabled(self) -> dict[str, str]:
        """The commands switched off, with why."""
        return dict(self._disabled)

    def get(self, name: str) -> Command[Any]:
        """The command called ``name``; raises ``UnknownCommand`` listing the known names."""
        if name in self._disabled:
            raise UnknownCommand(f"the command {name!r} is switched off on this platform: {self._disabled[name]}")
        try:
            return self._commands[name]
        except KeyError:
            raise UnknownCommand(
                f"unknown command {name!r}; known commands: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._commands)

    def select(self, allowed: Sequence[str] | None = None) -> list[Command[Any]]:
        """The commands a task may use: all of them (``None``), or the allow-list in its order, less the commands
        the platform switched off.

        An allowed name nobody registered raises ``UnknownCommand``: the task asks for something this worker
        cannot do, and that should fail loudly rather than silently shrink the model's toolbox.
        """
        if allowed is None:
            return [self._commands[name] for name in self.names()]
        return [self.get(name) for name in dict.fromkeys(allowed) if name not in self._disabled]

    def tool_schemas(self, allowed: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI ``tools`` entries for the commands a task may use (see ``select``)."""
        return [command.tool_schema() for command in self.select(allowed)]

    def load_plugins(self, group: str = ENTRY_POINT_GROUP) -> list[tuple[str, str]]:
        """Register the commands of entry-point ``group``; return the ``(name, error)`` pairs skipped."""
        skipped: list[tuple[str, str]] = []
        loaded: list[str] = []
        for entry_point in importlib.metadata.entry_points(group=group):
            try:
                command = _instantiate(entry_point.load())
                self.register(command)
            except Exception as exc:  # a broken plugin must never stop the worker
                error = f"{type(exc).__name__}: {exc}"
                log.warning("command plugin skipped", entry_point=entry_point.name, group=group, error=error)
                skipped.append((entry_point.name, error))
            else:
                log.info("command plugin loaded", entry_point=entry_point.name, command=command.name)
                loaded.append(entry_point.name)
        self.plugin_errors.extend(skipped)
        self.plugins_loaded.extend(loaded)
        return skipped


def _check_declaration(command: Command[Any]) -> None:
    """A command must say what it is: a tool name, typed arguments, its side-effect class and idempotency."""
    name = getattr(command, "name", None)
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise UsageError(f"{command!r}: name must match {TOOL_NAME.pattern} (an OpenAI tool name)")
    args = getattr(command, "Args", None)
    if not (isinstance(args, type) and issubclass(args, BaseModel)):
        raise UsageError(f"command {name!r}: Args must be a pydantic model class")
    if command.side_effect not in SIDE_EFFECTS:
        raise UsageError(f"command {name!r}: side_effect must be one of {', '.join(SIDE_EFFECTS)}")
    flags = (command.idempotent, command.awaits_human, command.runs_inline)
    if not all(isinstance(flag, bool) for flag in flags):
        raise UsageError(f"command {name!r}: idempotent, awaits_human and runs_inline must be True or False")
    if command.runs_inline and (not command.idempotent or command.side_effect == "external" or command.awaits_human):
        raise UsageError(f"command {name!r}: only an idempotent command without external effects runs inline")
    if not isinstance(getattr(command, "description", None), str) or not command.description.strip():
        raise UsageError(f"command {name!r}: a description is required (the model reads it)")


def _instantiate(obj: object) -> Command[Any]:
    if isinstance(obj, Command):
        return obj
    if isinstance(obj, type) and issubclass(obj, Command):
        return obj()
    raise UsageError(f"{obj!r} is neither a Command subclass nor a Command instance")


def builtin_commands(
    max_file_bytes: int,
    *,
    sandbox: Sandbox | None = None,
    python: str = "python3",
    shell_programs: Sequence[str] | None = None,
    web_allowed_domains: Sequence[str] = (),
    web_max_bytes: int = 1_000_000,
    web_timeout_s: float = 10.0,
) -> list[Command[Any]]:
    """The commands every worker has (the same set on every worker: think and act must agree)."""
    sandbox = sandbox or Sandbox()
    return [
        WriteFile(max_bytes=max_file_bytes),
        ReadFile(),
        ListFiles(),
        ExecutePython(sandbox, python=python),
        ExecuteShell(sandbox, programs=shell_programs or DEFAULT_SHELL_PROGRAMS),
        WebFetch(web_allowed_domains, max_bytes=web_max_bytes, timeout_s=web_timeout_s),
        AskUser(),
        Finish(),
    ]


def default_registry(max_file_bytes: int, *, load_plugins: bool = True, **options: Any) -> CommandRegistry:
    """Built-ins (``options`` go to ``builtin_commands``), then the installed plugins (failures recorded in
    ``plugin_errors``, never raised)."""
    registry = CommandRegistry(builtin_commands(max_file_bytes, **options))
    if load_plugins:
        registry.load_plugins()
    return registry
