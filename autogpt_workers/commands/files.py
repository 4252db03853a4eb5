"""File commands confined to the task's workspace: ``write_file``, ``read_file``, ``list_files``.

Every path goes through ``Workspace.resolve``; what the model gets wrong (a missing file, a directory where a
file was expected, too much content) comes back as ``CommandError`` so the model hears about it.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import structlog
from pydantic import BaseModel, Field

from autogpt_workers.commands.base import Command, CommandContext, CommandResult
from autogpt_workers.errors import CommandError
from autogpt_workers.green import offload, patched

log = structlog.get_logger(__name__)

DEFAULT_MAX_LIST_ENTRIES = 500


class WriteFileArgs(BaseModel):
    path: str = Field(min_length=1, description="File path relative to the workspace, e.g. 'report.md'.")
    content: str = Field(description="The full text to write; replaces the file if it exists.")


class ReadFileArgs(BaseModel):
    path: str = Field(min_length=1, description="File path relative to the workspace.")


class ListFilesArgs(BaseModel):
    path: str = Field(
        default=".", description="Directory relative to the workspace; '.' is the workspace itself."
    )


class WriteFile(Command[WriteFileArgs]):
    """Write a text file atomically (temp file + ``os.replace``), creating parent directories."""

    name = "write_file"
    description = (
        "Write text to a file in the workspace, replacing it if it exists. Parent directories are created."
    )
    Args = WriteFileArgs
    side_effect = "workspace"
    idempotent = True
    runs_inline = True

    def __init__(self, max_bytes: int = 1_000_000) -> None:
        self.max_bytes = max_bytes

    def run(self, args: WriteFileArgs, ctx: CommandContext) -> CommandResult:
        data = args.content.encode("utf-8")
        if len(data) > self.max_bytes:
            raise CommandError(
                f"content for {args.path!r} is {len(data)} bytes; "
                f"the limit is {self.max_bytes} bytes per file"
            )
        target = ctx.workspace.resolve(args.path)
        if target.is_dir():
            raise CommandError(f"{args.path!r} is a directory; give a file path")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, data)
        except OSError as exc:
            raise CommandError(f"cannot write {args.path!r}: {exc.strerror or exc}") from exc
        relative = target.relative_to(ctx.workspace.resolved_root()).as_posix()  # ``target`` is resolved
        return CommandResult(output=f"Wrote {len(data)} bytes to {relative}.", files_written=[relative])


class ReadFile(Command[ReadFileArgs]):
    """Read a text file; long files are cut to the step's output bound, with a note."""

    name = "read_file"
    description = "Read a text file from the workspace. Long files are truncated."
    Args = ReadFileArgs
    side_effect = "read_only"
    idempotent = True
    runs_inline = True

    def run(self, args: ReadFileArgs, ctx: CommandContext) -> CommandResult:
        target = ctx.workspace.resolve(args.path)
        if target.is_dir():
            raise CommandError(f"{args.path!r} is a directory; use list_files to see what it holds")
        limit = ctx.max_output_chars
        try:
            size = target.stat().st_size
            with target.open("rb") as f:
                raw = f.read(limit * 4 + 4)  # enough bytes for `limit` characters of UTF-8
        except FileNotFoundError as exc:
            raise CommandError(f"no such file: {args.path!r}") from exc
        except OSError as exc:
            raise CommandError(f"cannot read {args.path!r}: {exc.strerror or exc}") from exc
        if size == 0:
            return CommandResult(output=f"({args.path} is empty)")
        if b"\x00" in raw:
            return CommandResult(output=f"({args.path} is a binary file of {size} bytes; not shown)")
        text = raw.decode("utf-8", errors="replace")
        if len(raw) >= size and len(text) <= limit:
            return CommandResult(output=text)
        note = f"\n[truncated: {args.path} is {size} bytes; showing the first {{shown}} characters]"
        shown = max(0, limit - len(note.format(shown=limit)))
        return CommandResult(output=text[:shown] + note.format(shown=shown))


class ListFiles(Command[ListFilesArgs]):
    """List files under a directory, recursively, sorted, as workspace-relative paths (dirs end in ``/``)."""

    name = "list_files"
    description = "List the files under a workspace directory, recursively. Directories end with '/'."
    Args = ListFilesArgs
    side_effect = "read_only"
    idempotent = True
    runs_inline = True

    def __init__(self, max_entries: int = DEFAULT_MAX_LIST_ENTRIES) -> None:
        self.max_entries = max_entries

    def run(self, args: ListFilesArgs, ctx: CommandContext) -> CommandResult:
        top = ctx.workspace.resolve(args.path)
        if not top.exists():
            raise CommandError(f"no such directory: {args.path!r}")
        if not top.is_dir():
            return CommandResult(output=ctx.workspace.relative(top))
        root = ctx.workspace.resolved_root()
        entries = list(itertools.islice(_iter_tree(top, root), self.max_entries + 1))
        if not entries:
            return CommandResult(output=f"({args.path} is empty)")
        lines = "\n".join(entries[: self.max_entries])
        if len(entries) > self.max_entries:
            lines += f"\n[listing stopped at {self.max_entries} entries; list a subdirectory to see more]"
        return CommandResult(output=lines)


def _iter_tree(top: Path, root: Path) -> Iterator[str]:
    """Workspace-relative paths under ``top``, depth-first in name order, without following symlinks."""
    stack: list[Iterator[os.DirEntry[str]]] = [_sorted_children(top)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        relative = Path(child.path).relative_to(root).as_posix()
        if child.is_dir(follow_symlinks=False):
            yield relative + "/"
            stack.append(_sorted_children(Path(child.path)))
        else:
            yield relative


def _sorted_children(directory: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return iter(sorted(it, key=lambda entry: entry.name))
    except OSError:
        return iter(())


def _atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``target``, then rename it over: no reader sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            _fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# An ``fsync`` on a think worker (gevent) holds every agent of the process while the disk works, unless it runs on a
# real thread (``green.offload``). On a local SSD it takes a fraction of a millisecond, less than the hop to a thread
# costs a single task's step (``make bench``'s latency: 1.14x with every ``fsync`` offloaded); on a network volume it
# takes milliseconds. So one is timed on the hub's thread: past ``SLOW_FSYNC_S`` the process's ``fsync``s go to a
# thread for ``SLOW_FSYNC_HOLD_S``, then one is timed on the hub again.
SLOW_FSYNC_S = 0.002
SLOW_FSYNC_HOLD_S = 60.0
_offload_fsync_until = [0.0]


def _fsync(fd: int) -> None:
    if not patched():
        os.fsync(fd)
        return
    start = time.monotonic()
    if start < _offload_fsync_until[0]:
        offload(os.fsync, fd)
        return
    os.fsync(fd)
    took = time.monotonic() - start
    if took > SLOW_FSYNC_S:
        _offload_fsync_until[0] = time.monotonic() + SLOW_FSYNC_HOLD_S
        log.warning("workspace_fsync_slow", fsync_s=round(took, 4), offloaded_for_s=SLOW_FSYNC_HOLD_S)
