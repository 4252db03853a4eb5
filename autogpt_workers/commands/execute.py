"""Code execution in the sandbox: ``execute_python`` (a script) and ``execute_shell`` (one allow-listed program).

Both run in ``sandbox.Sandbox``: the task workspace is the working directory and the only writable place that
outlives the run, there is no network, and CPU, memory, file size, processes and wall time are limited. A program
that fails or hits a limit raises ``CommandError`` with its exit status, the limit it hit and its output, so the
step records a clear error and the model can react; the worker itself is never at risk.

``execute_shell`` takes one command line, split like a shell would (``shlex``) but never given to a shell: no
pipes, redirections, globbing or variables. Its program must be on the allow-list. The allow-list scopes what the
model is offered, it is not the security boundary (``find -exec`` or ``awk``'s ``system()`` can start other
programs): the sandbox is.

Side effects: both change the workspace only (the sandbox has no network), and neither is idempotent (a script
may append to a file, a re-run after a crash appends twice).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from autogpt_workers.commands.base import Command, CommandContext, CommandResult
from autogpt_workers.commands.sandbox import Sandbox, SandboxResult
from autogpt_workers.errors import CommandError

DEFAULT_SHELL_PROGRAMS = (
    "ls", "cat", "head", "tail", "wc", "grep", "sort", "uniq", "cut", "tr", "sed", "awk", "find", "diff", "echo",
    "printf", "date", "pwd", "mkdir", "cp", "mv", "rm", "touch", "tar", "gzip", "gunzip", "sha256sum", "md5sum",
)
SHELL_PUNCTUATION = frozenset("();<>|&")
NETWORK_ERRORS = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known")
MAX_CODE_CHARS = 200_000
CODE_EXECUTION = ("execute_python", "execute_shell")  # the commands that need the sandbox


class ExecutePythonArgs(BaseModel):
    code: str = Field(
        min_length=1,
        max_length=MAX_CODE_CHARS,
        description="A complete Python 3 program. It runs with the workspace as the working directory; "
        "print what you want to see.",
    )


class ExecuteShellArgs(BaseModel):
    command: str = Field(
        min_length=1,
        max_length=10_000,
        description="One program and its arguments, e.g. \"grep -n TODO notes.md\". Split like a shell "
        "would, but no pipes, redirections, globs or variables.",
    )


class ExecutePython(Command[ExecutePythonArgs]):
    """Run a Python script in the sandbox."""

    name = "execute_python"
    description = (
        "Run a Python 3 program in a sandbox whose working directory is the workspace. It has no network "
        "access and limited CPU time, memory and wall time. Returns what it printed."
    )
    Args = ExecutePythonArgs
    side_effect = "workspace"
    idempotent = False

    def __init__(self, sandbox: Sandbox, python: str = "python3") -> None:
        self.sandbox = sandbox
        self.python = python

    def run(self, args: ExecutePythonArgs, ctx: CommandContext) -> CommandResult:
        return _run_sandboxed(self.sandbox, [self.python, "/tmp/main.py"], ctx, {"main.py": args.code})


class ExecuteShell(Command[ExecuteShellArgs]):
    """Run one allow-listed program in the sandbox."""

    name = "execute_shell"
    description = "Run one program in a sandbox whose working directory is the workspace (no network)."
    Args = ExecuteShellArgs
    side_effect = "workspace"
    idempotent = False

    def __init__(self, sandbox: Sandbox, programs: Sequence[str] = DEFAULT_SHELL_PROGRAMS) -> None:
        self.sandbox = sandbox
        self.programs = tuple(dict.fromkeys(programs))
        self.description = (  # type: ignore[misc]  # the model should see what it may run
            f"{ExecuteShell.description} Allowed programs: {', '.join(self.programs)}. No pipes or redirections."
        )

    def run(self, args: ExecuteShellArgs, ctx: CommandContext) -> CommandResult:
        return _run_sandboxed(self.sandbox, self.parse(args.command), ctx, {})

    def parse(self, command: str) -> list[str]:
        """The argv for ``command``; raises ``CommandError`` for what this command does not do."""
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            argv = list(lexer)
        except ValueError as exc:
            raise CommandError(f"cannot parse the command line: {exc}") from exc
        if not argv:
            raise CommandError("the command line is empty")
        operators = [token for token in argv if _is_operator(token)]
        if operators:
            raise CommandError(
                f"shell operators are not supported ({' '.join(operators)}): run one program per call, and use "
                "execute_python or write_file to combine steps or save output"
            )
        program = argv[0]
        if "/" in program or program not in self.programs:
            raise CommandError(f"program {program!r} is not allowed; allowed: {', '.join(self.programs)}")
        return argv


def _is_operator(token: str) -> bool:
    """A token a shell would treat as syntax: pipes, lists, redirections, subshells, command substitution."""
    return set(token) <= SHELL_PUNCTUATION or token.startswith("`") or token == "$"


def _run_sandboxed(sandbox: Sandbox, argv: list[str], ctx: CommandContext, files: dict[str, str]) -> CommandResult:
    root = ctx.workspace.create()
    before = _snapshot(root)
    result = sandbox.run(argv, root, files, ctx.should_stop)
    written = sorted(path for path, stamp in _snapshot(root).items() if before.get(path) != stamp)
    report = _report(result, ctx.max_output_chars)
    if not result.ok:
        raise CommandError(report)
    return CommandResult(output=report, files_written=written)


def _report(result: SandboxResult, max_chars: int) -> str:
    """How the run ended, then its output cut to fit (head and tail kept: errors are at the end)."""
    if result.ok:
        header = f"[{result.summary()}, {result.duration_s:.1f} s]"
    else:
        header = f"the program failed: {result.summary()} [limits: {result.limits.describe()}]"
        if any(marker in result.output for marker in NETWORK_ERRORS):
            header += "\n[note: executed code has no network access; use web_fetch for allow-listed URLs]"
    output = result.output if result.output.strip() else "(no output)"
    return header + "\n" + fit(output, max(200, max_chars - len(header) - 1))


def fit(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars``, keeping the first three quarters and the last quarter of the room."""
    if len(text) <= max_chars:
        return text
    note = f"\n[... {len(text)} characters in all; the middle is omitted ...]\n"
    room = max(0, max_chars - len(note))
    head = room * 3 // 4
    return text[:head] + note + text[len(text) - (room - head):]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Regular files under ``root`` (symlinks are not followed) -> (size, mtime_ns)."""
    files: dict[str, tuple[int, int]] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if os.path.isfile(path) and not os.path.islink(path):
                files[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return files
