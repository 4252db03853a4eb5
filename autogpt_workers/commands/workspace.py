"""A task's workspace: the one directory its commands may touch.

Every path a model sends goes through ``Workspace.resolve``, which refuses absolute paths, NUL bytes, ``..``
escapes and symlinks that lead outside. The check is done on the fully resolved path, so a symlink planted
inside the workspace that points out is caught too.

The check happens before the file is opened: it assumes nothing else rewrites the workspace between the two
(steps of a task run one at a time). Code execution, when it comes, must run in its own sandbox.
"""

from __future__ import annotations

from pathlib import Path

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
            self._resolved = self.root.resolve()
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
            target = (root / relative).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
            raise CommandError(f"cannot resolve path {relative!r}: {exc}") from exc
        if not target.is_relative_to(root):
            raise WorkspaceEscape(f"path {relative!r} leads outside the workspace")
        return target

    def relative(self, path: Path) -> str:
        """``path`` (inside the workspace) as a POSIX path relative to the root (``.`` is the root)."""
        return path.resolve().relative_to(self.resolved_root()).as_posix()
