"""A task's workspace: the one directory its commands may touch.

Every path a model sends goes through ``Workspace.resolve``, which refuses absolute paths, NUL bytes, ``..``
escapes and symlinks that lead outside. The check is done on the fully resolved path, so a symlink planted
inside the workspace that points out is caught too.

The check happens before the file is opened: it assumes nothing else rewrites the workspace between the two
(steps of a task run one at a time). Code execution, when it comes, must run in its own sandbox.

What a resolve costs: ``Path.resolve`` ``lstat``s every component of the path from ``/`` down, and a ``write_file``
step resolved its workspace's root and the file's path three times (about 27 ``lstat`` calls, each of which lets
the worker's GIL go). The root's directory (the platform's workspace or artifact root) is resolved once per process;
below the resolved root only the components of the model's path are looked at, and only a symlink among them or a
``..`` sends the path through ``Path.resolve`` (same result: ``tests/unit/test_commands_workspace.py`` compares the
two on paths with symlinks in and out, loops, missing parts and files used as directories).
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path, PurePath

from autogpt_workers.errors import CommandError, WorkspaceEscape


class Workspace:
    """A directory that confines a task's file commands."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._resolved: Path | None = None  # the root resolved, once per workspace (each resolve walks every part)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def create(self) -> Path:
        """Make the directory (and its parents) if missing; return its resolved path."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.resolved_root()

    def resolved_root(self) -> Path:
        """The root with every symlink resolved (the platform's own directory: resolved once, then kept)."""
        if self._resolved is None:
            self._resolved = _resolve_root(self.root)
        return self._resolved

    def resolve(self, relative: str) -> Path:
        """The absolute path for ``relative``, guaranteed to lie inside the workspace.

        Raises ``WorkspaceEscape`` for absolute paths, NUL bytes, and anything that resolves outside the
        root (``..`` components, symlinks pointing out).
        """
        if "\x00" in relative:
            raise WorkspaceEscape(f"path {relative!r} contains a NUL byte")
        if Path(relative).is_absolute():
            raise WorkspaceEscape(
                f"path {relative!r} is absolute; use a path relative to the workspace, e.g. 'notes/todo.md'"
            )
        root = self.resolved_root()
        try:
            target = _below(root, PurePath(relative).parts)
            if target is None:  # a symlink or a ``..`` on the way: the full walk decides
                target = (root / relative).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
            raise CommandError(f"cannot resolve path {relative!r}: {exc}") from exc
        if not target.is_relative_to(root):
            raise WorkspaceEscape(f"path {relative!r} leads outside the workspace")
        return target

    def relative(self, path: Path) -> str:
        """``path`` (inside the workspace) as a POSIX path relative to the root (``.`` is the root)."""
        return path.resolve().relative_to(self.resolved_root()).as_posix()


def _below(root: Path, parts: tuple[str, ...]) -> Path | None:
    """``(root / *parts).resolve()`` for a resolved ``root`` when no part is ``..`` and none of the existing ones is
    a symlink, looking only at the parts; ``None`` when that does not hold. As ``Path.resolve`` (not strict) does,
    the parts from the first one that cannot be looked up (missing, or under a file) on are kept as they are."""
    if ".." in parts:
        return None
    path = root
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return path.joinpath(*parts[i + 1 :])
        if stat.S_ISLNK(mode):
            return None
    return path


def _resolve_root(root: Path) -> Path:
    """``root.resolve()``, with ``root``'s parent resolved once per process (an absolute one: the platform's
    workspace or artifact root) and only ``root`` itself looked at."""
    if not root.is_absolute() or root.name in ("", ".", ".."):
        return root.resolve()
    try:
        mode = os.lstat(root).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        return root.resolve()
    return _resolved_dir(str(root.parent)) / root.name


@functools.lru_cache(maxsize=256)
def _resolved_dir(directory: str) -> Path:
    return Path(directory).resolve()
