"""What an artifact store is: where a task's workspace files live between steps, possibly on other hosts.

An act worker calls ``materialise(task_id, dest_dir)`` before a command (the directory then holds the task's files)
and ``sync_back(task_id, src_dir, changed_paths)`` after it (changed files are stored, paths that no longer exist
are deleted). The API serves downloads with ``open(task_id, relative_path)`` and stores uploads with ``save``.
Implementations: ``local`` (one host; the store *is* the workspace directory) and ``s3`` (S3-compatible object
storage, many hosts).

Paths are workspace-relative POSIX paths; ``check_relative`` refuses anything that could leave the task's area.
Symlinks are never stored or followed: a workspace symlink may point anywhere on the host. Copying stores read and
write local files through ``confined`` (no symlink followed at any level), and after ``materialise`` a directory
holds exactly the stored files: whatever else a previous step left there (symlinks included) is removed.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO

from autogpt_workers.errors import RunError, UsageError


class ArtifactStoreError(RunError):
    """The store failed (unreachable, refused): worth retrying the step later."""


class ArtifactNotFound(UsageError):
    """No such file in the task's artifacts (a 404 for the API)."""


class InvalidArtifactPath(ArtifactNotFound):
    """A path that is absolute, empty, or climbs out with ``..`` (never found, by construction)."""


def check_relative(relative_path: str) -> str:
    """The normalised form of a workspace-relative path; raises ``InvalidArtifactPath`` for anything else."""
    if not relative_path or "\x00" in relative_path or "\\" in relative_path:
        raise InvalidArtifactPath(f"invalid artifact path {relative_path!r}")
    path = PurePosixPath(relative_path)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts) or path.parts in ((), (".",)):
        raise InvalidArtifactPath(f"invalid artifact path {relative_path!r}")
    return "/".join(part for part in path.parts if part != ".")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Regular files under ``root`` (symlinks neither followed nor listed) -> (size, mtime_ns)."""
    files: dict[str, tuple[int, int]] = {}
    pending = [("", str(root))]
    while pending:
        prefix, directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((f"{prefix}{entry.name}/", entry.path))
                    elif entry.is_file(follow_symlinks=False):  # a symlink is neither, so never listed
                        st = entry.stat(follow_symlinks=False)
                        files[prefix + entry.name] = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:  # removed meanwhile
                    continue
    return files


def changed_paths(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Paths created, modified or deleted between two snapshots."""
    return sorted({p for p, stamp in after.items() if before.get(p) != stamp} | (before.keys() - after.keys()))


class ArtifactStore(ABC):
    """A task's files, by task id and workspace-relative path."""

    @abstractmethod
    def materialise(self, task_id: str, dest_dir: Path) -> Path:
        """Make ``dest_dir`` hold the task's stored files and nothing else (creating it); return it."""

    @abstractmethod
    def sync_back(self, task_id: str, src_dir: Path, changed_paths: Iterable[str]) -> None:
        """Store each changed path from ``src_dir``; a path missing there (or not a regular file) is deleted."""

    @abstractmethod
    def open(self, task_id: str, relative_path: str) -> IO[bytes]:
        """A readable binary stream of one stored file; ``ArtifactNotFound`` if there is none. Close it."""

    @abstractmethod
    def save(self, task_id: str, relative_path: str, data: IO[bytes]) -> int:
        """Store one file from a readable binary stream (an upload); return its size in bytes."""

    @abstractmethod
    def list(self, task_id: str) -> list[str]:
        """Every stored path of the task, sorted."""

    @abstractmethod
    def delete_task(self, task_id: str) -> int:
        """Delete every stored file of the task (its retention is over); how many. None stored: 0."""

    def workspace_dir(self, task_id: str, scratch_root: Path) -> Path:
        """Where an act worker should materialise the task: a directory under ``scratch_root`` by default."""
        return scratch_root / task_id

    def works_in_place(self, task_id: str, workspace: Path) -> bool:
        """Is ``workspace`` the task's stored files themselves (nothing to sync back after a command)? Then the
        act phase skips the before/after snapshots of the workspace (two walks of every file, per step)."""
        return False
